"""The traffic generator for real: live test runs out of one veth end, counted by an XDP
program on the other; the frames byte for byte; the check for a peer without NAPI;
pacing, durations and stopping; what it refuses.

The options' arithmetic is pure Python and runs everywhere; the rest needs root (bpf(2),
namespaces) and skips with the reason otherwise.  Every wait has a deadline.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from cpumap.abi import XDP_DROP
from cpumap.kernel import KernelArrayMap, udp_frame
from cpumap.kernel.asm import frame_table_program
from cpumap.kernel.netlink import get_link
from cpumap.kernel.trafficgen import (
    FRAME_MAX,
    PACE_S,
    GenOptions,
    GenOptionsError,
    TrafficGen,
)
from cpumap.kernel.xdp import (
    XdpError,
    XdpLink,
    XdpMode,
    attach,
    counting_program,
    pass_program,
)
from cpumap.live.netns import VethPair, ip
from tests.helpers import veth_unavailable, wait_for

DEADLINE_S = 10.0
MARKER_ETHERTYPE = 0x88B5  # IEEE "local experimental": the stack leaves such frames alone


# --- the options (pure Python) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "count must be >= 1, got 0"),
        ({"duration_s": 0.0}, "duration must be > 0 seconds, got 0.0"),
        ({"rate": 0.0}, "rate must be a number of frames/s > 0, got 0.0"),
        ({"rate": float("nan")}, "rate must be a number of frames/s > 0, got nan"),
        ({"rate": float("inf")}, "rate must be a number of frames/s > 0, got inf"),
        ({"frames_per_call": 0}, "frames_per_call must be in 1..2**32-1, got 0"),
        ({"frames_per_call": 2**32}, "frames_per_call must be in 1..2**32-1, got 4294967296"),
    ],
)
def test_bad_options_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(GenOptionsError, match=f"^{re.escape(message)}$") as ei:
        GenOptions(**kwargs)
    assert isinstance(ei.value, ValueError)


def test_call_sizes_keep_the_count_the_rate_and_the_duration() -> None:
    assert GenOptions().call_size(0, 0.0) == 1 << 20  # unbounded: full calls
    assert GenOptions(count=5, frames_per_call=2).call_size(4, 1.0) == 1
    assert GenOptions(count=5).call_size(5, 1.0) == 0
    assert GenOptions(rate=1e5).call_size(0, 0.0) == round(1e5 * PACE_S)
    assert GenOptions(rate=1.0).call_size(0, 0.0) == 1  # never a call of nothing
    d = GenOptions(duration_s=2.0)
    assert d.call_size(0, 0.0) == 1 << 20  # no pace measured yet
    assert d.call_size(1000, 1.0) == 1000  # 1000 frames/s so far, one second left
    assert d.call_size(1000, 2.0) == 0


def test_the_frame_table_program_checks_its_sizes() -> None:
    with pytest.raises(ValueError, match="out of range"):
        frame_table_program(3, 4, 0, 64)
    with pytest.raises(ValueError, match="out of range"):
        frame_table_program(3, 4, 2, 1 << 16)


# --- on a veth pair ---------------------------------------------------------------------------


_REASON = veth_unavailable("network namespaces and bpf(2)", bpf=True)
needs_root = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def generator(pair: VethPair, frames: list[bytes]) -> TrafficGen:
    with pair.in_local():  # where its interface is resolved, and its namespace recorded
        return TrafficGen(pair.local.ifname, frames)


def attach_peer(pair: VethPair, program) -> XdpLink:
    with pair.in_peer():
        return attach(pair.peer.ifname, program)


def thread_peer_napi(pair: VethPair) -> None:
    """The peer's NAPI in a kthread of its own, so that its ring can overflow (``ip netns
    exec`` mounts the namespace's own /sys; the peer needs NAPI, i.e. XDP, first)."""
    path = f"/sys/class/net/{pair.peer.ifname}/threaded"
    subprocess.run(
        ["ip", "netns", "exec", str(pair.peer.netns), "sh", "-c", f"echo 1 > {path}"],
        check=True,
        timeout=30,
    )


def set_gro(ifname: str, on: bool) -> None:
    """``ethtool -K IF gro on|off`` (ETHTOOL_SGRO by ioctl), in the calling thread's namespace."""
    value = (ctypes.c_uint32 * 2)(0x2C, int(on))  # struct ethtool_value {cmd, data}
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8946, ifreq)  # SIOCETHTOOL


