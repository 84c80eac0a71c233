"""A source's frames shared with the entries on its node: read once, handled in place.

Between nodes a parcel goes through Ray's object store: the source packs (copies) the
frames for an entry, ``ray.put`` copies them in, the entry reads them out.  On one node
both copies cost more than the rest of a frame's way -- measured here, a 10 MB put takes
1.4 - 15 ms where the source reads, steers and packs the same frames in 3
(docs/cluster.md).  The kernel's cpumap moves a frame by pointer through a ring, from
the page the driver wrote it into; on one node we can too.

:class:`SharedFrames` is a source's frame pool in shared memory: an anonymous ``memfd``
(no name in ``/dev/shm``: the memory goes when the last process holding it lets go,
however it ends, as ``cpumap.shm``'s segments) cut into ``slots`` of one poll each --
rows of ``frame_size`` bytes and the engine's descriptor records, as a
:class:`~cpumap.cluster.frames.FrameBlock` lays them out -- an index area, a flag and a
range per (slot, entry), and a **doorbell ring** per entry.  Each poll the source takes a
free slot (the lowest: the slots in use stay few, and in the CPU's cache), places the
capture's records in it (``capture/mapped.py``, through
:class:`~cpumap.cluster.frames.BlockLender`) and runs the program over it; the frames
redirected, sorted by entry, go into the slot's index area.  An entry that mapped the pool
(:meth:`SharedFramesReader.attach`: ``/proc/<pid>/fd/<fd>`` of the source's memfd, checked
by the token in its header) gets its part of the slot -- a :class:`SharedPart`: the slot
and a range of its index area -- through its doorbell (:meth:`SharedFrames.publish`): the
range is written beside the slot's flag and the slot's number pushed into the entry's
ring (``engine/ring.py``, the local map's ring, its sleep and wake-up included), with no
Ray call.  A thread of the entry takes it and hands the handler the frames where they lie
(``cluster/actor.py``, ``_Doorbell``).  When every frame the slot holds for that entry has
its outcome, the entry stores ``DONE`` into the (slot, entry) flag; a slot whose every
flag says ``DONE`` is free again.  An entry on another node gets its frames packed into
parcels, through the object store, as before.  (An entry also takes a shared part in an
offer, a Ray call, as it takes a parcel.)

Why the hand-over is safe (no write lands under a read, no read sees half a poll)
-----------------------------------------------------------------------------------
* *Publish.*  The source writes a slot's frames, descriptors, indices and the entry's
  range, then pushes the slot's number into the entry's ring: the ring's tail is stored
  with release order after those stores, and the entry loads it with acquire order before
  it reads the range or a frame (``engine/ring.py`` argues the ring's ordering).
* *Release.*  The entry's worker reads the frames (the handler's call) and only then
  stores ``DONE`` with release order (``_atomics.store_u32``); the source loads every
  flag of the slot with acquire order (``_atomics.load_u32``) before it writes the slot
  again.  So every read of a slot happens before the next write to it, on x86 and arm64.
* *Every part.*  A slot's frames for one entry are published once, as one range; the
  entry's queue may split it at its room, and the parts are handled in any order.  Each
  part carries the slot's ``total`` for that entry, and the entry stores ``DONE`` when
  that many frames of the slot have an outcome -- handled or refused -- not when one part
  is done.  A slot is taken again only after ``DONE`` (so no part of its next use can be
  confused with this one's), and so a ring never holds more numbers than there are
  slots: it is never full.
* *Faults.*  A flag that never says ``DONE`` keeps its slot: its frames are in the ring,
  queued, or were lost with a process.  At the first sign that an entry is not the
  process it was (a failed call, an answer, a tally or a ping from a new incarnation -- a
  source waiting for a slot asks the holders -- or a stall) the source stops sharing with
  it -- its later frames go through the object store -- and the slots it held are never
  written again in the run (a stuck entry still reading one reads frames nobody
  overwrites).  Only space is lost, never a frame; with every slot lost the source reads
  on into a private block of its own.
* *Totals.*  Nothing answers a published part, so each entry also keeps its running
  totals for the source on its **totals board** in the pool (:func:`write_totals`: a
  sequence lock, one writer), updated as it accepts, refuses and handles the source's
  frames.  The source reads it at the end (:func:`read_totals`) as one more report of
  that incarnation: what an entry that died had handled is counted, not lost.
* *Back-pressure.*  No free slot makes the source offer what it has gathered for entries
  elsewhere and wait, as a producer waits on a full ring, up to the stall deadline; then
  the entries that hold slots are treated as stuck.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from dataclasses import dataclass

import numpy as np

from .. import _atomics
from ..engine.frame_pool import DESCRIPTOR
from ..engine.ring import RING_HEADER_BYTES, Ring
from ..shm import populate_mapping
from .frames import FrameBlock

FREE, IN_USE, DONE = 0, 1, 2  # a (slot, entry) flag
# An entry's totals board, per entry: a sequence word (odd while written), the token and
# pid of the incarnation that wrote it, then its running totals for this source.
TOTALS_WORDS = 16
_TOTALS_AT = 3  # the first count's word
_MAGIC = 0x7366_7370_6D63  # "cmpsfs": the header's first word
_MEMFD_NAME = "cpumap-shared-frames"  # its link in /proc: "/memfd:cpumap-shared-frames (deleted)"


def _boot_id() -> str:
    """This machine's boot ID: two processes with the same see the same /proc."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _page(n: int) -> int:
    return (n + mmap.PAGESIZE - 1) & ~(mmap.PAGESIZE - 1)


