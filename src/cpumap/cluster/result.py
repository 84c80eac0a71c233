"""What a cluster run reports: totals (a ``MapStats``), and figures per entry, node and source.

The totals are a :class:`cpumap.engine.stats.MapStats`, built from the sources' books, so
``outcomes()``, ``in_flight``, ``as_dict()`` and ``entries`` (one ``EntryStats`` per entry,
in the order of :attr:`ClusterResult.entries`) mean what they mean for a local map: the
accounting identity ``rx == sum(outcomes)`` holds over every source and entry of the run
(``in_flight == 0``), whatever died (``source.py`` argues why).  Outcomes a cluster run
cannot have (``no_frame``, ``second_stage_drop``, ``redirected_out``) are 0, and so are
the counters only a local worker keeps (``sleeps``, ``kthread_sched``...).

Per entry: what the sources sent it and what became of it (summed over sources); per node:
the frames its sources read and the frames its entries handled; per source: its file, its
node, its counters, the error that stopped it early, if any.

A source task that itself failed (its node died under it) has lost its books; the driver
rebuilds what it can from the entries, which count every source's frames apart: the frames
they accepted or refused from it are its ``rx`` (all redirects), with their outcomes.  What
it read but had not offered, its offers still on their way and the counts of entry
incarnations that died are in no total; the identity holds over what the run knows, and
``complete`` is False.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine.stats import EntryStats, MapStats
from ..programs.user_errors import UserError
from .source import ENTRY_COUNTERS, SOURCE_COUNTERS, SourceReport


@dataclass
class EntryFigures:
    """One entry of the run: where it is and what became of the frames sent to it."""

    place: str
    node: str
    node_id: str
    qsize: int
    generation: int
    state: str
    pid: int
    pinned: bool
    restarts: int
    sent: int = 0
    parcels: int = 0
    delivered: int = 0
    handler_drop: int = 0
    handler_error: int = 0
    build_failed: int = 0
    lost: int = 0
    queue_full: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class NodeFigures:
    """One node: the frames its sources read, and the frames its entries handled."""

    node: str
    node_id: str
    address: str
    sources: int = 0
    entries: int = 0
    rx: int = 0
    sent_to: int = 0
    delivered: int = 0
    lost: int = 0


@dataclass
class SourceFigures:
    """One source: its file, where it ran, its counters, and its error, if any."""

    path: str
    node: str
    node_id: str
    pid: int
    seconds: float
    counters: dict[str, int]
    error: str | None = None


@dataclass
class ClusterResult:
    """The outcome of a cluster run (:func:`cpumap.cluster.run_captures`)."""

    stats: MapStats
    entries: list[EntryFigures]
    nodes: list[NodeFigures]
    sources: list[SourceFigures]
    seconds: float  # from the first poll of any source to the last outcome (a local run's)
    ray_address: str
    complete: bool = True  # False when a source task failed (its books rebuilt in part)
    results: list[Any] = field(default_factory=list)  # the entries' finish() results
    wall_seconds: float = 0.0  # the whole run: sources' start (Ray's workers) to the report
    # What failed in user code: the sources' programs, the entries' handlers (the first
    # traceback of each kind, and how many: ``programs/user_errors.py``).
    user_errors: list[UserError] = field(default_factory=list)

    def outcomes(self) -> dict[str, int]:
        return self.stats.outcomes()

    @property
    def in_flight(self) -> int:
        return self.stats.in_flight


def entry_stats(key: int, cpu: int, f: EntryFigures) -> EntryStats:
    """An entry's figures as the local map's record of an entry (its state is the actor's:
    ``live``, ``dead`` or ``retired``)."""
    handled = f.delivered + f.handler_drop + f.handler_error + f.build_failed
    return EntryStats(
        key=key,
        cpu=cpu,
        qsize=f.qsize,
        generation=f.generation,
        state=f.state,  # type: ignore[arg-type]  # an ActorState value, a str as EntryState is
        pid=f.pid,
        pinned=f.pinned,
        enqueue_processed=f.sent + f.queue_full,
        enqueue_drops=f.queue_full,
        enqueue_flushes=f.parcels,
        kthread_processed=handled,
        kthread_batches=f.parcels,
        kthread_drops=f.handler_drop + f.handler_error + f.build_failed,
        delivered=f.delivered,
        handler_drop=f.handler_drop,
        handler_error=f.handler_error,
        build_failed=f.build_failed,
        lost=f.lost,
        restarts=f.restarts,
    )


def totals(
    map_id: int, reports: list[SourceReport], entries: tuple[EntryStats, ...] = ()
) -> MapStats:
    """The run's totals as a ``MapStats`` (the producers' counters, and the outcomes of
    every entry as the sources booked them), with ``entries`` as its per-entry records."""
    src = dict.fromkeys(SOURCE_COUNTERS, 0)
    ent = dict.fromkeys(ENTRY_COUNTERS, 0)
    for r in reports:
        for k in SOURCE_COUNTERS:
            src[k] += r.counters.get(k, 0)
        for row in r.per_entry:
            for k, v in zip(ENTRY_COUNTERS, row, strict=True):
                ent[k] += v
    return MapStats(
        map_id=map_id,
        rx=src["rx"],
        polls=src["polls"],
        xdp_aborted=src["xdp_aborted"],
        xdp_drop=src["xdp_drop"],
        xdp_pass=src["xdp_pass"],
        xdp_tx=src["xdp_tx"],
        xdp_redirect=src["xdp_redirect"],
        redirect_err=src["redirect_err"],
        queue_full=ent["queue_full"],
        truncated=src["truncated"],
        enqueue_processed=ent["sent"] + ent["queue_full"],
        enqueue_flushes=ent["parcels"],
        kthread_processed=ent["delivered"]
        + ent["handler_drop"]
        + ent["handler_error"]
        + ent["build_failed"],
        kthread_batches=ent["parcels"],
        delivered=ent["delivered"],
        handler_drop=ent["handler_drop"],
        handler_error=ent["handler_error"],
        build_failed=ent["build_failed"],
        lost=ent["lost"],
        entries=entries,
    )
