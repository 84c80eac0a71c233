"""The RX producer: the driver's poll loop, where the XDP program runs.

One :class:`RxProducer` plays one RX queue of a NIC driver: it receives packets, puts
them in frames, runs the XDP program on every frame, stages redirected frames in bulk
queues per destination, and flushes them at the end of the batch.  One call of
:meth:`RxProducer.poll` is one NAPI poll::

    alloc frames, copy packets in       (the NIC's DMA)
    read_lock()                         (rcu.py: the XDP program's RCU section begins)
      run the program                   -> a verdict per frame (programs/runner.py)
      DROP/ABORTED/TX/PASS: count, give the frame back (PASS: pass_handler first)
      REDIRECT: look the key up (a missing entry: redirect_err), stage (bulkq.py)
      flush every staged destination    (xdp_do_flush)
    read_unlock()                       (quiescent: a grace period may end)
    publish the counters of the batch

Frames are allocated *outside* the read-side section, because waiting for free frames
(every frame is in flight) must not hold up a grace period.

Counting, and what an interruption or a death leaves (ownership.py has the argument)::

    alloc (tags RX) ; commit OPEN {rx, polls, no_frame}       rx counted as frames are taken
    ... outcomes tag DONE, flushes tag QUEUED+p and publish ...
    commit CLOSED {every outcome of the poll} ; release DONE   outcomes counted, then released

An exception anywhere in a poll (Ctrl-C in a lossless wait, a program's BaseException)
ends in ``_abort_poll``: what the poll still holds -- RX, DONE, and flushed frames no
ring took -- is counted ``xdp_aborted`` and released by the same recovery that serves a
dead producer's partition, so nothing stays staged and the identity is exact.  A new
producer claiming a dead one's slot runs that recovery (counting ``lost``) before it
allocates; so does the controller's supervisor when it finds the owner dead.

A producer belongs to one thread of one process.  Producers in other processes are
created there (after fork) from the same :class:`~cpumap.CpuMap`; each claims its own
producer slot, which is also its frame-pool partition.  A producer works on the map's
shared state (``control.MapShared``) and its pool, never on the map object itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from .. import _atomics as at
from ..abi import XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX
from ..closing import Closing
from ..errors import ClosedResourceError
from ..map_errors import as_seconds
from ..packets import PacketBatch
from ..programs.runner import ProgramRunner, Verdicts
from ..skb import frame_skbs
from .bulkq import DEFAULT_BULK_SIZE, BulkQueues
from .control import MapShared
from .counters import PHASE_CLOSED, PHASE_OPEN, PRODUCER_WORDS, EnqueueCounter, ProducerCounter
from .frame_pool import (
    HASH_NONE,
    TAG_DONE,
    TAG_KERNEL,
    TAG_RETURNED,
    TAG_RX,
    FrameAllocator,
    FramePool,
)
from .ownership import queued_tag, recover_partition, return_lent

DEFAULT_POLL_SIZE = 1024  # packets per poll (NAPI's weight is 64; ours: per-call costs)
DEFAULT_FRAME_WAIT = 10.0
# Length classes of the ragged copy: a packet is copied with its class's widest packet.
_COPY_CLASSES = np.array([64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])

_P = ProducerCounter
_E = EnqueueCounter
# The counter each verdict other than REDIRECT is counted in (REDIRECT: after the lookup).
_VERDICT_COUNTER = (
    (XDP_ABORTED, _P.XDP_ABORTED),
    (XDP_DROP, _P.XDP_DROP),
    (XDP_PASS, _P.XDP_PASS),
    (XDP_TX, _P.XDP_TX),
)
# Committed at the OPEN commit of a poll; the rest of the poll's words at its CLOSED one.
_OPEN_WORDS = (_P.RX, _P.POLLS, _P.NO_FRAME)
# The rest, committed at the CLOSED commit (one list: it runs every poll).
_CLOSED_WORDS = tuple(w for w in range(PRODUCER_WORDS) if w not in _OPEN_WORDS)
# A poll's outcomes: an aborted poll replaces them by counting what it still holds.
_OUTCOME_WORDS = (
    _P.XDP_ABORTED,
    _P.XDP_DROP,
    _P.XDP_PASS,
    _P.XDP_TX,
    _P.REDIRECT_ERR,
    _P.QUEUE_FULL,
)


def _note_forking_thread() -> None:
    """Before every fork: remember whether the main thread forks (the child inherits it)."""
    global _FORKED_BY_MAIN_THREAD
    _FORKED_BY_MAIN_THREAD = threading.current_thread() is threading.main_thread()


_FORKED_BY_MAIN_THREAD = True
os.register_at_fork(before=_note_forking_thread)


def _die_with(owner: int, interval: float = 0.25) -> None:
    """In a producer process forked from the map's controller: die when it does.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked us exits, so it is armed
    only when that was the main thread; a watchdog thread covers the rest (re-parented:
    ``getppid`` changes).  Then the parent is checked again: it may have died before
    either was armed."""
    if os.getppid() != owner:
        return  # not the controller's child: a grandchild's parent decides for it
    if _FORKED_BY_MAIN_THREAD:
        at.set_pdeathsig(signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == owner:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="cpumap-producer-watch", daemon=True).start()
    if os.getppid() != owner:
        os.kill(os.getpid(), signal.SIGKILL)


def _check_count(value: object, what: str) -> None:
    """A count argument: an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, not {value}")


