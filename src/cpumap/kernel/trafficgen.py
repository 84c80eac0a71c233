"""Traffic at millions of frames a second without pktgen: live test runs of XDP_TX out of
an interface, in the spirit of ``xdp-trafficgen``.

Theory of operation
-------------------
``BPF_PROG_TEST_RUN`` with ``BPF_F_TEST_XDP_LIVE_FRAMES`` runs an XDP program on
``repeat`` real frames made from one ``data_in`` frame, in batches of 64 each ending in a
flush, and carries out the verdicts.  With an ``xdp_md`` context that names interface A
(``ingress_ifindex``), the kernel turns XDP_TX into a redirect out of A: on a veth, into
its peer B's receive ring, as A's driver would transmit them.

Frames: one distinct frame is sent by ``return XDP_TX`` with the frame as ``data_in``.
Several (a capture's, or a generator's flows) are kept in an array map, and the program
rewrites each frame into the next entry (``asm.frame_table_program``: length by
``bpf_xdp_adjust_tail``, bytes by ``bpf_xdp_store_bytes``), so frame n goes out as entry
``n % len(frames)``, in order, whatever their lengths.

Calls: a live test run with ``repeat >= 2`` costs a fixed ~24-40 ms, so frames go out in
large calls (:attr:`GenOptions.frames_per_call`, 1 Mi by default: 5.4 M frames/s into a
peer that drops in XDP, on our 2-core VM, where calls of 65 Ki reach ~1.4 M/s),
repeated.  A rate is kept by pacing between calls (calls of a tenth of a second's
frames, each started when the frames before it are due); a duration by sizing the calls
from the pace measured so far, so that the last one ends near it.

Drops: frames A hands its driver but cannot put in B's ring (the ring full, a frame over
B's MTU) count in A's ``tx_dropped`` (``IFLA_STATS64``), read before and after the run:
:attr:`GenResult.drops`.  Frames refused before the driver are counted nowhere; the one
such cause that is a matter of set-up -- a veth peer without NAPI (no XDP program, GRO
off), which makes the kernel refuse every redirect into it (``-EOPNOTSUPP``) -- is what
:meth:`TrafficGen.napi_problem` finds, from A's ``NETDEV_XDP_ACT_NDO_XMIT`` feature (the
bit veth sets on A exactly when B has a native XDP program or GRO on; a generic-mode
program gives B no NAPI: measured, nothing arrives).  Frames longer than A's
MTU allows are refused the same silent way, so the constructor refuses them.

Namespaces: the kernel resolves ``ingress_ifindex`` in the namespace of the *calling
thread*.  A :class:`TrafficGen` records the namespace of the thread that constructs it
(construct it inside A's, e.g. under ``cpumap.live.netns.entered(ns)``), and everything
that names A -- the test runs, the statistics, the check -- runs in a thread of its own
that enters that namespace first (``setns(2)`` moves only the calling thread) and is
pinned to :attr:`GenOptions.cpu`; the caller's thread is never moved.

Stopping, and why it is safe: :meth:`TrafficGen.run` starts the sending thread and joins
it.  The sender checks the ``stop`` event before each call and waits on it while pacing,
so setting it (from a signal handler or another thread) ends the run after the call in
flight -- at most ``frames_per_call`` frames (a fraction of a second) -- and the result
still counts everything sent.  A ``KeyboardInterrupt`` raised in the joining thread sets
``stop`` and joins again before it propagates, so no sender outlives :meth:`run`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from ..abi import XDP_TX
from ..closing import Closing
from ..errors import Error
from . import netlink
from .asm import frame_table_program, verdict_program
from .bpf import (
    BPF_F_TEST_XDP_LIVE_FRAMES,
    Cmd,
    FdOwner,
    KernelArrayMap,
    KernelProgram,
    MapElemAttr,
    MapType,
    bpf,
    map_create,
)
from .xdp import XdpError, link_state, veth_peer

TABLE_MAX: Final = 1 << 16  # the most frames a generator sends in turn
FRAME_MIN: Final = 14  # an Ethernet header: the least a test run takes
# A live frame is one page less headroom, skb_shared_info and the test run's page head:
# 3408 bytes is the most Linux 6.18 takes with 4 KiB pages (3409: EINVAL, measured).
FRAME_MAX: Final = 3408
FORWARD_SLACK: Final = 14 + 4  # a redirected frame may be MTU + Ethernet header + VLAN tag
PACE_S: Final = 0.1  # at a set rate, a call carries this many seconds of frames
CLONE_NEWNET: Final = 0x40000000
_XDP_MD: Final = struct.Struct("=6I")  # data, data_end, data_meta, ingress_ifindex, rxq, egress

_libc = ctypes.CDLL(None, use_errno=True)
_T = TypeVar("_T")


class GenOptionsError(Error, ValueError):
    """A generator option out of range; the message names it and what it takes."""


@dataclass(frozen=True, slots=True)
class GenOptions:
    """How much to send, how fast, from where.  With neither ``count`` nor ``duration_s``
    the run lasts until ``stop`` is set."""

    count: int | None = None
    """Frames to send (None: no limit)."""
    duration_s: float | None = None
    """Seconds to send for (None: no limit)."""
    rate: float | None = None
    """Frames per second offered (None: as fast as the kernel goes)."""
    cpu: int | None = None
    """The CPU the sending thread is pinned to (None: where the scheduler puts it)."""
    frames_per_call: int = 1 << 20
    """Frames per test run: large, to spread each call's fixed cost."""

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise GenOptionsError(f"count must be >= 1, got {self.count}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise GenOptionsError(f"duration must be > 0 seconds, got {self.duration_s}")
        if self.rate is not None and not 0 < self.rate < float("inf"):
            raise GenOptionsError(f"rate must be a number of frames/s > 0, got {self.rate}")
        if not 1 <= self.frames_per_call < 2**32:
            raise GenOptionsError(
                f"frames_per_call must be in 1..2**32-1, got {self.frames_per_call}"
            )

    def call_size(self, sent: int, elapsed_s: float) -> int:
        """Frames for the next call, ``sent`` frames and ``elapsed_s`` into the run (0: done)."""
        n = self.frames_per_call
        if self.rate is not None:
            n = min(n, max(1, round(self.rate * PACE_S)))
        if self.count is not None:
            n = min(n, self.count - sent)
        if self.duration_s is not None:
            left = self.duration_s - elapsed_s
            if left <= 0:
                return 0
            if sent and elapsed_s > 0:  # at the pace so far, end near the duration
                n = min(n, max(1, int(sent / elapsed_s * left)))
        return max(n, 0)


@dataclass(frozen=True, slots=True)
class GenResult:
    """What a run sent and the drops it could see."""

    interface: str
    sent: int
    """Frames the test runs transmitted (the XDP_TX verdicts)."""
    seconds: float
    drops: int
    """The interface's ``tx_dropped`` over the run: frames its peer's ring did not take."""
    calls: int
    stopped: bool
    """Ended by the stop event rather than by its count or duration."""

    @property
    def frames_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


# --- the frames ----------------------------------------------------------------------------


def _check_frames(frames: Sequence[bytes], state: netlink.LinkState) -> None:
    if not frames:
        raise GenOptionsError("no frames to send")
    if len(frames) > TABLE_MAX:
        raise GenOptionsError(f"at most {TABLE_MAX} frames to send in turn, got {len(frames)}")
    short = min(len(f) for f in frames)
    if short < FRAME_MIN:
        raise GenOptionsError(f"a frame of {short} bytes is shorter than an Ethernet header")
    _check_fits(max(len(f) for f in frames), state)


def _check_fits(longest: int, state: netlink.LinkState) -> None:
    """A frame over the MTU would be refused unseen (``xdp_ok_fwd_dev``); one over a
    page, by the test run itself: say which limit, and what to change."""
    if longest > FRAME_MAX:
        raise XdpError(
            errno.EMSGSIZE,
            f"a frame of {longest} bytes is longer than a live test run's page holds "
            f"({FRAME_MAX} bytes): send shorter frames",
        )
    limit = state.mtu + FORWARD_SLACK
    if longest > limit:
        raise XdpError(
            errno.EMSGSIZE,
            f"a frame of {longest} bytes is longer than {state.name}'s MTU {state.mtu} allows "
            f"({limit} bytes): send shorter frames, or raise the MTU: `ip link set "
            f"{state.name} mtu ...`",
        )


class _FrameTable(FdOwner):
    """An array map of frames, each value ``u32 length, u32 pad, bytes[max_len]``."""

    def __init__(self, frames: Sequence[bytes]) -> None:
        self.max_len: Final = max(len(f) for f in frames)
        self.value_size: Final = 8 + (self.max_len + 7) // 8 * 8
        self._own(map_create(MapType.ARRAY, 4, self.value_size, len(frames), name="cpumap_frames"))
        for i, frame in enumerate(frames):
            value = struct.pack("=II", len(frame), 0) + frame
            key, buf = ctypes.c_uint32(i), ctypes.create_string_buffer(value, self.value_size)
            attr = MapElemAttr(
                map_fd=self.fd, key=ctypes.addressof(key), value=ctypes.addressof(buf)
            )
            bpf(Cmd.MAP_UPDATE_ELEM, attr, f"frame {i}")


def _program(frames: Sequence[bytes], stack: contextlib.ExitStack) -> tuple[KernelProgram, bytes]:
    """The sending program and its ``data_in``: plain XDP_TX for one distinct frame, the
    table rewrite for several (``data_in`` the longest, so no frame has to grow)."""
    if len(set(frames)) == 1:
        return stack.enter_context(
            KernelProgram(verdict_program(XDP_TX), name="cpumap_gen")
        ), frames[0]
    counter = stack.enter_context(KernelArrayMap(1, percpu=True, name="cpumap_gen_n"))
    table = stack.enter_context(_FrameTable(frames))
    insns = frame_table_program(counter.fd, table.fd, len(frames), table.max_len)
    program = stack.enter_context(KernelProgram(insns, name="cpumap_gen"))
    return program, max(frames, key=len)


# --- the namespace -------------------------------------------------------------------------


def _enter_netns(fd: int) -> None:
    """Move the calling thread into namespace ``fd`` (no-op where it is already there:
    ``setns`` needs CAP_SYS_ADMIN even then)."""
    here, there = os.stat("/proc/thread-self/ns/net"), os.fstat(fd)
    if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def _in_thread(netns_fd: int, fn: Callable[[], _T], cpu: int | None, stop: threading.Event) -> _T:
    """``fn()`` in a fresh thread inside ``netns_fd``, pinned to ``cpu``; its result or
    its error.  An exception in the joining thread (Ctrl-C) sets ``stop`` and joins
    again before it propagates: the thread never outlives this call."""
    box: list[_T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            _enter_netns(netns_fd)
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})  # this thread only
            box.append(fn())
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=target, name="cpumap-gen")
    t.start()
    try:
        t.join()
    except BaseException:
        stop.set()
        t.join()
        raise
    if failure:
        raise failure[0]
    return box[0]


