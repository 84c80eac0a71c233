"""The CPU table: the CPUs a steering program may choose, changeable while traffic flows.

xdp-tools' ``xdp-bench redirect-cpu`` keeps two BPF array maps beside its cpumap:
``cpus_available`` (table index -> CPU) and ``cpus_count`` (how many indices are in use).
The XDP program maps each frame to an index (``hash % count``, a protocol class, a
round-robin counter...) and redirects to ``cpus_available[index]``.  Userspace changes
the maps while traffic flows, and the next frames go elsewhere.  :class:`CpuTable` is
that pair of maps: a small table in shared memory, written by a controller and read by
every RX producer, in any process forked after it was made.

Theory of operation: a sequence lock
------------------------------------
One segment (``shm.Layout``: memfd-backed, inherited by forked processes, gone when the
last one exits) holds ``seq`` (u32, on its own cache line), ``count`` (u32) and
``cpus[capacity]`` (u32).  ``seq`` is even while the table is stable, odd while a writer
is changing it; it grows by 2 per change, so ``seq // 2`` is the table's *generation*.

writer (``set``)::

    CAS seq: s -> s + 1, s even      -- the writers' lock; a locked RMW is a full fence
    count = n; cpus[:n] = new        -- plain stores
    store seq = s + 2 (release)      -- orders the stores above before it

reader (``read``, once per RX batch)::

    s1 = load seq (acquire)
    if s1 == the generation cached here: return the cached snapshot      -- the usual case
    if s1 odd: a writer is inside; spin
    copy count and cpus[:count]; FENCE
    s2 = load seq; if s2 != s1: retry (a writer came and went during the copy)

Why a reader never sees a torn table: the copy is kept only if ``seq`` was the same even
value before and after it.  An even ``s1`` means no writer was inside when it was loaded;
a writer that entered afterwards made ``seq`` odd *before* its first data store (the CAS
is a full fence), and leaves it at ``s1 + 2`` or more, never ``s1`` again (until 2**31
changes wrap it: no reader is preempted that long); so if any of its stores could have
reached the copy, ``s2 != s1``.  The release store of ``s + 2`` keeps the data stores
before it, the fence keeps the copy's loads before the load of ``s2``.  The usual case
costs one atomic load per RX batch: a snapshot read under generation ``g`` stays valid
for as long as ``seq`` reads ``2g``.  (The naive alternative -- read ``count``, then
``cpus`` -- can pair a new count with old CPUs: a shrinking table then sends frames to a
stale index.)

Writers may be threads or processes; the CAS serialises them.  A writer killed between
its CAS and its release store would leave ``seq`` odd forever: readers then give up after
:data:`READ_TIMEOUT` seconds with :class:`BrokenTableError` (a program that raises ends
as XDP_ABORTED, counted) rather than spin for ever.

Entries are CPU numbers (map keys); nothing here checks them against a map: a program
that finds a CPU it cannot use (>= its map's max_entries) aborts the frame, as the
sample does with its sentinel ``n_cpus``.  Duplicates are allowed and weight a CPU:
``[0, 0, 1]`` gives CPU 0 two thirds of the hash space.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .. import _atomics as at
from ..closing import Closing
from ..errors import Error
from ..shm import Layout, Segment

U32_MAX = 0xFFFFFFFF
READ_TIMEOUT = 1.0  # seconds a reader waits for a writer to finish before giving up
_SPINS_BEFORE_YIELD = 64


class BrokenTableError(Error, RuntimeError):
    """The table stayed mid-update longer than :data:`READ_TIMEOUT`: its writer died."""


@dataclass(frozen=True, slots=True)
class TableSnapshot:
    """One consistent version of a :class:`CpuTable`.

    Attributes:
        generation: how many times the table had been set (0: never).
        cpus: the CPUs, index order.
        array: the same as a read-only ``uint32`` array (for vectorized programs).
    """

    generation: int
    cpus: tuple[int, ...]
    array: np.ndarray

    def __len__(self) -> int:
        return len(self.cpus)


class CpuTable(Closing):
    """``cpus_available`` + ``cpus_count`` in shared memory (see the module docstring).

    ``capacity`` is the most CPUs the table can hold; ``cpus`` its first contents.
    Make it before forking the processes that read it.  Any process may ``set`` it.
    """

    def __init__(self, capacity: int, cpus: Iterable[int] = ()) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, not {capacity!r}")
        self.capacity = capacity
        layout = Layout("cpu-table")
        layout.add("seq", np.uint32, 1)
        layout.add("count", np.uint32, 1)
        layout.add("cpus", np.uint32, capacity)
        self._seg: Segment = layout.create()
        self._seq_addr = self._seg.address("seq")
        self._count = self._seg.view("count")
        self._cpus = self._seg.view("cpus")
        empty = np.zeros(0, np.uint32)
        empty.flags.writeable = False
        # Invariant: _cached.generation * 2 is the seq value it was read under (even).
        self._cached = TableSnapshot(0, (), empty)
        cpus = list(cpus)
        if cpus:
            self.set(cpus)

    # -- writing ---------------------------------------------------------------------------
    def set(self, cpus: Iterable[int]) -> int:
        """Replace the table's contents with ``cpus`` (may be empty: programs then abort
        every frame they would redirect); returns the new generation.

        Concurrency: any thread or process; writers are serialised by the CAS on ``seq``.
        Pairs with: :meth:`read` (data stored between the odd and the even ``seq``).
        """
        new = [_cpu(c) for c in cpus]
        if len(new) > self.capacity:
            raise ValueError(f"{len(new)} CPUs do not fit in a table of capacity {self.capacity}")
        seq = self._lock()
        self._count[0] = len(new)
        self._cpus[: len(new)] = new
        at.store_u32(self._seq_addr, (seq + 2) & U32_MAX)
        return ((seq + 2) & U32_MAX) >> 1

    def _lock(self) -> int:
        """Make ``seq`` odd (we are the writer); returns the even value it had."""
        deadline = None
        spins = 0
        while True:
            seq = at.load_u32(self._seq_addr)
            if not seq & 1 and at.cas_u32(self._seq_addr, seq, seq + 1):
                return seq
            spins += 1
            if spins % _SPINS_BEFORE_YIELD == 0:
                now = time.monotonic()
                deadline = deadline or now + READ_TIMEOUT
                if now > deadline:
                    raise BrokenTableError("CPU table stuck mid-update: its writer died")
                os.sched_yield()

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> TableSnapshot:
        """The current contents, consistent (see the module docstring).  One atomic load
        when the table has not changed since this process last read it.

        Concurrency: any thread or process (the cache is per object, replaced whole).
        """
        seq = at.load_u32(self._seq_addr)
        cached = self._cached
        if seq == cached.generation << 1:
            return cached
        return self._read_slow(seq)

    def _read_slow(self, seq: int) -> TableSnapshot:
        deadline = None
        spins = 0
        while True:
            if not seq & 1:
                n = min(int(self._count[0]), self.capacity)
                arr = self._cpus[:n].copy()
                at.fence()
                if at.load_u32(self._seq_addr) == seq:
                    arr.flags.writeable = False
                    snap = TableSnapshot(seq >> 1, tuple(arr.tolist()), arr)
                    self._cached = snap
                    return snap
            spins += 1
            if spins % _SPINS_BEFORE_YIELD == 0:
                now = time.monotonic()
                deadline = deadline or now + READ_TIMEOUT
                if now > deadline:
                    raise BrokenTableError("CPU table stuck mid-update: its writer died")
                os.sched_yield()
            seq = at.load_u32(self._seq_addr)

    @property
    def generation(self) -> int:
        """How many times the table has been set."""
        return self.read().generation

    @property
    def cpus(self) -> tuple[int, ...]:
        """The current CPUs."""
        return self.read().cpus

    def __len__(self) -> int:
        return len(self.read())

    def __repr__(self) -> str:
        snap = self.read()
        return f"<CpuTable capacity={self.capacity} generation={snap.generation} cpus={snap.cpus}>"

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Drop this process's mapping (idempotent; the memory goes with the last one)."""
        self._seg.close()


def _cpu(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"a CPU must be an int, not {type(value).__name__}")
    v = int(value)
    if not 0 <= v <= U32_MAX:
        raise ValueError(f"CPU {v} is not a u32")
    return v
