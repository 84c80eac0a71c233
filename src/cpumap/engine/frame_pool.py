"""The frame pool: packet buffers in shared memory that move between processes by index.

The kernel's xdp_frame lives in a page owned by the driver's RX ring; cpumap moves a
pointer to it.  Here a frame is a fixed-size row of one shared array, and what moves
between processes is its index (a uint32) -- never the bytes, never a pickle.

Layout of a frame (``frame_size`` bytes)::

    | headroom ...................| packet (length bytes) ....... | tailroom |
    0             headroom-meta_len  headroom
                  [metadata area ]

Descriptors, one 40-byte record per frame (:data:`DESCRIPTOR`): ``length`` (captured
bytes), ``wire_len``, ``ts_ns``, ``ifindex``, ``rx_queue``, ``linktype``, ``headroom``
(where the packet starts in the row), ``meta_len`` (metadata bytes just before the
packet, as bpf_xdp_adjust_meta leaves them), ``hops`` (redirects between entries so
far, bounded by the second stage), and ``rx_hash`` with its ``hash_type``: the flow hash
the RX side already computed, which rides with the frame as the driver's RX hash does
into the kernel's skb (``HASH_NONE``: none; the worker computes it).

Records rather than one array per field because a worker gathers the descriptors of a
scattered batch with one numpy call instead of eleven; the RX side writes consecutive
frames, where a field of a record slice is as cheap to write as a column.  ``pool.length``
etc. are views of the fields.  The ``tag`` (below) is a separate array: it has other
writers.

Ownership: who holds a frame is always written down
-----------------------------------------------------
``tag[i]`` says who holds frame ``i`` (``TAG_FREE``, ``TAG_RX``, ``TAG_DONE``,
``TAG_QUEUED + publisher``, ``TAG_HAND + slot``, ``TAG_RETURNED``, and ``TAG_KERNEL``: lent
to the kernel by a source that places frames itself -- an AF_XDP socket's fill ring, the
kernel's hands, its RX ring not yet read).  The state machine --
who may write each tag, and what recovery does from each state -- is written in one
place, ``ownership.py``, with the argument for why no frame ends in two outcomes or none.
At any quiescent point every frame is FREE or RETURNED (or KERNEL, while a source that
places frames is open: it returns them when it closes), and ``audit()`` proves the pool
whole.

Why tags instead of a shared free list: frees come from every worker process, allocations
from every RX producer, and a worker may be killed with SIGKILL at any instruction.  A
shared free list needs a lock that a dead process can hold forever, or a lock-free
structure Python cannot express.  With tags, a worker's release is one numpy store per
batch; each allocator owns a *partition* of the pool (like an AF_XDP UMEM per socket)
and reclaims its RETURNED frames with one vectorised scan when its private free stack
runs low.  And after a crash the tags still say exactly where every frame is.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import numpy as np

from ..map_errors import map_error
from ..shm import Layout, Segment

TAG_FREE = 0
TAG_RX = 1
TAG_RETURNED = 2
TAG_DONE = 3  # held by its RX producer, outcome decided (ownership.py)
TAG_KERNEL = 4  # lent to the kernel (an AF_XDP fill ring, the kernel, its RX ring unread)
TAG_QUEUED = 0x100  # + the publisher's registry index (an RX producer or a second stage)
TAG_HAND = 0x10000  # + map slot number
MAX_PUBLISHERS = TAG_HAND - TAG_QUEUED

DESCRIPTOR = np.dtype(
    [
        ("length", np.uint32),
        ("wire_len", np.uint32),
        ("ts_ns", np.int64),
        ("ifindex", np.uint32),
        ("rx_queue", np.uint32),
        ("linktype", np.uint16),
        ("headroom", np.uint16),
        ("meta_len", np.uint16),
        ("hops", np.uint16),  # second-stage redirects so far (second_stage.py bounds them)
        ("rx_hash", np.uint32),  # the flow hash the RX side computed (skb.hash), if hash_type
        ("hash_type", np.uint16),  # HASH_NONE: no hash rides with the frame; HASH_L4 ...
        ("reserved", np.uint16),
    ]
)
DESC_WORDS = 5  # a descriptor as uint64 words (gathered as words: see FramePool)
assert DESCRIPTOR.itemsize == 8 * DESC_WORDS

# What ``rx_hash`` holds, as the kernel's PKT_HASH_TYPE_* (skb_set_hash's ``type``): the RX
# side (a capture's record walk, a steering program) sets it where it computed skb.hash,
# as a NIC hands the driver its RSS hash; a reader of skb.hash takes it instead of hashing
# again, and computes the hash itself where the type is HASH_NONE.
HASH_NONE = 0
HASH_L3 = 2  # addresses only (no ports: not TCP/UDP, or a fragment)
HASH_L4 = 3  # addresses and ports

DEFAULT_FRAME_SIZE = 2048
DEFAULT_HEADROOM = 256  # XDP_PACKET_HEADROOM
DEFAULT_FRAMES = 4096


@dataclass(frozen=True)
class PoolAudit:
    """Where every frame of a pool is."""

    total: int
    free: int  # in an allocator's free stack
    returned: int  # released, not yet reclaimed: as good as free
    rx: int  # held by RX producers (RX or DONE)
    queued: int  # in rings or in workers' hands
    kernel: int = 0  # lent to the kernel (TAG_KERNEL): back through the RX ring or at close

    @property
    def whole(self) -> bool:
        """True when no frame is held by anyone: free + returned == total."""
        return self.free + self.returned == self.total


class FramePool:
    """``count`` frames of ``frame_size`` bytes in one shared segment, split into
    ``partitions`` equal allocator partitions (one per RX producer)."""

    def __init__(
        self,
        count: int = DEFAULT_FRAMES,
        frame_size: int = DEFAULT_FRAME_SIZE,
        headroom: int = DEFAULT_HEADROOM,
        partitions: int = 1,
    ) -> None:
        if count <= 0 or count >= 2**31:
            raise ValueError(f"frame count must be in 1..2**31-1, not {count}")
        if frame_size < 64 or frame_size % 64:
            raise ValueError(f"frame_size must be a multiple of 64 and >= 64, not {frame_size}")
        if not 0 <= headroom < frame_size - 60:
            raise ValueError(f"headroom {headroom} leaves no room for a packet in {frame_size}")
        if partitions < 1 or partitions > count:
            raise ValueError(f"partitions must be in 1..{count}, not {partitions}")
        self.count = count
        self.frame_size = frame_size
        self.headroom = headroom
        self.partitions = partitions
        check_memory(count * (frame_size + DESCRIPTOR.itemsize + 4))
        layout = Layout("frames")
        layout.add("data", np.uint8, (count, frame_size), align=4096)
        layout.add("desc", DESCRIPTOR, count)
        layout.add("tag", np.uint32, count)
        # Populated up front: the pool is the engine's bounded memory, and the RX hot path
        # should not take a page fault per 4 KiB on its first lap.
        self.segment: Segment = layout.create(populate=True)
        seg = self.segment
        self.data = seg.view("data")
        self.flat = seg.view("data").reshape(-1)
        self.desc = seg.view("desc")
        self.length = self.desc["length"]
        self.wire_len = self.desc["wire_len"]
        self.headroom_col = self.desc["headroom"]
        self.meta_len = self.desc["meta_len"]
        self.hops = self.desc["hops"]
        self.ifindex = self.desc["ifindex"]
        self.rx_queue = self.desc["rx_queue"]
        self.ts_ns = self.desc["ts_ns"]
        self.linktype = self.desc["linktype"]
        self.rx_hash = self.desc["rx_hash"]
        self.hash_type = self.desc["hash_type"]
        self.tag = seg.view("tag")
        # The records as u64 words (DESC_WORDS each): gathering plain words is ~10x faster than
        # gathering structured records (numpy copies those field by field).
        self._desc_words = self.desc.view(np.uint64).reshape(count, DESC_WORDS)
        self.headroom_col[:] = headroom
        self.linktype[:] = 1
        # The whole pool as one writable memoryview: zero-copy views of frames' bytes.
        self.mv: memoryview = seg.memoryview()

    # -- partitions -----------------------------------------------------------------
    def partition_range(self, p: int) -> tuple[int, int]:
        """Frames ``[lo, hi)`` belonging to allocator partition ``p``."""
        if not 0 <= p < self.partitions:
            raise ValueError(f"partition {p} not in 0..{self.partitions - 1}")
        per = self.count // self.partitions
        lo = p * per
        hi = self.count if p == self.partitions - 1 else lo + per
        return lo, hi

    def allocator(self, p: int, block: int | None = None) -> FrameAllocator:
        """A private allocator over partition ``p``: one per RX producer, never shared."""
        return FrameAllocator(self, p, block or DEFAULT_BLOCK)

    # -- frame access -----------------------------------------------------------------
    @property
    def max_packet(self) -> int:
        """The most packet bytes a frame holds with the default headroom."""
        return self.frame_size - self.headroom

    def packet(self, i: int) -> memoryview:
        """Zero-copy view of frame ``i``'s packet bytes (valid while you hold the frame)."""
        start = i * self.frame_size + int(self.headroom_col[i])
        return self.mv[start : start + int(self.length[i])]

    def metadata(self, i: int) -> bytes:
        """The metadata area of frame ``i`` (bytes just before the packet)."""
        h = int(self.headroom_col[i])
        m = int(self.meta_len[i])
        start = i * self.frame_size + h
        return bytes(self.mv[start - m : start])

    def descriptors(self, idx: np.ndarray) -> np.ndarray:
        """The descriptor records of frames ``idx`` (a copy), in one fast gather."""
        return self._desc_words.take(idx, axis=0).view(DESCRIPTOR).reshape(-1)

    def release(self, idx: np.ndarray) -> None:
        """Give frames back to their allocators (any holder may call this for the
        frames it holds).  The caller must not touch them afterwards."""
        self.tag[idx] = TAG_RETURNED

    def audit(self) -> PoolAudit:
        """Count frames by holder (exact only at a quiescent point)."""
        tags = self.tag
        free = int(np.count_nonzero(tags == TAG_FREE))
        ret = int(np.count_nonzero(tags == TAG_RETURNED))
        rx = int(np.count_nonzero((tags == TAG_RX) | (tags == TAG_DONE)))
        kernel = int(np.count_nonzero(tags == TAG_KERNEL))
        queued = self.count - free - ret - rx - kernel
        return PoolAudit(self.count, free, ret, rx, queued, kernel)

    def close(self) -> None:
        self.mv.release()
        self.segment.close()