@dataclass(frozen=True, slots=True)
class SharedHandle:
    """How another process on the node maps a source's frames: the machine (its boot
    ID), the source's pid and memfd, the size, the token in the header that proves the
    memory is this pool, and its layout (``slots`` of ``poll`` frames of ``frame_size``
    bytes, flags for ``keys`` entries)."""

    boot_id: str
    pid: int
    fd: int
    size: int
    token: int
    slots: int
    poll: int
    frame_size: int
    headroom: int
    keys: int


@dataclass(frozen=True, slots=True)
class SharedPart:
    """Frames of slot ``slot`` for entry ``key``: those whose indices are
    ``index[lo:hi]``; the slot holds ``total`` frames for that entry in all."""

    shared: SharedHandle
    slot: int
    key: int
    lo: int
    hi: int
    total: int

    def __len__(self) -> int:
        return self.hi - self.lo


class _Mapping:
    """The pool mapped in this process: header words, flags, the frame block, indices."""

    def __init__(self, fd: int, h: SharedHandle, writable: bool) -> None:
        self.mm = mmap.mmap(
            fd, h.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        frames = h.slots * h.poll
        at = _layout(h.slots, h.poll, h.frame_size, h.keys)
        self.handle = h
        self.words = np.frombuffer(self.mm, dtype=np.uint64, count=2)
        self.flags = np.frombuffer(
            self.mm, dtype=np.uint32, count=h.slots * h.keys, offset=at.flags
        )
        self.flags_addr: int = self.flags.ctypes.data
        self.ranges = np.frombuffer(
            self.mm, dtype=np.uint32, count=2 * h.slots * h.keys, offset=at.ranges
        ).reshape(h.slots, h.keys, 2)
        base = self.words.ctypes.data  # the header's first word is the pool's first byte
        self.rings = [
            Ring(
                base + at.rings + k * at.ring_stride,
                np.frombuffer(
                    self.mm,
                    dtype=np.uint32,
                    count=h.slots,
                    offset=at.rings + k * at.ring_stride + RING_HEADER_BYTES,
                ),
            )
            for k in range(h.keys)
        ]
        self.totals = np.frombuffer(
            self.mm, dtype=np.uint64, count=TOTALS_WORDS * h.keys, offset=at.totals
        ).reshape(h.keys, TOTALS_WORDS)
        rows = np.frombuffer(self.mm, dtype=np.uint8, count=frames * h.frame_size, offset=at.rows)
        desc = np.frombuffer(self.mm, dtype=DESCRIPTOR, count=frames, offset=at.desc)
        self.index = np.frombuffer(self.mm, dtype=np.uint32, count=frames, offset=at.index)
        if not writable:  # the entry's handler gets read-only frames, as from the store
            rows.flags.writeable = desc.flags.writeable = self.index.flags.writeable = False
            self.ranges.flags.writeable = False
        self.block = FrameBlock(rows.reshape(frames, h.frame_size), desc, h.headroom)
        self.keys = h.keys

    def flag_addr(self, slot: int, key: int) -> int:
        return self.flags_addr + 4 * (slot * self.keys + key)

    def populate(self, write: bool) -> None:
        """Fault every page in now, before the run: a shared page's first touch costs
        ~10 us in each process that maps it (the ring's first pass measured 0.25-0.33 s
        against 0.16 s on 600,000 frames, docs/cluster.md); the local map faults its pool
        in up front too."""
        populate_mapping(self.mm, write=write)

    def close(self) -> None:
        """Drop the mapping once the views handed out are gone (the kernel frees the
        memory when the last process lets go)."""
        empty = np.zeros(0, dtype=np.uint8)
        self.words = self.flags = self.index = self.ranges = self.totals = empty
        self.rings = []
        self.block = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):
            self.mm.close()


