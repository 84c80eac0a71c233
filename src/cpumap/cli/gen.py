"""``cpumap gen``: frames out of an interface at millions a second, as ``xdp-trafficgen``
sends them -- live test runs of an XDP_TX program (``cpumap.kernel.trafficgen``).

    cpumap gen --netns NS --iface veth0 --count 10000000
    cpumap gen --iface veth0 --duration 5 --rate 1e6 --flows 64 --json
    cpumap gen --iface veth0 --capture trace.pcapng --cpu 1

The frames are built here (the kernel package imports no generator and no capture
reader) and handed down as bytes: a capture's first frames, or one frame per flow of
:class:`~cpumap.generator.Generator` (UDP over IPv4, addressed to the interface's veth
peer where there is one).  Before sending, the generator's check for a peer that would
drop every frame unseen runs; what it finds is one warning line on stderr, and the run
goes on (a sender measured alone is a use too).

Like ``cpumap run``: every argument is checked before anything is sent, and a bad one --
no such interface, no privilege, a bad rate -- is one line on stderr and exit status 2;
SIGINT/SIGTERM end the run after the call in flight, with the summary, and exit status
130/143; a kernel refusal mid-run is status 4.  ``--json`` prints the summary as one
JSON object (``docs/cli.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ..abi import LINKTYPE_ETHERNET
from ..capture import CaptureError, open_capture
from ..cpus import format_cpu_list, usable_cpus
from ..generator import Generator, min_frame_size
from ..kernel.trafficgen import TABLE_MAX, GenOptions, GenOptionsError, GenResult, TrafficGen
from ..kernel.xdp import XdpError, link_state, veth_peer
from ..live.netns import NetnsError, entered
from .errors import ExitStatus, UsageError

DEFAULT_DST_MAC = "02:00:00:00:00:02"  # the generator's, where the interface has no peer
MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_SIGNALS = {signal.SIGINT: ExitStatus.SIGINT, signal.SIGTERM: ExitStatus.SIGTERM}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, status 2, as every bad argument of ``cpumap`` (no usage dump)."""
        self.exit(ExitStatus.USAGE, f"cpumap gen: error: {message}\n")


def _positive(kind: type[int] | type[float]) -> Any:
    def check(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0 or v == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return v

    check.__name__ = kind.__name__
    return check


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="cpumap gen",
        description="Send frames out of an interface (on a veth: into its peer) by live "
        "BPF_PROG_TEST_RUN calls of an XDP_TX program, as xdp-trafficgen does (root).",
        epilog="With neither --count nor --duration it sends until Ctrl-C.  Exit status: 0 "
        "sent; 2 a bad argument, no such interface, no privilege (nothing sent); 4 the "
        "kernel refused a call mid-run; 130/143 stopped by SIGINT/SIGTERM (summary shown).",
    )
    ap.add_argument("--iface", required=True, help="the interface to send out of")
    ap.add_argument("--netns", help="the interface's network namespace (as `ip -n NS`)")
    ap.add_argument("--count", type=_positive(int), help="frames to send")
    ap.add_argument("--duration", type=_positive(float), metavar="S", help="seconds to send for")
    ap.add_argument("--rate", type=_positive(float), help="frames/s offered (default: all it can)")
    ap.add_argument("--cpu", type=int, help="pin the sending thread to this CPU")
    ap.add_argument("--capture", type=Path, help="send this capture's frames (its first 65536)")
    ap.add_argument(
        "--flows",
        type=_positive(int),
        default=1,
        help="generated frames sent in turn, one per flow (default 1)",
    )
    ap.add_argument(
        "--size", type=_positive(int), default=64, help="generated frames' bytes (default 64)"
    )
    ap.add_argument("--seed", type=int, default=0, help="the generator's seed (default 0)")
    ap.add_argument("--dst-mac", help="generated frames' destination (default: the veth peer)")
    ap.add_argument(
        "--frames-per-call",
        type=_positive(int),
        default=1 << 20,
        help="frames per test run: each has a fixed cost of some 25-40 ms (default 1048576)",
    )
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return ap


@dataclass(frozen=True, slots=True)
class GenConfig:
    """``cpumap gen``'s checked arguments."""

    iface: str
    netns: str | None
    options: GenOptions
    capture: Path | None
    flows: int
    size: int
    seed: int
    dst_mac: str | None
    json: bool


def gen_config(args: argparse.Namespace) -> GenConfig:
    """The arguments checked (:class:`UsageError`) into a :class:`GenConfig`."""
    if args.cpu is not None and args.cpu not in usable_cpus():
        allowed = format_cpu_list(usable_cpus())
        raise UsageError(f"--cpu {args.cpu} is not available here; use one of {allowed}")
    if args.flows > TABLE_MAX:
        raise UsageError(f"--flows {args.flows}: at most {TABLE_MAX}")
    if args.size < (least := min_frame_size("udp", 4)):
        raise UsageError(f"--size {args.size}: a generated UDP/IPv4 frame takes at least {least}")
    if args.dst_mac is not None and not MAC.fullmatch(args.dst_mac):
        raise UsageError(f"--dst-mac {args.dst_mac}: not a MAC address like {DEFAULT_DST_MAC}")
    if args.capture is not None and not args.capture.is_file():
        raise UsageError(f"--capture {args.capture}: no such file")
    try:
        options = GenOptions(
            count=args.count,
            duration_s=args.duration,
            rate=args.rate,
            cpu=args.cpu,
            frames_per_call=args.frames_per_call,
        )
    except GenOptionsError as e:
        raise UsageError(str(e)) from None
    return GenConfig(
        args.iface, args.netns, options, args.capture, args.flows, args.size, args.seed,
        args.dst_mac, args.json,
    )  # fmt: skip


