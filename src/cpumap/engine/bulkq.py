"""Bulk queues: per-producer staging per destination, flushed at the end of each RX batch.

The kernel stages up to CPU_MAP_BULK_SIZE (8) frames per destination per CPU ("8 == one
cacheline on 64-bit archs") and flushes them into the destination's ptr_ring under one
producer-lock acquisition: when the bulk queue fills, and for every destination touched
at the end of the driver's poll.  It is guaranteed that queueing and flushing happen on
the same CPU, so the staging needs no lock.

Ours is the same structure with a different argument for its size.  In Python the cost
is per call, not per byte: one flush costs the ring lock, two numpy slice stores, a tail
store with a fence and a stats update (~10 us here) whether it carries 8 frames or 1024.
So the bulk size trades flush overhead against latency and fairness between producers.
``benchmarks/bench_engine.py --sweep-bulk`` measures it (docs/benchmarks.md): at a poll
of 1024 frames, bulks of 8 deliver a quarter of what bulks of 1024 do.  The default,
:data:`DEFAULT_BULK_SIZE`, equals the default poll size: one flush per destination per
poll, as the kernel's flush at the end of the poll would be if its bulk never filled.

Lossless mode (``backpressure > 0``, not the kernel's: it drops at a full ring): what
does not fit at a flush is kept, in order, in a per-destination *backlog* (tagged as
published by us, so that recovery finds it: ownership.py), and waited for only after
every destination has been flushed and every sleeping consumer woken.  So a full ring
delays neither another entry's frames nor its wake-up, and a frame never overtakes an
earlier one of the same destination.  The wait ends when the frames fit, when the
ring is killed (a broken or abandoned entry: the rest are dropped), or after
``backpressure`` seconds.  Meanwhile the producer sleeps on the ring's room futex, and
the consumer's next ``take`` wakes it (ring.py, "Waiting for room").

Invariant: a producer's staged frames are all flushed before it reports a quiescent
state (see rcu.py), so after a grace period no staging anywhere refers to a retired
entry.  (The kernel needs ``__cpu_map_entry_free`` to flush leftovers after the grace
period because its flush may come after the RCU read section; ours never does.)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from .frame_pool import TAG_QUEUED, FramePool
from .ring import WAIT_TIMEOUT, Ring

CPU_MAP_BULK_SIZE = 8  # the kernel's
DEFAULT_BULK_SIZE = 1024  # ours: see the module docstring

ROOM_WAIT_SLICE = 0.05  # seconds: a lossless producer re-checks deadline and ring this often
_MASK_GROUPING_MAX = 8  # slot ranges up to this are grouped by masks, wider by a sort

FlushHook = Callable[[int, int, int], None]  # (slot, processed, drops)


class SlotTable(Protocol):
    """The map's table as the redirect path reads it (``control.MapShared``)."""

    def slot_of(self, key: int) -> int: ...

    def slots_of(self, keys: np.ndarray, largest: int | None = None) -> np.ndarray: ...


