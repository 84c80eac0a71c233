"""Counters and events: the kernel's two cpumap tracepoints, plus every frame's outcome.

The kernel reports cpumap through two tracepoints, and we keep their fields and meaning:

* ``xdp:xdp_cpumap_enqueue`` -- one per bulk-queue flush from a producer into an entry's
  ring: ``map_id``, ``processed`` (frames offered, *including* the dropped ones),
  ``drops`` (did not fit: ring full), ``to_cpu``.
* ``xdp:xdp_cpumap_kthread`` -- one per worker batch: ``map_id``, ``processed`` (frames
  in the batch), ``drops`` (skb build failures + frames the netstack -- our handler --
  dropped), ``sched`` (the worker slept before this batch).  With a second-stage program
  (issue 4) also ``xdp_pass``, ``xdp_drop``, ``xdp_redirect``.

Counters are int64 (numpy mixes uint64 with Python ints into float64), always on; events
(one record per tracepoint hit) are recorded only when
the map is created with ``trace_events > 0``, like a tracepoint that is off until
enabled.

The accounting identity
-----------------------
Every frame that enters (``rx``) ends as exactly one outcome::

    rx == xdp_aborted + xdp_drop + xdp_pass + xdp_tx + redirect_err + queue_full
          + no_frame + second_stage_drop + redirected_out + delivered + handler_drop
          + handler_error + build_failed + lost + in_flight

(``queue_full`` counts drops at flush by RX producers and by workers whose second stage
redirects to another entry.)

``in_flight`` (staged, in rings, in a worker's hands) is 0 at every quiescent point, and
the tests check the identity there exactly.

Where counters live, and who writes them
------------------------------------------
* per producer ``p``: ``prod[p, :]`` (RX side outcomes), written only by producer ``p``;
* per producer and slot: ``enq[p, s, :]`` (enqueue tracepoint totals);
* per slot: the worker's kthread record, double-buffered with a sequence word so that a
  reader never sees half a batch (``KthreadRecord``): written only by that slot's worker.
  It also carries ``committed``, the ring position up to which outcomes are counted --
  the crash-recovery commit point (see worker.py).

Each word has a single writer, so no atomics are needed beyond aligned 64-bit stores
(atomic on every 64-bit platform); readers may see a batch's counters in mid-update,
which only matters for the exact identity, which is checked at quiescent points.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import numpy as np

from . import _atomics as at
from .shm import Layout, Segment

# -- producer counters: prod[p, i] --------------------------------------------------------
P_RX = 0
P_XDP_ABORTED = 1
P_XDP_DROP = 2
P_XDP_PASS = 3
P_XDP_TX = 4
P_XDP_REDIRECT = 5  # redirected and resolved to an entry (staged)
P_REDIRECT_ERR = 6
P_QUEUE_FULL = 7  # dropped at flush: the enqueue tracepoint's drops
P_NO_FRAME = 8  # no free frame for a received packet (pool exhausted)
P_POLLS = 9  # RX batches
P_FLUSHES = 10
P_ENQ_PROCESSED = 11
P_TRUNCATED = 12  # packets cut to fit a frame (not an outcome: still delivered)
P_WORDS = 16

# -- enqueue counters: enq[p, slot, i] ---------------------------------------------------
E_PROCESSED = 0
E_DROPS = 1
E_FLUSHES = 2
E_WORDS = 4

# -- kthread record: krec[slot, buf, i] ----------------------------------------------------
K_COMMITTED = 0  # ring position up to which the outcomes below are counted
K_PROCESSED = 1
K_BATCHES = 2
K_DROPS = 3  # handler_drop + handler_error + build_failed (the seed's meaning)
K_SCHED = 4
K_DELIVERED = 5
K_HANDLER_DROP = 6
K_HANDLER_ERROR = 7
K_BUILD_FAILED = 8
K_XDP_PASS = 9
K_XDP_DROP = 10
K_XDP_REDIRECT = 11
K_SLEEPS = 12
K_LATE_WAKEUPS = 13  # futex timeouts that found work waiting: a lost wake-up
K_REDIRECT_OUT = 14  # second stage: redirected to an output (a final outcome)
K_FWD_QUEUE_FULL = 15  # second stage: redirected to an entry whose ring was full
K_WORDS = 16

# -- events ------------------------------------------------------------------------------
# enqueue row: ts_ns, map_id, processed, drops, to_cpu
# kthread row: ts_ns, map_id, processed, drops, sched, cpu, xdp_pass, xdp_drop, xdp_redirect
EV_WORDS = 10


def add_counters(layout: Layout, producers: int, slots: int, events: int) -> None:
    """Reserve every counter array in the map's control segment."""
    layout.add("prod", np.int64, (producers, P_WORDS))
    layout.add("enq", np.int64, (producers, slots, E_WORDS))
    layout.add("kseq", np.uint64, (slots, 8))
    layout.add("krec", np.int64, (slots, 2, K_WORDS))
    ev = max(events, 1)
    layout.add("enq_ev", np.int64, (producers, ev, EV_WORDS))
    layout.add("enq_ev_pos", np.uint64, (producers, 8))
    layout.add("kth_ev", np.int64, (slots, ev, EV_WORDS))
    layout.add("kth_ev_pos", np.uint64, (slots, 8))