# --- the frames ---------------------------------------------------------------------------------


def capture_frames(path: Path) -> list[bytes]:
    """The capture's first :data:`TABLE_MAX` Ethernet frames."""
    frames: list[bytes] = []
    try:
        with open_capture(str(path)) as reader:
            for batch in reader.batches(1024):
                for p in batch:
                    if p.linktype != LINKTYPE_ETHERNET:
                        raise UsageError(f"--capture {path}: a frame is not Ethernet")
                    frames.append(p.data)
                if len(frames) >= TABLE_MAX:
                    break
    except (CaptureError, OSError) as e:
        raise UsageError(f"--capture {path}: {e}") from None
    if not frames:
        raise UsageError(f"--capture {path}: no frames")
    return frames[:TABLE_MAX]


def generated_frames(config: GenConfig, src_mac: bytes, dst_mac: str | bytes) -> list[bytes]:
    """One UDP/IPv4 frame of ``config.size`` bytes per flow."""
    try:
        gen = Generator(
            flows=config.flows, sizes=config.size, protocols=("udp",), ip_versions=(4,),
            seed=config.seed, src_mac=src_mac or "02:00:00:00:00:01", dst_mac=dst_mac,
        )  # fmt: skip
        return [bytes(row) for row in gen.frames(config.flows)]
    except ValueError as e:
        raise UsageError(str(e)) from None


def open_generator(config: GenConfig) -> TrafficGen:
    """The generator on ``config.iface``, made inside its namespace, its frames built."""
    with entered(config.netns):
        state = link_state(config.iface)
        if config.capture is not None:
            frames = capture_frames(config.capture)
        else:
            peer = veth_peer(state)
            dst = config.dst_mac or (peer.mac if peer and peer.mac else DEFAULT_DST_MAC)
            frames = generated_frames(config, state.mac, dst)
        return TrafficGen(config.iface, frames)


# --- the run ------------------------------------------------------------------------------------


@contextlib.contextmanager
def signals_stop(stop: threading.Event, caught: list[signal.Signals]) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the sender ends after its call in flight) and are
    noted in ``caught``; the previous handlers come back on exit."""

    def handler(signum: int, _frame: object) -> None:
        caught.append(signal.Signals(signum))
        stop.set()

    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _frames(n: int) -> str:
    return f"{n:,} frame" + ("" if n == 1 else "s")


def summary(result: GenResult, gen: TrafficGen) -> str:
    rate = result.frames_per_s
    return (
        f"cpumap gen: {_frames(result.sent)} out of {result.interface} in "
        f"{result.seconds:.2f} s: {rate / 1e6:.2f} M frames/s; drops seen: {result.drops:,} "
        f"({result.interface} tx_dropped); {_frames(gen.cycle)} in turn"
    )


def as_json(result: GenResult, gen: TrafficGen, warnings: list[str], status: int) -> str:
    caught = {ExitStatus.SIGINT: "SIGINT", ExitStatus.SIGTERM: "SIGTERM"}
    return json.dumps(
        {
            "type": "summary",
            "interface": result.interface,
            "sent": result.sent,
            "seconds": result.seconds,
            "frames_per_s": result.frames_per_s,
            "drops": result.drops,
            "calls": result.calls,
            "cycle_frames": gen.cycle,
            "warnings": warnings,
            "stopped_by": caught.get(ExitStatus(status)),
            "exit_status": status,
        }
    )


def send(config: GenConfig, gen: TrafficGen) -> int:
    """Check, send, print; the exit status."""
    warnings = [w] if (w := gen.napi_problem()) else []
    for w in warnings:
        print(f"cpumap gen: warning: {w}", file=sys.stderr)
    stop, caught = threading.Event(), []
    with signals_stop(stop, caught):
        try:
            result = gen.run(config.options, stop)
        except XdpError as e:
            print(f"cpumap gen: error: {e.strerror}", file=sys.stderr)
            return ExitStatus.SOURCE
    status = _SIGNALS[caught[0]] if caught else ExitStatus.OK
    print(as_json(result, gen, warnings, status) if config.json else summary(result, gen))
    return status


def _refused(config: GenConfig, e: OSError) -> str:
    """A refusal before anything was sent, as the one line ``cpumap gen`` prints."""
    if e.errno == errno.ENODEV:  # name the namespace the command looked in
        where = f"namespace {config.netns!r}" if config.netns else "this network namespace"
        return f"--iface {config.iface}: no such interface in {where} (`ip link`; --netns NS)"
    if isinstance(e, XdpError):
        return str(e.strerror)
    if isinstance(e, PermissionError) and config.netns:  # setns(2) needs CAP_SYS_ADMIN
        return f"--netns {config.netns}: entering a network namespace needs root"
    return str(e)


def _usage(message: str) -> int:
    print(f"cpumap gen: error: {message}", file=sys.stderr)
    return ExitStatus.USAGE


def main(argv: Sequence[str]) -> int:
    """``cpumap gen ARGS``: the exit status."""
    try:
        config = gen_config(build_parser().parse_args(argv))
    except UsageError as e:
        return _usage(str(e))
    try:
        gen = open_generator(config)
    except (UsageError, GenOptionsError) as e:
        return _usage(str(e))
    except NetnsError as e:
        return _usage(f"--netns {config.netns}: {e}")
    except OSError as e:
        return _usage(_refused(config, e))
    with gen:
        return send(config, gen)
