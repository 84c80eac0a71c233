"""The command line's grammar: every option, its default, and the checks on each value.

:func:`build_parser` is the grammar; :func:`run_config` turns what it parsed into the
frozen :class:`~cpumap.cli.config.RunConfig` after every check that needs no worker --
ranges, CPU lists, paths, the user's modules loaded -- so that a bad value ends in a
one-line message and exit status 2 before any process, shared memory or file of the run
exists.  Nothing after this module sees the ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..abi import CPUMAP_QSIZE_MAX as QSIZE_MAX  # the engine's limit (engine.map), as cheap
from ..cpus import format_cpu_list, parse_cpu_list, usable_cpus
from ..programs import BUILTIN_PROGRAMS, LoadError, load_handler, load_object
from ..programs.contract import is_batch_handler
from ..sinks import CaptureSink, Chain, Count, FlowTable
from .config import (
    HandlerConfig,
    KernelConfig,
    ProgramConfig,
    RayConfig,
    RunConfig,
    SourceConfig,
    ViewConfig,
    ViewMode,
)
from .errors import EXIT_TABLE, UsageError

if TYPE_CHECKING:
    from ..cluster.places import Place

COMMANDS = ("run", "bench", "gen")
XDP_MODES = ("native", "skb")  # as xdp-bench's -m (cpumap.kernel.xdp.XdpMode)
REMOTE_ACTIONS = ("disabled", "drop", "pass", "redirect")


def parse_cpus(text: str) -> list[int]:
    """``"0,2-3"`` -> [0, 2, 3], checked against the CPUs we may run on."""
    try:
        cpus = sorted(parse_cpu_list(text))
    except ValueError as e:
        raise UsageError(f"--cpus {text!r}: {e}; expected a list like 0,1 or 0-3") from None
    if not cpus:
        raise UsageError(f"--cpus {text!r}: give at least one CPU, like 0,1 or 0-3")
    allowed = usable_cpus()
    bad = [c for c in cpus if c not in allowed]
    if bad:
        raise UsageError(
            f"--cpus: CPU {bad[0]} is not available here; "
            f"use some of {format_cpu_list(allowed)} (see `nproc`, `taskset -p $$`)"
        )
    return cpus


def _queue_list(text: str) -> tuple[int, ...] | str:
    """``--queues``: ``all``, or RX queues separated by commas."""
    if text.strip() == "all":
        return "all"
    check = _ranged(0, 0xFFFF)
    return tuple(check(part.strip()) for part in text.split(","))


def _ranged(lo: float, hi: float | None, kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse type: ``kind`` within ``lo..hi`` (``hi`` None: no upper bound)."""

    def check(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {_kind_name(kind)}") from None
        if v < lo or (hi is not None and v > hi) or v != v:  # v != v: NaN
            want = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {want})")
        return v

    check.__name__ = kind.__name__
    return check


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0")
    return v