@needs_root
@pytest.mark.root
def test_the_peer_counts_every_frame_sent_but_the_drops_reported(veth: VethPair) -> None:
    n = 3_000_000  # 3 calls of 1 Mi and one of the rest
    counter = KernelArrayMap(1, percpu=True)
    with counting_program(counter, XDP_DROP) as prog:
        link = attach_peer(veth, prog)
    thread_peer_napi(veth)  # the peer on its own thread: its ring overflows, A drops
    with counter, link, generator(veth, [udp_frame(64, dst_mac=veth.peer.mac_bytes)]) as gen:
        res = gen.run(GenOptions(count=n, cpu=0))  # from the root namespace: the gen's own
        assert (res.sent, res.calls, res.stopped) == (n, 3, False)
        assert res.interface == veth.local.ifname and 0 <= res.drops < n
        wait_for(lambda: counter.lookup(0) >= n - res.drops, DEADLINE_S)  # its kthread drains
        assert counter.lookup(0) == n - res.drops


@needs_root
@pytest.mark.root
def test_several_frames_go_out_byte_identical_and_in_turn(veth: VethPair) -> None:
    def marked(size: int, tag: int) -> bytes:
        head = (
            veth.peer.mac_bytes + veth.local.mac_bytes + struct.pack("!HI", MARKER_ETHERTYPE, tag)
        )
        return head + bytes((tag + i) % 256 for i in range(size - len(head)))

    frames = [marked(1514, 1), marked(60, 2), marked(333, 3)]  # longest, shortest, between
    with veth.in_peer():
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(MARKER_ETHERTYPE))
        rx.bind((veth.peer.ifname, 0))
    with rx, pass_program() as prog, attach_peer(veth, prog), generator(veth, frames) as gen:
        rx.settimeout(DEADLINE_S)
        assert gen.cycle == 3
        res = gen.run(GenOptions(count=30))
        assert res.drops == 0
        got = [rx.recv(2048) for _ in range(res.sent)]
    assert got == [frames[i % 3] for i in range(30)]


@needs_root
@pytest.mark.root
def test_the_no_napi_check_fires_only_when_the_peer_has_no_program_and_gro_off(
    veth: VethPair,
) -> None:
    peer, local = veth.peer.ifname, veth.local.ifname
    with generator(veth, [udp_frame(64)]) as gen:
        assert gen.napi_problem() == (
            f"{peer} (the peer of {local}) has no NAPI (no native XDP program, GRO off), so it "
            "drops every frame silently: attach an XDP program to it in native mode (e.g. "
            f"cpumap.kernel.xdp.pass_program()) or turn GRO on (`ethtool -K {peer} gro on`)"
        )
        with pass_program() as prog, attach_peer(veth, prog):
            assert gen.napi_problem() is None
        assert gen.napi_problem() is not None  # detached: no NAPI again
        with pass_program() as prog, veth.in_peer(), attach(peer, prog, XdpMode.SKB):
            assert gen.napi_problem() is not None  # a generic program gives no NAPI
        with veth.in_peer():
            set_gro(peer, True)
        assert gen.napi_problem() is None
        with veth.in_peer():
            set_gro(peer, False)
        assert gen.napi_problem() is not None


@needs_root
@pytest.mark.root
def test_a_peer_that_is_down_is_named(veth: VethPair) -> None:
    ip("-n", str(veth.peer.netns), "link", "set", veth.peer.ifname, "down")
    with generator(veth, [udp_frame(64)]) as gen:
        assert gen.napi_problem() == (
            f"{veth.peer.ifname} (the peer of {veth.local.ifname}) is down, so every frame sent "
            f"out of {veth.local.ifname} is dropped: `ip link set {veth.peer.ifname} up`"
        )


@needs_root
@pytest.mark.root
def test_a_rate_is_kept_by_pacing_the_calls(veth: VethPair) -> None:
    with pass_program() as prog, attach_peer(veth, prog), generator(veth, [udp_frame(64)]) as gen:
        res = gen.run(GenOptions(count=30_000, rate=100_000.0))
    assert (res.sent, res.calls) == (30_000, 3)  # a tenth of a second's frames per call
    assert 0.2 <= res.seconds < 5  # the third call was due at 0.2 s