# --- the generator -------------------------------------------------------------------------


class TrafficGen(Closing):
    """Frames out of ``interface`` (resolved, and its namespace recorded, in the calling
    thread's network namespace) by live test runs; :meth:`run` sends them.

    Refuses, as :class:`XdpError` with the errno: no such interface (``ENODEV``), the
    interface down (``ENETDOWN``), a frame longer than its MTU allows (``EMSGSIZE``), no
    privilege (``EPERM``: live test runs need root); bad frames as
    :class:`GenOptionsError`.
    """

    def __init__(self, interface: str | int, frames: Sequence[bytes]) -> None:
        frames = [bytes(f) for f in frames]
        self.link: Final = link_state(interface)
        _check_frames(frames, self.link)
        if not self.link.up:
            raise XdpError(
                errno.ENETDOWN, f"{self.link.name} is down: `ip link set {self.link.name} up`"
            )
        self.cycle: Final = 1 if len(set(frames)) == 1 else len(frames)
        """The frames sent in turn (1 where they are all equal)."""
        self._stack = contextlib.ExitStack()
        try:
            self._netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self._stack.callback(os.close, self._netns)
            self._program, self._data = _program(frames, self._stack)
        except PermissionError as e:
            self._stack.close()
            raise XdpError(
                e.errno, "sending by live test runs needs root (CAP_BPF and CAP_NET_ADMIN)"
            ) from None
        except BaseException:
            self._stack.close()
            raise
        self._ctx = _XDP_MD.pack(0, len(self._data), 0, self.link.ifindex, 0, 0)

    def close(self) -> None:
        """Release the program and maps.  Idempotent."""
        self._stack.close()

    def napi_problem(self) -> str | None:
        """One line naming why every frame would be dropped unseen, and the fix; None
        when nothing is found (or, before Linux 6.3, nothing can be checked)."""
        never = threading.Event()
        return _in_thread(self._netns, self._napi_problem, None, never)

    def _napi_problem(self) -> str | None:
        state = link_state(self.link.ifindex)
        peer = veth_peer(state)
        name = f"{peer.name} (the peer of {state.name})" if peer else f"the peer of {state.name}"
        if state.kind == "veth" and not state.carrier:
            fix = f"`ip link set {peer.name} up`" if peer else "bring it up"
            return f"{name} is down, so every frame sent out of {state.name} is dropped: {fix}"
        features = netlink.xdp_features(state.ifindex)
        if features is None or features & netlink.NETDEV_XDP_ACT_NDO_XMIT:
            return None
        if state.kind != "veth":
            return (
                f"{state.name}'s driver takes no redirected frames (no ndo_xdp_xmit), so every "
                "frame is dropped unseen; some drivers need an XDP program of their own first"
            )
        gro = f"`ethtool -K {peer.name} gro on`" if peer else "`ethtool -K PEER gro on`"
        return (
            f"{name} has no NAPI (no native XDP program, GRO off), so it drops every frame "
            f"silently: attach an XDP program to it in native mode (e.g. "
            f"cpumap.kernel.xdp.pass_program()) or turn GRO on ({gro})"
        )

    def run(self, options: GenOptions, stop: threading.Event | None = None) -> GenResult:
        """Send as ``options`` say, until done or ``stop`` is set (see the module's
        "Stopping"); :class:`XdpError` if the kernel refuses a test run."""
        stop = stop if stop is not None else threading.Event()
        return _in_thread(self._netns, lambda: self._send(options, stop), options.cpu, stop)

    def _send(self, options: GenOptions, stop: threading.Event) -> GenResult:
        dropped0 = link_state(self.link.ifindex).tx_dropped
        t0 = time.monotonic()
        sent = calls = 0
        while not (stopped := stop.is_set()):
            n = options.call_size(sent, time.monotonic() - t0)
            if n == 0:
                break
            if options.rate is not None:
                due = t0 + sent / options.rate  # when the frames sent so far were due
                if stopped := stop.wait(max(0.0, due - time.monotonic())):
                    break
            self._test_run(n)
            sent, calls = sent + n, calls + 1
        seconds = time.monotonic() - t0
        drops = link_state(self.link.ifindex).tx_dropped - dropped0
        return GenResult(self.link.name, sent, seconds, drops, calls, stopped)

    def _test_run(self, n: int) -> None:
        try:
            self._program.test_run(
                self._data, repeat=n, flags=BPF_F_TEST_XDP_LIVE_FRAMES, ctx=self._ctx
            )
        except OSError as e:
            raise XdpError(
                e.errno, f"a live test run out of {self.link.name} failed: {e.strerror}"
            ) from None
