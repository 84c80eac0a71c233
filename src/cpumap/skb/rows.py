"""The rows an :class:`~cpumap.skb.SkbBatch` parses, and how it reads them.

* :class:`PoolRows` -- the rows of scattered frames of a frame pool, gathered only when a
  column first needs packet bytes (a batch whose hashes ride with the frames needs none).
* :class:`FrameReader` -- big-endian loads at a per-frame offset, for every frame of a
  batch at once: what the batch parser's general path reads with.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Final

import numpy as np

# Prebuilt: a dtype given as a string is parsed again on every .view() (a few tenths of a µs).
_BE16: Final = np.dtype(">u2")
_BE32: Final = np.dtype(">u4")
_LE32: Final = np.dtype("<u4")


class FrameReader:
    """Big-endian loads at a per-frame offset, for every frame of a batch at once.

    ``u16(pos)`` gives, for each frame i, the u16 at byte ``pos[i]`` of frame i, in one gather
    over a byte-strided view of the rows.  Where the read would go past the frame's captured
    length the value is garbage: callers mask it with :meth:`has`.  A read that :meth:`has`
    allows never leaves its row, since ``offset + length <= frame size``.

    Gathers index the views (``view[idx]``) rather than ``view.take(idx)``: take copies a
    strided source whole first, which for a pool-sized batch is megabytes per load.
    """

    def __init__(
        self, rows: np.ndarray, offset: np.ndarray, length: np.ndarray, uniform: int | None
    ) -> None:
        n, frame_size = rows.shape
        # With one offset for every frame, a load at a fixed position is a strided view of
        # the rows (one numpy call) rather than a gather (five).
        self._rows = rows if uniform is not None and rows.strides[1] == 1 else None
        self._uniform = uniform or 0
        self._width = frame_size
        flat, stride = _flat_view(rows)
        if flat.size < 4:  # too small for the u32 view; pad a copy (only degenerate pools)
            flat = np.concatenate([flat, np.zeros(4, dtype=np.uint8)])
        self.base = np.arange(n, dtype=np.int64) * stride + offset
        self.length = length
        self._u8 = flat

    # The unaligned views cost a microsecond each, and most batches need one or two.
    @cached_property
    def _be16(self) -> np.ndarray:
        return _unaligned_view(self._u8, ">u2")

    @cached_property
    def _be32(self) -> np.ndarray:
        return _unaligned_view(self._u8, ">u4")

    @cached_property
    def _le32(self) -> np.ndarray:
        return _unaligned_view(self._u8, "<u4")

    def has(self, pos: np.ndarray | int, size: np.ndarray | int) -> np.ndarray:
        """Whether bytes ``pos .. pos+size`` of each frame were captured."""
        return pos + size <= self.length

    def u8(self, pos: np.ndarray | int) -> np.ndarray:
        if type(pos) is int and self._fixed(pos, 1):
            return self._fixed_load(pos, 1, np.uint8)
        return self._load(self._u8, pos)

    def u16(self, pos: np.ndarray | int) -> np.ndarray:
        if type(pos) is int and self._fixed(pos, 2):
            return self._fixed_load(pos, 2, _BE16)
        return self._load(self._be16, pos)

    def u32(self, pos: np.ndarray | int) -> np.ndarray:
        if type(pos) is int and self._fixed(pos, 4):
            return self._fixed_load(pos, 4, _BE32)
        return self._load(self._be32, pos)

    def u32le(self, pos: np.ndarray | int) -> np.ndarray:
        if type(pos) is int and self._fixed(pos, 4):
            return self._fixed_load(pos, 4, _LE32)
        return self._load(self._le32, pos)

    def _fixed(self, pos: int, size: int) -> bool:
        return self._rows is not None and pos >= 0 and self._uniform + pos + size <= self._width

    def _fixed_load(self, pos: int, size: int, dtype: Any) -> np.ndarray:
        assert self._rows is not None
        start = self._uniform + pos
        return self._rows[:, start : start + size].view(dtype)[:, 0].astype(np.int64)

    def u32_words(self, pos: np.ndarray, words: np.ndarray) -> np.ndarray:
        """``[n, len(words)]`` uint32: the u32 at ``pos[i] + words[j]`` of each frame i."""
        index = (self.base + pos)[:, None] + words
        return self._be32[self._clamp(index, self._be32)].astype(np.uint32)

    def _load(self, view: np.ndarray, pos: np.ndarray | int) -> np.ndarray:
        return view[self._clamp(self.base + pos, view)].astype(np.int64)

    @staticmethod
    def _clamp(index: np.ndarray, view: np.ndarray) -> np.ndarray:
        # Only reads that has() rejects can fall outside the pool; keep them inside it.
        return np.minimum(np.maximum(index, 0), view.size - 1)


def _flat_view(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """``rows`` as one 1-D uint8 array and the distance between two rows' starts in it.

    Rows sliced out of a wider pool (``pool[a:b, lo:hi]``: a row stride larger than the
    row, bytes contiguous within a row) are viewed in place, gaps included -- copying them
    contiguous costs a memcpy of the whole batch (300 µs for 1024 frames of 1300 bytes).
    The gaps are other frames' bytes; no read that ``has()`` allows lands in one, since a
    frame lies inside its row.  Any other layout is copied."""
    n, width = rows.shape
    stride = rows.strides[0]
    if n > 1 and rows.strides[1] == 1 and stride >= width and not rows.flags.c_contiguous:
        span = (n - 1) * stride + width
        return np.lib.stride_tricks.as_strided(rows, shape=(span,), strides=(1,)), stride
    return np.ascontiguousarray(rows).reshape(-1), width


def _unaligned_view(flat: np.ndarray, dtype: str) -> np.ndarray:
    """A view of ``flat`` with one ``dtype`` item starting at every byte (stride 1)."""
    width = np.dtype(dtype).itemsize
    return np.ndarray((flat.size - width + 1,), dtype=dtype, buffer=flat, strides=(1,))


class PoolRows:
    """The rows of frames ``index`` of a frame pool's ``data``, columns ``lo .. hi``: what
    :class:`SkbBatch` parses, gathered only when a column needs packet bytes.

    A batch of scattered frames needs a gather (``data[index, lo:hi]``: a copy, about a
    megabyte for 1024 full-size frames) before any column can be parsed -- but a batch
    whose hashes ride with the frames, read by a flow table that knows its flows, reads no
    packet byte at all.  So the gather waits for the first read of ``SkbBatch.rows``;
    one frame's bytes (``SkbBatch.data(i)``, a new flow's description) are a view of its
    row in the pool, no gather.
    """

    __slots__ = ("data", "hi", "index", "lo", "shape")

    def __init__(self, data: np.ndarray, index: np.ndarray, lo: int, hi: int) -> None:
        self.data = data
        self.index = index
        self.lo = lo
        self.hi = hi
        self.shape = (len(index), hi - lo)

    def gather(self) -> np.ndarray:
        """``[n, hi - lo]`` uint8: every frame's row (one gather, a copy)."""
        return self.data[self.index, self.lo : self.hi]

    def row(self, i: int) -> np.ndarray:
        """Frame ``i``'s row, a view into the pool."""
        return self.data[int(self.index[i]), self.lo : self.hi]
