"""The built-in steering programs (steering.py, xdp_parse.py); the CPU table they read is
tested in test_cpu_table.py.

* the hash against golden values computed by a C build of xdp-tools' SuperFastHash;
* l4-hash and IPv6 extension headers, as docs/steering.md says;
* each mode's verdict and target on crafted frames, every option and quirk decision;
* per frame == vectorized for any frame (hypothesis: random, crafted, malformed and
  truncated frames, random CPU tables, consecutive and scattered batches);
* a few end-to-end runs through a real CpuMap.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cpumap
import cpumap.programs
from cpumap import XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, CpuMap, possible_cpus
from cpumap.engine.frame_pool import HASH_L3, HASH_L4, HASH_NONE, FramePool
from cpumap.generator import Flow, Generator, read_stamp
from cpumap.packets import PacketBatch
from cpumap.programs.context import NO_KEY, XdpBatch, XdpContext
from cpumap.programs.cpu_table import CpuTable
from cpumap.programs.steering import (
    BUILTIN_PROGRAMS,
    MODES,
    FlowHash,
    L4Filter,
    L4Hash,
    L4Proto,
    RoundRobin,
    make_program,
)
from cpumap.programs.xdp_parse import (
    ETH_HLEN,
    INITVAL,
    SKIPPED,
    ip_pair_hash,
    none_skipped,
    parse_eth,
    parse_eth_np,
    superfasthash4,
    superfasthash4_np,
)
from cpumap.skb import Skb

MAX_ENTRIES = 4
POOL_FRAMES = 64
MAC = bytes.fromhex("020000000002020000000001")


# -- frame builders ---------------------------------------------------------------------------
def eth(ethertype: int, *tags: tuple[int, int]) -> bytes:
    out = MAC
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", ethertype)


def ipv4(
    proto: int,
    l4: bytes = b"",
    *,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    ihl: int = 5,
    frag: int = 0,
    options: bytes | None = None,
) -> bytes:
    opts = options if options is not None else bytes(max(0, ihl * 4 - 20))
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        20 + len(opts) + len(l4),
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + opts + l4


def ipv6(nexthdr: int, l4: bytes = b"", *, src: str = "fd00::1", dst: str = "fd00::2") -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(l4), nexthdr, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + l4
    )


def udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8, 0)


def tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIHHHH", sport, dport, 1, 0, 0x5010, 1024, 0, 0)


def v4_udp(sport: int = 1000, dport: int = 53, **kw: object) -> bytes:
    return eth(0x0800) + ipv4(17, udp(sport, dport), **kw)  # type: ignore[arg-type]


# -- driving the two forms directly ------------------------------------------------------------
class Bench:
    """A frame pool and a map (no entries: programs only need its max_entries) to run the
    two forms of a program on the same frames."""

    def __init__(self) -> None:
        self.pool = FramePool(POOL_FRAMES, frame_size=256, headroom=64)
        self.cmap = CpuMap(MAX_ENTRIES)
        self.ctx = XdpContext(self.pool)

    def close(self) -> None:
        self.cmap.close()
        self.pool.close()

    def load(self, frames: Sequence[bytes], where: Sequence[int], linktypes: Sequence[int]) -> None:
        pool = self.pool
        room = pool.max_packet
        for i, f, lt in zip(where, frames, linktypes, strict=True):
            f = f[:room]
            pool.data[i, pool.headroom : pool.headroom + len(f)] = np.frombuffer(f, np.uint8)
            pool.length[i] = len(f)
            pool.linktype[i] = lt
            pool.meta_len[i] = 0
            pool.hash_type[i] = HASH_NONE  # as RxProducer._fill: no stale hash rides

    def per_frame(self, prog: object, where: Sequence[int]) -> list[tuple[int, int]]:
        """(verdict, key or -1) per frame, the engine's per-frame way."""
        out = []
        for i in where:
            self.ctx.load(i, 0, 0, int(self.pool.linktype[i]))
            v = prog.frame(self.ctx)  # type: ignore[attr-defined]
            key = self.ctx.redirect_key if v == XDP_REDIRECT else -1
            out.append((int(v), -1 if key == NO_KEY else int(key)))
        return out

    def vectorized(self, prog: object, where: Sequence[int]) -> list[tuple[int, int]]:
        idx = np.array(where, dtype=np.uint32)
        consecutive = len(where) > 0 and list(where) == list(range(where[0], where[0] + len(where)))
        batch = XdpBatch(self.pool, idx, where[0] if consecutive else None)
        verdicts, keys = prog.batch(batch)  # type: ignore[attr-defined]
        assert verdicts.dtype == np.uint8 and keys.dtype == np.uint32  # the engine's fast path
        assert verdicts.shape == keys.shape == (len(where),)
        return [
            (int(v), int(k) if v == XDP_REDIRECT else -1)
            for v, k in zip(verdicts.tolist(), keys.tolist(), strict=True)
        ]

    def both(
        self, prog_factory, frames: Sequence[bytes], linktypes: Sequence[int] | None = None
    ) -> list[tuple[int, int]]:
        """Run both forms on ``frames`` (consecutive from 0) and check they agree."""
        where = list(range(len(frames)))
        self.load(frames, where, linktypes or [1] * len(frames))
        a = self.per_frame(prog_factory(), where)
        b = self.vectorized(prog_factory(), where)
        assert a == b
        return a


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    b = Bench()
    yield b
    b.close()


