"""A run: capture files read where they are, through a cluster map, to one result.

:func:`run_map` runs files through a :class:`~cpumap.cluster.map.ClusterMap` you hold;
:func:`run_captures` is the whole job behind ``cpumap run --ray auto|ADDRESS FILES...``:
connect (or start a local Ray), populate the map, run, retire the entries (gathering the
handlers' results), disconnect.

Where each source runs: ``source_nodes`` maps a file to a node name (as ``--cpus`` names
nodes); a file it does not name is read on the driver's node -- where the path was given,
so where it is known to exist (on one machine, every node sees every file).

Nothing hangs: each source's waits are bounded by ``stall_timeout`` (source.py), and the
driver waits for the sources at most ``timeout`` in all; a source that has not finished
by then is cancelled (``ray.cancel(force=True)``) and reported, and so is a source whose
task failed (its node died).  The map is frozen during a run (map.py): every source
steers into the same snapshot, which is what makes flow affinity cluster-wide.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .map import ClusterEntry, ClusterMap
from .places import Place, parse_entries
from .ray_setup import NodeInfo, cluster_nodes, connect, node_cpus, resolve_node
from .result import (
    ClusterResult,
    EntryFigures,
    NodeFigures,
    SourceFigures,
    entry_stats,
    totals,
)
from .source import (
    ENTRY_COUNTERS,
    SOURCE_COUNTERS,
    ProgramFactory,
    SourceOptions,
    SourceReport,
    Start,
    Target,
    read_capture,
)

DEFAULT_QSIZE = 8192  # frames an entry queues (its ring), shared by every source
DEFAULT_TIMEOUT = 3600.0  # seconds the driver waits for all sources


@dataclass(frozen=True)
class LocalRay:
    """The size of a local Ray instance that ``run_captures`` starts (when ``auto`` finds
    no cluster, or for ``local``); None: Ray's own default."""

    num_cpus: int | None = None
    object_store_memory: int | None = None
    loopback: bool | None = None  # bind to 127.0.0.1 (None: when Ray is not imported yet)


@dataclass(frozen=True)
class RunOptions:
    """The rarely changed knobs of :func:`run_captures`."""

    source: SourceOptions = field(default_factory=SourceOptions)  # how each source reads
    timeout: float = DEFAULT_TIMEOUT  # seconds the driver waits for every source
    max_restarts: int = 1  # Ray re-creates a dead entry actor this many times
    pin: bool = True  # pin each entry actor to its CPU
    local: LocalRay = field(default_factory=LocalRay)


