"""The map's shared state: one control segment that every process of the map works on.

A :class:`MapShared` is the seam between the map (the controller) and its producers,
workers and second stages: each is handed it, and finds here -- never in the map object --
the table, the rings, the counters and the event logs.  It is created, with everything it
will ever hold, before any of those processes is forked, and inherited by them.

Layout of the segment (``shm.Layout``; every array starts on a cache line)::

    table[max_entries]           int32   key -> slot of its live entry, -1 if empty
    slot_info[n_slots, 16]       uint32  per slot: key, cpu, qsize, worker pid
    ring_hdr[n_slots, 512]       uint8   each slot's ring header (ring.py)
    ring_slots[n_slots, 16384]   uint32  each slot's ring: preallocated at the kernel's
                                         limit, sparse until used
    hand[n_slots, batch_size]    uint32  each slot's worker's hand buffer (worker.py)
    rcu_seq, rcu_pid             the producer registry (rcu.py): RX producers first, then
                                 one producer slot per ring slot (its worker's second stage)
    heartbeat[n_slots, 8]        uint64  per slot: its worker's last progress (monotonic ns)
    map_state[16]                uint32  [0]: 1 once the map is closed (producers refuse)
    prec, enq, krec, events      the counters (counters.py)

A *slot* is a ring with its worker's hand and record.  An entry (entry.py) occupies one
slot from its creation to its retirement; there are more slots than CPUs, because a
replaced entry keeps its slot while it drains.

Who writes what: the table, ``slot_info`` and ``map_state`` only the controller; a ring
as ring.py says; a producer's counters only that producer; a slot's record only its worker.
"""

from __future__ import annotations

import numpy as np

from ..shm import Layout, Segment
from .counters import EventLog, KthreadRecord, ProducerRecord, add_counters
from .frame_pool import MAX_PUBLISHERS
from .rcu import ProducerRegistry, add_registry
from .ring import MAX_CAPACITY, Ring

_RING_HDR_STRIDE = 512
_SLOT_INFO_WORDS = 16
_INFO_KEY, _INFO_CPU, _INFO_QSIZE, _INFO_PID = 0, 1, 2, 3


