"""Frames for the skb tests: builders for every header, batches of them, hypothesis
strategies, and frames laid out in a frame pool.  Shared by tests/skb and tests/programs."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cpumap.abi import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from cpumap.engine.frame_pool import FramePool
from cpumap.skb import Skb, SkbBatch

# --- frame builders ---------------------------------------------------------------------------

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
V4_A, V4_B = bytes([192, 168, 1, 10]), bytes([10, 0, 0, 1])
V6_A = ipaddress.IPv6Address("2001:db8::1").packed
V6_B = ipaddress.IPv6Address("2001:db8:ffff::2").packed

TCP, UDP, SCTP, UDPLITE, ICMP, ICMPV6, GRE, ESP, NONE6 = 6, 17, 132, 136, 1, 58, 47, 50, 59
HOPOPTS, ROUTING, FRAGMENT, DSTOPTS, AH, MOBILITY, HIP, SHIM6 = 0, 43, 44, 60, 51, 135, 139, 140


def eth(ethertype: int, dst: bytes = MAC_B, src: bytes = MAC_A) -> bytes:
    return dst + src + struct.pack("!H", ethertype)


def vlan_tag(vid: int, inner: int, pcp: int = 0) -> bytes:
    """The 4 bytes after a TPID: TCI and the inner type."""
    return struct.pack("!HH", (pcp << 13) | vid, inner)


def tcp(sport: int = 34567, dport: int = 443, flags: int = 0x02, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIHHHH", sport, dport, 1, 0, (5 << 12) | flags, 65535, 0, 0) + payload


def udp(sport: int = 5353, dport: int = 53, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int = 2905, dport: int = 2906) -> bytes:
    return struct.pack("!HHII", sport, dport, 0, 0)


def icmp(type_: int = 8, code: int = 0) -> bytes:
    return struct.pack("!BBHHH", type_, code, 0, 1, 1)


def ipv4(
    proto: int,
    payload: bytes,
    src: bytes = V4_A,
    dst: bytes = V4_B,
    *,
    options: bytes = b"",
    mf: bool = False,
    frag_offset: int = 0,
    total_length: int | None = None,
) -> bytes:
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    total = 4 * ihl + len(payload) if total_length is None else total_length
    frag = (0x2000 if mf else 0) | (frag_offset // 8)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 7, frag, 64, proto, 0, src, dst)
    return header + options + payload


def ipv6(nexthdr: int, payload: bytes, src: bytes = V6_A, dst: bytes = V6_B) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, 64, src, dst) + payload


def ext(nexthdr: int, kind: int, body_units: int = 0) -> bytes:
    """One IPv6 extension header of type ``kind`` announcing ``nexthdr``."""
    if kind == FRAGMENT:
        raise AssertionError("use frag_ext")
    if kind == AH:  # length in 4-byte units, minus 2
        return struct.pack("!BBH", nexthdr, body_units, 0) + bytes(4 + 4 * body_units)
    return struct.pack("!BB", nexthdr, body_units) + bytes(6 + 8 * body_units)


def frag_ext(nexthdr: int, offset: int = 0, more: bool = False, ident: int = 99) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, offset | int(more), ident)


def sll(protocol: int) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", protocol)


def sll2(protocol: int) -> bytes:
    return struct.pack("!HHIHBB8s", protocol, 0, 3, 1, 0, 6, MAC_A + b"\0\0")


def v4_tcp_frame(**kw: int) -> bytes:
    return eth(0x0800) + ipv4(TCP, tcp(**kw))


def v6_tcp_frame() -> bytes:
    return eth(0x86DD) + ipv6(HOPOPTS, ext(TCP, HOPOPTS) + tcp(flags=0x18, payload=b"hello"))


def batch_of(frames: list[tuple[int, bytes]], headroom: int = 3, fill: int = 0xA5) -> SkbBatch:
    """A batch over ``(linktype, bytes)`` frames, each in its own row after ``headroom`` bytes;
    the rest of each row holds ``fill`` so that a read past a frame's end would show."""
    size = headroom + max([len(f) for _, f in frames] + [1]) + 8
    rows = np.full((len(frames), size), fill, dtype=np.uint8)
    for i, (_, f) in enumerate(frames):
        rows[i, headroom : headroom + len(f)] = np.frombuffer(f, dtype=np.uint8)
    return SkbBatch(
        rows,
        np.full(len(frames), headroom),
        np.array([len(f) for _, f in frames]),
        linktype=np.array([lt for lt, _ in frames]),
    )