def run_map(
    cmap: ClusterMap,
    paths: Sequence[str | os.PathLike[str]],
    program: str | ProgramFactory = "l4-hash",
    *,
    source_nodes: Mapping[str, str] | None = None,
    options: SourceOptions | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ray_address: str = "",
) -> ClusterResult:
    """Read every file of ``paths`` in a source task on its node, steer it with
    ``program`` (a built-in mode, a loader spec, or a factory of the key space) into the
    entries of ``cmap``, and wait until every frame has an outcome.  ``options``: how each
    source reads (:class:`~cpumap.cluster.source.SourceOptions`)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    t0 = time.perf_counter()
    files = [os.fspath(p) for p in paths]
    if not files:
        raise ValueError("no capture files to read")
    nodes = cluster_nodes()
    placed = {f: resolve_node((source_nodes or {}).get(f, ""), nodes) for f in files}
    entries = cmap.begin_run()
    reports: list[SourceReport | None] = []
    errors: list[str | None] = []
    interrupted = False
    refs: list[Any] = []
    try:
        targets = cmap.targets()
        task = ray.remote(num_cpus=0, max_retries=0)(read_capture)
        run_id = int.from_bytes(os.urandom(8), "little")
        refs = [
            task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(placed[f].node_id, soft=False)
            ).remote(f, targets, program, options or SourceOptions(), Start(i, run_id, len(files)))
            for i, f in enumerate(files)
        ]
        reports, errors = _gather(ray, refs, timeout)
        stall = (options or SourceOptions()).stall_timeout
        for i, r in enumerate(reports):
            if r is None:  # its task failed (its node died): what the entries say of it
                reports[i] = _orphan_report(ray, i, files[i], placed[files[i]], targets, stall)
    except BaseException as e:
        # Ctrl-C (KeyboardInterrupt): stop at once -- the entries are ended, not waited
        # for, and nothing is reported (the CLI says so).  An error still settles below.
        interrupted = not isinstance(e, Exception)
        if interrupted:
            for ref in refs:  # the sources too (on a cluster that outlives this driver)
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            cmap.abort()
        raise
    finally:
        pids: dict[int, set[int]] = {}
        failures: dict[int, list[str]] = {}
        for r in reports:
            if r is None:
                continue
            for key, ps in r.pids.items():
                pids.setdefault(int(key), set()).update(ps)
            for key, why in r.failures:
                failures.setdefault(int(key), []).append(f"{r.path}: {why}")
        handler_errors = [] if interrupted else cmap.end_run(pids, failures)
    run = _Run(files, placed, reports, errors, nodes)
    result = _result(cmap, entries, run)
    result.user_errors = [e for r in run.books for e in r.user_errors] + handler_errors
    result.wall_seconds = time.perf_counter() - t0
    result.seconds = _busy_seconds(run.books) or result.wall_seconds
    result.ray_address = ray_address
    return result


def _orphan_report(
    ray: Any, source: int, path: str, node: NodeInfo, targets: list[Target], timeout: float
) -> SourceReport:
    """The books of a source whose task failed, rebuilt from what the live entries counted
    of its frames (``actor.tally``, once they have handled what they took from it): the
    frames they accepted or refused are its ``rx``, all of them redirects.  Lost with the
    task: what it read but had not offered (and the verdicts of those frames), its offers
    still on their way, and the counts of entry incarnations that died since."""
    rows = [[0] * len(ENTRY_COUNTERS) for _ in targets]
    pids: dict[int, list[int]] = {}
    refs = {t.key: t.actor.tally.remote(source, timeout) for t in targets}
    for key, ref in refs.items():
        try:
            report = ray.get(ref, timeout=timeout + 10.0)
        except Exception:  # that entry is gone too: nothing to say
            continue
        accepted, refused, *outcomes = report.counts
        row = dict.fromkeys(ENTRY_COUNTERS, 0)
        row.update(zip(ENTRY_COUNTERS[2:6], outcomes, strict=True))
        row.update(sent=accepted, queue_full=refused, lost=accepted - sum(outcomes))
        rows[key] = [row[name] for name in ENTRY_COUNTERS]
        pids[key] = [report.pid]
    counters = dict.fromkeys(SOURCE_COUNTERS, 0)
    counters["rx"] = counters["xdp_redirect"] = sum(r[0] + r[-1] for r in rows)
    return SourceReport(path, node.node_id, 0, counters, rows, pids, [], None, 0.0)


def _busy_seconds(books: list[SourceReport]) -> float:
    """From the first poll of any source to the last source's last outcome: what a local
    run's elapsed time measures (first poll to drain), without the start of Ray's worker
    processes (``wall_seconds`` has it).  0.0 when no source read anything."""
    spans = [(r.started, r.ended) for r in books if r.started and r.ended]
    if not spans:
        return 0.0
    return max(e for _, e in spans) - min(s for s, _ in spans)


def _gather(
    ray: Any, refs: list[Any], timeout: float
) -> tuple[list[SourceReport | None], list[str | None]]:
    """Every source's report (None and an error where its task failed or ran out of
    time; those still running at the deadline are cancelled)."""
    deadline = time.monotonic() + timeout
    pending = list(refs)
    while pending and time.monotonic() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
    for ref in pending:
        ray.cancel(ref, force=True)
    reports: list[SourceReport | None] = []
    errors: list[str | None] = []
    for ref in refs:
        if ref in pending:
            reports.append(None)
            errors.append(f"did not finish in {timeout:g}s: cancelled")
            continue
        try:
            reports.append(ray.get(ref, timeout=10.0))
            errors.append(None)
        except Exception as e:  # the task failed: its node died, or a bug
            reports.append(None)
            errors.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
    return reports, errors


@dataclass(frozen=True)
class _Run:
    """What a run's sources did: the files, where each was read, each one's report (None:
    its task failed) and error, and the cluster's nodes."""

    files: list[str]
    placed: dict[str, NodeInfo]
    reports: list[SourceReport | None]
    errors: list[str | None]
    nodes: list[NodeInfo]

    @property
    def books(self) -> list[SourceReport]:
        """The reports of the sources that finished."""
        return [r for r in self.reports if r is not None]


