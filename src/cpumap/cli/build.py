"""Turning checked arguments into engine objects: the program, the handler, the second
stage (``--remote-action``) and the packet source.

User code is loaded here, before any worker starts: a bad ``module:function`` is a usage
error with nothing to clean up.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..abi import LINKTYPE_ETHERNET, XDP_DROP, XDP_PASS, XDP_REDIRECT
from ..capture import CaptureError, open_capture
from ..demo import demo_capture_path
from ..engine import CpuMap, OutputMap
from ..generator import Generator
from ..live import LiveSource
from ..packets import PacketBatch
from ..programs import MODES, FlowHash, LoadError, load_handler, load_program, vectorized
from ..programs import make_program as make_mode
from ..sinks import CaptureSink, Chain, Count, FlowTable
from .errors import UsageError

# Link types by name, for the note on non-Ethernet captures under a built-in mode.
LINKTYPE_NAMES = {0: "BSD loopback", 1: "Ethernet", 101: "raw IP", 108: "OpenBSD loopback",
                  113: "Linux cooked (SLL)", 228: "raw IPv4", 229: "raw IPv6",
                  276: "Linux cooked v2 (SLL2)"}  # fmt: skip


def load_user_program(args: argparse.Namespace) -> Any:
    """A ``module:function`` program, loaded before the map exists (None for a built-in).

    One that wants the map (a ``cmap`` keyword) is bound to it later, by :func:`make_program`."""
    if ":" not in args.program:
        return None
    return _load(args.program, "program", vectorized=None if not args.per_frame else False)


def make_program(args: argparse.Namespace, cmap: CpuMap, cpus: list[int], user: Any) -> Any:
    """The program ``--program`` names: a built-in mode (xdp-bench redirect-cpu -p MODE),
    ``flow-hash`` (the skb's symmetric hash), or the loaded ``module:function``."""
    name = args.program
    vec = not args.per_frame
    if name == "flow-hash":
        return FlowHash(cmap, cpus, vectorized=vec)
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
            return make_mode(name, cmap, cpus, vectorized=vec, **options)
        except (TypeError, ValueError) as e:
            raise UsageError(f"--program {name}: {e}; see `cpumap run --help`") from None
    # A file's program that takes the map as a keyword is bound to it now.
    return _load(name, "program", cmap=cmap, vectorized=None if vec else False)


def make_handler(name: str, write: str | None) -> Any:
    if name == "flow-table":
        handler: Any = FlowTable()
    elif name == "count":
        handler = Count()  # vectorized: one call per worker batch
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


# -- --remote-action: the second stage on each target CPU --------------------------------------


def _discard(batch: Any) -> None:
    """The redirect target of ``--remote-action redirect``: takes the frames, keeps none
    (xdp-bench redirects to a device; here the second stage's redirect count says it)."""


def remote_program(action: str) -> Any:
    """xdp-bench's ``--remote-action``: a vectorized second-stage program, or None."""
    if action == "disabled":
        return None
    verdict = {"drop": XDP_DROP, "pass": XDP_PASS, "redirect": XDP_REDIRECT}[action]
    outputs = OutputMap([_discard]) if action == "redirect" else None

    @vectorized
    def remote(batch: Any) -> Any:
        n = len(batch)
        v = np.full(n, verdict, dtype=np.uint8)
        if outputs is None:
            return v
        return v, np.zeros(n, dtype=np.uint32), outputs

    remote.__name__ = f"remote_{action}"
    return remote


# -- sources ------------------------------------------------------------------------------------


@dataclass
class Source:
    """What feeds the RX producer, with what the summary says about it."""

    batches: Iterator[PacketBatch]
    what: str  # for the banner
    lossless: bool
    reader: Any = None  # a capture reader (progress, skipped, link types)
    live: LiveSource | None = None

    def close(self) -> None:
        for c in (self.reader, self.live):
            if c is not None:
                c.close()


def open_source(args: argparse.Namespace, stop: threading.Event) -> Source:
    if args.iface:
        return _live(args, stop)
    if args.generate is not None:
        gen = Generator(
            flows=256, sizes=(64, 512, 1400), count=args.generate, seed=1, undersize="clamp"
        )
        return Source(gen.batches(args.poll), f"{args.generate:,} generated frames", not args.lossy)
    path = args.capture or str(demo_capture_path())
    try:
        reader = open_capture(path, skip_bad=args.skip_bad, batch_size=args.poll)
    except CaptureError as e:
        raise UsageError(describe_capture_error(e, args.skip_bad)) from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    what = "the embedded demo capture" if not args.capture else path
    return Source(reader.batches(args.poll), what, not args.lossy, reader=reader)


def describe_capture_error(e: CaptureError, skip_bad: bool) -> str:
    """The message for a capture that cannot be read, with the --skip-bad hint only where
    it would help: damage inside a file that is a capture, and not given already."""
    text = str(e)
    if skip_bad or e.offset == 0 or "magic" in text or "too short" in text:
        return text
    return f"{text} (--skip-bad skips damaged records)"


def _live(args: argparse.Namespace, stop: threading.Event) -> Source:
    try:
        src = LiveSource(args.iface, promiscuous=args.promisc)
    except PermissionError as e:
        raise UsageError(f"--iface {args.iface}: {e} (live capture needs root)") from None
    except OSError as e:
        text = str(e)
        hint = "" if "ip link" in text else "; see `ip link` for interfaces"
        raise UsageError(f"--iface {args.iface}: {text}{hint}") from None
    return Source(src.batches(stop=stop), f"interface {args.iface}", False, live=src)


def non_ethernet_note(program: str, linktypes: tuple[int, ...], xdp_pass: int) -> str | None:
    """Why a capture's frames were all passed, when that is the likely reason."""
    if program not in MODES or not xdp_pass:
        return None
    other = [lt for lt in linktypes if lt != LINKTYPE_ETHERNET]
    if not other:
        return None
    names = ", ".join(f"{LINKTYPE_NAMES.get(lt, 'link type')} ({lt})" for lt in other)
    return (
        f"note: {xdp_pass:,} frames were passed (xdp pass) unsteered: the built-in "
        f"xdp-bench modes parse Ethernet frames only, as XDP programs see them, and this "
        f"capture holds {names}; -p flow-hash steers every link type the skb parses"
    )
