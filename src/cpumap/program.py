"""XDP programs in Python: verdicts, the per-frame context, batches, and redirect_map.

A program runs on the RX side for every frame, before any expensive work, and returns a
verdict -- the kernel's XDP actions:

==============  ==============================================================
``ABORTED``     program error: dropped, counted apart (the xdp_exception tracepoint)
``DROP``        dropped
``PASS``        up the local stack on the RX side (counted; see RxProducer.pass_handler)
``TX``          back out of the interface it came in on (counted)
``REDIRECT``    to the entry chosen with ``redirect_map(cpumap, key)``
==============  ==============================================================

Two forms, same meaning:

* **per frame**: ``prog(ctx: XdpContext) -> int``.  ``ctx`` is the ``xdp_md``: the packet
  bytes (a writable zero-copy view), ingress ifindex, RX queue, and a metadata area
  (``adjust_meta``) whose bytes reach the skb.  To redirect, ``return
  redirect_map(cpumap, key)`` (or ``ctx.redirect_map``), as with ``bpf_redirect_map``.
* **vectorized**: ``prog(batch: XdpBatch) -> verdicts | (verdicts, keys)`` with one verdict
  (and one map key) per frame as numpy arrays.  Mark it with :func:`vectorized`.

Anything that is not a verdict counts as ``ABORTED``; so does an exception (per frame for
the per-frame form, the whole batch for the vectorized one).

A missing entry is discovered when the frame is enqueued, as in the seed kernel's
``xdp_do_redirect`` (-EINVAL, the ``xdp_redirect_err`` tracepoint): the frame is dropped
and counted as ``redirect_err``.  Newer kernels let ``flags`` carry a fallback action
taken at ``bpf_redirect_map`` time when the key is empty; we do the same when ``flags``
is non-zero.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from .frame_pool import FramePool
    from .map import CpuMap
    from .skb import SkbBatch


class Verdict(IntEnum):
    """XDP actions (enum xdp_action)."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


XDP_ABORTED = Verdict.ABORTED
XDP_DROP = Verdict.DROP
XDP_PASS = Verdict.PASS
XDP_TX = Verdict.TX
XDP_REDIRECT = Verdict.REDIRECT
N_VERDICTS = 5

NO_KEY = 0xFFFFFFFF  # "not redirected" in a keys array


class XdpContext:
    """What a per-frame program sees: the kernel's ``struct xdp_md``.

    One object is reused for every frame of an RX batch; do not keep references to it or
    to ``data`` beyond the call.
    """

    __slots__ = (
        "_meta_len",
        "_pool",
        "data",
        "index",
        "ingress_ifindex",
        "linktype",
        "redirect_key",
        "redirect_target",
        "rx_queue_index",
    )

    def __init__(self, pool: FramePool) -> None:
        self._pool = pool
        self.data: memoryview = memoryview(b"")
        self.index = -1
        self.ingress_ifindex = 0
        self.rx_queue_index = 0
        self.linktype = 1
        self.redirect_key = NO_KEY
        self.redirect_target: Any = None
        self._meta_len = 0

    def _load(self, index: int, ifindex: int, rx_queue: int, linktype: int) -> None:
        self.index = index
        self.data = self._pool.packet(index)
        self.ingress_ifindex = ifindex
        self.rx_queue_index = rx_queue
        self.linktype = linktype
        self.redirect_key = NO_KEY
        self.redirect_target = None
        self._meta_len = int(self._pool.meta_len[index])

    @property
    def data_end(self) -> int:
        """Length of the packet (``data_end - data``)."""
        return len(self.data)

    @property
    def data_meta(self) -> memoryview:
        """The metadata area (bytes just before the packet), writable."""
        pool = self._pool
        start = self.index * pool.frame_size + int(pool.headroom_col[self.index])
        return pool._mv[start - self._meta_len : start]

    def adjust_meta(self, delta: int) -> int:
        """``bpf_xdp_adjust_meta``: a negative ``delta`` grows the metadata area by
        ``-delta`` bytes (zeroed), a positive one shrinks it.  Returns 0, or -22 (EINVAL)
        when the area would be negative, larger than 32 bytes (as the kernel's
        ``xdp_metalen_invalid``: max 32, multiple of 4) or than the headroom."""
        new = self._meta_len - delta
        headroom = int(self._pool.headroom_col[self.index])
        if new < 0 or new > 32 or new % 4 or new > headroom:
            return -22
        self._meta_len = new
        self._pool.meta_len[self.index] = new
        if delta < 0:
            self.data_meta[:-delta] = bytes(-delta)
        return 0

    def redirect_map(self, cmap: CpuMap, key: int, flags: int = 0) -> int:
        """``bpf_redirect_map(&cmap, key, flags)``; see :func:`redirect_map`."""
        return _redirect(self, cmap, key, flags)