def _kind_name(kind: Callable[[str], Any]) -> str:
    return "an integer" if kind is int else "a number"


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked
    (importlib.metadata costs more to import than the whole CLI otherwise needs)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from importlib.metadata import version

        parser.exit(message=f"cpumap {version('cpumap')}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every default shown (an option whose default is "not given" says in its help what
    that means), and the epilog's tables kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cpumap",
        description="The Linux kernel's XDP cpumap in user space: steer packets over CPUs. "
        "`cpumap FILE` is `cpumap run FILE`.",
    )
    ap.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    # `cpumap bench ...` is handed to cli/bench.py (the checkout's benchmarks/) before this
    # parser runs (main()); the entry is here so that `cpumap --help` lists it.
    sub.add_parser(
        "bench",
        help="measure every side in one run: the kernel's cpumap, ours, Python pipelines, "
        "loops, the main job (--quick: about a minute; see docs/performance.md)",
        add_help=False,
    )
    sub.add_parser(  # handed to cli/gen.py by main(), likewise
        "gen",
        help="send frames out of an interface at millions a second, as xdp-trafficgen "
        "(root; `cpumap gen --help`)",
        add_help=False,
    )
    run = sub.add_parser(
        "run",
        help="steer a capture, an interface or generated traffic over CPU workers",
        description="Run packets through a steering program into one worker per CPU, as\n"
        "`xdp-bench redirect-cpu` does in the kernel.  With no source, the embedded demo\n"
        "capture is used.  `cpumap FILE` is `cpumap run FILE`.",
        formatter_class=_Formatter,
        epilog=_epilog(),
    )
    src = run.add_mutually_exclusive_group()
    # nargs="*" with default=[]: argparse then counts an absent capture as not given in
    # the group (a default of None would make it clash with --iface and --generate).
    src.add_argument(
        "capture",
        nargs="*",
        default=[],
        metavar="CAPTURE",
        help="a pcap or pcapng file (gzip is fine; - reads standard input); several with --ray",
    )
    src.add_argument("--iface", help="receive live from this interface (needs root)")
    src.add_argument("--generate", type=_ranged(0, None), metavar="N", help="N generated frames")
    run.add_argument(
        "-c",
        "--cpu",
        action="append",
        metavar="CPU",
        help="a CPU to steer to, as xdp-bench's -c (repeat; a list like 0-3 is fine too); "
        "default: every CPU we may run on but the RX CPU (all of them if there is one)",
    )
    run.add_argument("--cpus", metavar="LIST", help="CPUs to steer to, e.g. 0,1 or 0-3")
    run.add_argument(
        "--rx-cpu",
        metavar="CPU",
        help="the CPU that receives: reads the source, runs the program and flushes, as "
        "the NIC queue's CPU does (default: the first CPU we may run on that is not "
        "steered to, else the first steered to)",
    )
    run.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the entries as Ray actors: 'auto' joins this machine's Ray cluster or "
        "starts a local one, an address joins that cluster; --cpus may then name "
        "node:cpu entries (docs/cluster.md; needs cpumap[cluster])",
    )
    run.add_argument(
        "--source-node",
        action="append",
        metavar="FILE=NODE",
        help="with --ray: read capture FILE on NODE (repeat; default: the driver's node)",
    )
    run.add_argument(
        "-q",
        "--qsize",
        type=_ranged(1, QSIZE_MAX),
        help=f"ring size per CPU (default {DEFAULT_QSIZE}; {AF_XDP_QSIZE} with --af-xdp, "
        "whose polls hand the map bursts a smaller ring drops: docs/live.md; "
        f"{BULK_QSIZE} for a capture file or --generate, read in polls of {BULK_POLL})",
    )
    run.add_argument("-p", "--program", default="l4-hash", help="steering program (see below)")
    run.add_argument(
        "--per-frame", action="store_true", help="run the program per frame, not vectorized"
    )
    run.add_argument(
        "--non-ip-index",
        type=_ranged(0, None),
        help="l4-proto/l4-filter: CPU index (into the CPU list) for non-IP frames (default 0)",
    )
    run.add_argument(
        "--strict-index", action="store_true", help="l4-proto: xdp-tools' strict indexing"
    )
    run.add_argument(
        "--drop-port",
        type=_ranged(1, 65535),
        action="append",
        metavar="PORT",
        help="l4-filter: UDP port to drop (repeat; default 9)",
    )
    run.add_argument("--no-filter-ipv6", action="store_true", help="l4-filter: look at IPv4 only")
    run.add_argument(
        "--remote-action",
        choices=REMOTE_ACTIONS,
        default="disabled",
        help="a second-stage program on each target CPU, as xdp-bench's: drop, pass (to "
        "the handler) or redirect (to an output that counts and discards)",
    )
    run.add_argument(
        "--handler",
        help="flow-table, count, or module:function; not with --kernel (default: flow-table)",
    )
    run.add_argument(
        "--write",
        metavar="DIR",
        help="write what each CPU got to DIR/cpuN.pcapng (default: no files)",
    )
    run.add_argument("--merge", metavar="FILE", help="with --write: also merge into FILE")
    run.add_argument("--skip-bad", action="store_true", help="skip damaged capture records")
    run.add_argument(
        "--lossy",
        action="store_true",
        help="drop when a ring is full, as the kernel does (live runs always do; captures "
        "and generated traffic wait for room)",
    )
    run.add_argument(
        "--batch", type=_ranged(1, 1 << 20), default=1024, help="frames per worker batch"
    )
    run.add_argument(
        "--poll",
        type=_ranged(1, 1 << 20),
        help=f"frames per RX poll (default {DEFAULT_POLL}; up to {BULK_POLL} for a capture "
        "file or --generate: see -q)",
    )
    run.add_argument(
        "--duration",
        type=_positive_float,
        help="stop after this many seconds (default: at the end)",
    )
    run.add_argument(
        "--setup-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long each worker's handler setup() may take before the worker is killed "
        "and the run refused (default: 60)",
    )
    run.add_argument("--promisc", action="store_true", help="live: promiscuous mode")
    run.add_argument(
        "--af-xdp",
        action="store_true",
        help="live: receive through AF_XDP sockets, an XDP program redirecting each RX "
        "queue; the kernel writes frames straight into the frame pool (needs --iface)",
    )
    run.add_argument(
        "-m",
        "--xdp-mode",
        choices=XDP_MODES,
        help="--af-xdp, --kernel: run the XDP program in the driver (native) or on the skb "
        "(skb: any driver, any MTU) (default: native)",
    )
    run.add_argument(
        "--queue",
        type=_ranged(0, 0xFFFF),
        action="append",
        metavar="Q",
        help="--af-xdp: an RX queue to receive from (repeat; default: every queue)",
    )
    run.add_argument(
        "--queues",
        type=_queue_list,
        metavar="LIST",
        help="--af-xdp: the RX queues to receive from, Q,Q,... or all (default: all); each "
        "queue has its own RX producer, the first in this process, each other one in a "
        "process pinned to CPU Q modulo the CPUs (as a NIC queue's NAPI)",
    )
    run.add_argument(
        "--kernel",
        action="store_true",
        help="with --iface: steer with the kernel's own cpumap, as xdp-bench redirect-cpu: "
        "the program (-p, one of the eight modes) on the interface's XDP hook, a real "
        "cpumap entry of -q frames per CPU whose second stage does --remote-action (default "
        "pass: to the netstack); the figures are the kernel's (root; docs/cli.md)",
    )
    run.add_argument(
        "-D",
        "--redirect-device",
        metavar="DEV",
        help="--kernel --remote-action redirect: the device each CPU's second stage "
        "redirects frames out of, as xdp-bench's -D",
    )
    run.add_argument("--top", type=_ranged(0, None), default=10, help="flows to list (flow-table)")
    run.add_argument(
        "-i", "--interval", type=_positive_float, default=2.0, help="seconds between updates"
    )
    run.add_argument(
        "-e", "--extended", action="store_true", help="also show per-producer -> CPU rows"
    )
    run.add_argument("--quiet", action="store_true", help="no live view, only the summary")
    run.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per interval and a final summary object, nothing else "
        "(docs/cli.md has the schema)",
    )
    run.add_argument(
        "--metrics-port",
        type=_ranged(1, 65535),
        metavar="PORT",
        help="serve Prometheus metrics on PORT",
    )
    return ap


