"""The skb: a parsed view of one frame (:class:`Skb`), and of a batch of frames (:class:`SkbBatch`).

Theory of operation
===================

The kernel's cpumap worker turns each redirected ``xdp_frame`` into an ``sk_buff`` before the
network stack sees it; our worker does the same before it calls the user's handler.  An skb
here is not a copy of the frame: it is the frame's bytes plus what a parser can say about them
(link protocol, VLAN tags, addresses, transport ports, a flow hash).

Charter
-------
* No I/O, no processes, no shared memory here.  The caller hands in bytes (or a view of them)
  and the metadata the RX side recorded; everything else is derived from those bytes.
* The skb build never fails.  Like the kernel, which builds the skb whatever the payload, a
  frame that cannot be fully parsed still yields every field that could be parsed, and
  :attr:`Skb.depth` / :attr:`Skb.error` say how far parsing got and why it stopped.  No input
  bytes can make :class:`Skb` raise.  A header is parsed whole or not at all: a truncated TCP
  header yields no ports, not half of them.
* Lengths inside the packet are not trusted for finding headers (IPv4 total length, IPv6
  payload length: jumbograms and GSO captures set them to 0), but nothing is ever read past
  the captured bytes.

Per frame: lazy, one pass
-------------------------
The worker makes one :class:`Skb` per frame, and many handlers only look at ``len`` or
``rx_queue``, so the constructor only stores its arguments.  The parsed fields are ``__slots__``
left empty: the first read of any of them finds no value, lands in ``__getattr__``, and runs
the parser, which fills *every* parsed slot in one pass.  From then on a field read is a plain
slot read.  (The naive alternative, a property per field that checks a "parsed" flag, costs a
Python call on every read, forever.)  ``hash`` is one more step: it is computed on its first
read, from the parsed fields, since a handler that steers on ports should not pay for it.

Per batch: columns, the same answers
------------------------------------
:class:`SkbBatch` answers the same questions for a whole batch of frames sitting in a frame
pool, one numpy column per field.  Python's cost here is per call, not per frame (one numpy
call costs about as much as parsing a third of a frame in Python), so the design counts calls.

*The fast path.*  Most traffic is Ethernet + IPv4 without options or fragmentation + UDP or
TCP (or Ethernet + IPv6 + UDP/TCP, no extension header), and for such a frame every field is a
constant or sits at a fixed offset.  On its first column read, a batch checks in a handful of
calls whether all its frames (the engine's rows start at the packets: one offset for all)
have one of these layouts (:data:`_FAST_IPV4`, :data:`_FAST_IPV6`); if so, each column is a
strided view of the rows at that offset, converted in a call or two.  A few frames off the
layout (an ARP, a fragment, a short frame: up to ``_FAST_PATCH_LIMIT``) do not spoil the
batch: the per-frame parser gives their fields, patched into the columns.

*The general path* handles any batch: each stage (link layer, IP, transport, hash) is a fixed
sequence of whole-batch numpy operations over all frames, with masks instead of branches.  The
common cases (Ethernet with up to ``_BATCH_VLAN_TAGS`` tags, IPv4 with options, IPv6 with up
to ``_BATCH_IPV6_EXT_HEADERS`` extension headers, every supported link type) are done in
numpy, and the rare frames that need more (deep tag stacks, long extension chains) are handed
to the per-frame parser and their columns patched in.  Later stages read the patched columns,
so they stay exact.  (Running the general path on just the frames off the fast layout would
not pay: its cost is its number of calls, nearly the same for 10 frames as for 256.)

Either way every column equals the per-frame field for every frame, malformed and truncated
ones included; the tests check it on random batches built around the fast path's edges.

The flow hash
-------------
``hash`` is symmetric (both directions of a flow hash alike) and defined exactly, so the
numpy form matches the per-frame form bit for bit.  Its inputs: ``a, b`` the addresses as
32-bit words (IPv6: the XOR of its four big-endian words), ``p, q`` the ports (both 0 for any
fragment, so every fragment of a datagram hashes alike, and when there are no ports) and ``k``
the IP protocol.  With ``x, y = min(a, b), max(a, b)`` and ``m = min(p, q) << 16 | max(p, q)``,
in arithmetic mod 2**64::

    v = x * 0x9E3779B97F4A7C15 + y * 0xC2B2AE3D27D4EB4F + m * 0x165667B19E3779F9
        + k * 0x27D4EB2F165667C5
    v ^= v >> 29
    v *= 0xBF58476D1CE4E5B9
    hash = (v ^ v >> 32) & 0xFFFFFFFF

Non-IP frames hash to 0.  A linear step, then half of splitmix64's finalizer: one Python
expression per frame, about ten numpy calls per batch (MurmurHash3 over the same four words,
its previous definition, took about 40).  The tests check its spread: ``hash % m`` is
balanced for random and for sequential flows, and flipping any input bit flips each output
bit about half the time.
"""

from __future__ import annotations

import ipaddress
import struct
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np

from cpumap.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

__all__ = [
    "ETH_P_802_2",
    "ETH_P_802_3",
    "ETH_P_8021AD",
    "ETH_P_8021Q",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "ETH_P_QINQ1",
    "IPV6_MAX_EXT_HEADERS",
    "PACKET_BROADCAST",
    "PACKET_HOST",
    "PACKET_MULTICAST",
    "VLAN_MAX_DEPTH",
    "ParseDepth",
    "Skb",
    "SkbBatch",
]

# EtherTypes, named as in <linux/if_ether.h>.
ETH_P_802_3: Final = 0x0001  # "raw" 802.3 (Novell): length field, payload starts 0xFFFF
ETH_P_802_2: Final = 0x0004  # 802.3 length field followed by an 802.2 LLC header
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
ETH_P_8021Q: Final = 0x8100
ETH_P_8021AD: Final = 0x88A8
ETH_P_QINQ1: Final = 0x9100  # pre-802.1ad QinQ outer tag, still seen in the wild
_VLAN_TPIDS: Final = frozenset({ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ1})
_ETH_P_802_3_MIN: Final = 0x0600  # below this the type field is an 802.3 length

# skb->pkt_type values (<linux/if_packet.h>).  Without a device address we cannot tell
# PACKET_OTHERHOST, so unicast is HOST.
PACKET_HOST: Final = 0
PACKET_BROADCAST: Final = 1
PACKET_MULTICAST: Final = 2

# The kernel's VLAN_MAX_DEPTH (<linux/if_vlan.h>): deeper stacks are not untagged.
VLAN_MAX_DEPTH: Final = 8
# Longer than any legitimate chain (the kernel's flow dissector gives up after 15 headers of
# all kinds); a frame can carry one 8-byte extension header per 8 bytes, so without a bound a
# crafted jumbo frame would cost a thousand loop turns.
IPV6_MAX_EXT_HEADERS: Final = 16

# IP protocol numbers used below.
_IPPROTO_ICMP: Final = 1
_IPPROTO_TCP: Final = 6
_IPPROTO_UDP: Final = 17
_IPPROTO_FRAGMENT: Final = 44
_IPPROTO_AH: Final = 51
_IPPROTO_ICMPV6: Final = 58
_IPPROTO_SCTP: Final = 132
_IPPROTO_UDPLITE: Final = 136

# IPv6 extension headers we walk, as the size of their length unit: the header is
# ``unit * hdr_ext_len + 8`` bytes.  (8-byte units, not counting the first 8; AH counts 4-byte
# units minus 2, which is the same formula with unit 4; the fragment header is always 8.)
# ESP (50) and no-next-header (59) end the walk: nothing after them is a header we can read.
_IPV6_EXT_UNIT: Final[dict[int, int]] = {
    0: 8,  # hop-by-hop options
    43: 8,  # routing
    _IPPROTO_FRAGMENT: 0,
    60: 8,  # destination options
    _IPPROTO_AH: 4,
    135: 8,  # mobility
    139: 8,  # HIP
    140: 8,  # shim6
}

# Transport headers we read: protocol -> (name, bytes needed, has ports).  ICMP's needed bytes
# are the part every message shares (type, code, checksum).
_L4_HEADERS: Final[dict[int, tuple[str, int, bool]]] = {
    _IPPROTO_TCP: ("TCP", 20, True),
    _IPPROTO_UDP: ("UDP", 8, True),
    _IPPROTO_SCTP: ("SCTP", 12, True),
    _IPPROTO_UDPLITE: ("UDPLite", 8, True),
    _IPPROTO_ICMP: ("ICMP", 4, False),
    _IPPROTO_ICMPV6: ("ICMPv6", 4, False),
}
_TCP_FLAGS_MASK: Final = 0x0FFF  # FIN..CWR plus AE/NS and the reserved bits (kernel, tshark)

