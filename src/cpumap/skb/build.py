"""The skbs of frames in shared memory: what the worker hands a handler, built from the
frames where they lie.

The engine's frames sit in a frame pool, rows of ``frame_size`` bytes with a descriptor
record each (length, headroom, link type, metadata length...).  A batch of them is parsed
once (:func:`skb_batch`: one :class:`SkbBatch` whose rows are views of the pool, not
copies, when the frames are consecutive), and a per-frame handler's skbs are views of that
batch's columns (:func:`skb_columns`, :func:`frame_skbs`: one
:class:`~cpumap.skb.view.SkbView` per frame), so a per-frame skb costs a list index, not a
parse.  Every place that gives user code an skb of pool frames -- the worker, the second
stage, the RX side's ``XDP_PASS`` delivery, the cluster's actors, an XDP program's
``ctx.skb`` -- builds it here, so every skb carries the same fields.

Why in ``skb`` and not beside the pool: building an skb is skb work -- which bytes make the
rows, which descriptor field becomes which column -- and the engine only says which frames.
So these functions read "anything shaped like a frame pool" (:class:`Frames`, a protocol
naming exactly what they read); the engine's ``FramePool`` and the cluster's
``FrameBlock`` satisfy it without naming it, and ``skb`` stays below the engine in the
layers (it imports nothing of it).

Rule: these are views, not copies.  Nothing here owns a frame: an skb's ``data`` is valid
while the caller holds the frame (the worker holds a batch's frames until its last handler
call returns).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from .batch import PoolRows, SkbBatch
from .frame import Skb
from .view import SkbColumns, views


@runtime_checkable
class Frames(Protocol):
    """What the skb build reads of a frame pool (the engine's ``FramePool``, the cluster's
    ``FrameBlock``): frame ``i`` is row ``i`` of ``data``, its packet at
    ``headroom .. headroom + length`` of that row, described by record ``desc[i]``.

    ``desc``'s records have the fields ``length``, ``wire_len``, ``ts_ns``, ``ifindex``,
    ``rx_queue``, ``linktype``, ``headroom``, ``meta_len``, ``hops``, ``rx_hash``,
    ``hash_type``, in that order (the engine's ``DESCRIPTOR``); the metadata area is the
    ``meta_len`` bytes before the packet, and ``rx_hash`` is the frame's ``hash`` where
    ``hash_type`` is not ``HASH_NONE`` (the hash that rides with the frame).
    """

    frame_size: int  #: bytes a frame: row ``i`` starts at ``i * frame_size`` of ``mv``
    data: np.ndarray  #: [count, frame_size] uint8: the frames
    mv: memoryview  #: the same bytes, flat, as a writable memoryview
    desc: np.ndarray  #: [count] descriptor records

    def descriptors(self, idx: np.ndarray) -> np.ndarray:
        """The records of frames ``idx`` (a copy), as ``desc[idx]``."""
        ...


def skb_batch(
    frames: Frames, index: np.ndarray, start: int | None = None, *, readonly: bool = False
) -> SkbBatch:
    """The :class:`SkbBatch` of frames ``index`` of ``frames`` (``start``: they are
    ``start, start + 1, ...``; found out here when not given).  ``readonly``: its rows
    (and ``data(i)``) cannot write the pool (an XDP program's skb).

    The rows are the columns the packets occupy (from the smallest headroom to the end of
    the longest packet), not whole frames: with the default headroom a batch of 64-byte
    frames reads 64 bytes a row, not 2048.  For consecutive frames (the usual case: a
    producer allocates each poll's frames in one range) they are a view of the pool, else
    one gather.  Parsing never misses a captured byte, since every packet lies inside the
    rows.
    """
    if start is None:
        start = consecutive_start(index)
    return _skb_batch(frames, index, start, _descriptors(frames, index, start), readonly)


def consecutive_start(index: np.ndarray) -> int | None:
    """``index[0]`` if ``index`` is ``index[0], index[0] + 1, ...``, else None (two numpy
    calls: strictly increasing and spanning exactly ``len - 1`` means consecutive)."""
    n = len(index)
    if n == 0:
        return None
    first = int(index[0])
    if int(index[-1]) - first != n - 1:
        return None
    if n > 2 and not (index[1:] > index[:-1]).all():
        return None
    return first


def _descriptors(frames: Frames, index: np.ndarray, start: int | None) -> np.ndarray:
    """Every descriptor field of the frames: a slice (consecutive frames) or one gather."""
    if start is None:
        return frames.descriptors(index)
    return frames.desc[start : start + len(index)]


def _skb_batch(
    frames: Frames, index: np.ndarray, start: int | None, d: np.ndarray, readonly: bool = False
) -> SkbBatch:
    n = len(index)
    if n == 0:
        return SkbBatch(np.zeros((0, 1), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
    length = d["length"]
    head = d["headroom"]
    lo = int(head.min())
    hi = max(int((head + length).max()), lo + 1)
    data = frames.data
    if readonly:
        data = data.view()
        data.flags.writeable = False
    # Consecutive frames: a view.  Scattered ones: a gather, made when a column first needs
    # packet bytes (PoolRows) -- never, for a batch whose hashes ride and whose reader
    # wants nothing else of the bytes (a flow table whose flows are known).
    rows = data[start : start + n, lo:hi] if start is not None else PoolRows(data, index, lo, hi)
    return SkbBatch(
        rows,
        head - lo,
        length,
        wire_len=d["wire_len"],
        linktype=d["linktype"],
        ifindex=d["ifindex"],
        rx_queue=d["rx_queue"],
        ts_ns=d["ts_ns"],
        index=index,
        rx_hash=d["rx_hash"],
        hash_type=d["hash_type"],
    )


def skb_columns(
    frames: Frames, index: np.ndarray, start: int | None = None, *, readonly: bool = False
) -> SkbColumns:
    """The :class:`~cpumap.skb.view.SkbColumns` of frames ``index`` of ``frames``: the batch
    parsed once, each field a Python list made on its first read, ``data`` views into the
    pool (as :func:`frame_skbs` gives them; read-only views with ``readonly``) and
    ``metadata`` copies of the metadata areas."""
    if start is None:
        start = consecutive_start(index)
    d = _descriptors(frames, index, start)
    batch = _skb_batch(frames, index, start, d, readonly)

    def begin() -> np.ndarray:
        return index.astype(np.int64) * frames.frame_size + d["headroom"]

    def data() -> list[memoryview]:
        first = begin()
        ends = (first + d["length"]).tolist()
        mv = frames.mv.toreadonly() if readonly else frames.mv
        return list(map(mv.__getitem__, map(slice, first.tolist(), ends)))

    def metadata() -> list[bytes]:
        meta = d["meta_len"]
        if not meta.any():
            return [b""] * len(index)
        mv = frames.mv
        return [
            bytes(mv[s - m : s]) if m else b""
            for s, m in zip(begin().tolist(), meta.tolist(), strict=True)
        ]

    return SkbColumns(batch, data, metadata)


def frame_skbs(frames: Frames, index: np.ndarray) -> Iterator[Skb | None]:
    """An :class:`Skb` for each frame of ``index``, in order (None where one could not be
    built: the caller counts it ``build_failed``).  Each skb's ``data`` is a view into the
    pool, valid while the caller holds the frame.

    The batch is parsed once, vectorized, and each skb is a view reading its fields from
    those columns (:class:`~cpumap.skb.view.SkbView`: ~0.2 µs a frame, against 2-4 µs for
    a per-frame parse); it equals the per-frame :class:`Skb` field for field.
    """
    if not len(index):
        return iter(())
    try:
        columns = skb_columns(frames, index)
    except Exception:  # descriptors no batch can be built from: try frame by frame
        return parsed_skbs(frames, index)
    return views(columns)


def parsed_skbs(
    frames: Frames, index: np.ndarray, *, readonly: bool = False
) -> Iterator[Skb | None]:
    """One plain :class:`Skb` per frame of ``index``, each parsed on its own (None where one
    cannot be built): :func:`frame_skbs`'s fallback, and the cheaper way for a lone frame
    (a batch's columns cost a few dozen numpy calls whatever its size).  ``readonly``:
    their ``data`` cannot write the pool."""
    fs = frames.frame_size
    mv = frames.mv.toreadonly() if readonly else frames.mv
    descs = frames.descriptors(index).tolist()
    for i, (length, wire_len, ts, ifindex, rxq, linktype, head, meta, *_) in zip(
        index.tolist(), descs, strict=True
    ):
        start = i * fs + head
        try:
            skb: Skb | None = Skb(
                mv[start : start + length],
                wire_len=wire_len,
                linktype=linktype,
                ifindex=ifindex,
                rx_queue=rxq,
                ts_ns=ts,
                metadata=bytes(mv[start - meta : start]) if meta else b"",
                index=i,
            )
        except Exception:
            skb = None
        yield skb