class BulkQueues:
    """One producer's staging area: a bulk queue per destination slot.

    Concurrency: owned by one producer (one thread of one process); never shared.
    Invariant: ``0 <= self._count[s] < bulk_size`` between calls, and
    ``self._count[s] > 0`` iff ``s`` is in ``self._pending``.
    """

    def __init__(
        self,
        pool: FramePool,
        rings: Callable[[int], Ring],
        drop: Callable[[np.ndarray], None],
        on_flush: FlushHook,
        n_slots: int,
        bulk_size: int = DEFAULT_BULK_SIZE,
        backpressure: float = 0.0,
        *,
        queued_tag: int = TAG_QUEUED,
    ) -> None:
        """``drop``: takes back frames a ring refused (the caller counts them at
        ``on_flush``); ``queued_tag``: the tag a flush gives frames (ownership.py)."""
        if bulk_size < 1:
            raise ValueError(f"bulk_size must be >= 1, not {bulk_size}")
        self.pool = pool
        self.bulk_size = bulk_size
        self.backpressure = backpressure
        self._rings = rings
        self._drop = drop
        self._on_flush = on_flush
        self._buf = np.empty((n_slots, bulk_size), dtype=np.uint32)
        self._count = [0] * n_slots
        self._pending: list[int] = []
        self._to_wake: dict[int, Ring] = {}  # consumers seen sleeping, woken at flush_all
        self._backlog: dict[int, list[np.ndarray]] = {}  # lossless: what did not fit yet
        self._queued_tag = queued_tag
        self.room_waits = 0  # lossless: sleeps for room (Ring.wait_room)
        self.room_timeouts = 0  # ... that timed out with room there (a lost wake-up)

    def enqueue(self, slot: int, frames: np.ndarray, consecutive: bool = False) -> None:
        """Stage ``frames`` (in order) for ``slot``; full bulks are flushed at once.
        ``consecutive``: the frames are ``frames[0], frames[0]+1, ...`` (cheaper tags)."""
        n = len(frames)
        if n == 0:
            return
        count = self._count[slot]
        size = self.bulk_size
        if count == 0:
            self._pending.append(slot)
        pos = 0
        while pos < n:
            take = min(size - count, n - pos)
            if count == 0 and take == size:
                # A whole bulk straight from the caller's array: no staging copy.
                self._flush(slot, frames[pos : pos + size], consecutive)
            else:
                self._buf[slot, count : count + take] = frames[pos : pos + take]
                count += take
                if count == size:
                    self._flush(slot, self._buf[slot])
                    count = 0
            pos += take
        self._count[slot] = count
        if count == 0:
            self._pending.remove(slot)

    def redirect(
        self, table: SlotTable, frames: np.ndarray, keys: np.ndarray, consecutive: bool = False
    ) -> np.ndarray:
        """``xdp_do_redirect`` for a batch: look every key up in the map's table and stage
        each frame for the entry its key names, in order per entry.  Returns the frames
        whose key names no entry (the caller counts them: a redirect error on the RX side,
        a drop in a second stage, as ``xdp_do_redirect`` failing is in the kernel).

        Precondition: inside the caller's read-side section (rcu.py), so that every slot
        found stays valid until the flush.  ``consecutive``: ``frames`` are
        ``frames[0], frames[0] + 1, ...`` (cheaper tags, kept for one destination).

        Cost: one lookup and no per-frame work for a batch to one destination (the usual
        case); a mask per destination when they are few; one stable sort when many.
        """
        if not len(frames):
            return frames
        kmin, kmax = int(keys.min()), int(keys.max())
        if kmin == kmax:  # one destination
            slot = table.slot_of(kmin)
            if slot < 0:
                return frames
            self.enqueue(slot, frames, consecutive)
            return frames[:0]
        if kmax - kmin < _MASK_GROUPING_MAX and self._redirect_by_keys(
            table, frames, keys, kmin, kmax
        ):
            return frames[:0]
        slots = table.slots_of(keys, kmax)
        lo, hi = int(slots.min()), int(slots.max())
        failed = frames[:0]
        if lo < 0:
            bad = slots < 0
            failed = frames[bad]
            good = ~bad
            frames, slots = frames[good], slots[good]
            if not len(frames):
                return failed
            lo = int(slots.min())
        if lo == hi:
            self.enqueue(lo, frames)
            return failed
        # Several destinations, each frame's order kept.  A mask per destination (two
        # calls each) beats a stable sort and gathers while destinations are few.
        if hi - lo < _MASK_GROUPING_MAX:
            present = np.flatnonzero(np.bincount(slots - lo)) + lo
            for slot in present.tolist():
                self.enqueue(slot, frames[slots == slot])
            return failed
        order = np.argsort(slots, kind="stable")
        sslots = slots[order]
        sframes = frames[order]
        cuts = np.flatnonzero(sslots[1:] != sslots[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(sframes)]
        for a, b in itertools.pairwise(bounds):
            self.enqueue(int(sslots[a]), sframes[a:b])
        return failed

    def _redirect_by_keys(
        self, table: SlotTable, frames: np.ndarray, keys: np.ndarray, kmin: int, kmax: int
    ) -> bool:
        """:meth:`redirect` for keys spanning a few values (the usual "one key per CPU"):
        the table is read once per key in the range, not per frame, and the frames are
        grouped by key with a mask each (two keys: one mask and its complement).  Only
        when every key in the range names an entry and no two name the same one -- then
        grouping by key is grouping by destination, in order.  False: nothing done, the
        caller takes the general path."""
        slot_for = [table.slot_of(k) for k in range(kmin, kmax + 1)]
        if min(slot_for) < 0 or len(set(slot_for)) < len(slot_for):
            return False
        if kmax == kmin + 1:
            first = keys == kmin
            self.enqueue(slot_for[0], frames[first])
            self.enqueue(slot_for[1], frames[~first])
            return True
        present = np.flatnonzero(np.bincount(keys - kmin)).tolist()
        for k in present:
            self.enqueue(slot_for[k], frames[keys == kmin + k])
        return True

    def flush_all(self) -> None:
        """Flush every destination with staged frames, then wake every consumer that was
        found sleeping: the end of the driver's poll (``__cpu_map_flush``).  One wake-up
        per destination per poll at most, however many bulks went out: a wake-up is a
        syscall that costs the producer 15-40 us here."""
        for slot in self._pending:
            count = self._count[slot]
            self._count[slot] = 0
            self._flush(slot, self._buf[slot, :count])
        self._pending.clear()
        self._wake_sleepers()
        if self._backlog:
            self._drain_backlog()

    def discard_all(self) -> None:
        """Forget every staged frame and the backlog (they are still the producer's: its
        recovery finds them by their tags, ownership.py) and wake whoever was found
        sleeping.  For a poll that is being aborted."""
        for slot in self._pending:
            self._count[slot] = 0
        self._pending.clear()
        self._backlog.clear()
        self._wake_sleepers()

    @property
    def staged(self) -> int:
        return sum(self._count) + sum(len(f) for b in self._backlog.values() for f in b)

    def _wake_sleepers(self) -> None:
        for ring in self._to_wake.values():
            ring.wake()
        self._to_wake.clear()

    def _flush(self, slot: int, frames: np.ndarray, consecutive: bool = False) -> None:
        """The kernel's bq_flush_to_queue: publish what fits, drop the rest (lossless:
        keep it in the backlog), report."""
        # Hand-over: tag before publishing (the ring's tail store orders it).
        if consecutive:
            first = int(frames[0])
            self.pool.tag[first : first + len(frames)] = self._queued_tag
        else:
            self.pool.tag[frames] = self._queued_tag
        backlog = self._backlog.get(slot)
        if backlog is not None:  # behind frames still waiting: keep the order
            backlog.append(frames.copy())
            return
        ring = self._rings(slot)
        done, sleeping = ring.produce_nowake(frames)
        if sleeping:
            self._to_wake[slot] = ring
        rest = len(frames) - done
        if rest and self.backpressure > 0 and not ring.dead():
            self._backlog[slot] = [frames[done:].copy()]
            rest = 0
        elif rest:
            self._drop(frames[done:])
        self._on_flush(slot, done + rest, rest)

    def _drain_backlog(self) -> None:
        """Lossless mode: wait for room for each destination's backlog in turn (every
        other destination was flushed and woken before)."""
        while self._backlog:
            slot = next(iter(self._backlog))
            frames = self._backlog[slot]
            rest = frames[0] if len(frames) == 1 else np.concatenate(frames)
            done = self._wait_and_produce(self._rings(slot), rest)
            if done < len(rest):
                self._drop(rest[done:])
            del self._backlog[slot]
            self._on_flush(slot, len(rest), len(rest) - done)

    def _wait_and_produce(self, ring: Ring, frames: np.ndarray) -> int:
        """Wait (at most ``backpressure`` seconds) for the consumer to make room, as long
        as the ring lives.  The wait is inside the producer's read-side section, which
        only delays grace periods (the ring's worker drains regardless of them), and a
        dead worker is replaced meanwhile by the controller's supervisor thread.

        Between attempts the producer sleeps in :meth:`Ring.wait_room`, woken by the
        consumer's next ``take`` (ring.py argues that no wake-up is lost).  It sleeps in
        slices of at most :data:`ROOM_WAIT_SLICE`, re-checking its deadline and whether
        the ring was killed: so a worker that died, or a lost wake-up, costs a slice, not
        a hang.  ``room_timeouts`` counts slices that ended with room already there
        (there should be none: the tests assert it)."""
        done, n = 0, len(frames)
        ring.wake()  # it must drain for us to go on
        deadline = time.monotonic() + self.backpressure
        while True:
            got = ring.produce(frames[done:])
            done += got
            if done >= n or ring.dead():
                return done
            left = deadline - time.monotonic()
            if left <= 0:
                return done
            self.room_waits += 1
            rc = ring.wait_room(min(left, ROOM_WAIT_SLICE))
            # Room came while we slept through: legitimate only if the consumer is between
            # freeing it and its wake (10), and then it clears the flag very soon.
            if rc == WAIT_TIMEOUT and ring.has_room() and not ring.room_wake_coming(0.2):
                self.room_timeouts += 1
