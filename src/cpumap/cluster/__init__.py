"""The same map beyond one machine: its entries on the nodes of a Ray cluster.

Rule 1: nothing of the engine is rebuilt.  The steering programs (``cpumap.programs``), the
handlers and their contract, the skbs, the capture readers and the accounting are the local
engine's; what changes is how frames move: where they lie, in frames a source shares with
the entries on its machine (``shared_frames``), or through Ray's object store as numpy
arrays (``frames``), to entry actors pinned to their node's CPU (``actor``), from sources
running on the node that holds each file (``source``).
Rule 2: one module per concept, and data flows one way: ``run`` (a job end to end) ->
``map`` (the map: places, actors, errno) -> ``source`` (read, steer, send, keep the books;
its polls: ``landing``) -> ``actor`` (the entry: its queue, its worker, running totals)
-> ``doorbell`` (the thread taking a same-machine source's parts, with no call) ->
``shared_frames`` (a source's frames in shared memory, its doorbell rings, the DONE flags) ->
``frames`` (blocks and parcels); ``places`` (how entries are named) and ``ray_setup``
(joining or starting Ray, naming nodes) beside.
Rule 3: Ray is an optional extra (``cpumap[cluster]``): it is imported inside functions, so
importing ``cpumap.cluster`` works without it, and nothing else of cpumap imports this
package.

    from cpumap.cluster import run_captures
    result = run_captures(["a.pcapng", "b.pcapng"], entries="head:0-1,w1:0",
                          handler=FlowTable(), ray_address="auto")
    assert result.stats.in_flight == 0

``docs/cluster.md`` says when to use it, how to deploy it and what it costs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the same names as the table below (tests/test_imports.py)
    from .actor import EntryActor, Report
    from .frames import FrameBlock, Parcel
    from .map import ActorState, ClusterEntry, ClusterMap, EntryResult
    from .places import LOCAL_NODE, Place, as_place, parse_entries
    from .ray_setup import NodeInfo, RaySession, cluster_nodes, connect, resolve_node, use_loopback
    from .result import ClusterResult, EntryFigures, NodeFigures, SourceFigures
    from .run import LocalRay, RunOptions, default_places, run_captures, run_map
    from .source import KeySpace, SourceOptions, SourceReport

__all__ = [
    "LOCAL_NODE",
    "ActorState",
    "ClusterEntry",
    "ClusterMap",
    "ClusterResult",
    "EntryActor",
    "EntryFigures",
    "EntryResult",
    "FrameBlock",
    "KeySpace",
    "LocalRay",
    "NodeFigures",
    "NodeInfo",
    "Parcel",
    "Place",
    "RaySession",
    "Report",
    "RunOptions",
    "SourceFigures",
    "SourceOptions",
    "SourceReport",
    "as_place",
    "cluster_nodes",
    "connect",
    "default_places",
    "parse_entries",
    "resolve_node",
    "run_captures",
    "run_map",
    "use_loopback",
]

# Each name is imported from its module when first asked for (cpumap/lazy.py).
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "EntryActor": ".actor",
        "Report": ".actor",
        "FrameBlock": ".frames",
        "Parcel": ".frames",
        "ActorState": ".map",
        "ClusterEntry": ".map",
        "ClusterMap": ".map",
        "EntryResult": ".map",
        "LOCAL_NODE": ".places",
        "Place": ".places",
        "as_place": ".places",
        "parse_entries": ".places",
        "NodeInfo": ".ray_setup",
        "RaySession": ".ray_setup",
        "cluster_nodes": ".ray_setup",
        "connect": ".ray_setup",
        "resolve_node": ".ray_setup",
        "use_loopback": ".ray_setup",
        "ClusterResult": ".result",
        "EntryFigures": ".result",
        "NodeFigures": ".result",
        "SourceFigures": ".result",
        "LocalRay": ".run",
        "RunOptions": ".run",
        "default_places": ".run",
        "run_captures": ".run",
        "run_map": ".run",
        "KeySpace": ".source",
        "SourceOptions": ".source",
        "SourceReport": ".source",
    },
)
