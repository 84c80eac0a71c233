"""Tests for cpumap.skb: hand-built frames for every case, truncation, the flow hash against an
independent reimplementation (and its spread), the batch's fast path at its edges, property
tests (never raises; batch == per frame), and real captures checked against TShark's decode."""

from __future__ import annotations

import csv
import gzip
import ipaddress
import itertools
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
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
from cpumap.skb import (
    IPV6_MAX_EXT_HEADERS,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    VLAN_MAX_DEPTH,
    ParseDepth,
    Skb,
    SkbBatch,
)

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


# --- Ethernet and IPv4 ------------------------------------------------------------------------


def test_ipv4_udp_fields() -> None:
    frame = eth(0x0800) + ipv4(UDP, udp(5353, 53, b"query"))
    skb = Skb(frame, wire_len=200, ifindex=3, rx_queue=2, ts_ns=123, metadata=b"m", index=9)
    assert (skb.len, skb.wire_len, skb.ifindex, skb.rx_queue, skb.ts_ns) == (47, 200, 3, 2, 123)
    assert (skb.metadata, skb.index, skb.linktype) == (b"m", 9, LINKTYPE_ETHERNET)
    assert (skb.eth_src, skb.eth_dst, skb.pkt_type) == (MAC_A, MAC_B, PACKET_HOST)
    assert (skb.protocol, skb.l3_protocol, skb.vlans) == (0x0800, 0x0800, ())
    assert (skb.network_offset, skb.ip_version, skb.src, skb.dst) == (14, 4, V4_A, V4_B)
    assert (skb.ip_proto, skb.transport_offset, skb.sport, skb.dport) == (UDP, 34, 5353, 53)
    assert (skb.is_fragment, skb.frag_offset, skb.tcp_flags) == (False, 0, 0)
    assert (skb.icmp_type, skb.icmp_code) == (-1, -1)
    assert (skb.depth, skb.error) == (ParseDepth.L4, None)


def test_wire_len_defaults_to_captured_length() -> None:
    assert Skb(b"abc").wire_len == 3


def test_tcp_flags() -> None:
    skb = Skb(v4_tcp_frame(flags=0x12))  # SYN+ACK
    assert (skb.ip_proto, skb.sport, skb.dport, skb.tcp_flags) == (TCP, 34567, 443, 0x12)
    ns_fin = Skb(v4_tcp_frame(flags=0x101))  # the AE/NS bit sits in the offset byte
    assert ns_fin.tcp_flags == 0x101


def test_ipv4_options_locate_transport_header() -> None:
    options = bytes([0x94, 0x04, 0, 0]) + bytes([1] * 8)  # router alert, then NOPs
    skb = Skb(eth(0x0800) + ipv4(UDP, udp(1000, 2000), options=options))
    assert skb.transport_offset == 14 + 20 + 12
    assert (skb.sport, skb.dport, skb.depth) == (1000, 2000, ParseDepth.L4)


def test_ipv4_total_length_is_not_trusted() -> None:
    # GSO / BIG TCP captures carry total length 0; the header is still parsed from IHL.
    skb = Skb(eth(0x0800) + ipv4(TCP, tcp(), total_length=0))
    assert (skb.sport, skb.depth) == (34567, ParseDepth.L4)


def test_ipv4_first_fragment_has_ports() -> None:
    skb = Skb(eth(0x0800) + ipv4(UDP, udp(1, 2, b"x" * 16), mf=True))
    assert (skb.is_fragment, skb.frag_offset) == (True, 0)
    assert (skb.sport, skb.dport, skb.transport_offset, skb.depth) == (1, 2, 34, ParseDepth.L4)


def test_ipv4_later_fragment_has_no_transport_header() -> None:
    skb = Skb(eth(0x0800) + ipv4(UDP, b"\x01\x02\x03\x04" * 4, frag_offset=1480))
    assert (skb.is_fragment, skb.frag_offset, skb.ip_proto) == (True, 1480, UDP)
    assert (skb.transport_offset, skb.sport, skb.dport) == (-1, 0, 0)
    assert (skb.depth, skb.error) == (ParseDepth.L3, None)


def test_ipv4_unknown_protocol_stops_at_l3_without_error() -> None:
    skb = Skb(eth(0x0800) + ipv4(GRE, b"\x00\x00\x08\x00"))
    assert (skb.ip_proto, skb.transport_offset, skb.depth, skb.error) == (
        GRE,
        34,
        ParseDepth.L3,
        None,
    )


def test_icmp() -> None:
    skb = Skb(eth(0x0800) + ipv4(ICMP, icmp(3, 1)))
    assert (skb.icmp_type, skb.icmp_code, skb.sport, skb.depth) == (3, 1, 0, ParseDepth.L4)


@pytest.mark.parametrize(
    ("l4", "proto", "ports"),
    [(sctp(2905, 2906), SCTP, (2905, 2906)), (udp(7, 8), UDPLITE, (7, 8))],
)
def test_sctp_and_udplite_ports(l4: bytes, proto: int, ports: tuple[int, int]) -> None:
    skb = Skb(eth(0x0800) + ipv4(proto, l4))
    assert ((skb.sport, skb.dport), skb.depth) == (ports, ParseDepth.L4)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (eth(0x0800) + bytes([0x43]) + bytes(19), "bad IPv4 IHL 3"),
        (eth(0x0800) + bytes([0x65]) + bytes(19), "bad IPv4 version 6"),
        (eth(0x0800) + bytes([0x45]) + bytes(10), "truncated IPv4 header at offset 14"),
    ],
)
def test_bad_ipv4_header_stops_at_l2(frame: bytes, error: str) -> None:
    skb = Skb(frame)
    assert (skb.depth, skb.error, skb.ip_version, skb.src) == (ParseDepth.L2, error, 0, None)
    assert (skb.network_offset, skb.hash) == (14, 0)


def test_truncated_ipv4_options_keep_the_addresses() -> None:
    frame = eth(0x0800) + ipv4(TCP, tcp(), options=bytes(8))
    skb = Skb(frame[: 14 + 24])
    assert (skb.depth, skb.error) == (ParseDepth.L3, "truncated IPv4 options at offset 34")
    assert (skb.src, skb.dst, skb.ip_proto, skb.transport_offset) == (V4_A, V4_B, TCP, -1)


def test_truncated_tcp_header() -> None:
    skb = Skb(v4_tcp_frame()[:40])
    assert (skb.depth, skb.error) == (ParseDepth.L3, "truncated TCP header at offset 34")
    assert (skb.sport, skb.dport, skb.transport_offset) == (0, 0, 34)


@pytest.mark.parametrize(
    ("dst", "pkt_type"),
    [
        (b"\xff" * 6, PACKET_BROADCAST),
        (bytes.fromhex("01005e000001"), PACKET_MULTICAST),
        (bytes.fromhex("333300000001"), PACKET_MULTICAST),
        (MAC_B, PACKET_HOST),
    ],
)
def test_pkt_type_from_destination_mac(dst: bytes, pkt_type: int) -> None:
    assert Skb(eth(0x0806, dst=dst) + bytes(28)).pkt_type == pkt_type


