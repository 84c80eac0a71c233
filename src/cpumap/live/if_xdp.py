"""The AF_XDP socket's ABI: constants and structures of ``<linux/if_xdp.h>``.

Everything :mod:`cpumap.live.xsk` passes to or reads from the kernel through an ``AF_XDP``
socket, its UMEM and its four rings is declared here, named as the header names it.
Nothing here does I/O.  The sizes are the kernel's ABI and are asserted below; the test
(``tests/live/test_if_xdp.py``) checks every size and field offset.
"""

from __future__ import annotations

import ctypes

AF_XDP = 44  # <linux/socket.h>
SOL_XDP = 283  # <linux/socket.h>

# Socket options (level SOL_XDP)
XDP_MMAP_OFFSETS = 1  # getsockopt: where producer/consumer/desc/flags sit in each ring's mmap
XDP_RX_RING = 2  # setsockopt(int entries): a power of two
XDP_TX_RING = 3
XDP_UMEM_REG = 4  # setsockopt(xdp_umem_reg): register the UMEM (the packet memory)
XDP_UMEM_FILL_RING = 5
XDP_UMEM_COMPLETION_RING = 6
XDP_STATISTICS = 7  # getsockopt(xdp_statistics): cumulative, never reset by reading
XDP_OPTIONS = 8  # getsockopt(xdp_options)

# sockaddr_xdp.sxdp_flags (bind flags)
XDP_SHARED_UMEM = 1 << 0  # use the UMEM of the socket in sxdp_shared_umem_fd
XDP_COPY = 1 << 1  # force copy mode
XDP_ZEROCOPY = 1 << 2  # force zero-copy mode: EOPNOTSUPP where the driver lacks it
XDP_USE_NEED_WAKEUP = 1 << 3  # the kernel sets XDP_RING_NEED_WAKEUP when it waits for a kick

# xdp_umem_reg.flags
XDP_UMEM_UNALIGNED_CHUNK_FLAG = 1 << 0  # chunks anywhere (addresses carry an offset)
XDP_UMEM_TX_SW_CSUM = 1 << 1  # Linux 6.8: TX checksum requests done in software (copy mode)
XDP_UMEM_TX_METADATA_LEN = 1 << 2  # later 6.x: makes tx_metadata_len count (0 before)

# xdp_ring flags word
XDP_RING_NEED_WAKEUP = 1 << 0

# xdp_options.flags
XDP_OPTIONS_ZEROCOPY = 1 << 0  # the socket is bound in zero-copy mode

# mmap page offsets (bytes, passed as mmap's offset) of each ring
XDP_PGOFF_RX_RING = 0
XDP_PGOFF_TX_RING = 0x80000000
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000

# Unaligned-chunk mode: an address's high 16 bits are an offset into the chunk
XSK_UNALIGNED_BUF_OFFSET_SHIFT = 48
XSK_UNALIGNED_BUF_ADDR_MASK = (1 << XSK_UNALIGNED_BUF_OFFSET_SHIFT) - 1

# xdp_desc.options
XDP_PKT_CONTD = 1 << 0  # Linux 6.6: the packet continues in the next descriptor (multi-buffer)

# <include/net/xdp_sock.h>, <include/linux/bpf.h>: not in the UAPI header, but ABI all the same
XDP_PACKET_HEADROOM = 256  # the kernel's headroom in front of every frame in a chunk
XDP_UMEM_MIN_CHUNK_SIZE = 2048


class sockaddr_xdp(ctypes.Structure):  # bind() address
    _fields_ = (
        ("sxdp_family", ctypes.c_uint16),  # AF_XDP
        ("sxdp_flags", ctypes.c_uint16),  # XDP_SHARED_UMEM | XDP_COPY | ...
        ("sxdp_ifindex", ctypes.c_uint32),
        ("sxdp_queue_id", ctypes.c_uint32),
        ("sxdp_shared_umem_fd", ctypes.c_uint32),  # with XDP_SHARED_UMEM: the UMEM's socket
    )


class xdp_umem_reg_v1(ctypes.Structure):  # the first ABI (Linux 4.18): the kernel still takes it
    _fields_ = (
        ("addr", ctypes.c_uint64),  # start of the packet memory: page-aligned
        ("len", ctypes.c_uint64),  # its length: a multiple of chunk_size
        ("chunk_size", ctypes.c_uint32),  # bytes per frame
        ("headroom", ctypes.c_uint32),  # user headroom, after XDP_PACKET_HEADROOM
    )


class xdp_umem_reg(ctypes.Structure):  # XDP_UMEM_REG argument (Linux 6.8 layout)
    _fields_ = (
        ("addr", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("chunk_size", ctypes.c_uint32),
        ("headroom", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),  # XDP_UMEM_* (Linux 5.4)
        ("tx_metadata_len", ctypes.c_uint32),  # Linux 6.8; was padding before: must be 0 there
    )


class xdp_ring_offset(ctypes.Structure):  # byte offsets into one ring's mmap
    _fields_ = (
        ("producer", ctypes.c_uint64),  # u32 producer index
        ("consumer", ctypes.c_uint64),  # u32 consumer index
        ("desc", ctypes.c_uint64),  # the descriptor array
        ("flags", ctypes.c_uint64),  # u32 flags word (XDP_RING_NEED_WAKEUP); Linux 5.4
    )


class xdp_mmap_offsets(ctypes.Structure):  # XDP_MMAP_OFFSETS result
    _fields_ = (
        ("rx", xdp_ring_offset),
        ("tx", xdp_ring_offset),
        ("fr", xdp_ring_offset),  # fill
        ("cr", xdp_ring_offset),  # completion
    )


class xdp_desc(ctypes.Structure):  # one RX / TX ring entry (fill/completion entries are u64)
    _fields_ = (
        ("addr", ctypes.c_uint64),  # UMEM offset of the packet's first byte
        ("len", ctypes.c_uint32),
        ("options", ctypes.c_uint32),  # XDP_PKT_CONTD
    )


class xdp_statistics(ctypes.Structure):  # XDP_STATISTICS result
    _fields_ = (
        ("rx_dropped", ctypes.c_uint64),  # dropped for other reasons (no fill entry, too big)
        ("rx_invalid_descs", ctypes.c_uint64),  # dropped: invalid descriptor
        ("tx_invalid_descs", ctypes.c_uint64),
        ("rx_ring_full", ctypes.c_uint64),  # dropped: the RX ring was full (Linux 5.9)
        ("rx_fill_ring_empty_descs", ctypes.c_uint64),  # times the fill ring was found empty
        ("tx_ring_empty_descs", ctypes.c_uint64),  # times the TX ring was found empty
    )


class xdp_options(ctypes.Structure):  # XDP_OPTIONS result
    _fields_ = (("flags", ctypes.c_uint32),)  # XDP_OPTIONS_ZEROCOPY


UMEM_ENTRY_SIZE = ctypes.sizeof(ctypes.c_uint64)  # one fill / completion ring entry

assert ctypes.sizeof(sockaddr_xdp) == 16 and ctypes.sizeof(xdp_desc) == 16
assert ctypes.sizeof(xdp_umem_reg) == 32 and ctypes.sizeof(xdp_umem_reg_v1) == 24
assert ctypes.sizeof(xdp_mmap_offsets) == 128 and ctypes.sizeof(xdp_ring_offset) == 32
assert ctypes.sizeof(xdp_statistics) == 48 and ctypes.sizeof(xdp_options) == 4