def assert_batch_matches_frames(batch: SkbBatch) -> None:
    """Every column equals the per-frame field for every frame."""
    skbs = [batch.skb(i) for i in range(len(batch))]
    for column in SkbBatch.COLUMNS:
        got = getattr(batch, column).tolist()
        want = [int(getattr(skb, column)) for skb in skbs]
        assert got == want, f"column {column}: batch {got} != per-frame {want}"


# --- example frames ---------------------------------------------------------------------------

V4_PACKET = ipv4(UDP, udp(1111, 2222))
V6_PACKET = ipv6(TCP, tcp(3333, 4444))

# One of each kind the parsers tell apart: link types, VLAN stacks, IPv6 chains, fragments,
# truncation, unknown link types, an empty frame.
EXAMPLE_FRAMES: list[tuple[int, bytes]] = [
    (LINKTYPE_ETHERNET, v4_tcp_frame()),
    (LINKTYPE_ETHERNET, v6_tcp_frame()),
    (LINKTYPE_ETHERNET, eth(0x0800) + ipv4(UDP, udp(), options=bytes(12), mf=True)),
    (LINKTYPE_ETHERNET, eth(0x0800) + ipv4(UDP, bytes(8), frag_offset=8)),
    (LINKTYPE_ETHERNET, eth(0x0800) + ipv4(ICMP, icmp())),
    (LINKTYPE_ETHERNET, eth(0x0806) + bytes(28)),
    (LINKTYPE_ETHERNET, eth(4) + b"\xff\xff\x00\x00"),
    (LINKTYPE_ETHERNET, eth(0x88A8) + vlan_tag(1, 0x8100) + vlan_tag(2, 0x800) + V4_PACKET),
    (LINKTYPE_ETHERNET, eth(0x8100) + vlan_tag(1, 0x8100) * 3 + vlan_tag(4, 0x86DD) + V6_PACKET),
    (LINKTYPE_ETHERNET, eth(0x8100) + vlan_tag(1, 0x8100) * 9 + V4_PACKET),
    (
        LINKTYPE_ETHERNET,
        eth(0x86DD) + ipv6(DSTOPTS, ext(DSTOPTS, DSTOPTS) * 6 + ext(6, 60) + tcp()),
    ),
    (LINKTYPE_ETHERNET, eth(0x86DD) + ipv6(60, ext(60, 60) * 20 + ext(6, 60) + tcp())),
    (LINKTYPE_ETHERNET, eth(0x86DD) + ipv6(FRAGMENT, frag_ext(UDP, offset=8) + bytes(8))),
    (LINKTYPE_ETHERNET, eth(0x86DD) + ipv6(AH, ext(ESP, AH, 4) + bytes(8))),
    (LINKTYPE_ETHERNET, eth(0x0800)[:9]),
    (LINKTYPE_RAW, V6_PACKET),
    (LINKTYPE_RAW, b"\x30"),
    (LINKTYPE_IPV4, V4_PACKET[:30]),
    (LINKTYPE_IPV6, V6_PACKET),
    (LINKTYPE_LINUX_SLL, sll(0x8100) + vlan_tag(3, 0x0800) + V4_PACKET),
    (LINKTYPE_LINUX_SLL2, sll2(0x0800) + V4_PACKET),
    (LINKTYPE_NULL, struct.pack(">I", 28) + V6_PACKET),
    (LINKTYPE_NULL, struct.pack("<I", 7) + V4_PACKET),
    (LINKTYPE_LOOP, struct.pack(">I", 2) + V4_PACKET),
    (9999, V4_PACKET),
    (-1, V4_PACKET),
    (LINKTYPE_ETHERNET, b""),
]