def test_arp_is_l2() -> None:
    skb = Skb(eth(0x0806) + bytes.fromhex("0001080006040001") + bytes(20))
    assert (skb.protocol, skb.network_offset, skb.depth, skb.error) == (
        0x0806,
        14,
        ParseDepth.L2,
        None,
    )
    assert (skb.ip_version, skb.ip_proto, skb.hash) == (0, -1, 0)


@pytest.mark.parametrize(
    ("payload", "protocol"),
    [
        (bytes.fromhex("aaaa03000000"), 0x0004),  # 802.2 LLC/SNAP
        (bytes.fromhex("42420300"), 0x0004),  # 802.2 LLC (STP)
        (bytes.fromhex("ffff0030"), 0x0001),  # "raw" 802.3, Novell IPX
        (b"\xff", 0x0004),  # too short to hold 0xFFFF
        (b"", 0x0004),
    ],
)
def test_8023_length_frames(payload: bytes, protocol: int) -> None:
    skb = Skb(eth(len(payload)) + payload)
    assert (skb.protocol, skb.l3_protocol, skb.depth) == (protocol, protocol, ParseDepth.L2)


def test_truncated_ethernet_header() -> None:
    skb = Skb(eth(0x0800)[:13])
    assert (skb.depth, skb.error) == (ParseDepth.NONE, "truncated Ethernet header at offset 0")
    assert (skb.protocol, skb.eth_src, skb.network_offset) == (0, None, -1)


# --- VLAN -------------------------------------------------------------------------------------


def test_single_vlan_tag() -> None:
    skb = Skb(eth(0x8100) + vlan_tag(42, 0x0800, pcp=5) + ipv4(UDP, udp()))
    assert (skb.protocol, skb.l3_protocol, skb.vlans) == (0x8100, 0x0800, ((0x8100, 42),))
    assert (skb.network_offset, skb.transport_offset, skb.depth) == (18, 38, ParseDepth.L4)


def test_qinq_8021ad_then_8021q() -> None:
    frame = eth(0x88A8) + vlan_tag(200, 0x8100) + vlan_tag(2001, 0x86DD) + ipv6(UDP, udp())
    skb = Skb(frame)
    assert (skb.protocol, skb.l3_protocol) == (0x88A8, 0x86DD)
    assert skb.vlans == ((0x88A8, 200), (0x8100, 2001))
    assert (skb.network_offset, skb.sport, skb.depth) == (22, 5353, ParseDepth.L4)


def test_triple_tag_with_old_qinq_tpid() -> None:
    frame = eth(0x9100) + vlan_tag(1, 0x88A8) + vlan_tag(2, 0x8100) + vlan_tag(3, 0x0800)
    skb = Skb(frame + ipv4(TCP, tcp()))
    assert skb.vlans == ((0x9100, 1), (0x88A8, 2), (0x8100, 3))
    assert (skb.l3_protocol, skb.network_offset, skb.sport) == (0x0800, 26, 34567)


def test_8023_inside_a_vlan_tag() -> None:
    skb = Skb(eth(0x8100) + vlan_tag(5, 6) + bytes.fromhex("ffff00300000"))
    assert (skb.protocol, skb.l3_protocol) == (0x8100, 0x0001)


def test_truncated_vlan_tag() -> None:
    skb = Skb(eth(0x8100) + vlan_tag(5, 0x8100) + b"\x00\x07")
    assert (skb.vlans, skb.l3_protocol) == (((0x8100, 5),), 0x8100)
    assert (skb.network_offset, skb.depth) == (-1, ParseDepth.L2)
    assert skb.error == "truncated VLAN tag at offset 18"


def test_vlan_stack_is_bounded() -> None:
    frame = eth(0x8100) + vlan_tag(1, 0x8100) * (VLAN_MAX_DEPTH + 1) + bytes(40)
    skb = Skb(frame)
    assert len(skb.vlans) == VLAN_MAX_DEPTH
    assert (skb.error, skb.network_offset) == (f"more than {VLAN_MAX_DEPTH} VLAN tags", -1)
    deepest_allowed = eth(0x8100) + vlan_tag(1, 0x8100) * (VLAN_MAX_DEPTH - 1) + vlan_tag(1, 0x800)
    assert Skb(deepest_allowed + ipv4(UDP, udp())).depth == ParseDepth.L4


# --- IPv6 -------------------------------------------------------------------------------------


def test_ipv6_tcp() -> None:
    skb = Skb(eth(0x86DD) + ipv6(TCP, tcp(flags=0x10)))
    assert (skb.ip_version, skb.src, skb.dst, skb.network_offset) == (6, V6_A, V6_B, 14)
    assert (skb.ip_proto, skb.transport_offset, skb.tcp_flags) == (TCP, 54, 0x10)


@pytest.mark.parametrize("kind", [HOPOPTS, ROUTING, DSTOPTS, MOBILITY, HIP, SHIM6])
@pytest.mark.parametrize("units", [0, 2])
def test_ipv6_each_extension_header(kind: int, units: int) -> None:
    skb = Skb(eth(0x86DD) + ipv6(kind, ext(UDP, kind, units) + udp(11, 22)))
    assert skb.transport_offset == 54 + 8 + 8 * units
    assert (skb.ip_proto, skb.sport, skb.dport, skb.depth) == (UDP, 11, 22, ParseDepth.L4)


@pytest.mark.parametrize("units", [1, 4])
def test_ipv6_ah_length_is_in_4_byte_units(units: int) -> None:
    skb = Skb(eth(0x86DD) + ipv6(AH, ext(TCP, AH, units) + tcp()))
    assert (skb.transport_offset, skb.ip_proto, skb.sport) == (54 + 8 + 4 * units, TCP, 34567)


def test_ipv6_extension_chain() -> None:
    chain = ext(ROUTING, HOPOPTS) + ext(FRAGMENT, ROUTING, 1) + frag_ext(DSTOPTS, more=True)
    chain += ext(AH, DSTOPTS) + ext(ICMPV6, AH, 1)
    skb = Skb(eth(0x86DD) + ipv6(HOPOPTS, chain + icmp(128, 0)))
    assert skb.transport_offset == 54 + len(chain)
    assert (skb.ip_proto, skb.icmp_type, skb.icmp_code) == (ICMPV6, 128, 0)
    assert (skb.is_fragment, skb.frag_offset, skb.depth) == (True, 0, ParseDepth.L4)


def test_ipv6_later_fragment() -> None:
    skb = Skb(eth(0x86DD) + ipv6(FRAGMENT, frag_ext(UDP, offset=1232) + b"\x00" * 8))
    assert (skb.is_fragment, skb.frag_offset, skb.ip_proto) == (True, 1232, UDP)
    assert (skb.transport_offset, skb.sport, skb.depth, skb.error) == (-1, 0, ParseDepth.L3, None)


@pytest.mark.parametrize("stop", [ESP, NONE6])
def test_ipv6_walk_stops_at_esp_and_no_next_header(stop: int) -> None:
    skb = Skb(eth(0x86DD) + ipv6(HOPOPTS, ext(stop, HOPOPTS) + bytes(16)))
    assert (skb.ip_proto, skb.transport_offset, skb.depth, skb.error) == (
        stop,
        62,
        ParseDepth.L3,
        None,
    )


