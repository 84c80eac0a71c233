"""Parcels between a source and an entry on the same node, through shared memory.

Between nodes a parcel goes through Ray's object store: ``ray.put`` copies it in (creating
and sealing an object: calls into the store's process), the entry reads it out.  On one
node that costs more than all the rest of a frame's way: measured here, a 10 MB put
takes 1.4 - 15 ms, where the source reads, steers and packs the same frames in 3
(docs/cluster.md).  The kernel's cpumap moves frames by pointer through a ring in shared
memory; on one node we can too.

A :class:`ParcelRing` is one source's ring to one entry on its node: an anonymous
``memfd`` (no name in ``/dev/shm``: the memory goes when the last process holding it
lets go, however it ends, as ``cpumap.shm``'s segments), a header of region flags and a
data area.  The source packs each part of a parcel straight into a *region* of the data
(:meth:`ParcelRing.pack`: the part's rows and descriptor records, contiguous, in ring
order), and offers the entry a :class:`RingPart` -- a few integers, carried in the call
itself, nothing put into the object store.  The entry maps the same memory once
(:class:`RingReader`: ``/proc/<pid>/fd/<fd>`` of the source's memfd, checked by the
ring's token in its header), hands the handler read-only views of the region, and when
every frame of the region is handled or refused it stores ``DONE`` into the region's
flag.  The source takes regions back in ring order once their flag says ``DONE``.

Why the hand-over is safe (no write lands under a read, no read sees a half-written part)
------------------------------------------------------------------------------------------
* *Publish.*  The source writes a region's bytes, then makes the offer: a Ray call, sent
  over a socket by a system call (a full barrier) after the stores; the entry reads the
  region only after it received that call.  So the entry sees the whole part.
* *Release.*  The entry's worker reads a region (the handler's call) and only then
  stores ``DONE`` with release order (``_atomics.store_u32``); the source loads the flag
  with acquire order (``_atomics.load_u32``) before it writes the region again.  So
  every read of the region happens before the next write to it, on x86 and on arm64.
  A split part (the entry's queue had room for only some frames) is two queue parts of
  one region: the flag is stored when the last frame of the region has its outcome (a
  count under the entry's lock), refused frames included.
* *Faults.*  A region whose flag never says ``DONE`` is never reused: its frames are in
  flight, queued, or were lost with a process.  The source stops using a ring at the
  first sign that its entry is not the process it was (a failed call, an answer from a
  new incarnation, a stall) and sends that entry's later parcels through the object store
  as before; the ring stays mapped, untouched, until the source ends -- a stuck entry
  still reading it reads frames nobody overwrites.  Only space is lost, never a frame.
* *Back-pressure.*  A ring full of regions not yet ``DONE`` makes the source wait (as a
  producer waits on a full ring), up to the stall deadline; then the entry is treated as
  stuck, as for an offer with no answer (``cpumap.cluster.source``).

On another node ``/proc/<pid>/fd/<fd>`` is not the source's memfd (or not there): the
token in the header does not match, :meth:`RingReader.attach` says so, and that link
uses the object store.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _atomics
from ..engine.frame_pool import DESCRIPTOR
from .frames import FrameBlock, Parcel

FREE, IN_USE, DONE = 0, 1, 2  # a region's flag
_MAGIC = 0x676E_6972_7063  # "cpring": the header's first word
_SLOTS = 1024  # regions a ring can have in use at once
_HEADER = 16 + 4 * _SLOTS  # magic u64, token u64, then one u32 flag per slot
_DATA = (_HEADER + 4095) & ~4095  # the data area starts on a page
_ALIGN = 64  # every region starts on a cache line (descriptors are 8-aligned)


@dataclass(frozen=True, slots=True)
class RingHandle:
    """How another process on the node maps a ring: its source's pid and memfd, its size,
    and the token in its header that proves the memory is the ring's."""

    pid: int
    fd: int
    size: int
    token: int


@dataclass(frozen=True, slots=True)
class RingPart:
    """One part of a parcel in a ring: ``n`` frames of ``width`` bytes from ``offset``
    of the data area, their ``n`` descriptor records after them, under flag ``slot``."""

    ring: RingHandle
    slot: int
    offset: int
    n: int
    width: int

    def __len__(self) -> int:
        return self.n


def _desc_offset(offset: int, n: int, width: int) -> int:
    return (offset + n * width + 7) & ~7


