"""The ``cpumap`` command: steer a capture, a live interface or generated traffic over CPUs.

    cpumap run                         # the embedded demo capture, over every CPU
    cpumap run trace.pcapng --cpus 1,2 --program l4-hash --write out/
    cpumap run --iface eth0 --duration 10 --lossy
    cpumap run --generate 1000000 --handler mymod:handle

This is the only module that knows about argparse and rich: it turns arguments into
engine objects (CpuMap, a program, a handler, a source), runs them, and renders the
statistics.  Renderers are pure functions of the stats, tested with a recording console.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .capture import CaptureError, open_capture
from .cpus import format_cpu_list, parse_cpu_list, usable_cpus
from .demo import demo_capture_path
from .engine import QSIZE_MAX, CpuMap, MapStats
from .generator import Generator
from .live import LiveSource
from .packets import PacketBatch
from .programs import MODES, FlowHash, LoadError, load_handler, load_program
from .programs import make_program as make_mode
from .sinks import CaptureSink, Chain, FlowTable, merge_captures, merge_flow_tables

# -- argument parsing --------------------------------------------------------------------------


class UsageError(Exception):
    """A bad argument, with what to do instead."""


def parse_cpus(text: str) -> list[int]:
    """``"0,2-3"`` -> [0, 2, 3], checked against the CPUs we may run on."""
    try:
        cpus = sorted(parse_cpu_list(text))
    except ValueError:
        raise UsageError(f"--cpus {text!r}: expected a list like 0,1 or 0-3") from None
    allowed = usable_cpus()
    bad = [c for c in cpus if c not in allowed]
    if bad:
        raise UsageError(
            f"--cpus: CPU {bad[0]} is not available here; "
            f"use some of {format_cpu_list(allowed)} (see `nproc`, `taskset -p $$`)"
        )
    if not cpus:
        raise UsageError("--cpus: give at least one CPU")
    return cpus


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked
    (importlib.metadata costs more to import than the whole CLI otherwise needs)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from importlib.metadata import version

        parser.exit(message=f"cpumap {version('cpumap')}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cpumap",
        description="The Linux kernel's XDP cpumap in user space: steer packets over CPUs.",
    )
    ap.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="steer a capture, an interface or generated traffic over CPU workers",
        description="Run packets through a steering program into one worker per CPU. "
        "With no source, the embedded demo capture is used.",
    )
    src = run.add_mutually_exclusive_group()
    src.add_argument("capture", nargs="?", help="a pcap or pcapng file (gzip is fine)")
    src.add_argument("--iface", help="receive live from this interface (needs root)")
    src.add_argument("--generate", type=int, metavar="N", help="N generated frames")
    run.add_argument("--cpus", help="CPUs to steer to, e.g. 0,1 or 0-3 (default: all)")
    run.add_argument("--qsize", type=int, default=2048, help=f"ring size per CPU (1..{QSIZE_MAX})")
    run.add_argument(
        "-p", "--program", default="l4-hash", help="steering program (see below; default l4-hash)"
    )
    run.add_argument(
        "--per-frame", action="store_true", help="run the program per frame, not vectorized"
    )
    run.add_argument("--non-ip-index", type=int, help="l4-proto: CPU index for non-IP frames")
    run.add_argument(
        "--strict-index", action="store_true", help="l4-proto: xdp-tools' strict indexing"
    )
    run.add_argument(
        "--drop-port", type=int, action="append", help="l4-filter: UDP port to drop (repeat)"
    )
    run.add_argument("--no-filter-ipv6", action="store_true", help="l4-filter: look at IPv4 only")
    run.add_argument(
        "--handler", default="flow-table", help="flow-table, count, or module:function"
    )
    run.add_argument("--write", metavar="DIR", help="write what each CPU got to DIR/cpuN.pcapng")
    run.add_argument("--merge", metavar="FILE", help="with --write: also merge into FILE")
    run.add_argument("--skip-bad", action="store_true", help="skip damaged capture records")
    run.add_argument(
        "--lossy",
        action="store_true",
        help="drop when a ring is full, as the kernel does (default for captures: wait)",
    )
    run.add_argument("--batch", type=int, default=1024, help="frames per worker batch")
    run.add_argument("--poll", type=int, default=1024, help="frames per RX poll")
    run.add_argument("--duration", type=float, help="live: stop after this many seconds")
    run.add_argument("--promisc", action="store_true", help="live: promiscuous mode")
    run.add_argument("--top", type=int, default=10, help="flows to list (flow-table)")
    run.add_argument("--interval", type=float, default=0.5, help="seconds between updates")
    run.add_argument("--quiet", action="store_true", help="no live display")
    run.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on PORT"
    )
    run.epilog = "programs: " + ", ".join(sorted(program_names())) + ", or module:function"
    return ap


# -- programs, handlers, sources -------------------------------------------------------------------


def program_names() -> list[str]:
    return [*MODES, "flow-hash"]


def make_program(args: argparse.Namespace, cmap: CpuMap, cpus: list[int]) -> Any:
    """The program ``--program`` names: a built-in mode (xdp-bench redirect-cpu -p MODE),
    ``flow-hash`` (the skb's symmetric hash), or ``module:function`` / ``file.py:function``."""
    name = args.program
    vectorized = not args.per_frame
    if name == "flow-hash":
        return FlowHash(cmap, cpus, vectorized=vectorized)
    if name in MODES:
        options: dict[str, Any] = {}
        if args.non_ip_index is not None:
            options["non_ip_index"] = args.non_ip_index
        if args.strict_index:
            options["strict_index"] = True
        if args.drop_port:
            options["drop_ports"] = tuple(args.drop_port)
        if args.no_filter_ipv6:
            options["filter_ipv6"] = False
        try:
            return make_mode(name, cmap, cpus, vectorized=vectorized, **options)
        except TypeError as e:
            raise UsageError(f"--program {name}: {e}; see `cpumap run --help`") from None
    if ":" in name:
        return _load(name, "program", cmap=cmap, vectorized=None if vectorized else False)
    raise UsageError(
        f"--program {name!r}: unknown; use one of {', '.join(program_names())} or module:function"
    )


def make_handler(name: str, write: str | None) -> Any:
    if name == "flow-table":
        handler: Any = FlowTable()
    elif name == "count":
        handler = None
    elif ":" in name:
        handler = _load(name, "handler")
    else:
        raise UsageError(f"--handler {name!r}: use flow-table, count, or module:function")
    if write:
        sink = CaptureSink(write)
        if handler is None:
            return sink
        if not getattr(handler, "batch", False):
            raise UsageError(
                "--write needs a batch handler (flow-table, count, or one marked "
                "with cpumap.batch_handler)"
            )
        return Chain(handler, sink)
    return handler


def _load(spec: str, what: str, **options: Any) -> Any:
    try:
        if what == "program":
            return load_program(spec, **options)
        return load_handler(spec)
    except LoadError as e:
        raise UsageError(f"--{what}: {e}") from None


def capture_batches(path: str, poll: int, skip_bad: bool) -> tuple[Iterator[PacketBatch], Any]:
    reader = open_capture(path, skip_bad=skip_bad, batch_size=poll)
    return reader.batches(poll), reader


# -- rendering -----------------------------------------------------------------------------------


def render_entries(s: MapStats) -> Table:
    t = Table(title="per CPU", title_justify="left")
    for col in (
        "cpu",
        "qsize",
        "state",
        "enqueued",
        "full",
        "batches",
        "avg",
        "delivered",
        "dropped",
        "errors",
        "sleeps",
        "lost",
    ):
        t.add_column(col, justify="right")
    t.caption = (
        "full: dropped at flush, ring full; avg: frames per worker batch; "
        "dropped/errors: by the handler; lost: with a killed worker"
    )
    for e in sorted(s.entries, key=lambda e: (e.key, e.generation)):
        avg = e.kthread_processed / e.kthread_batches if e.kthread_batches else 0.0
        t.add_row(
            str(e.cpu),
            str(e.qsize),
            e.state,
            f"{e.enqueue_processed:,}",
            f"{e.enqueue_drops:,}",
            f"{e.kthread_batches:,}",
            f"{avg:.1f}",
            f"{e.delivered:,}",
            f"{e.handler_drop:,}",
            f"{e.handler_error:,}",
            f"{e.sleeps:,}",
            f"{e.lost:,}",
        )
    return t


def render_outcomes(s: MapStats, elapsed: float | None = None) -> Table:
    t = Table(title="every frame's outcome", title_justify="left")
    t.add_column("outcome")
    t.add_column("frames", justify="right")
    t.add_column("share", justify="right")
    rx = s.rx or 1
    t.add_row("received", f"{s.rx:,}", "")
    for name, n in s.outcomes().items():
        if n:
            t.add_row(name.replace("_", " "), f"{n:,}", f"{n / rx:.1%}")
    if s.in_flight:
        t.add_row("in flight", f"{s.in_flight:,}", f"{s.in_flight / rx:.1%}")
    balanced = s.rx == sum(s.outcomes().values()) + s.in_flight
    t.caption = ("every frame accounted for" if balanced and not s.in_flight else "") + (
        f"; {s.rx / elapsed:,.0f} frames/s" if elapsed else ""
    )
    return t


def render_flows(flows: list[Any], top: int) -> Table:
    t = Table(title=f"top {min(top, len(flows))} of {len(flows)} flows", title_justify="left")
    for col in ("protocol", "endpoint", "endpoint", "packets", "bytes", "cpu"):
        t.add_column(col, justify="right" if col in ("packets", "bytes") else "left")
    for f in flows[:top]:
        # Text, not markup: an IPv6 endpoint "[fd00::1]:53" would read as a style tag.
        t.add_row(
            Text(f.protocol),
            Text(f.a),
            Text(f.b),
            f"{f.packets:,}",
            f"{f.bytes:,}",
            _cpu_list(sorted(f.cpus)),
        )
    return t


# -- running -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Console) -> int:
    cpus = parse_cpus(args.cpus) if args.cpus else usable_cpus()
    if not 1 <= args.qsize <= QSIZE_MAX:
        raise UsageError(f"--qsize {args.qsize}: must be 1..{QSIZE_MAX} (the kernel's limit)")
    for opt in ("batch", "poll"):
        if getattr(args, opt) < 1:
            raise UsageError(f"--{opt} must be >= 1")
    if args.merge and not args.write:
        raise UsageError("--merge FILE needs --write DIR (the per-CPU files it merges)")
    handler = make_handler(args.handler, args.write)
    closer: Any = None
    if args.iface:
        batches, closer = _live_batches(args)
        what = f"interface {args.iface}"
    elif args.generate is not None:
        if args.generate < 0:
            raise UsageError("--generate N: N must be >= 0")
        gen = Generator(
            flows=256, sizes=(64, 512, 1400), count=args.generate, seed=1, undersize="clamp"
        )
        batches, what = gen.batches(args.poll), f"{args.generate:,} generated frames"
    else:
        path = args.capture or str(demo_capture_path())
        if not os.path.exists(path):
            raise UsageError(
                f"{path}: no such file; give a pcap/pcapng capture, --iface IFACE, or --generate N"
            )
        batches, closer = capture_batches(path, args.poll, args.skip_bad)
        what = "the embedded demo capture" if not args.capture else path
    lossless = not args.lossy and not args.iface
    console.print(
        f"cpumap: {what} -> CPUs {_cpu_list(cpus)} "
        f"({'lossless' if lossless else 'drops when a ring is full'})"
    )
    with CpuMap(max(cpus) + 1, handler=handler, batch_size=args.batch) as cmap:
        for c in cpus:
            cmap.update(c, args.qsize)
        if args.metrics_port is not None:
            # Imported here: prometheus_client and its HTTP server cost tens of ms to
            # import, and only --metrics-port needs them.
            from .metrics import serve

            try:
                serve(cmap, args.metrics_port)
            except OSError as e:
                raise UsageError(f"--metrics-port {args.metrics_port}: {e}") from None
            console.print(f"metrics on http://127.0.0.1:{args.metrics_port}/metrics")
        program = make_program(args, cmap, cpus)
        t0 = time.monotonic()
        with cmap.producer(
            program, poll_size=args.poll, backpressure=10.0 if lossless else 0.0
        ) as rx:
            _feed(rx, batches, cmap, console, args, t0)
        cmap.wait_idle(60)
        elapsed = time.monotonic() - t0
        stats = cmap.stats()
    if closer is not None:
        closer.close()
    final = cmap.stats()
    console.print(render_entries(stats))
    console.print(render_outcomes(final, elapsed))
    if args.handler == "flow-table":
        console.print(render_flows(merge_flow_tables(cmap.results), args.top))
    errors = [r for r in cmap.results if r.error]
    for r in errors:
        console.print(f"[red]worker for CPU {r.cpu} reported an error:[/red]\n{r.error}")
    if args.write:
        files = sorted(str(p) for p in Path(args.write).glob("cpu*"))
        console.print(f"wrote {', '.join(files)}")
        if args.merge:
            n = merge_captures(files, args.merge)
            console.print(f"merged {n:,} packets into {args.merge}")
    skipped = getattr(closer, "skipped", 0)
    if skipped:
        console.print(f"skipped {skipped} damaged records")
    return 1 if errors else 0


def _feed(
    rx: Any,
    batches: Iterator[PacketBatch],
    cmap: CpuMap,
    console: Console,
    args: argparse.Namespace,
    t0: float,
) -> None:
    deadline = t0 + args.duration if args.duration else None
    live = (
        None
        if args.quiet or not console.is_terminal
        else Live(console=console, auto_refresh=False, transient=True)
    )
    last = 0.0
    try:
        if live is not None:
            live.start()
        for batch in batches:
            rx.receive(batch)
            now = time.monotonic()
            if live is not None and now - last > args.interval:
                s = cmap.stats()
                live.update(Group(render_entries(s), render_outcomes(s, now - t0)), refresh=True)
                last = now
            if deadline is not None and now > deadline:
                break
    finally:
        if live is not None:
            live.stop()


def _live_batches(args: argparse.Namespace) -> tuple[Iterator[PacketBatch], Any]:
    try:
        src = LiveSource(args.iface, promiscuous=args.promisc)
    except PermissionError as e:
        raise UsageError(f"--iface {args.iface}: {e}") from None
    except OSError as e:
        raise UsageError(f"--iface {args.iface}: {e}; see `ip link` for interfaces") from None
    # The source yields only when traffic comes: a timer ends a quiet --duration too.
    stop = threading.Event()
    if args.duration:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()
    return src.batches(stop=stop), src


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    console = console or Console()
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:
        args = ap.parse_args(["run", *(argv or [])])
    try:
        return run(args, console)
    except UsageError as e:
        ap.exit(2, f"cpumap: error: {e}\n")
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except Exception as e:  # a clear error, never a traceback for bad input
        if isinstance(e, CaptureError):
            ap.exit(1, f"cpumap: error: {e} (--skip-bad skips damaged records)\n")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
