"""Live source, for real: a veth pair between two namespaces this test creates, traffic sent
from the peer namespace, received through the TPACKET_V3 ring.

Needs root (CAP_NET_ADMIN for namespaces, CAP_NET_RAW for packet sockets); skips otherwise.
"No extra frames" is checked with a marker frame sent last: everything received before the
marker must be exactly what was sent before it (one sender, one path: order is kept), so no
test waits for something *not* to happen.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from cpumap.abi import LINKTYPE_ETHERNET
from cpumap.errors import ClosedResourceError
from cpumap.generator import Generator, read_stamp
from cpumap.live import Fanout, FanoutMode, LiveSource
from cpumap.live.netns import (
    NETNS_RUN_DIR,
    Injector,
    NetnsError,
    VethPair,
    entered,
    ip,
)
from cpumap.packets import Packet, PacketBatch
from tests.helpers import veth_unavailable

pytestmark = pytest.mark.root

DEADLINE_S = 5.0
RING = dict(block_size=1 << 16, block_count=16, block_timeout_ms=2)
MARKER_ETHERTYPE = 0x88B5  # IEEE "local experimental": nothing else uses it


_REASON = veth_unavailable("network namespaces and AF_PACKET sockets")
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)


def open_local(pair: VethPair, **kw: Any) -> LiveSource:
    with pair.in_local():
        return LiveSource(pair.local.ifname, **{**RING, **kw})


def marker(pair: VethPair, tag: int = 0) -> bytes:
    return (
        pair.local.mac_bytes
        + pair.peer.mac_bytes
        + struct.pack("!HI", MARKER_ETHERTYPE, tag)
        + bytes(40)
    )


def receive(src: LiveSource, n: int, timeout: float = DEADLINE_S) -> PacketBatch:
    """Poll until ``n`` frames came, or the deadline; return what came."""
    got, count = [], 0
    deadline = time.monotonic() + timeout
    while count < n and (left := deadline - time.monotonic()) > 0:
        batch = src.poll_batch(left)
        if batch is not None:
            got.append(batch)
            count += len(batch)
    return PacketBatch.concat(got)


def receive_until_marker(src: LiveSource, mark: bytes, timeout: float = DEADLINE_S) -> list[Packet]:
    """Every packet before ``mark`` (which must arrive before the deadline)."""
    out = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        batch = src.poll_batch(left)
        if batch is None:
            continue
        for p in batch:
            if p.data == mark:
                return out
            out.append(p)
    raise AssertionError(f"marker not received within {timeout} s; got {len(out)} frames")


def frames_of(gen: Generator) -> list[bytes]:
    return [p.data for b in gen.batches(256) for p in b]


def promiscuity(netns: str | None, ifname: str) -> int:
    out = ip(*(["-n", netns] if netns else []), "-d", "link", "show", "dev", ifname)
    return int(out.split("promiscuity ")[1].split()[0])


# --- receiving ---------------------------------------------------------------------------


def test_receives_exactly_the_frames_sent(veth: VethPair) -> None:
    gen = Generator(
        flows=24,
        sizes=(96, 97, 600, 1514),
        vlan=(None, 5),
        seed=11,
        count=400,
        dst_mac=veth.local.mac_bytes,
        src_mac=veth.peer.mac_bytes,
    )
    sent = frames_of(gen)
    with open_local(veth, rx_queue=3) as src:
        t0 = time.time_ns()
        with veth.injector() as inj:
            inj.send(sent)
            inj.send([marker(veth)])
        got = receive_until_marker(src, marker(veth))
        t1 = time.time_ns()
        assert [p.data for p in got] == sent  # bytes, lengths, order; VLAN tags intact
        assert [p.wire_len for p in got] == [len(f) for f in sent]
        assert {(p.ifindex, p.linktype, p.rx_queue) for p in got} == {
            (veth.local.ifindex, LINKTYPE_ETHERNET, 3)
        }
        ts = [p.ts_ns for p in got]
        assert ts == sorted(ts) and t0 <= ts[0] and ts[-1] <= t1
        stats = src.statistics()
        assert stats.kernel_drops == 0
        assert stats.delivered == stats.kernel_packets == len(sent) + 1


def test_vlan_tags_come_back_as_on_the_wire(veth: VethPair) -> None:
    base = frames_of(
        Generator(flows=2, sizes=128, vlan=7, count=2, protocols=("udp",), ip_versions=(4, 6))
    )
    qinq = base[0][:12] + struct.pack("!HH", 0x88A8, 300) + base[0][12:]  # 802.1ad outer tag
    prio = base[1][:14] + struct.pack("!H", (5 << 13) | 0) + base[1][16:]  # VID 0, PCP 5
    dei = base[0][:14] + struct.pack("!H", (1 << 12) | 4095) + base[0][16:]  # DEI, VID 4095
    untagged = base[1][:12] + base[1][16:]
    sent = [*base, qinq, prio, dei, untagged]
    with open_local(veth) as src, open_local(veth, reinsert_vlan=False) as raw:
        veth.inject([*sent, marker(veth)])
        assert [p.data for p in receive_until_marker(src, marker(veth))] == sent
        stripped = receive_until_marker(raw, marker(veth))
        # without re-insertion the outermost tag is gone (the stack stripped it)
        want = [f if f is untagged else f[:12] + f[16:] for f in sent]
        assert [p.data for p in stripped] == want
        assert [p.wire_len for p in stripped] == [len(p.data) for p in stripped]


def test_equal_frames_come_back_to_back(veth: VethPair) -> None:
    gen = Generator(
        flows=16,
        sizes=64,
        protocols=("udp",),
        ip_versions=(4,),
        count=3000,
        dst_mac=veth.local.mac_bytes,
    )
    sent = gen.frames(3000)
    with open_local(veth, block_size=1 << 15, block_count=64) as src:
        veth.inject(sent)
        got = receive(src, 3000)
        assert len(got) == 3000
        assert got.uniform_length() == 64  # one strided copy per block: the RX fast path
        assert np.array_equal(got.buf.reshape(3000, 64), sent)
        assert src.statistics().batches > 1


def test_equal_tagged_frames_come_back_to_back_with_their_tags(veth: VethPair) -> None:
    gen = Generator(flows=8, sizes=100, vlan=(12,), count=500, dst_mac=veth.local.mac_bytes)
    sent = gen.frames(500)
    with open_local(veth) as src:
        veth.inject(sent)
        got = receive(src, 500)
        assert got.uniform_length() == 100
        assert np.array_equal(got.buf.reshape(500, 100), sent)
        assert (got.wire_len == 100).all()


def test_snaplen_truncates_but_keeps_the_wire_length(veth: VethPair) -> None:
    sent = frames_of(Generator(flows=3, sizes=(200, 1000), count=12))
    with open_local(veth, snaplen=60) as src:
        veth.inject(sent)
        got = receive(src, 12)
        assert [p.data for p in got] == [f[:60] for f in sent]
        assert [p.wire_len for p in got] == [len(f) for f in sent]


def test_frames_sent_by_another_process_in_the_peer_namespace(veth: VethPair) -> None:
    code = (
        "from cpumap.generator import Generator; from cpumap.live.netns import inject; import sys; "
        "inject(sys.argv[1], Generator(flows=5, sizes=100, count=50, seed=9).frames(50))"
    )
    with open_local(veth) as src:
        subprocess.run(
            ["ip", "netns", "exec", veth.peer.netns, sys.executable, "-c", code, veth.peer.ifname],
            check=True,
            timeout=60,
            capture_output=True,
        )
        got = receive(src, 50)
        assert np.array_equal(
            got.buf.reshape(50, 100), Generator(flows=5, sizes=100, count=50, seed=9).frames(50)
        )


def test_bound_by_ifindex(veth: VethPair) -> None:
    with veth.in_local():
        src = LiveSource(veth.local.ifindex, **RING)
    with src:
        assert src.ifname == veth.local.ifname
        veth.inject([marker(veth, 1), marker(veth)])
        assert [p.data for p in receive_until_marker(src, marker(veth))] == [marker(veth, 1)]


def test_outgoing_frames_are_ignored_unless_asked_for(veth: VethPair) -> None:
    out_frames = [marker(veth, 100 + k) for k in range(5)]
    with open_local(veth) as ingress_only, open_local(veth, ignore_outgoing=False) as both:
        with Injector(veth.local.ifname, netns=veth.local.netns) as local_tx:
            local_tx.send(out_frames)  # transmitted by the local end: egress there
        veth.inject([marker(veth)])
        assert receive_until_marker(ingress_only, marker(veth)) == []
        assert [p.data for p in receive_until_marker(both, marker(veth))] == out_frames


def test_interface_down_is_reported_and_the_source_survives_it(veth: VethPair) -> None:
    with open_local(veth) as src:
        ip("-n", veth.local.netns, "link", "set", "dev", veth.local.ifname, "down")
        with pytest.raises(OSError, match=r"Network is down") as e:
            src.poll_batch(DEADLINE_S)
        assert e.value.errno == errno.ENETDOWN
        ip("-n", veth.local.netns, "link", "set", "dev", veth.local.ifname, "up")
        deadline = time.monotonic() + DEADLINE_S
        while "LOWER_UP" not in ip("-n", veth.local.netns, "link", "show", veth.local.ifname):
            assert time.monotonic() < deadline, "link never came back up"
            time.sleep(0.01)
        veth.inject([marker(veth, 7), marker(veth)])
        assert [p.data for p in receive_until_marker(src, marker(veth))] == [marker(veth, 7)]


def test_poll_batch_timeout(veth: VethPair) -> None:
    with open_local(veth) as src:
        t = time.monotonic()
        assert src.poll_batch(0) is None
        assert src.poll_batch(0.05) is None
        assert time.monotonic() - t >= 0.05


def test_batches_iterator_stops_when_told(veth: VethPair) -> None:
    import threading

    stop = threading.Event()
    sent = frames_of(Generator(flows=2, sizes=100, count=10))
    with open_local(veth) as src:
        veth.inject(sent)
        got = []
        for batch in src.batches(stop=stop, poll_interval=0.01):
            got.extend(p.data for p in batch)
            if len(got) >= 10:
                stop.set()
        assert got == sent


# --- fanout ------------------------------------------------------------------------------


def test_fanout_hash_keeps_flows_whole_and_loses_nothing(veth: VethPair) -> None:
    gen = Generator(flows=64, sizes=(96, 200), count=64 * 8, seed=4, dst_mac=veth.local.mac_bytes)
    sent = frames_of(gen)
    with open_local(veth, fanout=Fanout(), rx_queue=0) as a:
        gid = a.fanout_group_id
        assert gid is not None
        with open_local(veth, fanout=Fanout(group_id=gid), rx_queue=1) as b:
            assert b.fanout_group_id == gid
            veth.inject(sent)
            got_a: list = []
            got_b: list = []
            deadline = time.monotonic() + DEADLINE_S
            while len(got_a) + len(got_b) < len(sent) and time.monotonic() < deadline:
                for src, into in ((a, got_a), (b, got_b)):
                    batch = src.poll_batch(0.01)
                    if batch is not None:
                        into.extend(batch)
    assert sorted(p.data for p in got_a + got_b) == sorted(sent)  # the union, exactly
    assert {p.rx_queue for p in got_a} == {0} and {p.rx_queue for p in got_b} == {1}
    assert got_a and got_b, "64 flows hashed to a single member"
    flows_a = {read_stamp(p.data)[0] for p in got_a}
    flows_b = {read_stamp(p.data)[0] for p in got_b}
    assert not flows_a & flows_b  # every flow whole on one member
    for got in (got_a, got_b):
        seqs: dict[int, list[int]] = defaultdict(list)
        for p in got:
            f, q = read_stamp(p.data)
            seqs[f].append(q)
        assert all(s == list(range(8)) for s in seqs.values())  # and in order


def test_fanout_round_robin_mode(veth: VethPair) -> None:
    sent = frames_of(Generator(flows=1, sizes=100, count=40, protocols=("udp",), ip_versions=(4,)))
    with (
        open_local(veth, fanout=Fanout(mode=FanoutMode.LB)) as a,
        open_local(veth, fanout=Fanout(a.fanout_group_id, FanoutMode.LB), rx_queue=1) as b,
    ):
        veth.inject(sent)
        got_a, got_b = receive(a, 20), receive(b, 20)
        assert len(got_a) == len(got_b) == 20  # one flow, yet split packet by packet


def test_fanout_members_must_agree_on_the_mode(veth: VethPair) -> None:
    with (
        open_local(veth, fanout=Fanout()) as a,
        pytest.raises(OSError, match=r"members must share mode, flags and interface"),
    ):
        open_local(veth, fanout=Fanout(a.fanout_group_id, FanoutMode.CPU))


# --- promiscuous mode --------------------------------------------------------------------


def test_promiscuous_mode_receives_frames_for_other_macs(veth: VethPair) -> None:
    # On a plain veth every frame reaches packet sockets, promiscuous or not.  A bridge is
    # different: it passes a frame for an unknown MAC up to its own device only when that
    # device is promiscuous (br_handle_frame_finish).  So the source listens on a bridge.
    ns = veth.local.netns
    ip("-n", ns, "link", "add", "cpmbr0", "type", "bridge")
    ip("-n", ns, "link", "set", "dev", veth.local.ifname, "master", "cpmbr0")
    ip("-n", ns, "link", "set", "dev", "cpmbr0", "up")
    deadline = time.monotonic() + DEADLINE_S
    while "state forwarding" not in ip("-n", ns, "-d", "link", "show", "dev", veth.local.ifname):
        assert time.monotonic() < deadline, "bridge port never reached forwarding"
        time.sleep(0.01)
    other = bytes.fromhex("02aabbccddee")
    gen = Generator(
        flows=4,
        sizes=100,
        count=8,
        protocols=("udp",),
        ip_versions=(4,),
        dst_mac=other,
        src_mac=veth.peer.mac_bytes,
    )
    sent = frames_of(gen)
    mark = b"\xff" * 6 + marker(veth)[6:]  # broadcast: the bridge always passes it up
    assert promiscuity(ns, "cpmbr0") == 0
    with veth.in_local():
        plain = LiveSource("cpmbr0", **RING)
    with plain:
        veth.inject([*sent, mark])
        assert receive_until_marker(plain, mark) == []
    with veth.in_local():
        promisc = LiveSource("cpmbr0", promiscuous=True, **RING)
    with promisc:
        assert promiscuity(ns, "cpmbr0") == 1
        veth.inject([*sent, mark])
        assert [p.data for p in receive_until_marker(promisc, mark)] == sent
    assert promiscuity(ns, "cpmbr0") == 0  # membership dropped at close


# --- drops and statistics ----------------------------------------------------------------


def test_ring_overflow_is_counted_as_drops(veth: VethPair) -> None:
    n = 600
    sent = frames_of(Generator(flows=3, sizes=300, count=n))
    with open_local(veth, block_size=4096, block_count=4, frame_size=2048) as src:
        veth.inject(sent)  # nobody reads meanwhile: 4 blocks of ~10 frames fill up
        stats = src.statistics()
        assert stats.kernel_packets == n  # the kernel counts drops among its packets
        assert stats.kernel_drops > 0
        assert stats.freeze_q_cnt >= 1
        got = receive(src, n - stats.kernel_drops)
        assert len(got) == n - stats.kernel_drops
        # what was kept is the head of the stream, in order
        assert [p.data for p in got] == sent[: len(got)]
        later = src.statistics()
        assert later.delivered + later.kernel_drops == n
        assert src.drops == stats.kernel_drops


# --- lifecycle ---------------------------------------------------------------------------


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_close_releases_socket_mapping_and_promiscuity(veth: VethPair) -> None:
    before = _fds()
    with veth.in_local():
        src = LiveSource(veth.local.ifname, promiscuous=True, fanout=Fanout(), **RING)
    inode = os.fstat(src.fileno()).st_ino
    veth.inject(frames_of(Generator(flows=1, sizes=100, count=3)))
    assert len(receive(src, 3)) == 3
    assert promiscuity(veth.local.netns, veth.local.ifname) == 1
    with open("/proc/self/maps") as f:
        assert f"socket:[{inode}]" in f.read()
    src.close()
    src.close()  # idempotent
    assert _fds() == before
    with open("/proc/self/maps") as f:
        assert f"socket:[{inode}]" not in f.read()
    assert promiscuity(veth.local.netns, veth.local.ifname) == 0
    assert src.statistics().delivered == 3  # still readable
    with pytest.raises(ClosedResourceError, match=r"^live source is closed$"):
        src.poll_batch(0)


def test_failed_construction_leaks_nothing(veth: VethPair) -> None:
    before = _fds()
    # refused by the kernel after the socket and ring exist: fanout mode mismatch
    with (
        veth.in_local(),
        pytest.raises(OSError),
        LiveSource(veth.local.ifname, fanout=Fanout(), **RING) as a,
    ):
        mismatch = Fanout(a.fanout_group_id, FanoutMode.RND)
        LiveSource(veth.local.ifname, fanout=mismatch, **RING)
    assert _fds() == before


def test_unknown_interface(veth: VethPair) -> None:
    with veth.in_local():
        with pytest.raises(OSError, match=r"no network interface 'nosuch0' in this network") as e:
            LiveSource("nosuch0")
        assert e.value.errno == errno.ENODEV
        with pytest.raises(OSError, match=r"no network interface 999999"):
            LiveSource(999999)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 1000}, r"^block_size must be a positive multiple of 4096, got 1000$"),
        ({"block_count": 0}, r"^block_count must be > 0, got 0$"),
        ({"frame_size": 100}, r"^frame_size must be a multiple of 16, >= 128, that divides"),
        ({"snaplen": 0}, r"^snaplen must be >= 1, got 0$"),
    ],
)
def test_bad_arguments(veth: VethPair, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_local(veth, **kwargs)


@pytest.mark.slow
def test_without_cap_net_raw_the_error_says_what_to_do(veth: VethPair) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root, try, report
        os.close(r)
        msg = b"opened"
        try:
            os.setgid(65534)
            os.setuid(65534)
            LiveSource("lo")
        except PermissionError as e:
            msg = str(e).encode()
        except BaseException as e:  # anything else: reported to the parent
            msg = repr(e).encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    os.waitpid(pid, 0)
    assert "need CAP_NET_RAW: run as root" in msg


@pytest.mark.slow
def test_a_forked_copy_cannot_read_and_its_close_leaves_the_parent_alone(veth: VethPair) -> None:
    with open_local(veth, promiscuous=True) as src:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            msg = b"read"
            try:
                src.poll_batch(0)
            except RuntimeError as e:
                msg = str(e).encode()
            src.close()
            os.write(w, msg)
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode()
        os.waitpid(pid, 0)
        assert msg.startswith("a LiveSource cannot be used across fork()")
        assert promiscuity(veth.local.netns, veth.local.ifname) == 1  # child's close: no effect
        veth.inject([marker(veth, 3), marker(veth)])
        assert [p.data for p in receive_until_marker(src, marker(veth))] == [marker(veth, 3)]


# --- the netns helper itself -------------------------------------------------------------


def _our_namespaces() -> set[str]:
    """This process's namespaces (parallel test runs have their own pids)."""
    return {n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(f"cpumap-{os.getpid()}-")}