def run_mode(bench: Bench, mode: str, frames: list[bytes], cpus=(0, 1, 2), **options):
    table = list(cpus)
    return bench.both(lambda: make_program(mode, bench.cmap, table, **options), frames)


# -- the hash ------------------------------------------------------------------------------
# (src, dst, protocol, SuperFastHash) from a C build of xdp-tools' hash_func01.h at -O0
# (gcc -O2 without -fno-strict-aliasing miscompiles its u16 loads of the u32 sum).
GOLDEN = [
    ("10.0.0.1", "10.0.0.2", 17, 4136231318),
    ("192.168.1.10", "8.8.8.8", 6, 3764817569),
    ("255.255.255.255", "255.255.255.255", 1, 2861678838),
    ("0.0.0.0", "0.0.0.0", 0, 963447421),
    ("172.16.5.4", "10.200.3.1", 255, 683684134),
    ("fd00::1", "fd00::2", 17, 1004661395),
    ("2001:db8::dead:beef", "fe80::1234:5678:9abc:def0", 6, 62400403),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1", 58, 2225081762),
]


def address_sum(src: str, dst: str) -> int:
    words = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    return sum(struct.unpack(f"<{len(words) // 4}I", words)) & 0xFFFFFFFF


@pytest.mark.parametrize(("src", "dst", "proto", "expected"), GOLDEN)
def test_superfasthash_matches_xdp_tools(src: str, dst: str, proto: int, expected: int) -> None:
    s = address_sum(src, dst)
    assert superfasthash4(s, INITVAL + proto) == expected
    got = superfasthash4_np(np.array([s], np.uint32), np.array([INITVAL + proto], np.uint32))
    assert got.tolist() == [expected]


@pytest.mark.parametrize(("src", "dst", "proto", "expected"), GOLDEN)
def test_l4_hash_picks_hash_mod_count(bench: Bench, src: str, dst: str, proto: int, expected):
    if ":" in src:
        frame = eth(0x86DD) + ipv6(proto, udp(1, 2), src=src, dst=dst)
    else:
        frame = eth(0x0800) + ipv4(proto, udp(1, 2), src=src, dst=dst)
    cpus = [3, 0, 2]
    reverse = frame.replace(  # the other direction: addresses swapped
        ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed,
        ipaddress.ip_address(dst).packed + ipaddress.ip_address(src).packed,
    )
    got = run_mode(bench, "l4-hash", [frame, reverse], cpus)
    assert got == [(XDP_REDIRECT, cpus[expected % 3])] * 2


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_superfasthash_forms_agree(value: int, seed: int) -> None:
    got = superfasthash4_np(np.array([value], np.uint32), np.array([seed], np.uint32))
    assert got.tolist() == [superfasthash4(value, seed)]


# -- l4-hash and IPv6 extension headers ---------------------------------------------------------
# What docs/steering.md says, shown: l4-hash seeds the hash with the fixed header's next-header
# field (extension headers are not walked, as in xdp-tools' sample: ``xdp_parse.ip_pair_hash``
# is what l4-hash hashes), so one address pair whose packets carry different extension
# headers -- a hop-by-hop option on some, a fragment header on others -- hashes three ways and
# can be sent to three CPUs.  ``Skb.hash`` (flow-hash) walks them and keeps the pair together.
V6_UDP = udp(4000, 53)
HOP_BY_HOP_UDP = bytes([17, 0, 1, 4, 0, 0, 0, 0]) + V6_UDP
FRAGMENT_UDP = bytes([17, 0, 0, 0, 0, 0, 0, 1]) + V6_UDP
V6_PLAIN = eth(0x86DD) + ipv6(17, V6_UDP)
V6_HOP_BY_HOP = eth(0x86DD) + ipv6(0, HOP_BY_HOP_UDP)
V6_FRAGMENT = eth(0x86DD) + ipv6(44, FRAGMENT_UDP)


def l4_hash(frame: bytes) -> int:
    et, l3 = parse_eth(frame, len(frame))
    return ip_pair_hash(frame, len(frame), et, l3)


def test_extension_headers_give_one_address_pair_several_l4_hashes() -> None:
    hashes = {l4_hash(f) for f in (V6_PLAIN, V6_HOP_BY_HOP, V6_FRAGMENT)}
    assert len(hashes) == 3
    assert len({h % 16 for h in hashes}) > 1  # over 16 CPUs, more than one of them


def test_the_same_headers_l4_hash_alike_in_both_directions() -> None:
    back = {"src": "fd00::2", "dst": "fd00::1"}
    for f, reverse in (
        (V6_PLAIN, eth(0x86DD) + ipv6(17, V6_UDP, **back)),
        (V6_HOP_BY_HOP, eth(0x86DD) + ipv6(0, HOP_BY_HOP_UDP, **back)),
    ):
        assert l4_hash(f) == l4_hash(reverse)