# BSD loopback address families (AF_INET; AF_INET6 of Linux/BSD, FreeBSD, Darwin, ...).
_AF_INET: Final = 2
_AF_INET6: Final = frozenset({10, 24, 28, 30})

_BROADCAST_MAC: Final = b"\xff" * 6


class ParseDepth(IntEnum):
    """How far the parser got in a frame."""

    NONE = 0  #: not even the link-layer header (too short, or unsupported link type)
    L2 = 1  #: link layer parsed; ``protocol`` is known
    L3 = 2  #: IP header parsed; addresses and ``ip_proto`` are known
    L4 = 3  #: transport header parsed (TCP/UDP/SCTP/UDPLite ports, ICMP type/code)


# Module-level aliases: the parser runs once per frame, and enum attribute lookups add up.
_NONE, _L2, _L3, _L4 = ParseDepth.NONE, ParseDepth.L2, ParseDepth.L3, ParseDepth.L4

_ETH_HDR = struct.Struct("!6s6sH")  # dst, src, type
_IPV4_HDR = struct.Struct("!B5xHxB2x4s4s")  # version/IHL, frag word, protocol, src, dst
_IPV6_HDR = struct.Struct("!B5xBx16s16s")  # version/class, next header, src, dst
_U16 = struct.Struct("!H")
_U16X2 = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_U32LE = struct.Struct("<I")
_U32X8 = struct.Struct("!8I")  # two IPv6 addresses as words

# The fields the caller gives, and the fields the parser fills (``as_dict`` order).
_GIVEN_FIELDS: Final = (
    "len",
    "wire_len",
    "linktype",
    "ifindex",
    "rx_queue",
    "ts_ns",
    "metadata",
    "index",
)
_PARSED_FIELDS: Final = (
    "protocol",
    "pkt_type",
    "eth_src",
    "eth_dst",
    "vlans",
    "l3_protocol",
    "network_offset",
    "ip_version",
    "src",
    "dst",
    "ip_proto",
    "is_fragment",
    "frag_offset",
    "transport_offset",
    "sport",
    "dport",
    "tcp_flags",
    "icmp_type",
    "icmp_code",
    "depth",
    "error",
)
_LAZY_FIELDS: Final = frozenset(_PARSED_FIELDS)  # reading one of these first runs the parser


class Skb:
    """A parsed view of one frame.

    ``data`` is the captured bytes.  The worker passes a ``memoryview`` into the shared frame
    pool: it is valid **only during the handler call**, since the frame goes back to the pool
    afterwards and its bytes are reused.  Call :meth:`bytes` to keep a copy.  Parsed fields
    (``protocol`` ... ``error``) are copies and stay valid, but the parse runs on the first
    read of one: a handler that keeps an skb should read a parsed field before it returns.

    The constructor only stores its arguments; the first read of a parsed field parses the
    frame, in one pass, and caches every parsed field.  Nothing raises on bad input: see
    ``depth`` and ``error``.

    Attributes given by the caller:
        data: the captured bytes (``memoryview`` of format ``B``, ``bytes`` or ``bytearray``).
        len: captured length, ``len(data)``.
        wire_len: length on the wire (``len`` when -1 was passed).
        linktype: ``LINKTYPE_*`` of the frame (:mod:`cpumap.packets`).
        ifindex, rx_queue: where it was received.
        ts_ns: receive time, integer nanoseconds since the epoch.
        metadata: the XDP metadata area in front of the frame (``bytes``).
        index: the frame's index in the frame pool (-1 if not from a pool).

    Parsed attributes:
        protocol: what ``eth_type_trans`` sets: the EtherType (the outer TPID when tagged), or
            ETH_P_802_3 / ETH_P_802_2 for 802.3 length frames; derived for other link types.
            0 when unknown.
        pkt_type: PACKET_HOST / PACKET_BROADCAST / PACKET_MULTICAST (from the Ethernet
            destination; PACKET_HOST otherwise).
        eth_src, eth_dst: the MAC addresses (Ethernet only), else None.
        vlans: ``((tpid, vid), ...)``, outermost first.
        l3_protocol: the EtherType after all VLAN tags (== protocol when untagged).
        network_offset: where the L3 header starts (after the link header and tags), -1 if
            the link layer, tags included, could not be parsed.
        ip_version: 4 or 6 once the IP header is parsed, else 0.
        src, dst: IP addresses (4 or 16 bytes), else None.
        ip_proto: the transport protocol (for IPv6 after the extension headers; where the
            walk stopped early, the header it stopped at), -1 for non-IP.
        is_fragment: IPv4 MF set or offset non-zero; IPv6 fragment header present.
        frag_offset: fragment offset in bytes.
        transport_offset: where the header named by ``ip_proto`` starts, -1 when there is
            none (later fragments) or it could not be found.
        sport, dport: TCP/UDP/SCTP/UDPLite ports, else 0.
        tcp_flags: the TCP flag bits (``& 0x0FFF`` of the offset/flags word), else 0.
        icmp_type, icmp_code: for ICMP and ICMPv6, else -1.
        hash: the symmetric flow hash (uint32, 0 for non-IP); see the module docstring.
        depth: how far parsing got (:class:`ParseDepth`).
        error: None, or why parsing stopped early (e.g. ``"bad IPv4 IHL 3"``).
    """

    __slots__ = ("data", "hash", *_GIVEN_FIELDS, *_PARSED_FIELDS)

    data: memoryview | bytes | bytearray
    len: int
    wire_len: int
    linktype: int
    ifindex: int
    rx_queue: int
    ts_ns: int
    metadata: bytes
    index: int
    # Parsed lazily; see the module docstring.
    protocol: int
    pkt_type: int
    eth_src: bytes | None
    eth_dst: bytes | None
    vlans: tuple[tuple[int, int], ...]
    l3_protocol: int
    network_offset: int
    ip_version: int
    src: bytes | None
    dst: bytes | None
    ip_proto: int
    is_fragment: bool
    frag_offset: int
    transport_offset: int
    sport: int
    dport: int
    tcp_flags: int
    icmp_type: int
    icmp_code: int
    hash: int
    depth: ParseDepth
    error: str | None

    def __init__(
        self,
        data: memoryview | bytes | bytearray,
        *,
        wire_len: int = -1,
        linktype: int = LINKTYPE_ETHERNET,
        ifindex: int = 0,
        rx_queue: int = 0,
        ts_ns: int = 0,
        metadata: bytes = b"",
        index: int = -1,
    ) -> None:
        n = len(data)
        self.data = data
        self.len = n
        self.wire_len = n if wire_len < 0 else wire_len
        self.linktype = linktype
        self.ifindex = ifindex
        self.rx_queue = rx_queue
        self.ts_ns = ts_ns
        self.metadata = metadata
        self.index = index

    if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt field is still an error

        def __getattr__(self, name: str) -> Any:
            # Only reached for a slot with no value yet: a lazy field on its first read.
            if name == "hash":
                self.hash = value = _flow_hash(self)
                return value
            if name in _LAZY_FIELDS:
                _parse(self)
                return object.__getattribute__(self, name)
            raise AttributeError(f"'Skb' object has no attribute {name!r}")

    @property
    def vlan_count(self) -> int:
        """Number of VLAN tags parsed (``len(vlans)``)."""
        return len(self.vlans)

    def as_dict(self) -> dict[str, object]:
        """Every field but ``data``, as plain values (addresses stay ``bytes``)."""
        return {name: getattr(self, name) for name in (*_GIVEN_FIELDS, *_PARSED_FIELDS, "hash")}

    def __repr__(self) -> str:
        where = f"#{self.index} " if self.index >= 0 else ""
        error = f" error={self.error!r}" if self.error else ""
        return f"<Skb {where}len={self.len} {_summary(self)} depth={self.depth.name}{error}>"

    def bytes(self) -> bytes:  # last in the class: the name shadows the builtin in its body
        """A copy of the captured bytes, valid after the handler returns."""
        return bytes(self.data)


_PROTO_NAMES: Final = {proto: name for proto, (name, _, _) in _L4_HEADERS.items()}