@needs_root
@pytest.mark.root
def test_a_duration_ends_near_it(veth: VethPair) -> None:
    with pass_program() as prog, attach_peer(veth, prog), generator(veth, [udp_frame(64)]) as gen:
        res = gen.run(GenOptions(duration_s=0.5, frames_per_call=100_000))
    assert res.sent > 0 and not res.stopped
    assert 0.5 <= res.seconds < 2.0


@needs_root
@pytest.mark.root
def test_stop_ends_an_unbounded_run_after_the_call_in_flight(veth: VethPair) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    with pass_program() as prog, attach_peer(veth, prog), generator(veth, [udp_frame(64)]) as gen:
        timer.start()
        try:
            res = gen.run(GenOptions(frames_per_call=100_000), stop)
        finally:
            timer.cancel()
    assert res.stopped and res.sent > 0
    assert res.sent == res.calls * 100_000  # whole calls: every frame counted
    assert res.seconds < 5


@needs_root
@pytest.mark.root
def test_what_the_generator_refuses(veth: VethPair) -> None:
    with pytest.raises(XdpError) as ei:  # from the root namespace: not found
        TrafficGen(veth.local.ifname, [udp_frame(64)])
    assert ei.value.errno == errno.ENODEV
    with pytest.raises(XdpError) as ei:
        generator(veth, [udp_frame(64), udp_frame(1514) + bytes(5)])
    assert ei.value.errno == errno.EMSGSIZE
    assert ei.value.strerror == (
        f"a frame of 1519 bytes is longer than {veth.local.ifname}'s MTU 1500 allows (1518 "
        f"bytes): send shorter frames, or raise the MTU: `ip link set {veth.local.ifname} mtu ...`"
    )
    with VethPair(mtu=9000) as jumbo, pytest.raises(XdpError) as ei:
        generator(jumbo, [bytes(FRAME_MAX + 1)])
    assert ei.value.errno == errno.EMSGSIZE
    assert ei.value.strerror == (
        f"a frame of {FRAME_MAX + 1} bytes is longer than a live test run's page holds "
        f"({FRAME_MAX} bytes): send shorter frames"
    )
    with pytest.raises(GenOptionsError, match=r"^no frames to send$"):
        generator(veth, [])
    with pytest.raises(GenOptionsError, match="shorter than an Ethernet header"):
        generator(veth, [bytes(13)])
    ip("-n", str(veth.local.netns), "link", "set", veth.local.ifname, "down")
    with pytest.raises(XdpError) as ei:
        generator(veth, [udp_frame(64)])
    assert ei.value.errno == errno.ENETDOWN
    with veth.in_local():
        assert not get_link(veth.local.ifname).up


@needs_root
@pytest.mark.root
def test_the_longest_frame_a_page_holds_goes_out() -> None:
    counter = KernelArrayMap(1, percpu=True)
    with VethPair(mtu=3500) as pair, counter:
        with counting_program(counter, XDP_DROP) as prog:
            link = attach_peer(pair, prog)
        with link, generator(pair, [bytes(FRAME_MAX)]) as gen:
            res = gen.run(GenOptions(count=10))
            wait_for(lambda: counter.lookup(0) >= 10, DEADLINE_S)
        assert (res.sent, res.drops, counter.lookup(0)) == (10, 0, 10)


@needs_root
@pytest.mark.root
def test_ctrl_c_while_joining_stops_the_sender_before_it_propagates(veth: VethPair) -> None:
    main = threading.main_thread()
    assert threading.current_thread() is main  # a real SIGINT interrupts the main thread only
    timer = threading.Timer(0.3, signal.pthread_kill, (main.ident, signal.SIGINT))
    with pass_program() as prog, attach_peer(veth, prog), generator(veth, [udp_frame(64)]) as gen:
        timer.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):  # a minute's frames: only a stop ends it soon
                gen.run(GenOptions(count=300_000_000, frames_per_call=100_000))
        finally:
            timer.cancel()
            timer.join()
    assert time.monotonic() - t0 < 10  # the sender stopped after its call in flight
    assert not [t for t in threading.enumerate() if t.name == "cpumap-gen" and t.is_alive()]
