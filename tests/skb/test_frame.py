"""Tests for cpumap.skb.frame, the per-frame parser: hand-built frames for every case (link
layers, VLANs, IPv4, IPv6 extension headers, transports), truncation, laziness, property
tests (never raises; fields consistent), and real captures checked against TShark's decode."""

from __future__ import annotations

import csv
import gzip
import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
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
)
from tests.skb.helpers import (
    AH,
    DSTOPTS,
    ESP,
    FRAGMENT,
    GRE,
    HIP,
    HOPOPTS,
    ICMP,
    ICMPV6,
    LINKTYPES,
    MAC_A,
    MAC_B,
    MOBILITY,
    NONE6,
    PROPERTY_SETTINGS,
    ROUTING,
    SCTP,
    SHIM6,
    TCP,
    UDP,
    UDPLITE,
    V4_A,
    V4_B,
    V4_PACKET,
    V6_A,
    V6_B,
    V6_PACKET,
    assert_batch_matches_frames,
    batch_of,
    eth,
    ext,
    frag_ext,
    frames,
    icmp,
    ipv4,
    ipv6,
    sctp,
    sll,
    sll2,
    tcp,
    udp,
    v4_tcp_frame,
    vlan_tag,
)

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


# --- properties ------------------------------------------------------------------------------


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
