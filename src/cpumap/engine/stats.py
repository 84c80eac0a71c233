"""What a map reports: frozen snapshots of its counters, and its tracepoint events.

:class:`MapStats` sums every producer and every entry, live and retired; :class:`EntryStats`
is one entry (one update).  Both are built from the counter tables of ``counters.py`` by
the tables below -- which stats field is which counter word -- and never change after.
Per producer slot: :class:`ProducerStats` (``MapStats.producers``: its record) and
:class:`EnqueueRow` (``EntryStats.enqueue_rows``: its flushes into the entry), so that a
reader needs no counter table of its own.

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
  -- entries broken (state ``broken`` or ``broken-retiring``) / workers reported stuck,
  now; ``finish_failures`` -- retired entries whose worker drained its ring but whose
  ``finish()`` raised or could not report (never a death, never a restart: per entry,
  ``EntryStats.finish_error`` says why); ``starved_producers`` -- RX producers whose pool
  partition has had no free frame for the map's ``stuck_after``, now; ``hop_limit`` --
  frames a second stage dropped for being redirected between entries too often (part of
  ``second_stage_drop``).
* per entry: ``state`` (``broken``, ``broken-retiring`` included), ``pid`` (0 while it
  has no worker), ``exitcode`` (its last worker's, once dead), ``restarts``,
  ``heartbeat_age`` (seconds since its worker last made progress; -1 if none), ``stuck``
  (work waiting and no progress for the map's ``stuck_after``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from operator import itemgetter
from typing import TYPE_CHECKING, Final

import numpy as np

from .counters import EnqueueCounter, KthreadCounter, ProducerCounter
from .entry import EntryState

if TYPE_CHECKING:
    from .entry import Entry

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
# A producer's own record: the map's sums, and what is the producer's alone.
_PRODUCER_FROM_RECORD: Final = {
    **_MAP_FROM_PRODUCERS,
    "queue_full": ProducerCounter.QUEUE_FULL,
    "lost": ProducerCounter.LOST,
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


class _Words:
    """The fields a table names, read from a record's words (a list: ``tolist()``):
    ``words(values) -> {field: value}``.  stats() runs in loops (``wait_idle``), so the
    indices are plain ints picked by one ``itemgetter`` call."""

    def __init__(self, table: dict[str, int]) -> None:
        self.names = tuple(table)
        self._get = itemgetter(*(int(i) for i in table.values()))

    def __call__(self, values: list[int]) -> dict[str, int]:
        return dict(zip(self.names, self._get(values), strict=True))


_MAP_P, _MAP_K = _Words(_MAP_FROM_PRODUCERS), _Words(_MAP_FROM_KTHREADS)
_ENTRY_ENQ, _ENTRY_K = _Words(_ENTRY_FROM_ENQUEUES), _Words(_ENTRY_FROM_KTHREAD)
_ENQ_PROCESSED, _ENQ_DROPS, _ENQ_FLUSHES = (
    int(EnqueueCounter.PROCESSED),
    int(EnqueueCounter.DROPS),
    int(EnqueueCounter.FLUSHES),
)

# Rows of counter words, one per producer slot: a 2-D array, or its rows as lists (cheaper
# to gather from several records than a stacked array).
Rows = np.ndarray | list[list[int]]


def _as_lists(rows: Rows) -> list[list[int]]:
    return rows.tolist() if isinstance(rows, np.ndarray) else rows


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
class WorkerStatus:
    """An entry's worker as the stats show it, at one moment (``Supervisor.status``)."""

    pid: int = 0  # 0: none running (broken)
    pinned: bool = True
    exitcode: int | None = None  # its last worker's, once dead
    restarts: int = 0
    lost: int = 0  # frames lost with the entry's workers
    heartbeat_age: float = -1.0  # seconds since its last progress (-1: none)
    stuck: bool = False  # work waiting, no progress for the map's stuck_after
    finish_error: str | None = None  # its drained worker's finish() failed: why


@dataclass(frozen=True)
class EnqueueRow:
    """The enqueue tracepoint's totals of one producer slot into one entry."""

    producer: int
    processed: int = 0  # frames offered, including the dropped ones
    drops: int = 0  # did not fit: the ring was full
    flushes: int = 0


@dataclass(frozen=True)
class ProducerStats:
    """One RX producer slot's counters (its record: ``counters.ProducerCounter``)."""

    producer: int
    rx: int = 0
    polls: int = 0
    xdp_aborted: int = 0
    xdp_drop: int = 0
    xdp_pass: int = 0
    xdp_tx: int = 0
    xdp_redirect: int = 0
    redirect_err: int = 0
    no_frame: int = 0
    truncated: int = 0
    enqueue_processed: int = 0
    enqueue_flushes: int = 0
    queue_full: int = 0  # dropped at its flushes (ring full)
    lost: int = 0  # recovered with no outcome after its process died (ownership.py)

    @classmethod
    def from_record(cls, producer: int, record: np.ndarray | list[int]) -> ProducerStats:
        """The stats of producer slot ``producer`` whose record is ``record``."""
        words = record.tolist() if isinstance(record, np.ndarray) else record
        return cls(producer, *_producer_words(words))