class _Mapping:
    """A ring's memory mapped in this process: the header words and the data area."""

    def __init__(self, fd: int, size: int) -> None:
        self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = np.frombuffer(self.mm, dtype=np.uint64, count=2)
        self.flags = np.frombuffer(self.mm, dtype=np.uint32, count=_SLOTS, offset=16)
        self.flags_addr: int = self.flags.ctypes.data
        self.data = np.frombuffer(self.mm, dtype=np.uint8, offset=_DATA)

    def populate(self, write: bool) -> None:
        """Fault every page in now, before the run: a shared page's first touch costs
        ~10 us in each process that maps it, which measured 0.16 against 0.25-0.33 s on
        600,000 frames (docs/cluster.md); the local map faults its pool in up front too."""
        advice = getattr(mmap, "MADV_POPULATE_WRITE" if write else "MADV_POPULATE_READ", None)
        try:
            if advice is None:
                raise OSError("no MADV_POPULATE_*")
            self.mm.madvise(advice)
        except OSError:  # an older kernel: touch one byte per page instead
            pages = np.frombuffer(self.mm, dtype=np.uint8)[:: mmap.PAGESIZE]
            if write:
                pages[:] = 0
            else:
                int(pages.sum())

    def flag_addr(self, slot: int) -> int:
        return self.flags_addr + 4 * slot

    def close(self) -> None:
        """Drop the mapping (once the views handed out are gone: the kernel frees the
        memory when the last process lets go)."""
        self.words = self.flags = self.data = np.zeros(0, dtype=np.uint8)
        with contextlib.suppress(BufferError):
            self.mm.close()