def test_flow_hash_keeps_a_hop_by_hop_option_with_its_flow() -> None:
    assert Skb(V6_PLAIN).hash == Skb(V6_HOP_BY_HOP).hash


# -- each mode ----------------------------------------------------------------------------------
R = XDP_REDIRECT


def test_no_touch_and_touch(bench: Bench) -> None:
    frames = [v4_udp(), b"\x00" * 13, eth(0x05DC) + bytes(40), eth(0x0806) + bytes(28)]
    assert run_mode(bench, "no-touch", frames, [2, 0]) == [(R, 2)] * 4
    assert run_mode(bench, "touch", frames, [2, 0]) == [
        (R, 2),
        (XDP_ABORTED, -1),
        (XDP_DROP, -1),
        (R, 2),
    ]
    assert run_mode(bench, "no-touch", frames, []) == [(XDP_ABORTED, -1)] * 4
    # The checks come before the CPU is used: a short frame is ABORTED, a length DROPped.
    assert run_mode(bench, "touch", frames, [])[1:3] == [(XDP_ABORTED, -1), (XDP_DROP, -1)]


def test_cpu_outside_the_map_is_aborted(bench: Bench) -> None:
    frames = [v4_udp(sport=s) for s in range(6)]
    got = run_mode(bench, "l4-sport", frames, [0, MAX_ENTRIES])
    assert got == [(R, 0), (XDP_ABORTED, -1)] * 3


def test_round_robin_cycles_per_object_and_survives_a_shrink(bench: Bench) -> None:
    frames = [v4_udp()] * 7
    assert run_mode(bench, "round-robin", frames, [1, 3, 0]) == [
        (R, c) for c in (1, 3, 0, 1, 3, 0, 1)
    ]
    for vectorized in (False, True):
        table = CpuTable(4, [0, 1, 2, 3])
        prog = RoundRobin(bench.cmap, table, vectorized=vectorized)
        run = bench.vectorized if vectorized else bench.per_frame
        bench.load(frames[:3], [0, 1, 2], [1] * 3)
        assert run(prog, [0, 1, 2]) == [(R, 0), (R, 1), (R, 2)]
        table.set([3, 2])  # the counter (3) is past the new count: restart at 0
        assert run(prog, [0, 1, 2]) == [(R, 3), (R, 2), (R, 3)]
        table.close()


def test_l4_proto_classes_and_quirk_options(bench: Bench) -> None:
    frames = [
        eth(0x0800) + ipv4(6, tcp(1, 2)),
        eth(0x0800) + ipv4(17, udp(1, 2)),
        eth(0x0800) + ipv4(1, bytes(8)),
        eth(0x86DD) + ipv6(58, bytes(8)),
        eth(0x86DD) + ipv6(47),  # GRE: other
        eth(0x0806) + bytes(28),  # ARP: non-IP
        eth(0x0800) + ipv4(17)[:19],  # cut IPv4 header: protocol 0
        eth(0x0800, (0x8100, 5), (0x88A8, 6)) + ipv4(17, udp(1, 2)),  # QinQ
        eth(0x0800, (0x8100, 5), (0x8100, 6), (0x8100, 7)) + ipv4(17),  # 3 tags: not IP
    ]
    cpus = [10 % MAX_ENTRIES, 1, 3]
    got = run_mode(bench, "l4-proto", frames, cpus)
    assert [k for _, k in got] == [cpus[i] for i in (0, 1, 2, 2, 0, 0, 0, 1, 0)]
    # xdp-tools: non-IP to UDP's index, ICMP to index 2 even with two CPUs (ABORTED).
    got = run_mode(bench, "l4-proto", frames, [0, 1], non_ip_index=1, strict_index=True)
    aborted = (XDP_ABORTED, -1)
    assert got == [(R, 0), (R, 1), aborted, aborted, (R, 0), (R, 1), (R, 0), (R, 1), (R, 1)]
    # Ours: an index past the table wraps.
    got = run_mode(bench, "l4-proto", frames, [0, 1])
    assert [k for _, k in got] == [0, 1, 0, 0, 0, 0, 0, 1, 0]
    custom = {17: 2, 6: 1}
    got = run_mode(bench, "l4-proto", frames[:5], [0, 1, 2], proto_index=custom, default_index=0)
    assert [k for _, k in got] == [1, 2, 0, 0, 0]


