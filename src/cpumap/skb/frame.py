"""One frame's skb: :class:`Skb`, a parsed view of a frame, and the per-frame parser.

The kernel's cpumap worker turns each redirected ``xdp_frame`` into an ``sk_buff`` before the
network stack sees it; our worker does the same before it calls the user's handler.  An skb
here is not a copy of the frame: it is the frame's bytes plus what a parser can say about them
(link protocol, VLAN tags, addresses, transport ports, a flow hash).

Lazy, one pass
--------------
The worker makes one :class:`Skb` per frame, and many handlers only look at ``len`` or
``rx_queue``, so the constructor only stores its arguments.  The parsed fields are ``__slots__``
left empty: the first read of any of them finds no value, lands in ``__getattr__``, and runs
the parser, which fills *every* parsed slot in one pass.  From then on a field read is a plain
slot read.  (The naive alternative, a property per field that checks a "parsed" flag, costs a
Python call on every read, forever.)  ``hash`` is one more step: it is computed on its first
read, from the parsed fields (``flow_hash.py``), since a handler that steers on ports should
not pay for it.

The parser
----------
Each stage reads its header whole, fills what it parsed into the skb, and returns where the
next header starts, or -1 to stop (having set ``error`` when stopping is a failure).  The
tables it walks (extension headers, transport headers) are ``headers.py``'s, shared with the
batch parser.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING, Any, Final

from ..abi import (
    AF_INET,
    AF_INET6_VALUES,
    ETH_P_802_2,
    ETH_P_802_3,
    ETH_P_802_3_MIN,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_FRAGMENT,
    IPPROTO_TCP,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
)
from . import interop
from .flow_hash import flow_hash
from .headers import (
    BROADCAST_MAC,
    IPV6_EXT_UNIT,
    IPV6_MAX_EXT_HEADERS,
    L4_HEADERS,
    TCP_FLAGS_MASK,
    VLAN_MAX_DEPTH,
    VLAN_TPIDS,
    ParseDepth,
)

# Module-level aliases: the parser runs once per frame, and enum attribute lookups add up.
_NONE, _L2, _L3, _L4 = ParseDepth.NONE, ParseDepth.L2, ParseDepth.L3, ParseDepth.L4

_ETH_HDR = struct.Struct("!6s6sH")  # dst, src, type
_IPV4_HDR = struct.Struct("!B5xHxB2x4s4s")  # version/IHL, frag word, protocol, src, dst
_IPV6_HDR = struct.Struct("!B5xBx16s16s")  # version/class, next header, src, dst
_U16 = struct.Struct("!H")
_U16X2 = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_U32LE = struct.Struct("<I")

# The fields the caller gives, and the fields the parser fills (``as_dict`` order).
GIVEN_FIELDS: Final = (
    "len",
    "wire_len",
    "linktype",
    "ifindex",
    "rx_queue",
    "ts_ns",
    "metadata",
    "index",
)
PARSED_FIELDS: Final = (
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
_LAZY_FIELDS: Final = frozenset(PARSED_FIELDS)  # reading one of these first runs the parser


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
        linktype: ``LINKTYPE_*`` of the frame (:mod:`cpumap.abi`).
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

    __slots__ = ("data", "hash", *GIVEN_FIELDS, *PARSED_FIELDS)

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
                self.hash = value = flow_hash(
                    self.src, self.dst, self.sport, self.dport, self.ip_proto, self.is_fragment
                )
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
        return {name: getattr(self, name) for name in (*GIVEN_FIELDS, *PARSED_FIELDS, "hash")}

    def __repr__(self) -> str:
        where = f"#{self.index} " if self.index >= 0 else ""
        error = f" error={self.error!r}" if self.error else ""
        return f"<Skb {where}len={self.len} {_summary(self)} depth={self.depth.name}{error}>"

    def to_scapy(self) -> Any:
        """This frame as a scapy packet (the ``scapy`` extra; see ``interop.py``)."""
        return interop.to_scapy(self.data, self.linktype)

    def to_dpkt(self) -> Any:
        """This frame as a dpkt object (the ``dpkt`` extra; see ``interop.py``)."""
        return interop.to_dpkt(self.data, self.linktype)

    def bytes(self) -> bytes:  # last in the class: the name shadows the builtin in its body
        """A copy of the captured bytes, valid after the handler returns."""
        return bytes(self.data)


_PROTO_NAMES: Final = {proto: name for proto, (name, _, _) in L4_HEADERS.items()}


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
        skb.pkt_type = PACKET_BROADCAST if dst == BROADCAST_MAC else PACKET_MULTICAST
    if ethertype < ETH_P_802_3_MIN:
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
    if family == AF_INET:
        return ETH_P_IP
    return ETH_P_IPV6 if family in AF_INET6_VALUES else 0


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
    if ethertype not in VLAN_TPIDS:
        skb.l3_protocol = ethertype
        return off
    tags = []
    while ethertype in VLAN_TPIDS:
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
        if ethertype < ETH_P_802_3_MIN:  # as vlan_set_encap_proto: 802.3 inside the tag
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
        unit = IPV6_EXT_UNIT.get(nexthdr)
        if unit is None:
            break
        size = unit * data[pos + 1] + 8 if pos + 8 <= n else 8
        if pos + size > n:
            skb.ip_proto = nexthdr
            skb.error = f"truncated IPv6 extension header {nexthdr} at offset {pos}"
            return -1
        if nexthdr == IPPROTO_FRAGMENT:
            frag_offset = _U16.unpack_from(data, pos + 2)[0] & 0xFFF8
            skb.is_fragment = True
            skb.frag_offset = frag_offset
            if frag_offset:  # a later fragment: no transport header follows
                skb.ip_proto = data[pos]
                return -1
        nexthdr = data[pos]
        pos += size
    else:
        if nexthdr in IPV6_EXT_UNIT:
            skb.ip_proto = nexthdr
            skb.error = "IPv6 extension header chain too long"
            return -1
    skb.ip_proto = nexthdr
    skb.transport_offset = pos
    return pos


def _parse_transport(skb: Skb, data: Any, n: int, off: int) -> None:
    header = L4_HEADERS.get(skb.ip_proto)
    if header is None:  # a protocol we do not look into: parsing ends, successfully, at L3
        return
    name, size, has_ports = header
    if off + size > n:
        skb.error = f"truncated {name} header at offset {off}"
        return
    if has_ports:
        skb.sport, skb.dport = _U16X2.unpack_from(data, off)
        if skb.ip_proto == IPPROTO_TCP:
            skb.tcp_flags = _U16.unpack_from(data, off + 12)[0] & TCP_FLAGS_MASK
    else:
        skb.icmp_type = data[off]
        skb.icmp_code = data[off + 1]
    skb.depth = _L4
