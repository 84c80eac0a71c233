"""Packet parsing for the steering programs: xdp-tools' redirect-cpu helpers, in two forms.

The built-in programs (steering.py) look at the same few header fields as the BPF
programs of ``xdp-bench redirect-cpu``: the EtherType after at most two VLAN tags
(``parse_eth``), the IP protocol, the TCP/UDP ports, and the sample's symmetric hash of
the addresses.  This module reads them per frame (plain Python over the packet's bytes)
and per batch (numpy columns), with one meaning:

* ``parse_eth``: a frame shorter than 14 bytes, with an 802.3 length in its type field,
  or cut inside one of its (up to two, 802.1Q or 802.1ad) tags is *skipped*.
* The IPv4 protocol byte is read when the 20-byte header is there, the IPv6 next header
  when its 40 bytes are; otherwise the protocol is 0.  Extension headers are not walked.
* Ports: TCP or UDP, behind an IPv4 header of IHL >= 5 that is not a fragment (any
  fragment: every fragment of a datagram alike) or an IPv6 header, and only when the
  whole transport header (8 bytes UDP, 20 TCP) was captured; else 0.
* The hash: SuperFastHash of the u32 sum of the address words (IPv4: two, IPv6: eight,
  loaded little-endian as on x86), seeded with 15485863 + the protocol; 0 for non-IP or a
  cut header.

Theory of operation (vectorized)
--------------------------------
Python costs per call, not per byte: a batch of 256 frames costs about as much as one of
8, so the batch form reads a fixed window of every frame -- ``window(0, 102)``, a
read-only view of the pool when the frames are consecutive -- and computes each field as a
column with masks instead of branches.  Bytes past a frame's end are in the window; every use of
them is masked by the frame's length, exactly where the per-frame form tests it.

The common batches take shortcuts that change no answer: a batch that is all IPv4 (or
all IPv6), untagged and long enough needs no mask at all (``Link.only``), found with two
byte-string comparisons of the EtherType and link-type columns (0.1 us) instead of
reductions (2 us).  Tagged frames are shifted into place with masked row copies, so the
L3 columns line up for every frame.  tests/programs/test_steering.py proves per frame ==
vectorized with hypothesis, malformed and truncated frames included.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from ..abi import (
    ETH_HLEN,
    ETH_P_802_3_MIN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LINKTYPE_ETHERNET,
)
from .context import XdpBatch

__all__ = [
    "BE16",
    "ETH_HLEN",
    "ETH_P_802_3_MIN",
    "ETH_P_8021AD",
    "ETH_P_8021Q",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "INITVAL",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPV4",
    "IPV6",
    "OTHER",
    "SKIPPED",
    "U32",
    "Buffer",
    "Link",
    "ip_np",
    "ip_pair_hash",
    "ip_pair_hash_np",
    "ip_proto",
    "parse_eth",
    "parse_eth_np",
    "ports",
    "ports_np",
    "superfasthash4",
    "superfasthash4_np",
]

Buffer = bytes | bytearray | memoryview  # a frame's bytes, per frame

INITVAL = 15485863  # the sample's hash seed (a prime), plus the IP protocol
_M32 = 0xFFFFFFFF

# Window of each frame the vectorized forms read: two VLAN tags, then a 60-byte IPv4
# header (options) and a 20-byte TCP header.
_L3_WINDOW = 80
_WINDOW = ETH_HLEN + 8 + _L3_WINDOW
BE16 = np.dtype(">u2")
_LE32 = np.dtype("<u4")
U32 = np.uint32
_PORT_COLS = np.arange(4, dtype=np.int64)
# Bytes of transport header needed before ports are read (the sample tests the whole
# struct: 8 for UDP, 20 for TCP); 2**30 = never (no ports).
_L4_NEED = np.full(256, 1 << 30, dtype=np.int64)
_L4_NEED[IPPROTO_UDP] = 8
_L4_NEED[IPPROTO_TCP] = 20

_LE32X2 = struct.Struct("<II")
_LE32X8 = struct.Struct("<8I")


# -- the hash -------------------------------------------------------------------------------
def superfasthash4(value: int, initval: int) -> int:
    """Paul Hsieh's SuperFastHash of 4 bytes -- the u32 ``value`` as a little-endian host
    stores it -- seeded with ``initval``: xdp-tools' ``SuperFastHash((char *)&v, 4, seed)``
    on x86 or arm64."""
    h = initval & _M32
    h = (h + (value & 0xFFFF)) & _M32
    tmp = ((value >> 16 & 0xFFFF) << 11) ^ h
    h = ((h << 16) & _M32) ^ tmp
    h = (h + (h >> 11)) & _M32
    # "Force avalanching of final 127 bits"
    h ^= (h << 3) & _M32
    h = (h + (h >> 5)) & _M32
    h ^= (h << 4) & _M32
    h = (h + (h >> 17)) & _M32
    h ^= (h << 25) & _M32
    return (h + (h >> 6)) & _M32


def superfasthash4_np(value: np.ndarray, initval: np.ndarray) -> np.ndarray:
    """:func:`superfasthash4` over uint32 arrays (about 20 numpy calls, in place)."""
    t = np.right_shift(value, U32(16))
    h = np.bitwise_and(value, U32(0xFFFF))
    h += initval
    t <<= U32(11)
    t ^= h
    h <<= U32(16)
    h ^= t
    for op, k in _SFH_TAIL:
        if op:
            np.left_shift(h, k, out=t)
            h ^= t
        else:
            np.right_shift(h, k, out=t)
            h += t
    return h


# (shift left and xor, or shift right and add; by how much): after the main step.
_SFH_TAIL = (
    (False, U32(11)),
    (True, U32(3)),
    (False, U32(5)),
    (True, U32(4)),
    (False, U32(17)),
    (True, U32(25)),
    (False, U32(6)),
)


# -- per-frame parsing (the sample's helpers) -----------------------------------------------
def parse_eth(data: Buffer, n: int) -> tuple[int, int]:
    """``parse_eth``: (EtherType after at most two tags, L3 offset), or (-1, 0) when the
    frame is skipped (too short, 802.3 length, cut inside a tag)."""
    if n < ETH_HLEN:
        return -1, 0
    et = data[12] << 8 | data[13]
    if et < ETH_P_802_3_MIN:
        return -1, 0
    off = ETH_HLEN
    for _ in range(2):
        if et != ETH_P_8021Q and et != ETH_P_8021AD:
            break
        if n < off + 4:
            return -1, 0
        et = data[off + 2] << 8 | data[off + 3]
        off += 4
    return et, off


def ip_proto(data: Buffer, n: int, et: int, l3: int) -> int:
    """The IP protocol (0 for a cut IP header), or -1 when not IP."""
    if et == ETH_P_IP:
        return data[l3 + 9] if n >= l3 + 20 else 0
    if et == ETH_P_IPV6:
        return data[l3 + 6] if n >= l3 + 40 else 0
    return -1


def ports(data: Buffer, n: int, et: int, l3: int) -> tuple[int, int]:
    """(source, destination) TCP/UDP port, (0, 0) when there is none: not TCP/UDP, an IPv4
    fragment (any: every fragment of a datagram alike), a bad IHL, or a cut header."""
    if et == ETH_P_IP:
        if n < l3 + 20:
            return 0, 0
        ihl = (data[l3] & 0x0F) << 2
        if ihl < 20 or (data[l3 + 6] & 0x3F) or data[l3 + 7]:
            return 0, 0
        proto = data[l3 + 9]
        l4 = l3 + ihl
    elif et == ETH_P_IPV6:
        if n < l3 + 40:
            return 0, 0
        proto = data[l3 + 6]
        l4 = l3 + 40
    else:
        return 0, 0
    if proto == IPPROTO_UDP:
        need = 8
    elif proto == IPPROTO_TCP:
        need = 20
    else:
        return 0, 0
    if n < l4 + need:
        return 0, 0
    return data[l4] << 8 | data[l4 + 1], data[l4 + 2] << 8 | data[l4 + 3]


def ip_pair_hash(data: Buffer, n: int, et: int, l3: int) -> int:
    """xdp-tools' ``get_ipv4_hash_ip_pair`` / ``get_ipv6_hash_ip_pair``: the hash of the
    address pair (``l4-hash``'s; not the skb's flow hash, which also hashes the ports); 0
    for non-IP or a cut header."""
    if et == ETH_P_IP:
        if n < l3 + 20:
            return 0
        a, b = _LE32X2.unpack_from(data, l3 + 12)
        return superfasthash4((a + b) & _M32, INITVAL + data[l3 + 9])
    if et == ETH_P_IPV6:
        if n < l3 + 40:
            return 0
        return superfasthash4(sum(_LE32X8.unpack_from(data, l3 + 8)) & _M32, INITVAL + data[l3 + 6])
    return 0


# -- vectorized parsing ---------------------------------------------------------------------
# What an EtherType means to parse_eth, as one uint8 lookup (one gather per batch instead
# of a comparison per type).  After a tag the sample no longer checks for 802.3 lengths,
# and a third tag is just a type it does not know.
SKIPPED, OTHER, TAG, IPV4, IPV6 = 0, 1, 2, 4, 6
_INNER_CLASS = np.full(0x10000, OTHER, dtype=np.uint8)
_INNER_CLASS[ETH_P_IP] = IPV4
_INNER_CLASS[ETH_P_IPV6] = IPV6
_INNER_CLASS[ETH_P_8021Q] = _INNER_CLASS[ETH_P_8021AD] = TAG
_OUTER_CLASS = _INNER_CLASS.copy()
_OUTER_CLASS[:ETH_P_802_3_MIN] = SKIPPED


class Link(NamedTuple):
    """``parse_eth`` over a batch.

    ``cls``: per frame ``SKIPPED`` (PASS), ``OTHER`` (not IP), ``IPV4`` or ``IPV6``
    -- or ``None`` when every frame is ``only``; ``l3``: ``_L3_WINDOW`` bytes of each
    frame from its L3 header on; ``l3len``: the captured bytes from L3 on (int64, may be
    negative where skipped); ``l3min``: the smallest ``l3len``; ``only``: the class of
    every frame when they share one and none is skipped (the usual batch: all IPv4),
    else -1.  The flags let the common batches skip every mask.
    """

    cls: np.ndarray | None
    l3: np.ndarray
    l3len: np.ndarray
    l3min: int
    only: int

    def of(self, cls: int) -> np.ndarray:
        """Frames of class ``cls``."""
        if self.cls is None:
            return np.full(len(self.l3len), self.only == cls)
        return self.cls == cls


_patterns: dict[tuple[str, int, int], bytes] = {}


def _all(col: np.ndarray, value: int) -> bool:
    """Whether every item of ``col`` is ``value``: one bytes comparison (0.1 us), not
    two numpy reductions (2 us)."""
    key = (col.dtype.str, value, len(col))
    pattern = _patterns.get(key)
    if pattern is None:
        if len(_patterns) > 64:
            _patterns.clear()
        pattern = _patterns[key] = np.full(len(col), value, dtype=col.dtype).tobytes()
    return col.tobytes() == pattern


def none_skipped(batch: XdpBatch) -> bool:
    """True when :func:`parse_eth_np` would skip no frame of ``batch``, known from the
    descriptors alone -- no packet byte read: every frame is Ethernet and carries a riding
    hash (``hash_type != HASH_NONE``).  A riding hash is the skb's, so its frame's parse
    reached an IP header; ``parse_eth`` skips only frames that are not Ethernet, shorter
    than an Ethernet header, cut inside a VLAN tag, or 802.3 length frames -- none of which
    has an IP header for the skb (skb/frame.py reads an 802.3 frame as LLC).  False says
    nothing: parse.  Held by tests/programs/test_steering.py
    (test_none_skipped_is_parse_eth_skipping_nothing)."""
    types = batch.hash_type
    return bool(types.all()) and _all(batch.linktype, LINKTYPE_ETHERNET)


def _ethertype(rows: np.ndarray, col: int) -> np.ndarray:
    return rows[:, col : col + 2].view(BE16)[:, 0]


def parse_eth_np(batch: XdpBatch) -> Link:
    """:func:`parse_eth` over a batch (``len(batch) > 0``)."""
    length = batch.length.astype(np.int64)
    lmin = int(length.min())
    rows = batch.window(0, _WINDOW)
    et0 = _ethertype(rows, 12)
    ethernet = _all(batch.linktype, LINKTYPE_ETHERNET)
    if ethernet and lmin >= ETH_HLEN:  # the usual batch: L3 at 14, rows are a view
        l3 = rows[:, ETH_HLEN : ETH_HLEN + _L3_WINDOW]
        if _all(et0, ETH_P_IP):
            return Link(None, l3, length - ETH_HLEN, lmin - ETH_HLEN, IPV4)
        if _all(et0, ETH_P_IPV6):
            return Link(None, l3, length - ETH_HLEN, lmin - ETH_HLEN, IPV6)
    cls = _OUTER_CLASS[et0]
    if lmin < ETH_HLEN:
        cls[length < ETH_HLEN] = SKIPPED
    if not ethernet:
        cls[batch.linktype != LINKTYPE_ETHERNET] = SKIPPED
    tag0 = cls == TAG
    if not tag0.any():
        l3 = rows[:, ETH_HLEN : ETH_HLEN + _L3_WINDOW]
        return Link(cls, l3, length - ETH_HLEN, lmin - ETH_HLEN, -1)
    cls1 = _INNER_CLASS[_ethertype(rows, 16)]
    tag1 = tag0 & (cls1 == TAG)
    cls = np.where(tag0, np.where(tag1, _INNER_CLASS[_ethertype(rows, 20)], cls1), cls)
    cls[cls == TAG] = OTHER  # a third tag
    if lmin < ETH_HLEN + 8:
        cls[(tag0 & (length < 18)) | (tag1 & (length < 22))] = SKIPPED  # cut inside a tag
    # Three possible L3 offsets: shift the tagged rows into place with masked row copies
    # (a gather of n x 80 computed indices costs several times as much).
    l3 = rows[:, ETH_HLEN : ETH_HLEN + _L3_WINDOW].copy()
    one = tag0 & ~tag1
    l3[one] = rows[one, 18 : 18 + _L3_WINDOW]
    if tag1.any():
        l3[tag1] = rows[tag1, 22 : 22 + _L3_WINDOW]
    l3len = length - (ETH_HLEN + 4 * (tag0.astype(np.int64) + tag1))
    return Link(cls, l3, l3len, int(l3len.min()), -1)


def ip_np(link: Link) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is IPv4, is IPv6, protocol with 0 for a cut header), skipped frames excluded."""
    l3 = link.l3
    v4, v6 = link.of(IPV4), link.of(IPV6)
    if link.only == IPV4:
        proto = l3[:, 9].copy()
        if link.l3min < 20:
            proto[link.l3len < 20] = 0
        return v4, v6, proto
    proto = np.where(v4, l3[:, 9], l3[:, 6])
    if link.l3min < 40:
        proto[link.l3len < np.where(v4, 20, 40)] = 0
    return v4, v6, proto


