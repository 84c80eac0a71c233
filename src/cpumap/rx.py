"""The RX producer: the driver's poll loop, where the XDP program runs.

One :class:`RxProducer` plays one RX queue of a NIC driver: it receives packets, puts
them in frames, runs the XDP program on every frame, stages redirected frames in bulk
queues per destination, and flushes them at the end of the batch.  One call of
:meth:`RxProducer.poll` is one NAPI poll::

    alloc frames, copy packets in       (the NIC's DMA)
    read_lock()                         (rcu.py: the XDP program's RCU section begins)
      run the program                   -> a verdict per frame
      DROP/ABORTED/TX/PASS: count, give the frame back (PASS: pass_handler first)
      REDIRECT: look the key up (a missing entry: redirect_err), stage (bulkq.py)
      flush every staged destination    (xdp_do_flush)
    read_unlock()                       (quiescent: a grace period may end)
    publish the counters of the batch

Frames are allocated *outside* the read-side section, because waiting for free frames
(every frame is in flight) must not hold up a grace period.

A producer belongs to one thread of one process.  Producers in other processes are
created there (after fork) from the same :class:`~cpumap.CpuMap`; each claims its own
producer slot, which is also its frame-pool partition.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .bulkq import DEFAULT_BULK_SIZE, BulkQueues
from .frame_pool import TAG_RX, FrameAllocator
from .packets import Packet, PacketBatch
from .program import (
    N_VERDICTS,
    NO_KEY,
    XDP_ABORTED,
    XDP_PASS,
    XDP_REDIRECT,
    XdpBatch,
    XdpContext,
    _set_current,
    as_verdict,
    is_vectorized,
    normalize_verdicts,
)
from .stats import (
    E_FLUSHES,
    E_PROCESSED,
    P_ENQ_PROCESSED,
    P_FLUSHES,
    P_NO_FRAME,
    P_POLLS,
    P_QUEUE_FULL,
    P_REDIRECT_ERR,
    P_RX,
    P_TRUNCATED,
    P_WORDS,
    P_XDP_ABORTED,
    P_XDP_DROP,
    P_XDP_PASS,
    P_XDP_REDIRECT,
    P_XDP_TX,
    EventLog,
)

if TYPE_CHECKING:
    from .map import CpuMap

DEFAULT_POLL_SIZE = 1024  # packets per poll (NAPI's weight is 64; ours: per-call costs)
DEFAULT_FRAME_WAIT = 10.0
_MASK_GROUPING_MAX = 8  # slot ranges up to this are grouped by masks, wider by a sort
_GATHER_MAX = 1024  # widest ragged batch copied with one gather (else: per packet)


class RxProducer:
    """An RX queue running ``program`` and redirecting into ``cmap``.

    Options: ``index`` (producer slot, default: any free one), ``poll_size`` (packets
    per poll), ``bulk_size`` (frames per bulk-queue flush), ``pass_handler`` (called with
    an ``Skb`` for frames the program PASSes, on the RX side), ``frame_wait`` (seconds to
    wait for free frames before counting packets as ``no_frame``), ``backpressure``
    (seconds a flush may wait for room in a full ring before dropping; 0, the default,
    is the kernel's behaviour: a full ring drops at once -- use a positive value for
    lossless offline processing).
    """

    def __init__(
        self,
        cmap: CpuMap,
        program: Any,
        *,
        index: int | None = None,
        poll_size: int = DEFAULT_POLL_SIZE,
        bulk_size: int = DEFAULT_BULK_SIZE,
        pass_handler: Callable[[Any], Any] | None = None,
        frame_wait: float = DEFAULT_FRAME_WAIT,
        backpressure: float = 0.0,
    ) -> None:
        if poll_size < 1:
            raise ValueError(f"poll_size must be >= 1, not {poll_size}")
        if not callable(program):
            raise TypeError(f"program must be callable, not {type(program).__name__}")
        self.cmap = cmap
        self.program = program
        self.poll_size = poll_size
        self.pass_handler = pass_handler
        self.frame_wait = frame_wait
        self._vectorized = is_vectorized(program)
        self.index = cmap.registry.claim(index)
        self._closed = False
        pool = cmap.pool
        self.pool = pool
        self.allocator: FrameAllocator = pool.allocator(self.index, block=poll_size)
        seg = cmap._seg
        self._ctr = seg.view("prod")[self.index]
        self._enq = seg.view("enq")[self.index]
        self._events: EventLog = cmap._enq_log(self.index)
        self._local = [0] * P_WORDS  # this poll's counters: Python ints are cheaper than numpy
        self._table = cmap._table
        self._max_entries = cmap.max_entries
        self._bulk = BulkQueues(
            pool,
            cmap._ring,
            self.allocator.free,
            self._on_flush,
            cmap.n_slots,
            bulk_size,
            backpressure,
        )
        self._ctx = XdpContext(pool)
        self._room = pool.frame_size - pool.headroom
        self._pool_mv = memoryview(pool.flat)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Give up the producer slot.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.allocator.close()
        self.cmap.registry.unclaim(self.index)

    def __enter__(self) -> RxProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- receiving -----------------------------------------------------------------------------
    def receive(self, batch: PacketBatch) -> None:
        """Run every packet of ``batch`` through the program, ``poll_size`` at a time."""
        n = len(batch)
        step = self.poll_size
        for lo in range(0, n, step):
            self.poll(batch.slice(lo, min(lo + step, n)) if n > step else batch)

    def receive_packets(self, packets: Iterable[Packet | bytes]) -> None:
        """Like :meth:`receive`, for packets one by one (slow path)."""
        chunk: list[Packet | bytes] = []
        for p in packets:
            chunk.append(p)
            if len(chunk) == self.poll_size:
                self.poll(PacketBatch.from_packets(chunk))
                chunk = []
        if chunk:
            self.poll(PacketBatch.from_packets(chunk))

    def poll(self, batch: PacketBatch) -> None:
        """One NAPI poll over ``batch`` (any size; see the module docstring)."""
        if self._closed:
            raise ValueError("producer is closed")
        n = len(batch)
        if n == 0:
            return
        if n > self.allocator.size:  # more than our whole partition: several polls
            step = self.allocator.block
            for lo in range(0, n, step):
                self.poll(batch.slice(lo, min(lo + step, n)))
            return
        local = self._local = [0] * P_WORDS
        local[P_RX] = n
        local[P_POLLS] = 1
        start = self.allocator.alloc_range(n)
        if start is not None:  # the common case: n consecutive frames
            idx = np.arange(start, start + n, dtype=np.uint32)
            where: slice | np.ndarray = slice(start, start + n)
        else:
            idx = self._alloc(n)
            where = idx
            got = len(idx)
            if got < n:
                local[P_NO_FRAME] = n - got
                batch = batch.slice(0, got)
        if len(idx):
            registry = self.cmap.registry
            try:
                self._fill(where, batch)
                registry.read_lock(self.index)
                try:
                    verdicts, keys, counts = self._run_program(idx, start)
                    self._dispatch(idx, verdicts, keys, counts, start)
                    self._bulk.flush_all()
                except BaseException:
                    # Nothing staged may outlive the read-side section (rcu.py).
                    self._bulk.discard_all()
                    raise
                finally:
                    registry.read_unlock(self.index)
            except BaseException:
                self._abort_poll(idx)
                raise
        self._ctr += local

    def _abort_poll(self, idx: np.ndarray) -> None:
        """A poll interrupted (Ctrl-C, or a bug below the program): every frame of it
        that has no outcome yet -- still tagged as ours -- is released and counted
        ABORTED, and the poll's counters are published, so the books still balance."""
        mine = idx[self.pool.tag[idx] == TAG_RX]
        self._local[P_XDP_ABORTED] += len(mine)
        self.allocator.free(mine)
        self._ctr += self._local

    def flush(self) -> None:
        """Nothing is ever left staged between polls; kept for API symmetry."""
        self._bulk.flush_all()

    # -- the steps of a poll ----------------------------------------------------------------------
    def _alloc(self, n: int) -> np.ndarray:
        idx = self.allocator.alloc(n)
        if len(idx) == n:
            return idx
        # Every frame is in flight: wait for workers to give some back (backpressure).
        parts = [idx]
        have = len(idx)
        deadline = time.monotonic() + self.frame_wait
        pause = 2e-5
        while have < n and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
            more = self.allocator.alloc(n - have)
            if len(more):
                parts.append(more)
                have += len(more)
        return np.concatenate(parts) if len(parts) > 1 else idx

    def _fill(self, where: slice | np.ndarray, batch: PacketBatch) -> None:
        """Copy the packets into their frames and write the descriptors.  ``where`` is
        a slice for consecutive frames (plain memcpys) or an index array (scatters)."""
        pool = self.pool
        h = pool.headroom
        room = self._room
        caplen = batch.caplen
        n = len(batch)
        uniform = batch.uniform_length()
        if uniform is not None and uniform <= room:
            s0 = int(batch.start[0])
            rows = batch.buf[s0 : s0 + uniform * n].reshape(n, uniform)
            pool.data[where, h : h + uniform] = rows
        else:
            width = int(caplen.max())
            if width > room:
                self._local[P_TRUNCATED] += int(np.count_nonzero(caplen > room))
                caplen = np.minimum(caplen, room)
                width = room
            self._copy_ragged(where, batch, caplen, width)
        pool.length[where] = caplen
        pool.wire_len[where] = batch.wire_len
        pool.ts_ns[where] = batch.ts_ns
        pool.ifindex[where] = batch.ifindex
        pool.rx_queue[where] = batch.rx_queue
        pool.linktype[where] = batch.linktype
        pool.meta_len[where] = 0

    def _copy_ragged(
        self, where: slice | np.ndarray, batch: PacketBatch, caplen: np.ndarray, width: int
    ) -> None:
        """Copy packets of different lengths.  Short ones (the common case): one gather of
        ``width`` bytes per packet through a sliding-window view, one row store -- bytes
        past a packet's end are copied too and never read.  Long ones, and packets too
        close to the end of the source buffer for a full window: one memoryview copy
        each (~0.25 us)."""
        h = self.pool.headroom
        buf, start = batch.buf, batch.start
        frames = np.arange(where.start, where.stop) if isinstance(where, slice) else where
        loop = None
        if width <= _GATHER_MAX and len(buf) >= width:
            fits = start + width <= len(buf)
            if fits.all():
                rows = sliding_window_view(buf, width)[start]
                self.pool.data[where, h : h + width] = rows
                return
            rows = sliding_window_view(buf, width)[start[fits]]
            self.pool.data[frames[fits], h : h + width] = rows
            loop = np.flatnonzero(~fits)
        dst = self._pool_mv
        src = memoryview(buf)
        fs = self.pool.frame_size
        sel = range(len(caplen)) if loop is None else loop.tolist()
        fl, sl, cl = frames.tolist(), start.tolist(), caplen.tolist()
        for j in sel:
            d = fl[j] * fs + h
            dst[d : d + cl[j]] = src[sl[j] : sl[j] + cl[j]]

    def _run_program(
        self, idx: np.ndarray, start: int | None
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Verdicts, keys and the count of each verdict."""
        n = len(idx)
        if self._vectorized:
            try:
                out = self.program(XdpBatch(self.pool, idx, start))
            except Exception:
                out = None
            return normalize_verdicts(out, n)
        return self._run_per_frame(idx)

    def _run_per_frame(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
        pool, prog, ctx, cmap = self.pool, self.program, self._ctx, self.cmap
        ifs = pool.ifindex[idx].tolist()
        rxq = pool.rx_queue[idx].tolist()
        lts = pool.linktype[idx].tolist()
        verdicts: list[int] = []
        keys: list[int] = []
        counts = [0] * N_VERDICTS
        _set_current(ctx)
        try:
            for j, i in enumerate(idx.tolist()):
                ctx._load(i, ifs[j], rxq[j], lts[j])
                try:
                    v = as_verdict(prog(ctx))
                except Exception:
                    v = XDP_ABORTED
                counts[v] += 1
                verdicts.append(v)
                if v != XDP_REDIRECT or ctx.redirect_target not in (None, cmap):
                    keys.append(NO_KEY)  # a redirect into another map: a redirect error here
                else:
                    keys.append(ctx.redirect_key)
        finally:
            _set_current(None)
        return np.array(verdicts, dtype=np.uint8), np.array(keys, dtype=np.uint32), counts

    def _dispatch(
        self,
        idx: np.ndarray,
        verdicts: np.ndarray,
        keys: np.ndarray,
        counts: list[int],
        start: int | None,
    ) -> None:
        local = self._local
        local[P_XDP_ABORTED] += counts[0]
        local[P_XDP_DROP] += counts[1]
        local[P_XDP_PASS] += counts[2]
        local[P_XDP_TX] += counts[3]
        n_red = counts[XDP_REDIRECT]
        consecutive = False
        if n_red == len(idx):
            ridx, rkeys = idx, keys
            consecutive = start is not None
        else:
            red = verdicts == XDP_REDIRECT
            if counts[XDP_PASS] and self.pass_handler is not None:
                self._run_pass_handler(idx[verdicts == XDP_PASS])
            self.allocator.free(idx[~red])
            if n_red == 0:
                return
            ridx, rkeys = idx[red], keys[red]
        # Look the keys up: the table load happens inside the read-side section.
        kmin, kmax = int(rkeys.min()), int(rkeys.max())
        if kmin == kmax:  # one destination: no per-frame lookup at all
            slot = int(self._table[kmin]) if kmin < self._max_entries else -1
            if slot < 0:
                local[P_REDIRECT_ERR] += n_red
                self.allocator.free(ridx)
                return
            local[P_XDP_REDIRECT] += n_red
            self._bulk.enqueue(slot, ridx, consecutive)
            return
        if kmax < self._max_entries:
            slots = self._table[rkeys]
        else:
            inrange = rkeys < self._max_entries
            slots = np.full(len(rkeys), -1, dtype=np.int32)
            slots[inrange] = self._table[rkeys[inrange]]
        lo, hi = int(slots.min()), int(slots.max())
        if lo < 0:
            bad = slots < 0
            local[P_REDIRECT_ERR] += int(np.count_nonzero(bad))
            self.allocator.free(ridx[bad])
            good = ~bad
            ridx, slots = ridx[good], slots[good]
            if len(ridx) == 0:
                return
            lo = int(slots.min())
        local[P_XDP_REDIRECT] += len(ridx)
        if lo == hi:
            self._bulk.enqueue(lo, ridx)
            return
        # Several destinations, each frame's order kept.  A mask per destination (two
        # calls each) beats a stable sort and gathers while destinations are few.
        if hi - lo < _MASK_GROUPING_MAX:
            present = np.flatnonzero(np.bincount(slots - lo)) + lo
            for slot in present.tolist():
                self._bulk.enqueue(slot, ridx[slots == slot])
            return
        order = np.argsort(slots, kind="stable")
        sslots = slots[order]
        sidx = ridx[order]
        cuts = np.flatnonzero(sslots[1:] != sslots[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(sidx)]
        for a, b in itertools.pairwise(bounds):
            self._bulk.enqueue(int(sslots[a]), sidx[a:b])

    def _run_pass_handler(self, idx: np.ndarray) -> None:
        from .skb import Skb

        pool = self.pool
        for i in idx.tolist():
            # The local stack's failures are its own: the frame is counted xdp_pass.
            with contextlib.suppress(Exception):
                self.pass_handler(  # type: ignore[misc]
                    Skb(
                        pool.packet(i),
                        wire_len=int(pool.wire_len[i]),
                        linktype=int(pool.linktype[i]),
                        ifindex=int(pool.ifindex[i]),
                        index=i,
                    )
                )

    def _on_flush(self, slot: int, processed: int, drops: int) -> None:
        """The enqueue tracepoint: one record per flush."""
        self._enq[slot, E_PROCESSED : E_FLUSHES + 1] += (processed, drops, 1)
        local = self._local
        local[P_ENQ_PROCESSED] += processed
        local[P_QUEUE_FULL] += drops
        local[P_FLUSHES] += 1
        if self._events.enabled:
            self._events.emit(
                (time.monotonic_ns(), self.cmap.map_id, processed, drops, self.cmap._slot_cpu(slot))
            )