def _summary(skb: Skb) -> str:
    """``TCP 10.0.0.1:1234 > 10.0.0.2:80`` for IP, ``proto=0x0806`` otherwise (for repr)."""
    if skb.src is None or skb.dst is None:
        return f"proto=0x{skb.l3_protocol:04x}"
    src, dst = ipaddress.ip_address(skb.src), ipaddress.ip_address(skb.dst)
    name = _PROTO_NAMES.get(skb.ip_proto, f"proto={skb.ip_proto}")
    if skb.sport or skb.dport:
        return f"IPv{skb.ip_version} {name} {src}:{skb.sport} > {dst}:{skb.dport}"
    return f"IPv{skb.ip_version} {name} {src} > {dst}"


# --- the per-frame parser ---------------------------------------------------------------------
#
# Each stage reads its header whole, fills what it parsed into the skb, and returns where the
# next header starts, or -1 to stop (having set ``error`` when stopping is a failure).


def _parse(skb: Skb) -> None:
    """Fill every parsed field of ``skb`` in one pass over its bytes."""
    skb.protocol = skb.l3_protocol = 0
    skb.pkt_type = PACKET_HOST
    skb.eth_src = skb.eth_dst = skb.src = skb.dst = skb.error = None
    skb.vlans = ()
    skb.network_offset = skb.transport_offset = skb.ip_proto = -1
    skb.icmp_type = skb.icmp_code = -1
    skb.ip_version = skb.frag_offset = skb.sport = skb.dport = skb.tcp_flags = 0
    skb.is_fragment = False
    skb.depth = _NONE

    data, n = skb.data, skb.len
    link = _LINK_PARSERS.get(skb.linktype)
    if link is None:
        skb.error = f"unsupported link type {skb.linktype}"
        return
    off = link(skb, data, n)
    if off < 0:
        return
    skb.depth = _L2
    off = _parse_vlans(skb, data, n, off)
    if off < 0:
        return
    skb.network_offset = off
    l3 = skb.l3_protocol
    if l3 == ETH_P_IP:
        off = _parse_ipv4(skb, data, n, off)
    elif l3 == ETH_P_IPV6:
        off = _parse_ipv6(skb, data, n, off)
    else:
        return
    if off >= 0:
        _parse_transport(skb, data, n, off)


def _llc_protocol(data: Any, n: int, off: int) -> int:
    """The protocol of an 802.3 length frame whose payload starts at ``off``.

    As eth_type_trans: a payload starting 0xFFFF is "raw" 802.3 (Novell IPX), anything else
    is 802.2 LLC.
    """
    if off + 2 <= n and data[off] == 0xFF and data[off + 1] == 0xFF:
        return ETH_P_802_3
    return ETH_P_802_2


def _parse_ethernet(skb: Skb, data: Any, n: int) -> int:
    if n < 14:
        skb.error = "truncated Ethernet header at offset 0"
        return -1
    dst, src, ethertype = _ETH_HDR.unpack_from(data)
    skb.eth_dst, skb.eth_src = dst, src
    if dst[0] & 1:
        skb.pkt_type = PACKET_BROADCAST if dst == _BROADCAST_MAC else PACKET_MULTICAST
    if ethertype < _ETH_P_802_3_MIN:
        ethertype = _llc_protocol(data, n, 14)
    skb.protocol = ethertype
    return 14


def _parse_linux_sll(skb: Skb, data: Any, n: int) -> int:
    # packet type, ARPHRD, address length, 8 address bytes, then the protocol.
    if n < 16:
        skb.error = "truncated LINUX_SLL header at offset 0"
        return -1
    skb.protocol = _U16.unpack_from(data, 14)[0]
    return 16


def _parse_linux_sll2(skb: Skb, data: Any, n: int) -> int:
    # The protocol comes first: protocol, reserved, ifindex, ARPHRD, type, address length, address.
    if n < 20:
        skb.error = "truncated LINUX_SLL2 header at offset 0"
        return -1
    skb.protocol = _U16.unpack_from(data, 0)[0]
    return 20


def _family_protocol(family: int) -> int:
    if family == _AF_INET:
        return ETH_P_IP
    return ETH_P_IPV6 if family in _AF_INET6 else 0


def _parse_null(skb: Skb, data: Any, n: int) -> int:
    # The family is in the capturing host's byte order, which the file does not record.
    # Families are small, so a value with high bits set must be the other byte order.
    if n < 4:
        skb.error = "truncated NULL header at offset 0"
        return -1
    family = _U32LE.unpack_from(data)[0]
    if family > 0xFFFF:
        family = _U32.unpack_from(data)[0]
    skb.protocol = _family_protocol(family)
    return 4


def _parse_loop(skb: Skb, data: Any, n: int) -> int:
    if n < 4:
        skb.error = "truncated LOOP header at offset 0"
        return -1
    skb.protocol = _family_protocol(_U32.unpack_from(data)[0])
    return 4


def _parse_raw(skb: Skb, data: Any, n: int) -> int:
    if n < 1:
        skb.error = "truncated IP header at offset 0"
        return -1
    version = data[0] >> 4
    if version == 4:
        skb.protocol = ETH_P_IP
    elif version == 6:
        skb.protocol = ETH_P_IPV6
    else:
        skb.error = f"unknown IP version {version}"
    return 0


def _parse_ipv4_link(skb: Skb, data: Any, n: int) -> int:
    skb.protocol = ETH_P_IP
    return 0


def _parse_ipv6_link(skb: Skb, data: Any, n: int) -> int:
    skb.protocol = ETH_P_IPV6
    return 0


# Link-layer parsers: set ``protocol`` (and the Ethernet fields), return the payload offset.
_LINK_PARSERS: Final = {
    LINKTYPE_ETHERNET: _parse_ethernet,
    LINKTYPE_LINUX_SLL: _parse_linux_sll,
    LINKTYPE_LINUX_SLL2: _parse_linux_sll2,
    LINKTYPE_NULL: _parse_null,
    LINKTYPE_LOOP: _parse_loop,
    LINKTYPE_RAW: _parse_raw,
    LINKTYPE_IPV4: _parse_ipv4_link,
    LINKTYPE_IPV6: _parse_ipv6_link,
}


def _parse_vlans(skb: Skb, data: Any, n: int, off: int) -> int:
    """Walk the VLAN tags at ``off``; set ``vlans`` and ``l3_protocol``; return the L3 offset.

    The tag's TPID is the type field in front of it, so for any link type whose protocol is a
    TPID the tag is 2 bytes of TCI and then the next type.
    """
    ethertype = skb.protocol
    if ethertype not in _VLAN_TPIDS:
        skb.l3_protocol = ethertype
        return off
    tags = []
    while ethertype in _VLAN_TPIDS:
        if len(tags) == VLAN_MAX_DEPTH:
            skb.error = f"more than {VLAN_MAX_DEPTH} VLAN tags"
            off = -1
            break
        if off + 4 > n:
            skb.error = f"truncated VLAN tag at offset {off}"
            off = -1
            break
        tci, inner = _U16X2.unpack_from(data, off)
        tags.append((ethertype, tci & 0x0FFF))
        ethertype = inner
        off += 4
    else:
        if ethertype < _ETH_P_802_3_MIN:  # as vlan_set_encap_proto: 802.3 inside the tag
            ethertype = _llc_protocol(data, n, off)
    skb.vlans = tuple(tags)
    skb.l3_protocol = ethertype
    return off


def _parse_ipv4(skb: Skb, data: Any, n: int, off: int) -> int:
    """Parse the IPv4 header at ``off``; return the transport offset or -1."""
    if off + 20 > n:
        skb.error = f"truncated IPv4 header at offset {off}"
        return -1
    version_ihl, frag, proto, src, dst = _IPV4_HDR.unpack_from(data, off)
    if version_ihl >> 4 != 4:
        skb.error = f"bad IPv4 version {version_ihl >> 4}"
        return -1
    ihl = version_ihl & 0x0F
    if ihl < 5:
        skb.error = f"bad IPv4 IHL {ihl}"
        return -1
    skb.ip_version = 4
    skb.src, skb.dst = src, dst
    skb.ip_proto = proto
    skb.depth = _L3
    frag_offset = (frag & 0x1FFF) << 3
    skb.is_fragment = bool(frag & 0x2000) or frag_offset != 0
    skb.frag_offset = frag_offset
    thoff = off + 4 * ihl
    if thoff > n:
        skb.error = f"truncated IPv4 options at offset {off + 20}"
        return -1
    if frag_offset:  # a later fragment: what follows is payload, not a transport header
        return -1
    skb.transport_offset = thoff
    return thoff