def test_ipv6_truncated_extension_header() -> None:
    frame = eth(0x86DD) + ipv6(ROUTING, ext(UDP, ROUTING, 2) + udp())
    skb = Skb(frame[:70])
    assert (skb.ip_proto, skb.transport_offset, skb.depth) == (ROUTING, -1, ParseDepth.L3)
    assert skb.error == "truncated IPv6 extension header 43 at offset 54"


def test_ipv6_extension_chain_is_bounded() -> None:
    chain = ext(DSTOPTS, DSTOPTS) * IPV6_MAX_EXT_HEADERS + ext(UDP, DSTOPTS)
    skb = Skb(eth(0x86DD) + ipv6(DSTOPTS, chain + udp()))
    assert (skb.error, skb.ip_proto, skb.transport_offset) == (
        "IPv6 extension header chain too long",
        DSTOPTS,
        -1,
    )
    longest = ext(DSTOPTS, DSTOPTS) * (IPV6_MAX_EXT_HEADERS - 1) + ext(UDP, DSTOPTS)
    assert Skb(eth(0x86DD) + ipv6(DSTOPTS, longest + udp())).depth == ParseDepth.L4


def test_ipv6_bad_version() -> None:
    frame = bytearray(eth(0x86DD) + ipv6(UDP, udp()))
    frame[14] = 0x45
    skb = Skb(bytes(frame))
    assert (skb.depth, skb.error, skb.src) == (ParseDepth.L2, "bad IPv6 version 4", None)


def test_truncation_at_every_byte_never_raises_and_depth_only_grows() -> None:
    frame = eth(0x8100) + vlan_tag(7, 0x86DD) + ipv6(HOPOPTS, ext(TCP, HOPOPTS) + tcp())
    depths = []
    for cut in range(len(frame) + 1):
        skb = Skb(frame[:cut])
        depths.append(skb.depth)
        assert (skb.error is None) == (cut == len(frame)), (cut, skb.error)
    assert depths == sorted(depths)
    assert depths[0] == ParseDepth.NONE and depths[-1] == ParseDepth.L4
    assert depths.index(ParseDepth.L2) == 14
    assert depths.index(ParseDepth.L3) == 18 + 40
    assert depths.index(ParseDepth.L4) == 18 + 48 + 20
    assert_batch_matches_frames(batch_of([(1, frame[:cut]) for cut in range(len(frame) + 1)]))


# --- other link types -------------------------------------------------------------------------

V4_PACKET = ipv4(UDP, udp(1111, 2222))
V6_PACKET = ipv6(TCP, tcp(3333, 4444))


@pytest.mark.parametrize(
    ("linktype", "frame", "protocol", "network_offset"),
    [
        (LINKTYPE_RAW, V4_PACKET, 0x0800, 0),
        (LINKTYPE_RAW, V6_PACKET, 0x86DD, 0),
        (LINKTYPE_IPV4, V4_PACKET, 0x0800, 0),
        (LINKTYPE_IPV6, V6_PACKET, 0x86DD, 0),
        (LINKTYPE_LINUX_SLL, sll(0x0800) + V4_PACKET, 0x0800, 16),
        (LINKTYPE_LINUX_SLL2, sll2(0x86DD) + V6_PACKET, 0x86DD, 20),
        (LINKTYPE_NULL, struct.pack("<I", 2) + V4_PACKET, 0x0800, 4),
        (LINKTYPE_NULL, struct.pack(">I", 2) + V4_PACKET, 0x0800, 4),
        (LINKTYPE_NULL, struct.pack("<I", 30) + V6_PACKET, 0x86DD, 4),
        (LINKTYPE_NULL, struct.pack(">I", 24) + V6_PACKET, 0x86DD, 4),
        (LINKTYPE_NULL, struct.pack("<I", 28) + V6_PACKET, 0x86DD, 4),
        (LINKTYPE_LOOP, struct.pack(">I", 10) + V6_PACKET, 0x86DD, 4),
        (LINKTYPE_LOOP, struct.pack(">I", 2) + V4_PACKET, 0x0800, 4),
    ],
)
def test_link_types(linktype: int, frame: bytes, protocol: int, network_offset: int) -> None:
    skb = Skb(frame, linktype=linktype)
    assert (skb.protocol, skb.l3_protocol, skb.network_offset) == (
        protocol,
        protocol,
        network_offset,
    )
    assert (skb.depth, skb.error, skb.eth_src, skb.pkt_type) == (
        ParseDepth.L4,
        None,
        None,
        PACKET_HOST,
    )
    assert skb.sport in (1111, 3333)


def test_loop_is_network_byte_order_only() -> None:
    skb = Skb(struct.pack("<I", 2) + V4_PACKET, linktype=LINKTYPE_LOOP)
    assert (skb.protocol, skb.depth, skb.network_offset) == (0, ParseDepth.L2, 4)


def test_sll_with_vlan_tag() -> None:
    skb = Skb(sll(0x8100) + vlan_tag(9, 0x0800) + V4_PACKET, linktype=LINKTYPE_LINUX_SLL)
    assert (skb.vlans, skb.l3_protocol, skb.network_offset) == (((0x8100, 9),), 0x0800, 20)


@pytest.mark.parametrize(
    ("linktype", "frame", "depth", "error"),
    [
        (LINKTYPE_RAW, b"", ParseDepth.NONE, "truncated IP header at offset 0"),
        (LINKTYPE_RAW, b"\x50" + bytes(30), ParseDepth.L2, "unknown IP version 5"),
        (LINKTYPE_IPV4, b"", ParseDepth.L2, "truncated IPv4 header at offset 0"),
        (LINKTYPE_IPV4, V6_PACKET, ParseDepth.L2, "bad IPv4 version 6"),
        (
            LINKTYPE_LINUX_SLL,
            sll(0x800)[:15],
            ParseDepth.NONE,
            "truncated LINUX_SLL header at offset 0",
        ),
        (
            LINKTYPE_LINUX_SLL2,
            b"\x08\x00",
            ParseDepth.NONE,
            "truncated LINUX_SLL2 header at offset 0",
        ),
        (LINKTYPE_NULL, b"\x02\x00", ParseDepth.NONE, "truncated NULL header at offset 0"),
        (LINKTYPE_LOOP, b"", ParseDepth.NONE, "truncated LOOP header at offset 0"),
        (147, V4_PACKET, ParseDepth.NONE, "unsupported link type 147"),
    ],
)
def test_link_layer_failures(linktype: int, frame: bytes, depth: ParseDepth, error: str) -> None:
    skb = Skb(frame, linktype=linktype)
    assert (skb.depth, skb.error) == (depth, error)


# --- laziness, repr, as_dict ------------------------------------------------------------------


def test_parse_is_lazy_and_cached() -> None:
    data = bytearray(v4_tcp_frame())
    skb = Skb(data)
    assert skb.len == len(data)
    data[14 + 9] = UDP  # not parsed yet: the change is seen
    assert skb.ip_proto == UDP
    data[14 + 9] = TCP  # parsed: every field comes from the one pass, never re-read
    assert (skb.ip_proto, skb.sport) == (UDP, 34567)