def v4_udp_frame(sport: int = 5353, dport: int = 53) -> bytes:
    return eth(0x0800) + ipv4(UDP, udp(sport, dport))


def v6_frame(proto: int = UDP) -> bytes:
    return eth(0x86DD) + ipv6(proto, udp(7, 8) if proto == UDP else tcp(7, 8))


def engine_batch(frames: list[bytes], linktype: object = None, slack: int = 0) -> SkbBatch:
    """A batch as cpumap.skb.skb_batch builds it: rows sliced out of a wider pool (so
    not C-contiguous), offset 0, uint32 lengths, uint16 link types; random bytes after each
    frame's end."""
    width = max(len(f) for f in frames) + slack
    pool = np.random.default_rng(len(frames)).integers(0, 256, (len(frames), width + 64))
    pool = pool.astype(np.uint8)
    for i, f in enumerate(frames):
        pool[i, : len(f)] = np.frombuffer(f, dtype=np.uint8)
    if linktype is None:
        linktype = np.full(len(frames), LINKTYPE_ETHERNET, dtype=np.uint16)
    return SkbBatch(
        pool[:, :width],
        np.zeros(len(frames), dtype=np.uint16),
        np.array([len(f) for f in frames], dtype=np.uint32),
        linktype=linktype,  # type: ignore[arg-type]
    )


# --- hypothesis strategies --------------------------------------------------------------------

LINKTYPES = [
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_LOOP,
]
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def l4_headers(draw: st.DrawFn, proto: int) -> bytes:
    ports = draw(st.tuples(st.integers(0, 65535), st.integers(0, 65535)))
    if proto == TCP:
        return tcp(*ports, flags=draw(st.integers(0, 0xFFF)))
    if proto in (UDP, UDPLITE):
        return udp(*ports)
    if proto == SCTP:
        return sctp(*ports)
    if proto in (ICMP, ICMPV6):
        return icmp(draw(st.integers(0, 255)), draw(st.integers(0, 255)))
    return draw(st.binary(max_size=12))


@st.composite
def ipv6_packets(draw: st.DrawFn) -> bytes:
    kinds = draw(st.lists(st.sampled_from([0, 43, 44, 60, 51, 135, 139, 140]), max_size=7))
    proto = draw(st.sampled_from([TCP, UDP, SCTP, UDPLITE, ICMPV6, ICMP, ESP, NONE6, 41, 255]))
    chain = b""
    for kind, nxt in itertools.pairwise([*kinds, proto]):
        if kind == FRAGMENT:
            offset = draw(st.sampled_from([0, 0, 8, 1232]))
            chain += frag_ext(nxt, offset=offset, more=draw(st.booleans()))
        else:
            chain += ext(nxt, kind, draw(st.integers(0, 3)))
    src, dst = draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=16, max_size=16))
    first = kinds[0] if kinds else proto
    return ipv6(first, chain + draw(l4_headers(proto)), src, dst)