def _epilog() -> str:
    return (
        "programs: "
        + ", ".join(BUILTIN_PROGRAMS)
        + ", or module:function / file.py:function\n\n"
        + EXIT_TABLE
    )


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """``cpumap FILE ...`` and ``cpumap --cpus 0 ...`` mean ``cpumap run ...``."""
    argv = list(argv)
    if not argv:
        return ["run"]
    if argv[0] in (*COMMANDS, "-h", "--help", "--version"):
        return argv
    return ["run", *argv]


# -- from the parsed arguments to a checked run configuration ------------------------------------


def run_config(args: argparse.Namespace) -> RunConfig:
    """Every check of ``run``'s arguments that needs no worker, then the frozen
    configuration the run reads (raises UsageError, before any process, segment or file
    of the run exists)."""
    if args.kernel:
        return kernel_run_config(args)
    if args.redirect_device:
        raise UsageError(
            "--redirect-device goes with --kernel --remote-action redirect (without --kernel "
            "a redirect goes to an output that counts and discards)"
        )
    captures = tuple(args.capture or ())
    for path in captures:
        check_capture_path(path)
    if len(captures) > 1 and not args.ray:
        raise UsageError(
            f"{len(captures)} captures given: run one at a time, or all of them on a Ray "
            f"cluster with --ray auto"
        )
    ray = ray_config(args, captures) if args.ray else None
    cpus = () if ray else tuple(chosen_cpus(args))
    program = program_config(args, len(cpus))
    view = view_config(args)
    write, merge = output_paths(args)
    handler = handler_config(args.handler or "flow-table", write, on_ray=ray is not None)
    handler = dataclasses.replace(handler, setup_timeout=args.setup_timeout)
    return RunConfig(
        source=SourceConfig(
            captures=captures,
            iface=args.iface,
            generate=args.generate,
            promiscuous=args.promisc,
            **af_xdp_options(args),
            skip_bad=args.skip_bad,
            lossless=not args.lossy,
            poll=default_poll(args),
        ),
        program=program,
        handler=handler,
        cpus=cpus,
        rx_cpu=None if ray else rx_cpu(args, list(cpus)),
        qsize=default_qsize(args),
        batch=args.batch,
        duration=args.duration,
        write=write,
        merge=merge,
        view=view,
        ray=ray,
    )