def test_fields_outlive_the_frame_bytes() -> None:
    data = bytearray(v4_tcp_frame())
    skb = Skb(memoryview(data))
    assert skb.src == V4_A
    copy = skb.bytes()
    data[:] = bytes(len(data))
    assert (skb.src, copy) == (V4_A, v4_tcp_frame())


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="'Skb' object has no attribute 'sprot'"):
        _ = Skb(b"").sprot  # type: ignore[attr-defined]


def test_repr() -> None:
    assert repr(Skb(v4_tcp_frame(), index=4)) == (
        "<Skb #4 len=54 IPv4 TCP 192.168.1.10:34567 > 10.0.0.1:443 depth=L4>"
    )
    assert repr(Skb(eth(0x0806) + bytes(28))) == "<Skb len=42 proto=0x0806 depth=L2>"
    assert repr(Skb(b"\x45", linktype=LINKTYPE_RAW)) == (
        "<Skb len=1 proto=0x0800 depth=L2 error='truncated IPv4 header at offset 0'>"
    )


def test_as_dict() -> None:
    d = Skb(v4_tcp_frame(), ifindex=2).as_dict()
    assert "data" not in d
    assert (d["ifindex"], d["sport"], d["src"], d["depth"], d["error"]) == (
        2,
        34567,
        V4_A,
        ParseDepth.L4,
        None,
    )
    assert d["hash"] == Skb(v4_tcp_frame()).hash


# --- the flow hash ----------------------------------------------------------------------------