# ProducerStats's fields after ``producer``, in order: built positionally (one per producer
# slot in every stats()), which is faster than by keyword.
_producer_words = itemgetter(
    *(int(_PRODUCER_FROM_RECORD[f.name]) for f in fields(ProducerStats)[1:])
)


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
    finish_error: str | None = None  # "finish() failed: ...": its last worker drained
    # the ring, but its finish() raised or could not report (not a death: no restart)
    enqueue_rows: tuple[EnqueueRow, ...] = ()  # the enqueue_* counters per producer slot

    @classmethod
    def from_counters(
        cls,
        entry: Entry,
        kthread: np.ndarray,
        enqueue: Rows,
        worker: WorkerStatus = WorkerStatus(),
        queued: int = 0,
    ) -> EntryStats:
        """The stats of ``entry`` whose worker record is ``kthread``, whose enqueue
        counters are ``enqueue`` (a row of ``EnqueueCounter`` words per producer slot) and
        whose ring holds ``queued`` frames."""
        rows = _as_lists(enqueue)
        totals = [sum(column) for column in zip(*rows, strict=True)]
        k = kthread.tolist()
        return cls(
            key=entry.key,
            cpu=entry.cpu,
            qsize=entry.qsize,
            generation=entry.generation,
            state=entry.state,
            pid=worker.pid,
            pinned=worker.pinned,
            queued=queued,
            lost=worker.lost,
            exitcode=worker.exitcode,
            restarts=worker.restarts,
            heartbeat_age=worker.heartbeat_age,
            stuck=worker.stuck,
            finish_error=worker.finish_error,
            enqueue_rows=tuple(
                EnqueueRow(p, r[_ENQ_PROCESSED], r[_ENQ_DROPS], r[_ENQ_FLUSHES])
                for p, r in enumerate(rows)
            ),
            **_ENTRY_ENQ(totals),
            **_ENTRY_K(k),
        )

    def as_dict(self) -> dict[str, object]:
        """Every field, as plain JSON-able data (the rows as dicts)."""
        d: dict[str, object] = vars(self).copy()
        d["enqueue_rows"] = [vars(r).copy() for r in self.enqueue_rows]
        return d


@dataclass(frozen=True)
class FaultCounts:
    """What the map counted beside the counter tables (its supervisor, ``close()``)."""

    lost: int = 0  # frames lost with workers, live and retired entries (not producers')
    abandoned: int = 0  # frames close() gave up on
    worker_deaths: int = 0
    producer_deaths: int = 0
    finish_failures: int = 0
    starved_producers: int = 0


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
    finish_failures: int = 0
    starved_producers: int = 0
    entries: tuple[EntryStats, ...] = field(default=())
    producers: tuple[ProducerStats, ...] = field(default=())  # every producer slot

    @classmethod
    def from_counters(
        cls,
        map_id: int,
        producers: Rows,
        kthreads: np.ndarray,
        entries: tuple[EntryStats, ...],
        faults: FaultCounts = FaultCounts(),
    ) -> MapStats:
        """The stats of a map whose producer records are ``producers`` (one row per
        producer slot) and whose worker records (live and retired entries) sum to
        ``kthreads``."""
        rows = _as_lists(producers)
        per_producer = tuple(ProducerStats.from_record(p, r) for p, r in enumerate(rows))
        total = [sum(column) for column in zip(*rows, strict=True)]
        k = kthreads.tolist()
        queue_full = total[ProducerCounter.QUEUE_FULL] + k[KthreadCounter.FWD_QUEUE_FULL]
        return cls(
            map_id=map_id,
            queue_full=queue_full,
            lost=faults.lost + total[ProducerCounter.LOST],
            abandoned=faults.abandoned,
            worker_deaths=faults.worker_deaths,
            producer_deaths=faults.producer_deaths,
            finish_failures=faults.finish_failures,
            starved_producers=faults.starved_producers,
            broken_entries=sum(1 for e in entries if e.state.broken),
            stuck_workers=sum(1 for e in entries if e.stuck),
            entries=entries,
            producers=per_producer,
            **_MAP_P(total),
            **_MAP_K(k),
        )

    def outcomes(self) -> dict[str, int]:
        """Every final outcome and its count."""
        return {name: getattr(self, name) for name in _OUTCOME_FIELDS}

    @property
    def in_flight(self) -> int:
        """Frames that entered and have no outcome yet (0 at a quiescent point)."""
        return self.rx - sum(self.outcomes().values())

    def as_dict(self) -> dict[str, object]:
        """Every field and ``in_flight``, as plain JSON-able data (entries and producers as
        lists of dicts)."""
        d: dict[str, object] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("entries", "producers")
        }
        d["in_flight"] = self.in_flight
        d["entries"] = [e.as_dict() for e in self.entries]
        d["producers"] = [vars(p).copy() for p in self.producers]
        return d


def iter_enqueue_events(raw: np.ndarray, producer: int) -> Iterator[EnqueueEvent]:
    for r in raw.tolist():
        yield EnqueueEvent(r[0], r[1], r[2], r[3], r[4], producer)


def iter_kthread_events(raw: np.ndarray) -> Iterator[KthreadEvent]:
    for r in raw.tolist():
        yield KthreadEvent(*r[:9])