def _result(cmap: ClusterMap, entries: list[ClusterEntry], run: _Run) -> ClusterResult:
    """The run's result, from the sources' books (its time and address are set by the
    caller)."""
    figures = [_entry_figures(key, e, run.books) for key, e in enumerate(entries)]
    sources = [_source_figures(i, run) for i in range(len(run.files))]
    per_entry = tuple(
        entry_stats(key, e.place.cpu, f)
        for key, (e, f) in enumerate(zip(entries, figures, strict=True))
    )
    return ClusterResult(
        stats=totals(cmap.map_id, run.books, per_entry),
        entries=figures,
        nodes=_node_figures(run, sources, figures),
        sources=sources,
        seconds=0.0,
        ray_address="",
        complete=all(e is None for e in run.errors),
    )


def _entry_figures(key: int, e: ClusterEntry, books: list[SourceReport]) -> EntryFigures:
    """Entry ``key``: where it is, and what the sources booked for it, summed."""
    f = EntryFigures(
        place=str(e.place),
        node=e.node.name,
        node_id=e.node.node_id,
        qsize=e.qsize,
        generation=e.generation,
        state=e.state.value,
        pid=e.pid,
        pinned=e.pinned,
        restarts=e.restarts,
        failures=list(e.failures),
    )
    for r in books:
        for name, v in zip(ENTRY_COUNTERS, r.per_entry[key], strict=True):
            setattr(f, name, getattr(f, name) + int(v))
    return f


def _source_figures(i: int, run: _Run) -> SourceFigures:
    """Source ``i`` (a file may be given twice: two sources): where it ran, its counters,
    the error that stopped it."""
    path = run.files[i]
    r, err, node = run.reports[i], run.errors[i], run.placed[path]
    by_id = {n.node_id: n for n in run.nodes}
    if r is None:  # its task failed: no books
        counters = dict.fromkeys(SOURCE_COUNTERS, 0)
        return SourceFigures(path, node.name, node.node_id, 0, 0.0, counters, err)
    ran_on = by_id[r.node_id].name if r.node_id in by_id else node.name
    error = err if err is not None else r.error
    return SourceFigures(path, ran_on, r.node_id, r.pid, r.seconds, dict(r.counters), error)


def _node_figures(
    run: _Run, sources: list[SourceFigures], figures: list[EntryFigures]
) -> list[NodeFigures]:
    """Per node: the frames its sources read, and the frames its entries handled."""
    nodes = {n.node_id: NodeFigures(n.name, n.node_id, n.address) for n in run.nodes}
    for path, s in zip(run.files, sources, strict=True):
        nf = nodes[run.placed[path].node_id]
        nf.sources += 1
        nf.rx += s.counters["rx"]
    for f in figures:
        nf = nodes.setdefault(f.node_id, NodeFigures(f.node, f.node_id, "?"))
        nf.entries += 1
        nf.sent_to += f.sent
        nf.delivered += f.delivered
        nf.lost += f.lost
    return [n for n in nodes.values() if n.sources or n.entries]


def default_places(readers: Collection[str] = ()) -> list[Place]:
    """The cluster's whole width, as the local run's default is its machine's: every CPU
    the processes of every alive node may use -- but on a node whose ID is in ``readers``
    (it reads capture files) and that has more than one CPU, its first CPU is left to
    the sources, as a local run leaves its RX CPU to the producer (:func:`leave_rx_cpu`
    says why)."""
    nodes = cluster_nodes()
    return leave_rx_cpu([(n, sorted(node_cpus(n))) for n in nodes], set(readers))


