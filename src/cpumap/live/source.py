"""Live source: packets from a network interface through an AF_PACKET TPACKET_V3 mmap ring.

One :class:`LiveSource` is one RX producer: an AF_PACKET socket bound to one interface, with a
receive ring shared with the kernel, yielding :class:`~cpumap.packets.PacketBatch`es (one per
ring block).  Several producers - separate processes, each with its own socket - share one
interface through PACKET_FANOUT: the kernel picks one member per packet (by flow hash, by
CPU, round robin ...), so each member sees whole flows.

Theory of operation: the TPACKET_V3 ring
----------------------------------------
The ring is ``block_count`` blocks of ``block_size`` bytes, mapped into both the kernel and this
process.  Each block starts with a descriptor whose ``block_status`` word says who owns it:

* ``TP_STATUS_KERNEL`` (0): the kernel owns it.  It writes frames into the block it is filling
  (the *active* block), back to back, each a ``tpacket3_hdr`` + a ``sockaddr_ll`` + the
  packet, ``tp_next_offset`` chaining them.  We must not read it.
* ``TP_STATUS_USER`` (bit 0): the kernel has *retired* the block - it is full, or
  ``block_timeout_ms`` passed since its first frame - and handed it to us.  The kernel will not
  touch it again until we give it back.  We read it at leisure.
* We give a block back by storing ``TP_STATUS_KERNEL`` into ``block_status``.

The kernel fills blocks strictly in ring order, so user space keeps a cursor and looks only at
the block under it.  There is no syscall per packet, nor per block: ``poll(2)`` is called only
when the block under the cursor is still the kernel's, and with a timeout so callers can stop.
If every block is the user's, the kernel has nowhere to write: it "freezes" the queue
(``tp_freeze_q_cnt``) and drops (``tp_drops``) until a block comes back.

Why reading ``block_status`` and then the frames is safe (the pairing, kernel side first):
``prb_close_block()`` writes the last frame and the descriptor fields, then ``smp_wmb()``, then
stores ``block_status = TP_STATUS_USER | ...``.  We load ``block_status`` with acquire ordering
(``_atomics.load_u32``), so every frame store the kernel made before its barrier is visible to
the loads that follow ours.  Going back, we store ``TP_STATUS_KERNEL`` with release ordering
(``_atomics.store_u32``) after the copy, so our reads of the block are complete before the
kernel can see it as free and overwrite it.  (On x86 plain loads and stores already have these
orders; the explicit acquire/release keeps the code right on weakly ordered CPUs.)
The frames are *copied* out of the block before it goes back: a batch never points into the
ring.

Walking a block.  The naive walk is a Python loop: ``struct.unpack_from`` each header, slice out
each packet.  That costs ~1 us per frame.  Instead: the frames of one block are usually the
same size (a benchmark, a flood), and then ``tp_next_offset`` is the same for all but the last.
We *guess* the offsets from the first header (``first + k*step``), *check* the guess with one
vectorised read of every ``tp_next_offset``, and read every header field as a column with
numpy fancy indexing.  Only when the guess fails do we walk the chain with ``struct.unpack_from``
(a tight loop that collects offsets; the fields are still read as columns).  Then:

* all frames the same captured length, same VLAN-ness: one strided copy gives the packets back
  to back - a batch whose :meth:`~cpumap.packets.PacketBatch.uniform_length` is set (the RX
  side's fast path);
* otherwise: one ``memcpy`` of the block's used bytes; ``start`` points at each packet inside
  that copy (the ring headers remain as gaps between packets, which a batch allows).

VLAN tags.  The receive path strips the outermost 802.1Q/802.1ad tag of *every* frame before
packet sockets see it, on every driver (``__netif_receive_skb_core`` calls
``skb_vlan_untag``, and NICs with VLAN offload strip it in hardware), and reports it in
``tp_vlan_tci`` / ``tp_vlan_tpid`` with ``TP_STATUS_VLAN_VALID``.  By default
(``reinsert_vlan=True``) we put the tag back into the bytes, as libpcap does, so the frame is
the one on the wire and the skb build sees the tag where XDP would: XDP runs before the
untagging and sees tagged frames.  ``caplen`` and ``wire_len`` grow by 4 for such frames.
``reinsert_vlan=False`` delivers the untagged bytes and the tag is lost (the batch has no
column for it).  A frame with ``VLAN_VALID`` but TPID not reported uses 0x8100.

Timestamps are the kernel's software receive timestamps (``tp_sec``/``tp_nsec``, nanoseconds).

Direction.  XDP sees only ingress, so by default (``ignore_outgoing=True``) frames this host
transmits on the interface are not captured (PACKET_IGNORE_OUTGOING, or the fanout group's
PACKET_FANOUT_FLAG_IGNORE_OUTGOING).

Concurrency: a LiveSource is used by one thread at a time.  After ``fork()`` the child must
open its own source (fanout members are separate sockets, by design).  The socket belongs to
the network namespace of the thread that constructed the source.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import math
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .. import _atomics
from ..abi import ETH_P_8021Q, ETH_P_ALL
from ..closing import ClosedWhenCollected
from ..errors import ClosedResourceError
from ..packets import PacketBatch
from .if_packet import (
    BPF_RET_K,
    HATYPE_TO_LINKTYPE,
    PACKET_ADD_MEMBERSHIP,
    PACKET_DROP_MEMBERSHIP,
    PACKET_FANOUT,
    PACKET_FANOUT_FLAG_DEFRAG,
    PACKET_FANOUT_FLAG_IGNORE_OUTGOING,
    PACKET_FANOUT_FLAG_ROLLOVER,
    PACKET_FANOUT_FLAG_UNIQUEID,
    PACKET_IGNORE_OUTGOING,
    PACKET_MR_PROMISC,
    PACKET_RX_RING,
    PACKET_STATISTICS,
    PACKET_VERSION,
    SO_ATTACH_FILTER,
    SOL_PACKET,
    TP_STATUS_KERNEL,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    TPACKET_ALIGNMENT,
    TPACKET_V3,
    packet_mreq,
    sock_filter,
    sock_fprog,
    tpacket3_hdr,
    tpacket_block_desc,
    tpacket_req3,
    tpacket_stats_v3,
)
from .interface import resolve_interface

# Field offsets for the hot path, taken from the structures above (one source of truth).
_BD = struct.Struct("=IIIIII")  # tpacket_block_desc: version .. blk_len
_BD_STATUS = tpacket_block_desc.block_status.offset
_NEXT = struct.Struct("=I")  # tpacket3_hdr.tp_next_offset
_H_SEC = tpacket3_hdr.tp_sec.offset // 4
_H_NSEC = tpacket3_hdr.tp_nsec.offset // 4
_H_SNAPLEN = tpacket3_hdr.tp_snaplen.offset // 4
_H_LEN = tpacket3_hdr.tp_len.offset // 4
_H_STATUS = tpacket3_hdr.tp_status.offset // 4
_H_MAC = tpacket3_hdr.tp_mac.offset // 2
_H_TCI = tpacket3_hdr.tp_vlan_tci.offset // 4
_H_TPID = tpacket3_hdr.tp_vlan_tpid.offset // 2
_HDR_LEN = ctypes.sizeof(tpacket3_hdr)
_MAC_PAIR = np.arange(12, dtype=np.int64)  # dst + src MAC: the bytes in front of a VLAN tag


class FanoutMode(enum.IntEnum):
    """How the kernel picks a fanout member for each packet (PACKET_FANOUT_* modes)."""

    HASH = 0  # by flow hash: each flow goes whole to one member (the mode cpumap wants)
    LB = 1  # round robin, packet by packet
    CPU = 2  # by the CPU that received the packet
    ROLLOVER = 3  # fill one member, spill to the next when its ring is full
    RND = 4  # random
    QM = 5  # by the skb's recorded RX queue


@dataclass(frozen=True, slots=True)
class Fanout:
    """Fanout group membership.  Every member must use the same mode and flags."""

    group_id: int | None = None
    """0..65535, shared by the members; per network namespace.  ``None``: the kernel picks an
    unused id (PACKET_FANOUT_FLAG_UNIQUEID); read it from :attr:`LiveSource.fanout_group_id`
    and give it to the other members."""
    mode: FanoutMode = FanoutMode.HASH
    defrag: bool = False
    """Reassemble IP fragments before hashing, so fragments follow their flow."""
    rollover: bool = False
    """When the chosen member's ring is full, use another member instead of dropping."""

    def __post_init__(self) -> None:
        if self.group_id is not None and not 0 <= self.group_id <= 0xFFFF:
            raise ValueError(f"fanout group_id must be in 0..65535, got {self.group_id}")


