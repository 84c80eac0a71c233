"""What an XDP program is handed: a frame's context, or a batch of frames.

A program sees the frames where they lie, in the frame pool -- the kernel's ``xdp_md``:

* per frame, an :class:`XdpContext`: the packet bytes (a writable zero-copy view), the
  ingress ifindex, the RX queue, and a metadata area (``adjust_meta``) whose bytes reach
  the skb.  To redirect, ``return redirect_map(target, key)`` (or ``ctx.redirect_map``),
  as with ``bpf_redirect_map``;
* vectorized, an :class:`XdpBatch`: the batch as numpy columns, windows of every packet's
  bytes, and its skbs parsed in a few numpy calls.

``ctx.skb`` and ``batch.skb`` are the skbs a handler would see of the same frames, built
by :mod:`cpumap.skb.build` (which builds every skb of pool frames the engine hands out).

Rule: these are views, not copies.  Nothing here owns a frame or outlives the call it is
handed to: the engine gives the frames back to the pool right after.  The pool is the
engine's (``cpumap.engine.frame_pool``); :class:`FramePool` here says what is read of it.

The hash that rides with the frame
----------------------------------
A frame's descriptor may carry its skb ``hash`` (``rx_hash``, ``hash_type``: a hash the RX
side computed, as a NIC's RX hash).  It stays true only while the packet's bytes are those
it was computed from, so every way a program here can change them drops it (``hash_type``
back to ``HASH_NONE``: the worker computes the hash again from the bytes as they are):

* per frame, ``ctx.data`` (a writable view): the frame's hash is dropped for each frame
  whose ``data`` was handed out, when the poll ends -- a program that only reads reads
  :attr:`XdpContext.packet`, the same bytes read-only;
* vectorized, ``batch.bytes_at`` when it returns a view of the pool (consecutive frames:
  a copy's writes change nothing) and ``batch.pool`` (the pool itself): every frame of
  the batch -- a program that only reads uses :meth:`XdpBatch.window`, read-only.

``ctx.skb.data``, ``batch.skb.rows`` and the skb's ``data`` are read-only here (the
program's skb is a view of the bytes, not a way to write them); ``data_meta`` and
``adjust_meta`` change the metadata area, not the packet.  There is no ``adjust_head`` or
``adjust_tail`` here: writing the bytes is the only way to change a packet.

And where the program had the skb hash computed (``ctx.skb.hash``, ``batch.skb.hash``:
e.g. ``flow-hash`` steering over two or more keys) for frames that carried none, it rides
on with them, kind and all (``SkbBatch.hash_types``), so the worker does not compute it
again -- unless, as above, the frame's bytes may have changed.  (The runner calls
:meth:`XdpBatch.settle_hashes`; a per-frame poll settles them when it ends.)

A missing entry is discovered when the frame is enqueued, as in the seed kernel's
``xdp_do_redirect`` (-EINVAL, the ``xdp_redirect_err`` tracepoint): the frame is dropped
and counted as ``redirect_err``.  Newer kernels let ``flags`` carry a fallback action
taken at ``bpf_redirect_map`` time when the key is empty; we do the same when ``flags``
is non-zero.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from ..abi import XDP_ABORTED, XDP_REDIRECT
from ..skb import Frames, Skb, SkbBatch, parsed_skbs, skb_batch, skb_columns
from ..skb.flow_hash import HASH_NONE
from ..skb.view import SkbColumns, SkbView

NO_KEY = 0xFFFFFFFF  # "not redirected" in a keys array


class FramePool(Frames, Protocol):
    """What contexts read of the engine's frame pool (``cpumap.engine.frame_pool``): the
    frames' bytes, and their descriptor columns, indexed by frame -- what the skb build
    reads (:class:`~cpumap.skb.Frames`: ``frame_size``, ``data``, ``mv``, ``desc``,
    ``descriptors()``) and more."""

    headroom: int
    max_packet: int
    flat: np.ndarray  # data, 1-D
    length: np.ndarray  # desc's fields, as columns
    ifindex: np.ndarray
    rx_queue: np.ndarray
    linktype: np.ndarray
    headroom_col: np.ndarray
    meta_len: np.ndarray

    def packet(self, i: int) -> memoryview: ...


class RedirectTarget(Protocol):
    """What ``redirect_map`` redirects into: a map (``CpuMap``) or an ``OutputMap``."""

    def has_entry(self, key: int) -> bool:
        """Whether ``key`` names an entry right now (the flags fallback asks)."""
        ...


class CpuMapLike(RedirectTarget, Protocol):
    """A map whose keys are CPUs, as a steering program sees it (a ``CpuMap``)."""

    max_entries: int


class XdpContext:
    """What a per-frame program sees: the kernel's ``struct xdp_md``.

    One object is reused for every frame of a batch; do not keep references to it or to
    ``data`` beyond the call.

    How it is cheap per frame
    -------------------------
    Inside a poll (:meth:`each`, or the runner's loop between :meth:`begin` and
    :meth:`end`) moving to the next frame is one store: ``row``, the frame's position in
    the poll.  Every field (``data``, ``ingress_ifindex``, ``index`` ...) is a property
    indexing a Python list made for the whole poll with one ``tolist()``, on the first
    read of that field in the poll -- so a program that reads only ``ctx.skb.hash`` never
    pays for the packet views or the descriptor columns.  A
    frame loaded on its own (:meth:`load`) is a poll of one frame, row 0.
    """

    __slots__ = (
        "_columns",
        "_datas",
        "_idx",
        "_ifindexes",
        "_indices",
        "_linktypes",
        "_packets",
        "_pool",
        "_rx_queues",
        "_skb",
        "_skb_row",
        "_start",
        "_where",
        "_written",
        "redirect_key",
        "redirect_target",
        "row",
    )

    def __init__(self, pool: FramePool) -> None:
        self._pool = pool
        self.redirect_key = NO_KEY
        self.redirect_target: Any = None
        self._one(-1, memoryview(b""), 0, 0, 1)

    def _one(self, index: int, data: memoryview, ifindex: int, rx_queue: int, lt: int) -> None:
        self._idx: np.ndarray | None = None  # the poll's frames (None: one frame, loaded)
        self._start: int | None = None
        self._where: slice | np.ndarray | None = None
        self._indices: list[int] | None = [index]
        self._datas: list[memoryview] | None = [data]
        self._ifindexes: list[int] | None = [ifindex]
        self._rx_queues: list[int] | None = [rx_queue]
        self._linktypes: list[int] | None = [lt]
        self._packets: list[memoryview] | None = [data.toreadonly()]
        self._written: list[int] = []  # rows whose writable data was handed out
        self._columns: SkbColumns | None = None  # the poll's skb columns, once one is read
        self.row = 0
        self._skb: Skb | None = None
        self._skb_row = -1  # the row _skb is the skb of

    def load(self, index: int, ifindex: int, rx_queue: int, linktype: int) -> None:
        """Point the context at frame ``index`` on its own (outside :meth:`each`)."""
        self._settle()
        self._one(index, self._pool.packet(index), ifindex, rx_queue, linktype)
        self.redirect_key = NO_KEY
        self.redirect_target = None

    def begin(self, idx: np.ndarray, start: int | None) -> None:
        """Make the context the poll of frames ``idx`` (``start``: consecutive), at row 0;
        the caller moves ``row`` and resets the redirect fields per frame."""
        self._idx = idx
        self._start = start
        self._where = idx if start is None else slice(start, start + len(idx))
        self._indices = self._datas = self._ifindexes = self._rx_queues = None
        self._linktypes = self._packets = None
        self._written = []
        self._columns = self._skb = None
        self.row = 0
        self._skb_row = -1
        self.redirect_key = NO_KEY
        self.redirect_target = None

    def end(self) -> None:
        """Leave the poll: settle the frames' riding hashes (the module docstring), and drop
        every reference to its frames and columns."""
        self._settle()
        self._one(-1, memoryview(b""), 0, 0, 1)

    def _settle(self) -> None:
        """The poll's hashes (see the module docstring): a hash the poll's skb computed rides
        on with frames that had none, and every frame whose writable ``data`` was handed
        out loses its hash."""
        columns, written = self._columns, self._written
        if columns is None and not written:
            return
        where: slice | np.ndarray
        if self._idx is not None:  # a poll
            assert self._where is not None  # Invariant: set with _idx
            where, frames = self._where, self._idx
        else:  # a frame loaded on its own (index -1: none loaded yet)
            assert self._indices is not None  # Invariant: a loaded frame's list is made
            if self._indices[0] < 0:
                return
            where = frames = np.array(self._indices, np.int64)
        if columns is not None and "hash" in vars(columns.batch):
            _let_ride(self._pool, where, columns.batch)
        if written:
            self._pool.desc["hash_type"][frames[written]] = HASH_NONE

    def each(self, idx: np.ndarray, start: int | None = None) -> Iterator[int]:
        """Point the context at each frame of ``idx`` in turn (``start``: they are
        consecutive), yielding its position in ``idx``: a poll's per-frame loop (the
        runner inlines it).  Fields are made into Python lists once for the poll, on
        their first read, and :attr:`skb` is parsed once for the poll, on its first read."""
        self.begin(idx, start)
        try:
            for j in range(len(idx)):
                self.row = j
                self.redirect_key = NO_KEY
                self.redirect_target = None
                yield j
        finally:
            self.end()

    # -- the fields: a list per poll, made on first read -------------------------------
    def _column(self, col: np.ndarray) -> list[int]:
        where = self._where
        assert where is not None  # Invariant: the lists are None only inside a poll
        values: list[int] = col[where].tolist()
        return values

    @property
    def index(self) -> int:
        """The frame's index in the pool."""
        indices = self._indices
        if indices is None:
            assert self._idx is not None
            indices = self._indices = self._idx.tolist()
        return indices[self.row]

    @property
    def data(self) -> memoryview:
        """The packet's bytes, a writable view into the pool (``data .. data_end``).  The
        frame's riding hash is dropped when the poll ends (the bytes may have changed): a
        program that only reads reads :attr:`packet`."""
        datas = self._datas
        if datas is None:
            datas = self._datas = self._views(self._pool.mv)
        row = self.row
        self._written.append(row)
        return datas[row]

    @property
    def packet(self) -> memoryview:
        """The packet's bytes, read-only: :attr:`data` for a program that does not write
        them (the frame's riding hash stays; the module docstring)."""
        packets = self._packets
        if packets is None:
            packets = self._packets = self._views(self._pool.mv.toreadonly())
        return packets[self.row]

    def _views(self, mv: memoryview) -> list[memoryview]:
        """Every packet of the poll, as a slice of ``mv`` (the pool, flat)."""
        pool, idx = self._pool, self._idx
        assert idx is not None and self._where is not None  # Invariant: None only in a poll
        first = idx.astype(np.int64) * pool.frame_size + pool.headroom_col[self._where]
        ends = (first + pool.length[self._where]).tolist()
        return list(map(mv.__getitem__, map(slice, first.tolist(), ends)))

    @property
    def ingress_ifindex(self) -> int:
        values = self._ifindexes
        if values is None:
            values = self._ifindexes = self._column(self._pool.ifindex)
        return values[self.row]

    @property
    def rx_queue_index(self) -> int:
        values = self._rx_queues
        if values is None:
            values = self._rx_queues = self._column(self._pool.rx_queue)
        return values[self.row]

    @property
    def linktype(self) -> int:
        values = self._linktypes
        if values is None:
            values = self._linktypes = self._column(self._pool.linktype)
        return values[self.row]

    @property
    def skb(self) -> Skb:
        """The frame's skb (parsed headers, flow hash), as a handler would see it.

        Inside :meth:`each` it is a view of columns parsed once for the whole batch, on
        the first read (:class:`~cpumap.skb.view.SkbView`): cheap per frame, but it shows
        the bytes as they were at that first read -- a program that rewrites headers and
        then wants them parsed again should build ``Skb(ctx.data)`` itself."""
        row = self.row
        if self._skb_row == row:
            return self._skb  # type: ignore[return-value]  # Invariant: set with _skb_row
        columns = self._columns
        if columns is None:
            if self._idx is None:  # a frame loaded on its own: parse just this one
                one = next(parsed_skbs(self._pool, np.array([self.index]), readonly=True))
                assert one is not None  # Invariant: building a plain Skb never raises
                self._skb, self._skb_row = one, row
                return one
            columns = skb_columns(self._pool, self._idx, self._start, readonly=True)
            self._columns = columns
        # Fast path: equals frame_skbs(pool, idx)'s row-th skb (test_ctx_skb_is_frame_skbs)
        view = object.__new__(SkbView)  # SkbView.of, inlined: once per frame
        view.columns = columns
        view.row = row
        self._skb, self._skb_row = view, row
        return view

    @property
    def data_end(self) -> int:
        """Length of the packet (``data_end - data``)."""
        return len(self.data)

    @property
    def data_meta(self) -> memoryview:
        """The metadata area (bytes just before the packet), writable."""
        pool = self._pool
        i = self.index
        start = i * pool.frame_size + int(pool.headroom_col[i])
        return pool.mv[start - int(pool.meta_len[i]) : start]

    def adjust_meta(self, delta: int) -> int:
        """``bpf_xdp_adjust_meta``: a negative ``delta`` grows the metadata area by
        ``-delta`` bytes (zeroed), a positive one shrinks it.  Returns 0, or -22 (EINVAL)
        when the area would be negative, larger than 32 bytes (as the kernel's
        ``xdp_metalen_invalid``: max 32, multiple of 4) or than the headroom."""
        i = self.index
        new = int(self._pool.meta_len[i]) - delta
        headroom = int(self._pool.headroom_col[i])
        if new < 0 or new > 32 or new % 4 or new > headroom:
            return -22
        self._pool.meta_len[i] = new
        if delta < 0:
            self.data_meta[:-delta] = bytes(-delta)
        return 0

    def redirect_map(self, target: RedirectTarget, key: int, flags: int = 0) -> int:
        """``bpf_redirect_map(&target, key, flags)``; see :func:`redirect_map`."""
        return _redirect(self, target, key, flags)


