"""The packet socket's ABI: constants and structures of ``<linux/if_packet.h>`` and friends.

Everything the live source passes to or reads from the kernel through an ``AF_PACKET``
socket and its TPACKET_V3 ring is declared here, named as the headers name it, with the
header it comes from.  Nothing here does I/O.
"""

from __future__ import annotations

import ctypes

from ..abi import LINKTYPE_ETHERNET, LINKTYPE_RAW

SOL_PACKET = 263  # <linux/socket.h>
SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>

# Socket options (<linux/if_packet.h>)
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20  # transmit straight to the driver
PACKET_IGNORE_OUTGOING = 23

PACKET_MR_PROMISC = 1  # packet_mreq.mr_type
TPACKET_V3 = 2  # enum tpacket_versions: TPACKET_V1 = 0, TPACKET_V2 = 1, TPACKET_V3 = 2

# PACKET_FANOUT argument: group id in the low 16 bits, mode | flags in the high 16.
PACKET_FANOUT_FLAG_ROLLOVER = 0x1000  # fall over to another member when this one's ring is full
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000  # kernel assigns an unused group id (id must be 0)
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000
PACKET_FANOUT_FLAG_DEFRAG = 0x8000  # reassemble IP fragments before hashing

# tp_status / block_status bits
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_LOSING = 1 << 2  # block_status: drops happened since the last PACKET_STATISTICS read
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_VLAN_VALID = 1 << 4  # tp_vlan_tci is valid
TP_STATUS_BLK_TMO = 1 << 5  # block_status: retired by the timer, not because it was full
TP_STATUS_VLAN_TPID_VALID = 1 << 6  # tp_vlan_tpid is valid

TPACKET_ALIGNMENT = 16  # frame_size must be a multiple

# <linux/if_arp.h>: interface hardware types, and the link type their frames have
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE  # tun and friends: a SOCK_RAW packet socket delivers the bare IP packet
HATYPE_TO_LINKTYPE: dict[int, int] = {
    ARPHRD_ETHER: LINKTYPE_ETHERNET,
    ARPHRD_LOOPBACK: LINKTYPE_ETHERNET,
    ARPHRD_NONE: LINKTYPE_RAW,
}


class tpacket_req3(ctypes.Structure):  # PACKET_RX_RING argument for TPACKET_V3
    _fields_ = (
        ("tp_block_size", ctypes.c_uint),  # bytes per block: a multiple of the page size
        ("tp_block_nr", ctypes.c_uint),
        ("tp_frame_size", ctypes.c_uint),  # V3: only validated (frames are variable-size)
        ("tp_frame_nr", ctypes.c_uint),  # must equal tp_block_nr * (block_size // frame_size)
        ("tp_retire_blk_tov", ctypes.c_uint),  # block timeout, ms (0: kernel picks)
        ("tp_sizeof_priv", ctypes.c_uint),  # private area per block (unused here)
        ("tp_feature_req_word", ctypes.c_uint),  # TP_FT_REQ_FILL_RXHASH (unused here)
    )


class tpacket_stats_v3(ctypes.Structure):  # PACKET_STATISTICS result; reading resets it
    _fields_ = (
        ("tp_packets", ctypes.c_uint),  # frames seen, *including* tp_drops
        ("tp_drops", ctypes.c_uint),  # frames dropped: the ring was full
        ("tp_freeze_q_cnt", ctypes.c_uint),  # times the ring froze (every block user-owned)
    )


class packet_mreq(ctypes.Structure):  # PACKET_ADD_MEMBERSHIP / PACKET_DROP_MEMBERSHIP
    _fields_ = (
        ("mr_ifindex", ctypes.c_int),
        ("mr_type", ctypes.c_ushort),
        ("mr_alen", ctypes.c_ushort),
        ("mr_address", ctypes.c_ubyte * 8),
    )


class tpacket_block_desc(ctypes.Structure):  # head of every block (tpacket_hdr_v1 inlined)
    _fields_ = (
        ("version", ctypes.c_uint32),
        ("offset_to_priv", ctypes.c_uint32),
        ("block_status", ctypes.c_uint32),  # ownership: TP_STATUS_KERNEL or TP_STATUS_USER|...
        ("num_pkts", ctypes.c_uint32),
        ("offset_to_first_pkt", ctypes.c_uint32),  # from the block's start
        ("blk_len", ctypes.c_uint32),  # bytes used, from the block's start (header included)
        ("seq_num", ctypes.c_uint64),
        ("ts_first_sec", ctypes.c_uint32),
        ("ts_first_nsec", ctypes.c_uint32),
        ("ts_last_sec", ctypes.c_uint32),
        ("ts_last_nsec", ctypes.c_uint32),
    )


class tpacket3_hdr(ctypes.Structure):  # head of every frame (tpacket_hdr_variant1 inlined)
    _fields_ = (
        ("tp_next_offset", ctypes.c_uint32),  # to the next frame; 0 on a block's last frame
        ("tp_sec", ctypes.c_uint32),
        ("tp_nsec", ctypes.c_uint32),
        ("tp_snaplen", ctypes.c_uint32),  # bytes captured
        ("tp_len", ctypes.c_uint32),  # bytes on the wire
        ("tp_status", ctypes.c_uint32),
        ("tp_mac", ctypes.c_uint16),  # offset of the link-layer header from the frame's start
        ("tp_net", ctypes.c_uint16),
        ("tp_rxhash", ctypes.c_uint32),  # hv1
        ("tp_vlan_tci", ctypes.c_uint32),  # hv1
        ("tp_vlan_tpid", ctypes.c_uint16),  # hv1
        ("tp_hv1_padding", ctypes.c_uint16),
        ("tp_padding", ctypes.c_uint8 * 8),
    )


class sock_filter(ctypes.Structure):  # <linux/filter.h>: one classic BPF instruction
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class sock_fprog(ctypes.Structure):  # <linux/filter.h>: SO_ATTACH_FILTER argument
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(sock_filter)))


BPF_RET_K = 0x06  # BPF_RET | BPF_K: "accept, truncated to k bytes" (how libpcap does snaplen)

assert ctypes.sizeof(tpacket3_hdr) == 48 and ctypes.sizeof(tpacket_block_desc) == 48
