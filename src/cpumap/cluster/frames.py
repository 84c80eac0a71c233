"""Frames off the pool: a block of frames in plain numpy arrays, and the parcel that ships it.

On one machine frames move by index through a shared-memory pool.  Between machines there is
no shared pool: what moves is a *parcel* -- two numpy arrays, the packets' bytes and their
descriptor records -- put into Ray's object store (zero-copy for readers on the node that
holds it, one transfer to another node).

A :class:`FrameBlock` is the few frames of one source poll (or of one parcel) laid out as the
engine's pool lays them out -- rows of ``frame_size`` bytes, a headroom, the engine's
40-byte descriptor records -- so that everything that reads pool frames works on it
unchanged: :class:`~cpumap.programs.runner.ProgramRunner` (the steering program, per frame
or vectorized), :func:`~cpumap.skb.skb_batch` and :func:`~cpumap.skb.frame_skbs` (the
handler's skbs).  It satisfies the :class:`cpumap.skb.Frames` protocol (and the program
contexts' ``FramePool``); it has no allocator and no tags:
whoever made it owns every frame of it.

A parcel carries only the columns the packets occupy (from the lowest metadata start to
the end of the longest packet), not whole frames, and the descriptors re-based to that
window, so a batch of 64-byte frames ships 64 bytes a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..engine.frame_pool import DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM, DESCRIPTOR
from ..packets import PacketBatch

_GATHER_MAX = 1024  # widest ragged batch copied with one gather (else: per packet)


class FrameBlock:
    """``count`` frames in numpy arrays: ``data[count, frame_size]`` and ``desc[count]``.

    Read-only arrays (a parcel straight out of the object store) are fine for everything
    but a program that writes packets or metadata.
    """

    def __init__(self, data: np.ndarray, desc: np.ndarray, headroom: int) -> None:
        if data.ndim != 2 or data.dtype != np.uint8 or not data.flags.c_contiguous:
            raise ValueError("data must be a C-contiguous 2-D uint8 array")
        if desc.dtype != DESCRIPTOR or desc.shape != (len(data),):
            raise ValueError("desc must hold one DESCRIPTOR record per row of data")
        self.count = len(data)
        self.frame_size = int(data.shape[1])
        self.headroom = headroom
        self.data = data
        self.flat = data.reshape(-1)
        self.mv: memoryview = memoryview(self.flat)
        self.desc = desc
        self.length = desc["length"]
        self.wire_len = desc["wire_len"]
        self.ts_ns = desc["ts_ns"]
        self.ifindex = desc["ifindex"]
        self.rx_queue = desc["rx_queue"]
        self.linktype = desc["linktype"]
        self.headroom_col = desc["headroom"]
        self.meta_len = desc["meta_len"]

    @classmethod
    def empty(
        cls, count: int, frame_size: int = DEFAULT_FRAME_SIZE, headroom: int = DEFAULT_HEADROOM
    ) -> FrameBlock:
        """A block of ``count`` zeroed frames with the engine's default layout."""
        desc = np.zeros(count, dtype=DESCRIPTOR)
        desc["headroom"] = headroom
        desc["linktype"] = 1
        return cls(np.zeros((count, frame_size), dtype=np.uint8), desc, headroom)

    @property
    def max_packet(self) -> int:
        return self.frame_size - self.headroom

    def packet(self, i: int) -> memoryview:
        start = i * self.frame_size + int(self.headroom_col[i])
        return self.mv[start : start + int(self.length[i])]

    def descriptors(self, idx: np.ndarray) -> np.ndarray:
        return self.desc.take(idx)  # as pack's: fancy indexing is slow on records


def fill(block: FrameBlock, batch: PacketBatch) -> int:
    """Copy the packets of ``batch`` into frames ``0..n-1`` of ``block`` and write their
    descriptors, as the RX side copies into the pool.  A packet longer than a frame's room
    is cut to it (its ``wire_len`` is kept), like the engine does; returns how many were
    cut (the ``truncated`` counter)."""
    n = len(batch)
    if n > block.count:
        raise ValueError(f"{n} packets do not fit in a block of {block.count} frames")
    h = block.headroom
    room = block.max_packet
    caplen = batch.caplen
    cut = 0
    uniform = batch.uniform_length()
    if uniform is not None and uniform <= room:
        s0 = int(batch.start[0])
        block.data[:n, h : h + uniform] = batch.buf[s0 : s0 + uniform * n].reshape(n, uniform)
    elif n:
        width = int(caplen.max())
        if width > room:
            cut = int(np.count_nonzero(caplen > room))
            caplen = np.minimum(caplen, room)
            width = room
        _copy_ragged(block, batch, caplen, width)
    d = block.desc
    d["length"][:n] = caplen
    d["wire_len"][:n] = batch.wire_len
    d["ts_ns"][:n] = batch.ts_ns
    d["ifindex"][:n] = batch.ifindex
    d["rx_queue"][:n] = batch.rx_queue
    d["linktype"][:n] = batch.linktype
    d["headroom"][:n] = h
    d["meta_len"][:n] = 0
    d["hops"][:n] = 0
    # A source reuses its block poll after poll, and a program may have let a hash it
    # computed ride on the last poll's frames: none may ride on this poll's (as _fill).
    d["hash_type"][:n] = 0  # HASH_NONE
    return cut