def test_l4_filter_drops_the_discard_port(bench: Bench) -> None:
    frames = [
        eth(0x0800) + ipv4(17, udp(1000, 9)),
        eth(0x86DD) + ipv6(17, udp(1000, 9)),
        eth(0x0800) + ipv4(6, tcp(1000, 9)),  # TCP to 9: not filtered
        eth(0x0800) + ipv4(17, udp(1000, 9), frag=0x2000),  # a fragment has no ports
        eth(0x0800) + ipv4(17, udp(9, 1000)),
        eth(0x0800) + ipv4(17, udp(1000, 9), ihl=6),  # options honoured
    ]
    got = run_mode(bench, "l4-filter", frames, [0, 1])
    assert got == [(XDP_DROP, -1), (XDP_DROP, -1), (R, 0), (R, 1), (R, 1), (XDP_DROP, -1)]
    got = run_mode(bench, "l4-filter", frames, [0, 1], filter_ipv6=False)
    assert got[1] == (R, 1)
    got = run_mode(bench, "l4-filter", frames, [0, 1], drop_ports=(1000, 7))
    assert [v for v, _ in got] == [R, R, R, R, XDP_DROP, R]
    # DROP needs no CPU: an empty table still drops (and aborts the rest).
    got = run_mode(bench, "l4-filter", frames[:3], [])
    assert got == [(XDP_DROP, -1), (XDP_DROP, -1), (XDP_ABORTED, -1)]
    with pytest.raises(ValueError, match=r"^drop port 0 is not in 1\.\.65535$"):
        L4Filter(bench.cmap, [0], drop_ports=[0])


def test_l4_ports(bench: Bench) -> None:
    frames = [
        eth(0x0800) + ipv4(17, udp(5, 6)),
        eth(0x0800) + ipv4(6, tcp(7, 9)),
        eth(0x86DD) + ipv6(6, tcp(11, 13)),  # xdp-tools never finds IPv6 TCP ports
        eth(0x86DD) + ipv6(17, udp(15, 17)),
        eth(0x0800) + ipv4(6, tcp(7, 9))[:-1],  # cut TCP header: no ports
        eth(0x0800) + ipv4(17, udp(5, 6), ihl=7),  # options: ports after them
        eth(0x0800) + ipv4(17, udp(5, 6), frag=0x0001),  # later fragment
        eth(0x0800) + ipv4(17, udp(5, 6), ihl=4),  # bad IHL
        eth(0x0800) + ipv4(1, bytes(8)),  # ICMP: no ports
        eth(0x86DD) + ipv6(0, udp(5, 6)),  # extension header: not walked
        eth(0x0800, (0x8100, 3)) + ipv4(17, udp(5, 6)),  # tagged
    ]
    cpus = list(range(100))
    cpus = [c % MAX_ENTRIES for c in cpus]
    table = cpus[:19]  # ports mod 19
    got = run_mode(bench, "l4-sport", frames, table)
    assert [k for _, k in got] == [table[p % 19] for p in (5, 7, 11, 15, 0, 5, 0, 0, 0, 0, 5)]
    got = run_mode(bench, "l4-dport", frames, table)
    assert [k for _, k in got] == [table[p % 19] for p in (6, 9, 13, 17, 0, 6, 0, 0, 0, 0, 6)]


def test_skipped_frames_pass(bench: Bench) -> None:
    frames = [
        b"",
        b"\x01" * 13,
        eth(0x0010) + bytes(40),  # 802.3 length field
        MAC + b"\x81\x00\x00",  # cut inside a tag
        eth(0x0800, (0x8100, 1))[:17],
    ]
    for mode in ("l4-proto", "l4-filter", "l4-hash", "l4-sport", "l4-dport"):
        assert run_mode(bench, mode, frames) == [(XDP_PASS, -1)] * len(frames), mode
        assert run_mode(bench, mode, frames, []) == [(XDP_PASS, -1)] * len(frames), mode
    # Another link type than Ethernet: PASS too (XDP only ever sees Ethernet).
    raw = [ipv4(17, udp(1, 2))] * 3
    for mode in ("touch", "l4-proto", "l4-hash", "l4-dport"):
        prog = lambda m=mode: make_program(m, bench.cmap, [0, 1])  # noqa: E731
        assert bench.both(prog, raw, [101] * 3) == [(XDP_PASS, -1)] * 3


def test_l4_hash_non_ip_and_cut_headers_go_to_index_0(bench: Bench) -> None:
    frames = [
        eth(0x0806) + bytes(28),
        eth(0x0800) + ipv4(17)[:19],
        eth(0x86DD) + ipv6(17)[:39],
        eth(0x88A8, (0x8100, 1)) + bytes(30),
    ]
    assert run_mode(bench, "l4-hash", frames, [3, 1]) == [(R, 3)] * 4


def test_make_program_and_option_errors(bench: Bench) -> None:
    assert sorted(MODES) == sorted(
        [
            "no-touch",
            "touch",
            "round-robin",
            "l4-proto",
            "l4-filter",
            "l4-hash",
            "l4-sport",
            "l4-dport",
        ]
    )
    with pytest.raises(ValueError, match=r"^unknown steering mode 'l5-hash'; choose one of: "):
        make_program("l5-hash", bench.cmap, [0])
    with pytest.raises(TypeError):
        make_program("l4-hash", bench.cmap, [0], drop_ports=[9])
    with pytest.raises(ValueError, match=r"^non_ip_index must be ints >= 0, not -1$"):
        L4Proto(bench.cmap, [0], non_ip_index=-1)
    prog = make_program("l4-hash", bench.cmap, [0, 1], vectorized=False)
    assert isinstance(prog, L4Hash) and not prog.vectorized and prog.symmetric
    symmetric = {mode for mode, cls in MODES.items() if cls.symmetric}
    assert symmetric == {"no-touch", "touch", "l4-proto", "l4-filter", "l4-hash"}
    assert "l4-hash" in repr(prog)