def _parse_ipv6(skb: Skb, data: Any, n: int, off: int) -> int:
    """Parse the IPv6 header at ``off`` and walk its extension headers; return the
    transport offset or -1."""
    if off + 40 > n:
        skb.error = f"truncated IPv6 header at offset {off}"
        return -1
    version, nexthdr, src, dst = _IPV6_HDR.unpack_from(data, off)
    if version >> 4 != 6:
        skb.error = f"bad IPv6 version {version >> 4}"
        return -1
    skb.ip_version = 6
    skb.src, skb.dst = src, dst
    skb.depth = _L3
    pos = off + 40
    for _ in range(IPV6_MAX_EXT_HEADERS):
        unit = _IPV6_EXT_UNIT.get(nexthdr)
        if unit is None:
            break
        size = unit * data[pos + 1] + 8 if pos + 8 <= n else 8
        if pos + size > n:
            skb.ip_proto = nexthdr
            skb.error = f"truncated IPv6 extension header {nexthdr} at offset {pos}"
            return -1
        if nexthdr == _IPPROTO_FRAGMENT:
            frag_offset = _U16.unpack_from(data, pos + 2)[0] & 0xFFF8
            skb.is_fragment = True
            skb.frag_offset = frag_offset
            if frag_offset:  # a later fragment: no transport header follows
                skb.ip_proto = data[pos]
                return -1
        nexthdr = data[pos]
        pos += size
    else:
        if nexthdr in _IPV6_EXT_UNIT:
            skb.ip_proto = nexthdr
            skb.error = "IPv6 extension header chain too long"
            return -1
    skb.ip_proto = nexthdr
    skb.transport_offset = pos
    return pos


def _parse_transport(skb: Skb, data: Any, n: int, off: int) -> None:
    header = _L4_HEADERS.get(skb.ip_proto)
    if header is None:  # a protocol we do not look into: parsing ends, successfully, at L3
        return
    name, size, has_ports = header
    if off + size > n:
        skb.error = f"truncated {name} header at offset {off}"
        return
    if has_ports:
        skb.sport, skb.dport = _U16X2.unpack_from(data, off)
        if skb.ip_proto == _IPPROTO_TCP:
            skb.tcp_flags = _U16.unpack_from(data, off + 12)[0] & _TCP_FLAGS_MASK
    else:
        skb.icmp_type = data[off]
        skb.icmp_code = data[off + 1]
    skb.depth = _L4


# --- the flow hash ----------------------------------------------------------------------------
#
# See "The flow hash" in the module docstring.  The multipliers are odd 64-bit constants with
# well-spread bits (the golden ratio's, xxHash's and splitmix64's); _flow_hash_np below is the
# same arithmetic on columns, and the tests check both against a plain reimplementation.

_M32: Final = 0xFFFFFFFF
_M64: Final = 0xFFFFFFFFFFFFFFFF
_HASH_X: Final = 0x9E3779B97F4A7C15  # min(a, b)
_HASH_Y: Final = 0xC2B2AE3D27D4EB4F  # max(a, b)
_HASH_M: Final = 0x165667B19E3779F9  # min(p, q) << 16 | max(p, q)
_HASH_K: Final = 0x27D4EB2F165667C5  # the IP protocol
_HASH_MIX: Final = 0xBF58476D1CE4E5B9  # splitmix64's first finalizer multiplier


def _flow_hash(skb: Skb) -> int:
    src, dst = skb.src, skb.dst
    if src is None or dst is None:
        return 0
    if len(src) == 4:
        a, b = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
    else:  # IPv6: the XOR of each address's four words
        s0, s1, s2, s3, d0, d1, d2, d3 = _U32X8.unpack(src + dst)
        a, b = s0 ^ s1 ^ s2 ^ s3, d0 ^ d1 ^ d2 ^ d3
    if a > b:
        a, b = b, a
    if skb.is_fragment:
        m = 0
    else:
        p, q = skb.sport, skb.dport
        m = (p << 16) | q if p <= q else (q << 16) | p
    v = (a * _HASH_X + b * _HASH_Y + m * _HASH_M + skb.ip_proto * _HASH_K) & _M64
    v ^= v >> 29
    v = (v * _HASH_MIX) & _M64
    return (v ^ (v >> 32)) & _M32


# --- the batch --------------------------------------------------------------------------------

# How much of the tag stack / extension chain numpy walks; frames needing more go per frame.
_BATCH_VLAN_TAGS: Final = 2
_BATCH_IPV6_EXT_HEADERS: Final = 4

# Link types as small "kinds", so per-kind facts are tables indexed by kind.
_KIND_OTHER, _KIND_ETH, _KIND_SLL, _KIND_SLL2, _KIND_NULL, _KIND_LOOP = 0, 1, 2, 3, 4, 5
_KIND_RAW, _KIND_IPV4, _KIND_IPV6, _KIND_COUNT = 6, 7, 8, 9
_LINKTYPE_KINDS: Final = {
    LINKTYPE_ETHERNET: _KIND_ETH,
    LINKTYPE_LINUX_SLL: _KIND_SLL,
    LINKTYPE_LINUX_SLL2: _KIND_SLL2,
    LINKTYPE_NULL: _KIND_NULL,
    LINKTYPE_LOOP: _KIND_LOOP,
    LINKTYPE_RAW: _KIND_RAW,
    LINKTYPE_IPV4: _KIND_IPV4,
    LINKTYPE_IPV6: _KIND_IPV6,
}
_LINKTYPE_TABLE_SIZE: Final = 512  # linktypes at or above this (or negative) are "other"
_KIND_OF_LINKTYPE = np.zeros(_LINKTYPE_TABLE_SIZE + 1, dtype=np.int64)  # [512], [-1]: "other"
for _lt, _kind in _LINKTYPE_KINDS.items():
    _KIND_OF_LINKTYPE[_lt] = _kind
#                         other ETH SLL SLL2 NULL LOOP RAW IPV4 IPV6
_NEVER: Final = 1 << 40  # more bytes than any frame has
_LINK_HDR_LEN = np.array([_NEVER, 14, 16, 20, 4, 4, 1, 0, 0], dtype=np.int64)  # bytes needed
_LINK_PAYLOAD = np.array([0, 14, 16, 20, 4, 4, 0, 0, 0], dtype=np.int64)  # L3 offset
_LINK_TYPE_POS = np.array([0, 12, 14, 0, 0, 0, 0, 0, 0], dtype=np.int64)  # u16 type field
_LINK_FIXED_PROTO = np.array([0, 0, 0, 0, 0, 0, 0, ETH_P_IP, ETH_P_IPV6], dtype=np.int64)
_HAS_TYPE_FIELD = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)

_IS_TPID = np.zeros(0x10000, dtype=bool)
_IS_TPID[list(_VLAN_TPIDS)] = True
_FAMILY_PROTO = np.zeros(32, dtype=np.int64)  # index: address family (clamped to 31)
_FAMILY_PROTO[_AF_INET] = ETH_P_IP
_FAMILY_PROTO[list(_AF_INET6)] = ETH_P_IPV6
_RAW_VERSION_PROTO = np.zeros(16, dtype=np.int64)
_RAW_VERSION_PROTO[4], _RAW_VERSION_PROTO[6] = ETH_P_IP, ETH_P_IPV6

_IS_EXT = np.zeros(256, dtype=bool)
_EXT_UNIT = np.zeros(256, dtype=np.int64)
for _proto, _unit in _IPV6_EXT_UNIT.items():
    _IS_EXT[_proto], _EXT_UNIT[_proto] = True, _unit

# Indexed by ip_proto + 1, so that -1 (no IP) is row 0.
_L4_SIZE = np.zeros(257, dtype=np.int64)
_L4_HAS_PORTS = np.zeros(257, dtype=bool)
for _proto, (_, _size, _ports) in _L4_HEADERS.items():
    _L4_SIZE[_proto + 1], _L4_HAS_PORTS[_proto + 1] = _size, _ports

# Prebuilt: a dtype given as a string is parsed again on every .view() (a few tenths of a µs).
_BE16: Final = np.dtype(">u2")
_BE32: Final = np.dtype(">u4")
_LE32: Final = np.dtype("<u4")

# The u32 words of an IPv6 header's addresses: src at 8..20, dst at 24..36.
_ADDRESS_WORDS = np.arange(8, 40, 4, dtype=np.int64)


