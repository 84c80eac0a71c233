"""What a map reports: frozen snapshots of its counters, and its tracepoint events.

:class:`MapStats` sums every producer and every entry, live and retired; :class:`EntryStats`
is one entry (one update).  Both are built from the counter tables of ``counters.py`` by
the tables below -- which stats field is which counter word -- and never change after.

The accounting identity
-----------------------
Every frame that enters (``rx``) ends as exactly one outcome::

    rx == xdp_aborted + xdp_drop + xdp_pass + xdp_tx + redirect_err + queue_full
          + no_frame + second_stage_drop + redirected_out + delivered + handler_drop
          + handler_error + build_failed + lost + abandoned + in_flight

(``queue_full`` counts drops at flush by RX producers and by workers whose second stage
redirects to another entry.)  ``in_flight`` (staged, in rings, in a worker's hands) is 0 at
every quiescent point, and the tests check the identity there exactly.

Faults, and the fields that report them
---------------------------------------
* ``lost`` -- frames recovered without an outcome: held by a worker that died (per entry:
  ``EntryStats.lost``), queued in a broken entry's ring, or left by an RX producer whose
  process died (ownership.py).  An outcome.
* ``abandoned`` -- frames ``close()`` gave up on: held by a producer that is alive but
  never let go (stopped, hung) when the deadline came.  An outcome.
* ``worker_deaths``, ``producer_deaths`` -- deaths the supervisor handled (each also a
  ``WorkerEvent``: ``CpuMap.worker_events()``); ``broken_entries``, ``stuck_workers``
  -- entries in state ``broken`` / workers reported stuck, now; ``hop_limit`` -- frames a
  second stage dropped for being redirected between entries too often (part of
  ``second_stage_drop``).
* per entry: ``state`` (``broken`` included), ``pid`` (0 while it has no worker),
  ``exitcode`` (its last worker's, once dead), ``restarts``, ``heartbeat_age`` (seconds
  since its worker last made progress; -1 if none), ``stuck`` (work waiting and no
  progress for the map's ``stuck_after``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Final

import numpy as np

from .counters import EnqueueCounter, KthreadCounter, ProducerCounter
from .entry import EntryState

# -- which field is which counter --------------------------------------------------------
_MAP_FROM_PRODUCERS: Final = {
    "rx": ProducerCounter.RX,
    "polls": ProducerCounter.POLLS,
    "xdp_aborted": ProducerCounter.XDP_ABORTED,
    "xdp_drop": ProducerCounter.XDP_DROP,
    "xdp_pass": ProducerCounter.XDP_PASS,
    "xdp_tx": ProducerCounter.XDP_TX,
    "xdp_redirect": ProducerCounter.XDP_REDIRECT,
    "redirect_err": ProducerCounter.REDIRECT_ERR,
    "no_frame": ProducerCounter.NO_FRAME,
    "truncated": ProducerCounter.TRUNCATED,
    "enqueue_processed": ProducerCounter.ENQ_PROCESSED,
    "enqueue_flushes": ProducerCounter.FLUSHES,
}
_MAP_FROM_KTHREADS: Final = {
    "kthread_processed": KthreadCounter.PROCESSED,
    "kthread_batches": KthreadCounter.BATCHES,
    "kthread_drops": KthreadCounter.DROPS,
    "kthread_sched": KthreadCounter.SCHED,
    "delivered": KthreadCounter.DELIVERED,
    "handler_drop": KthreadCounter.HANDLER_DROP,
    "handler_error": KthreadCounter.HANDLER_ERROR,
    "build_failed": KthreadCounter.BUILD_FAILED,
    "second_stage_pass": KthreadCounter.XDP_PASS,
    "second_stage_drop": KthreadCounter.XDP_DROP,
    "second_stage_redirect": KthreadCounter.XDP_REDIRECT,
    "redirected_out": KthreadCounter.REDIRECT_OUT,
    "late_wakeups": KthreadCounter.LATE_WAKEUPS,
    "hop_limit": KthreadCounter.HOP_LIMIT,
}
_ENTRY_FROM_ENQUEUES: Final = {
    "enqueue_processed": EnqueueCounter.PROCESSED,
    "enqueue_drops": EnqueueCounter.DROPS,
    "enqueue_flushes": EnqueueCounter.FLUSHES,
}
_ENTRY_FROM_KTHREAD: Final = {
    "kthread_processed": KthreadCounter.PROCESSED,
    "kthread_batches": KthreadCounter.BATCHES,
    "kthread_drops": KthreadCounter.DROPS,
    "kthread_sched": KthreadCounter.SCHED,
    "delivered": KthreadCounter.DELIVERED,
    "handler_drop": KthreadCounter.HANDLER_DROP,
    "handler_error": KthreadCounter.HANDLER_ERROR,
    "build_failed": KthreadCounter.BUILD_FAILED,
    "xdp_pass": KthreadCounter.XDP_PASS,
    "xdp_drop": KthreadCounter.XDP_DROP,
    "xdp_redirect": KthreadCounter.XDP_REDIRECT,
    "sleeps": KthreadCounter.SLEEPS,
    "late_wakeups": KthreadCounter.LATE_WAKEUPS,
}
_OUTCOME_FIELDS: Final = (
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
    "abandoned",
)


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


@dataclass(frozen=True)
class EntryStats:
    """One map entry's counters (an entry is one update: replacing a key makes a new one)."""

    key: int
    cpu: int
    qsize: int
    generation: int
    state: EntryState
    pid: int = 0  # its (last) worker's; 0: none could be started
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
    exitcode: int | None = None  # its last worker's, once dead or retired
    restarts: int = 0  # replacement workers started
    heartbeat_age: float = -1.0  # seconds since its worker's last progress (-1: none)
    stuck: bool = False  # work waiting, no progress for the map's stuck_after

    @classmethod
    def from_counters(
        cls,
        *,
        key: int,
        qsize: int,
        generation: int,
        state: EntryState,
        kthread: np.ndarray,
        enqueue: np.ndarray,
        pid: int = 0,
        pinned: bool = True,
        queued: int = 0,
        lost: int = 0,
        exitcode: int | None = None,
        restarts: int = 0,
        heartbeat_age: float = -1.0,
        stuck: bool = False,
    ) -> EntryStats:
        """The stats of an entry whose worker record is ``kthread`` and whose enqueue totals
        (summed over producers) are ``enqueue``."""
        return cls(
            key=key,
            cpu=key,
            qsize=qsize,
            generation=generation,
            state=state,
            pid=pid,
            pinned=pinned,
            queued=queued,
            lost=lost,
            exitcode=exitcode,
            restarts=restarts,
            heartbeat_age=heartbeat_age,
            stuck=stuck,
            **{name: int(enqueue[i]) for name, i in _ENTRY_FROM_ENQUEUES.items()},
            **{name: int(kthread[i]) for name, i in _ENTRY_FROM_KTHREAD.items()},
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
    abandoned: int = 0
    hop_limit: int = 0
    worker_deaths: int = 0
    producer_deaths: int = 0
    broken_entries: int = 0
    stuck_workers: int = 0
    entries: tuple[EntryStats, ...] = field(default=())

    @classmethod
    def from_counters(
        cls,
        map_id: int,
        producers: np.ndarray,
        kthreads: np.ndarray,
        lost: int,
        entries: tuple[EntryStats, ...],
        *,
        abandoned: int = 0,
        worker_deaths: int = 0,
        producer_deaths: int = 0,
    ) -> MapStats:
        """The stats of a map whose producer records sum to ``producers`` and whose worker
        records (live and retired entries) sum to ``kthreads``."""
        queue_full = producers[ProducerCounter.QUEUE_FULL] + kthreads[KthreadCounter.FWD_QUEUE_FULL]
        return cls(
            map_id=map_id,
            queue_full=int(queue_full),
            lost=lost,
            abandoned=abandoned,
            worker_deaths=worker_deaths,
            producer_deaths=producer_deaths,
            broken_entries=sum(1 for e in entries if e.state == EntryState.BROKEN),
            stuck_workers=sum(1 for e in entries if e.stuck),
            entries=entries,
            **{name: int(producers[i]) for name, i in _MAP_FROM_PRODUCERS.items()},
            **{name: int(kthreads[i]) for name, i in _MAP_FROM_KTHREADS.items()},
        )

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