def test_make_program_makes_every_builtin_flow_hash_included(bench: Bench) -> None:
    assert (*MODES, "flow-hash") == BUILTIN_PROGRAMS
    assert cpumap.BUILTIN_PROGRAMS is cpumap.programs.BUILTIN_PROGRAMS is BUILTIN_PROGRAMS
    for name in BUILTIN_PROGRAMS:
        for vectorized in (True, False):
            prog = make_program(name, bench.cmap, [1, 0], vectorized=vectorized)
            assert prog.vectorized is vectorized
    prog = make_program("flow-hash", bench.cmap, [3, 1], vectorized=False)
    assert isinstance(prog, FlowHash) and prog.keys == [3, 1] and prog.cmap is bench.cmap
    with pytest.raises(TypeError, match=r"not a CpuTable"), CpuTable(2, [0]) as table:
        make_program("flow-hash", bench.cmap, table)
    with pytest.raises(TypeError):  # flow-hash takes no options
        make_program("flow-hash", bench.cmap, [0], drop_ports=[9])
    with pytest.raises(ValueError, match=r"choose one of: no-touch, .*, l4-dport, flow-hash$"):
        make_program("flowhash", bench.cmap, [0])


# -- per frame == vectorized, for any frame --------------------------------------------------
TPIDS = st.sampled_from([0x8100, 0x88A8, 0x9100])
ETHERTYPES = st.one_of(
    st.sampled_from([0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8]),
    st.integers(0, 0x5FF),
    st.integers(0, 0xFFFF),
)
PROTOS = st.one_of(st.sampled_from([1, 6, 17, 58, 0, 44]), st.integers(0, 255))
PORTS = st.one_of(st.sampled_from([0, 9, 53]), st.integers(0, 0xFFFF))


@st.composite
def any_frame(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=120))
    tags = draw(st.lists(st.tuples(TPIDS, st.integers(0, 0xFFFF)), max_size=3))
    et = draw(ETHERTYPES)
    proto = draw(PROTOS)
    sport, dport = draw(PORTS), draw(PORTS)
    l4 = tcp(sport, dport) if proto == 6 else udp(sport, dport)
    l4 += draw(st.binary(max_size=12))
    if et == 0x0800 or (et not in (0x86DD,) and draw(st.booleans())):
        ihl = draw(st.one_of(st.just(5), st.integers(0, 15)))
        frag = draw(st.one_of(st.sampled_from([0, 0x2000, 0x4000]), st.integers(0, 0xFFFF)))
        src, dst = draw(st.ip_addresses(v=4)), draw(st.ip_addresses(v=4))
        l3 = ipv4(proto, l4, src=str(src), dst=str(dst), ihl=ihl, frag=frag)
    else:
        src, dst = draw(st.ip_addresses(v=6)), draw(st.ip_addresses(v=6))
        l3 = ipv6(proto, l4, src=str(src), dst=str(dst))
    frame = eth(et, *tags) + l3
    if draw(st.booleans()):
        frame = frame[: draw(st.integers(0, len(frame)))]
    return frame


MODE_OPTIONS = [(mode, {}) for mode in MODES] + [
    ("l4-proto", {"non_ip_index": 1, "strict_index": True}),
    ("l4-proto", {"proto_index": {6: 3, 47: 1}, "default_index": 2}),
    ("l4-filter", {"non_ip_index": 1, "strict_index": True, "filter_ipv6": False}),
    ("l4-filter", {"drop_ports": (53, 9, 0xFFFF)}),
]


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(any_frame(), min_size=1, max_size=24),
    linktypes=st.lists(st.sampled_from([1, 1, 1, 1, 101]), min_size=24, max_size=24),
    cpus=st.lists(st.integers(0, MAX_ENTRIES + 1), max_size=5),
    scattered=st.booleans(),
    data=st.data(),
)
def test_per_frame_and_vectorized_forms_agree(
    bench: Bench, frames, linktypes, cpus, scattered: bool, data: st.DataObject
) -> None:
    n = len(frames)
    if scattered:
        where = data.draw(st.permutations(range(POOL_FRAMES)))[:n]
    else:
        first = data.draw(st.integers(0, POOL_FRAMES - n))
        where = list(range(first, first + n))
    bench.load(frames, where, linktypes[:n])
    table = CpuTable(8, cpus)
    try:
        for mode, options in MODE_OPTIONS:
            per = make_program(mode, bench.cmap, table, vectorized=False, **options)
            vec = make_program(mode, bench.cmap, table, vectorized=True, **options)
            if isinstance(per, RoundRobin):
                per.position = vec.position = data.draw(st.integers(0, 6))
            a = bench.per_frame(per, where)
            b = bench.vectorized(vec, where)
            assert a == b, (mode, options)
            if isinstance(per, RoundRobin):
                assert per.position == vec.position
    finally:
        table.close()


