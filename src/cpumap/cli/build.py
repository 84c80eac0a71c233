"""Engine objects from a checked run configuration: the program, the second stage
(``--remote-action``) and the packet source.

The user's handler and program modules were loaded by ``args``; what is built here needs
the map (a built-in program steers into it) or opens a file or socket (the source).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ..abi import LINKTYPE_ETHERNET, XDP_DROP, XDP_PASS, XDP_REDIRECT
from ..capture import CaptureError, CaptureErrorKind, ReadInterrupted, Stop, open_capture
from ..closing import Closing
from ..demo import demo_capture_path
from ..engine import CpuMap, OutputMap
from ..generator import Generator
from ..kernel.xdp import XdpError, XdpMode
from ..live import LiveSource, XskError, XskSource
from ..live.interface import NoSuchInterface, resolve_interface
from ..live.xsk_queues import XskQueues
from ..live.xsk_source import all_queues
from ..packets import PacketBatch
from ..programs import MODES, LoadError, load_program, make_program, vectorized
from .config import ProgramConfig, SourceConfig
from .errors import UsageError, limit_text

# Link types by name, for the note on non-Ethernet captures under a built-in mode.
LINKTYPE_NAMES = {0: "BSD loopback", 1: "Ethernet", 101: "raw IP", 108: "OpenBSD loopback",
                  113: "Linux cooked (SLL)", 228: "raw IPv4", 229: "raw IPv6",
                  276: "Linux cooked v2 (SLL2)"}  # fmt: skip


def steering_program(config: ProgramConfig, cmap: CpuMap, cpus: tuple[int, ...]) -> Any:
    """The program ``--program`` names: a built-in (xdp-bench redirect-cpu's modes, or
    ``flow-hash``) over ``cpus``, or the user's ``module:function`` -- bound to the map
    now if it takes a ``cmap`` keyword."""
    if config.user:
        try:
            vec = None if config.vectorized else False  # a vectorized one keeps its mark
            return load_program(config.name, cmap=cmap, vectorized=vec)
        except LoadError as e:
            raise UsageError(f"--program: {e}") from None
    try:
        return make_program(
            config.name, cmap, list(cpus), vectorized=config.vectorized, **dict(config.options)
        )
    except (TypeError, ValueError) as e:
        raise UsageError(f"--program {config.name}: {e}; see `cpumap run --help`") from None


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


@dataclass(frozen=True)
class SourceFacts:
    """What a source says of itself at the end of a run (the summary's source lines)."""

    what: str  # for the banner and the summary: a path, an interface, ...
    lossless: bool
    skipped: int = 0  # damaged records skipped (--skip-bad)
    drops: int | None = None  # live: the socket's own drops (see drops_what)
    drops_what: str = "socket ring drops (kernel, tp_drops)"  # what ``drops`` counts
    linktypes: tuple[int, ...] = ()  # a capture's link types
    wide_times: int = 0  # pcapng: packets whose time int64 ns cannot hold
    unopened: str | None = None  # "stopped"/"deadline" before a capture's header came


class Source(Closing):
    """What feeds the RX producer: a capture reader, a live socket or the generator."""

    def __init__(
        self,
        batches: Iterator[PacketBatch] | None,
        what: str,
        lossless: bool,
        *,
        reader: Any = None,
        live: LiveSource | None = None,
        unopened: str | None = None,
        also: Any = None,
        af_xdp: SourceConfig | None = None,
    ) -> None:
        self.what = what
        self.lossless = lossless
        # A capture stopped before its header came ("stopped", "deadline"): nothing read.
        self.unopened = unopened
        self._batches = batches
        self._reader = reader
        self._live = live
        self._also = also  # closed with the reader: standard input's duplicate
        self._af_xdp = af_xdp  # an AF_XDP source to open on the producer (placing)
        self._xsk: XskSource | XskQueues | None = None
        # --af-xdp: the RX queues (resolved: _af_xdp), one producer each.
        self._queues = af_xdp.queues or () if af_xdp is not None else ()

    def next_batch(self) -> PacketBatch | None:
        """The next batch; None at the end of a file -- or, live, when none came within
        0.1 s (a live source never ends: see :attr:`endless`)."""
        if self._live is not None:
            return self._live.poll_batch(0.1)
        if self._xsk is not None:  # frames go straight into the producer (placing)
            self._xsk.poll(0.1)
            return None
        assert self._batches is not None  # Invariant: a source that is not live has batches
        return next(self._batches, None)

    @property
    def endless(self) -> bool:
        """A live interface: only a stop, a deadline or a failure ends it."""
        return self._live is not None or self._af_xdp is not None

    @property
    def producers(self) -> int:
        """RX producers the source needs (producer slots of the map): one per RX queue
        with ``--af-xdp``, one otherwise."""
        return max(1, len(self._queues))

    @contextlib.contextmanager
    def placing(self, rx: Any, twin: Callable[[], Any] | None = None) -> Iterator[None]:
        """While the block runs, a source that places frames itself (``--af-xdp``) feeds
        ``rx`` from :meth:`next_batch`; on the way out it stops -- the program detached,
        the RX rings read dry, the sockets closed -- before ``rx`` closes.  Nothing for
        the other sources.  ``twin``: makes another producer like ``rx`` (on the same
        map, in a forked process): with several RX queues, the first queue feeds ``rx``
        and each other one its own producer, in a process of its own (``XskQueues``)."""
        if self._af_xdp is None:
            yield
            return
        self._xsk = _open_xsk(self._af_xdp, rx, twin)
        self.what = _xsk_what(self._af_xdp, self._xsk.zero_copy)  # the summary says which
        try:
            yield
        finally:
            self._xsk.stop()

    @property
    def progress(self) -> tuple[int, int | None] | None:
        """A capture file's (bytes read, size), for the progress bar."""
        return self._reader.progress if self._reader is not None else None

    @property
    def drops(self) -> int | None:
        """A live socket's own drops so far (``tp_drops``; AF_XDP: ``rx_dropped +
        rx_ring_full``)."""
        if self._xsk is not None:
            return self._xsk.drops
        return self._live.drops if self._live is not None else None

    @property
    def drops_what(self) -> str:
        """What :attr:`drops` counts, for the summary's line."""
        if self._af_xdp is not None:
            return "AF_XDP socket drops (kernel, rx_dropped + rx_ring_full)"
        return "socket ring drops (kernel, tp_drops)"

    def facts(self) -> SourceFacts:
        reader = self._reader
        if reader is None:
            return SourceFacts(
                self.what,
                self.lossless,
                drops=self.drops,
                drops_what=self.drops_what,
                unopened=self.unopened,
            )
        return SourceFacts(
            self.what,
            self.lossless,
            skipped=reader.skipped,
            linktypes=tuple(reader.linktypes),
            wide_times=len(getattr(reader, "wide_times", ())),  # pcapng readers only
        )

    def close(self) -> None:
        for c in (self._reader, self._live, self._xsk, self._also):
            if c is not None:
                c.close()


STDIN = "-"  # the capture path that reads standard input (`tcpdump -w - | cpumap run -`)


def open_source(config: SourceConfig, stop: Stop | None = None) -> Source:
    """The source ``config`` names, opened (a bad capture is a usage error here).

    A capture is read through ``stop``'s waits: a FIFO with no writer, a pipe that stalls,
    never hold the run past a signal or ``--duration``.  Stopped before the capture's
    header came, the source is an empty one that says so (:attr:`Source.unopened`): the
    run still ends through its summary."""
    if config.iface is not None and config.af_xdp:
        return _af_xdp(config)
    if config.iface is not None:
        return _live(config)
    if config.generate is not None:
        gen = Generator(
            flows=256, sizes=(64, 512, 1400), count=config.generate, seed=1, undersize="clamp"
        )
        what = f"{config.generate:,} generated frames"
        return Source(gen.batches(config.poll), what, config.lossless)
    path = config.captures[0] if config.captures else str(demo_capture_path())
    what = "the embedded demo capture" if config.demo else path
    stdin = _stdin() if path == STDIN else None
    what = "standard input" if stdin is not None else what
    try:
        reader = open_capture(
            stdin or path, skip_bad=config.skip_bad, batch_size=config.poll, stop=stop
        )
    except BaseException as e:
        if stdin is not None:
            stdin.close()
        if isinstance(e, ReadInterrupted):
            return Source(iter(()), what, config.lossless, unopened=e.why)
        if isinstance(e, CaptureError):
            raise UsageError(describe_capture_error(e, config.skip_bad)) from None
        if isinstance(e, OSError):  # the limit too, if one explains it (EMFILE: ulimit -n)
            raise UsageError(f"{path}: {e.strerror or e}{limit_text(e.errno)}") from None
        raise
    return Source(reader.batches(config.poll), what, config.lossless, reader=reader, also=stdin)


def _stdin() -> BinaryIO:
    """Standard input as a binary file of its own (a duplicate: closing it leaves fd 0)."""
    try:
        f = os.fdopen(os.dup(0), "rb", buffering=0)
    except OSError as e:
        raise UsageError(f"-: standard input is not open ({e.strerror})") from None
    f.name = "standard input"  # what errors name (not the duplicate's number)
    return f


def describe_capture_error(e: CaptureError, skip_bad: bool) -> str:
    """The message for a capture that cannot be read, with the --skip-bad hint only where
    it would help: damage inside a file that is a capture, and not given already."""
    not_a_capture = e.kind in (CaptureErrorKind.NOT_A_CAPTURE, CaptureErrorKind.TOO_SHORT)
    if skip_bad or e.offset == 0 or not_a_capture:
        return str(e)
    return f"{e} (--skip-bad skips damaged records)"


def _live(config: SourceConfig) -> Source:
    iface = config.iface
    try:
        src = LiveSource(iface, promiscuous=config.promiscuous)
    except PermissionError as e:
        raise UsageError(f"--iface {iface}: {e} (live capture needs root)") from None
    except OSError as e:
        text = str(e)
        hint = "" if "ip link" in text else "; see `ip link` for interfaces"
        raise UsageError(f"--iface {iface}: {text}{hint}") from None
    return Source(None, f"interface {iface}", False, live=src)


def _af_xdp(config: SourceConfig) -> Source:
    """``--iface IF --af-xdp``: checked now (root, the interface), opened on the producer
    (:meth:`Source.placing`: the pool it lends from is the map's)."""
    iface = config.iface
    assert iface is not None  # Invariant: args.py refuses --af-xdp without --iface
    if os.geteuid() != 0:
        raise UsageError(f"--iface {iface} --af-xdp: AF_XDP and XDP need root: run as root")
    try:
        ifname, _ = resolve_interface(iface)
    except NoSuchInterface as e:
        raise UsageError(f"--iface {iface}: {e.strerror}") from None  # it names `ip link`
    if config.queues is None:  # every queue the device has, named now
        config = dataclasses.replace(config, queues=all_queues(ifname))
    return Source(None, _xsk_what(config), False, af_xdp=config)


def _xsk_what(config: SourceConfig, zero_copy: bool | None = None) -> str:
    """``interface IF (AF_XDP, MODE XDP[, copy mode | zero-copy])``."""
    how = "" if zero_copy is None else ", zero-copy" if zero_copy else ", copy mode"
    return f"interface {config.iface} (AF_XDP, {config.xdp_mode} XDP{how})"


def _open_xsk(
    config: SourceConfig, rx: Any, twin: Callable[[], Any] | None
) -> XskSource | XskQueues:
    """The AF_XDP source on ``rx`` -- with several queues (and ``twin``), a producer per
    queue; what the kernel refuses is a usage error."""
    iface = config.iface
    assert iface is not None  # Invariant: only _af_xdp makes such a source
    mode, queues = XdpMode(config.xdp_mode), config.queues
    try:
        if queues is not None and len(queues) > 1 and twin is not None:
            return XskQueues(rx, iface, twin=twin, queues=queues, mode=mode)
        return XskSource(rx, iface, queues=queues, mode=mode)
    except (XdpError, XskError) as e:
        raise UsageError(f"--iface {iface} --af-xdp: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"--iface {iface} --af-xdp: {e}") from None


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