class _Current(threading.local):
    ctx: XdpContext | None = None


_current = _Current()


def redirect_map(target: RedirectTarget, key: int, flags: int = 0) -> int:
    """``bpf_redirect_map``: choose entry ``key`` of ``target`` for the current frame and
    return ``XDP_REDIRECT`` -- or, if ``flags`` is a fallback action (1..3) and the entry
    is empty right now, return ``flags``.  Only valid inside a per-frame program."""
    ctx = _current.ctx
    if ctx is None:
        raise RuntimeError("redirect_map() called outside a program")
    return _redirect(ctx, target, key, flags)


def set_current_context(ctx: XdpContext | None) -> None:
    """The context :func:`redirect_map` acts on in this thread (the runner sets it around
    a batch of per-frame calls, and clears it after)."""
    _current.ctx = ctx


def _redirect(ctx: XdpContext, target: RedirectTarget, key: int, flags: int) -> int:
    if flags & ~3:
        return XDP_ABORTED
    if flags and not target.has_entry(key):
        return flags
    ctx.redirect_key = key & 0xFFFFFFFF if key >= 0 else NO_KEY
    ctx.redirect_target = target
    return XDP_REDIRECT


class XdpBatch:
    """What a vectorized program sees: a batch of frames as numpy columns.

    ``index`` are the frames' pool indices.  Columns come from the frame descriptors;
    ``bytes_at(offset, width)`` reads a window of every packet; ``skb`` parses them
    (protocol, addresses, ports, flow hash...) in a few numpy calls.  When the frames are
    consecutive in the pool (``start`` is not None: the usual case) columns and windows
    are views, not copies -- writing to them writes the packets, as an XDP program may.
    """

    def __init__(self, pool: FramePool, index: np.ndarray, start: int | None = None) -> None:
        self._pool = pool
        self.exposed = False  # writable packet bytes were handed out: hashes may be stale
        self.index = index
        self.start = start
        self._where: slice | np.ndarray = (
            index if start is None else slice(start, start + len(index))
        )

    def __len__(self) -> int:
        return len(self.index)

    @property
    def pool(self) -> FramePool:
        """The frame pool itself: anything in it may be written, so every frame of the
        batch loses its riding hash (the module docstring)."""
        self.exposed = True
        return self._pool

    @cached_property
    def length(self) -> np.ndarray:
        return self._pool.length[self._where]

    @cached_property
    def ingress_ifindex(self) -> np.ndarray:
        return self._pool.ifindex[self._where]

    @cached_property
    def rx_queue_index(self) -> np.ndarray:
        return self._pool.rx_queue[self._where]

    @cached_property
    def linktype(self) -> np.ndarray:
        return self._pool.linktype[self._where]

    @cached_property
    def hash_type(self) -> np.ndarray:
        """Each frame's riding hash kind (``HASH_NONE``: none rides), read-only."""
        return self._pool.desc["hash_type"][self._where]  # any pool-like: its records

    @cached_property
    def _uniform_headroom(self) -> bool:
        """Every frame's packet starts at the pool's headroom (the usual case)."""
        return bool((self._pool.headroom_col[self.index] == self._pool.headroom).all())

    @cached_property
    def _base(self) -> np.ndarray:
        pool = self._pool
        return self.index.astype(np.int64) * pool.frame_size + pool.headroom_col[self.index]

    def bytes_at(self, offset: int, width: int) -> np.ndarray:
        """``[n, width]`` uint8: bytes ``offset..offset+width`` of each packet.  Bytes
        past a packet's end read as whatever the frame holds: mask with ``length``.

        Consecutive frames get a writable view of the pool (writing it writes the
        packets, and every frame of the batch loses its riding hash); others a copy.  A
        program that only reads uses :meth:`window`."""
        view = self._view(offset, width)
        if view is None:
            return self._copy(offset, width)
        self.exposed = True
        return view

    def window(self, offset: int, width: int) -> np.ndarray:
        """:meth:`bytes_at`, read-only: the frames' riding hashes stay."""
        view = self._view(offset, width)
        if view is None:
            return self._copy(offset, width)
        view.flags.writeable = False
        return view

    def _view(self, offset: int, width: int) -> np.ndarray | None:
        """The window as a view of the pool (consecutive frames), or None."""
        pool = self._pool
        if self.start is None or offset < 0 or offset + width > pool.max_packet:
            return None
        h = pool.headroom + offset
        view: np.ndarray = pool.data[self._where, h : h + width]
        return view

    def _copy(self, offset: int, width: int) -> np.ndarray:
        """The window as a copy (frames not consecutive, or a window past a frame)."""
        pool = self._pool
        inside = offset >= 0 and offset + width <= pool.max_packet
        if inside and self._uniform_headroom:
            # Scattered frames (placed by AF_XDP, in the order workers released them) that
            # all start at the pool's headroom: one row gather, a copy as the general
            # path's, ~4.5x cheaper than a position per byte (test_context: both equal).
            h = pool.headroom + offset
            return pool.data[self.index, h : h + width]
        cols = np.arange(offset, offset + width, dtype=np.int64)
        pos = self._base[:, None] + cols
        np.minimum(pos, len(self._pool.flat) - 1, out=pos)
        return self._pool.flat[pos]

    @cached_property
    def skb(self) -> SkbBatch:
        """Parsed headers of every frame (lazy, vectorized)."""
        return skb_batch(self._pool, self.index, self.start, readonly=True)

    def settle_hashes(self) -> None:
        """After the program: where it had the skb hash computed for frames that carried
        none, it rides on with them; if writable bytes were handed out, no frame of the
        batch keeps a hash (the module docstring).  The runner calls it."""
        if self.exposed:
            self._pool.desc["hash_type"][self._where] = HASH_NONE
            return
        skb = self.__dict__.get("skb")
        if skb is not None and "hash" in vars(skb):
            _let_ride(self._pool, self._where, skb)


def _let_ride(pool: FramePool, where: slice | np.ndarray, batch: SkbBatch) -> None:
    """Write ``batch``'s hash (of frames ``where``: a slice of consecutive frames, or their
    indices) into the descriptors of the frames that carry none, with its kind: the hash a
    program computed rides on with the frame.  Frames fresh from the RX copy carry none:
    then it is two stores."""
    desc = pool.desc
    types = desc["hash_type"]
    none = types[where] == HASH_NONE
    count = int(np.count_nonzero(none))
    if count == len(none):
        desc["rx_hash"][where] = batch.hash
        types[where] = batch.hash_types()
    elif count:
        rows = np.flatnonzero(none)
        frames = rows + where.start if isinstance(where, slice) else where[rows]
        desc["rx_hash"][frames] = batch.hash[rows]
        types[frames] = batch.hash_types()[rows]