# What a run of the kernel's cpumap does not take: each is refused before anything loads.
_USERSPACE_ONLY = {
    "handler": "--handler is not supported with --kernel yet: behind the kernel's cpumap "
    "each CPU runs its second stage (--remote-action drop|pass|redirect), not a Python "
    "handler (handlers there are a stretch goal); drop --handler",
    "ray": "--ray runs our engine on a cluster; drop --kernel or --ray",
    "write": "--write is not supported with --kernel (the frames stay in the kernel)",
    "merge": "--merge is not supported with --kernel (the frames stay in the kernel)",
    "rx_cpu": "--rx-cpu is not for --kernel: the kernel receives on the CPU of the "
    "interface's RX queue (set its IRQ affinity instead)",
    "per_frame": "--per-frame is not for --kernel: the eBPF program runs per frame anyway",
    "lossy": "--lossy is not needed with --kernel: the kernel's cpumap drops at a full ring",
    "queue": "--queue goes with --af-xdp, not --kernel (the program is on every RX queue)",
    "queues": "--queues goes with --af-xdp, not --kernel (the program is on every RX queue)",
    "promisc": "--promisc is not for --kernel: set it with `ip link set IFACE promisc on`",
    "metrics_port": "--metrics-port is not supported with --kernel yet",
    "skip_bad": "--skip-bad is for capture files, not --kernel",
}


def kernel_run_config(args: argparse.Namespace) -> RunConfig:
    """``--kernel``, checked: the kernel's own cpumap on ``--iface`` (raises UsageError,
    before any program or map is loaded)."""
    if not args.iface:
        raise UsageError("--kernel steers an interface's traffic: add --iface IFACE")
    if args.af_xdp:
        raise UsageError(
            "--kernel and --af-xdp: choose one (the kernel's cpumap steers in the kernel, "
            "--af-xdp brings the frames to ours)"
        )
    for name, words in _USERSPACE_ONLY.items():
        if getattr(args, name, None):
            raise UsageError(words)
    # Imported here: only a --kernel run needs the eBPF side.
    from ..kernel.steering import STEERING_MODES

    if args.program not in STEERING_MODES:
        raise UsageError(
            f"--program {args.program} has no eBPF form for --kernel: use one of "
            f"{', '.join(STEERING_MODES)} (or drop --kernel to run it in our engine)"
        )
    cpus = tuple(sorted({c for p in _cpu_parts(args) for c in parse_cpus(p)}) or usable_cpus())
    program = program_config(args, len(cpus))
    return RunConfig(
        source=SourceConfig(iface=args.iface, lossless=False),
        program=program,
        cpus=cpus,
        qsize=args.qsize or DEFAULT_QSIZE,
        duration=args.duration,
        view=view_config(args),
        kernel=kernel_config(args, program, cpus),
    )


def kernel_config(
    args: argparse.Namespace, program: ProgramConfig, cpus: tuple[int, ...]
) -> KernelConfig:
    """The steering spec, the XDP mode and the remote action of a ``--kernel`` run."""
    from ..kernel.steering import SteeringSpec

    try:
        spec = SteeringSpec.of(program.name, cpus, **dict(program.options))
    except (TypeError, ValueError) as e:
        raise UsageError(f"--program {program.name}: {e}; see `cpumap run --help`") from None
    # No --remote-action is xdp-bench's "disabled": frames go on to the netstack, which
    # the "pass" second stage does too, counting them.
    action = "pass" if args.remote_action == "disabled" else args.remote_action
    if (action == "redirect") != bool(args.redirect_device):
        raise UsageError(
            "--remote-action redirect needs the device: add --redirect-device DEV"
            if action == "redirect"
            else "--redirect-device goes with --remote-action redirect"
        )
    return KernelConfig(spec, args.xdp_mode or "native", action, args.redirect_device)


