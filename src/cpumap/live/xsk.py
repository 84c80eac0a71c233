"""AF_XDP sockets: frames from an interface's queue straight into memory we provide.

An XDP program on the interface redirects a queue's frames into an XSKMAP entry that holds
an :class:`XskSocket`; the kernel writes each frame into a *chunk* of the socket's
:class:`Umem` (memory this process registered) and tells us where through the socket's RX
ring.  No skb is built and nothing is copied in user space.  The rings are in
:mod:`cpumap.live.xsk_rings` (with the memory-ordering argument); the ABI in
:mod:`cpumap.live.if_xdp`.

Theory of operation: the UMEM
-----------------------------
:class:`Umem` registers ``memory`` -- any writable, contiguous buffer the caller owns: an
``mmap``, a numpy array, a :mod:`cpumap.shm` segment's view -- cut into ``chunk_size``
chunks (2048 or 4096: a power of two from 2048 to the page size).  The kernel pins its
pages; its start must be page-aligned and its length a multiple of ``chunk_size``.  A
chunk's *address* is its byte offset in the memory; a received frame starts
``frame_offset`` = 256 (``XDP_PACKET_HEADROOM``) + ``headroom`` bytes into its chunk, so
in copy mode and in zero-copy mode alike a frame's bytes are
``umem.buffer[addr : addr + len]`` for the descriptor's ``addr`` and ``len``.

The engine's frame pool fits as it is: its ``data`` array sits in a memfd segment laid out
by :class:`cpumap.shm.Layout` at a 4096 boundary, ``count`` rows of ``frame_size`` (2048
or 4096) bytes -- a UMEM whose chunk ``i`` is pool frame ``i`` (``addr >> 11``):
``Umem(pool.data)``, only the data array (descriptors and tags stay outside the UMEM).  The
pool's default headroom, 256, is where the kernel puts a frame with no UMEM headroom.  The
kernel then writes frames into pool frames (``tests/live/test_xsk_rx.py``), and every
process that inherited the segment sees them there (the live-path notes measured a forked
child reading them).  Who holds which frame -- the pool's ownership tags -- is the
integration's business, not this module's: here the caller tracks its chunks.

The UMEM is registered on a socket: the :class:`Umem` owns that socket, and the first
:class:`XskSocket` made over it binds it.  More sockets share the UMEM
(``XDP_SHARED_UMEM``): on the same interface and queue they share the UMEM's fill and
completion rings; on another queue (or interface) each has its own pair, and the caller
gives each fill ring chunks of its own partition.

Theory of operation: where a chunk is (no frame lost or doubled)
----------------------------------------------------------------
Every chunk is in exactly one of these places; an arrow is the only move out of a place,
and each is made by exactly one party::

            fill.submit (user)           the kernel takes it from the fill ring
    USER ----------------------> FILL ----------------------------------> KERNEL
     ^                                                                       |
     |  rx.peek (user)            the kernel writes a frame into it and      |
     +-------------------- RX <------ publishes its descriptor --------------+
     |                                                                       |
     |  completion.peek (user)          tx.submit (user), sent by the kernel |
     +------------ COMPLETION <---------- (USER -> TX -> KERNEL -> COMPLETION)

* A chunk enters a ring only in a slot its producer writes before publishing the slot
  (release store), and leaves it only when the consumer reads the slot after seeing it
  published (acquire load) -- each ring has one producer and one consumer, so each slot is
  handed over exactly once: no chunk is taken twice or skipped (``xsk_rings``).
* The kernel keeps a chunk it could not deliver: when the RX ring is full, or the frame
  is too big, the frame is dropped and counted (``rx_ring_full``, ``rx_dropped``) and the
  chunk goes to the kernel's own free list for the next frame -- it stays KERNEL.  When
  the fill ring is empty, the frame is dropped without taking a chunk (``rx_dropped``).
  So every frame that reaches the socket is delivered once or counted once:
  ``received + rx_dropped + rx_ring_full == frames redirected to the socket``.
* The user's part: submit to the fill (or TX) ring only chunks it holds (USER), and not
  touch a chunk once submitted.  A chunk in two places means a chunk submitted twice.
* A descriptor released from the RX ring does *not* return its chunk: the chunk stays USER
  (the frame is the caller's to read) until the caller submits it to the fill ring.  Its
  bytes must be read before that submit, which is a release store: the kernel cannot see
  the chunk as free before the reads are done.
* Closing: chunks in the fill ring or the kernel's hands at close are simply the
  caller's again -- the memory was always the caller's; the kernel unpins it when the
  last socket on the UMEM is gone.

Keeping the fill ring full.  By default the fill ring has room for every chunk (its size
is the power of two at or above the chunk count).  Then :meth:`ProducerRing.produce` of
chunks the caller holds always fits: the fill ring holds at most the chunks the caller
does not, so its free slots are at least the chunks the caller does hold.  The receive
loop is thus: put every chunk into the fill ring once; per batch, peek RX descriptors,
read (or hand on) the frames, give back the chunks whose frames are done
(:meth:`XskSocket.recycle`), release the descriptors -- one call each, per batch, as
Suricata's AF_XDP capture does.

Copy and zero-copy.  ``XskMode.AUTO`` binds with neither flag: the kernel uses zero-copy
where the driver has it (``ndo_xsk_wakeup``) and copy mode otherwise, and
:attr:`XskSocket.note` says which it fell back to (veth has no zero-copy).  ``ZEROCOPY``
insists (the kernel's EOPNOTSUPP on veth); ``COPY`` never tries.

An XskSocket belongs to the network namespace of the thread that made it (the interface is
resolved there), and is used by one thread of the process that made it.  The UMEM's socket is
made with the Umem, and bind() resolves an ifindex in *its* namespace: a Umem made in one
namespace and bound to an interface of another would silently bind another device (the
same ifindex there), so that is refused -- make a Umem and its first socket in the same
namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import math
import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass, fields

import numpy as np

from ..closing import ClosedWhenCollected, Closing
from ..errors import ClosedResourceError, Error
from .if_xdp import (
    AF_XDP,
    SOL_XDP,
    UMEM_ENTRY_SIZE,
    XDP_COPY,
    XDP_MMAP_OFFSETS,
    XDP_OPTIONS,
    XDP_OPTIONS_ZEROCOPY,
    XDP_PACKET_HEADROOM,
    XDP_PGOFF_RX_RING,
    XDP_PGOFF_TX_RING,
    XDP_RX_RING,
    XDP_SHARED_UMEM,
    XDP_STATISTICS,
    XDP_TX_RING,
    XDP_UMEM_COMPLETION_RING,
    XDP_UMEM_FILL_RING,
    XDP_UMEM_MIN_CHUNK_SIZE,
    XDP_UMEM_PGOFF_COMPLETION_RING,
    XDP_UMEM_PGOFF_FILL_RING,
    XDP_UMEM_REG,
    XDP_USE_NEED_WAKEUP,
    XDP_ZEROCOPY,
    sockaddr_xdp,
    xdp_mmap_offsets,
    xdp_options,
    xdp_statistics,
    xdp_umem_reg,
)
from .interface import NoSuchInterface, resolve_interface
from .xsk_rings import XDP_DESC, ConsumerRing, ProducerRing

UmemMemory = np.ndarray | mmap.mmap | memoryview | bytearray
"""What a :class:`Umem` registers: writable, contiguous memory the caller owns."""

_libc = ctypes.CDLL(None, use_errno=True)
_ADDR = np.dtype(np.uint64)  # a fill / completion ring entry
assert _ADDR.itemsize == UMEM_ENTRY_SIZE
_TX_RETRY = (errno.EAGAIN, errno.EBUSY, errno.ENOBUFS)  # sendto: the kernel is busy, ask again
_SIOCETHTOOL = 0x8946  # <linux/sockios.h>
_ETHTOOL_GCHANNELS = 0x3C  # <linux/ethtool.h>


class XskError(Error, OSError):
    """The kernel refused an AF_XDP operation (or would: a rule it enforces was broken).

    ``errno`` is the kernel's; the message names the rule and what to change.
    """


class XskMode(enum.Enum):
    """How an :class:`XskSocket` binds: who copies frames into the UMEM."""

    AUTO = 0  # zero-copy where the driver has it, else copy (the kernel decides)
    COPY = XDP_COPY  # the kernel copies each frame into a chunk (any driver: skb or native XDP)
    ZEROCOPY = XDP_ZEROCOPY  # the driver DMAs into chunks; EOPNOTSUPP where it cannot


@dataclass(frozen=True, slots=True)
class XskStatistics:
    """The socket's counters (``XDP_STATISTICS``), cumulative since it was bound."""

    rx_dropped: int
    """Frames dropped for want of a chunk (the fill ring was empty) or for being larger
    than a chunk's room."""
    rx_invalid_descs: int
    """Invalid descriptors found on the RX ring (none in practice)."""
    tx_invalid_descs: int
    """TX descriptors the kernel refused (address outside the UMEM, length too big)."""
    rx_ring_full: int
    """Frames dropped because the RX ring was full (the consumer fell behind)."""
    rx_fill_ring_empty_descs: int
    """Times the kernel found the fill ring empty.  In copy mode each of these frames is
    also in ``rx_dropped``: do not add the two."""
    tx_ring_empty_descs: int
    """Times the kernel found the TX ring empty when asked to send."""

    @property
    def rx_lost(self) -> int:
        """Frames that reached the socket and were not delivered: ``rx_dropped +
        rx_ring_full``."""
        return self.rx_dropped + self.rx_ring_full


