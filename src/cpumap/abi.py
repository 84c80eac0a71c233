"""The numbers other software fixed for us: Linux, libpcap and BPF constants, in one place.

Rule: a constant whose value is set by an outside ABI -- a kernel header, the tcpdump.org
link-type registry, the BPF syscall -- is defined here once, named as its header names it,
and imported from here by every module that needs it.  Nothing here is ours to change,
and nothing here imports anything.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

# -- Ethernet (<linux/if_ether.h>) ---------------------------------------------------------
ETH_ALEN: Final = 6  # bytes of a MAC address
ETH_HLEN: Final = 14  # destination, source, type
ETH_P_ALL: Final = 0x0003  # every protocol (packet sockets)
ETH_P_802_3: Final = 0x0001  # "raw" 802.3 (Novell): length field, payload starts 0xFFFF
ETH_P_802_2: Final = 0x0004  # 802.3 length field followed by an 802.2 LLC header
ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
ETH_P_8021Q: Final = 0x8100
ETH_P_IPV6: Final = 0x86DD
ETH_P_PPP_SES: Final = 0x8863  # PPPoE discovery (0x8864: session)
ETH_P_8021AD: Final = 0x88A8
ETH_P_LLDP: Final = 0x88CC
ETH_P_QINQ1: Final = 0x9100  # pre-802.1ad QinQ outer tag, still seen in the wild
ETH_P_802_3_MIN: Final = 0x0600  # below this the type field is an 802.3 length
VLAN_HLEN: Final = 4  # one 802.1Q/802.1ad tag: TPID and TCI

# -- IP protocol numbers (<linux/in.h>, <linux/in6.h>) --------------------------------------
IPPROTO_HOPOPTS: Final = 0  # IPv6 hop-by-hop options
IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_ROUTING: Final = 43  # IPv6 routing header
IPPROTO_FRAGMENT: Final = 44  # IPv6 fragment header
IPPROTO_GRE: Final = 47
IPPROTO_ESP: Final = 50
IPPROTO_AH: Final = 51
IPPROTO_ICMPV6: Final = 58
IPPROTO_NONE: Final = 59  # IPv6: no next header
IPPROTO_DSTOPTS: Final = 60  # IPv6 destination options
IPPROTO_SCTP: Final = 132
IPPROTO_MH: Final = 135  # IPv6 mobility header
IPPROTO_UDPLITE: Final = 136
IPPROTO_HIP: Final = 139
IPPROTO_SHIM6: Final = 140

# -- address families (<sys/socket.h>; loopback captures store them) -----------------------
AF_INET: Final = 2
AF_INET6_VALUES: Final = frozenset({10, 24, 28, 30})  # Linux; NetBSD/OpenBSD; FreeBSD; Darwin

# -- skb->pkt_type (<linux/if_packet.h>) ---------------------------------------------------
PACKET_HOST: Final = 0
PACKET_BROADCAST: Final = 1
PACKET_MULTICAST: Final = 2

# -- link-layer header types (tcpdump.org/linktypes.html) ----------------------------------
LINKTYPE_NULL: Final = 0  # BSD loopback: 4-byte address family in the capturing host's order
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101  # raw IPv4 or IPv6, the version nibble decides
LINKTYPE_LOOP: Final = 108  # OpenBSD loopback: 4-byte address family, network byte order
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

# -- BPF map update flags (<linux/bpf.h>) ----------------------------------------------------
BPF_ANY: Final = 0  # create or update
BPF_NOEXIST: Final = 1  # create only (a cpumap refuses it: its entries always exist)
BPF_EXIST: Final = 2  # update only


# -- XDP actions (<linux/bpf.h>: enum xdp_action) ------------------------------------------
class Verdict(IntEnum):
    """XDP actions (``enum xdp_action``): what a program returns for a frame."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


XDP_ABORTED: Final = Verdict.ABORTED
XDP_DROP: Final = Verdict.DROP
XDP_PASS: Final = Verdict.PASS
XDP_TX: Final = Verdict.TX
XDP_REDIRECT: Final = Verdict.REDIRECT
N_VERDICTS: Final = len(Verdict)

# -- the cpumap (kernel/bpf/cpumap.c) ------------------------------------------------------
# cpu_map_update_elem refuses a bigger queue size with EOVERFLOW: "Sanity limit".
CPUMAP_QSIZE_MAX: Final = 16384