def leave_rx_cpu(nodes: Sequence[tuple[NodeInfo, list[int]]], readers: set[str]) -> list[Place]:
    """``nodes``' CPUs as places, less the first CPU of each node in ``readers`` that has
    more than one.

    Why: a source reads, steers and packs every frame of its file; on a node where an
    entry's worker is pinned to every CPU, the source shares a CPU with a handler and
    the run goes at the speed of that shared CPU.  Measured on 2 CPUs with the CLI's
    defaults (docs/cluster.md): one entry beside a free source CPU moves 1.3 - 1.5x the
    frames/s of two entries beside it -- the local run's own layout (``--rx-cpu``)."""
    places = []
    for node, cpus in nodes:
        name = node.label or ("head" if node.is_head else node.node_id[:12])
        if node.node_id in readers and len(cpus) > 1:
            cpus = cpus[1:]
        places.extend(Place(name, cpu) for cpu in cpus)
    return places


def run_captures(
    paths: Sequence[str | os.PathLike[str]],
    *,
    entries: str | Sequence[Place | tuple[str, int] | str] | None = None,
    program: str | ProgramFactory = "l4-hash",
    handler: Any = None,
    ray_address: str = "auto",
    qsize: int = DEFAULT_QSIZE,
    source_nodes: Mapping[str, str] | None = None,
    options: RunOptions | None = None,
) -> ClusterResult:
    """``cpumap run --ray ADDRESS FILES...``: the files through a cluster map, end to end.

    ``entries``: the places, as ``--cpus`` writes them (``"head:0-1,w1:0"``, see
    :func:`~cpumap.cluster.places.parse_entries`) or a sequence of places; None: every CPU
    of every alive node but the first CPU of each node that reads files
    (:func:`default_places`).  ``program``: a built-in steering mode (``l4-hash``...), a loader
    spec or a factory of the key space.  ``handler``: every entry's handler (None: accept
    all).  ``ray_address``: ``auto`` (join the cluster here, else start a local instance),
    ``local``, or a cluster's address.  ``qsize``: each entry's bound on frames in flight.
    ``source_nodes``: file -> node name (default: the driver's node).  ``options``: how
    sources read (``options.source.lossless``: wait for room rather than drop and count
    ``queue_full``), how long the driver waits, restarts and pinning of the entries, and
    the size of a local instance started here (:class:`RunOptions`).

    The result's ``results`` are the entries' ``finish()`` results (``EntryResult``:
    ``merge_flow_tables(result.results)`` joins FlowTable reports).
    """
    options = options or RunOptions()
    local = options.local
    with connect(
        ray_address,
        num_cpus=local.num_cpus,
        object_store_memory=local.object_store_memory,
        loopback=local.loopback,
    ) as session:
        if isinstance(entries, str):
            places = parse_entries(entries)
        elif entries is not None:
            places = list(entries)
        else:
            places = default_places(_reader_nodes(paths, source_nodes))
        with ClusterMap(handler, max_restarts=options.max_restarts, pin=options.pin) as cmap:
            for p in places:
                cmap.update(p, qsize)
            result = run_map(
                cmap,
                paths,
                program,
                source_nodes=source_nodes,
                options=options.source,
                timeout=options.timeout,
                ray_address=session.address,
            )
        result.results = list(cmap.results)
        return result


def _reader_nodes(
    paths: Sequence[str | os.PathLike[str]], source_nodes: Mapping[str, str] | None
) -> set[str]:
    """The IDs of the nodes that will read ``paths`` (as :func:`run_map` places them)."""
    nodes = cluster_nodes()
    named = source_nodes or {}
    return {resolve_node(named.get(os.fspath(p), ""), nodes).node_id for p in paths}


__all__ = [
    "LocalRay",
    "RunOptions",
    "default_places",
    "leave_rx_cpu",
    "resolve_node",
    "run_captures",
    "run_map",
]