@st.composite
def uniform_batch(draw: st.DrawFn) -> list[bytes]:
    """Frames that all take the vectorized fast paths' first test (untagged, one IP
    version, at least an Ethernet header), varied inside: IHL, fragments, protocols,
    truncation -- so the shortcuts are checked against the per-frame form too."""
    v6 = draw(st.booleans())
    out = []
    for _ in range(draw(st.integers(1, 24))):
        proto = draw(st.sampled_from([6, 17, 17, 1, 58, 0]))
        sport, dport = draw(PORTS), draw(PORTS)
        l4 = tcp(sport, dport) if proto == 6 else udp(sport, dport)
        if v6:
            frame = eth(0x86DD) + ipv6(proto, l4, src=str(draw(st.ip_addresses(v=6))))
        else:
            ihl = draw(st.sampled_from([5, 5, 5, 6, 4, 15]))
            frag = draw(st.sampled_from([0, 0, 0x4000, 0x2000, 0x0003]))
            src = str(draw(st.ip_addresses(v=4)))
            frame = eth(0x0800) + ipv4(proto, l4, src=src, ihl=ihl, frag=frag)
        if draw(st.integers(0, 3)) == 0:
            frame = frame[: draw(st.integers(ETH_HLEN, len(frame)))]
        out.append(frame)
    return out


@settings(max_examples=200, deadline=None)
@given(frames=uniform_batch(), cpus=st.lists(st.integers(0, MAX_ENTRIES), max_size=4))
def test_forms_agree_on_uniform_batches(bench: Bench, frames: list[bytes], cpus) -> None:
    table = CpuTable(4, cpus)
    try:
        for mode, options in MODE_OPTIONS:
            bench.both(lambda m=mode, o=options: make_program(m, bench.cmap, table, **o), frames)
    finally:
        table.close()


# -- the fast paths equal their general paths ---------------------------------------------------
# steering.py's fast paths each name the test here that holds them equal to the general path.
def _where(n: int, scattered: bool, data: st.DataObject) -> list[int]:
    if scattered:
        return data.draw(st.permutations(range(POOL_FRAMES)))[:n]
    first = data.draw(st.integers(0, POOL_FRAMES - n))
    return list(range(first, first + n))


# Batches over one CPU: frames of any kind (mostly Ethernet), in consecutive or scattered
# frames, to a CPU in or out of the table's range.
ONE_CPU_BATCHES = {
    "frames": st.lists(any_frame(), min_size=1, max_size=24),
    "linktypes": st.lists(st.sampled_from([1, 1, 1, 101]), min_size=24, max_size=24),
    "cpu": st.integers(0, MAX_ENTRIES + 1),
    "scattered": st.booleans(),
    "data": st.data(),
}


@settings(max_examples=100, deadline=None)
@given(**ONE_CPU_BATCHES)
def test_by_value_modes_over_one_cpu_skip_the_values(
    bench: Bench, frames, linktypes, cpu: int, scattered: bool, data: st.DataObject
) -> None:
    """Over one CPU the by-value modes skip their values (value % 1 == 0): the same verdicts
    and keys as the per-frame form, and as the general path (a table of the CPU twice:
    value % 2 picks it either way)."""
    where = _where(len(frames), scattered, data)
    bench.load(frames, where, linktypes[: len(frames)])
    for mode in ("l4-hash", "l4-sport", "l4-dport"):
        one = bench.vectorized(make_program(mode, bench.cmap, [cpu]), where)
        assert one == bench.vectorized(make_program(mode, bench.cmap, [cpu, cpu]), where), mode
        assert one == bench.per_frame(
            make_program(mode, bench.cmap, [cpu], vectorized=False), where
        )


def _ride(bench: Bench, frames: Sequence[bytes], where: Sequence[int]) -> bool:
    """Give each frame the hash the RX side's record walk would: the skb's, kind and all,
    where the skb reaches an IP header (HASH_NONE elsewhere).  Whether every frame rides."""
    pool = bench.pool
    every = True
    for i in where:
        skb = Skb(
            bytes(pool.data[i, pool.headroom : pool.headroom + int(pool.length[i])]),
            linktype=int(pool.linktype[i]),
        )
        kind = (HASH_L4 if skb.sport or skb.dport else HASH_L3) if skb.ip_version else HASH_NONE
        pool.rx_hash[i] = skb.hash
        pool.hash_type[i] = kind
        every &= kind != HASH_NONE
    return every


@settings(max_examples=100, deadline=None)
@given(**ONE_CPU_BATCHES)
def test_none_skipped_is_parse_eth_skipping_nothing(
    bench: Bench, frames, linktypes, cpu: int, scattered: bool, data: st.DataObject
) -> None:
    """Where every frame carries the skb's hash and is Ethernet, parse_eth_np skips none of
    them -- what the by-value modes' no-parse path over one CPU stands on -- and the modes'
    verdicts over one CPU are the same with the hash riding as without (the general path)."""
    where = _where(len(frames), scattered, data)
    bench.load(frames, where, linktypes[: len(frames)])
    programs = {m: make_program(m, bench.cmap, [cpu]) for m in ("l4-hash", "l4-sport", "l4-dport")}
    general = {m: bench.vectorized(p, where) for m, p in programs.items()}
    _ride(bench, frames, where)
    batch = XdpBatch(bench.pool, np.asarray(where, dtype=np.uint32))
    if none_skipped(batch):
        link = parse_eth_np(batch)
        assert link.cls is None or not (link.cls == SKIPPED).any()
    for mode, prog in programs.items():
        assert bench.vectorized(prog, where) == general[mode], mode


