"""Generator: determinism, valid checksums (checked by an independent implementation here),
sizes, framing, stamps, the fast path, and pacing observed in the timestamps."""

from __future__ import annotations

import ipaddress
import itertools
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpumap.generator import Flow, Generator, min_frame_size, read_stamp
from cpumap.packets import PacketBatch

# --- an independent parser and checksum (deliberately not sharing code with the generator) ---


def inet_checksum(data: bytes) -> int:
    """RFC 1071, the obvious way."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parse(frame: bytes) -> dict:
    """Parse a frame and check every length and checksum; return the fields."""
    out: dict = {"len": len(frame), "vlans": []}
    off = 12
    (et,) = struct.unpack_from("!H", frame, off)
    while et in (0x8100, 0x88A8):
        (tci,) = struct.unpack_from("!H", frame, off + 2)
        out["vlans"].append((et, tci))
        off += 4
        (et,) = struct.unpack_from("!H", frame, off)
    l3 = off + 2
    out["l3"] = l3
    if et == 0x0800:
        ver_ihl, _tos, tot_len, ip_id, _frag, _ttl, proto, _ck, src, dst = struct.unpack_from(
            "!BBHHHBBHII", frame, l3
        )
        assert ver_ihl == 0x45
        assert tot_len == len(frame) - l3
        assert inet_checksum(frame[l3 : l3 + 20]) == 0, "IPv4 header checksum"
        out.update(ip=4, ip_id=ip_id, proto=proto)
        src_b, dst_b = frame[l3 + 12 : l3 + 16], frame[l3 + 16 : l3 + 20]
        l4 = l3 + 20
        seg = frame[l4:]
        pseudo = src_b + dst_b + struct.pack("!BBH", 0, proto, len(seg))
        out["src"], out["dst"] = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
    elif et == 0x86DD:
        vtf, plen, nh, hop = struct.unpack_from("!IHBB", frame, l3)
        assert vtf >> 28 == 6
        assert plen == len(frame) - l3 - 40
        assert hop == 64
        src_b, dst_b = frame[l3 + 8 : l3 + 24], frame[l3 + 24 : l3 + 40]
        proto = nh
        out.update(ip=6, proto=proto)
        l4 = l3 + 40
        seg = frame[l4:]
        pseudo = src_b + dst_b + struct.pack("!IxxxB", len(seg), nh)
        out["src"], out["dst"] = ipaddress.IPv6Address(src_b), ipaddress.IPv6Address(dst_b)
    else:
        raise AssertionError(f"ethertype {et:#x}")
    if proto == 17:
        sport, dport, ulen, ck = struct.unpack_from("!HHHH", seg)
        assert ulen == len(seg)
        assert ck != 0
        assert inet_checksum(pseudo + seg) == 0, "UDP checksum"
        out.update(l4="udp", sport=sport, dport=dport, payload=seg[8:])
    elif proto == 6:
        sport, dport, seq, _ack, doff, flags = struct.unpack_from("!HHIIBB", seg)
        assert doff >> 4 == 5 and flags == 0x18
        assert inet_checksum(pseudo + seg) == 0, "TCP checksum"
        out.update(l4="tcp", sport=sport, dport=dport, tcp_seq=seq, payload=seg[20:])
    elif proto in (1, 58):
        typ, code, _ck, ident, seq = struct.unpack_from("!BBHHH", seg)
        assert (typ, code) == ((8, 0) if proto == 1 else (128, 0))
        data = seg if proto == 1 else pseudo + seg  # ICMPv4: no pseudo-header
        assert inet_checksum(data) == 0, "ICMP checksum"
        out.update(l4="icmp", sport=ident, icmp_seq=seq, payload=seg[8:])
    else:
        raise AssertionError(f"protocol {proto}")
    out["stamp"] = struct.unpack_from("!II", out["payload"])
    return out


def stream(gen: Generator, batch_size: int = 97) -> list[bytes]:
    return [p.data for b in gen.batches(batch_size) for p in b]


# --- determinism -------------------------------------------------------------------------


def test_same_seed_same_bytes_whatever_the_batch_size() -> None:
    kw = dict(flows=13, sizes=(100, 333, 1514), vlan=(None, 7), count=500)
    a = stream(Generator(seed=5, **kw), batch_size=1)
    b = stream(Generator(seed=5, **kw), batch_size=64)
    c = stream(Generator(seed=5, **kw), batch_size=1000)
    assert len(a) == 500
    assert a == b == c


def test_other_seed_other_bytes() -> None:
    a = stream(Generator(seed=1, count=50))
    b = stream(Generator(seed=2, count=50))
    assert a != b
    assert [len(x) for x in a] == [len(x) for x in b]


# --- validity ----------------------------------------------------------------------------


def test_every_kind_is_valid_and_carries_its_stamp() -> None:
    gen = Generator(flows=None, sizes=(97, 512, 1514), vlan=(None, 100), seed=3, count=240)
    assert gen.n_flows == 3 * 2 * 2
    kinds = set()
    per_flow: dict[int, list[int]] = {}
    for i, frame in enumerate(stream(gen)):
        info = parse(frame)
        flow = gen.flow(gen.flow_id_of(i))
        assert info["stamp"] == (gen.flow_id_of(i), gen.seq_of(i)) == read_stamp(frame)
        assert (info["ip"], info["l4"]) == (flow.ip_version, flow.protocol)
        assert (info["src"], info["dst"], info["sport"]) == (flow.src, flow.dst, flow.sport)
        assert info["vlans"] == ([] if flow.vlan is None else [(0x8100, flow.vlan)])
        kinds.add((info["ip"], info["l4"], bool(info["vlans"])))
        per_flow.setdefault(info["stamp"][0], []).append(info["stamp"][1])
    assert len(kinds) == 12
    assert all(seqs == list(range(len(seqs))) for seqs in per_flow.values())


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(90, 2000), min_size=1, max_size=4),
    flows=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    vlan=st.sampled_from([None, 0, 4095, (None, 9)]),
)
def test_checksums_hold_for_any_sizes(sizes, flows, seed, vlan) -> None:  # type: ignore[no-untyped-def]
    gen = Generator(flows=flows, sizes=sizes, vlan=vlan, seed=seed, count=3 * flows)
    for frame in stream(gen):
        parse(frame)


def test_ipv6_and_vlan_framing_byte_by_byte() -> None:
    flow = Flow(
        "udp",
        6,
        ipaddress.IPv6Address("fd00::1"),
        ipaddress.IPv6Address("fd00::2"),
        1234,
        5678,
        vlan=42,
    )
    gen = Generator(flows=[flow], sizes=100, count=2, src_mac="02:00:00:00:00:aa")
    f0, f1 = stream(gen)
    assert len(f0) == 100
    assert f0[0:6] == bytes.fromhex("020000000002") and f0[6:12] == bytes.fromhex("0200000000aa")
    assert struct.unpack_from("!HHH", f0, 12) == (0x8100, 42, 0x86DD)
    assert f0[18] >> 4 == 6
    assert struct.unpack_from("!HBB", f0, 22) == (100 - 18 - 40, 17, 64)
    assert f0[26:42] == ipaddress.IPv6Address("fd00::1").packed
    assert f0[42:58] == ipaddress.IPv6Address("fd00::2").packed
    assert struct.unpack_from("!HHH", f0, 58) == (1234, 5678, 100 - 58)
    assert struct.unpack_from("!II", f0, 66) == (0, 0)
    assert struct.unpack_from("!II", f1, 66) == (0, 1)
    parse(f0)
    parse(f1)


def test_benchmark_frame_is_64_byte_udp() -> None:
    gen = Generator(flows=4, sizes=64, protocols=("udp",), ip_versions=(4,))
    frames = gen.frames(8)
    assert frames.shape == (8, 64) and frames.dtype == np.uint8
    for i, row in enumerate(frames):
        info = parse(row.tobytes())
        assert len(info["payload"]) == 22  # 14 + 20 + 8 headers + 22 payload
        assert info["stamp"] == (i % 4, i // 4)
        assert info["ip_id"] == i // 4


def test_tcp_sequence_counts_payload_bytes() -> None:
    gen = Generator(flows=1, protocols=("tcp",), ip_versions=(4,), sizes=(100, 300), count=6)
    infos = [parse(f) for f in stream(gen)]
    for a, b in itertools.pairwise(infos):
        assert (b["tcp_seq"] - a["tcp_seq"]) % 2**32 == len(a["payload"])


def test_icmp_sequence_and_ipv4_id_follow_the_flow_sequence() -> None:
    gen = Generator(flows=2, protocols=("icmp",), ip_versions=(4,), sizes=80, count=8)
    for i, frame in enumerate(stream(gen)):
        info = parse(frame)
        assert info["icmp_seq"] == info["ip_id"] == i // 2


def test_sequence_wraps_at_16_bits_in_headers_and_checksums_stay_valid() -> None:
    gen = Generator(flows=1, protocols=("icmp", "udp"), ip_versions=(4,), sizes=80)
    # flows=1 takes the first protocol only; frames far into the stream
    frames = gen.frames(3, start=65535)
    for k, row in enumerate(frames):
        info = parse(row.tobytes())
        assert info["stamp"] == (0, 65535 + k)
        assert info["icmp_seq"] == (65535 + k) & 0xFFFF


# --- sizes -------------------------------------------------------------------------------


def test_sizes_are_honoured_and_cycle_per_flow() -> None:
    sizes = (96, 97, 640, 1514)
    gen = Generator(flows=5, sizes=sizes, count=200)
    lens = [len(f) for f in stream(gen)]
    for i, n in enumerate(lens):
        f, q = i % 5, i // 5
        assert n == sizes[(f + q) % 4] == gen.size_of(i)


def test_min_frame_size_table() -> None:
    assert min_frame_size("udp", 4) == 50
    assert min_frame_size("icmp", 4) == 50
    assert min_frame_size("tcp", 4) == 62
    assert min_frame_size("udp", 6) == 70
    assert min_frame_size("icmp", 6) == 70
    assert min_frame_size("tcp", 6, vlan=True) == 86


def test_undersize_is_an_error_by_default() -> None:
    with pytest.raises(
        ValueError,
        match=r"^size 64 is too small for tcp over IPv6: the minimum is 82 bytes "
        r"\(headers \+ 8-byte stamp\); pass undersize='clamp' to raise such frames to the "
        r"minimum$",
    ):
        Generator(flows=None, sizes=64, protocols=("tcp",), ip_versions=(6,))


def test_undersize_clamp_raises_to_the_minimum() -> None:
    gen = Generator(sizes=(40, 200), undersize="clamp", vlan=5, count=24)
    for i, frame in enumerate(stream(gen)):
        flow = gen.flow(gen.flow_id_of(i))
        want = (40, 200)[(i % gen.n_flows + i // gen.n_flows) % 2]
        assert len(frame) == max(want, min_frame_size(flow.protocol, flow.ip_version, True))
        parse(frame)


def test_frames_fast_path_equals_batches_and_needs_one_size() -> None:
    gen = Generator(flows=7, sizes=128, count=100)
    fast = gen.frames(100)
    batch = PacketBatch.concat(list(gen.batches(33)))
    assert batch.uniform_length() == 128
    assert np.array_equal(batch.buf.reshape(100, 128), fast)
    into = np.zeros((100, 128), dtype=np.uint8)
    assert gen.frames(100, out=into) is into
    assert np.array_equal(into, fast)
    with pytest.raises(ValueError, match=r"^out must be a C-contiguous uint8 array of shape"):
        gen.frames(10, out=into)
    with pytest.raises(ValueError, match=r"^frames\(\) needs one frame size"):
        Generator(sizes=(100, 200)).frames(1)


def test_count_bounds_the_stream() -> None:
    assert [len(b) for b in Generator(count=10).batches(4)] == [4, 4, 2]
    assert list(Generator(count=0).batches(4)) == []
    assert len(list(Generator(count=5).packets())) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sizes": ()}, r"^sizes must not be empty$"),
        ({"sizes": 70000}, r"^sizes must be in 1\.\.65535, got 70000$"),
        ({"rate": 0}, r"^rate must be > 0 frames/s, got 0$"),
        (
            {"protocols": ("sctp",)},
            r"^protocols must be among \('udp', 'tcp', 'icmp'\), got 'sctp'$",
        ),
        ({"ip_versions": (5,)}, r"^ip_versions must be among \(4, 6\), got 5$"),
        ({"vlan": 5000}, r"^vlan ids must be in 0\.\.4095, got 5000$"),
        ({"flows": 0}, r"^flows must be in 1\.\.16777216, got 0$"),
        ({"undersize": "pad"}, r"^undersize must be 'error' or 'clamp', got 'pad'$"),
        ({"src_mac": "02:00"}, r"^a MAC address has 6 bytes, got '02:00'$"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Generator(**kwargs)


# --- pacing ------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when slept on (or when the test moves it)."""

    def __init__(self) -> None:
        self.now = 5_000_000_000
        self.slept = 0

    def clock(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += 1
        self.now += max(1, round(seconds * 1e9))


def test_pacing_shows_in_timestamps_and_batches_wait_for_their_last_frame() -> None:
    fc = FakeClock()
    gen = Generator(
        flows=3,
        sizes=100,
        rate=1000.0,
        count=50,
        clock=fc.clock,
        sleep=fc.sleep,
        start_ns=1_700_000_000_000_000_000,
    )
    ts = []
    for b in gen.batches(8):
        # handed out no earlier than its last frame's due time (on the monotonic clock)
        assert fc.now - 5_000_000_000 >= int(b.ts_ns[-1]) - 1_700_000_000_000_000_000
        ts.extend(b.ts_ns.tolist())
    assert ts[0] == 1_700_000_000_000_000_000
    assert np.diff(ts).tolist() == [1_000_000] * 49  # exactly 1 ms apart at 1000 frames/s
    assert fc.slept > 0


def test_a_stall_longer_than_the_burst_shows_as_a_gap() -> None:
    fc = FakeClock()
    gen = Generator(
        flows=1, sizes=100, rate=1e6, burst=10, count=40, clock=fc.clock, sleep=fc.sleep, start_ns=0
    )
    ts = []
    for k, b in enumerate(gen.batches(10)):
        ts.extend(b.ts_ns.tolist())
        if k == 1:
            fc.now += 1_000_000  # the consumer stalls 1 ms (1000 frames' worth)
    gaps = np.diff(ts)
    assert (gaps >= 1000).all()  # never faster than the rate
    assert gaps.max() > 900_000  # the stall is visible, not smoothed over
    # after the stall, at most `burst` frames of catch-up: frame 20 is due 10 us before "now"
    assert ts[20] == ts[19] + gaps.max()


def test_real_clock_pacing_never_beats_the_rate() -> None:
    rate, n = 20_000.0, 400
    t0 = time.monotonic_ns()
    batches = list(Generator(flows=2, sizes=100, rate=rate, count=n).batches(50))
    elapsed = time.monotonic_ns() - t0
    ts = np.concatenate([b.ts_ns for b in batches])
    spacing = np.diff(ts)
    assert (spacing >= int(1e9 / rate) - 1).all()
    span = int(ts[-1] - ts[0])
    assert span >= (n - 1) * 1e9 / rate - n  # within rounding of the schedule
    assert elapsed >= span  # the generator really waited for the schedule


def test_unpaced_batches_share_a_timestamp() -> None:
    fc = FakeClock()
    gen = Generator(count=6, clock=fc.clock, sleep=fc.sleep, start_ns=100)
    it = gen.batches(3)
    first = next(it)
    fc.now += 7
    second = next(it)
    assert first.ts_ns.tolist() == [100] * 3
    assert second.ts_ns.tolist() == [107] * 3
