"""The batch parser's fast path: a batch whose every frame (but a few) has one layout.

Most traffic is Ethernet + IPv4 without options or fragmentation + UDP or TCP (or Ethernet +
IPv6 + UDP/TCP, no extension header), and for such a frame every skb field is a constant or
sits at a fixed offset.  On its first column read, a batch asks :func:`classify` whether all
its frames (the engine's rows start at the packets: one offset for all) have one of these
layouts (:data:`FAST_IPV4`, :data:`FAST_IPV6`), in a handful of numpy calls that stop at the
first disqualifying finding.  If so, each column is a strided view of the rows at that offset,
converted in a call or two (the ``*_columns`` functions here) instead of the general stages'
dozens.  A few frames off the layout (an ARP, a fragment, a short frame: up to
:data:`PATCH_LIMIT`) do not spoil the batch: ``classify`` names them, and the batch patches
their fields in from the per-frame parser.

Measured (256 IPv4/UDP frames, some replaced by ARP/ICMP/VLAN/IPv6 ones): a patched frame
costs 5-6 µs; the general path costs about 170 µs more than the fast one for the hash, 110 µs
more for the ports, 35 µs more for the link-layer columns alone.  So at the limit a batch that
reads only ``protocol`` costs about what the general path would, and one that reads the hash
or the ports is 2-3 times faster.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import numpy as np

from ..abi import ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, LINKTYPE_ETHERNET
from .flow_hash import flow_hash_np
from .headers import IPV6_EXT_UNIT, L4_HEADERS, ParseDepth

_NEVER: Final = 1 << 40  # more bytes than any frame has
_BE16: Final = np.dtype(">u2")
_BE32: Final = np.dtype(">u4")

# A batch with at most this many frames off the layout still takes the fast path.
PATCH_LIMIT: Final = 8


class Layout(NamedTuple):
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
    need[IPPROTO_UDP] = transport_at + 8
    need[IPPROTO_TCP] = transport_at + 20
    return need


# Ethernet (no tag), IPv4 with IHL 5, neither MF nor a fragment offset (DF is fine), UDP/TCP.
FAST_IPV4: Final = Layout(
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
FAST_IPV6: Final = Layout(
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


class Classified(NamedTuple):
    """What :func:`classify` found: the layout (None: take the general path), the frames
    off it, and -- when the search found out on the way -- whether every frame is Ethernet
    (None: it did not look)."""

    layout: Layout | None
    odd: list[int]
    ethernet: bool | None


_GENERAL: Final = Classified(None, [], None)


def classify(rows: np.ndarray, offset: int | None, length: Any, linktype: Any) -> Classified:
    """The layout every frame of ``rows`` but ``odd`` has, or the general path.

    ``offset``: the one offset of every frame in its row (None when they differ: never
    fast); ``length`` and ``linktype`` as the batch was given them (arrays or scalars).
    """
    if offset is None or rows.strides[1] != 1:  # also: the empty batch (no offset)
        return _GENERAL
    o = offset
    width = rows.shape[1] - o  # no frame is longer
    if width < FAST_IPV4.shortest:
        return _GENERAL
    # Guess the layout from the first frame's EtherType (or, if neither, the last's).
    layout = FAST_IPV4
    if width >= FAST_IPV6.shortest:
        first = rows[0, o + 12]
        if first != ETH_P_IP >> 8 and first != ETH_P_IPV6 >> 8:
            first = rows[-1, o + 12]
        if first == ETH_P_IPV6 >> 8:
            layout = FAST_IPV6
    if width < layout.shortest:
        return _GENERAL
    # The link type, then bytes 12..15 (and IPv4's 20..22) of every frame against the
    # layout's, through u64 views of bytes 8..24, then the protocol (byte 20 or 23) and
    # length: all read from one gathered copy of those 16 bytes (one pass over the rows,
    # see _gather).  Each finding is counted (np.count_nonzero costs a fraction
    # of a ufunc call), and only a batch with some frames off the layout pays for
    # combining them.
    other: Any = False
    ethernet: bool | None = None
    if np.ndim(linktype) == 0:
        if linktype != LINKTYPE_ETHERNET:
            return _GENERAL
        count = 0
    else:
        other = linktype != LINKTYPE_ETHERNET
        count = np.count_nonzero(other)
        ethernet = not count
    head = _gather(rows, o + 8, 16)  # bytes 8..24, the IP protocol among them
    words = head.view(np.uint64)
    wrong = words[:, 0] & layout.head_mask
    wrong ^= layout.head_value
    if layout.frag_mask is not None:
        wrong |= words[:, 1] & layout.frag_mask
    count += np.count_nonzero(wrong)
    if count > PATCH_LIMIT:  # mixed traffic usually stops here
        return Classified(None, [], ethernet)
    short = layout.need.take(head[:, layout.proto_at - 8]) > length
    count += np.count_nonzero(short)
    odd: list[int] = []
    if count:
        odd = np.flatnonzero((wrong != 0) | short | other).tolist()
        if len(odd) > PATCH_LIMIT:  # the counts overlap: count >= len(odd)
            return Classified(None, [], ethernet)
    return Classified(layout, odd, ethernet)


# -- the columns of a fast batch (the frames in ``odd`` are patched by the caller) ---------
def link_columns(n: int, layout: Layout) -> dict[str, np.ndarray]:
    """protocol, l3_protocol, vlan_count, network_offset."""
    protocol = np.full(n, layout.protocol, dtype=np.uint16)
    return {
        "protocol": protocol,
        "l3_protocol": protocol.copy(),
        "vlan_count": np.zeros(n, dtype=np.uint8),
        "network_offset": np.full(n, 14, dtype=np.int32),
    }


def ip_columns(rows: np.ndarray, offset: int, layout: Layout) -> dict[str, np.ndarray]:
    """ip_version, ip_proto, is_fragment, transport_offset."""
    n = len(rows)
    return {
        "ip_version": np.full(n, layout.version, dtype=np.uint8),
        "ip_proto": rows[:, offset + layout.proto_at].astype(np.int16),
        "is_fragment": np.zeros(n, dtype=bool),
        "transport_offset": np.full(n, layout.transport_at, dtype=np.int32),
    }


def transport_columns(rows: np.ndarray, offset: int, layout: Layout) -> dict[str, np.ndarray]:
    """sport, dport, depth."""
    ports = _view(rows, offset + layout.transport_at, 4, _BE16)
    return {
        "sport": ports[:, 0].astype(np.uint16),
        "dport": ports[:, 1].astype(np.uint16),
        "depth": np.full(len(rows), ParseDepth.L4, dtype=np.uint8),
    }


def hash_column(rows: np.ndarray, offset: int, layout: Layout) -> np.ndarray:
    """hash (flow_hash.py).  The bytes from the IP protocol to the end of the ports are
    gathered in one pass (_gather), and every input is read from that copy."""
    at = offset + layout.proto_at
    if layout.version == 4:  # protocol at 23, addresses at 26..34, ports at 34..38
        head = _gather(rows, at, 16)
        addresses = head[:, 3:11].view(_BE32).T
        ports = head[:, 11:15].view(_BE16).T
    else:  # protocol at 20, addresses at 22..54, ports at 54..58
        head = _gather(rows, at, 40)
        addresses = _ipv6_folded(head, 2)
        ports = head[:, 34:38].view(_BE16).T
    return flow_hash_np(addresses, ports, head[:, 0])


def _ipv6_folded(rows: np.ndarray, at: int) -> np.ndarray:
    """``[2, n]``: the XOR of the four words of the source and of the destination address
    starting at byte ``at``.  XOR works on bytes, so it runs on native views: each
    address's two u64 halves, then the result's two u32 halves; the bytes left are the
    XOR's big-endian bytes."""
    n = len(rows)
    halves = _view(rows, at, 32, np.uint64)
    folded = np.empty((2, n), dtype=np.uint64)
    np.bitwise_xor(halves[:, 0::2].T, halves[:, 1::2].T, out=folded)
    words = folded.view(np.uint32).reshape(2, n, 2)
    return (words[:, :, 0] ^ words[:, :, 1]).view(_BE32)