@dataclass(frozen=True, slots=True)
class _Layout:
    """Byte offsets in a pool: the flags and ranges (per slot and entry), the doorbell
    rings (one per entry, ``ring_stride`` apart), the entries' totals boards, then rows,
    descriptors and indices."""

    flags: int
    ranges: int
    rings: int
    ring_stride: int
    totals: int
    rows: int
    desc: int
    index: int
    size: int


def _line(n: int) -> int:
    return (n + 63) & ~63


def _layout(slots: int, poll: int, frame_size: int, keys: int) -> _Layout:
    """Where everything lies in a pool of that shape (rows on a page, rings on lines)."""
    frames = slots * poll
    flags_at = 16
    ranges_at = flags_at + 4 * slots * keys
    rings_at = _line(ranges_at + 8 * slots * keys)
    stride = RING_HEADER_BYTES + _line(4 * slots)
    totals_at = rings_at + stride * keys
    rows_at = _page(totals_at + 8 * TOTALS_WORDS * keys)
    desc_at = _page(rows_at + frames * frame_size)
    idx_at = desc_at + _line(frames * DESCRIPTOR.itemsize)
    size = _page(idx_at + 4 * frames)
    return _Layout(flags_at, ranges_at, rings_at, stride, totals_at, rows_at, desc_at, idx_at, size)


def shared_size(slots: int, poll: int, frame_size: int, keys: int) -> int:
    """Bytes of a pool of that layout."""
    return _layout(slots, poll, frame_size, keys).size