@dataclass(frozen=True, slots=True)
class LiveStatistics:
    """Counters of one live source since it opened (the kernel's are cumulated here)."""

    kernel_packets: int
    """Frames the kernel gave this socket (PACKET_STATISTICS tp_packets): written to the ring
    *plus* dropped - the kernel counts drops in tp_packets."""
    kernel_drops: int
    """Frames dropped because the ring was full (tp_drops)."""
    freeze_q_cnt: int
    """Times the ring froze because every block was the user's (tp_freeze_q_cnt)."""
    delivered: int
    """Frames handed out in batches."""
    batches: int
    """Batches handed out."""
    blocks: int
    """Ring blocks consumed (a block with no frames gives no batch)."""


class LiveSource(ClosedWhenCollected):
    """Packets from one interface, in batches, through a TPACKET_V3 ring.

    Parameters (bad values raise ``ValueError`` with the rule they break):

    ``interface``: name or ifindex, in the calling thread's network namespace.
    ``promiscuous``: receive frames addressed to other MACs (PACKET_MR_PROMISC membership;
    dropped at close, and the kernel counts memberships, so other users are unaffected).
    ``fanout``: join a PACKET_FANOUT group; ``rx_queue`` is this member's index, written into
    every batch's ``rx_queue`` column.
    ``block_size`` (multiple of the page size; a power of two wastes no memory),
    ``block_count``: the ring is their product.  One block is one batch.
    ``frame_size``: the kernel's validation hint (multiple of 16, divides ``block_size``);
    frames are variable-size in V3 and a frame may be as large as a block.
    ``block_timeout_ms``: the kernel retires a partly filled block this long after its first
    frame (latency bound for a slow trickle); 0 lets the kernel choose (~8 ms).
    ``snaplen``: capture at most this many bytes per frame (a one-instruction classic BPF
    filter, as libpcap does); ``None``: whole frames.
    ``ignore_outgoing``: do not capture frames this host transmits (XDP sees only ingress).
    ``reinsert_vlan``: put a stripped VLAN tag back into the bytes (see the module docstring).

    Errors: ``PermissionError`` without CAP_NET_RAW, ``OSError(ENODEV)`` for an unknown
    interface, ``ClosedResourceError`` for use after :meth:`close`.
    """

    def __init__(
        self,
        interface: str | int,
        *,
        promiscuous: bool = False,
        fanout: Fanout | None = None,
        rx_queue: int = 0,
        block_size: int = 1 << 18,
        block_count: int = 64,
        frame_size: int = 2048,
        block_timeout_ms: int = 10,
        snaplen: int | None = None,
        ignore_outgoing: bool = True,
        reinsert_vlan: bool = True,
    ) -> None:
        page = mmap.PAGESIZE
        if block_size <= 0 or block_size % page:
            raise ValueError(f"block_size must be a positive multiple of {page}, got {block_size}")
        if block_count <= 0:
            raise ValueError(f"block_count must be > 0, got {block_count}")
        if frame_size < 128 or frame_size % TPACKET_ALIGNMENT or block_size % frame_size:
            raise ValueError(
                f"frame_size must be a multiple of {TPACKET_ALIGNMENT}, >= 128, that divides "
                f"block_size {block_size}; got {frame_size}"
            )
        if not 0 <= block_timeout_ms <= 0xFFFFFFFF:
            raise ValueError(f"block_timeout_ms must be >= 0, got {block_timeout_ms}")
        if snaplen is not None and not 1 <= snaplen <= 0xFFFFFFFF:
            raise ValueError(f"snaplen must be >= 1, got {snaplen}")
        if not 0 <= rx_queue <= 0xFFFFFFFF:
            raise ValueError(f"rx_queue must be >= 0, got {rx_queue}")

        self.ifname, self.ifindex = resolve_interface(interface)
        self.rx_queue = rx_queue
        self.promiscuous = promiscuous
        self.fanout = fanout
        self.block_size = block_size
        self.block_count = block_count
        self.reinsert_vlan = reinsert_vlan
        self._closed = True  # until construction completes; close() is then a no-op
        self._kstats = [0, 0, 0]  # cumulated tp_packets, tp_drops, tp_freeze_q_cnt
        self._delivered = self._batches = self._blocks = 0

        with contextlib.ExitStack() as unwind:  # undoes the steps done so far if one fails
            try:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            except PermissionError:
                raise PermissionError(
                    errno.EPERM,
                    "AF_PACKET sockets need CAP_NET_RAW: run as root, or grant the "
                    "capability (e.g. `setcap cap_net_raw+ep` on the interpreter)",
                ) from None
            # Protocol 0: the socket receives nothing until bind() names ETH_P_ALL, so no
            # frame from another interface slips in while the ring is being set up.
            unwind.callback(sock.close)
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            if ignore_outgoing:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            if snaplen is not None:
                prog = (sock_filter * 1)(sock_filter(BPF_RET_K, 0, 0, snaplen))
                fprog = sock_fprog(1, ctypes.cast(prog, ctypes.POINTER(sock_filter)))
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
            req = tpacket_req3(
                tp_block_size=block_size,
                tp_block_nr=block_count,
                tp_frame_size=frame_size,
                tp_frame_nr=(block_size // frame_size) * block_count,
                tp_retire_blk_tov=block_timeout_ms,
            )
            try:
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, bytes(req))
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"PACKET_RX_RING ({block_count} blocks of {block_size} bytes) refused: "
                    f"{e.strerror}; try fewer or smaller blocks",
                ) from None
            size = block_size * block_count
            ring_map = mmap.mmap(
                sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            unwind.callback(ring_map.close)
            try:
                sock.bind((self.ifname, ETH_P_ALL))
            except OSError as e:
                if e.errno == errno.ENODEV:
                    raise OSError(errno.ENODEV, f"interface {self.ifname!r} vanished") from None
                raise
            hatype = sock.getsockname()[3]
            if hatype not in HATYPE_TO_LINKTYPE:
                raise ValueError(
                    f"interface {self.ifname!r} has hardware type {hatype} (<linux/if_arp.h>); "
                    "supported: Ethernet-framed (ARPHRD_ETHER, ARPHRD_LOOPBACK) and raw IP "
                    "(ARPHRD_NONE)"
                )
            self.linktype = HATYPE_TO_LINKTYPE[hatype]
            if promiscuous:
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, self._promisc_mreq())
            self.fanout_group_id: int | None = None
            if fanout is not None:
                flags = (
                    (PACKET_FANOUT_FLAG_UNIQUEID if fanout.group_id is None else 0)
                    | (PACKET_FANOUT_FLAG_IGNORE_OUTGOING if ignore_outgoing else 0)
                    | (PACKET_FANOUT_FLAG_DEFRAG if fanout.defrag else 0)
                    | (PACKET_FANOUT_FLAG_ROLLOVER if fanout.rollover else 0)
                )
                arg = (fanout.group_id or 0) | ((int(fanout.mode) | flags) << 16)
                try:
                    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, arg)
                except OSError as e:
                    raise OSError(
                        e.errno,
                        f"joining fanout group {fanout.group_id} on {self.ifname!r} failed: "
                        f"{e.strerror} (members must share mode, flags and interface)",
                    ) from None
                got = sock.getsockopt(SOL_PACKET, PACKET_FANOUT)
                self.fanout_group_id = got & 0xFFFF
            unwind.pop_all()

        self._sock = sock
        self._map = ring_map
        # Views of the ring.  Invariant: they are the only exports of self._map (a batch never
        # references the ring), so close() can unmap once it drops them.
        self._r8 = np.frombuffer(ring_map, dtype=np.uint8)
        self._r16 = self._r8.view(np.uint16)
        self._r32 = self._r8.view(np.uint32)
        base = self._r8.ctypes.data
        self._status_addr = [base + b * block_size + _BD_STATUS for b in range(block_count)]
        self._cursor = 0  # Invariant: the block the kernel retires next (ring order)
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
        self._owner_pid = os.getpid()  # Invariant: only this process reads the ring
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    def _promisc_mreq(self) -> bytes:
        return bytes(packet_mreq(mr_ifindex=self.ifindex, mr_type=PACKET_MR_PROMISC))

    def close(self) -> None:
        """Leave promiscuous mode and the fanout group, unmap the ring, close the socket.

        Idempotent.  Statistics stay readable afterwards.
        """
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._owner_pid:
            # A forked child's copy: the socket is shared with the parent, so leave its
            # memberships alone and only drop this process's references.
            del self._r8, self._r16, self._r32
            with contextlib.suppress(BufferError):
                self._map.close()
            self._sock.close()
            return
        # From here no method reads the ring.  Membership and fanout are also released by
        # the kernel when the socket closes; dropping promisc explicitly is for clarity.
        if self.promiscuous:
            with contextlib.suppress(OSError):  # the interface may be gone already
                self._sock.setsockopt(SOL_PACKET, PACKET_DROP_MEMBERSHIP, self._promisc_mreq())
        with contextlib.suppress(OSError):
            self._read_kernel_stats()
        del self._r8, self._r16, self._r32
        # If someone still holds a view of the ring (a traceback's frame, typically), the
        # mapping is released with that last view; the socket is closed regardless.
        with contextlib.suppress(BufferError):
            self._map.close()
        self._sock.close()

    def fileno(self) -> int:
        """The socket's fd, for an external poll loop (readable: a block may be ready)."""
        self._check_open()
        return self._sock.fileno()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("live source is closed")
        if os.getpid() != self._owner_pid:
            raise RuntimeError(
                "a LiveSource cannot be used across fork(): open one in each process "
                "(fanout members are separate sockets)"
            )

    # --- receiving -------------------------------------------------------------------------

    def poll_batch(self, timeout: float | None = 0.0) -> PacketBatch | None:
        """The next batch (one ring block's frames), or ``None`` if none came within ``timeout``.

        ``timeout`` in seconds: 0 never blocks (no syscall when nothing is ready), ``None``
        waits as long as it takes.  Raises ``OSError(ENETDOWN)`` if the interface went down
        (the source stays usable; it receives again once the interface is up).
        """
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if _atomics.load_u32(self._status_addr[self._cursor]) & TP_STATUS_USER:
                batch = self._take_block()
                if len(batch):
                    return batch
                continue  # an empty block (retired by the timer on older kernels)
            if deadline is None:
                wait_ms = -1
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait_ms = max(1, math.ceil(remaining * 1000))
            for _fd, revents in self._poller.poll(wait_ms):
                if revents & select.POLLERR:
                    err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"{self.ifname}: {os.strerror(err)}")

    def batches(
        self, *, stop: threading.Event | None = None, poll_interval: float = 0.1
    ) -> Iterator[PacketBatch]:
        """Yield batches until ``stop`` is set (checked at least every ``poll_interval`` s)."""
        while stop is None or not stop.is_set():
            batch = self.poll_batch(poll_interval)
            if batch is not None:
                yield batch

    def __iter__(self) -> Iterator[PacketBatch]:
        return self.batches()

    def _take_block(self) -> PacketBatch:
        """Copy the block under the cursor into a batch, give the block back, advance.

        Precondition: the block's status has TP_STATUS_USER (loaded with acquire).
        """
        off = self._cursor * self.block_size
        try:
            _v, _p, _s, num_pkts, first, blk_len = _BD.unpack_from(self._map, off)
            batch = self._decode_block(num_pkts, off + first, off + blk_len)
        finally:
            # Pairs with the kernel's check of block_status before it reuses the block: our
            # reads above happen before this release store.
            _atomics.store_u32(self._status_addr[self._cursor], TP_STATUS_KERNEL)
            self._cursor = (self._cursor + 1) % self.block_count
            self._blocks += 1
        if len(batch):
            self._batches += 1
            self._delivered += len(batch)
        return batch

    def _frame_offsets(self, n: int, first: int, end: int) -> tuple[np.ndarray, int]:
        """Offsets (in the ring) of the block's ``n`` frames, and their common stride (0: none)."""
        r32 = self._r32
        if n == 1:
            return np.array([first], dtype=np.int64), 0
        step = int(r32[first >> 2])
        if step >= _HDR_LEN and first + step * (n - 1) + _HDR_LEN <= end:
            offs = first + step * np.arange(n, dtype=np.int64)
            if (r32[offs[:-1] >> 2] == step).all():
                return offs, step
        # Sizes vary: follow the chain.
        out = [first]
        o = first
        unpack = _NEXT.unpack_from
        mm = self._map
        for _ in range(n - 1):
            nxt = unpack(mm, o)[0]
            o += nxt
            if nxt < _HDR_LEN or o + _HDR_LEN > end:
                raise RuntimeError(f"corrupt TPACKET_V3 block at ring offset {first}")
            out.append(o)
        return np.array(out, dtype=np.int64), 0

    def _decode_block(self, n: int, first: int, end: int) -> PacketBatch:
        if n == 0:
            return PacketBatch.empty()
        r8, r16, r32 = self._r8, self._r16, self._r32
        offs, step = self._frame_offsets(n, first, end)
        w = offs >> 2
        ts = r32[w + _H_SEC].astype(np.int64) * 1_000_000_000 + r32[w + _H_NSEC]
        caplen = r32[w + _H_SNAPLEN]
        wire_len = r32[w + _H_LEN]
        src = offs + r16[(offs >> 1) + _H_MAC]  # ring offset of each packet's first byte
        if self.reinsert_vlan:
            tagged = (r32[w + _H_STATUS] & TP_STATUS_VLAN_VALID) != 0
            tagged &= caplen >= 12  # nowhere to put the tag in a frame cut inside its MACs
        else:
            tagged = np.zeros(n, dtype=bool)
        any_tag = bool(tagged.any())
        if any_tag:
            status = r32[w + _H_STATUS]
            tpid = np.where(
                status & TP_STATUS_VLAN_TPID_VALID, r16[(offs >> 1) + _H_TPID], ETH_P_8021Q
            ).astype(np.uint16)
            tci = r32[w + _H_TCI].astype(np.uint16)
            tag = np.empty((n, 4), dtype=np.uint8)
            tag[:, 0], tag[:, 1] = tpid >> 8, tpid & 0xFF
            tag[:, 2], tag[:, 3] = tci >> 8, tci & 0xFF

        c0 = int(caplen[0])
        if (
            (n == 1 or (step and (src == src[0] + step * np.arange(n)).all()))
            and (caplen == c0).all()
            and (not any_tag or bool(tagged.all()))
        ):
            # Fast path: equal frames at a fixed stride -> one strided copy, back to back.
            rows = np.lib.stride_tricks.as_strided(r8[int(src[0]) :], (n, c0), (step, 1))
            if any_tag:
                out = np.empty((n, c0 + 4), dtype=np.uint8)
                out[:, :12] = rows[:, :12]
                out[:, 12:16] = tag
                out[:, 16:] = rows[:, 12:]
            else:
                out = rows.copy()
            del rows
            width = out.shape[1]
            buf = out.reshape(-1)
            start = np.arange(n, dtype=np.int64) * width
            caplen = np.full(n, width, dtype=np.uint32)
            wire_len = wire_len + np.uint32(4) if any_tag else wire_len
        else:
            # General path: one copy of the used part of the block; packets keep their places.
            lo = int(offs[0])
            buf = r8[lo:end].copy()
            start = src - lo
            if any_tag:
                pos = start[tagged]
                buf[(pos - 4)[:, None] + _MAC_PAIR] = buf[pos[:, None] + _MAC_PAIR]
                buf[(pos + 8)[:, None] + np.arange(4)] = tag[tagged]
                start[tagged] -= 4
                bump = tagged.astype(np.uint32) * np.uint32(4)
                caplen = caplen + bump
                wire_len = wire_len + bump
        return PacketBatch(
            buf=buf,
            start=start.astype(np.int64, copy=False),
            caplen=caplen.astype(np.uint32, copy=False),
            wire_len=wire_len.astype(np.uint32, copy=False),
            ts_ns=ts,
            ifindex=np.full(n, self.ifindex, dtype=np.uint32),
            linktype=np.full(n, self.linktype, dtype=np.uint16),
            rx_queue=np.full(n, self.rx_queue, dtype=np.uint32),
        )

    # --- statistics ------------------------------------------------------------------------

    def _read_kernel_stats(self) -> None:
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, ctypes.sizeof(tpacket_stats_v3))
        st = tpacket_stats_v3.from_buffer_copy(raw)
        # The kernel zeroes its counters on every read: cumulate here.
        self._kstats[0] += st.tp_packets
        self._kstats[1] += st.tp_drops
        self._kstats[2] += st.tp_freeze_q_cnt

    def statistics(self) -> LiveStatistics:
        """A snapshot of the counters (reads and cumulates the kernel's)."""
        if not self._closed:
            self._read_kernel_stats()
        return LiveStatistics(
            kernel_packets=self._kstats[0],
            kernel_drops=self._kstats[1],
            freeze_q_cnt=self._kstats[2],
            delivered=self._delivered,
            batches=self._batches,
            blocks=self._blocks,
        )

    @property
    def drops(self) -> int:
        """Frames the kernel dropped because the ring was full (cumulative tp_drops)."""
        return self.statistics().kernel_drops

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<LiveSource {self.ifname} ifindex={self.ifindex} rx_queue={self.rx_queue} "
            f"{self.block_count}x{self.block_size}B {state}>"
        )