DEFAULT_QSIZE = 2048  # xdp-bench's, and the kernel mode's
# An AF_XDP poll places what the socket's RX ring holds -- measured here: a median of 7,400
# frames in 450 us after the RX thread waited for its CPU -- and a flush that finds the ring
# full drops at once, as the kernel's does.  At 2048 half of such bursts dropped with the
# worker's CPU half idle; 8192 holds them (delivered 2.2-3.3x over 2048, same offered load).
AF_XDP_QSIZE = 8192


# A capture file or the generator is read as fast as the map takes it (a lossless source: the
# RX side waits for room), so its polls can be bigger than a live source's, where a poll's size
# is latency: the RX side's cost is per call (lend, the program, the verdicts, the flush), and
# polls of 4,096 into rings of 8,192 cut the main job's wall clock to 0.75x of 1,024 into 2,048
# (paired, medians of 7; CPU 0.78x; docs/performance.md).  Worker batches stay 1,024: 4,096
# measured the same (1.00x).  On a Ray cluster too, since its sources read in place into
# slots of one poll shared with the entries (docs/cluster.md): 0.154 against 0.217 s for
# 600,000 frames with polls of 1,024 into queues of 2,048 (medians of 5, alternated).
DEFAULT_POLL = 1024
BULK_POLL = 4096
BULK_QSIZE = 8192


def _bulk(args: argparse.Namespace) -> bool:
    """A capture file or the generator (locally or on a Ray cluster): no live interface."""
    return args.iface is None


def default_qsize(args: argparse.Namespace) -> int:
    """``-q`` as given, else the default for the source (``AF_XDP_QSIZE`` with --af-xdp,
    ``BULK_QSIZE`` for a capture file or the generator)."""
    if args.qsize is not None:
        return int(args.qsize)
    if args.af_xdp:
        return AF_XDP_QSIZE
    return BULK_QSIZE if _bulk(args) else DEFAULT_QSIZE