def ports_np(link: Link) -> tuple[np.ndarray, np.ndarray]:
    """(source, destination) ports as uint32 columns; 0 where :func:`ports` says 0."""
    l3 = link.l3
    unfragmented = (l3[:, 6:8].view(BE16)[:, 0] & 0x3FFF) == 0  # MF clear, offset 0
    if link.only == IPV4 and _all(l3[:, 0], 0x45):  # the usual batch: no IPv4 options
        at = 20
        has = unfragmented
        need = _L4_NEED[l3[:, 9]]
        has &= need <= link.l3len - at
    else:
        ihl = (l3[:, 0] & 0x0F).astype(np.int64) << 2
        if link.only == IPV4:
            proto = l3[:, 9]
            has = (ihl >= 20) & unfragmented
            l4 = ihl
        elif link.only == IPV6:
            proto = l3[:, 6]
            has = np.ones(len(ihl), dtype=bool)
            l4 = np.full(len(ihl), 40, dtype=np.int64)
        else:
            v4 = link.of(IPV4)
            proto = np.where(v4, l3[:, 9], l3[:, 6])
            has = (v4 & (ihl >= 20) & unfragmented) | link.of(IPV6)
            l4 = np.where(v4, ihl, 40)
        has &= l4 + _L4_NEED[proto] <= link.l3len
        lo, hi = int(l4.min()), int(l4.max())
        at = lo if lo == hi else -1
    if at >= 0:  # one header length (IPv4 without options, or all IPv6): a view
        words = l3[:, at : at + 4].view(BE16)
    else:
        words = np.take_along_axis(l3, l4[:, None] + _PORT_COLS, axis=1).view(BE16)
    sport = np.where(has, words[:, 0], 0).astype(np.uint32)
    dport = np.where(has, words[:, 1], 0).astype(np.uint32)
    return sport, dport