def test_none_skipped_reads_no_packet_byte_of_an_ip_batch(bench: Bench) -> None:
    """A batch of Ethernet IP frames carrying their hash takes the no-parse path; one frame
    without its hash, or one frame of another link type, sends the batch to the parse."""
    frames = [v4_udp(1000 + k) for k in range(8)]
    where = list(range(8))
    bench.load(frames, where, [1] * 8)
    prog = make_program("l4-hash", bench.cmap, [2])
    general = bench.vectorized(prog, where)
    assert _ride(bench, frames, where)
    assert none_skipped(XdpBatch(bench.pool, np.arange(8, dtype=np.uint32)))
    assert bench.vectorized(prog, where) == general == [(XDP_REDIRECT, 2)] * 8
    bench.pool.hash_type[3] = HASH_NONE  # one frame without: the parse decides
    assert not none_skipped(XdpBatch(bench.pool, np.arange(8, dtype=np.uint32)))
    _ride(bench, frames, where)
    bench.pool.linktype[5] = 101  # raw IP: parse_eth skips it
    assert not none_skipped(XdpBatch(bench.pool, np.arange(8, dtype=np.uint32)))


FLOW_HASH_KEYS = st.one_of(
    st.integers(1, 9).map(lambda n: list(range(n))),  # identity keys: no gather
    st.sampled_from([1, 2, 4, 8]).flatmap(  # a power of two: a mask, not a modulo
        lambda n: st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n)
    ),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=9),
)


@settings(max_examples=100, deadline=None)
@given(
    frames=st.lists(any_frame(), min_size=1, max_size=24),
    linktypes=st.lists(st.sampled_from([1, 1, 1, 101]), min_size=24, max_size=24),
    keys=FLOW_HASH_KEYS,
    scattered=st.booleans(),
    data=st.data(),
)
def test_flow_hash_fast_paths_equal_the_general_path(
    bench: Bench, frames, linktypes, keys: list[int], scattered: bool, data: st.DataObject
) -> None:
    """FlowHash's fast paths -- one key (no parse), a mask for a power of two, identity
    keys (no gather), ``redirect_map`` inlined per frame -- against the general path:
    ``ctx.redirect_map(cmap, keys[skb.hash % len(keys)])`` for every frame."""
    where = _where(len(frames), scattered, data)
    bench.load(frames, where, linktypes[: len(frames)])
    per, vec = FlowHash(bench.cmap, keys, vectorized=False), FlowHash(bench.cmap, keys)
    ctx = bench.ctx
    general = []
    for i in where:
        ctx.load(i, 0, 0, int(bench.pool.linktype[i]))
        verdict = per.frame(ctx)
        fast = (verdict, ctx.redirect_key, ctx.redirect_target)
        ctx.load(i, 0, 0, int(bench.pool.linktype[i]))
        key = keys[ctx.skb.hash % len(keys)]
        verdict = ctx.redirect_map(bench.cmap, key)
        assert fast == (verdict, ctx.redirect_key, ctx.redirect_target)
        general.append((XDP_REDIRECT, key))
    assert bench.vectorized(vec, where) == general


def test_small_frames_take_the_gather_path_with_the_same_answers() -> None:
    """Frames holding fewer than the 102 bytes the vectorized forms read: bytes_at gathers
    (and clips at the pool's end) instead of slicing a view; the answers do not change."""
    bench = Bench()
    bench.pool.close()
    bench.pool = FramePool(8, frame_size=128, headroom=64)  # 64 bytes of packet per frame
    bench.ctx = XdpContext(bench.pool)
    try:
        frames = [
            eth(0x0800, (0x8100, 1), (0x88A8, 2)) + ipv4(17, udp(5, 9)),
            eth(0x86DD) + ipv6(6, tcp(1, 2)),
            eth(0x0800) + ipv4(6, tcp(3, 4), ihl=8),
        ]
        for mode, options in MODE_OPTIONS:
            bench.both(lambda m=mode, o=options: make_program(m, bench.cmap, [0, 1], **o), frames)
    finally:
        bench.close()