def default_poll(args: argparse.Namespace) -> int:
    """``--poll`` as given, else ``DEFAULT_POLL`` -- and for a capture file or the
    generator up to ``BULK_POLL``: half the ring at most, so one poll's frames for one CPU
    never need more than the ring holds."""
    if args.poll is not None:
        return int(args.poll)
    if not _bulk(args):
        return DEFAULT_POLL
    return max(DEFAULT_POLL, min(BULK_POLL, default_qsize(args) // 2))


def af_xdp_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--af-xdp``, ``-m`` and ``--queue``, checked: the AF_XDP fields of the source."""
    if not args.af_xdp:
        if args.xdp_mode:  # (--kernel takes it too, and is checked before this)
            raise UsageError(
                "-m/--xdp-mode goes with --af-xdp or --kernel: add one of them and --iface IFACE"
            )
        for given, name in ((args.queue, "--queue"), (args.queues, "--queues")):
            if given is not None:
                raise UsageError(f"{name} goes with --af-xdp: add --af-xdp --iface IFACE")
        return {}
    if not args.iface:
        raise UsageError("--af-xdp receives from an interface: add --iface IFACE")
    if args.promisc:
        raise UsageError(
            "--promisc is the TPACKET_V3 path's; with --af-xdp set the interface "
            "promiscuous itself: `ip link set IFACE promisc on`"
        )
    if args.queues == "all" and args.queue:
        raise UsageError("--queues all and --queue Q: choose one")
    named = [*(args.queue or ()), *(args.queues if isinstance(args.queues, tuple) else ())]
    queues = tuple(dict.fromkeys(named)) if named else None
    return {"af_xdp": True, "xdp_mode": args.xdp_mode or "native", "queues": queues}


def chosen_cpus(args: argparse.Namespace) -> list[int]:
    """The CPUs to steer to: the union of ``-c`` and ``--cpus``; when neither is given,
    every usable CPU but the RX CPU (every usable CPU if that is the only one)."""
    parts = _cpu_parts(args)
    if not parts:
        usable = usable_cpus()
        rx = _given_rx_cpu(args)
        rx = usable[0] if rx is None else rx
        return [c for c in usable if c != rx] or [rx]
    cpus: set[int] = set()
    for p in parts:
        cpus.update(parse_cpus(p))
    return sorted(cpus)


def _cpu_parts(args: argparse.Namespace) -> list[str]:
    return [*(args.cpu or ()), *([args.cpus] if args.cpus is not None else [])]


def rx_cpu(args: argparse.Namespace, cpus: list[int]) -> int:
    """The CPU the RX side is pinned to: ``--rx-cpu``, else the first usable CPU that is
    not a target (the RX side then has a CPU of its own, as in the kernel's usual set-up:
    the NIC queue's CPU redirects to others), else the first target."""
    given = _given_rx_cpu(args)
    if given is not None:
        return given
    rest = [c for c in usable_cpus() if c not in cpus]
    return rest[0] if rest else cpus[0]


def _given_rx_cpu(args: argparse.Namespace) -> int | None:
    text = getattr(args, "rx_cpu", None)
    if text is None:
        return None
    try:
        cpu = int(text)
    except ValueError:
        raise UsageError(f"--rx-cpu {text!r}: give one CPU number, like 0") from None
    allowed = usable_cpus()
    if cpu not in allowed:
        raise UsageError(
            f"--rx-cpu: CPU {cpu} is not available here; "
            f"use one of {format_cpu_list(allowed)} (see `nproc`, `taskset -p $$`)"
        )
    return cpu


def program_config(args: argparse.Namespace, n_cpus: int) -> ProgramConfig:
    """``--program`` and its options, checked; a ``module:function`` is imported now, so
    that a bad module is a usage error and not a crash after the workers started."""
    name = args.program
    if name not in BUILTIN_PROGRAMS and ":" not in name:
        raise UsageError(
            f"--program {name!r}: unknown; use one of {', '.join(BUILTIN_PROGRAMS)} "
            f"or module:function"
        )
    if ":" in name:
        try:
            load_object(name)
        except LoadError as e:
            raise UsageError(f"--program: {e}") from None
    if args.non_ip_index is not None and n_cpus and args.non_ip_index >= n_cpus:
        raise UsageError(
            f"--non-ip-index {args.non_ip_index}: an index into the {n_cpus} CPUs "
            f"{format_cpu_list(chosen_cpus(args))}, so 0..{n_cpus - 1}"
        )
    options: list[tuple[str, Any]] = []
    if args.non_ip_index is not None:
        options.append(("non_ip_index", args.non_ip_index))
    if args.strict_index:
        options.append(("strict_index", True))
    if args.drop_port:
        options.append(("drop_ports", tuple(args.drop_port)))
    if args.no_filter_ipv6:
        options.append(("filter_ipv6", False))
    return ProgramConfig(name, not args.per_frame, tuple(options), args.remote_action)


def handler_config(name: str, write: Path | None, *, on_ray: bool) -> HandlerConfig:
    """``--handler``, loaded and checked (``--write`` chains the capture writer to it)."""
    if name == "flow-table":
        handler: Any = FlowTable()
    elif name == "count":
        handler = Count()  # vectorized: one call per worker batch
    elif ":" not in name:
        raise UsageError(f"--handler {name!r}: use flow-table, count, or module:function")
    elif on_ray:
        return HandlerConfig(name, name)  # loaded on each entry's node
    else:
        try:
            handler = load_handler(name)
        except LoadError as e:
            raise UsageError(f"--handler: {e}") from None
    if write is None:
        return HandlerConfig(name, handler)
    if not is_batch_handler(handler):
        raise UsageError(
            "--write needs a batch handler (flow-table, count, or one marked "
            "with cpumap.batch_handler)"
        )
    return HandlerConfig(name, Chain(handler, CaptureSink(str(write))))


def view_config(args: argparse.Namespace) -> ViewConfig:
    if args.json and args.quiet:
        raise UsageError("--json and --quiet: choose one")
    mode: ViewMode = "json" if args.json else "quiet" if args.quiet else "text"
    return ViewConfig(mode, args.interval, args.extended, args.top, args.metrics_port)


def output_paths(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """``--write DIR`` and ``--merge FILE``, checked (the directory is created)."""
    if args.merge and not args.write:
        raise UsageError("--merge FILE needs --write DIR (the per-CPU files it merges)")
    write = Path(args.write) if args.write else None
    merge = Path(args.merge) if args.merge else None
    if write is not None:
        check_write_dir(write)
    if merge is not None:
        check_merge_file(merge)
    return write, merge


# What a run on a Ray cluster does not do (yet): each is refused before Ray starts.
_LOCAL_ONLY = {
    "iface": "--iface (live sources run on one machine)",
    "generate": "--generate",
    "write": "--write",
    "merge": "--merge",
    "extended": "-e/--extended",
}


def ray_config(args: argparse.Namespace, captures: tuple[str, ...]) -> RayConfig:
    """``--ray`` and what goes with it, checked before any cluster is joined."""
    for name, what in _LOCAL_ONLY.items():
        if getattr(args, name, None):
            raise UsageError(f"--ray runs capture files only; {what} is not supported with it")
    if args.remote_action != "disabled":
        raise UsageError("--remote-action is not supported with --ray (no second stages there)")
    if args.rx_cpu is not None:
        raise UsageError("--rx-cpu is not supported with --ray (each source picks its CPU)")
    nodes = tuple(_source_node(text, captures) for text in args.source_node or ())
    return RayConfig(args.ray, ray_entries(",".join(_cpu_parts(args))), nodes)


def ray_entries(text: str) -> tuple[Place, ...] | None:
    """``-c``/``--cpus`` on a cluster: ``node:cpu`` places (None: the default places --
    every CPU of every node but the first of each node that reads files: cluster/run.py)."""
    if not text:
        return None
    # Imported here: the cluster package is loaded only for a --ray run.
    from ..cluster.places import parse_entries

    try:
        return tuple(parse_entries(text))
    except ValueError as e:
        raise UsageError(f"--cpus {text!r}: {e}") from None


def _source_node(text: str, captures: tuple[str, ...]) -> tuple[str, str]:
    path, sep, node = text.rpartition("=")
    if not sep or not path or not node:
        raise UsageError(f"--source-node {text!r}: give FILE=NODE, e.g. a.pcap=w1")
    if path not in captures:
        raise UsageError(f"--source-node {text!r}: {path} is not one of the captures given")
    return path, node


def check_capture_path(path: str) -> None:
    if path == "-":  # standard input: a pipe, checked when read
        return
    p = Path(path)
    if not p.exists():
        raise UsageError(
            f"{path}: no such file; give a pcap/pcapng capture, --iface IFACE, or --generate N"
        )
    if p.is_dir():
        raise UsageError(f"{path}: is a directory; give a pcap or pcapng file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{path}: not readable (permission denied)")


STALE_GLOBS = ("cpu*.pcapng", "cpu*.pcap", "cpu*.pcapng.gz", "cpu*.pcap.gz")


def check_write_dir(d: Path) -> None:
    """``--write DIR``: a directory we can create or write, holding no earlier run's files.

    Refused rather than cleaned: files named like ours from an earlier run would be merged
    with this run's (every packet twice) or shadow them, and deleting a user's files
    unasked is worse than asking them to."""
    if d.exists() and not d.is_dir():
        raise UsageError(f"--write {d}: exists and is not a directory; give a directory")
    if d.is_dir():
        stale = sorted(str(p.name) for g in STALE_GLOBS for p in d.glob(g))
        if stale:
            shown = ", ".join(stale[:4]) + (", ..." if len(stale) > 4 else "")
            raise UsageError(
                f"--write {d}: already holds {shown} from an earlier run; remove them or "
                f"choose an empty directory (they would be mixed with this run's)"
            )
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--write {d}: cannot create it: {e.strerror}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"--write {d}: not writable (permission denied)")
    _check_writable(d)


def _check_writable(d: Path) -> None:
    probe = d / ".cpumap-write-check"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--write {d}: cannot write there: {e.strerror}") from None


def check_merge_file(f: Path) -> None:
    if f.is_dir():
        raise UsageError(f"--merge {f}: is a directory; give a file name")
    parent = f.parent
    if not parent.is_dir():
        raise UsageError(f"--merge {f}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--merge {f}: directory {parent} is not writable")