_current = threading.local()


def redirect_map(cmap: CpuMap, key: int, flags: int = 0) -> int:
    """``bpf_redirect_map``: choose entry ``key`` of ``cmap`` for the current frame and
    return ``XDP_REDIRECT`` -- or, if ``flags`` is a fallback action (1..3) and the entry
    is empty right now, return ``flags``.  Only valid inside a per-frame program."""
    ctx = getattr(_current, "ctx", None)
    if ctx is None:
        raise RuntimeError("redirect_map() called outside a program")
    return _redirect(ctx, cmap, key, flags)


def _redirect(ctx: XdpContext, cmap: CpuMap, key: int, flags: int) -> int:
    if flags & ~3:
        return XDP_ABORTED
    if flags and not cmap._has_entry(key):
        return flags
    ctx.redirect_key = key & 0xFFFFFFFF if key >= 0 else NO_KEY
    ctx.redirect_target = cmap
    return XDP_REDIRECT


def as_verdict(value: object) -> int:
    """A per-frame program's return value as a verdict: an int (or numpy integer) in
    0..4; anything else -- a bool included -- is ``XDP_ABORTED``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return XDP_ABORTED
    v = int(value)
    return v if 0 <= v < N_VERDICTS else XDP_ABORTED


def _set_current(ctx: XdpContext | None) -> None:
    _current.ctx = ctx


class XdpBatch:
    """What a vectorized program sees: a batch of frames as numpy columns.

    ``index`` are the frames' pool indices.  Columns come from the frame descriptors;
    ``bytes_at(offset, width)`` reads a window of every packet; ``skb`` parses them
    (protocol, addresses, ports, flow hash...) in a few numpy calls.  When the frames are
    consecutive in the pool (``start`` is not None: the usual case) columns and windows
    are views, not copies -- writing to them writes the packets, as an XDP program may.
    """

    def __init__(self, pool: FramePool, index: np.ndarray, start: int | None = None) -> None:
        self.pool = pool
        self.index = index
        self.start = start
        self._where: slice | np.ndarray = (
            index if start is None else slice(start, start + len(index))
        )

    def __len__(self) -> int:
        return len(self.index)

    @cached_property
    def length(self) -> np.ndarray:
        return self.pool.length[self._where]

    @cached_property
    def ingress_ifindex(self) -> np.ndarray:
        return self.pool.ifindex[self._where]

    @cached_property
    def rx_queue_index(self) -> np.ndarray:
        return self.pool.rx_queue[self._where]

    @cached_property
    def _base(self) -> np.ndarray:
        pool = self.pool
        return self.index.astype(np.int64) * pool.frame_size + pool.headroom_col[self.index]

    def bytes_at(self, offset: int, width: int) -> np.ndarray:
        """``[n, width]`` uint8: bytes ``offset..offset+width`` of each packet.  Bytes
        past a packet's end read as whatever the frame holds: mask with ``length``."""
        pool = self.pool
        if self.start is not None and offset >= 0 and offset + width <= pool.max_packet:
            h = pool.headroom + offset
            return pool.data[self._where, h : h + width]
        cols = np.arange(offset, offset + width, dtype=np.int64)
        pos = self._base[:, None] + cols
        np.minimum(pos, len(self.pool.flat) - 1, out=pos)
        return self.pool.flat[pos]

    @cached_property
    def skb(self) -> SkbBatch:
        """Parsed headers of every frame (lazy, vectorized)."""
        from .skb import SkbBatch

        return skb_batch(self.pool, self.index, SkbBatch, self.start)


