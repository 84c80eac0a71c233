"""``python -m cpumap.cluster FILES... [--ray ADDR] [--cpus ENTRIES] [--json]``: a minimal
front end to :func:`cpumap.cluster.run_captures`, until ``cpumap run --ray`` calls it.

The handler is a :class:`~cpumap.sinks.FlowTable` (``--handler flows``, the default), an
accept-all (``--handler accept``) or a loader spec (``file.py:name``).  Exit status: 0 when
every frame has an outcome and every source finished, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..sinks import FlowTable, merge_flow_tables
from .places import parse_entries
from .result import ClusterResult
from .run import run_captures


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpumap.cluster", description=__doc__)
    p.add_argument("files", nargs="+", help="capture files (pcap, pcapng, gzip or not)")
    p.add_argument("--ray", default="auto", help="auto (default), local, or a cluster address")
    p.add_argument("--cpus", default=None, help="entries, e.g. 'head:0-1,w1:0' (default: all)")
    p.add_argument("--program", default="l4-hash", help="steering mode or loader spec")
    p.add_argument("--handler", default="flows", help="flows, accept, or a loader spec")
    p.add_argument("--qsize", type=int, default=8192, help="frames in flight per entry")
    p.add_argument(
        "--source-node",
        action="append",
        default=[],
        metavar="FILE=NODE",
        help="read FILE on NODE (default: the driver's node)",
    )
    p.add_argument("--drop", action="store_true", help="drop and count at full entries")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _handler(name: str) -> Any:
    if name == "flows":
        return FlowTable()
    if name == "accept":
        return None
    return name  # a loader spec, loaded on each entry's node


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        entries = parse_entries(args.cpus) if args.cpus else None
        nodes = dict(_pair(s) for s in args.source_node)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_captures(
        args.files,
        entries=entries,
        program=args.program,
        handler=_handler(args.handler),
        ray_address=args.ray,
        qsize=args.qsize,
        source_nodes=nodes,
        lossless=not args.drop,
    )
    flows = merge_flow_tables(result.results) if args.handler == "flows" else []
    if args.json:
        out = result.as_dict()
        out["flows"] = len(flows)
        print(json.dumps(out, indent=2, default=str))
    else:
        print(summary(result, len(flows)))
    return 0 if result.in_flight == 0 and result.complete else 1


def _pair(text: str) -> tuple[str, str]:
    path, sep, node = text.rpartition("=")
    if not sep or not path:
        raise ValueError(f"--source-node wants FILE=NODE, not {text!r}")
    return path, node


def summary(result: ClusterResult, flows: int) -> str:
    """A plain-text summary: totals, outcomes, nodes, entries, sources."""
    s = result.stats
    lines = [
        f"ray {result.ray_address}: {s.rx} frames in {result.seconds:.3f}s, "
        f"in flight {result.in_flight}, {flows} flows",
        "outcomes: " + ", ".join(f"{k}={v}" for k, v in result.outcomes().items() if v),
        "nodes:",
    ]
    for n in result.nodes:
        lines.append(
            f"  {n.node:<12} {n.node_id[:8]} {n.address:<15} sources={n.sources} "
            f"entries={n.entries} rx={n.rx} delivered={n.delivered} lost={n.lost}"
        )
    lines.append("entries:")
    for e in result.entries:
        lines.append(
            f"  {e.place:<16} {e.state:<8} pid={e.pid} restarts={e.restarts} sent={e.sent} "
            f"delivered={e.delivered} dropped={e.handler_drop} lost={e.lost} "
            f"queue_full={e.queue_full}"
        )
    lines.append("sources:")
    for src in result.sources:
        err = f" error: {src.error}" if src.error else ""
        lines.append(f"  {src.path} on {src.node}: rx={src.counters['rx']}{err}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