class ParcelRing:
    """The source's side of a ring of ``size`` data bytes (module docstring)."""

    def __init__(self, size: int) -> None:
        size = max(int(size), 1 << 20)
        self.size = size
        fd = os.memfd_create("cpumap-parcels", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _DATA + size)  # sparse: pages cost only once written
            self._map = _Mapping(fd, _DATA + size)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd  # open while the ring lives: the entry maps it by it
        self._map.populate(write=True)
        token = int.from_bytes(os.urandom(8), "little")
        self._map.words[:] = (_MAGIC, token)
        self.handle = RingHandle(os.getpid(), fd, _DATA + size, token)
        self._head = 0  # bytes handed out, ever (ring position: % size)
        self._tail = 0  # bytes taken back, ever
        self._slot = 0  # the next region's flag
        self._regions: deque[tuple[int, int]] = deque()  # (slot, end) in ring order

    @property
    def in_use(self) -> int:
        """Regions offered and not yet taken back."""
        return len(self._regions)

    def pack(self, block: FrameBlock, idx: np.ndarray) -> RingPart | None:
        """Frames ``idx`` (increasing, as a poll's frames for one entry are) of ``block``
        packed into a region, as :func:`frames.pack` packs a parcel (only the columns the
        packets use; descriptors re-based); None when the ring has no room for them now
        (:meth:`reclaim` first)."""
        d = block.desc.take(idx)
        head = d["headroom"].astype(np.int64)
        lo = int((head - d["meta_len"]).min())
        hi = max(int((head + d["length"]).max()), lo + 1)
        n, width = len(idx), hi - lo
        got = self._alloc(_desc_offset(0, n, width) + n * DESCRIPTOR.itemsize)
        if got is None:
            return None
        slot, offset = got
        data = self._map.data
        rows = data[offset : offset + n * width].reshape(n, width)
        first = int(idx[0])
        if int(idx[-1]) - first == n - 1:  # a run of frames (one entry's poll): one copy
            rows[:] = block.data[first : first + n, lo:hi]
        else:  # (np.take with out= measured 10x slower than this gather and copy)
            rows[:] = block.data[idx, lo:hi]
        d["headroom"] -= lo
        dpos = _desc_offset(offset, n, width)
        # As bytes: numpy copies a structured array field by field (3x slower).
        data[dpos : dpos + n * DESCRIPTOR.itemsize] = d.view(np.uint8)
        return RingPart(self.handle, slot, offset, n, width)

    def reclaim(self) -> int:
        """Take back the regions, oldest first, whose entry said ``DONE``; how many."""
        flags, taken = self._map, 0
        while self._regions:
            slot, end = self._regions[0]
            if _atomics.load_u32(flags.flag_addr(slot)) != DONE:  # acquire: then we write
                break
            self._regions.popleft()
            flags.flags[slot] = FREE
            self._tail = end
            taken += 1
        return taken

    def wait_for_room(self, block: FrameBlock, idx: np.ndarray, deadline: float) -> RingPart | None:
        """:meth:`pack`, waiting (backing off from 20 us to 5 ms) for the entry to finish
        regions until ``deadline`` (``time.monotonic()``); None if none was freed in time."""
        pause = 2e-5
        while True:
            self.reclaim()
            part = self.pack(block, idx)
            if part is not None or time.monotonic() >= deadline:
                return part
            time.sleep(pause)
            pause = min(pause * 2, 0.005)

    def _alloc(self, nbytes: int) -> tuple[int, int] | None:
        """A region of ``nbytes`` (contiguous in the data area: one that would cross the
        end starts again at 0, the bytes skipped belong to it); its slot and offset."""
        nbytes = (nbytes + _ALIGN - 1) & ~(_ALIGN - 1)
        if nbytes > self.size:
            raise ValueError(f"a part of {nbytes} bytes does not fit a ring of {self.size}")
        if len(self._regions) >= _SLOTS or self._map.flags[self._slot] != FREE:
            self.reclaim()
            if len(self._regions) >= _SLOTS or self._map.flags[self._slot] != FREE:
                return None
        start = self._head
        offset = start % self.size
        if offset + nbytes > self.size:  # wrap: skip to the start of the data area
            start += self.size - offset
            offset = 0
        end = start + nbytes
        if end - self._tail > self.size:
            self.reclaim()
            if end - self._tail > self.size:
                return None
        slot = self._slot
        self._map.flags[slot] = IN_USE
        self._slot = (slot + 1) % _SLOTS
        self._head = end
        self._regions.append((slot, end))
        return slot, offset

    def close(self) -> None:
        """Close the memfd and drop this process's mapping (idempotent).  An entry that
        mapped the ring keeps its own mapping until it lets go."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._map.close()


class RingReader:
    """The entry's side: the rings of the sources on its node, mapped, and the parcels of
    their parts as read-only views (module docstring)."""

    def __init__(self) -> None:
        self._maps: dict[int, _Mapping] = {}  # token -> mapping

    def attach(self, handle: RingHandle) -> bool:
        """Map the ring ``handle`` names; False when this process cannot (another node,
        or no access to the source's descriptors)."""
        if handle.token in self._maps:
            return True
        try:
            fd = os.open(f"/proc/{handle.pid}/fd/{handle.fd}", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_size != handle.size:
                return False
            m = _Mapping(fd, handle.size)
        except (OSError, ValueError):
            return False
        finally:
            os.close(fd)  # the mapping keeps the memory
        if int(m.words[0]) != _MAGIC or int(m.words[1]) != handle.token:
            m.close()
            return False
        m.populate(write=False)
        self._maps[handle.token] = m
        return True

    def parcel(self, part: RingPart) -> tuple[Parcel, int]:
        """The frames of ``part`` (read-only views into the ring) and the address of its
        region's flag.  Raises OSError when its ring cannot be mapped here."""
        m = self._maps.get(part.ring.token)
        if m is None:
            if not self.attach(part.ring):
                raise OSError(f"parcel ring of pid {part.ring.pid} is not mappable here")
            m = self._maps[part.ring.token]
        n, width, off = part.n, part.width, part.offset
        rows = m.data[off : off + n * width].reshape(n, width)
        dpos = _desc_offset(off, n, width)
        desc = m.data[dpos : dpos + n * DESCRIPTOR.itemsize].view(DESCRIPTOR)
        rows.flags.writeable = False
        desc.flags.writeable = False
        return Parcel(rows, desc), m.flag_addr(part.slot)

    def forget(self, token: int) -> None:
        """Drop a ring (its source ended): unmapped once the parcels' views are gone."""
        m = self._maps.pop(token, None)
        if m is not None:
            m.close()

    def tokens(self) -> list[int]:
        return list(self._maps)


def mark_done(flag_addr: int) -> None:
    """Say a region's frames are all handled or refused (release: every read of it by this
    process happens before the source can see this store)."""
    _atomics.store_u32(flag_addr, DONE)


def is_ring_part(part: Any) -> bool:
    return isinstance(part, RingPart)