class KthreadRecord:
    """One slot's worker counters, published a whole batch at a time.

    Writer (the worker): fill the buffer the readers are *not* looking at, then store the
    sequence number that points at it.  Reader: load seq, copy ``rec[seq % 2]``, load seq
    again; retry unless it is unchanged.  (Moved by one is not good enough: after storing
    seq+1 the writer's next batch is written into the very buffer we were copying.)
    """

    def __init__(self, segment: Segment, slot: int) -> None:
        self._rec = segment.view("krec")[slot]
        self._seq_addr = segment.address("kseq", slot * 64)

    def reset(self) -> None:
        self._rec[:] = 0
        at.store_u64(self._seq_addr, 0)

    def publish(self, values: np.ndarray) -> None:
        """Make ``values`` (K_WORDS uint64) the current record: one store commits it."""
        seq = at.load_u64(self._seq_addr)
        self._rec[(seq + 1) & 1] = values
        at.store_u64(self._seq_addr, seq + 1)

    def read(self) -> np.ndarray:
        while True:
            seq = at.load_u64(self._seq_addr)
            out = self._rec[seq & 1].copy()
            if at.load_u64(self._seq_addr) == seq:
                return out


class EventLog:
    """A fixed-size overwrite-oldest log of tracepoint records for one writer."""

    def __init__(self, records: np.ndarray, pos_addr: int, enabled: bool) -> None:
        self._rec = records
        self._pos_addr = pos_addr
        self.enabled = enabled
        self._n = len(records)

    def emit(self, row: tuple[int, ...]) -> None:
        pos = at.load_u64(self._pos_addr)
        self._rec[pos % self._n, : len(row)] = row
        at.store_u64(self._pos_addr, pos + 1)

    def reset(self) -> None:
        at.store_u64(self._pos_addr, 0)

    def read(self) -> np.ndarray:
        """The records still held, oldest first (copy)."""
        pos = at.load_u64(self._pos_addr)
        n = min(pos, self._n)
        idx = (np.arange(pos - n, pos, dtype=np.int64)) % self._n
        return self._rec[idx].copy()


@dataclass(frozen=True)
class EnqueueEvent:
    """``xdp:xdp_cpumap_enqueue``: one bulk-queue flush."""

    ts_ns: int
    map_id: int
    processed: int  # includes drops
    drops: int  # ring full
    to_cpu: int
    producer: int


@dataclass(frozen=True)
class KthreadEvent:
    """``xdp:xdp_cpumap_kthread``: one worker batch."""

    ts_ns: int
    map_id: int
    processed: int
    drops: int
    sched: int
    cpu: int
    xdp_pass: int = 0
    xdp_drop: int = 0
    xdp_redirect: int = 0


@dataclass
class EntryStats:
    """One map entry's counters (an entry is one update: replacing a key makes a new one)."""

    key: int
    cpu: int
    qsize: int
    generation: int
    state: str  # "active", "retiring", "retired"
    pid: int = 0
    pinned: bool = True
    queued: int = 0  # in its ring right now
    enqueue_processed: int = 0
    enqueue_drops: int = 0
    enqueue_flushes: int = 0
    kthread_processed: int = 0
    kthread_batches: int = 0
    kthread_drops: int = 0
    kthread_sched: int = 0
    delivered: int = 0
    handler_drop: int = 0
    handler_error: int = 0
    build_failed: int = 0
    xdp_pass: int = 0
    xdp_drop: int = 0
    xdp_redirect: int = 0
    sleeps: int = 0
    late_wakeups: int = 0
    lost: int = 0  # frames lost with a crashed worker
    exitcode: int | None = None


_OUTCOME_FIELDS = (
    "xdp_aborted",
    "xdp_drop",
    "xdp_pass",
    "xdp_tx",
    "redirect_err",
    "queue_full",
    "no_frame",
    "second_stage_drop",
    "redirected_out",
    "delivered",
    "handler_drop",
    "handler_error",
    "build_failed",
    "lost",
)


@dataclass(frozen=True)
class MapStats:
    """A snapshot of a map's counters, summed over producers and entries (live and retired)."""

    map_id: int
    rx: int = 0
    polls: int = 0
    xdp_aborted: int = 0
    xdp_drop: int = 0
    xdp_pass: int = 0
    xdp_tx: int = 0
    xdp_redirect: int = 0
    redirect_err: int = 0
    queue_full: int = 0
    no_frame: int = 0
    truncated: int = 0
    enqueue_processed: int = 0
    enqueue_flushes: int = 0
    kthread_processed: int = 0
    kthread_batches: int = 0
    kthread_drops: int = 0
    kthread_sched: int = 0
    delivered: int = 0
    handler_drop: int = 0
    handler_error: int = 0
    build_failed: int = 0
    second_stage_pass: int = 0
    second_stage_drop: int = 0
    second_stage_redirect: int = 0
    redirected_out: int = 0
    late_wakeups: int = 0
    lost: int = 0
    entries: tuple[EntryStats, ...] = field(default=())

    def outcomes(self) -> dict[str, int]:
        """Every final outcome and its count."""
        return {name: getattr(self, name) for name in _OUTCOME_FIELDS}

    @property
    def in_flight(self) -> int:
        """Frames that entered and have no outcome yet (0 at a quiescent point)."""
        return self.rx - sum(self.outcomes().values())

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "entries"
        }
        d["in_flight"] = self.in_flight
        d["entries"] = [vars(e).copy() for e in self.entries]
        return d


def iter_enqueue_events(raw: np.ndarray, producer: int) -> Iterator[EnqueueEvent]:
    for r in raw.tolist():
        yield EnqueueEvent(r[0], r[1], r[2], r[3], r[4], producer)


def iter_kthread_events(raw: np.ndarray) -> Iterator[KthreadEvent]:
    for r in raw.tolist():
        yield KthreadEvent(*r[:9])