class _FrameReader:
    """Big-endian loads at a per-frame offset, for every frame of a batch at once.

    ``u16(pos)`` gives, for each frame i, the u16 at byte ``pos[i]`` of frame i, in one gather
    over a byte-strided view of the rows.  Where the read would go past the frame's captured
    length the value is garbage: callers mask it with :meth:`has`.  A read that :meth:`has`
    allows never leaves its row, since ``offset + length <= frame size``.

    Gathers index the views (``view[idx]``) rather than ``view.take(idx)``: take copies a
    strided source whole first, which for a pool-sized batch is megabytes per load.
    """

    def __init__(
        self, rows: np.ndarray, offset: np.ndarray, length: np.ndarray, uniform: int | None
    ) -> None:
        n, frame_size = rows.shape
        # With one offset for every frame, a load at a fixed position is a strided view of
        # the rows (one numpy call) rather than a gather (five).
        self._rows = rows if uniform is not None and rows.strides[1] == 1 else None
        self._uniform = uniform or 0
        self._width = frame_size
        flat = np.ascontiguousarray(rows).reshape(-1)
        if flat.size < 4:  # too small for the u32 view; pad a copy (only degenerate pools)
            flat = np.concatenate([flat, np.zeros(4, dtype=np.uint8)])
        self.base = np.arange(n, dtype=np.int64) * frame_size + offset
        self.length = length
        self._u8 = flat

    # The unaligned views cost a microsecond each, and most batches need one or two.
    @cached_property
    def _be16(self) -> np.ndarray:
        return _unaligned_view(self._u8, ">u2")

    @cached_property
    def _be32(self) -> np.ndarray:
        return _unaligned_view(self._u8, ">u4")

    @cached_property
    def _le32(self) -> np.ndarray:
        return _unaligned_view(self._u8, "<u4")

    def has(self, pos: np.ndarray | int, size: np.ndarray | int) -> np.ndarray:
        """Whether bytes ``pos .. pos+size`` of each frame were captured."""
        return pos + size <= self.length

    def u8(self, pos: np.ndarray | int) -> np.ndarray:
        if type(pos) is int and self._fixed(pos, 1):
            return self._fixed_load(pos, 1, np.uint8)
        return self._load(self._u8, pos)

    def u16(self, pos: np.ndarray | int) -> np.ndarray:
        if type(pos) is int and self._fixed(pos, 2):
            return self._fixed_load(pos, 2, _BE16)
        return self._load(self._be16, pos)

    def u32(self, pos: np.ndarray | int) -> np.ndarray:
        if type(pos) is int and self._fixed(pos, 4):
            return self._fixed_load(pos, 4, _BE32)
        return self._load(self._be32, pos)

    def u32le(self, pos: np.ndarray | int) -> np.ndarray:
        if type(pos) is int and self._fixed(pos, 4):
            return self._fixed_load(pos, 4, _LE32)
        return self._load(self._le32, pos)

    def _fixed(self, pos: int, size: int) -> bool:
        return self._rows is not None and pos >= 0 and self._uniform + pos + size <= self._width

    def _fixed_load(self, pos: int, size: int, dtype: Any) -> np.ndarray:
        assert self._rows is not None
        start = self._uniform + pos
        return self._rows[:, start : start + size].view(dtype)[:, 0].astype(np.int64)

    def u32_words(self, pos: np.ndarray, words: np.ndarray) -> np.ndarray:
        """``[n, len(words)]`` uint32: the u32 at ``pos[i] + words[j]`` of each frame i."""
        index = (self.base + pos)[:, None] + words
        return self._be32[self._clamp(index, self._be32)].astype(np.uint32)

    def _load(self, view: np.ndarray, pos: np.ndarray | int) -> np.ndarray:
        return view[self._clamp(self.base + pos, view)].astype(np.int64)

    @staticmethod
    def _clamp(index: np.ndarray, view: np.ndarray) -> np.ndarray:
        # Only reads that has() rejects can fall outside the pool; keep them inside it.
        return np.minimum(np.maximum(index, 0), view.size - 1)


def _unaligned_view(flat: np.ndarray, dtype: str) -> np.ndarray:
    """A view of ``flat`` with one ``dtype`` item starting at every byte (stride 1)."""
    width = np.dtype(dtype).itemsize
    return np.ndarray((flat.size - width + 1,), dtype=dtype, buffer=flat, strides=(1,))


def _column(values: np.ndarray | int, n: int, dtype: Any) -> np.ndarray:
    """``values`` (shape ``[n]``, or a scalar, which broadcasts) as an ``[n]`` ``dtype`` array."""
    array = np.asarray(values)
    if array.ndim == 0:
        return np.full(n, array, dtype=dtype)
    return array.astype(dtype, copy=False)


class _Column:
    """A column of :class:`SkbBatch`: computed by its stage, with its siblings, on first read."""

    def __init__(self, stage: str, doc: str) -> None:
        self.stage = stage
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, batch: SkbBatch | None, owner: type | None = None) -> Any:
        if batch is None:
            return self
        column = batch._cols.get(self.name)
        if column is None:
            getattr(batch, self.stage)()
            column = batch._cols[self.name]
        return column