class _Batch:
    """Just the hash column of a batch: all FlowHash.batch reads."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.skb = type("S", (), {"hash": hashes})()
        self._n = len(hashes)

    def __len__(self) -> int:
        return self._n


@pytest.mark.parametrize(
    "keys", [[0], [7], [0, 1], [1, 0], [3, 9], [0, 1, 2], [0, 1, 2, 3], [4, 5, 6, 7], [2, 0, 5]]
)
@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
def test_flow_hash_keys_are_hash_mod_count(keys: list[int], dtype: type) -> None:
    """FlowHash's vectorized key choice (a mask for a power of two, identity keys) is
    ``keys[hash % len(keys)]`` for any key list."""
    h = np.random.default_rng(len(keys)).integers(0, 2**32, 1000).astype(dtype)
    verdicts, chosen = FlowHash(None, keys).batch(_Batch(h))  # type: ignore[arg-type]
    assert chosen.dtype == np.uint32
    assert chosen.tolist() == [keys[int(x) % len(keys)] for x in h]
    assert len(verdicts) == len(h)


@settings(max_examples=100, deadline=None)
@given(
    v6=st.booleans(),
    proto=PROTOS,
    tags=st.integers(0, 2),
    data=st.data(),
    cpus=st.lists(st.integers(0, MAX_ENTRIES - 1), min_size=1, max_size=5),
)
def test_l4_hash_is_symmetric(bench: Bench, v6: bool, proto: int, tags: int, data, cpus) -> None:
    ver = 6 if v6 else 4
    a, b = data.draw(st.ip_addresses(v=ver)), data.draw(st.ip_addresses(v=ver))
    ports = data.draw(PORTS), data.draw(PORTS)
    make = ipv6 if v6 else ipv4
    et = eth(0x86DD if v6 else 0x0800, *[(0x8100, 1)] * tags)
    fwd = et + make(proto, udp(*ports), src=str(a), dst=str(b))
    rev = et + make(proto, udp(*reversed(ports)), src=str(b), dst=str(a))
    got = run_mode(bench, "l4-hash", [fwd, rev], cpus)
    assert got[0] == got[1] and got[0][0] == R


# -- end to end through a real CpuMap ------------------------------------------------------------
class Record:
    """A handler remembering (flow, seq, cpu) of every frame it sees."""

    def setup(self, info) -> None:
        self.cpu = info.cpu
        self.seen: list[tuple[int, int, int]] = []

    def __call__(self, skb) -> None:
        self.seen.append((*read_stamp(skb.data), self.cpu))

    def finish(self) -> list[tuple[int, int, int]]:
        return self.seen


CPUS = sorted(possible_cpus())[:2]
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two possible CPUs")


def mixed_traffic(count: int) -> Generator:
    flows = [
        Flow("udp", 4, ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.9.0.1"), 9, 9),
    ]
    gen = Generator(flows=60, sizes=(64, 150), vlan=(None, 12), count=count, undersize="clamp")
    return Generator(
        flows=[*flows, *gen.flows],
        sizes=(64, 150),
        count=count,
        undersize="clamp",
    )


@pytest.mark.slow
@needs_two_cpus
def test_every_mode_end_to_end() -> None:
    """Each mode, both forms, through a real map: every frame lands where the per-frame
    form (run offline on the same frames) says, and the identity holds."""
    packets = PacketBatch.concat(list(mixed_traffic(600).batches(200)))
    frames = [bytes(p.data) for p in packets]
    offline = Bench()
    expected: Counter[tuple[int, int]] = Counter()  # (flow, cpu) over every run
    with CpuMap(max(CPUS) + 1, handler=Record()) as m, CpuTable(2, CPUS) as table:
        for c in CPUS:
            m.update(c, 1024)
        for mode in MODES:
            for vectorized in (False, True):
                for start in range(0, len(frames), POOL_FRAMES):
                    chunk = frames[start : start + POOL_FRAMES]
                    where = range(len(chunk))
                    offline.load(chunk, where, [1] * len(chunk))
                    oracle = make_program(mode, offline.cmap, CPUS, vectorized=False)
                    for (v, k), f in zip(offline.per_frame(oracle, where), chunk, strict=True):
                        if v == XDP_REDIRECT:
                            expected[(read_stamp(f)[0], k)] += 1
                prog = make_program(mode, m, table, vectorized=vectorized)
                s = m.run(packets, prog)
                assert s.rx == sum(s.outcomes().values())
        m.close()
        got = Counter((flow, cpu) for r in m.results for flow, _seq, cpu in r.result)
        s = m.stats()
    offline.close()
    assert s.rx == 16 * len(frames)
    assert got == expected
    assert s.delivered == sum(expected.values())
    assert s.xdp_drop > 0 and s.xdp_redirect > 0  # l4-filter dropped the port-9 flow


@pytest.mark.slow
@needs_two_cpus
def test_table_change_moves_traffic_end_to_end() -> None:
    gen = Generator(flows=32, sizes=64, protocols=("udp",), ip_versions=(4,), count=512)
    with CpuMap(max(CPUS) + 1) as m, CpuTable(2, [CPUS[0]]) as table:
        for c in CPUS:
            m.update(c, 1024)
        prog = make_program("l4-hash", m, table)
        with m.producer(prog, backpressure=10.0) as rx:
            batches = list(gen.batches(256))
            rx.poll(batches[0])
            table.set([CPUS[1]])
            rx.poll(batches[1])
        m.wait_idle()
        per_cpu = {e.cpu: e.delivered for e in m.stats().entries}
        assert per_cpu == {CPUS[0]: 256, CPUS[1]: 256}