# --- small syscall helpers ----------------------------------------------------------------


def _xdp_socket() -> socket.socket:
    try:
        return socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    except PermissionError:
        raise XskError(
            errno.EPERM, "AF_XDP sockets need CAP_NET_RAW (and CAP_NET_ADMIN to bind): run as root"
        ) from None
    except OSError as e:
        if e.errno != errno.EAFNOSUPPORT:
            raise
        raise XskError(e.errno, "this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)") from None


def _set_ring(sock: socket.socket, option: int, entries: int, what: str) -> None:
    try:
        sock.setsockopt(SOL_XDP, option, entries)
    except OSError as e:
        rule = "a power of two, at least 1" if e.errno == errno.EINVAL else e.strerror
        raise XskError(e.errno, f"{what} ring of {entries} entries refused: {rule}") from None


def _mmap_offsets(sock: socket.socket) -> xdp_mmap_offsets:
    raw = sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, ctypes.sizeof(xdp_mmap_offsets))
    return xdp_mmap_offsets.from_buffer_copy(raw)


def _resolve(interface: str | int) -> tuple[str, int]:
    """(name, ifindex) in the calling thread's network namespace, as an XskError."""
    try:
        return resolve_interface(interface)
    except NoSuchInterface as e:
        raise XskError(e.errno, e.strerror) from None


