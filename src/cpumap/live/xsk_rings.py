"""The four rings of an AF_XDP socket, as numpy views over memory shared with the kernel.

An AF_XDP socket talks to the kernel through four single-producer, single-consumer rings,
each ``mmap``-ed from the socket at its own page offset (:mod:`cpumap.live.if_xdp`):

=============  ==============  =============  ====================================
ring           entries         we are the     what moves through it
=============  ==============  =============  ====================================
fill           u64 addresses   producer       empty chunks, for the kernel to fill
RX             ``xdp_desc``    consumer       received frames (address, length)
TX             ``xdp_desc``    producer       frames to transmit
completion     u64 addresses   consumer       chunks the kernel has transmitted
=============  ==============  =============  ====================================

:class:`ProducerRing` and :class:`ConsumerRing` work per *batch*: one call reserves,
submits, peeks or releases any number of entries, and what they hand out is a numpy view
of the ring's own descriptor array, so the cost of a call does not grow with the batch
(the cost model is per call: no per-frame Python).  A view is contiguous, so a batch stops
at the end of the array; the next call continues from its start.

Theory of operation: indices
----------------------------
Each ring has a u32 ``producer`` and a u32 ``consumer`` index, free-running (they wrap at
2**32, never at the ring's size; slot = index & (entries - 1), entries a power of two).
``producer - consumer`` (mod 2**32) is the number of filled slots.  Each index has one
writer: the producer side writes ``producer``, the consumer side ``consumer``; each side
only reads the other's.  So we never read back our own index: we keep it in a Python int
(the ring's ``_head`` / ``_tail`` below) and only store it.

Theory of operation: memory ordering (why the hand-over is safe)
----------------------------------------------------------------
The kernel's side (``net/xdp/xsk_queue.h``) follows ``Documentation/core-api/
circular-buffers.rst``; ours mirrors it::

    producer                              consumer
    (A) c = LOAD.acquire(consumer)        (C) p = LOAD.acquire(producer)
        if room: STORE descriptors            LOAD descriptors (and, for RX, the frames)
    (B) STORE.release(producer, p + n)    (D) STORE.release(consumer, c + n)

* (B) pairs with (C): a consumer that sees the new producer index sees every descriptor
  the producer wrote before it -- and for RX, every byte of the frame the kernel copied
  into the chunk before publishing its descriptor.
* (D) pairs with (A): a producer that sees the new consumer index knows the consumer has
  finished reading those slots (and, since a release orders earlier *loads* too, that the
  reads really happened), so overwriting them cannot change what the consumer saw.

The kernel does its half with ``smp_load_acquire`` / ``smp_store_release`` (its (A) is a
control dependency, which is enough in the kernel's memory model).  Python has neither, so
every load and store of an index goes through :mod:`cpumap._atomics`: ``load_u32`` is a
C11 ``atomic_load_explicit(..., memory_order_acquire)`` and ``store_u32`` an
``atomic_store_explicit(..., memory_order_release)`` on the index's address.  The
descriptors are read and written by numpy between those calls; the calls are opaque to
the compiler and the acquire/release orders every memory access of this thread, whichever
function makes it, so numpy's accesses are ordered exactly as the diagram requires.  (On
x86 the two are plain moves; the explicit orders keep the code right on arm64.)

The caller's part of the contract: read a peeked view before releasing it (a released
slot may be overwritten at once) and write a reserved view before submitting it.  For the
RX ring, releasing a *descriptor* does not release the *chunk*: the chunk stays the
caller's until it goes back through the fill ring (:mod:`cpumap.live.xsk`).

Theory of operation: need-wakeup
--------------------------------
With ``XDP_USE_NEED_WAKEUP`` the kernel sets ``XDP_RING_NEED_WAKEUP`` in a producer
ring's flags word when it will not look at that ring again until it is kicked (a
zero-copy driver that found the fill ring empty; the TX ring in copy mode, always).
:meth:`ProducerRing.needs_wakeup` is meant to be asked right after :meth:`submit`, and
that is a store (the producer index) followed by a load (the flags): the one order that
acquire/release do not give, so it issues a full fence (``_atomics.fence``) before the
load.  It cannot close the window entirely: a driver sets the flag *after* its last look
at the producer index, with no fence of its own in between, so a flag set just after we
read it is missed.  That costs latency, never a frame: who owns an entry is decided by
the indices alone, and the socket's poll loop asks again on every empty poll (``poll(2)``
on the socket also kicks the driver whenever the flag is set).

A ring is used by one thread at a time (the kernel's side is one NAPI context); nothing
here locks.
"""