# -- mixed traffic: the hash of a batch mixing both layouts, any transport -------------------
# IPv4 (IHL 5, not a fragment) and IPv6 (no extension header) frames, over any protocol,
# untagged Ethernet: the hash's inputs sit at one of two fixed offsets per frame.  Measured
# (1024 frames, IPv4/IPv6 x TCP/UDP/ICMP): ~60 µs, against ~250 µs for the general path.
_IS_IPV6_EXT = np.zeros(256, dtype=bool)
_IS_IPV6_EXT[list(IPV6_EXT_UNIT)] = True
_L4_NEED = np.full(256, _NEVER, dtype=np.int64)  # transport bytes needed for the ports
for _proto, (_, _size, _ports) in L4_HEADERS.items():
    if _ports:
        _L4_NEED[_proto] = _size
_V4_L4, _V6_L4 = FAST_IPV4.transport_at, FAST_IPV6.transport_at
MIXED_MIN_WIDTH: Final = _V6_L4 + 4  # the widest fixed read: IPv6's ports


class Mixed(NamedTuple):
    """What :func:`mixed_hash` found."""

    hash: np.ndarray  #: uint32 [n]: the hash column (garbage for the frames in ``odd``)
    odd: list[int]  #: the frames off both layouts: the caller patches them per frame
    ported: np.ndarray  #: bool [n]: the frame's ports went into its hash (else none did)