def queue_counts(ifname: str) -> tuple[int, int] | None:
    """(RX, TX) queues of ``ifname`` as ethtool reports them (``ethtool -l``), or None
    where the driver does not say.  Combined channels count on both sides."""
    channels = (ctypes.c_uint32 * 9)(_ETHTOOL_GCHANNELS)  # struct ethtool_channels
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(channels))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            fcntl.ioctl(probe.fileno(), _SIOCETHTOOL, ifreq)
        except OSError:
            return None
    rx, tx, combined = channels[5], channels[6], channels[8]
    return rx + combined, tx + combined


def thread_netns() -> tuple[int, int]:
    """The calling thread's network namespace, as (device, inode) of its nsfs file: the
    namespace a socket made now belongs to, and where bind() resolves an ifindex."""
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


# --- the UMEM -------------------------------------------------------------------------------


def _umem_refusal(err: int, reg: xdp_umem_reg) -> XskError:
    """Why the kernel refused XDP_UMEM_REG: the first of its rules ``reg`` breaks."""
    page, chunk, head = mmap.PAGESIZE, reg.chunk_size, reg.headroom
    if err in (errno.ENOMEM, errno.EPERM, errno.ENOBUFS):
        why = f"cannot pin {reg.len} bytes: raise RLIMIT_MEMLOCK (ulimit -l) or run as root"
    elif err != errno.EINVAL:
        why = os.strerror(err)
    elif chunk < XDP_UMEM_MIN_CHUNK_SIZE or chunk > page or chunk & (chunk - 1):
        why = f"chunk_size {chunk}: use 2048 or {page} (a power of two from 2048 to the page size)"
    elif reg.addr % page:
        why = (
            f"memory at {reg.addr:#x} is not page-aligned ({page}): use an mmap, a memfd "
            "segment, or an array laid out at a 4096 boundary (shm.Layout.add(align=4096))"
        )
    elif reg.len == 0 or reg.len % chunk:
        why = (
            f"length {reg.len} is not a positive multiple of chunk_size {chunk}: "
            f"register the first {reg.len // chunk * chunk} bytes"
        )
    elif head:
        why = (
            f"headroom {head} leaves too little of a {chunk}-byte chunk (the kernel keeps "
            f"{XDP_PACKET_HEADROOM} bytes of XDP headroom and its tailroom): use less (0 is usual)"
        )
    else:
        why = os.strerror(err)
    return XskError(err, f"UMEM refused by the kernel ({errno.errorcode.get(err, err)}): {why}")


