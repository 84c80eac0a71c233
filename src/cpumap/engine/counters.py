"""Counters and events in shared memory: the kernel's two cpumap tracepoints, and every
frame's outcome, as named tables.

The kernel reports cpumap through two tracepoints, and we keep their fields and meaning:

* ``xdp:xdp_cpumap_enqueue`` -- one per bulk-queue flush from a producer into an entry's
  ring: ``map_id``, ``processed`` (frames offered, *including* the dropped ones),
  ``drops`` (did not fit: ring full), ``to_cpu``.
* ``xdp:xdp_cpumap_kthread`` -- one per worker batch: ``map_id``, ``processed`` (frames
  in the batch), ``drops`` (skb build failures + frames the netstack -- our handler --
  dropped), ``sched`` (the worker slept before this batch), and, with a second-stage
  program, ``xdp_pass``, ``xdp_drop``, ``xdp_redirect``.

Where counters live, and who writes them
----------------------------------------
Three tables, each an ``IntEnum`` naming the words of one record:

* :class:`ProducerCounter` -- producer ``p``'s record, the RX side's outcomes, written
  only by producer ``p`` (or, once it is dead, by whoever recovers its partition: see
  ``ownership.py``).  Double-buffered like the kthread record, because its ``PHASE`` word
  and its counters must change with one store: the producer's commit point;
* :class:`EnqueueCounter` -- ``enq[p, s, :]``, the enqueue tracepoint's totals per producer
  and slot, written only by producer ``p``;
* :class:`KthreadCounter` -- one slot's worker record, double-buffered with a sequence word
  so that a reader never sees half a batch (:class:`KthreadRecord`), written only by that
  slot's worker.  It also carries ``COMMITTED``, the ring position up to which outcomes are
  counted: the crash-recovery commit point (``worker.py``).

Counters are int64 words (numpy mixes uint64 with Python ints into float64), always on.
Each word has a single writer, so no atomics are needed beyond aligned 64-bit stores
(atomic on every 64-bit platform); readers may see a batch's counters in mid-update, which
only matters for the exact identity, which is checked at quiescent points.  Events (one
record per tracepoint hit) are recorded only when the map is created with
``trace_events > 0``, like a tracepoint that is off until enabled.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from .. import _atomics as at
from ..shm import Layout, Segment


class ProducerCounter(IntEnum):
    """The words of ``prod[p]``: what RX producer ``p`` did with the frames it received."""

    RX = 0  # frames received
    XDP_ABORTED = 1
    XDP_DROP = 2
    XDP_PASS = 3
    XDP_TX = 4
    XDP_REDIRECT = 5  # redirected and resolved to an entry (staged)
    REDIRECT_ERR = 6
    QUEUE_FULL = 7  # dropped at flush: the enqueue tracepoint's drops
    NO_FRAME = 8  # no free frame for a received packet (pool exhausted)
    POLLS = 9  # RX batches
    FLUSHES = 10
    ENQ_PROCESSED = 11
    TRUNCATED = 12  # packets cut to fit a frame (not an outcome: still delivered)
    PHASE = 13  # the commit protocol's phase (ownership.py): PHASE_CLOSED or PHASE_OPEN
    LOST = 14  # frames recovered from a dead producer, with no outcome (ownership.py)


# ProducerCounter.PHASE: whether the RX/DONE-tagged frames of the partition are counted
# in ``RX`` (open: a poll is in progress) or not (closed: between polls).  ownership.py.
PHASE_CLOSED = 0
PHASE_OPEN = 1


PRODUCER_WORDS = 16  # room to grow without moving the records


class EnqueueCounter(IntEnum):
    """The words of ``enq[p, slot]``: the enqueue tracepoint, summed."""

    PROCESSED = 0
    DROPS = 1
    FLUSHES = 2


ENQUEUE_WORDS = 4


class KthreadCounter(IntEnum):
    """The words of a slot's kthread record: its worker's outcomes, committed per batch."""

    COMMITTED = 0  # ring position up to which the outcomes below are counted
    PROCESSED = 1
    BATCHES = 2
    DROPS = 3  # handler_drop + handler_error + build_failed (the seed's meaning)
    SCHED = 4
    DELIVERED = 5
    HANDLER_DROP = 6
    HANDLER_ERROR = 7
    BUILD_FAILED = 8
    XDP_PASS = 9  # second stage
    XDP_DROP = 10
    XDP_REDIRECT = 11
    SLEEPS = 12
    LATE_WAKEUPS = 13  # futex timeouts that found work waiting: a lost wake-up
    REDIRECT_OUT = 14  # second stage: redirected to an output (a final outcome)
    FWD_QUEUE_FULL = 15  # second stage: redirected to an entry whose ring was full
    HOP_LIMIT = 16  # second stage: dropped, redirected too many times (part of XDP_DROP)


KTHREAD_WORDS = 24

# -- events ------------------------------------------------------------------------------
# enqueue row: ts_ns, map_id, processed, drops, to_cpu
# kthread row: ts_ns, map_id, processed, drops, sched, cpu, xdp_pass, xdp_drop, xdp_redirect
EVENT_WORDS = 10


def add_counters(layout: Layout, producers: int, slots: int, events: int) -> None:
    """Reserve every counter array in the map's control segment."""
    layout.add("pseq", np.uint64, (producers, 8))
    layout.add("prec", np.int64, (producers, 2, PRODUCER_WORDS))
    layout.add("enq", np.int64, (producers, slots, ENQUEUE_WORDS))
    layout.add("kseq", np.uint64, (slots, 8))
    layout.add("krec", np.int64, (slots, 2, KTHREAD_WORDS))
    ev = max(events, 1)
    layout.add("enq_ev", np.int64, (producers, ev, EVENT_WORDS))
    layout.add("enq_ev_pos", np.uint64, (producers, 8))
    layout.add("kth_ev", np.int64, (slots, ev, EVENT_WORDS))
    layout.add("kth_ev_pos", np.uint64, (slots, 8))