def mixed_hash(rows: np.ndarray, offset: int | None, length: Any, linktype: Any) -> Mixed | None:
    """The hash column of a batch of mixed IPv4/IPv6 frames, the frames off both layouts
    and which frames' ports went into the hash; None when the batch is not such a batch
    (more than :data:`PATCH_LIMIT` frames off)."""
    if offset is None or rows.strides[1] != 1 or rows.shape[1] - offset < MIXED_MIN_WIDTH:
        return None
    o = offset
    other: Any = False
    if np.ndim(linktype) == 0:
        if linktype != LINKTYPE_ETHERNET:
            return None
    else:
        other = linktype != LINKTYPE_ETHERNET
    head = rows[:, o + 8 : o + 24].view(np.uint64)
    v4 = (head[:, 0] & FAST_IPV4.head_mask) == FAST_IPV4.head_value
    v4 &= (head[:, 1] & FAST_IPV4.frag_mask) == 0
    v4 &= length >= _V4_L4
    v6 = (head[:, 0] & FAST_IPV6.head_mask) == FAST_IPV6.head_value
    proto = np.where(v4, rows[:, o + FAST_IPV4.proto_at], rows[:, o + FAST_IPV6.proto_at])
    v6 &= ~_IS_IPV6_EXT[proto]
    v6 &= length >= _V6_L4
    off = ~(v4 | v6) | other
    odd: list[int] = []
    if off.any():
        odd = np.flatnonzero(off).tolist()
        if len(odd) > PATCH_LIMIT:
            return None
    addresses = np.where(
        v4,
        _view(rows, o + FAST_IPV4.addresses_at, 8, _BE32).T,
        _ipv6_folded(rows, o + FAST_IPV6.addresses_at),
    )
    ports = np.where(v4, _view(rows, o + _V4_L4, 4, _BE16).T, _view(rows, o + _V6_L4, 4, _BE16).T)
    l4 = np.where(v4, _V4_L4, _V6_L4)
    ported = l4 + _L4_NEED.take(proto) <= length  # a header with ports, whole
    ports *= ported.astype(np.uint16)  # no ports: 0, 0
    return Mixed(flow_hash_np(addresses, ports, proto), odd, ported)


def _gather(rows: np.ndarray, at: int, size: int) -> np.ndarray:
    """``[n, size]`` uint8, contiguous: a copy of bytes ``at .. at+size`` of every row.

    One strided pass over the rows, whose cost is per row (the engine's rows are 2 KiB
    apart: a cache line and a page each), not per byte.  Copied as one ``V<size>`` item
    per row: numpy copies a 2-D ``[n, size]`` view row by row, about twice as slowly.
    Every later read of the copy is of contiguous, cache-hot bytes.  Needs rows whose
    bytes are contiguous (``strides[1] == 1``), as the fast path's are."""
    n = rows.shape[0]
    return rows[:, at : at + size].view(f"V{size}")[:, 0].copy().view(np.uint8).reshape(n, size)


def _view(rows: np.ndarray, at: int, size: int, dtype: Any) -> np.ndarray:
    """``[n, size // itemsize]``: bytes ``at .. at+size`` of every row, as ``dtype``."""
    return rows[:, at : at + size].view(dtype)
