"""What the skb parsers know about headers: the tables the per-frame and batch forms share.

Both parsers (``frame.py`` per frame, ``batch.py`` per batch) read these tables and nothing
else, so a header they treat alike is defined once.  Numbers fixed by an outside ABI come
from :mod:`cpumap.abi`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from ..abi import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_QINQ1,
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HIP,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_MH,
    IPPROTO_ROUTING,
    IPPROTO_SCTP,
    IPPROTO_SHIM6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
)


class ParseDepth(IntEnum):
    """How far the parser got in a frame."""

    NONE = 0  #: not even the link-layer header (too short, or unsupported link type)
    L2 = 1  #: link layer parsed; ``protocol`` is known
    L3 = 2  #: IP header parsed; addresses and ``ip_proto`` are known
    L4 = 3  #: transport header parsed (TCP/UDP/SCTP/UDPLite ports, ICMP type/code)


# Tag protocol identifiers whose tag the parsers walk past.
VLAN_TPIDS: Final = frozenset({ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ1})

# The kernel's VLAN_MAX_DEPTH (<linux/if_vlan.h>): deeper stacks are not untagged.
VLAN_MAX_DEPTH: Final = 8

# Longer than any legitimate chain (the kernel's flow dissector gives up after 15 headers of
# all kinds); a frame can carry one 8-byte extension header per 8 bytes, so without a bound a
# crafted jumbo frame would cost a thousand loop turns.
IPV6_MAX_EXT_HEADERS: Final = 16

# IPv6 extension headers we walk, as the size of their length unit: the header is
# ``unit * hdr_ext_len + 8`` bytes.  (8-byte units, not counting the first 8; AH counts 4-byte
# units minus 2, which is the same formula with unit 4; the fragment header is always 8.)
# ESP (50) and no-next-header (59) end the walk: nothing after them is a header we can read.
IPV6_EXT_UNIT: Final[dict[int, int]] = {
    IPPROTO_HOPOPTS: 8,
    IPPROTO_ROUTING: 8,
    IPPROTO_FRAGMENT: 0,
    IPPROTO_DSTOPTS: 8,
    IPPROTO_AH: 4,
    IPPROTO_MH: 8,
    IPPROTO_HIP: 8,
    IPPROTO_SHIM6: 8,
}

# Transport headers we read: protocol -> (name, bytes needed, has ports).  ICMP's needed bytes
# are the part every message shares (type, code, checksum).
L4_HEADERS: Final[dict[int, tuple[str, int, bool]]] = {
    IPPROTO_TCP: ("TCP", 20, True),
    IPPROTO_UDP: ("UDP", 8, True),
    IPPROTO_SCTP: ("SCTP", 12, True),
    IPPROTO_UDPLITE: ("UDPLite", 8, True),
    IPPROTO_ICMP: ("ICMP", 4, False),
    IPPROTO_ICMPV6: ("ICMPv6", 4, False),
}

TCP_FLAGS_MASK: Final = 0x0FFF  # FIN..CWR plus AE/NS and the reserved bits (kernel, tshark)

BROADCAST_MAC: Final = b"\xff" * 6
