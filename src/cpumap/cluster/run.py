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

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .map import ClusterMap
from .places import Place, parse_entries
from .ray_setup import NodeInfo, cluster_nodes, connect, node_cpus, resolve_node
from .result import (
    ClusterResult,
    EntryFigures,
    NodeFigures,
    SourceFigures,
    totals,
)
from .source import (
    DEFAULT_POLL_SIZE,
    DEFAULT_STALL_TIMEOUT,
    ENTRY_COUNTERS,
    SOURCE_COUNTERS,
    ProgramFactory,
    SourceReport,
    read_capture,
)

DEFAULT_QSIZE = 8192  # in flight per entry: room for several parcels per source (docs)
DEFAULT_TIMEOUT = 3600.0  # seconds the driver waits for all sources


def run_map(
    cmap: ClusterMap,
    paths: Sequence[str | os.PathLike[str]],
    program: str | ProgramFactory = "l4-hash",
    *,
    source_nodes: Mapping[str, str] | None = None,
    lossless: bool = True,
    poll_size: int = DEFAULT_POLL_SIZE,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
    skip_bad: bool = False,
    ray_address: str = "",
) -> ClusterResult:
    """Read every file of ``paths`` in a source task on its node, steer it with
    ``program`` (a built-in mode, a loader spec, or a factory of the key space) into the
    entries of ``cmap``, and wait until every frame has an outcome."""
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
    try:
        targets = cmap.targets(len(files))
        task = ray.remote(num_cpus=0, max_retries=0)(read_capture)
        refs = [
            task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(placed[f].node_id, soft=False)
            ).remote(
                f,
                targets,
                program,
                lossless=lossless,
                poll_size=poll_size,
                stall_timeout=stall_timeout,
                skip_bad=skip_bad,
            )
            for f in files
        ]
        reports, errors = _gather(ray, refs, timeout)
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
        cmap.end_run(pids, failures)
    return _result(cmap, entries, files, placed, reports, errors, nodes, t0, ray_address)


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


def _result(
    cmap: ClusterMap,
    entries: list[Any],
    files: list[str],
    placed: dict[str, NodeInfo],
    reports: list[SourceReport | None],
    errors: list[str | None],
    nodes: list[NodeInfo],
    t0: float,
    ray_address: str,
) -> ClusterResult:
    ok = [r for r in reports if r is not None]
    by_id = {n.node_id: n for n in nodes}
    figures: list[EntryFigures] = []
    for key, e in enumerate(entries):
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
        for r in ok:
            for name, v in zip(ENTRY_COUNTERS, r.per_entry[key], strict=True):
                setattr(f, name, getattr(f, name) + int(v))
        figures.append(f)
    node_figs = {n.node_id: NodeFigures(n.name, n.node_id, n.address) for n in nodes}
    sources: list[SourceFigures] = []
    for path, r, err in zip(files, reports, errors, strict=True):
        node = placed[path]
        nf = node_figs[node.node_id]
        nf.sources += 1
        counters = r.counters if r is not None else dict.fromkeys(SOURCE_COUNTERS, 0)
        nf.rx += counters["rx"]
        sources.append(
            SourceFigures(
                path=path,
                node=by_id[r.node_id].name if r is not None and r.node_id in by_id else node.name,
                node_id=r.node_id if r is not None else node.node_id,
                pid=r.pid if r is not None else 0,
                seconds=r.seconds if r is not None else 0.0,
                counters=dict(counters),
                error=err if err is not None else (r.error if r is not None else None),
            )
        )
    for f in figures:
        nf = node_figs.setdefault(f.node_id, NodeFigures(f.node, f.node_id, "?"))
        nf.entries += 1
        nf.sent_to += f.sent
        nf.delivered += f.delivered
        nf.lost += f.lost
    return ClusterResult(
        stats=totals(cmap.map_id, ok),
        entries=figures,
        nodes=[n for n in node_figs.values() if n.sources or n.entries],
        sources=sources,
        seconds=time.perf_counter() - t0,
        ray_address=ray_address,
        complete=all(r is not None for r in reports),
    )


def default_places() -> list[Place]:
    """Every CPU the processes of every alive node may use: the cluster's whole width."""
    return [
        Place(n.label or ("head" if n.is_head else n.node_id[:12]), cpu)
        for n in cluster_nodes()
        for cpu in sorted(node_cpus(n))
    ]


def run_captures(
    paths: Sequence[str | os.PathLike[str]],
    *,
    entries: str | Sequence[Place | tuple[str, int] | str] | None = None,
    program: str | ProgramFactory = "l4-hash",
    handler: Any = None,
    ray_address: str = "auto",
    qsize: int = DEFAULT_QSIZE,
    source_nodes: Mapping[str, str] | None = None,
    lossless: bool = True,
    poll_size: int = DEFAULT_POLL_SIZE,
    max_restarts: int = 1,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
    skip_bad: bool = False,
    pin: bool = True,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    loopback: bool | None = None,
) -> ClusterResult:
    """``cpumap run --ray ADDRESS FILES...``: the files through a cluster map, end to end.

    ``entries``: the places, as ``--cpus`` writes them (``"head:0-1,w1:0"``, see
    :func:`~cpumap.cluster.places.parse_entries`) or a sequence of places; None: every CPU
    of every alive node.  ``program``: a built-in steering mode (``l4-hash``...), a loader
    spec or a factory of the key space.  ``handler``: every entry's handler (None: accept
    all).  ``ray_address``: ``auto`` (join the cluster here, else start a local instance),
    ``local``, or a cluster's address.  ``qsize``: each entry's bound on frames in flight.
    ``source_nodes``: file -> node name (default: the driver's node).  ``lossless``: wait
    for room (files) rather than drop and count ``queue_full``.  ``num_cpus``,
    ``object_store_memory``, ``loopback``: for a local instance started here.

    The result's ``results`` are the entries' ``finish()`` results (``EntryResult``:
    ``merge_flow_tables(result.results)`` joins FlowTable reports).
    """
    with connect(
        ray_address,
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        loopback=loopback,
    ) as session:
        places = (
            parse_entries(entries)
            if isinstance(entries, str)
            else (list(entries) if entries is not None else default_places())
        )
        with ClusterMap(handler, max_restarts=max_restarts, pin=pin) as cmap:
            for p in places:
                cmap.update(p, qsize)
            result = run_map(
                cmap,
                paths,
                program,
                source_nodes=source_nodes,
                lossless=lossless,
                poll_size=poll_size,
                stall_timeout=stall_timeout,
                timeout=timeout,
                skip_bad=skip_bad,
                ray_address=session.address,
            )
        result.results = list(cmap.results)
        return result


__all__ = ["default_places", "resolve_node", "run_captures", "run_map"]