class SharedFrames:
    """The source's side (module docstring): ``slots`` polls of ``poll`` frames, shared
    with the entries of ``keys`` that attach."""

    def __init__(self, slots: int, poll: int, frame_size: int, headroom: int, keys: int) -> None:
        size = shared_size(slots, poll, frame_size, keys)
        fd = os.memfd_create(_MEMFD_NAME, os.MFD_CLOEXEC)
        token = int.from_bytes(os.urandom(8), "little")
        h = SharedHandle(
            _boot_id(), os.getpid(), fd, size, token, slots, poll, frame_size, headroom, keys
        )
        try:
            os.ftruncate(fd, size)
            self._map = _Mapping(fd, h, writable=True)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd  # open while the pool lives: the entries map it by it
        self._map.populate(write=True)
        for ring in self._map.rings:  # before the handle leaves: nobody sees them yet
            ring.init(slots)
        self._map.words[:] = (_MAGIC, token)
        self.block = self._map.block
        self.block.desc["headroom"] = headroom
        self.block.desc["linktype"] = 1
        self.index = self._map.index
        self.handle = h
        self.poll = poll
        self._users: list[list[int] | None] = [None] * slots  # entries holding each slot
        self._lost: set[int] = set()  # slots never written again (an entry's fault)

    # -- slots ---------------------------------------------------------------------------------
    def try_acquire(self) -> int | None:
        """A free slot, now (taking back slots whose flags all say DONE); None if none.

        The lowest free one: the slots in use then stay few and the same, so the frames
        the source writes are still in the CPU's cache (a poll's slot is 8 MiB; placing
        records into 3 slots in turn took 85 - 89 ns a frame here, into 15 in turn
        141 - 170)."""
        for s, users in enumerate(self._users):
            if s in self._lost:
                continue
            if users is not None and not self._reclaim(s):
                continue
            self._users[s] = []
            return s
        return None

    def acquire(self, deadline: float) -> int | None:
        """:meth:`try_acquire`, waiting (backing off from 20 us to 1 ms) until ``deadline``
        (``time.monotonic()``); None when every slot is lost or none came free in time."""
        pause = 2e-5
        while (s := self.try_acquire()) is None:
            if self.exhausted or time.monotonic() >= deadline:
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.001)
        return s

    @property
    def exhausted(self) -> bool:
        """Every slot lost to faults: nothing can be shared any more."""
        return len(self._lost) == len(self._users)

    def slot_block(self, slot: int) -> FrameBlock:
        """Slot ``slot``'s frames as a block of their own (views: frames ``0..poll-1`` of
        it are frames ``slot * poll ...`` of :attr:`block`)."""
        b, lo = self.block, slot * self.poll
        return FrameBlock(b.data[lo : lo + self.poll], b.desc[lo : lo + self.poll], b.headroom)

    def part(self, slot: int, key: int, lo: int, hi: int, total: int) -> SharedPart:
        """Frames ``index[lo:hi]`` of ``slot`` for entry ``key`` (``total`` of the slot's
        frames are that entry's), to offer it; the slot is the entry's until it says DONE."""
        users = self._users[slot]
        assert users is not None  # Invariant: parts come from a slot acquired for the poll
        if key not in users:
            users.append(key)
            self._map.flags[slot * self.handle.keys + key] = IN_USE
        return SharedPart(self.handle, slot, key, lo, hi, total)

    def publish(self, part: SharedPart) -> bool:
        """Hand ``part`` (all of its slot's frames for its entry: ``lo..hi``, one part
        per slot and entry) to its entry through the entry's doorbell ring: its range
        written, then the slot's number published (the ring's release store orders
        them, and the index area written before), the entry's doorbell thread woken if
        it sleeps.  False if the ring had no room (it cannot: it holds as many numbers as
        there are slots, and a slot is published to an entry again only after that
        entry said DONE with it)."""
        assert part.hi - part.lo == part.total  # Invariant: the slot's whole range
        self._map.ranges[part.slot, part.key] = (part.lo, part.hi)
        return self._map.rings[part.key].produce(np.array([part.slot], dtype=np.uint32)) == 1

    def board_of(self, key: int) -> np.ndarray:
        """Entry ``key``'s totals board in this pool (its writer is that entry)."""
        return self._map.totals[key]

    def totals(self, key: int) -> tuple[int, int, tuple[int, ...]] | None:
        """What entry ``key`` last wrote on its totals board in this pool: the token and
        pid of the incarnation, and its running totals for this source (None: nothing
        written, or no consistent read: :func:`read_totals`)."""
        return read_totals(self._map.totals[key])

    def poll_done(self, slot: int) -> None:
        """The poll over ``slot`` is sent: a slot no entry got a part of is free now."""
        if self._users[slot] == []:
            self._users[slot] = None

    def holders(self) -> set[int]:
        """The entries holding a slot: not yet DONE with it (an entry DONE with a slot that
        another holds is not what the source waits for)."""
        held: set[int] = set()
        m = self._map
        for s, users in enumerate(self._users):
            if users is None or s in self._lost or self._reclaim(s):
                continue
            held.update(k for k in users if _atomics.load_u32(m.flag_addr(s, k)) != DONE)
        return held

    def lose(self, key: int) -> None:
        """Entry ``key`` is not the process it was, or is stuck: the slots it holds (not
        yet DONE with) are never written again (module docstring, faults)."""
        m = self._map
        for s, users in enumerate(self._users):
            held = users and key in users and not self._reclaim(s)
            if held and _atomics.load_u32(m.flag_addr(s, key)) != DONE:
                self._lost.add(s)

    def _reclaim(self, slot: int) -> bool:
        """Whether ``slot`` is free, taking it back when every flag of it says DONE."""
        users = self._users[slot]
        if not users:  # free, or the poll being sent (poll_done frees it if no part came)
            return users is None
        m, flags = self._map, self._map.flags
        for key in users:
            if _atomics.load_u32(m.flag_addr(slot, key)) != DONE:  # acquire: then we write
                return False
        for key in users:
            flags[slot * self.handle.keys + key] = FREE
        self._users[slot] = None
        return True

    def close(self) -> None:
        """Close the memfd and drop this process's mapping (idempotent).  An entry that
        mapped the pool keeps its own mapping until it lets go."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.block = self.index = None  # type: ignore[assignment]
            self._map.close()


class SharedFramesReader:
    """The entry's side: the pools of the sources on its node, mapped, and the frames of
    their parts where they lie (module docstring)."""

    def __init__(self) -> None:
        self._maps: dict[int, _Mapping] = {}  # token -> mapping

    def attach(self, handle: SharedHandle) -> bool:
        """Map the pool ``handle`` names; False when this process cannot: another machine
        (its boot ID differs: nothing of it is opened), or no access to the source's
        descriptors.  Only the source's own memfd is opened (its link names it), and the
        token in its header must be the handle's."""
        if handle.token in self._maps:
            return True
        if handle.boot_id != _boot_id():
            return False
        path = f"/proc/{handle.pid}/fd/{handle.fd}"
        try:
            if not os.readlink(path).startswith(f"/memfd:{_MEMFD_NAME} "):
                return False
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_size != handle.size:
                return False
            m = _Mapping(fd, handle, writable=False)
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

    def frames(self, part: SharedPart) -> tuple[FrameBlock, np.ndarray, int]:
        """The block ``part``'s frames lie in, their indices in it (read-only views), and
        the address of their (slot, entry) flag.  Raises OSError when the pool cannot be
        mapped here."""
        m = self._maps.get(part.shared.token)
        if m is None:
            if not self.attach(part.shared):
                raise OSError(f"the frames of pid {part.shared.pid} cannot be mapped here")
            m = self._maps[part.shared.token]
        return m.block, m.index[part.lo : part.hi], m.flag_addr(part.slot, part.key)

    def doorbell(self, token: int, key: int) -> Ring:
        """Entry ``key``'s doorbell ring in the pool ``token`` (mapped: :meth:`attach`)."""
        return self._maps[token].rings[key]

    def board(self, token: int, key: int) -> np.ndarray:
        """Entry ``key``'s totals board in the pool ``token`` (:func:`write_totals`)."""
        return self._maps[token].totals[key]

    def posted(self, token: int, slot: int, key: int) -> SharedPart:
        """The part of ``slot`` that the source published to entry ``key`` through its
        doorbell ring (read after the ring's take: the range is the source's)."""
        m = self._maps[token]
        lo, hi = (int(x) for x in m.ranges[slot, key])
        return SharedPart(m.handle, slot, key, lo, hi, hi - lo)

    def forget(self, token: int) -> None:
        """Drop a pool (its source ended): unmapped once the frames' views are gone."""
        m = self._maps.pop(token, None)
        if m is not None:
            m.close()