def skb_batch(pool: FramePool, index: np.ndarray, cls: Any, start: int | None = None) -> Any:
    """Build an ``SkbBatch`` over frames ``index`` of ``pool``.

    The rows are one gather of the columns the packets occupy (from the smallest headroom
    to the end of the longest packet), not whole frames: with the default headroom a batch
    of 64-byte frames gathers 64 bytes a row, not 2048.  Parsing never misses a captured
    byte, since every packet lies inside the gathered columns.
    """
    n = len(index)
    if n == 0:
        return cls(np.zeros((0, 1), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
    # One call for every descriptor field: a slice (consecutive frames) or one gather.
    d = pool.descriptors(index) if start is None else pool.desc[start : start + n]
    length = d["length"]
    head = d["headroom"]
    lo = int(head.min())
    hi = max(int((head + length).max()), lo + 1)
    rows = pool.data[start : start + n, lo:hi] if start is not None else pool.data[index, lo:hi]
    return cls(
        rows,
        head - lo,
        length,
        wire_len=d["wire_len"],
        linktype=d["linktype"],
        ifindex=d["ifindex"],
        rx_queue=d["rx_queue"],
        ts_ns=d["ts_ns"],
        index=index,
    )


class Program(Protocol):
    """Anything callable as a program; ``vectorized`` says which form."""

    def __call__(self, arg: Any, /) -> Any: ...


def vectorized(fn: Callable[[XdpBatch], Any]) -> Callable[[XdpBatch], Any]:
    """Mark ``fn`` as a vectorized program (called once per RX batch)."""
    fn.vectorized = True  # type: ignore[attr-defined]
    return fn


def is_vectorized(prog: object) -> bool:
    return bool(getattr(prog, "vectorized", False))


def normalize_verdicts(out: Any, n: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Turn a vectorized program's return value into (verdicts uint8[n], keys uint32[n],
    count of each verdict).  Invalid verdicts become ABORTED; a malformed return value
    (or ``None``: the program raised) makes the whole batch ABORTED.

    The fast path -- a uint8 verdict array and a uint32 key array -- costs one numpy call.
    """
    aborted = (np.zeros(n, np.uint8), np.full(n, NO_KEY, np.uint32), [n, 0, 0, 0, 0])
    keys: Any = None
    if type(out) is tuple and len(out) == 2:
        out, keys = out
    try:
        v = out if isinstance(out, np.ndarray) else np.asarray(out)
        if v.shape == ():
            v = np.full(n, int(v), dtype=np.int64)
        if v.shape != (n,) or v.dtype.kind not in "iub":
            return aborted
        if v.dtype != np.uint8:
            ok = (v >= 0) & (v < N_VERDICTS)
            v = np.where(ok, v, XDP_ABORTED).astype(np.uint8)
        counts = np.bincount(v, minlength=N_VERDICTS).tolist()
        if len(counts) > N_VERDICTS:  # invalid verdicts: ABORTED
            v = np.where(v < N_VERDICTS, v, XDP_ABORTED).astype(np.uint8)
            counts[0] += sum(counts[N_VERDICTS:])
            del counts[N_VERDICTS:]
        if keys is None:
            k = np.full(n, NO_KEY, dtype=np.uint32)
        elif isinstance(keys, np.ndarray) and keys.dtype == np.uint32 and keys.shape == (n,):
            k = keys
        else:
            k = np.asarray(keys)
            if k.shape == ():
                k = np.full(n, int(k), dtype=np.int64)
            if k.shape != (n,) or k.dtype.kind not in "iu":
                return aborted
            k = np.where(k < 0, NO_KEY, k).astype(np.uint32)
    except (TypeError, ValueError, OverflowError):
        return aborted
    return v, k, counts


# -- a built-in steering program ------------------------------------------------------------
class FlowHash:
    """Steer by the skb's symmetric flow hash: both directions of a flow land on one entry.

    ``keys`` are the map keys to spread over (the "available CPUs" table); frame goes to
    ``keys[hash % len(keys)]``.  Non-IP frames hash to 0, so they all go to ``keys[0]``.
    The per-frame and vectorized forms choose the same key for every frame.
    """

    def __init__(self, cmap: CpuMap, keys: Sequence[int], *, vectorized: bool = True) -> None:
        if not keys:
            raise ValueError("FlowHash needs at least one key")
        self.cmap = cmap
        self.keys = [int(k) for k in keys]
        self._keys_arr = np.array(self.keys, dtype=np.uint32)
        self.vectorized = vectorized

    def __call__(self, arg: Any) -> Any:
        if self.vectorized:
            return self.batch(arg)
        return self.frame(arg)

    def frame(self, ctx: XdpContext) -> int:
        from .skb import Skb

        h = Skb(ctx.data, linktype=ctx.linktype).hash
        return ctx.redirect_map(self.cmap, self.keys[h % len(self.keys)])

    def batch(self, batch: XdpBatch) -> tuple[np.ndarray, np.ndarray]:
        h = batch.skb.hash
        keys = self._keys_arr[h % len(self._keys_arr)]
        return np.full(len(batch), XDP_REDIRECT, dtype=np.uint8), keys