DEFAULT_BLOCK = 1024


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (``MemAvailable``), or
    None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(nbytes: int) -> None:
    """Refuse a pool that cannot fit in memory, before it is mapped.  The pool is
    populated up front (every page faulted in), so an oversized one would not fail
    cleanly later: the OOM killer would pick a process."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise map_error(
            errno.ENOMEM,
            f"a frame pool of {nbytes / 2**20:.0f} MiB does not fit in the "
            f"{avail / 2**20:.0f} MiB of memory available: use fewer frames (frames=N) or "
            "smaller ones (frame_size=N)",
        )


class FrameAllocator:
    """Allocates frames of one partition, in blocks of consecutive frames.

    Owned by one RX producer: not thread-safe, not shared between processes (its free
    list is private memory).

    Why blocks: a poll that fills ``n`` consecutive frames writes the packets and every
    descriptor column with slice assignments (a memcpy each) instead of fancy-indexed
    scatters, and a vectorized program reads them through views.  In Python the cost is
    per call, and a scattered write costs several times a contiguous one.  The price is
    that a block returns to the free list only when every frame of it has been released,
    so a frame stuck in a slow ring holds back its neighbours: size the pool for it.

    The current block is used up by successive polls; what a poll cannot use of it is
    released at once, so every block eventually comes back whole.

    Invariant: blocks in ``self._free`` have every frame tagged TAG_FREE; frames of the
    current block from ``self._next`` on are TAG_FREE and unused.
    """

    def __init__(self, pool: FramePool, partition: int, block: int = DEFAULT_BLOCK) -> None:
        self.pool = pool
        self.partition = partition
        self.lo, self.hi = pool.partition_range(partition)
        size = self.hi - self.lo
        self.block = max(1, min(block, size // 4))  # at least 4 blocks per partition
        self.nblocks = size // self.block
        # Frames beyond the last whole block are never used (and stay TAG_FREE).
        self._tags2d = pool.tag[self.lo : self.lo + self.nblocks * self.block].reshape(
            self.nblocks, self.block
        )
        # Take over from a previous owner of this partition.  We hold its producer slot, and
        # whatever it held has been recovered (ownership.recover_partition): every frame is
        # FREE, RETURNED or someone else's.  Blocks with frames in flight come back by
        # reclaim().
        t = self._tags2d
        ok = np.flatnonzero(((t == TAG_FREE) | (t == TAG_RETURNED)).all(axis=1))
        t[ok] = TAG_FREE
        self._free: list[int] = ok[::-1].tolist()  # popped from the end: low blocks first
        self._next = 0  # next unused frame of the current block
        self._end = 0  # end of the current block

    @property
    def size(self) -> int:
        return self.nblocks * self.block

    @property
    def available(self) -> int:
        """Frames ready to allocate (not counting RETURNED ones not yet reclaimed)."""
        return len(self._free) * self.block + self._end - self._next

    def reclaim(self) -> int:
        """Put blocks whose every frame is back (RETURNED, or FREE: never used) on the free
        list; returns frames.  The current block is not a candidate (its FREE tail is
        still being handed out), nor are blocks already free (no RETURNED frame).  A
        block a previous owner left partly used comes back this way too.

        Safe against concurrent releases: a worker writes RETURNED only after its last
        access to a frame, and this scan either sees that store or picks the block up
        next time.  Only this allocator ever changes RETURNED to FREE in its partition.
        """
        t = self._tags2d
        # Every frame FREE (0) or RETURNED (2): the two tags with no bit but RETURNED's
        # (RX 1, DONE 3, KERNEL 4, QUEUED/HAND above 0xff all have another), so one pass.
        back = ((t | TAG_RETURNED) == TAG_RETURNED).all(axis=1)
        if self._free:  # already free: every frame FREE (a block elsewhere has a RETURNED
            back[self._free] = False  # or a held frame: only this method writes FREE)
        if self._end > self._next:  # the current block, still being used
            back[(self._next - 1 - self.lo) // self.block] = False
        done = np.flatnonzero(back)
        if len(done):
            t[done] = TAG_FREE
            self._free.extend(done[::-1].tolist())
        return len(done) * self.block

    def alloc_range(self, n: int, tag: int = TAG_RX) -> int | None:
        """The first of ``n`` consecutive frames, tagged ``tag`` (TAG_RX, or TAG_KERNEL for
        frames lent to the kernel); None if no block has room (after a reclaim) or ``n``
        exceeds the block size."""
        if n > self.block or n <= 0:
            return None
        if self._end - self._next < n:
            if not self._free and not self.reclaim():
                return None
            self._retire_current()
            b = self._free.pop()
            self._next = self.lo + b * self.block
            self._end = self._next + self.block
        start = self._next
        self._next += n
        self.pool.tag[start : start + n] = tag
        return start

    def alloc(self, n: int, tag: int = TAG_RX) -> np.ndarray:
        """Up to ``n`` frames (fewer when the partition is exhausted), tagged ``tag``."""
        parts = []
        have = 0
        while have < n:
            k = min(n - have, self.block)
            start = self.alloc_range(k, tag)
            if start is None:
                break
            parts.append(np.arange(start, start + k, dtype=np.uint32))
            have += k
        if not parts:
            return np.zeros(0, dtype=np.uint32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def alloc_some(self, n: int, tag: int, *, reclaim: bool = True) -> np.ndarray:
        """Up to ``n`` frames tagged ``tag``, wasting none: the rest of the current block
        first, then whole free blocks (after a reclaim, if ``reclaim`` and none is free);
        fewer, or none, when the partition has no more.  For frames lent one poll's worth
        at a time (an AF_XDP fill ring), where :meth:`alloc`'s "retire the rest of the
        block" would strand frames until their block's others come back."""
        parts = []
        while n > 0:
            rest = self._end - self._next
            if rest == 0:
                if not self._free and not (reclaim and self.reclaim()):
                    break
                b = self._free.pop()
                self._next = self.lo + b * self.block
                self._end = self._next + self.block
                rest = self.block
            k = min(n, rest)
            start = self._next
            self._next += k
            self.pool.tag[start : start + k] = tag
            parts.append(np.arange(start, start + k, dtype=np.uint32))
            n -= k
        if not parts:
            return np.zeros(0, dtype=np.uint32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def free(self, idx: np.ndarray) -> None:
        """Give back frames this allocator handed out (they return with their block)."""
        self.pool.tag[idx] = TAG_RETURNED

    def close(self) -> None:
        """Give back the unused rest of the current block (the producer is done)."""
        self._retire_current()

    def _retire_current(self) -> None:
        """Release the unused rest of the current block so that the block can come back."""
        if self._next < self._end:
            self.pool.tag[self._next : self._end] = TAG_RETURNED
        self._next = self._end = 0
