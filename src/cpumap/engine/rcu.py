"""Grace periods over RX producers: the RCU part of entry replacement.

The kernel replaces a cpumap entry with ``xchg`` and frees the old one from ``call_rcu``:
once every CPU has passed through a quiescent state, no XDP program can still hold the
old entry, so no new frame can be queued to it.  Our "CPUs" are the RX producers, and a
producer's read-side critical section is one RX batch (the driver's poll): it looks
entries up, stages frames, flushes them, and only then leaves the section.

Theory of operation
-------------------
Each producer slot ``p`` has a sequence word ``seq[p]`` on its own cache line, odd while
the producer is inside an RX batch, even outside.

producer::

    read_lock:    seq += 1 (odd)   -- a locked RMW: a full fence on x86 and in C11
    ... look up map entries, stage, flush (all staged frames published) ...
    read_unlock:  seq += 1 (even)  -- also orders the flushes before it

updater (the controlling process)::

    table[key] = new_slot ; FENCE       -- unpublish the old entry
    snap = seq[:]                        -- snapshot()
    ... later, elapsed(snap): for every p, snap[p] even, or seq[p] != snap[p], or p dead

Why it is safe: the updater stores the table then loads ``seq[p]``; the producer stores
``seq[p]`` (odd) then loads the table.  Both have a full fence between store and load
(Dekker), so they cannot both read the old value.  If the snapshot shows ``seq[p]`` even,
any batch of ``p`` that is already running started after the snapshot's load, so its
table load sees the new value: it cannot find the old entry.  If the snapshot shows it
odd, the batch in progress may hold the old entry; once ``seq[p]`` has changed that batch
has ended, and ``read_unlock`` follows its last flush, so every frame it staged for the
old entry is already in the old ring.  When every producer is accounted for, the grace
period has elapsed: the old ring will receive nothing more, and its worker may be told
to drain and stop.

Producers may live in several processes, or be threads of one.  A producer that died
(its pid is gone) can no longer hold anything: it counts as quiescent.
"""

from __future__ import annotations

import os

import numpy as np

from .. import _atomics as at
from ..shm import CACHE_LINE, Layout, Segment
from .pids import pid_alive

_WORDS_PER_LINE = CACHE_LINE // 8


def add_registry(layout: Layout, producers: int) -> None:
    """Reserve the registry of ``producers`` slots in ``layout``."""
    layout.add("rcu_seq", np.uint64, (producers, _WORDS_PER_LINE))
    layout.add("rcu_pid", np.uint32, (producers, CACHE_LINE // 4))


class ProducerRegistry:
    """The producers' sequence words and owners, in shared memory."""

    def __init__(self, segment: Segment, producers: int, claimable: int | None = None) -> None:
        self.producers = producers
        # Slots past ``claimable`` are reserved for workers (second stages), claimed by index.
        self.claimable = producers if claimable is None else claimable
        self._seq = segment.view("rcu_seq")
        self._seq_addr = [segment.address("rcu_seq", p * CACHE_LINE) for p in range(producers)]
        self._pid_addr = [segment.address("rcu_pid", p * CACHE_LINE) for p in range(producers)]

    # -- claiming a producer slot ---------------------------------------------------------
    def claim(self, p: int | None = None) -> int:
        """Claim producer slot ``p`` (or any free one) for this process; returns it.

        A slot whose owner died is free again.  Raises ``RuntimeError`` if none is free.
        """
        me = os.getpid()
        for q in range(self.claimable) if p is None else (p,):
            owner = at.load_u32(self._pid_addr[q])
            if owner and not pid_alive(owner):
                at.cas_u32(self._pid_addr[q], owner, 0)
            if at.cas_u32(self._pid_addr[q], 0, me):
                seq = at.load_u64(self._seq_addr[q])
                if seq & 1:  # its previous owner died inside a batch
                    at.store_u64(self._seq_addr[q], seq + 1)
                return q
        which = "any producer slot" if p is None else f"producer slot {p}"
        raise RuntimeError(f"{which} is in use: create the map with more producers (producers=N)")

    def unclaim(self, p: int) -> None:
        at.store_u32(self._pid_addr[p], 0)

    def owner(self, p: int) -> int:
        return at.load_u32(self._pid_addr[p])

    # -- read side (producers) --------------------------------------------------------------
    def read_lock(self, p: int) -> None:
        """Enter an RX batch.  A full fence orders this before the batch's table loads."""
        at.fetch_add_u64(self._seq_addr[p], 1)

    def read_unlock(self, p: int) -> None:
        """Leave an RX batch (a quiescent state): every flush of the batch is before it."""
        at.fetch_add_u64(self._seq_addr[p], 1)

    # -- update side (controller) ------------------------------------------------------------
    def snapshot(self) -> np.ndarray:
        """Start a grace period: call after unpublishing (the fence orders the two)."""
        at.fence()
        return self._seq[:, 0].copy()

    def elapsed(self, snap: np.ndarray) -> bool:
        """True once every producer has been quiescent since ``snap`` was taken."""
        busy = np.flatnonzero(snap & 1)
        if len(busy) == 0:
            return True
        cur = self._seq[busy, 0]
        for p in busy[cur == snap[busy]]:
            owner = at.load_u32(self._pid_addr[p])
            if owner and pid_alive(owner):
                return False
        return True