def write_totals(board: np.ndarray, token: int, pid: int, counts: np.ndarray) -> None:
    """Write an incarnation's running totals for a source on its board in the source's
    pool (the entry, under its lock: one writer per board), so that the source knows them
    even if the incarnation dies before its tally answers.  A sequence lock: the word is
    odd while the rest is written (each store ordered by a fence, or by the release store
    of the even value), and a reader retries a read that saw it odd or moved."""
    addr = board.ctypes.data
    seq = _atomics.load_u64(addr)
    _atomics.store_u64(addr, seq + 1)
    _atomics.fence()  # the odd word before any count (store-store order on arm64 too)
    board[1:_TOTALS_AT] = (token, pid)
    board[_TOTALS_AT : _TOTALS_AT + len(counts)] = counts
    _atomics.store_u64(addr, seq + 2)  # release: every count before the even word


def read_totals(board: np.ndarray, tries: int = 1000) -> tuple[int, int, tuple[int, ...]] | None:
    """A consistent read of a totals board (:func:`write_totals`): (token, pid, counts);
    None if nothing was written (token 0) or no read was consistent in ``tries`` (its
    writer stopped mid-write: it died)."""
    addr = board.ctypes.data
    for _ in range(tries):
        seq = _atomics.load_u64(addr)  # acquire: the counts read below are at least this new
        if seq & 1:
            os.sched_yield()
            continue
        snap = board[1:].copy()
        _atomics.fence()  # the counts read before the word is read again
        if _atomics.load_u64(addr) == seq:
            token, pid = int(snap[0]), int(snap[1])
            counts = tuple(int(x) for x in snap[_TOTALS_AT - 1 :])
            return (token, pid, counts) if token else None
    return None


def mark_done(flag_addr: int) -> None:
    """Say an entry is done with a slot (release: every read of it by this process happens
    before the source can see this store)."""
    _atomics.store_u32(flag_addr, DONE)