from __future__ import annotations

import contextlib
import mmap

import numpy as np

from .. import _atomics
from ..errors import ClosedResourceError
from .if_xdp import XDP_RING_NEED_WAKEUP, xdp_ring_offset

XDP_DESC = np.dtype([("addr", np.uint64), ("len", np.uint32), ("options", np.uint32)])
"""An RX / TX ring entry (``struct xdp_desc``); fill and completion entries are ``uint64``."""
assert XDP_DESC.itemsize == 16

_U32 = 0xFFFF_FFFF


class Ring:
    """One mmapped ring: its index words, flags word and descriptor array.

    ``fd``: the AF_XDP socket, whose ring of ``entries`` (set by setsockopt before) sits at
    mmap offset ``pgoff``; ``offsets``: where its words are (``XDP_MMAP_OFFSETS``).
    """

    def __init__(
        self, fd: int, pgoff: int, offsets: xdp_ring_offset, entries: int, dtype: np.dtype
    ) -> None:
        size = offsets.desc + entries * dtype.itemsize
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        self._map = mmap.mmap(fd, size, flags, mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
        base = np.frombuffer(self._map, dtype=np.uint8).ctypes.data
        self._producer = base + offsets.producer
        self._consumer = base + offsets.consumer
        self._flags = base + offsets.flags
        self.entries = entries
        self._mask = entries - 1
        self.desc: np.ndarray = np.frombuffer(
            self._map, dtype=dtype, count=entries, offset=offsets.desc
        )
        """The descriptor array itself, for reading only (use the batch calls to move)."""
        self._readonly = self.desc.view()  # peeked slices inherit it: made once, not per call
        self._readonly.flags.writeable = False
        # The same entries as u32 words, one row an entry (peek_words): made once, as a
        # structured array's view() runs a Python-level safety check on every call.
        self._words = np.frombuffer(
            self._map, dtype=np.uint32, count=entries * dtype.itemsize // 4, offset=offsets.desc
        ).reshape(entries, dtype.itemsize // 4)
        self._words.flags.writeable = False
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("AF_XDP ring is closed")

    def close(self) -> None:
        """Unmap the ring.  Idempotent; the kernel keeps its side until the socket closes."""
        if self._closed:
            return
        self._closed = True
        self.desc = self._readonly = np.empty(0, dtype=self.desc.dtype)
        self._words = np.empty((0, self._words.shape[1]), dtype=np.uint32)
        with contextlib.suppress(BufferError):  # a caller's view pins it: unmapped with that
            self._map.close()

    @property
    def flags(self) -> int:
        """The flags word (``XDP_RING_NEED_WAKEUP``), loaded with acquire ordering."""
        self._check_open()
        return int(_atomics.load_u32(self._flags))


class ProducerRing(Ring):
    """The fill or TX ring: we write entries, the kernel consumes them.

    ``reserve(n)`` hands out up to ``n`` free slots as a writable view; the caller writes
    them and ``submit(k)`` publishes the first ``k`` reserved (release store of the
    producer index).  :meth:`produce` does both for an array of entries.
    """

    def __init__(
        self, fd: int, pgoff: int, offsets: xdp_ring_offset, entries: int, dtype: np.dtype
    ) -> None:
        super().__init__(fd, pgoff, offsets, entries, dtype)
        self._head = int(_atomics.load_u32(self._producer))  # published: the kernel may read
        self._reserved = 0  # slots handed out after _head, not yet submitted
        self._cached_consumer = int(_atomics.load_u32(self._consumer))

    def free(self) -> int:
        """Slots a producer may fill now (reserved ones excluded); one acquire load."""
        self._check_open()
        self._cached_consumer = int(_atomics.load_u32(self._consumer))  # (A)
        used = (self._head + self._reserved - self._cached_consumer) & _U32
        return self.entries - used

    def reserve(self, n: int) -> np.ndarray:
        """Up to ``n`` free slots after those already reserved, as a writable view.

        Shorter than ``n`` when the ring is that full or the slots would wrap past the end
        of the array (reserve again for the rest).  Write them, then :meth:`submit`.
        """
        self._check_open()
        used = (self._head + self._reserved - self._cached_consumer) & _U32
        if self.entries - used < n:
            used = self.entries - self.free()
        start = (self._head + self._reserved) & self._mask
        count = max(0, min(n, self.entries - used, self.entries - start))
        self._reserved += count
        return self.desc[start : start + count]

    def submit(self, n: int | None = None) -> None:
        """Publish the first ``n`` reserved slots (all when ``None``) to the kernel (B)."""
        self._check_open()
        n = self._reserved if n is None else n
        if not 0 <= n <= self._reserved:
            raise ValueError(f"cannot submit {n} entries: {self._reserved} are reserved")
        self._head = (self._head + n) & _U32
        self._reserved = 0  # what was reserved beyond n is handed out again next time
        _atomics.store_u32(self._producer, self._head)

    def produce(self, entries: np.ndarray, mask: int | None = None) -> int:
        """Copy ``entries`` into the ring and submit them; return how many fitted.

        At most two copies (the ring may wrap) and one release store, whatever the count.
        Entries that did not fit (the first returned-count are in) are the caller's still.
        ``mask``: AND each entry with it on the way in (RX addresses to their chunks' bases
        in the same pass, :meth:`cpumap.live.xsk.XskSocket.recycle`).
        """
        if self._reserved:
            raise RuntimeError("produce() with slots reserved: submit() them first")
        done = 0
        while done < len(entries):
            view = self.reserve(len(entries) - done)
            if not len(view):
                break
            part = entries[done : done + len(view)]
            if mask is None:
                view[:] = part
            else:
                np.bitwise_and(part, np.uint64(mask), out=view)
            done += len(view)
        self.submit()
        return done

    def needs_wakeup(self) -> bool:
        """Whether the kernel waits for a kick before it reads this ring again.

        A full fence first: the preceding :meth:`submit` stored the producer index, and the
        flag must be read after that store is visible (see the module's need-wakeup part).
        """
        self._check_open()
        _atomics.fence()
        return bool(_atomics.load_u32(self._flags) & XDP_RING_NEED_WAKEUP)


class ConsumerRing(Ring):
    """The RX or completion ring: the kernel writes entries, we consume them.

    ``peek(n)`` hands out up to ``n`` ready entries as a view (after those already
    peeked); ``release(k)`` gives the oldest ``k`` peeked slots back to the kernel (release
    store of the consumer index).
    """

    def __init__(
        self, fd: int, pgoff: int, offsets: xdp_ring_offset, entries: int, dtype: np.dtype
    ) -> None:
        super().__init__(fd, pgoff, offsets, entries, dtype)
        self._tail = int(_atomics.load_u32(self._consumer))  # released to the kernel
        self._peeked = 0  # slots handed out after _tail, not yet released
        self._cached_producer = self._tail

    def available(self) -> int:
        """Entries ready and not yet peeked; one acquire load of the producer index (C)."""
        self._check_open()
        self._cached_producer = int(_atomics.load_u32(self._producer))
        return (self._cached_producer - self._tail - self._peeked) & _U32

    def peek(self, n: int) -> np.ndarray:
        """Up to ``n`` ready entries after those already peeked, as a read-only view.

        Shorter than ``n`` when fewer are ready or they wrap past the end of the array
        (peek again for the rest).  Valid until :meth:`release` gives them back.
        """
        start, count = self._peek_slots(n)
        return self._readonly[start : start + count]

    def peek_words(self, n: int) -> np.ndarray:
        """:meth:`peek` as u32 words, one row an entry (an ``xdp_desc`` is addr lo, addr
        hi, len, options): a read-only view, valid until :meth:`release`."""
        start, count = self._peek_slots(n)
        return self._words[start : start + count]

    def _peek_slots(self, n: int) -> tuple[int, int]:
        self._check_open()
        ready = (self._cached_producer - self._tail - self._peeked) & _U32
        if ready < n:
            ready = self.available()
        start = (self._tail + self._peeked) & self._mask
        count = max(0, min(n, ready, self.entries - start))
        self._peeked += count
        return start, count

    def cancel(self, n: int) -> None:
        """Un-peek the newest ``n`` peeked entries: the next :meth:`peek` hands them out
        again (libxdp's ``xsk_ring_cons__cancel``).  Nothing is stored -- the consumer
        index is not moved, so the kernel cannot have reused those slots, and what they
        hold is still there to be read."""
        self._check_open()
        if not 0 <= n <= self._peeked:
            raise ValueError(f"cannot cancel {n} entries: {self._peeked} are peeked")
        self._peeked -= n

    def release(self, n: int | None = None) -> None:
        """Give the oldest ``n`` peeked slots (all when ``None``) back to the kernel (D)."""
        self._check_open()
        n = self._peeked if n is None else n
        if not 0 <= n <= self._peeked:
            raise ValueError(f"cannot release {n} entries: {self._peeked} are peeked")
        self._tail = (self._tail + n) & _U32
        self._peeked -= n
        _atomics.store_u32(self._consumer, self._tail)