def _copy_ragged(block: FrameBlock, batch: PacketBatch, caplen: np.ndarray, width: int) -> None:
    """Packets of different lengths: one sliding-window gather for those with ``width``
    bytes of buffer after their start, one memoryview copy each for the rest."""
    h = block.headroom
    buf, start = batch.buf, batch.start
    n = len(start)
    loop: list[int] = list(range(n))
    if width <= _GATHER_MAX and len(buf) >= width:
        fits = start + width <= len(buf)
        windows = sliding_window_view(buf, width)
        if fits.all():  # the usual case: rows 0..n-1 as a slice, not a scatter (~20 % less)
            block.data[:n, h : h + width] = windows[start]
            loop = []
        else:
            block.data[np.flatnonzero(fits), h : h + width] = windows[start[fits]]
            loop = np.flatnonzero(~fits).tolist()
    dst, src, fs = block.mv, memoryview(buf), block.frame_size
    sl, cl = start.tolist(), caplen.tolist()
    for j in loop:
        d = j * fs + h
        dst[d : d + cl[j]] = src[sl[j] : sl[j] + cl[j]]


@dataclass(frozen=True, slots=True)
class Parcel:
    """Frames on their way to an entry: ``rows[n, width]`` (each packet, and its metadata,
    inside its row) and ``desc[n]`` (the engine's records, ``headroom`` = where the packet
    starts in its row).  Two arrays: Ray puts each in its object store as one buffer."""

    rows: np.ndarray
    desc: np.ndarray

    def __len__(self) -> int:
        return len(self.desc)


def pack(block: FrameBlock, idx: np.ndarray) -> Parcel:
    """The parcel of frames ``idx`` of ``block`` (copies: the block is reused)."""
    # take, not desc[idx]: numpy's fancy indexing of a structured array goes field by
    # field, ~50x slower for these 12-field records (250 against 5 us per 1,024 here).
    d = block.desc.take(idx)
    start = d["headroom"].astype(np.int64) - d["meta_len"]
    lo = int(start.min())
    hi = max(int((d["headroom"].astype(np.int64) + d["length"]).max()), lo + 1)
    rows = np.ascontiguousarray(block.data[idx, lo:hi])
    d["headroom"] -= lo
    return Parcel(rows, d)


def unpack(parcel: Parcel) -> FrameBlock:
    """The parcel as a block of frames ``0..n-1`` (views of its arrays, no copy)."""
    rows = parcel.rows
    if not rows.flags.c_contiguous:
        rows = np.ascontiguousarray(rows)
    head = int(parcel.desc["headroom"].min()) if len(parcel) else 0
    return FrameBlock(rows, parcel.desc, head)


class BlockLender:
    """A frame block lent whole, poll after poll, to a capture read in place
    (:class:`~cpumap.capture.mapped.MappedCapture`): the part of an RX producer that a
    mapped capture places into -- ``pool``, ``lend``, ``poll_placed``, ``return_lent``,
    ``frame_wait``, ``closed``.

    A source task owns its block and chooses which of its frames a poll lands in, so the
    lending is trivial: every frame from :attr:`base` on is free at the start of a poll
    (a slot of its shared frames that it took, or its own block, whose last poll's frames
    were packed -- copied -- before), ``lend(n)`` lends frames ``base..base+n-1`` (at most
    ``span``), and what the walk placed is frames ``base..base+placed-1`` (it writes lent
    frames in the order lent).  :meth:`take` hands the poll's placed count to the source
    and forgets it."""

    frame_wait = 0.0  # every frame is free at each poll: no wait for workers
    closed = False

    def __init__(self, block: FrameBlock, span: int | None = None) -> None:
        self.pool = block
        self.span = block.count if span is None else span
        self.base = 0  # the poll's first frame
        self._placed = 0
        self._truncated = 0

    def lend(self, n: int, *, reclaim: bool = True) -> np.ndarray:
        """Frames ``base..base+n-1`` (at most ``span``, and the block's)."""
        n = min(n, self.span, self.pool.count - self.base)
        return np.arange(self.base, self.base + n, dtype=np.uint32)

    def poll_placed(self, idx: np.ndarray, *, truncated: int = 0) -> None:
        """The walk placed frames ``idx`` (``base..base+len(idx)-1``), ``truncated`` of
        them cut."""
        n = len(idx)
        if n and (int(idx[0]) != self.base or int(idx[-1]) != self.base + n - 1):
            raise ValueError("a poll's placed frames are base..base+n-1, in order")
        self._placed, self._truncated = n, truncated

    def return_lent(self) -> int:
        """Nothing to take back: the block is the source's alone."""
        return 0

    def take(self) -> tuple[int, int]:
        """The frames placed since the last call, and how many of them were cut."""
        got = self._placed, self._truncated
        self._placed = self._truncated = 0
        return got