@st.composite
def ipv4_packets(draw: st.DrawFn) -> bytes:
    proto = draw(st.sampled_from([TCP, UDP, SCTP, UDPLITE, ICMP, GRE, 41, 0]))
    return ipv4(
        proto,
        draw(l4_headers(proto)),
        draw(st.binary(min_size=4, max_size=4)),
        draw(st.binary(min_size=4, max_size=4)),
        options=bytes(4 * draw(st.integers(0, 10))),
        mf=draw(st.booleans()),
        frag_offset=draw(st.sampled_from([0, 0, 8, 1480])),
    )


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, bytes]:
    """A mostly valid frame of a random link type, then mutated and truncated."""
    linktype = draw(st.sampled_from(LINKTYPES))
    l3 = draw(st.sampled_from(["ipv4", "ipv6", "other"]))
    packet = draw({"ipv4": ipv4_packets(), "ipv6": ipv6_packets()}.get(l3, st.binary(max_size=40)))
    ethertype = {"ipv4": 0x0800, "ipv6": 0x86DD}.get(l3) or draw(st.integers(0, 0xFFFF))
    tags = draw(st.lists(st.sampled_from([0x8100, 0x88A8, 0x9100]), max_size=4))
    tagged = b""
    for _, inner in itertools.pairwise([*tags, ethertype]):
        tagged += vlan_tag(draw(st.integers(0, 4095)), inner)
    outer = tags[0] if tags else ethertype
    family = {"ipv4": 2, "ipv6": draw(st.sampled_from([10, 24, 28, 30]))}.get(l3, 7)
    order = draw(st.sampled_from(["<I", ">I"]))
    link = {
        LINKTYPE_ETHERNET: eth(outer, dst=draw(st.binary(min_size=6, max_size=6))) + tagged,
        LINKTYPE_LINUX_SLL: sll(outer) + tagged,
        LINKTYPE_LINUX_SLL2: sll2(outer) + tagged,
        LINKTYPE_NULL: struct.pack(order, family),
        LINKTYPE_LOOP: struct.pack(">I", family),
    }.get(linktype, b"")
    frame = bytearray(link + packet)
    for _ in range(draw(st.integers(0, 3))):
        if frame:
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.just(len(frame)), st.integers(0, len(frame))))
    return linktype, bytes(frame[:cut])


# --- frames in a frame pool -------------------------------------------------------------------


def placed(
    batch: list[tuple[int, bytes]], order: str, first: int, pool_frames: int, room: int
) -> tuple[list[tuple[int, bytes]], list[int]]:
    """Hypothesis's frames made to fit a pool frame (``room`` bytes, a u16 link type) and
    where they go: ``first, first + 1, ...`` (``consecutive``) or scattered over the pool."""
    batch = [(lt if 0 <= lt < 65536 else LINKTYPE_ETHERNET, raw[:room]) for lt, raw in batch]
    if order == "consecutive":
        return batch, list(range(first, first + len(batch)))
    return batch, np.random.default_rng(first).permutation(pool_frames)[: len(batch)].tolist()


def fill_pool(pool: FramePool, where: list[int], batch: list[tuple[int, bytes]]) -> None:
    """Frames ``batch`` in frames ``where`` of ``pool``, as the RX side writes them, with
    distinct descriptors and a metadata area on every third frame; garbage elsewhere."""
    rng = np.random.default_rng(len(batch))
    pool.data[:] = rng.integers(0, 256, pool.data.shape, dtype=np.uint8)
    for k, (i, (linktype, data)) in enumerate(zip(where, batch, strict=True)):
        head = pool.headroom - 8 * (k % 3)
        pool.headroom_col[i] = head
        pool.data[i, head : head + len(data)] = np.frombuffer(data, dtype=np.uint8)
        pool.length[i] = len(data)
        pool.wire_len[i] = len(data) + k
        pool.ts_ns[i] = 10**18 + k
        pool.ifindex[i] = 3 + k
        pool.rx_queue[i] = k % 4
        pool.linktype[i] = linktype % 65536
        pool.meta_len[i] = 4 * (k % 3 == 1)


def pool_expected(pool: FramePool, i: int, data: bytes) -> dict[str, object]:
    """The fields of frame ``i`` of ``pool`` (holding ``data``), by the per-frame parser."""
    head, meta = int(pool.headroom_col[i]), int(pool.meta_len[i])
    start = i * pool.frame_size + head
    return Skb(
        data,
        wire_len=int(pool.wire_len[i]),
        linktype=int(pool.linktype[i]),
        ifindex=int(pool.ifindex[i]),
        rx_queue=int(pool.rx_queue[i]),
        ts_ns=int(pool.ts_ns[i]),
        metadata=bytes(pool.mv[start - meta : start]),
        index=i,
    ).as_dict()