class SeqRecord:
    """A record of counters published whole: one store commits a new version.

    Writer (one at a time): fill the buffer the readers are *not* looking at, then store
    the sequence number that points at it.  Reader: load seq, copy ``rec[seq % 2]``, load
    seq again; retry unless it is unchanged.  (Moved by one is not good enough: after
    storing seq+1 the writer's next batch is written into the very buffer we were
    copying.)  A writer killed at any instruction leaves the previous version current.
    """

    def __init__(self, records: np.ndarray, seq_addr: int) -> None:
        self._rec = records  # [2, words]
        self._seq_addr = seq_addr

    def reset(self) -> None:
        self._rec[:] = 0
        at.store_u64(self._seq_addr, 0)

    def publish(self, values: np.ndarray) -> None:
        """Make ``values`` (KTHREAD_WORDS int64) the current record: one store commits it."""
        seq = at.load_u64(self._seq_addr)
        self._rec[(seq + 1) & 1] = values
        at.store_u64(self._seq_addr, seq + 1)

    def read(self) -> np.ndarray:
        while True:
            seq = at.load_u64(self._seq_addr)
            out = self._rec[seq & 1].copy()
            if at.load_u64(self._seq_addr) == seq:
                return out


class KthreadRecord(SeqRecord):
    """One slot's worker counters (:class:`KthreadCounter`), published a batch at a time."""

    def __init__(self, segment: Segment, slot: int) -> None:
        super().__init__(segment.view("krec")[slot], segment.address("kseq", slot * 64))


class ProducerRecord(SeqRecord):
    """One producer's counters (:class:`ProducerCounter`), published at its commit points."""

    def __init__(self, segment: Segment, p: int) -> None:
        super().__init__(segment.view("prec")[p], segment.address("pseq", p * 64))


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