class _Given:
    """A per-frame argument of :class:`SkbBatch` as an int64 ``[n]`` column, made on first read.

    The constructor keeps what the caller passed (often a uint16/uint32 field of a record
    array, or a scalar); converting all eight eagerly cost a numpy call each on every batch,
    and the fast path reads none of them.  The converted column is cached in the instance
    ``__dict__``, which shadows this (non-data) descriptor: later reads are plain attribute
    reads.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, batch: SkbBatch | None, owner: type | None = None) -> Any:
        if batch is None:
            return self
        given = batch._given[self.name]
        if given is None:  # wire_len not given: the captured length
            batch.__dict__[self.name] = column = batch.length
        else:
            batch.__dict__[self.name] = column = _column(given, batch._n, np.int64)
        return column


class _Layout(NamedTuple):
    """A frame layout whose every column the fast path reads at a fixed offset."""

    protocol: int  #: the EtherType (protocol and l3_protocol)
    version: int  #: ip_version
    head_mask: np.uint64  #: which bits of bytes 8..16 (EtherType, IP version...) must be
    head_value: np.uint64  #: what those bits must be
    frag_mask: np.uint64 | None  #: bits of bytes 16..24 that must be 0 (IPv4 MF, offset)
    proto_at: int  #: the IP protocol / next header byte
    addresses_at: int  #: the source address, the destination right after it
    transport_at: int  #: transport_offset, where the ports are
    need: np.ndarray  #: [256] bytes a frame needs, by protocol (huge: not a fast protocol)
    shortest: int  #: the fewest bytes any fast frame of this layout has


def _bytes_as(dtype: Any, hex_bytes: str) -> Any:
    """The ``dtype`` scalar whose bytes in memory are ``hex_bytes``: what a native-order view
    of frame bytes holds where the frame has those bytes, whatever the host's byte order.
    (Native views: a big-endian view makes every numpy call on it byte-swap, and slower.)"""
    return np.frombuffer(bytes.fromhex(hex_bytes), dtype=dtype)[0]


def _layout_need(transport_at: int) -> np.ndarray:
    need = np.full(256, _NEVER, dtype=np.int64)
    need[_IPPROTO_UDP] = transport_at + 8
    need[_IPPROTO_TCP] = transport_at + 20
    return need


# Ethernet (no tag), IPv4 with IHL 5, neither MF nor a fragment offset (DF is fine), UDP/TCP.
_FAST_IPV4: Final = _Layout(
    protocol=ETH_P_IP,
    version=4,
    head_mask=_bytes_as(np.uint64, "00000000 ffff ff 00"),  # EtherType, version and IHL
    head_value=_bytes_as(np.uint64, "00000000 0800 45 00"),
    frag_mask=_bytes_as(np.uint64, "0000 0000 3fff 0000"),  # MF and the fragment offset
    proto_at=14 + 9,
    addresses_at=14 + 12,
    transport_at=14 + 20,
    need=_layout_need(14 + 20),
    shortest=14 + 20 + 8,
)
# Ethernet (no tag), IPv6 whose next header is UDP/TCP (no extension header).
_FAST_IPV6: Final = _Layout(
    protocol=ETH_P_IPV6,
    version=6,
    head_mask=_bytes_as(np.uint64, "00000000 ffff f0 00"),  # EtherType and version
    head_value=_bytes_as(np.uint64, "00000000 86dd 60 00"),
    frag_mask=None,
    proto_at=14 + 6,
    addresses_at=14 + 8,
    transport_at=14 + 40,
    need=_layout_need(14 + 40),
    shortest=14 + 40 + 8,
)
# A batch with at most this many frames off the layout still takes the fast path, and those
# frames get the per-frame parser's fields.  Measured (256 IPv4/UDP frames, some replaced by
# ARP/ICMP/VLAN/IPv6 ones): a patched frame costs 5-6 µs; the general path costs about 170 µs
# more than the fast one for the hash, 110 µs more for the ports, 35 µs more for the link-layer
# columns alone.  So at the limit a batch that reads only ``protocol`` costs about what the
# general path would, and one that reads the hash or the ports is 2-3 times faster.
_FAST_PATCH_LIMIT: Final = 8


class SkbBatch:
    """The skb fields of a batch of frames, one numpy column per field.

    ``rows`` is ``[n, frame_size]`` uint8, one frame pool slot per row (e.g. ``pool[idx]``);
    frame i is ``rows[i, offset[i] : offset[i] + length[i]]``.  Bytes of a row outside that
    range are never read.  The per-frame metadata arrays may be scalars, which broadcast.

    Columns are computed on first read and cached; each equals, for every frame, the field
    of the same name of ``self.skb(i)``, malformed frames included.  The given arguments are
    attributes too (``offset``, ``length``, ``wire_len``, ``linktype``, ``ifindex``,
    ``rx_queue``, ``ts_ns``, ``index``), as int64 ``[n]`` columns made on first read.
    """

    COLUMNS: Final = (
        "protocol",
        "l3_protocol",
        "vlan_count",
        "network_offset",
        "ip_version",
        "ip_proto",
        "is_fragment",
        "transport_offset",
        "sport",
        "dport",
        "hash",
        "depth",
    )

    protocol = _Column("_link_stage", "uint16: Skb.protocol")
    l3_protocol = _Column("_link_stage", "uint16: Skb.l3_protocol")
    vlan_count = _Column("_link_stage", "uint8: len(Skb.vlans)")
    network_offset = _Column("_link_stage", "int32: Skb.network_offset (-1: none)")
    ip_version = _Column("_ip_stage", "uint8: Skb.ip_version (0, 4 or 6)")
    ip_proto = _Column("_ip_stage", "int16: Skb.ip_proto (-1: not IP)")
    is_fragment = _Column("_ip_stage", "bool: Skb.is_fragment")
    transport_offset = _Column("_ip_stage", "int32: Skb.transport_offset (-1: none)")
    sport = _Column("_transport_stage", "uint16: Skb.sport")
    dport = _Column("_transport_stage", "uint16: Skb.dport")
    depth = _Column("_transport_stage", "uint8: Skb.depth, a ParseDepth value")
    hash = _Column("_hash_stage", "uint32: Skb.hash")

    offset = _Given()
    length = _Given()
    wire_len = _Given()
    linktype = _Given()
    ifindex = _Given()
    rx_queue = _Given()
    ts_ns = _Given()
    index = _Given()

    def __init__(
        self,
        rows: np.ndarray,
        offset: np.ndarray,
        length: np.ndarray,
        *,
        wire_len: np.ndarray | int | None = None,
        linktype: np.ndarray | int = LINKTYPE_ETHERNET,
        ifindex: np.ndarray | int = 0,
        rx_queue: np.ndarray | int = 0,
        ts_ns: np.ndarray | int = 0,
        index: np.ndarray | int = -1,
    ) -> None:
        if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.dtype != np.uint8:
            raise ValueError("rows must be a 2-D uint8 array")
        n, frame_size = rows.shape
        self.rows = rows
        self._n = n
        # What the caller gave, as given (see _Given); only the shapes are checked now.
        given: dict[str, Any] = {
            "offset": np.asarray(offset),
            "length": np.asarray(length),
            "wire_len": wire_len,
            "linktype": linktype,
            "ifindex": ifindex,
            "rx_queue": rx_queue,
            "ts_ns": ts_ns,
            "index": index,
        }
        for name, value in given.items():
            if type(value) is not np.ndarray:
                if value is None or type(value) is int:
                    continue
                given[name] = value = np.asarray(value)
            if value.ndim and value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), not {value.shape}")
        self._given = given
        self._cols: dict[str, np.ndarray] = {}
        self._reader: _FrameReader | None = None
        self._skbs: dict[int, Skb] = {}
        self._layout: _Layout | None = None
        self._odd: list[int] = []  # with _layout: the frames off it, patched per frame
        self._classified = False
        # Checking offset + length <= frame size costs a numpy call or two whatever the
        # batch; the same reductions tell the fast path whether the offset is uniform (the
        # engine's rows start at the packets: offset 0).
        self._uniform_offset: int | None = None
        self._ethernet: bool | None = None  # every frame's link type is Ethernet
        if n:
            self._check_bounds(given["offset"], given["length"], frame_size)

    def _check_bounds(self, offset: np.ndarray, length: np.ndarray, frame_size: int) -> None:
        # np.count_nonzero and ufunc.reduce: a.any() and a.max() add a Python wrapper each.
        if offset.dtype.kind not in "iu" or length.dtype.kind not in "iu":
            offset, length = self.offset, self.length  # as int64: floats, bools, objects
        if offset.ndim == 0:
            low = high = int(offset)
        elif not np.count_nonzero(offset):  # the engine's rows start at the packets
            low = high = 0
        else:
            low, high = int(np.minimum.reduce(offset)), int(np.maximum.reduce(offset))
        if low < 0 or (length.dtype.kind == "i" and np.minimum.reduce(length, axis=None) < 0):
            raise ValueError("offset and length must be >= 0")
        if low == high:
            end = low + int(np.maximum.reduce(length, axis=None))
            self._uniform_offset = low
        else:
            end = int(np.maximum.reduce(self.offset + self.length))
        if end > frame_size:
            raise ValueError(f"offset + length must be <= frame size {frame_size}")

    def __len__(self) -> int:
        return self._n

    def data(self, i: int) -> memoryview:
        """The captured bytes of frame ``i`` (a view into ``rows``)."""
        start = self._given_at("offset", i)
        return self.rows[i, start : start + self._given_at("length", i)].data

    def skb(self, i: int) -> Skb:
        """Frame ``i`` as an :class:`Skb` (its ``data`` is a view into ``rows``)."""
        at = self._given_at
        return Skb(
            self.data(i),
            wire_len=at("wire_len", i),
            linktype=at("linktype", i),
            ifindex=at("ifindex", i),
            rx_queue=at("rx_queue", i),
            ts_ns=at("ts_ns", i),
            index=at("index", i),
        )

    def _given_at(self, name: str, i: int) -> int:
        """``int(getattr(self, name)[i])`` without making the column (see _Given)."""
        given = self._given[name]
        if given is None:
            given = self._given["length"]  # wire_len
        if not isinstance(given, np.ndarray) or given.ndim == 0:
            return int(given)
        return int(given[i])

    def _read(self) -> _FrameReader:
        if self._reader is None:
            self._reader = _FrameReader(self.rows, self.offset, self.length, self._uniform_offset)
        return self._reader

    def _patch(self, frames: list[int], names: tuple[str, ...]) -> None:
        """Overwrite columns ``names`` of ``frames`` with the per-frame parser's fields."""
        for i in frames:
            skb = self._skbs.get(i)
            if skb is None:  # the parsed fields depend on the bytes and link type only
                linktype = self._given_at("linktype", i)
                skb = self._skbs[i] = Skb(self.data(i), linktype=linktype)
            for name in names:
                self._cols[name][i] = getattr(skb, name)

    # --- the fast path: every frame (but a few) has one layout --------------------------------
    #
    # Ethernet/IPv4/UDP-or-TCP without options or fragmentation (or Ethernet/IPv6/UDP-or-TCP
    # without extension headers) is most traffic.  For a batch of those, every column is a
    # constant or a fixed-offset read: one strided view of the rows per field (no gather, no
    # copy), and a numpy call or two per column instead of the general stages' dozens.

    def _fast_layout(self) -> _Layout | None:
        """The layout every frame but ``self._odd`` has, or None for the general path.

        The first call decides, in a handful of numpy calls that stop at the first
        disqualifying finding; later calls return the decision.
        """
        if not self._classified:
            self._classified = True
            self._layout = self._classify()
        return self._layout

    def _classify(self) -> _Layout | None:
        rows, o = self.rows, self._uniform_offset
        if o is None or rows.strides[1] != 1:  # also: the empty batch (no offset)
            return None
        width = rows.shape[1] - o  # no frame is longer
        if width < _FAST_IPV4.shortest:
            return None
        # Guess the layout from the first frame's EtherType (or, if neither, the last's).
        layout = _FAST_IPV4
        if width >= _FAST_IPV6.shortest:
            first = rows[0, o + 12]
            if first != ETH_P_IP >> 8 and first != ETH_P_IPV6 >> 8:
                first = rows[-1, o + 12]
            if first == ETH_P_IPV6 >> 8:
                layout = _FAST_IPV6
        if width < layout.shortest:
            return None
        # The link type, then bytes 12..15 (and IPv4's 20..22) of every frame against the
        # layout's, through u64 views of bytes 8..24 (aligned in the engine's rows) taken 1-D
        # (numpy runs 2-D ones with the short axis innermost, several times slower), then
        # the protocol and length.  Each finding is counted
        # (np.count_nonzero costs a fraction of a ufunc call), and only a batch with some
        # frames off the layout pays for combining them.
        linktype = self._given["linktype"]
        other: Any = False
        if np.ndim(linktype) == 0:
            if linktype != LINKTYPE_ETHERNET:
                return None
            count = 0
        else:
            other = linktype != LINKTYPE_ETHERNET
            count = np.count_nonzero(other)
            self._ethernet = not count
        head = rows[:, o + 8 : o + 24].view(np.uint64)
        wrong = head[:, 0] & layout.head_mask
        wrong ^= layout.head_value
        if layout.frag_mask is not None:
            wrong |= head[:, 1] & layout.frag_mask
        count += np.count_nonzero(wrong)
        if count > _FAST_PATCH_LIMIT:  # mixed traffic usually stops here
            return None
        short = layout.need.take(rows[:, o + layout.proto_at]) > self._given["length"]
        count += np.count_nonzero(short)
        if count:
            odd = np.flatnonzero((wrong != 0) | short | other).tolist()
            if len(odd) > _FAST_PATCH_LIMIT:  # the counts overlap: count >= len(odd)
                return None
            self._odd = odd
        return layout

    def _fast_view(self, at: int, size: int, dtype: Any) -> np.ndarray:
        """``[n, size // itemsize]``: bytes ``at .. at+size`` of every frame, as ``dtype``."""
        o = self._uniform_offset
        assert o is not None  # Invariant: the fast path only runs with a uniform offset
        return self.rows[:, o + at : o + at + size].view(dtype)

    def _fast_byte(self, at: int) -> np.ndarray:
        """``[n]``: byte ``at`` of every frame."""
        o = self._uniform_offset
        assert o is not None
        return self.rows[:, o + at]

    def _fast_link(self, layout: _Layout) -> None:
        n = self._n
        protocol = np.full(n, layout.protocol, dtype=np.uint16)
        self._cols.update(
            protocol=protocol,
            l3_protocol=protocol.copy(),
            vlan_count=np.zeros(n, dtype=np.uint8),
            network_offset=np.full(n, 14, dtype=np.int32),
        )
        self._patch(self._odd, ("protocol", "l3_protocol", "vlan_count", "network_offset"))

    def _fast_ip(self, layout: _Layout) -> None:
        n = self._n
        self._cols.update(
            ip_version=np.full(n, layout.version, dtype=np.uint8),
            ip_proto=self._fast_byte(layout.proto_at).astype(np.int16),
            is_fragment=np.zeros(n, dtype=bool),
            transport_offset=np.full(n, layout.transport_at, dtype=np.int32),
        )
        self._patch(self._odd, ("ip_version", "ip_proto", "is_fragment", "transport_offset"))

    def _fast_transport(self, layout: _Layout) -> None:
        ports = self._fast_view(layout.transport_at, 4, _BE16)
        self._cols.update(
            sport=ports[:, 0].astype(np.uint16),
            dport=ports[:, 1].astype(np.uint16),
            depth=np.full(self._n, _L4, dtype=np.uint8),
        )
        self._patch(self._odd, ("sport", "dport", "depth"))

    def _fast_hash(self, layout: _Layout) -> None:
        if layout.version == 4:
            addresses = self._fast_view(layout.addresses_at, 8, _BE32).T
        else:
            # The XOR of each address's four words.  XOR works on bytes, so it runs on native
            # views: each address's two u64 halves, then the result's two u32 halves; the
            # bytes left are the XOR's big-endian bytes.
            halves = self._fast_view(layout.addresses_at, 32, np.uint64)
            folded = np.empty((2, self._n), dtype=np.uint64)
            np.bitwise_xor(halves[:, 0::2].T, halves[:, 1::2].T, out=folded)
            words = folded.view(np.uint32).reshape(2, self._n, 2)
            addresses = (words[:, :, 0] ^ words[:, :, 1]).view(_BE32)
        self._cols["hash"] = _flow_hash_np(
            addresses,
            self._fast_view(layout.transport_at, 4, _BE16).T,
            self._fast_byte(layout.proto_at),
        )
        self._patch(self._odd, ("hash",))

    # --- the general path: each stage mirrors a per-frame parser stage, on every frame -------
    #
    # Work for a link type, header or tag depth that no frame of the batch has is skipped: the
    # cost is per numpy call, and most batches hold one link type and few tags.

    def _link_stage(self) -> None:
        """protocol, l3_protocol, vlan_count, network_offset (and the private _link_ok)."""
        layout = self._fast_layout()
        if layout is not None:
            self._fast_link(layout)
            return
        rd = self._read()
        if self._all_ethernet():  # most batches: a dozen numpy calls fewer
            link_ok = rd.has(0, 14)
            proto = rd.u16(12)
            length_field = proto < _ETH_P_802_3_MIN
            if length_field.any():
                proto = np.where(length_field, self._llc_protocol(14), proto)
            self._link_finish(proto, 14, link_ok)
            return
        kind = self._link_kind()
        present = np.bincount(kind, minlength=_KIND_COUNT).tolist()
        link_ok = rd.has(0, _LINK_HDR_LEN[kind])
        proto = _LINK_FIXED_PROTO[kind]
        if present[_KIND_ETH] or present[_KIND_SLL] or present[_KIND_SLL2]:
            type16 = rd.u16(_LINK_TYPE_POS[kind])
            proto = np.where(_HAS_TYPE_FIELD[kind], type16, proto)
            length_field = (kind == _KIND_ETH) & (type16 < _ETH_P_802_3_MIN)
            if length_field.any():
                proto = np.where(length_field, self._llc_protocol(14), proto)
        if present[_KIND_NULL] or present[_KIND_LOOP]:
            family, family_le = rd.u32(0), rd.u32le(0)
            family = np.where((kind == _KIND_NULL) & (family_le <= 0xFFFF), family_le, family)
            is_family = (kind == _KIND_NULL) | (kind == _KIND_LOOP)
            proto = np.where(is_family, _FAMILY_PROTO[np.minimum(family, 31)], proto)
        if present[_KIND_RAW]:
            proto = np.where(kind == _KIND_RAW, _RAW_VERSION_PROTO[rd.u8(0) >> 4], proto)
        self._link_finish(proto, _LINK_PAYLOAD[kind], link_ok)

    def _link_finish(self, proto: np.ndarray, payload: Any, link_ok: np.ndarray) -> None:
        """The VLAN walk and the link stage's columns, from each frame's link protocol and
        payload offset (meaningless where not ``link_ok``)."""
        proto = np.where(link_ok, proto, 0)
        l3, off, tags, bad_tags, slow = self._walk_vlans(proto, payload, link_ok)
        self._cols.update(
            protocol=proto.astype(np.uint16),
            l3_protocol=l3.astype(np.uint16),
            vlan_count=tags.astype(np.uint8),
            network_offset=np.where(link_ok & ~bad_tags, off, -1).astype(np.int32),
            _link_ok=link_ok,
        )
        self._patch(np.flatnonzero(slow).tolist(), ("l3_protocol", "vlan_count", "network_offset"))

    def _all_ethernet(self) -> bool:
        """Whether every frame's link type is Ethernet (_classify may have found out)."""
        if self._ethernet is None:
            linktype = self._given["linktype"]
            if np.ndim(linktype) == 0:
                self._ethernet = bool(linktype == LINKTYPE_ETHERNET)
            else:
                self._ethernet = not np.count_nonzero(linktype != LINKTYPE_ETHERNET)
        return self._ethernet

    def _link_kind(self) -> np.ndarray:
        """Each frame's link type as a _KIND_*."""
        linktype = self._given["linktype"]
        if np.ndim(linktype) == 0:
            known = 0 <= linktype < _LINKTYPE_TABLE_SIZE
            return np.full(self._n, _KIND_OF_LINKTYPE[int(linktype) if known else -1])
        if linktype.dtype.kind == "u":  # the engine's: one call fewer (a uint8 holds no 512)
            return _KIND_OF_LINKTYPE[np.minimum(linktype, np.uint32(_LINKTYPE_TABLE_SIZE))]
        lt = self.linktype
        return _KIND_OF_LINKTYPE[np.where((lt >= 0) & (lt < _LINKTYPE_TABLE_SIZE), lt, -1)]

    def _llc_protocol(self, pos: np.ndarray | int) -> np.ndarray:
        rd = self._read()
        raw = rd.has(pos, 2) & (rd.u16(pos) == 0xFFFF)
        return np.where(raw, ETH_P_802_3, ETH_P_802_2)

    def _walk_vlans(
        self, proto: np.ndarray, off: np.ndarray, link_ok: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Up to _BATCH_VLAN_TAGS tags; returns l3, offset, tag count, truncated, needs-more."""
        tagged = link_ok & _IS_TPID[proto]
        if not tagged.any():
            return proto, off, np.zeros(len(self), np.int64), tagged, tagged
        rd = self._read()
        l3, tags, truncated = proto, np.zeros(len(self), dtype=np.int64), tagged & False
        for _ in range(_BATCH_VLAN_TAGS):
            fits = tagged & rd.has(off, 4)
            truncated |= tagged & ~fits
            l3 = np.where(fits, rd.u16(off + 2), l3)
            off = np.where(fits, off + 4, off)
            tags += fits
            tagged = fits & _IS_TPID[l3]
            if not tagged.any():
                break
        inner_llc = (tags > 0) & ~tagged & (l3 < _ETH_P_802_3_MIN)
        if inner_llc.any():
            l3 = np.where(inner_llc, self._llc_protocol(off), l3)
        return l3, off, tags, truncated, tagged

    def _ip_stage(self) -> None:
        """ip_version, ip_proto, is_fragment, transport_offset."""
        layout = self._fast_layout()
        if layout is not None:
            self._fast_ip(layout)
            return
        rd = self._read()
        off = self.network_offset.astype(np.int64)
        l3 = self.l3_protocol
        first = rd.u8(off)
        version, ihl = first >> 4, first & 0x0F
        v4 = (l3 == ETH_P_IP) & (off >= 0) & rd.has(off, 20) & (version == 4) & (ihl >= 5)
        v6 = (l3 == ETH_P_IPV6) & (off >= 0) & rd.has(off, 40) & (version == 6)
        # Bytes 6..9: IPv4 flags/fragment offset, TTL, protocol; IPv6 next header is byte 6.
        word = rd.u32(off + 6)
        frag, proto4, nexthdr = word >> 16, word & 0xFF, word >> 24

        later4 = (frag & 0x1FFF) != 0
        fragment = v4 & (later4 | ((frag & 0x2000) != 0))
        thoff4 = off + 4 * ihl
        transport = np.where(v4 & rd.has(thoff4, 0) & ~later4, thoff4, -1)
        proto = np.where(v4, proto4, -1)

        slow = None
        if v6.any():
            proto6, thoff6, fragment6, slow = self._walk_ipv6_ext(nexthdr, off + 40, v6)
            proto = np.where(v6, proto6, proto)
            transport = np.where(v6, thoff6, transport)
            fragment |= fragment6
        self._cols.update(
            ip_version=(4 * v4 + 6 * v6).astype(np.uint8),
            ip_proto=proto.astype(np.int16),
            is_fragment=fragment,
            transport_offset=transport.astype(np.int32),
        )
        if slow is not None:
            frames = np.flatnonzero(slow).tolist()
            self._patch(frames, ("ip_proto", "is_fragment", "transport_offset"))

    def _walk_ipv6_ext(
        self, nexthdr: np.ndarray, pos: np.ndarray, v6: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Up to _BATCH_IPV6_EXT_HEADERS headers; returns protocol, transport offset (-1 where
        the walk stopped early), fragment, needs-more."""
        rd = self._read()
        walking = v6 & _IS_EXT[nexthdr]
        fragment = stopped = walking & False
        for _ in range(_BATCH_IPV6_EXT_HEADERS):
            if not walking.any():
                break
            word = rd.u32(pos)  # next header, length, and the fragment header's offset word
            size = _EXT_UNIT[nexthdr] * ((word >> 16) & 0xFF) + 8
            fits = walking & rd.has(pos, size)
            frag = fits & (nexthdr == _IPPROTO_FRAGMENT)
            later = frag & ((word & 0xFFF8) != 0)
            fragment = fragment | frag
            stopped = stopped | (walking & ~fits) | later
            nexthdr = np.where(fits, word >> 24, nexthdr)
            advance = fits & ~later
            pos = np.where(advance, pos + size, pos)
            walking = advance & _IS_EXT[nexthdr]
        return nexthdr, np.where(stopped, -1, pos), fragment, walking

    def _transport_stage(self) -> None:
        """sport, dport, depth."""
        layout = self._fast_layout()
        if layout is not None:
            self._fast_transport(layout)
            return
        rd = self._read()
        thoff = self.transport_offset.astype(np.int64)
        row = self.ip_proto.astype(np.int64) + 1
        size = _L4_SIZE[row]
        parsed = (size > 0) & (thoff >= 0) & rd.has(thoff, size)
        with_ports = parsed & _L4_HAS_PORTS[row]
        ports = np.where(with_ports, rd.u32(thoff), 0)
        depth = np.where(self._cols["_link_ok"], _L2, _NONE)
        depth = np.where(self.ip_version > 0, _L3, depth)
        self._cols.update(
            sport=(ports >> 16).astype(np.uint16),
            dport=(ports & 0xFFFF).astype(np.uint16),
            depth=np.where(parsed, _L4, depth).astype(np.uint8),
        )

    def _hash_stage(self) -> None:
        """hash; see the module docstring for its definition."""
        layout = self._fast_layout()
        if layout is not None:
            self._fast_hash(layout)
            return
        rd = self._read()
        version = self.ip_version
        words = rd.u32_words(self.network_offset.astype(np.int64), _ADDRESS_WORDS)
        pairs = words[:, 0::2] ^ words[:, 1::2]  # IPv6: (s0^s1, s2^s3, d0^d1, d2^d3)
        v6_words = pairs[:, 0::2] ^ pairs[:, 1::2]
        # (a, b): IPv6 the words' XORs; IPv4 src is at +12, dst at +16: words 1 and 2.
        addresses = np.where(version == 6, v6_words.T, words[:, 1:3].T)
        ports = np.stack([self.sport, self.dport])
        fragment = self.is_fragment
        if fragment.any():
            ports[:, fragment] = 0
        hashes = _flow_hash_np(addresses, ports, self.ip_proto)
        self._cols["hash"] = np.where(version > 0, hashes, 0).astype(np.uint32)


# The multipliers of the rows of _flow_hash_np's ``keys``: min(a, b), min(p, q), a, b, p, q, k.
# The linear step x * X + y * Y + m * M + k * K, with x = min(a, b), y = max(a, b) = a + b - x,
# m = min(p, q) << 16 | max(p, q) = 65535 * min(p, q) + p + q, is this product: one minimum
# per pair, no maximum.
_HASH_COEFFICIENTS = np.array(
    [
        (_HASH_X - _HASH_Y) & _M64,
        (_HASH_M * 0xFFFF) & _M64,
        _HASH_Y,
        _HASH_Y,
        _HASH_M,
        _HASH_M,
        _HASH_K,
    ],
    dtype=np.uint64,
)


def _flow_hash_np(addresses: np.ndarray, ports: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """:func:`_flow_hash` of columns: ``addresses`` is ``[2, n]`` (a, b), ``ports`` ``[2, n]``
    (p, q; 0 for fragments), ``proto`` ``[n]``, of any integer dtypes, byte orders and
    strides.  Returns uint32 ``[n]``.

    Nine numpy calls.  The inputs are first copied into rows of one uint64 array: ufuncs run
    several times faster on native, contiguous rows than on big-endian strided views, and
    one row-wise minimum then does both pairs.  The linear step is one matrix product
    (uint64 arithmetic wraps: the mod 2**64 wanted).
    """
    keys = np.empty((7, proto.shape[0]), dtype=np.uint64)
    keys[2:4] = addresses
    keys[4:6] = ports
    np.minimum(keys[2:6:2], keys[3:6:2], out=keys[0:2])
    keys[6] = proto
    v = _HASH_COEFFICIENTS @ keys
    v ^= v >> np.uint64(29)
    v *= np.uint64(_HASH_MIX)
    halves = v.view(np.uint32)  # (low, high) words: their XOR is (v ^ v >> 32) & 0xFFFFFFFF
    return halves[0::2] ^ halves[1::2]