def _as_bytes(memory: UmemMemory) -> np.ndarray:
    """``memory`` as a flat writable uint8 array over the same bytes (no copy)."""
    view = memoryview(memory)
    if view.readonly:
        raise XskError(errno.EFAULT, "UMEM memory must be writable: the kernel writes frames")
    if not view.c_contiguous:
        raise XskError(errno.EINVAL, "UMEM memory must be one contiguous block")
    return np.frombuffer(view.cast("B") if view.ndim != 1 or view.format != "B" else view, np.uint8)


@dataclass(frozen=True, slots=True)
class UmemBinding:
    """Where a UMEM's own socket (its first :class:`XskSocket`) is bound, and how."""

    ifindex: int
    queue: int
    zero_copy: bool
    need_wakeup: bool


class Umem(Closing):
    """Packet memory registered with the kernel, with its fill and completion rings.

    ``memory``: writable, contiguous, page-aligned, a multiple of ``chunk_size`` long; the
    Umem holds a reference until it closes.  ``chunk_size``: bytes per frame (2048 or 4096).
    ``headroom``: bytes the caller reserves in each chunk after the kernel's 256.
    ``fill_size`` / ``completion_size``: ring entries (powers of two); by default room for
    every chunk (see "keeping the fill ring full").

    Errors: :class:`XskError` with the kernel's errno and the rule broken (EINVAL for
    unaligned memory, a bad chunk size or headroom; EPERM without root).
    """

    def __init__(
        self,
        memory: UmemMemory,
        *,
        chunk_size: int = 2048,
        headroom: int = 0,
        fill_size: int | None = None,
        completion_size: int | None = None,
    ) -> None:
        self.buffer: np.ndarray = _as_bytes(memory)
        """The memory as a flat uint8 array: a frame is ``buffer[addr : addr + len]``."""
        self.address = int(self.buffer.ctypes.data)
        self.size = len(self.buffer)
        self.chunk_size = chunk_size
        self.headroom = headroom
        self.chunks = self.size // chunk_size if chunk_size > 0 else 0
        self.frame_offset = XDP_PACKET_HEADROOM + headroom
        """Where a received frame starts in its chunk."""
        self._binding: UmemBinding | None = None
        self.netns = thread_netns()
        """The network namespace of the UMEM's socket: its first XskSocket binds there."""
        self._claimed = False  # the UMEM's socket was handed to its first XskSocket
        self._sockets: list[XskSocket] = []
        self._closed = True  # until construction completes
        self._sock = _xdp_socket()
        try:
            self._register()
            self.fill, self.completion = _umem_rings(
                self._sock, fill_size or _pow2_at_least(self.chunks), completion_size or 0
            )
        except BaseException:
            self._sock.close()
            self.buffer = np.empty(0, dtype=np.uint8)  # a traceback must not pin the memory
            raise
        self._closed = False

    def _register(self) -> None:
        reg = xdp_umem_reg(
            addr=self.address,
            len=self.size,
            chunk_size=max(self.chunk_size, 0),
            headroom=max(self.headroom, 0),
        )
        try:
            self._sock.setsockopt(SOL_XDP, XDP_UMEM_REG, bytes(reg))
        except OSError as e:
            raise _umem_refusal(e.errno or errno.EINVAL, reg) from None

    @property
    def fd(self) -> int:
        """The socket the UMEM is registered on (``sxdp_shared_umem_fd`` of sharers)."""
        self._check_open()
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("UMEM is closed")

    def chunk_addresses(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The addresses of chunks ``start .. stop - 1`` (all by default), as fill entries."""
        indices = np.arange(start, self.chunks if stop is None else stop, dtype=np.uint64)
        return indices * np.uint64(self.chunk_size)

    @property
    def chunk_mask(self) -> int:
        """An address ANDed with this is its chunk's base (aligned chunks)."""
        return ~(self.chunk_size - 1) & 0xFFFF_FFFF_FFFF_FFFF

    def chunk_base(self, addrs: np.ndarray) -> np.ndarray:
        """The chunk each address (a descriptor's ``addr``) falls in, as a fill entry."""
        return addrs & np.uint64(self.chunk_mask)

    def frames(self, desc: np.ndarray) -> list[memoryview]:
        """Zero-copy views of the frames of RX descriptors ``desc`` (for tests and tools:
        one Python object a frame; batch code indexes :attr:`buffer` instead)."""
        mv = memoryview(self.buffer)
        return [
            mv[a : a + n] for a, n in zip(desc["addr"].tolist(), desc["len"].tolist(), strict=True)
        ]

    # --- used by XskSocket ---------------------------------------------------------------

    def attach(self, xsk: XskSocket, binding: UmemBinding | None) -> None:
        """Record a socket over this UMEM (and, for the first, its binding)."""
        self._check_open()
        if binding is not None:
            self._binding = binding
        self._sockets.append(xsk)

    def detach(self, xsk: XskSocket) -> None:
        with contextlib.suppress(ValueError):
            self._sockets.remove(xsk)

    @property
    def binding(self) -> UmemBinding | None:
        """Where the UMEM's own socket is bound (None until the first XskSocket)."""
        return self._binding

    def claim_socket(self) -> socket.socket:
        """The UMEM's own socket, for its first XskSocket to configure and bind.

        Once only: the kernel keeps the rings a socket is given, so a first XskSocket that
        failed after setting them leaves this UMEM without a usable socket.
        """
        self._check_open()
        if self._claimed:
            raise XskError(
                errno.EINVAL,
                "this UMEM's socket was set up by an XskSocket that then failed to bind, and "
                "the kernel keeps the rings it set: make a new Umem",
            )
        self._claimed = True
        return self._sock

    def close(self) -> None:
        """Close every socket over the UMEM, unmap its rings, close its socket.  Idempotent.

        The kernel unpins the memory when its last socket is gone; the memory itself is the
        caller's and stays mapped.
        """
        if self._closed:
            return
        for xsk in list(self._sockets):
            xsk.close()
        self._closed = True
        self.fill.close()
        self.completion.close()
        self._sock.close()
        self.buffer = np.empty(0, dtype=np.uint8)  # the caller's memory is free to unmap

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Umem {self.chunks}x{self.chunk_size}B at {self.address:#x} {state}>"


def _umem_rings(
    sock: socket.socket, fill_size: int, completion_size: int
) -> tuple[ProducerRing, ConsumerRing]:
    """Set up and map a fill and a completion ring on ``sock`` (completion: fill's size
    when 0)."""
    _set_ring(sock, XDP_UMEM_FILL_RING, fill_size, "fill")
    _set_ring(sock, XDP_UMEM_COMPLETION_RING, completion_size or fill_size, "completion")
    off = _mmap_offsets(sock)
    fill = ProducerRing(sock.fileno(), XDP_UMEM_PGOFF_FILL_RING, off.fr, fill_size, _ADDR)
    try:
        completion = ConsumerRing(
            sock.fileno(),
            XDP_UMEM_PGOFF_COMPLETION_RING,
            off.cr,
            completion_size or fill_size,
            _ADDR,
        )
    except BaseException:
        fill.close()
        raise
    return fill, completion


# --- the socket -----------------------------------------------------------------------------


def _bind_refusal(err: int, ifname: str, queue: int, flags: int) -> XskError:
    """Why the kernel refused bind(): what to change."""
    where = f"{ifname} queue {queue}"
    if err == errno.EINVAL and (counts := queue_counts(ifname)) and queue >= max(counts):
        why = f"queue out of range: {ifname} has {counts[0]} RX and {counts[1]} TX queue(s)"
    elif err == errno.EOPNOTSUPP and flags & XDP_ZEROCOPY:
        why = f"{ifname}'s driver has no AF_XDP zero-copy: use XskMode.AUTO or COPY"
    elif err == errno.EBUSY:
        why = (
            "another AF_XDP socket or UMEM is bound there: close it, or share its UMEM (the "
            "kernel frees a closed socket's hold on the queue shortly after: ~20 ms measured)"
        )
    elif err == errno.ENODEV:
        why = "the interface is gone"
    else:
        why = os.strerror(err)
    return XskError(err, f"bind to {where} refused ({errno.errorcode.get(err, err)}): {why}")


def _check_queue(ifname: str, queue: int) -> None:
    """Refuse a queue the device lacks before anything is set up (the kernel would refuse
    it at bind, with EINVAL, after the rings were made)."""
    counts = queue_counts(ifname)
    if counts is not None and queue >= max(counts):
        raise _bind_refusal(errno.EINVAL, ifname, queue, 0)


def _bind(sock: socket.socket, addr: sockaddr_xdp, ifname: str) -> None:
    if _libc.bind(sock.fileno(), ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
        err = ctypes.get_errno()
        raise _bind_refusal(err, ifname, addr.sxdp_queue_id, addr.sxdp_flags)


def _zero_copy(sock: socket.socket) -> bool:
    raw = sock.getsockopt(SOL_XDP, XDP_OPTIONS, ctypes.sizeof(xdp_options))
    return bool(xdp_options.from_buffer_copy(raw).flags & XDP_OPTIONS_ZEROCOPY)


class XskSocket(ClosedWhenCollected):
    """An AF_XDP socket bound to one queue of one interface, over a :class:`Umem`.

    ``interface``: name or ifindex, in the calling thread's network namespace; ``queue``:
    its RX queue.  ``rx_size`` / ``tx_size``: ring entries (powers of two; 0: no such
    ring; at least one of them).  ``mode``: see :class:`XskMode`.  ``need_wakeup``: bind
    with ``XDP_USE_NEED_WAKEUP`` (the driver may sleep until kicked; see
    :meth:`wake_rx`).  The first socket over a UMEM binds the UMEM's own socket; later
    ones share it (``XDP_SHARED_UMEM``) and take its mode and need-wakeup: ``mode`` must
    then be ``AUTO``.  A sharer on another queue or interface gets its own fill and
    completion rings (``fill_size`` / ``completion_size``, by default the UMEM's sizes).

    The socket receives only once an XDP program redirects the queue into an XSKMAP entry
    holding :meth:`fileno`.  Errors: :class:`XskError` with the kernel's errno and what to
    change (EINVAL for a queue the device lacks, EOPNOTSUPP for zero-copy it lacks).
    """

    def __init__(
        self,
        umem: Umem,
        interface: str | int,
        queue: int = 0,
        *,
        rx_size: int = 2048,
        tx_size: int = 0,
        mode: XskMode = XskMode.AUTO,
        need_wakeup: bool = True,
        fill_size: int | None = None,
        completion_size: int | None = None,
    ) -> None:
        if rx_size <= 0 and tx_size <= 0:
            raise XskError(errno.EINVAL, "an AF_XDP socket needs an RX or a TX ring (or both)")
        if not 0 <= queue <= 0xFFFF_FFFF:
            raise XskError(errno.EINVAL, f"queue must be in 0..2**32-1, got {queue}")
        self.ifname, self.ifindex = _resolve(interface)
        self.queue = queue
        self.umem = umem
        self.shared = umem.binding is not None
        if self.shared and mode is not XskMode.AUTO:
            raise XskError(
                errno.EINVAL,
                "a socket sharing a UMEM takes the mode of the UMEM's first socket: pass AUTO",
            )
        if not self.shared and umem.netns != thread_netns():
            raise XskError(
                errno.EINVAL,
                f"the UMEM was made in another network namespace than {self.ifname!r}: its "
                "socket would bind an ifindex of that namespace; make the Umem where you make "
                "its first XskSocket (inside the same `entered(netns)` block)",
            )
        _check_queue(self.ifname, queue)
        self._closed = True  # until construction completes
        self._sock = _xdp_socket() if self.shared else umem.claim_socket()
        self._rings: list[ConsumerRing | ProducerRing] = []  # every ring this object mapped
        try:
            self._setup(rx_size, tx_size, fill_size, completion_size)
            flags = self._bind(mode, need_wakeup)
        except BaseException:
            self._release()
            raise
        self._bound(mode, flags)
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLIN)
        self._closed = False

    def _bound(self, mode: XskMode, flags: int) -> None:
        """Record the mode the kernel chose, and tell the UMEM."""
        self.zero_copy = _zero_copy(self._sock)
        self.note: str | None = None
        """Why the socket is not in the mode asked for (AUTO fell back to copy), or None."""
        if mode is XskMode.AUTO and not self.zero_copy:
            self.note = f"copy mode: {self.ifname}'s driver gave no AF_XDP zero-copy"
        owner = self.umem.binding
        if owner is None:
            self.need_wakeup = bool(flags & XDP_USE_NEED_WAKEUP)
            me = UmemBinding(self.ifindex, self.queue, self.zero_copy, self.need_wakeup)
            self.umem.attach(self, me)
        else:
            self.need_wakeup = owner.need_wakeup
            self.umem.attach(self, None)

    def _setup(
        self, rx_size: int, tx_size: int, fill_size: int | None, completion_size: int | None
    ) -> None:
        """Size and map the rings (before bind: the kernel wants them there)."""
        umem, sock, owner = self.umem, self._sock, self.umem.binding
        if owner is not None and (self.ifindex, self.queue) != (owner.ifindex, owner.queue):
            self.fill, self.completion = _umem_rings(
                sock, fill_size or umem.fill.entries, completion_size or umem.completion.entries
            )
            self._rings += [self.fill, self.completion]
        else:
            self.fill, self.completion = umem.fill, umem.completion
        if rx_size > 0:
            _set_ring(sock, XDP_RX_RING, rx_size, "RX")
        if tx_size > 0:
            _set_ring(sock, XDP_TX_RING, tx_size, "TX")
        off = _mmap_offsets(sock)
        fd = sock.fileno()
        self.rx: ConsumerRing | None = None
        self.tx: ProducerRing | None = None
        if rx_size > 0:
            self.rx = ConsumerRing(fd, XDP_PGOFF_RX_RING, off.rx, rx_size, XDP_DESC)
            self._rings.append(self.rx)
        if tx_size > 0:
            self.tx = ProducerRing(fd, XDP_PGOFF_TX_RING, off.tx, tx_size, XDP_DESC)
            self._rings.append(self.tx)

    def _bind(self, mode: XskMode, need_wakeup: bool) -> int:
        """Bind; return the flags used."""
        if self.shared:
            flags, umem_fd = XDP_SHARED_UMEM, self.umem.fd
        else:
            flags, umem_fd = mode.value | (XDP_USE_NEED_WAKEUP if need_wakeup else 0), 0
        addr = sockaddr_xdp(AF_XDP, flags, self.ifindex, self.queue, umem_fd)
        _bind(self._sock, addr, self.ifname)
        return flags

    def _release(self) -> None:
        for ring in self._rings:
            ring.close()
        if self.shared:
            self._sock.close()

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Unmap this socket's rings and close it.  Idempotent.

        The first socket over a UMEM *is* the UMEM's socket: it stays bound (and in any
        XSKMAP) until :meth:`Umem.close`.  Close sharers before the UMEM, or let the UMEM
        close them.
        """
        if self._closed:
            return
        self._closed = True
        self.umem.detach(self)
        self._release()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("AF_XDP socket is closed")

    def fileno(self) -> int:
        """The socket's fd: the value of its XSKMAP entry, and pollable (readable: RX)."""
        self._check_open()
        return self._sock.fileno()

    def recycle(self, desc: np.ndarray) -> int:
        """Give the chunks of RX descriptors ``desc`` back to this socket's fill ring, in one
        pass (each address ANDed down to its chunk's base on the way in); return how many.

        Read their frames first: the submit is what lets the kernel write into them.  With
        the default fill size every chunk the caller holds fits (the module's argument).
        """
        return self.fill.produce(desc["addr"], self.umem.chunk_mask)

    # --- waiting and kicking ------------------------------------------------------------

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether the RX ring has frames, waiting up to ``timeout`` s (None: forever).

        No syscall when frames are already there.  ``poll(2)`` also kicks the driver when
        the fill ring needs a wakeup, and drives TX in copy mode.
        """
        self._check_open()
        if self.rx is not None and self.rx.available():
            return True
        wait_ms = -1 if timeout is None else max(0, math.ceil(timeout * 1000))
        return bool(self._poller.poll(wait_ms))

    def wake_rx(self) -> bool:
        """Kick the driver if the fill ring asks for it (after a fill submit); return
        whether it did.  Copy mode never asks: the fill ring is read as frames arrive."""
        self._check_open()
        if not self.fill.needs_wakeup():
            return False
        self._sock.recv(0, socket.MSG_DONTWAIT)
        return True

    def kick_tx(self) -> bool:
        """Ask the kernel to send what the TX ring holds (``sendto``); return False when it
        is busy (EAGAIN, EBUSY, ENOBUFS: reap the completion ring and kick again).

        In copy mode the kernel sends a bounded batch per kick and needs a kick always.
        """
        self._check_open()
        try:
            self._sock.send(b"", socket.MSG_DONTWAIT)
        except OSError as e:
            if e.errno in _TX_RETRY:
                return False
            raise XskError(e.errno, f"AF_XDP transmit on {self.ifname}: {e.strerror}") from None
        return True

    # --- counters -----------------------------------------------------------------------

    def statistics(self) -> XskStatistics:
        """The kernel's counters for this socket (cumulative; reading does not reset)."""
        self._check_open()
        size = ctypes.sizeof(xdp_statistics)
        raw = self._sock.getsockopt(SOL_XDP, XDP_STATISTICS, size).ljust(size, b"\0")
        st = xdp_statistics.from_buffer_copy(raw)
        return XskStatistics(**{f.name: int(getattr(st, f.name)) for f in fields(XskStatistics)})

    def __repr__(self) -> str:
        mode = "zero-copy" if getattr(self, "zero_copy", False) else "copy"
        state = "closed" if self._closed else "open"
        return f"<XskSocket {self.ifname} queue {self.queue} {mode} {state}>"