class MapShared:
    """The control segment of one map (see the module docstring)."""

    def __init__(
        self,
        map_id: int,
        max_entries: int,
        *,
        producers: int,
        n_slots: int,
        batch_size: int,
        trace_events: int,
    ) -> None:
        if producers + n_slots > MAX_PUBLISHERS:
            raise ValueError(f"at most {MAX_PUBLISHERS - n_slots} producers, not {producers}")
        self.map_id = map_id
        self.max_entries = max_entries
        self.producers = producers
        self.n_slots = n_slots
        self.trace_events = trace_events
        layout = Layout("map")
        layout.add("table", np.int32, max_entries)
        layout.add("slot_info", np.uint32, (n_slots, _SLOT_INFO_WORDS))
        layout.add("ring_hdr", np.uint8, (n_slots, _RING_HDR_STRIDE))
        layout.add("ring_slots", np.uint32, (n_slots, MAX_CAPACITY), align=4096)
        layout.add("hand", np.uint32, (n_slots, batch_size))
        layout.add("heartbeat", np.uint64, (n_slots, 8))
        layout.add("map_state", np.uint32, 16)
        add_registry(layout, producers + n_slots)
        add_counters(layout, producers, n_slots, trace_events)
        self._seg: Segment = layout.create()
        seg = self._seg
        self._table = seg.view("table")
        self._table[:] = -1
        self._info = seg.view("slot_info")
        self._hands = seg.view("hand")
        self._heartbeat = seg.view("heartbeat")
        self._state = seg.view("map_state")
        self._enq = seg.view("enq")
        self.registry = ProducerRegistry(seg, producers + n_slots, producers)
        ring_slots = seg.view("ring_slots")
        self._rings = [
            Ring(seg.address("ring_hdr", s * _RING_HDR_STRIDE), ring_slots[s])
            for s in range(n_slots)
        ]
        self._records = [KthreadRecord(seg, s) for s in range(n_slots)]
        self._producer_records = [ProducerRecord(seg, p) for p in range(producers)]

    # -- the table: key -> slot (read by every producer inside its read-side section) -------
    def slot_of(self, key: int) -> int:
        """The slot of the live entry at ``key``; -1 if empty or out of range."""
        return int(self._table[key]) if 0 <= key < self.max_entries else -1

    def slots_of(self, keys: np.ndarray, largest: int | None = None) -> np.ndarray:
        """:meth:`slot_of` for every key (uint32 keys; int32 slots, -1 where none).
        ``largest``: the largest key, when the caller knows it."""
        if largest is None:
            largest = int(keys.max()) if len(keys) else 0
        if largest < self.max_entries:
            return self._table[keys]
        slots = np.full(len(keys), -1, dtype=np.int32)
        inrange = keys < self.max_entries
        slots[inrange] = self._table[keys[inrange]]
        return slots

    def has_entry(self, key: int) -> bool:
        return self.slot_of(key) >= 0

    def publish(self, key: int, slot: int) -> None:
        """Point ``key`` at ``slot`` (-1: empty).  The controller only; an RX batch that
        starts after this store cannot find the old slot (rcu.py argues it)."""
        self._table[key] = slot

    # -- slots: a ring, its worker's hand and record ----------------------------------------
    def ring(self, slot: int) -> Ring:
        return self._rings[slot]

    def hand(self, slot: int) -> np.ndarray:
        """The slot's worker's hand buffer (``batch_size`` uint32 in shared memory)."""
        return self._hands[slot]

    def kthread_record(self, slot: int) -> KthreadRecord:
        return self._records[slot]

    def kthread_log(self, slot: int) -> EventLog:
        return EventLog(
            self._seg.view("kth_ev")[slot],
            self._seg.address("kth_ev_pos", slot * 64),
            self.trace_events > 0,
        )

    def enqueue_totals(self, slot: int) -> np.ndarray:
        """The enqueue counters of ``slot``, summed over producers."""
        return self._enq[:, slot].sum(axis=0)

    def prepare_slot(self, slot: int, key: int, qsize: int) -> None:
        """Make ``slot`` a fresh entry's, for ``key`` with a ring of ``qsize`` (before any
        producer can find it: the table is stored afterwards)."""
        self._rings[slot].init(qsize)
        self._records[slot].reset()
        self._heartbeat[slot, 0] = 0
        self._enq[:, slot] = 0
        self.kthread_log(slot).reset()
        info = self._info[slot]
        info[:] = 0
        info[_INFO_KEY], info[_INFO_CPU], info[_INFO_QSIZE] = key, key, qsize

    def heartbeat_address(self, slot: int) -> int:
        """The word ``slot``'s worker stores its last progress in (monotonic ns)."""
        return self._seg.address("heartbeat", slot * 64)

    def heartbeat(self, slot: int) -> int:
        """``slot``'s worker's last progress (``time.monotonic_ns()``; 0: none yet)."""
        return int(self._heartbeat[slot, 0])

    def set_worker_pid(self, slot: int, pid: int) -> None:
        self._info[slot, _INFO_PID] = pid

    def release_slot(self, slot: int) -> None:
        """The slot's entry retired: forget it."""
        self._info[slot] = 0

    def slot_cpu(self, slot: int) -> int:
        return int(self._info[slot, _INFO_CPU])

    def second_stage_producer(self, slot: int) -> int:
        """The producer slot (rcu.py) of ``slot``'s worker, for its second stage."""
        return self.producers + slot

    # -- the map's life -------------------------------------------------------------------
    def mark_closed(self) -> None:
        """The map is closed: every producer refuses its next poll (any process)."""
        self._state[0] = 1

    @property
    def closed(self) -> bool:
        """Whether the map was closed (a producer checks it at the start of every poll:
        one load; a poll already past it finishes, and its frames are counted)."""
        return bool(self._state[0])

    # -- producers -----------------------------------------------------------------------
    def producer_record(self, p: int) -> ProducerRecord:
        """Producer ``p``'s counters (``counters.ProducerCounter``), published whole."""
        return self._producer_records[p]

    def rings(self) -> list[Ring]:
        """Every slot's ring (recovery looks for frames in all of them: ownership.py)."""
        return self._rings

    def enqueue_counters(self, p: int) -> np.ndarray:
        """Producer ``p``'s enqueue counters per slot (``counters.EnqueueCounter``), a view."""
        return self._enq[p]

    def producer_totals(self) -> np.ndarray:
        """Every producer's counters, summed."""
        return np.sum([r.read() for r in self._producer_records], axis=0, dtype=np.int64)

    def enqueue_log(self, p: int) -> EventLog:
        return EventLog(
            self._seg.view("enq_ev")[p],
            self._seg.address("enq_ev_pos", p * 64),
            self.trace_events > 0,
        )

    def close(self) -> None:
        """Drop this process's mapping (the memory goes with the last process's)."""
        self._seg.close()
