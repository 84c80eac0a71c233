"""``cpumap run --ray ADDRESS FILES...``: the same run with the map's entries as Ray actors.

``--ray auto`` joins the Ray cluster this machine is part of, or starts a local instance
(on the loopback address) when there is none; an address joins that cluster.  ``--cpus``
/ ``-c`` then name entries as ``node:cpu`` (``head:0-1,w1:0``; a bare CPU list means the
driver's node).  Each capture is read on the node that holds it (the driver's here; see
``python -m cpumap.cluster --source-node``), steered by the same programs and handled by
the same handlers as a local run; ``docs/cluster.md`` says what differs and what it costs.

Ray is imported only here, and only when ``--ray`` is given (``cpumap[cluster]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from ..sinks import merge_flow_tables
from .errors import ExitStatus, UsageError
from .view import render_flows, render_outcomes

# What a cluster run does not do (yet): each is refused before Ray starts.
_LOCAL_ONLY = {
    "iface": "--iface (live sources run on one machine)",
    "generate": "--generate",
    "write": "--write",
    "merge": "--merge",
    "extended": "-e/--extended",
}


def check_ray_args(args: argparse.Namespace) -> None:
    """Every check of a ``--ray`` run that needs no cluster (raises UsageError)."""
    for name, what in _LOCAL_ONLY.items():
        if getattr(args, name, None):
            raise UsageError(f"--ray runs capture files only; {what} is not supported with it")
    if getattr(args, "remote_action", "disabled") not in (None, "disabled"):
        raise UsageError("--remote-action is not supported with --ray (no second stages there)")
    if not args.capture:
        raise UsageError("--ray needs one or more capture files: cpumap run --ray auto FILE...")


def entries_text(args: argparse.Namespace) -> str | None:
    """``-c`` and ``--cpus`` joined, as :func:`cpumap.cluster.parse_entries` reads them."""
    parts = [*(args.cpu or ()), *([args.cpus] if args.cpus is not None else [])]
    return ",".join(parts) or None


def run_on_ray(args: argparse.Namespace, console: Console, handler: Any) -> int:
    """Run ``args.capture`` (a list of files) on the cluster ``args.ray``; the exit status."""
    check_ray_args(args)
    try:
        from ..cluster import parse_entries, run_captures
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise UsageError(f"--ray needs Ray: pip install 'cpumap[cluster]' ({e})") from None
    text = entries_text(args)
    try:
        entries = parse_entries(text) if text else None
    except ValueError as e:
        raise UsageError(f"--cpus {text!r}: {e}") from None
    try:
        result = run_captures(
            args.capture,
            entries=entries,
            program=args.program,
            handler=handler,
            ray_address=args.ray,
            qsize=args.qsize,
            lossless=not args.lossy,
            poll_size=args.poll,
            skip_bad=args.skip_bad,
        )
    except (ConnectionError, OSError, ValueError) as e:
        raise UsageError(f"--ray {args.ray}: {e}") from None
    status = ray_exit_status(result)
    flows = merge_flow_tables(result.results) if args.handler == "flow-table" else []
    if args.json:
        out = {"type": "summary", **result.as_dict(), "exit_status": int(status)}
        sys.stdout.write(json.dumps(out, default=str) + "\n")
    else:
        console.print(render_placement(result))
        console.print(render_outcomes(result.stats, result.seconds))
        if flows:
            console.print(render_flows(flows, args.top))
        for src in result.sources:
            if src.error:
                console.print(f"[red]{src.path} on {src.node}: {src.error}[/red]")
        if status:
            console.print(f"exit status {int(status)}: {status.name.lower().replace('_', ' ')}")
    return int(status)


def ray_exit_status(result: Any) -> ExitStatus:
    """The exit statuses of a local run (``docs/cli.md``), from a cluster's result."""
    s = result.stats
    if not result.complete:
        return ExitStatus.SOURCE
    if s.lost or result.in_flight or any(e.restarts for e in result.entries):
        return ExitStatus.LOST
    if s.handler_error or s.xdp_aborted:
        return ExitStatus.USER_ERROR
    return ExitStatus.OK


def render_placement(result: Any) -> Table:
    """Per entry: where it ran and what it did."""
    t = Table(title=f"entries on Ray ({result.ray_address})", title_justify="left")
    for col in ("entry", "node", "state", "pid", "restarts", "sent", "delivered", "lost"):
        t.add_column(col, justify="left" if col in ("entry", "node", "state") else "right")
    for e in result.entries:
        t.add_row(
            e.place, e.node, e.state, str(e.pid), str(e.restarts), f"{e.sent:,}",
            f"{e.delivered:,}", f"{e.lost:,}",
        )  # fmt: skip
    return t