def test_veth_pair_cleans_up_even_when_setup_fails() -> None:
    before = _our_namespaces()
    with pytest.raises(NetnsError, match=r"mtu"):
        VethPair(mtu=10).create()  # the kernel refuses an MTU below 68 half way through
    assert _our_namespaces() == before
    with pytest.raises(RuntimeError, match="boom"), VethPair() as pair:
        assert {pair.local.netns, pair.peer.netns} <= _our_namespaces()
        raise RuntimeError("boom")
    assert _our_namespaces() == before


def test_local_end_in_the_callers_namespace_is_quiet_and_removed() -> None:
    with VethPair(local_netns=False) as pair:
        assert pair.local.netns is None
        name = pair.local.ifname
        with LiveSource(name, **RING) as src:
            sent = frames_of(Generator(flows=3, sizes=100, count=9))
            pair.inject([*sent, marker(pair)])
            assert [p.data for p in receive_until_marker(src, marker(pair))] == sent
    with pytest.raises(OSError):
        socket.if_nametoindex(name)


def test_entered_moves_only_this_thread_and_comes_back(veth: VethPair) -> None:
    home = os.readlink("/proc/thread-self/ns/net")
    with veth.in_peer():
        assert os.readlink("/proc/thread-self/ns/net") != home
        assert socket.if_nametoindex(veth.peer.ifname) == veth.peer.ifindex
    assert os.readlink("/proc/thread-self/ns/net") == home
    with (
        pytest.raises(NetnsError, match=r"^no network namespace named 'nosuch'"),
        entered("nosuch"),
    ):
        pass
