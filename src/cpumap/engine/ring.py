"""The ring: a bounded multi-producer, single-consumer queue of frame indices in shared memory.

This is the kernel's ptr_ring as used by cpumap: capacity = the entry's qsize, several RX
producers, one consumer (the entry's worker).  What travels is a uint32 frame index.

Theory of operation
-------------------
Two free-running 64-bit counters, each on its own cache line::

    prod_tail  frames ever published   (written by producers, under the producer lock)
    cons_tail  frames ever taken       (written by the consumer only)

    0 <= prod_tail - cons_tail <= capacity       # Invariant
    slot of position p = p % capacity

*Producer side* (``produce``), like the kernel's ``spin_lock(&q->producer_lock)``: a
producer takes the producer lock (a word set by compare-and-swap to the owner thread's
id -- a tid, so that producers that are threads of one process exclude each other, and a
thread interrupted between its CAS and its critical section finds the lock its own),
reads ``cons_tail``, writes as many indices as fit into the slots after ``prod_tail``,
then publishes them with one store of ``prod_tail``.  Why a lock and not a lock-free
multi-producer protocol: the critical section is two numpy slice stores, the lock is one
CAS, and the only shared state it changes is slots *beyond* ``prod_tail`` plus the tail
store itself.  So a producer that dies holding the lock leaves the ring consistent (its
half-written slots were never published) and the lock may be taken over once its owner
is seen dead.  A lock-free reservation scheme (DPDK's head/tail pair) has no such
property: a producer dying between reserve and commit blocks every later producer.

*Publish ordering*: slots are written before the tail store.  x86 does not reorder
stores with stores, and the tail is stored with release semantics (``_atomics``), so a
consumer that sees the new tail sees the slots.  Pairs with: ``available`` (acquire load
of ``prod_tail``) before ``take``.

*Consumer side*: ``take(n, hand)`` copies the next ``n`` indices into ``hand`` -- the
worker's in-hand buffer, itself in shared memory so that a supervisor can see what a
crashed worker held -- records ``n`` in the header's ``hand_n`` word, and then advances
``cons_tail``, which frees the slots at once, as ``ptr_ring_consume_batched`` does: the
ring's capacity is exactly ``qsize`` however long the worker keeps its batch.  The
consumer's loads of the slots precede its store of ``cons_tail`` (x86 never lets a store
pass an earlier load), which pairs with the producer's acquire load of ``cons_tail``
before it overwrites them.

Sleep and wake-up (no wake-up is ever lost)
--------------------------------------------
The kernel's kthread does ``set_current_state(TASK_INTERRUPTIBLE)``, re-checks the ring
("Recheck to avoid lost wake-up") and only then ``schedule()``; the producer's
``wake_up_process`` after the flush pairs with it.  Our version, with a ``sleeping`` flag
and a futex word ``wake_seq``:

consumer (``wait``)::

    s = wake_seq                                 # (1)
    sleeping = 1 ; FENCE ; t = prod_tail         # (2) store, full fence, load
    if t != cons_tail or stop: sleeping = 0; return     # work arrived: don't sleep
    futex_wait(wake_seq, s)                      # (3) sleeps only if wake_seq == s
    sleeping = 0

producer (end of ``produce``)::

    prod_tail = t' ; FENCE ; f = sleeping        # (4) store, full fence, load
    if f: wake_seq += 1 ; futex_wake(wake_seq)   # (5)

Why it is safe: (2) and (4) are the two halves of Dekker's handshake.  Each side stores,
fences, then loads the other side's word; with the fences, at least one of them sees the
other's store (without the fence, x86's store buffer lets both loads read the old values:
the classic lost wake-up).  If the consumer sees ``t'`` it does not sleep.  Otherwise
the producer sees ``sleeping == 1`` and does (5).  The consumer read ``s`` at (1), before
its store at (2), which precedes the producer's load at (4) and so its increment at (5):
the increment changes ``wake_seq`` away from ``s``.  ``futex_wait`` compares the word and
queues the sleeper atomically with respect to ``futex_wake``, so either it sees the
changed word and returns at once, or it is already queued and the wake reaches it.
The same argument covers ``request_stop`` (stop flag stored, fence, unconditional wake).

The consumer also sleeps with a timeout as a safety net; the worker reports a timeout
that finds work waiting with no wake-up on its way (which would betray a lost wake-up),
and the tests assert there are none.  Waking costs a syscall and ~15 us of the sleeper's
latency, so producers wake only a consumer that announced it sleeps, and only once per
destination per poll (``produce_nowake`` + ``BulkQueues.flush_all``), never per frame.

Waiting for room (lossless producers; no wake-up is lost either)
----------------------------------------------------------------
A producer in lossless mode (bulkq.py) that found the ring full sleeps until the
consumer frees slots, rather than polling with growing sleeps (which overslept a
worker's batch by up to 1 ms).  The mirror image of the protocol above, with a flag
``room_wait`` on the producers' cache line and a futex word ``room_seq`` on the
consumer's:

producer (``wait_room``)::

    s = room_seq                                  # (6)
    room_wait = 1 ; FENCE ; c = cons_tail         # (7) store, full fence, load
    if prod_tail - c < capacity or dead: return   #     room (or no point): don't sleep
    futex_wait(room_seq, s, timeout)              # (8)

consumer (end of ``take``), and anyone else who frees slots or kills the ring::

    cons_tail = c' ; FENCE ; f = room_wait        # (9)  store, full fence, load
    if f: room_wait = 0 ; room_seq += 1 ; futex_wake(room_seq, all)      # (10)
    kill: dead = 1 ; room_wait = 0 ; room_seq += 1 ; futex_wake(all)     # (11)

Why no wake-up is lost: (7) and (9) are Dekker's handshake again, so either the
producer sees ``c'`` (room: it does not sleep) or the consumer's load at (9) reads the
producer's ``room_wait = 1`` or a store after it.  The stores after it are other
producers' 1s (the consumer wakes all, so it wakes ours too) or a consumer's clear at
(10).  A clear that overwrote our 1 is followed by its bump, and our load of ``s`` at
(6) cannot have seen that bump: x86 orders our load (6) before our store (7), and the
consumer's clear before its bump (a locked instruction), so seeing the bump would put
the clear before our store in the word's order -- not after it.  Either way a bump
comes after our (6), so ``futex_wait`` at (8) returns at once (the word moved) or is
queued before the wake: it is woken.  Several producers may wait at once; the
consumer's wake reaches all of them, and each retries under the producer lock.  The
same argument covers (11) with ``dead`` in place of ``cons_tail``: kill stores dead
before its bump, so a producer that slept (it read dead == 0 after its ``s``) is woken.

Nothing is counted twice or lost by it: waiting publishes nothing; the producer
publishes only under the lock, after it wakes, what fits then.  No hang: the producer
sleeps with a timeout, in slices, re-checking ``dead`` and its own deadline
(``BulkQueues._wait_and_produce``); a worker that dies before (10) leaves the flag set,
and its replacement's first ``take`` wakes the producer (or the slice ends first).
A flag left set by a producer that gave up or died costs the consumer one needless
wake at most (it clears the flag).  The cost to the consumer when nobody waits is
the fence of (9) and one load of a word it shares a line with ``prod_tail``, which it
reads anyway: nothing measurable.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from .. import _atomics as at
from ..abi import CPUMAP_QSIZE_MAX
from .pids import pid_alive

# Byte offsets inside a ring header (RING_HEADER_BYTES per ring).  Words written by
# different parties sit on different cache lines.
OFF_PROD_LOCK = 0  # u32: 0 free, else the owner thread's tid      (producers)
OFF_PROD_TAIL = 8  # u64: frames ever published                    (producers)
OFF_ROOM_WAIT = 16  # u32: a producer announced it sleeps for room   (producers)
OFF_CONS_TAIL = 64  # u64: frames ever taken by the consumer        (consumer)
OFF_HAND_N = 72  # u64: frames in the consumer's hand buffer         (consumer)
OFF_ROOM_SEQ = 80  # u32: futex word, bumped to wake room waiters    (consumer)
OFF_SLEEPING = 128  # u32: consumer announced it is about to sleep   (consumer)
OFF_WAKE_SEQ = 192  # u32: futex word, bumped to wake the consumer   (producers)
OFF_STOP = 256  # u32: stop requested                                (controller)
OFF_CAPACITY = 260  # u32: qsize                                     (controller)
OFF_DEAD = 264  # u32: retired by force: producers publish nothing  (controller)
RING_HEADER_BYTES = 320

MAX_CAPACITY = CPUMAP_QSIZE_MAX  # the kernel's sanity limit on qsize

# What wait() and wait_room() return: _atomics.futex_wait's codes (0-3), and one of ours.
WAIT_NOT_SLEPT = -1  # work or stop seen on the re-check: did not sleep
WAIT_WOKEN = 0
WAIT_CHANGED = 1  # wake_seq moved before we slept (EAGAIN)
WAIT_TIMEOUT = 2  # (ETIMEDOUT)
WAIT_SIGNAL = 3  # a signal handler ran (EINTR): callers treat it as a wake-up and look again

_SPINS_BEFORE_YIELD = 64
_WAKE_ALL = 2**31 - 1  # futex_wake's "every waiter"


class Ring:
    """One ring over a header at ``hdr_addr`` and a uint32 slot array ``slots``.

    The controller lays the ring out with :meth:`init` before any producer or consumer
    can reach it (the map publishes the slot only afterwards).
    """

    __slots__ = (
        "_cons",
        "_hand_n",
        "_lock",
        "_prod",
        "_room_seq",
        "_room_wait",
        "_sleeping",
        "_stop",
        "_wake",
        "capacity",
        "hdr",
        "slots",
    )

    def __init__(self, hdr_addr: int, slots: np.ndarray) -> None:
        self.hdr = hdr_addr
        self.slots = slots
        self._lock = hdr_addr + OFF_PROD_LOCK
        self._prod = hdr_addr + OFF_PROD_TAIL
        self._cons = hdr_addr + OFF_CONS_TAIL
        self._hand_n = hdr_addr + OFF_HAND_N
        self._room_wait = hdr_addr + OFF_ROOM_WAIT
        self._room_seq = hdr_addr + OFF_ROOM_SEQ
        self._sleeping = hdr_addr + OFF_SLEEPING
        self._wake = hdr_addr + OFF_WAKE_SEQ
        self._stop = hdr_addr + OFF_STOP
        self.capacity = at.load_u32(hdr_addr + OFF_CAPACITY)

    # -- set-up (controller, before publication) ---------------------------------------
    def init(self, capacity: int) -> None:
        """Reset the ring to empty with ``capacity`` slots.  Only while nobody uses it."""
        if not 1 <= capacity <= min(MAX_CAPACITY, len(self.slots)):
            raise ValueError(f"ring capacity {capacity} out of range")
        for off in (OFF_PROD_TAIL, OFF_CONS_TAIL, OFF_HAND_N):
            at.store_u64(self.hdr + off, 0)
        for off in (
            OFF_PROD_LOCK,
            OFF_ROOM_WAIT,
            OFF_ROOM_SEQ,
            OFF_SLEEPING,
            OFF_WAKE_SEQ,
            OFF_STOP,
            OFF_DEAD,
        ):
            at.store_u32(self.hdr + off, 0)
        at.store_u32(self.hdr + OFF_CAPACITY, capacity)
        self.capacity = capacity
        at.fence()

    # -- producer side ------------------------------------------------------------------
    def _lock_producers(self, deadline: float | None = None) -> bool:
        """Take the producer lock; False only if ``deadline`` (monotonic) passed first."""
        me = threading.get_native_id()
        if at.cas_u32(self._lock, 0, me):
            return True
        spins = 0
        while True:
            owner = at.load_u32(self._lock)
            if owner == 0:
                if at.cas_u32(self._lock, 0, me):
                    return True
            elif owner == me:
                # Ours: an acquisition of this thread was interrupted (KeyboardInterrupt)
                # between its CAS and its critical section; nothing was written under it.
                return True
            elif spins % 4096 == 4095 and not pid_alive(owner):
                # The owner died inside the critical section.  Safe to take over: it
                # could only have written unpublished slots (see the module docstring).
                at.cas_u32(self._lock, owner, 0)
            spins += 1
            if spins > _SPINS_BEFORE_YIELD:
                if deadline is not None and spins % 256 == 0 and time.monotonic() > deadline:
                    return False
                os.sched_yield()

    def produce(self, idx: np.ndarray) -> int:
        """Publish as many of ``idx`` as fit; returns how many (the rest are the caller's
        to drop: the kernel's ``__ptr_ring_produce`` failing with -ENOSPC).  Wakes the
        consumer if it announced it sleeps."""
        k, sleeping = self.produce_nowake(idx)
        if sleeping:
            self.wake()
        return k

    def produce_nowake(self, idx: np.ndarray) -> tuple[int, bool]:
        """Like :meth:`produce`, but leaves the wake-up to the caller: returns (how many
        were published, whether the consumer announced it sleeps).  The caller must call
        :meth:`wake` if told so -- later is fine (the consumer sleeps until then, no
        wake-up is lost): the kernel too wakes the kthread once at the end of the poll
        (``__cpu_map_flush``), not per bulk."""
        n = len(idx)
        if n == 0:
            return 0, False
        # Read from shared memory, not cached: this producer may have been forked before
        # the slot was (re)initialised.  The map publishes the slot after init (a store
        # ordered after these), and we found the slot through that store.
        cap = at.load_u32(self.hdr + OFF_CAPACITY)
        self._lock_producers()
        try:
            if at.load_u32(self.hdr + OFF_DEAD):
                return 0, False  # retired by force: the caller drops (and counts) them
            tail = at.load_u64(self._prod)
            head = at.load_u64(self._cons)
            k = min(n, cap - (tail - head))
            sleeping = 0
            if k > 0:
                s = tail % cap
                first = min(k, cap - s)
                self.slots[s : s + first] = idx[:first]
                if k > first:
                    self.slots[: k - first] = idx[first:k]
                # Publish, full fence, then look for a sleeping consumer: see (4).
                sleeping = at.store_fence_load(self._prod, tail + k, self._sleeping)
            else:
                k = 0
        finally:
            at.store_u32(self._lock, 0)
        return k, bool(sleeping)

    def unlock_if_mine(self) -> None:
        """Let go of the producer lock if this thread holds it: after an interrupt that
        may have come between the lock's CAS and the critical section's ``try``
        (otherwise the lock would stay held by a live thread, and other producers would
        spin on it)."""
        me = threading.get_native_id()
        at.cas_u32(self._lock, me, 0)

    def wake(self) -> None:
        """Wake the consumer: (5) in the module docstring."""
        at.fetch_add_u32(self._wake, 1)
        at.futex_wake(self._wake, 1)

    def wait_room(self, timeout: float) -> int:
        """Sleep until the ring has room (the consumer took frames), the ring is killed,
        or ``timeout`` seconds pass; returns one of the WAIT_* codes.  For a producer
        whose last :meth:`produce` did not publish everything (lossless mode): steps
        (6)-(8) of the module docstring.  Any producer may call it, several at once."""
        seq = at.load_u32(self._room_seq)  # (6)
        cons = at.store32_fence_load64(self._room_wait, 1, self._cons)  # (7)
        cap = at.load_u32(self.hdr + OFF_CAPACITY)
        if at.load_u64(self._prod) - cons < cap or at.load_u32(self.hdr + OFF_DEAD):
            return WAIT_NOT_SLEPT  # the flag stays: at worst one needless wake-up
        return at.futex_wait(self._room_seq, seq, timeout)  # (8)

    def has_room(self) -> bool:
        """Whether a producer would publish at least one frame now (or the ring is dead)."""
        cons = at.load_u64(self._cons)
        cap = at.load_u32(self.hdr + OFF_CAPACITY)
        return at.load_u64(self._prod) - cons < cap or bool(at.load_u32(self.hdr + OFF_DEAD))

    def room_wake_coming(self, within: float) -> bool:
        """Whether a consumer clears ``room_wait`` within ``within`` seconds -- i.e. a
        wake (10) was on its way (for telling a late wake-up from a lost one)."""
        deadline = time.monotonic() + within
        while at.load_u32(self._room_wait):
            if time.monotonic() > deadline:
                return False
            os.sched_yield()
        return True

    def wake_producers(self) -> None:
        """Wake every producer sleeping in :meth:`wait_room`: (10) in the module
        docstring.  The consumer calls it when it frees slots and finds the flag."""
        at.store_u32(self._room_wait, 0)
        at.fetch_add_u32(self._room_seq, 1)
        at.futex_wake(self._room_seq, _WAKE_ALL)

    # -- consumer side (one process only) ---------------------------------------------
    def available(self) -> int:
        """Frames published and not yet taken."""
        return at.load_u64(self._prod) - at.load_u64(self._cons)

    def take(
        self, n: int, hand: np.ndarray, tags: np.ndarray | None = None, tag: int = 0
    ) -> np.ndarray:
        """Move the next ``n`` indices (n <= available()) into ``hand[:n]`` and free their
        slots; returns ``hand[:n]``.  With ``tags``, ``tags[frame] = tag`` marks each frame
        as in hand.  Order: hand written, frames marked, ``hand_n`` stored, then
        ``cons_tail`` -- a supervisor relies on it (worker.py)."""
        pos = at.load_u64(self._cons)
        cap = self.capacity
        s = pos % cap
        first = min(n, cap - s)
        hand[:first] = self.slots[s : s + first]
        if first < n:
            hand[first:n] = self.slots[: n - first]
        if tags is not None:
            tags[hand[:n]] = tag
        at.store_u64(self._hand_n, n)
        # Free the slots, full fence, then look for a producer waiting for room: (9).
        if at.store_fence_load(self._cons, pos + n, self._room_wait):
            self.wake_producers()
        return hand[:n]

    def drop_hand(self) -> None:
        """The consumer is done with its hand buffer (every frame in it released)."""
        at.store_u64(self._hand_n, 0)

    def hand_count(self) -> int:
        return at.load_u64(self._hand_n)

    def wait(self, timeout: float) -> int:
        """Sleep until a producer publishes or a stop is requested (at most ``timeout``
        seconds).  Returns one of the WAIT_* codes.  Steps (1)-(3) of the docstring."""
        seq = at.load_u32(self._wake)  # (1)
        tail = at.store32_fence_load64(self._sleeping, 1, self._prod)  # (2)
        if tail != at.load_u64(self._cons) or at.load_u32(self._stop):
            at.store_u32(self._sleeping, 0)
            return WAIT_NOT_SLEPT
        rc = at.futex_wait(self._wake, seq, timeout)  # (3)
        at.store_u32(self._sleeping, 0)
        return rc

    # -- controller ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the consumer to exit once the ring is empty, and wake it."""
        at.store_u32(self._stop, 1)
        at.fence()
        self.wake()

    def kill(self, deadline: float | None = None) -> bool:
        """Refuse every later publication (a forced retirement, a broken entry: a producer
        may still try).  Taken under the producer lock, so no publication is half done
        when it returns True: the ring may then be emptied for good.

        With a ``deadline``: a producer that holds the lock and does not let go (stopped,
        hung) is waited for only until then; the ring is marked dead anyway and False
        returned -- that producer may still publish, so the slot must not be reused."""
        locked = self._lock_producers(deadline)
        try:
            at.store_u32(self.hdr + OFF_DEAD, 1)
        finally:
            if locked:
                at.store_u32(self._lock, 0)
        # A producer waiting for room must see the ring dead now, not at its timeout:
        # dead is stored before the bump (11), so one that slept through is woken.
        self.wake_producers()
        return locked

    def dead(self) -> bool:
        """Whether the ring refuses publications (killed)."""
        return bool(at.load_u32(self.hdr + OFF_DEAD))

    def stop_requested(self) -> bool:
        return bool(at.load_u32(self._stop))

    # -- inspection ------------------------------------------------------------------------
    def positions(self) -> tuple[int, int]:
        """(cons_tail, prod_tail)."""
        return at.load_u64(self._cons), at.load_u64(self._prod)

    def contents(self, lo: int, hi: int) -> np.ndarray:
        """Indices at positions [lo, hi) (for recovery after a crash; hi - lo <= capacity)."""
        # From shared memory: this object may predate the slot's latest init (a fork).
        cap = at.load_u32(self.hdr + OFF_CAPACITY)
        pos = np.arange(lo, hi, dtype=np.uint64) % np.uint64(cap)
        return self.slots[pos.astype(np.int64)].copy()

    def reset_consumer(self, pos: int) -> None:
        """Set the consumer position to ``pos`` and empty the hand (a supervisor, after
        its consumer died)."""
        at.store_u64(self._hand_n, 0)
        at.store_u64(self._cons, pos)
        at.fence()
        self.wake_producers()  # the slots up to pos are free: whoever waited may go on

    def __len__(self) -> int:
        """Frames in the ring now, as any process may read it.  The consumer's tail is
        read first: both only grow, so the difference can only overstate (never below
        zero, which ``len`` refuses); it is clamped to the capacity."""
        cons = at.load_u64(self._cons)
        prod = at.load_u64(self._prod)
        return max(0, min(prod - cons, at.load_u32(self.hdr + OFF_CAPACITY)))