def reference_flow_hash(a: int, b: int, p: int, q: int, proto: int) -> int:
    """The flow hash, written straight from its definition in the module docstring."""
    x, y = sorted((a, b))
    low, high = sorted((p, q))
    m = low * 65536 + high
    v = x * 0x9E3779B97F4A7C15 + y * 0xC2B2AE3D27D4EB4F + m * 0x165667B19E3779F9
    v = (v + proto * 0x27D4EB2F165667C5) % 2**64
    v = v ^ (v // 2**29)
    v = v * 0xBF58476D1CE4E5B9 % 2**64
    return (v ^ (v // 2**32)) % 2**32


def xor_words(address: bytes) -> int:
    w = struct.unpack("!4I", address)
    return w[0] ^ w[1] ^ w[2] ^ w[3]


def test_hash_of_fixed_ipv4_tcp_frame() -> None:
    a, b = 0xC0A8010A, 0x0A000001  # 192.168.1.10, 10.0.0.1
    expected = reference_flow_hash(a, b, 34567, 443, TCP)
    assert Skb(v4_tcp_frame()).hash == expected
    assert expected == 1739805065  # pinned, so a change to the definition shows


def test_hash_of_fixed_ipv6_udp_frame() -> None:
    expected = reference_flow_hash(xor_words(V6_A), xor_words(V6_B), 5353, 53, UDP)
    assert Skb(eth(0x86DD) + ipv6(UDP, udp())).hash == expected
    assert expected == 1925735338


def test_hash_is_symmetric() -> None:
    forward = Skb(eth(0x0800) + ipv4(TCP, tcp(1234, 80), V4_A, V4_B))
    reverse = Skb(eth(0x0800, MAC_A, MAC_B) + ipv4(TCP, tcp(80, 1234), V4_B, V4_A))
    assert forward.hash == reverse.hash != 0
    forward6 = Skb(eth(0x86DD) + ipv6(UDP, udp(1, 2), V6_A, V6_B))
    reverse6 = Skb(eth(0x86DD) + ipv6(UDP, udp(2, 1), V6_B, V6_A))
    assert forward6.hash == reverse6.hash != forward.hash


def test_hash_separates_flows() -> None:
    hashes = {Skb(v4_tcp_frame(sport=port)).hash for port in range(1000, 1100)}
    assert len(hashes) == 100


def test_fragments_of_one_datagram_hash_alike() -> None:
    first = Skb(eth(0x0800) + ipv4(UDP, udp(1, 2, b"x" * 24), mf=True))
    middle = Skb(eth(0x0800) + ipv4(UDP, b"y" * 32, mf=True, frag_offset=32))
    last = Skb(eth(0x0800) + ipv4(UDP, b"z" * 8, frag_offset=64))
    assert first.sport == 1 and first.hash == middle.hash == last.hash
    assert first.hash == reference_flow_hash(0xC0A8010A, 0x0A000001, 0, 0, UDP)
    first6 = Skb(eth(0x86DD) + ipv6(FRAGMENT, frag_ext(UDP, more=True) + udp(1, 2)))
    later6 = Skb(eth(0x86DD) + ipv6(FRAGMENT, frag_ext(UDP, offset=16) + bytes(8)))
    assert first6.hash == later6.hash


def v4_flows_hash(a: np.ndarray, b: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``SkbBatch(...).hash`` of Ethernet/IPv4/TCP frames with these addresses and ports."""
    n = len(a)
    rows = np.tile(np.frombuffer(v4_tcp_frame(), dtype=np.uint8), (n, 1))
    for at, values, dtype in [(26, a, ">u4"), (30, b, ">u4"), (34, p, ">u2"), (36, q, ">u2")]:
        width = np.dtype(dtype).itemsize
        rows[:, at : at + width] = values.astype(dtype).view(np.uint8).reshape(n, width)
    return SkbBatch(rows, 0, rows.shape[1]).hash


def assert_balanced(hashes: np.ndarray, moduli: tuple[int, ...] = (2, 3, 16, 64)) -> None:
    """``hash % m`` fills every bucket within 5 standard deviations of a uniform draw."""
    n = len(hashes)
    for m in moduli:
        counts = np.bincount(hashes % m, minlength=m)
        sigma = (n * (1 / m) * (1 - 1 / m)) ** 0.5
        worst = np.abs(counts - n / m).max()
        assert worst < 5 * sigma, f"% {m}: {counts.tolist()}"


RNG_SEED = 20261127


def test_hash_balances_random_and_sequential_flows() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n = 1 << 15
    words = rng.integers(0, 1 << 32, (2, n), dtype=np.uint64)
    ports = rng.integers(0, 1 << 16, (2, n), dtype=np.uint64)
    assert_balanced(v4_flows_hash(words[0], words[1], ports[0], ports[1]))
    seq = np.arange(n, dtype=np.uint64)
    one = np.ones(n, dtype=np.uint64)
    host, server = 0x0A000001 * one, 0xC0A80001 * one
    assert_balanced(v4_flows_hash(host, server, 1024 + seq, 80 * one))  # source ports
    assert_balanced(v4_flows_hash(0x0A000000 + seq, server, 5000 * one, 53 * one))  # hosts
    assert_balanced(v4_flows_hash(host, server, 1024 + seq % 128, 2000 + seq // 128))


def test_hash_one_bit_of_input_flips_half_the_output_bits() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n = 4096
    flow = [
        rng.integers(0, 1 << 32, n, dtype=np.uint64),
        rng.integers(0, 1 << 32, n, dtype=np.uint64),
        rng.integers(0, 1 << 16, n, dtype=np.uint64),
        rng.integers(0, 1 << 16, n, dtype=np.uint64),
    ]
    base = v4_flows_hash(*flow)
    for field, bits in enumerate([32, 32, 16, 16]):
        flipped = list(flow)
        flipped[field] = flow[field] ^ (np.uint64(1) << rng.integers(0, bits, n, dtype=np.uint64))
        changed = base ^ v4_flows_hash(*flipped)
        per_bit = ((changed[:, None] >> np.arange(32, dtype=np.uint32)) & 1).mean(axis=0)
        assert per_bit.min() > 0.42 and per_bit.max() < 0.58, (field, per_bit)


def test_batch_hash_equals_reference_on_random_flows() -> None:
    rng = np.random.default_rng(RNG_SEED)
    a, b = rng.integers(0, 1 << 32, (2, 300), dtype=np.uint64)
    p, q = rng.integers(0, 1 << 16, (2, 300), dtype=np.uint64)
    got = v4_flows_hash(a, b, p, q).tolist()
    flows = zip(a.tolist(), b.tolist(), p.tolist(), q.tolist(), strict=True)
    assert got == [reference_flow_hash(*flow, TCP) for flow in flows]


# --- the batch --------------------------------------------------------------------------------

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


def test_batch_columns_equal_per_frame_fields() -> None:
    batch = batch_of(EXAMPLE_FRAMES)
    assert len(batch) == len(EXAMPLE_FRAMES)
    assert_batch_matches_frames(batch)
    for i, (_, frame) in enumerate(EXAMPLE_FRAMES):
        assert bytes(batch.data(i)) == frame


def test_batch_column_dtypes() -> None:
    batch = batch_of(EXAMPLE_FRAMES[:3])
    dtypes = {name: getattr(batch, name).dtype for name in SkbBatch.COLUMNS}
    assert dtypes == {
        "protocol": np.uint16,
        "l3_protocol": np.uint16,
        "vlan_count": np.uint8,
        "network_offset": np.int32,
        "ip_version": np.uint8,
        "ip_proto": np.int16,
        "is_fragment": np.bool_,
        "transport_offset": np.int32,
        "sport": np.uint16,
        "dport": np.uint16,
        "hash": np.uint32,
        "depth": np.uint8,
    }


def test_batch_never_reads_past_the_captured_length() -> None:
    # The rest of the real frame stays in the row: only ``length`` decides what exists.
    frame = v6_tcp_frame()
    rows = np.tile(np.frombuffer(frame, dtype=np.uint8), (len(frame) + 1, 1))
    batch = SkbBatch(rows, np.zeros(len(rows), dtype=np.int64), np.arange(len(rows)))
    assert_batch_matches_frames(batch)
    assert batch.depth.tolist() == [Skb(frame[:cut]).depth for cut in range(len(frame) + 1)]


def test_batch_metadata_and_scalars_broadcast() -> None:
    rows = np.zeros((2, 64), dtype=np.uint8)
    rows[:, 2 : 2 + len(V4_PACKET)] = np.frombuffer(V4_PACKET, dtype=np.uint8)
    batch = SkbBatch(
        rows,
        np.array([2, 2]),
        np.array([len(V4_PACKET), 20]),
        wire_len=np.array([100, 200]),
        linktype=LINKTYPE_RAW,
        ifindex=4,
        rx_queue=np.array([0, 1]),
        ts_ns=77,
        index=np.array([10, 11]),
    )
    skb = batch.skb(1)
    assert (skb.len, skb.wire_len, skb.linktype, skb.ifindex) == (20, 200, LINKTYPE_RAW, 4)
    assert (skb.rx_queue, skb.ts_ns, skb.index) == (1, 77, 11)
    assert batch.sport.tolist() == [1111, 0]
    assert_batch_matches_frames(batch)


def test_empty_batch() -> None:
    batch = SkbBatch(np.zeros((0, 64), dtype=np.uint8), np.zeros(0), np.zeros(0))
    assert len(batch) == 0
    for name in SkbBatch.COLUMNS:
        assert getattr(batch, name).shape == (0,)


def test_tiny_rows() -> None:
    batch = SkbBatch(np.full((1, 1), 0x45, dtype=np.uint8), np.zeros(1), np.ones(1), linktype=101)
    assert_batch_matches_frames(batch)


def test_non_contiguous_rows() -> None:
    pool = np.full((8, 128), 0x5A, dtype=np.uint8)
    frame = np.frombuffer(v4_tcp_frame(), dtype=np.uint8)
    pool[::2, 4 : 4 + len(frame)] = frame
    batch = SkbBatch(pool[::2, :100], np.full(4, 4), np.full(4, len(frame)))
    assert batch.dport.tolist() == [443] * 4
    assert_batch_matches_frames(batch)


@pytest.mark.parametrize(
    ("rows", "offset", "length", "message"),
    [
        (np.zeros(8, np.uint8), [0], [1], "rows must be a 2-D uint8 array"),
        (np.zeros((1, 8), np.int8), [0], [1], "rows must be a 2-D uint8 array"),
        (np.zeros((2, 8), np.uint8), [0], [1, 1], r"offset must have shape \(2,\), not \(1,\)"),
        (np.zeros((1, 8), np.uint8), [-1], [1], "offset and length must be >= 0"),
        (np.zeros((1, 8), np.uint8), [4], [5], "offset \\+ length must be <= frame size 8"),
    ],
)
def test_batch_rejects_bad_arguments(
    rows: np.ndarray, offset: list[int], length: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        SkbBatch(rows, np.array(offset), np.array(length))


# --- the batch's fast path --------------------------------------------------------------------
#
# A batch whose frames (all, or all but a few) are Ethernet + IPv4 without options or
# fragmentation + UDP/TCP, or Ethernet + IPv6 + UDP/TCP, is read at fixed offsets.  These
# tests check the columns stay exact at the edges of that layout, and (white-box, through
# ``_fast_layout()``/``_odd``) that common traffic does take it: a silent fall back to the
# general path would cost the engine most of its RX budget.

FAST_LIMIT = 8  # cpumap.skb._FAST_PATCH_LIMIT


def v4_udp_frame(sport: int = 5353, dport: int = 53) -> bytes:
    return eth(0x0800) + ipv4(UDP, udp(sport, dport))


def v6_frame(proto: int = UDP) -> bytes:
    return eth(0x86DD) + ipv6(proto, udp(7, 8) if proto == UDP else tcp(7, 8))


def with_df(frame: bytes) -> bytes:
    """The IPv4 frame with Don't Fragment set (still not a fragment)."""
    b = bytearray(frame)
    b[20] |= 0x40
    return bytes(b)


def engine_batch(frames: list[bytes], linktype: object = None, slack: int = 0) -> SkbBatch:
    """A batch as cpumap.program.skb_batch builds it: rows sliced out of a wider pool (so
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


def fast_path(batch: SkbBatch) -> tuple[int, list[int]] | None:
    """(IP version, frames patched per frame) if the batch takes the fast path, else None."""
    layout = batch._fast_layout()
    return None if layout is None else (layout.version, batch._odd)


@pytest.mark.parametrize(
    ("frame", "version"),
    [
        (v4_udp_frame(), 4),
        (v4_tcp_frame(), 4),
        (with_df(v4_tcp_frame()), 4),
        (v6_frame(UDP), 6),
        (v6_frame(TCP), 6),
    ],
)
def test_fast_path_serves_common_traffic(frame: bytes, version: int) -> None:
    batch = engine_batch([frame] * 16, slack=5)
    assert fast_path(batch) == (version, [])
    assert_batch_matches_frames(batch)
    assert batch.depth.tolist() == [ParseDepth.L4] * 16


@pytest.mark.parametrize(
    ("frame", "shortest"),
    [(v4_udp_frame(), 42), (v4_tcp_frame(), 54), (v6_frame(UDP), 62), (v6_frame(TCP), 74)],
)
def test_fast_path_truncated_around_its_minimum(frame: bytes, shortest: int) -> None:
    version = 4 if frame[12] == 0x08 else 6
    for cut in range(shortest - 3, shortest + 3):
        one_cut = engine_batch([frame] * 7 + [frame[:cut]])
        assert fast_path(one_cut) == (version, [] if cut >= shortest else [7]), cut
        assert_batch_matches_frames(one_cut)
        all_cut = engine_batch([frame[:cut]] * 9)
        assert (fast_path(all_cut) is None) == (cut < shortest), cut
        assert_batch_matches_frames(all_cut)


ODD_FRAMES = {
    "ihl 6": eth(0x0800) + ipv4(UDP, udp(), options=bytes(4)),
    "first fragment": eth(0x0800) + ipv4(UDP, udp(1, 2), mf=True),
    "later fragment": eth(0x0800) + ipv4(UDP, udp(1, 2), frag_offset=1480),
    "icmp": eth(0x0800) + ipv4(ICMP, icmp()),
    "sctp": eth(0x0800) + ipv4(SCTP, sctp()),
    "bad version": eth(0x0800) + b"\x65" + ipv4(UDP, udp())[1:],
    "vlan": eth(0x8100) + vlan_tag(5, 0x0800) + ipv4(UDP, udp()),
    "arp": eth(0x0806) + bytes(46),
    "ipv6 hop-by-hop": v6_tcp_frame(),
    "ipv6 in ipv4": eth(0x0800) + ipv4(41, ipv6(UDP, udp())),
    "802.3": eth(46) + bytes(46),
}


@pytest.mark.parametrize("odd", ODD_FRAMES)
@pytest.mark.parametrize("common", [v4_udp_frame(), v6_frame(TCP)])
def test_fast_path_patches_a_frame_off_its_layout(odd: str, common: bytes) -> None:
    frames = [common] * 5 + [ODD_FRAMES[odd]] + [common] * 5
    batch = engine_batch(frames)
    assert fast_path(batch) == (4 if common[12] == 0x08 else 6, [5])
    assert_batch_matches_frames(batch)


def test_fast_path_patch_limit() -> None:
    odd = list(ODD_FRAMES.values())
    for count in (FAST_LIMIT, FAST_LIMIT + 1):
        frames = [v4_udp_frame(i, 99) for i in range(20)]
        frames[1 : 1 + count] = odd[:count]
        batch = engine_batch(frames)
        assert fast_path(batch) == ((4, list(range(1, 1 + count))) if count == FAST_LIMIT else None)
        assert_batch_matches_frames(batch)


def test_fast_path_needs_ethernet_link_type() -> None:
    frames = [v4_udp_frame()] * 6
    other = np.array([1, 1, LINKTYPE_LINUX_SLL, 1, 1, 1], dtype=np.uint16)
    batch = engine_batch(frames, linktype=other)
    assert fast_path(batch) == (4, [2])
    assert_batch_matches_frames(batch)
    scalar = engine_batch(frames, linktype=LINKTYPE_RAW)
    assert fast_path(scalar) is None
    assert_batch_matches_frames(scalar)


def test_fast_path_mixed_ip_versions() -> None:
    # One layout per batch: a few frames of the other version are patched, more go general.
    few = engine_batch([v4_udp_frame()] * 10 + [v6_frame()] * 2)
    assert fast_path(few) == (4, [10, 11])
    half = engine_batch([v4_udp_frame(), v6_frame()] * 10)
    assert fast_path(half) is None
    for batch in (few, half):
        assert_batch_matches_frames(batch)


def test_fast_path_needs_one_offset_for_every_frame() -> None:
    frame = v4_udp_frame()
    rows = np.zeros((4, 80), dtype=np.uint8)
    for i, headroom in enumerate([0, 2, 0, 4]):
        rows[i, headroom : headroom + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    uneven = SkbBatch(rows, np.array([0, 2, 0, 4]), np.full(4, len(frame)))
    assert fast_path(uneven) is None
    assert_batch_matches_frames(uneven)
    rows[:, 7 : 7 + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    shifted = SkbBatch(rows, 7, len(frame))  # one offset, not 0, given as a scalar
    assert fast_path(shifted) == (4, [])
    assert_batch_matches_frames(shifted)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int64])
def test_batch_accepts_any_integer_dtype(dtype: type) -> None:
    frames = [v4_udp_frame(), eth(0x0806) + bytes(28), v4_udp_frame()]
    rows = np.zeros((3, 64), dtype=np.uint8)
    for i, f in enumerate(frames):
        rows[i, 2 : 2 + len(f)] = np.frombuffer(f, dtype=np.uint8)
    linktype = np.array([LINKTYPE_ETHERNET, LINKTYPE_ETHERNET, LINKTYPE_RAW], dtype=dtype)
    lengths = np.array([len(f) for f in frames], dtype=dtype)
    batch = SkbBatch(rows, np.full(3, 2, dtype=dtype), lengths, linktype=linktype)
    assert_batch_matches_frames(batch)
    assert batch.linktype.tolist() == [1, 1, LINKTYPE_RAW]


def test_batch_given_arguments_are_int64_columns() -> None:
    batch = engine_batch([v4_udp_frame()] * 3)
    for name in ("offset", "length", "wire_len", "linktype", "ifindex", "rx_queue", "ts_ns"):
        column = getattr(batch, name)
        assert (column.dtype, column.shape) == (np.int64, (3,)), name
    assert batch.wire_len.tolist() == batch.length.tolist() == [len(v4_udp_frame())] * 3
    assert batch.index.tolist() == [-1] * 3


# --- properties -------------------------------------------------------------------------------

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


def parse_everything(skb: Skb) -> dict[str, object]:
    fields = skb.as_dict()
    repr(skb)
    return fields


@PROPERTY_SETTINGS
@given(st.binary(max_size=160), st.sampled_from([*LINKTYPES, 2, 65535, -7]))
def test_arbitrary_bytes_never_raise(data: bytes, linktype: int) -> None:
    fields = parse_everything(Skb(data, linktype=linktype))
    assert 0 <= fields["hash"] <= 0xFFFFFFFF  # type: ignore[operator]
    assert_batch_matches_frames(batch_of([(linktype, data)]))


@PROPERTY_SETTINGS
@given(frames())
def test_mutated_frames_never_raise_and_fields_are_consistent(frame: tuple[int, bytes]) -> None:
    linktype, data = frame
    skb = Skb(data, linktype=linktype)
    parse_everything(skb)
    assert (skb.ip_version != 0) == (skb.depth >= ParseDepth.L3)
    assert (skb.error is None) or skb.depth < ParseDepth.L4
    if skb.transport_offset >= 0:
        assert skb.network_offset < skb.transport_offset <= skb.len
    if skb.depth == ParseDepth.L4:
        assert skb.transport_offset >= 0
    if skb.ip_version == 0:
        assert (skb.hash, skb.ip_proto, skb.src) == (0, -1, None)


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.tuples(frames(), st.integers(0, 9)),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 2**32 - 1),
)
def test_batch_equals_per_frame(frames_: list[tuple[tuple[int, bytes], int]], seed: int) -> None:
    # Mixed lengths, offsets (headroom) and link types; rows full of random garbage.
    size = max(headroom + len(data) for (_, data), headroom in frames_) + 4
    rows = np.random.default_rng(seed).integers(0, 256, (len(frames_), size), dtype=np.uint8)
    for i, ((_, data), headroom) in enumerate(frames_):
        rows[i, headroom : headroom + len(data)] = np.frombuffer(data, dtype=np.uint8)
    batch = SkbBatch(
        rows,
        np.array([headroom for _, headroom in frames_]),
        np.array([len(data) for (_, data), _ in frames_]),
        linktype=np.array([linktype for (linktype, _), _ in frames_]),
    )
    assert_batch_matches_frames(batch)


@st.composite
def common_frames(draw: st.DrawFn, version: int) -> bytes:
    """A frame of the fast path's layout for ``version``, varied where the layout allows
    (TOS, DF and the reserved flag, TTL, traffic class, flow label, trailing bytes)."""
    proto = draw(st.sampled_from([TCP, UDP]))
    l4 = draw(l4_headers(proto)) + draw(st.binary(max_size=6))
    src, dst = (draw(st.binary(min_size=version, max_size=version)) for _ in range(2))
    if version == 4:
        frame = bytearray(eth(0x0800) + ipv4(proto, l4, src, dst))
        frame[15], frame[22] = draw(st.integers(0, 255)), draw(st.integers(0, 255))
        frame[20] |= draw(st.sampled_from([0, 0x40, 0x80]))
    else:
        frame = bytearray(eth(0x86DD) + ipv6(proto, l4, src * 4, dst * 4))
        frame[14] |= draw(st.integers(0, 15))
        frame[15:18] = draw(st.binary(min_size=3, max_size=3))
    return bytes(frame)


@st.composite
def off_layout_frames(draw: st.DrawFn, version: int) -> tuple[int, bytes]:
    """A frame near the fast path's layout: cut around its minimum length, one header byte
    changed, a named odd case, or anything at all."""
    kind = draw(st.sampled_from(["cut", "byte", "named", "any"]))
    frame = draw(common_frames(version))
    if kind == "cut":
        shortest = {4: 42, 6: 62}[version]
        return LINKTYPE_ETHERNET, frame[: draw(st.integers(shortest - 6, shortest + 2))]
    if kind == "byte":
        changed = bytearray(frame)
        changed[draw(st.integers(12, 24))] = draw(st.integers(0, 255))
        return LINKTYPE_ETHERNET, bytes(changed)
    if kind == "named":
        return LINKTYPE_ETHERNET, draw(st.sampled_from(list(ODD_FRAMES.values())))
    return draw(frames())


@PROPERTY_SETTINGS
@given(st.data(), st.sampled_from([4, 6]), st.integers(0, 6), st.booleans())
def test_batch_equals_per_frame_near_the_fast_path(
    data: st.DataObject, version: int, headroom: int, engine_rows: bool
) -> None:
    # Mostly common frames, with up to a dozen off the layout (below and above the patch
    # limit) at random places; one offset for all; random bytes after every frame.
    batch_frames = [
        (LINKTYPE_ETHERNET, f)
        for f in data.draw(st.lists(common_frames(version), min_size=1, max_size=24))
    ]
    for odd in data.draw(st.lists(off_layout_frames(version), max_size=12)):
        batch_frames.insert(data.draw(st.integers(0, len(batch_frames))), odd)
    n = len(batch_frames)
    width = headroom + max(len(f) for _, f in batch_frames) + data.draw(st.integers(0, 8))
    pool = np.random.default_rng(n).integers(0, 256, (n, width + 16), dtype=np.uint8)
    for i, (_, f) in enumerate(batch_frames):
        pool[i, headroom : headroom + len(f)] = np.frombuffer(f, dtype=np.uint8)
    linktypes = np.array([lt for lt, _ in batch_frames], dtype=np.uint16)
    batch = SkbBatch(
        pool[:, :width] if engine_rows else np.ascontiguousarray(pool[:, :width]),
        np.full(n, headroom, dtype=np.uint16) if engine_rows else headroom,
        np.array([len(f) for _, f in batch_frames], dtype=np.uint32 if engine_rows else int),
        linktype=linktypes if engine_rows or linktypes.any() else LINKTYPE_ETHERNET,
    )
    assert_batch_matches_frames(batch)


# --- real captures, checked against TShark ----------------------------------------------------

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "captures"


def read_pcap(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(linktype, frame)`` for each record of a classic pcap file (gzip or not); stops at a
    partial record.  Just enough reader for these tests; see cpumap.pcap for the real one."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    order = "<" if raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(order + "I", raw, 20)[0] & 0xFFFF
    pos = 24
    while pos + 16 <= len(raw):
        caplen = struct.unpack_from(order + "I", raw, pos + 8)[0]
        if pos + 16 + caplen > len(raw):
            return
        yield linktype, raw[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen


def oracle_rows(capture: str) -> list[dict[str, str]]:
    name = capture.replace("/", "_") + ".csv.gz"
    with gzip.open(CAPTURES / "_oracle_tshark" / name, "rt", newline="") as f:
        return list(csv.DictReader(f))


ORACLE_CAPTURES = [
    "file_level_errors/pcapfix__test.pcap",
    "file_level_errors/pcaprub__telnet-raw.pcap.gz",
    "file_level_errors/scapy__doip.pcap.gz",
    "fragments/tcpreplay__test_fragroute.pcap",
    "ipv6/libpcap__ipv6_ah_modes.pcap",
    "ipv6/tcpdump__bigtcp-ipv6-hbh.pcap",
    "ipv6/tcpdump__ipv6-routing-header.pcap",
    "ipv6/tcpdump__ipv6-srh-ext-header.pcap",
    "ipv6/tcpdump__ipv6_jumbogram_1.pcap",
    "ipv6/tcpdump__ipv6_no_next_header.pcap",
    "jumbo_gso/tcpdump__bigtcp-ipv4.pcap",
    "jumbo_gso/tcpdump__bigtcp-ipv6.pcap",
    "jumbo_gso/tcpdump__gso-ipv4.pcap",
    "l2_vlan_mpls_pppoe/tcpdump__802.1ad_QinQ.pcap",
    "l2_vlan_mpls_pppoe/tcpdump__various_gre.pcap",
    "linktypes/tcpdump__LINKTYPE_IPV4.pcap",
    "linktypes/tcpdump__LINKTYPE_IPV6.pcap",
    "linktypes/tcpdump__LINKTYPE_RAW_ipv4.pcap",
    "linktypes/tcpdump__LINKTYPE_RAW_ipv6.pcap",
    "malformed/tcpdump__LINKTYPE_IPV4_invalid.pcap",
    "malformed/tcpdump__LINKTYPE_IPV6_invalid.pcap",
    "malformed/tcpdump__arp-too-long-tha.pcap",
    "malformed/tcpdump__bad-ipv4-version-pgm-heapoverflow.pcap",
    "malformed/tcpdump__ipv4_invalid_hdr_length.pcap",
    "malformed/tcpdump__ipv4_invalid_length.pcap",
    "malformed/tcpdump__ipv4_invalid_total_length.pcap",
    "malformed/tcpdump__ipv4_invalid_total_length_2.pcap",
    "malformed/tcpdump__ipv6-bad-version.pcap",
    "malformed/tcpdump__ipv6-next-header-oobr-1.pcap",
    "malformed/tcpdump__ipv6-too-long-jumbo.pcap",
    "malformed/tcpdump__ipv6_39_byte_header.pcap",
    "malformed/tcpdump__ipv6_frag6_negative_len.pcap",
    "malformed/tcpdump__ipv6_invalid_length.pcap",
    "malformed/tcpdump__ipv6_invalid_length_2.pcap",
    "malformed/tcpdump__ipv6_jumbogram_invalid_length.pcap",
    "malformed/tcpdump__ipv6_missing_jumbo_payload_option.pcap",
    "malformed/tcpdump__tcp_header_heapoverflow.pcap",
    "malformed/tcpdump__udp-length-heapoverflow.pcap",
    "mixed/tcpreplay__test.pcap",
    "snaplen_truncated/pcapyng__96pings.pcap",
    "snaplen_truncated/tcpdump__esp_truncated.pcap",
    "snaplen_truncated/tcpdump__quic_handshake_truncated.pcap",
    "snaplen_truncated/tcpdump__tcp_rst_data-trunc.pcap",
    "timestamps/tcpdump__tcp-handshake-nano.pcap",
    "tunnels/libpcap__geneve.pcap",
    "tunnels/libpcap__vxlan.pcap",
    "tunnels/tcpdump__mpls-over-udp.pcap",
]

# Tokens of TShark's frame.protocols that are link layer (or TShark bookkeeping), before L3.
LINK_TOKENS = frozenset({"eth", "ethertype", "vlan", "ieee8021ad", "sll", "null", "raw"})


def first_l3_and_l4(protocols: str) -> tuple[str, str]:
    """From ``eth:ethertype:ipv6:ipv6.hopopts:udp:data``: ``("ipv6", "udp")``."""
    tokens = [t for t in protocols.split(":") if t not in LINK_TOKENS and not t.startswith("ipv6.")]
    l3 = tokens[0] if tokens else ""
    return l3, tokens[1] if len(tokens) > 1 else ""


def check_against_tshark(skb: Skb, row: dict[str, str]) -> None:
    """Where both decode a field, they agree; where TShark decodes the outermost IP and
    transport headers, so do we (or we say why not)."""
    assert skb.len == int(row["frame.cap_len"])
    if skb.eth_src is not None:
        assert skb.eth_src.hex(":") == row["eth.src"]
        if row["eth.type"]:
            assert skb.protocol == int(row["eth.type"], 16)
    if row["ieee8021ad.id"] and skb.vlans:
        assert skb.vlans[0] == (0x88A8, int(row["ieee8021ad.id"]))
    if row["vlan.id"] and skb.vlans:
        assert next(vid for tpid, vid in skb.vlans if tpid == 0x8100) == int(row["vlan.id"])
    l3, l4 = first_l3_and_l4(row["frame.protocols"])
    if l3 in ("ip", "ipv6"):
        assert skb.ip_version == (4 if l3 == "ip" else 6) or skb.error, skb
    # TShark gives up on some headers we parse (it trusts the IPv4 total length and the IPv6
    # payload length; we do not), so field values are compared where TShark has them.
    ours: dict[str, object] = {}
    if skb.ip_version == 4:
        ours |= {"ip.src": text(skb.src), "ip.dst": text(skb.dst), "ip.proto": skb.ip_proto}
        if row["ip.flags.mf"]:
            assert skb.is_fragment == (row["ip.flags.mf"] == "1" or row["ip.frag_offset"] != "0")
    if skb.ip_version == 6:
        ours |= {"ipv6.src": text(skb.src), "ipv6.dst": text(skb.dst)}
    if l4 in ("tcp", "udp") and skb.ip_version:
        assert skb.depth == ParseDepth.L4 or skb.error, skb
    if skb.depth == ParseDepth.L4:
        prefix = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6"}.get(skb.ip_proto)
        if prefix in ("tcp", "udp"):
            ours |= {f"{prefix}.srcport": skb.sport, f"{prefix}.dstport": skb.dport}
        if prefix == "tcp":
            ours["tcp.flags"] = skb.tcp_flags
        if prefix in ("icmp", "icmpv6"):
            ours |= {f"{prefix}.type": skb.icmp_type, f"{prefix}.code": skb.icmp_code}
    for field, value in ours.items():
        if row[field]:
            assert value == tshark_value(row[field]), field


def text(address: bytes | None) -> str:
    assert address is not None
    return str(ipaddress.ip_address(address))


def tshark_value(field: str) -> int | str:
    if field.startswith("0x"):
        return int(field, 16)
    return int(field) if field.isdigit() else field


@pytest.mark.skipif(not CAPTURES.is_dir(), reason="third-party captures not available")
@pytest.mark.parametrize("capture", ORACLE_CAPTURES)
def test_real_captures_agree_with_tshark(capture: str) -> None:
    frames_ = list(read_pcap(CAPTURES / capture))
    rows = oracle_rows(capture)
    assert len(frames_) == len(rows)
    for (linktype, data), row in zip(frames_, rows, strict=True):
        skb = Skb(data, linktype=linktype)
        try:
            check_against_tshark(skb, row)
        except AssertionError as e:
            raise AssertionError(f"frame {row['frame.number']}: {skb!r}: {e}") from e
    assert_batch_matches_frames(batch_of(frames_))


@pytest.mark.skipif(not CAPTURES.is_dir(), reason="third-party captures not available")
def test_real_capture_with_73_extension_headers_hits_the_bound() -> None:
    # libpcap's filter test: hop-by-hop then 24 x (routing, fragment, destination options).
    [(linktype, data)] = read_pcap(CAPTURES / "ipv6/libpcap__ipv6_ext_headers.pcap")
    skb = Skb(data, linktype=linktype)
    assert (skb.error, skb.depth, skb.sport) == (
        "IPv6 extension header chain too long",
        ParseDepth.L3,
        0,
    )
    assert skb.is_fragment
    assert_batch_matches_frames(batch_of([(linktype, data)]))