def _sum4(l3: np.ndarray) -> np.ndarray:
    """IPv4 saddr + daddr as the sample adds them: little-endian u32 loads, mod 2**32."""
    w = l3[:, 12:20].view(_LE32)
    return w[:, 0] + w[:, 1]


def _sum6(l3: np.ndarray) -> np.ndarray:
    """The eight address words of IPv6 summed, mod 2**32: three pairwise adds (a
    ``sum(axis=1)`` over 8 columns costs twice as much)."""
    w = l3[:, 8:40].view(_LE32)
    w = w[:, 0:4] + w[:, 4:8]
    w = w[:, 0:2] + w[:, 2:4]
    return w[:, 0] + w[:, 1]


def ip_pair_hash_np(link: Link) -> np.ndarray:
    """:func:`ip_pair_hash` over a batch: uint32, 0 for non-IP and cut headers."""
    l3 = link.l3
    if link.only == IPV4 and link.l3min >= 20:  # the usual batch: no mask at all
        return superfasthash4_np(_sum4(l3), np.add(l3[:, 9], U32(INITVAL), dtype=np.uint32))
    if link.only == IPV6 and link.l3min >= 40:
        return superfasthash4_np(_sum6(l3), np.add(l3[:, 6], U32(INITVAL), dtype=np.uint32))
    v4, v6 = link.of(IPV4), link.of(IPV6)
    s = np.where(v6, _sum6(l3), _sum4(l3))
    proto = np.where(v6, l3[:, 6], l3[:, 9])
    h = superfasthash4_np(s, np.add(proto, U32(INITVAL), dtype=np.uint32))
    hashed = v4 if link.l3min >= 20 else v4 & (link.l3len >= 20)
    hashed |= v6 if link.l3min >= 40 else v6 & (link.l3len >= 40)
    h[~hashed] = 0
    return h