class Feedable(Protocol):
    """What a producer needs of the map it feeds (a ``CpuMap``): its shared state, its
    frame pool and its controlling process's pid.  The map itself is also the target its
    program redirects into."""

    shared: MapShared
    pool: FramePool

    @property
    def owner_pid(self) -> int: ...


class RxProducer(Closing):
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
        cmap: Feedable,
        program: Any,
        *,
        index: int | None = None,
        poll_size: int = DEFAULT_POLL_SIZE,
        bulk_size: int = DEFAULT_BULK_SIZE,
        pass_handler: Callable[[Any], Any] | None = None,
        frame_wait: float = DEFAULT_FRAME_WAIT,
        backpressure: float = 0.0,
    ) -> None:
        _check_count(poll_size, "poll_size")
        _check_count(bulk_size, "bulk_size")
        if not callable(program):
            raise TypeError(f"program must be callable, not {type(program).__name__}")
        if pass_handler is not None and not callable(pass_handler):
            raise TypeError(f"pass_handler must be callable, not {type(pass_handler).__name__}")
        frame_wait = as_seconds(frame_wait, "frame_wait")
        backpressure = as_seconds(backpressure, "backpressure")
        shared = cmap.shared
        if shared.closed:
            raise ClosedResourceError("map is closed")
        if index is not None and not 0 <= index < shared.producers:
            raise ValueError(f"producer index must be in 0..{shared.producers - 1}, not {index}")
        self.shared = shared
        self.program = program
        self.poll_size = poll_size
        self.pass_handler = pass_handler
        self.frame_wait = frame_wait
        self.pool = cmap.pool
        self._closed = True  # until fully built: a failed init gives its slot back
        self.index = shared.registry.claim(index)
        try:
            self._setup(cmap, bulk_size, backpressure)
        except BaseException:
            shared.registry.unclaim(self.index)
            raise
        self._closed = False
        if os.getpid() != cmap.owner_pid:
            _die_with(cmap.owner_pid)

    def _setup(self, cmap: Feedable, bulk_size: int, backpressure: float) -> None:
        shared, pool = self.shared, self.pool
        self._record = shared.producer_record(self.index)
        # Whatever a previous holder of the slot left (killed mid-poll) is ours to count.
        self._counts, _ = recover_partition(pool, shared, self.index)
        self.allocator: FrameAllocator = pool.allocator(self.index, block=self.poll_size)
        self._runner = ProgramRunner(self.program, pool, target=cmap)
        self._enq = shared.enqueue_counters(self.index)
        self._events = shared.enqueue_log(self.index)
        # This poll's counters: Python ints are cheaper than numpy.
        self._local = [0] * PRODUCER_WORDS
        self._done: list[np.ndarray] = []  # frames with an outcome, released after the commit
        self._bulk = BulkQueues(
            pool,
            shared.ring,
            self._hold_done,
            self._on_flush,
            shared.n_slots,
            bulk_size,
            backpressure,
            queued_tag=queued_tag(self.index),
        )
        self._room = pool.frame_size - pool.headroom
        self._pool_mv = memoryview(pool.flat)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Give up the producer slot.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.allocator.close()
        # Nothing is held between polls -- unless an abort was itself interrupted (a
        # second Ctrl-C): then what it left is counted now, not left to the slot's next owner.
        self._counts, _ = recover_partition(
            self.pool,
            self.shared,
            self.index,
            outcome=_P.XDP_ABORTED,
            record=self._counts,
            kernel_gone=False,  # a lender still open returns its frames itself (return_lent)
        )
        self.shared.registry.unclaim(self.index)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def room_waits(self) -> int:
        """Times a lossless flush slept for room in a full ring (``backpressure`` > 0).
        Many against the polls say the workers, not this side, set the pace."""
        return self._bulk.room_waits

    # -- receiving -----------------------------------------------------------------------------
    def receive(self, batch: PacketBatch) -> None:
        """Run every packet of ``batch`` through the program, ``poll_size`` at a time."""
        n = len(batch)
        step = self.poll_size
        for lo in range(0, n, step):
            self.poll(batch.slice(lo, min(lo + step, n)) if n > step else batch)

    def poll(self, batch: PacketBatch) -> None:
        """One NAPI poll over ``batch`` (any size; see the module docstring)."""
        if self._closed:
            raise ClosedResourceError("producer is closed")
        if self.shared.closed:
            raise ClosedResourceError("map is closed")
        batch.check()  # before anything is counted: a bad batch is refused whole
        n = len(batch)
        if n == 0:
            return
        if n > self.allocator.size:  # more than our whole partition: several polls
            step = self.allocator.block
            for lo in range(0, n, step):
                self.poll(batch.slice(lo, min(lo + step, n)))
            return
        self._local = [0] * PRODUCER_WORDS
        try:
            start = self.allocator.alloc_range(n)
            if start is not None:  # the common case: n consecutive frames
                idx = np.arange(start, start + n, dtype=np.uint32)
                where: slice | np.ndarray = slice(start, start + n)
            else:
                idx = self._alloc(n)
                where = idx
                if len(idx) < n:
                    batch = batch.slice(0, len(idx))
            self._commit_open(n, len(idx))
            if len(idx):
                self._run_poll(idx, where, start, batch)
            self._commit_closed()
        except BaseException:
            self._abort_poll()
            raise

    def _run_poll(
        self, idx: np.ndarray, where: slice | np.ndarray, start: int | None, batch: PacketBatch
    ) -> None:
        self._fill(where, batch)
        self._steer(idx, start)

    def _steer(self, idx: np.ndarray, start: int | None) -> None:
        """Run the program over frames ``idx`` (bytes and descriptors written), dispatch
        the verdicts and flush, inside one read-side section."""
        registry = self.shared.registry
        registry.read_lock(self.index)
        try:
            self._dispatch(idx, self._runner.run(idx, start), start)
            self._bulk.flush_all()
        except BaseException:
            # Nothing staged may outlive the read-side section (rcu.py).
            self._bulk.discard_all()
            raise
        finally:
            registry.read_unlock(self.index)

    # -- placed frames: a source that writes the frames itself (AF_XDP) ---------------------
    def lend(self, n: int, *, reclaim: bool = True) -> np.ndarray:
        """Up to ``n`` frames of this producer's partition, tagged ``TAG_KERNEL``: lent to
        a source that places frames itself (an AF_XDP socket's fill ring, the kernel
        writing into them).  Fewer, or none, when the partition has no more free: frames
        come back as workers release them (``reclaim``: look for whole blocks released
        when none is free -- one scan of the partition's tags, so a caller lending every
        poll asks for it only when a block's worth may be back).

        A lent frame comes back one of two ways only: through :meth:`poll_placed` (the
        kernel wrote a frame into it) or :meth:`return_lent` (the lender is gone).  Lend
        only what you will hand to the kernel: an exception between this call and the
        hand-over leaves the frames lent until :meth:`return_lent` (ownership.py)."""
        self._check_usable()
        if n <= 0:
            return np.zeros(0, dtype=np.uint32)
        return self.allocator.alloc_some(n, TAG_KERNEL, reclaim=reclaim)

    def poll_placed(
        self, idx: np.ndarray, *, consecutive: bool | None = None, truncated: int = 0
    ) -> None:
        """One NAPI poll over frames ``idx`` that a source placed itself: lent frames
        (:meth:`lend`) whose bytes and descriptors are written.  Nothing is copied: the
        frames move KERNEL -> RX and then follow the poll's commit protocol exactly as
        :meth:`poll`'s (``rx`` counted at the OPEN commit, outcomes at the CLOSED one,
        an interruption counted ``xdp_aborted`` by :meth:`_abort_poll`).

        ``consecutive``: whether ``idx`` is ``idx[0], idx[0] + 1, ...``, when the caller
        has already checked (an AF_XDP source does, to write the descriptors in one
        store); None: checked here.  A wrong True would run the program over the wrong
        frames: pass what you computed, never a guess.  ``truncated``: how many of them
        the source cut at the frame's room, counted ``truncated`` as :meth:`_fill` counts
        its own (a mapped capture's copy cuts them: capture/mapped.py)."""
        self._check_usable()
        n = len(idx)
        if n == 0:
            return
        idx = np.asarray(idx, dtype=np.uint32)
        if consecutive is None:
            start = _consecutive_start(idx)
        else:
            start = int(idx[0]) if consecutive else None
        self._local = [0] * PRODUCER_WORDS
        self._local[_P.TRUNCATED] = truncated
        try:
            # Ours now: the lender read them off its RX ring (a slice store when it can).
            self.pool.tag[idx if start is None else slice(start, start + n)] = TAG_RX
            self._commit_open(n, n)
            self._steer(idx, start)
            self._commit_closed()
        except BaseException:
            self._abort_poll()
            raise

    @property
    def lendable(self) -> int:
        """The most frames :meth:`lend` can have out at once: the partition's."""
        return self.allocator.size

    @property
    def lend_block(self) -> int:
        """Frames that come back to :meth:`lend` together (a block of the allocator)."""
        return self.allocator.block

    def return_lent(self) -> int:
        """Take back every frame of the partition still lent (``TAG_KERNEL``) as released;
        returns how many.  Precondition: nobody can write them any more -- the lender's
        sockets are closed (a frame in a fill ring or in the kernel's hands is then simply
        ours again: the memory never stopped being the pool's)."""
        return return_lent(self.pool, self.index)

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedResourceError("producer is closed")

    # -- the commit protocol (ownership.py) ----------------------------------------------------
    def _commit_open(self, n: int, got: int) -> None:
        """rx is counted as the frames are taken: from here, every RX- or DONE-tagged frame
        of the partition is in ``rx`` with no outcome (phase OPEN)."""
        c = self._counts
        c[_P.RX] += n
        c[_P.POLLS] += 1
        c[_P.NO_FRAME] += n - got
        c[_P.PHASE] = PHASE_OPEN if got else PHASE_CLOSED
        self._record.publish(c)

    def _commit_closed(self) -> None:
        """Every outcome of the poll, with one store (phase CLOSED); then the frames that
        have one are released."""
        local, c = self._local, self._counts
        for w in _CLOSED_WORDS:
            if local[w]:
                c[w] += local[w]
        c[_P.PHASE] = PHASE_CLOSED
        self._record.publish(c)
        self._release_done()

    def _release_done(self) -> None:
        tags = self.pool.tag
        for part in self._done:
            tags[part] = TAG_RETURNED
        self._done.clear()

    def _hold_done(self, frames: np.ndarray) -> None:
        """Frames whose outcome is decided: ours until the poll's outcomes are committed."""
        self.pool.tag[frames] = TAG_DONE
        self._done.append(frames)

    def _abort_poll(self) -> None:
        """A poll interrupted (Ctrl-C, a program's BaseException, a bug below it): what it
        still holds -- RX, DONE, flushed frames no ring took -- is counted ABORTED and
        released, by the recovery that serves a dead producer (ownership.py).  Its other
        outcomes are not committed; counted again there, they would be counted twice."""
        self._bulk.discard_all()
        for ring in self.shared.rings():  # an interrupt may have come right after a CAS
            ring.unlock_if_mine()
        committed = self._record.read()
        if committed[_P.PHASE] == PHASE_OPEN:  # the poll's own words, but no outcome
            for w in range(PRODUCER_WORDS):
                if w not in _OPEN_WORDS and w not in _OUTCOME_WORDS and w != _P.PHASE:
                    committed[w] += self._local[w]
        self._counts, _ = recover_partition(
            self.pool,
            self.shared,
            self.index,
            outcome=_P.XDP_ABORTED,
            record=committed,
            kernel_gone=False,  # still lent: the lender's socket may write them any moment
        )
        self._done.clear()  # released by the recovery

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
            # Fast path == _copy_each per packet; test_fill_fast_paths_equal_the_per_packet_copy.
            s0 = int(batch.start[0])
            rows = batch.buf[s0 : s0 + uniform * n].reshape(n, uniform)
            pool.data[where, h : h + uniform] = rows
        else:
            width = int(caplen.max())
            if width > room:
                self._local[_P.TRUNCATED] += int(np.count_nonzero(caplen > room))
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
        pool.hops[where] = 0
        pool.hash_type[where] = HASH_NONE  # a reused frame's hash must not ride again

    def _copy_ragged(
        self, where: slice | np.ndarray, batch: PacketBatch, caplen: np.ndarray, width: int
    ) -> None:
        """Copy packets of different lengths.  Packets are grouped by length class (powers
        of two, :data:`_COPY_CLASSES`; one stable sort), and each class is one gather of
        its widest packet's bytes per packet, through one window view of the source
        buffer, and one row store -- bytes past a packet's end are copied too and never
        read (under twice the packet's own, but for packets under 64 bytes).  Mixed
        traffic has a handful of classes: a handful of calls per poll, where a copy per
        packet costs ~0.25 us each.  Packets that start within ``width`` bytes of the end
        of the source buffer (where the window's rows would run past it): one memoryview
        copy each."""
        # Its gathers == _copy_each per packet; test_fill_fast_paths_equal_the_per_packet_copy.
        h = self.pool.headroom
        buf, start = batch.buf, batch.start
        data = self.pool.data
        size = len(buf)
        frames = np.arange(where.start, where.stop) if isinstance(where, slice) else where
        near_end = start > size - width
        loop = np.flatnonzero(near_end)
        if len(loop):
            self._copy_each(buf, frames[loop], start[loop], caplen[loop])
            if len(loop) == len(start):
                return
            keep = ~near_end
            frames, start, caplen = frames[keep], start[keep], caplen[keep]
            where = frames
        # Row r of the window is buf[r : r + width]: every start left is in its range.
        window = np.ndarray((size - width + 1, width), np.uint8, buf, strides=(1, 1))
        classes = np.searchsorted(_COPY_CLASSES, caplen)
        counts = np.bincount(classes)
        present = counts[counts > 0]
        if len(present) == 1:  # == the class loop; test_fill_fast_paths_equal_the_per_packet_copy
            w = int(caplen.max())
            data[where, h : h + w] = window[start, :w]
            return
        order = np.argsort(classes, kind="stable")
        frames, start, caplen = frames[order], start[order], caplen[order]
        lo = 0
        for hi in np.cumsum(present).tolist():
            w = int(caplen[lo:hi].max())
            data[frames[lo:hi], h : h + w] = window[start[lo:hi], :w]
            lo = hi

    def _copy_each(
        self, buf: np.ndarray, frames: np.ndarray, start: np.ndarray, caplen: np.ndarray
    ) -> None:
        """One memoryview copy per packet (the few a window view cannot reach)."""
        h = self.pool.headroom
        fs = self.pool.frame_size
        dst = self._pool_mv
        src = memoryview(buf)
        for f, s, c in zip(frames.tolist(), start.tolist(), caplen.tolist(), strict=True):
            d = f * fs + h
            dst[d : d + c] = src[s : s + c]

    def _dispatch(self, idx: np.ndarray, v: Verdicts, start: int | None) -> None:
        """Count the verdicts, give back what is not redirected, stage the redirects."""
        local = self._local
        counts = v.counts
        for verdict, counter in _VERDICT_COUNTER:
            local[counter] += counts[verdict]
        n_red = counts[XDP_REDIRECT]
        if n_red == len(idx):
            ridx, rkeys = idx, v.keys
            consecutive = start is not None
        else:
            red = v.verdicts == XDP_REDIRECT
            if counts[XDP_PASS] and self.pass_handler is not None:
                self._run_pass_handler(idx[v.verdicts == XDP_PASS])
            self._hold_done(idx[~red])
            if n_red == 0:
                return
            ridx, rkeys, consecutive = idx[red], v.keys[red], False
        # Look the keys up: the table load happens inside the read-side section.
        failed = self._bulk.redirect(self.shared, ridx, rkeys, consecutive)
        local[_P.REDIRECT_ERR] += len(failed)
        local[_P.XDP_REDIRECT] += n_red - len(failed)
        if len(failed):
            self._hold_done(failed)

    def _run_pass_handler(self, idx: np.ndarray) -> None:
        for skb in frame_skbs(self.pool, idx):
            # The local stack's failures are its own: the frame is counted xdp_pass.
            if skb is not None:
                with contextlib.suppress(Exception):
                    self.pass_handler(skb)  # type: ignore[misc]

    def _on_flush(self, slot: int, processed: int, drops: int) -> None:
        """The enqueue tracepoint: one record per flush."""
        self._enq[slot, _E.PROCESSED : _E.FLUSHES + 1] += (processed, drops, 1)
        local = self._local
        local[_P.ENQ_PROCESSED] += processed
        local[_P.QUEUE_FULL] += drops
        local[_P.FLUSHES] += 1
        if self._events.enabled:
            shared = self.shared
            self._events.emit(
                (time.monotonic_ns(), shared.map_id, processed, drops, shared.slot_cpu(slot))
            )


def _consecutive_start(idx: np.ndarray) -> int | None:
    """``idx[0]`` when ``idx`` is ``idx[0], idx[0] + 1, ...`` (the program then sees views
    of the frames), else None.  Placed frames mostly are: a fill ring hands chunks out in
    the order they were lent, and they are lent a block at a time."""
    first, n = int(idx[0]), len(idx)
    if int(idx[-1]) - first != n - 1:
        return None
    return first if n < 3 or np.array_equal(idx, _ascending(n) + np.uint32(first)) else None


def _ascending(n: int) -> np.ndarray:
    """``0, 1, ..., n - 1`` (uint32), from one array grown as needed."""
    global _ASCENDING
    if len(_ASCENDING) < n:
        _ASCENDING = np.arange(max(n, 2 * len(_ASCENDING)), dtype=np.uint32)
    return _ASCENDING[:n]


_ASCENDING = np.arange(DEFAULT_POLL_SIZE, dtype=np.uint32)
