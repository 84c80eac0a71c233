"""CpuMap: the map, its entries, and their lifecycle -- BPF_MAP_TYPE_CPUMAP in user space.

A map has ``max_entries`` keys; key ``k`` is CPU ``k``.  Populating a key with a queue
size starts a worker process pinned to that CPU with a ring of that size; RX producers
redirect frames to it with ``redirect_map(cmap, k)``.

Map operations and their errors (the seed's checks, in the seed's order)
------------------------------------------------------------------------
Every invalid operation raises ``OSError`` with the kernel's errno and leaves the map
unchanged.  The asymmetries are the kernel's ABI, kept on purpose (an out-of-range key is
E2BIG for update but EINVAL for delete).

=============  ==========================================  =========
operation      condition (checked in this order)           errno
=============  ==========================================  =========
create         max_entries == 0                            EINVAL
create         max_entries > NR_CPUS (kernel_max + 1)      E2BIG
update         flags > BPF_EXIST                           EINVAL
update         key >= max_entries                          E2BIG
update         flags == BPF_NOEXIST (always: no NOEXIST)   EEXIST
update         qsize > 16384                               EOVERFLOW
update         CPU ``key`` not possible                    ENODEV
update         qsize == 0                                  (= delete)
update         no ring slot or worker could be started     ENOMEM
delete         key >= max_entries                          EINVAL
lookup         key >= max_entries, or entry empty          ENOENT
get_next_key   key None or >= max_entries                  -> 0
get_next_key   key == max_entries - 1                      ENOENT
get_next_key   otherwise                                   -> key + 1
=============  ==========================================  =========

``flags == BPF_EXIST`` on an empty entry succeeds: the kernel does not check.

Lifecycle: replace and delete while traffic flows
--------------------------------------------------
Every update allocates a new entry (new ring slot, new worker) and retires the old one,
like ``__cpu_map_entry_replace``::

    active --(unpublished from the table)--> awaiting grace period
           --(every producer quiescent: rcu.py)--> draining (stop requested, worker woken)
           --(worker drained its ring and exited)--> retired (slot reusable, stats folded)

What is true at each step: once unpublished, a producer that starts an RX batch cannot
find the entry; after the grace period no producer holds it, and (bulkq.py) every frame
any producer staged for it is already in its ring; the worker drains that ring and
exits only when it is empty (worker.py); only then is the slot reused.  Nothing is lost.

``update`` and ``delete`` do not wait for any of this (the kernel defers it with
``call_rcu`` and a work item); the controller advances retirements at every map
operation, in ``stats()``, ``poll()`` and ``close()``.  ``close()`` retires everything and
waits until every worker has exited.

Supervision: a worker found dead while its entry lives (killed, crashed) is recovered
(worker.py's commit protocol: frames it held without a committed outcome are counted
``lost`` and returned) and replaced by a new worker on the same ring.

Map operations run in the controlling process (the one that created the map); RX
producers may run in processes forked from it.
"""

from __future__ import annotations

import errno
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .frame_pool import DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM, TAG_HAND, FramePool
from .rcu import ProducerRegistry, add_registry
from .ring import MAX_CAPACITY, Ring
from .shm import Layout, Segment
from .stats import (
    E_DROPS,
    E_FLUSHES,
    E_PROCESSED,
    K_BATCHES,
    K_BUILD_FAILED,
    K_COMMITTED,
    K_DELIVERED,
    K_DROPS,
    K_FWD_QUEUE_FULL,
    K_HANDLER_DROP,
    K_HANDLER_ERROR,
    K_LATE_WAKEUPS,
    K_PROCESSED,
    K_REDIRECT_OUT,
    K_SCHED,
    K_SLEEPS,
    K_WORDS,
    K_XDP_DROP,
    K_XDP_PASS,
    K_XDP_REDIRECT,
    P_ENQ_PROCESSED,
    P_FLUSHES,
    P_NO_FRAME,
    P_POLLS,
    P_QUEUE_FULL,
    P_REDIRECT_ERR,
    P_RX,
    P_TRUNCATED,
    P_XDP_ABORTED,
    P_XDP_DROP,
    P_XDP_PASS,
    P_XDP_REDIRECT,
    P_XDP_TX,
    EnqueueEvent,
    EntryStats,
    EventLog,
    KthreadEvent,
    KthreadRecord,
    MapStats,
    add_counters,
    iter_enqueue_events,
    iter_kthread_events,
)
from .worker import (
    DEFAULT_BATCH,
    DEFAULT_BUSY_POLL,
    DEFAULT_IDLE_TIMEOUT,
    WorkerInfo,
    WorkerSpec,
    worker_main,
)

if TYPE_CHECKING:
    from .packets import PacketBatch
    from .rx import RxProducer

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
QSIZE_MAX = MAX_CAPACITY  # the kernel's sanity limit
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF

_RING_HDR_STRIDE = 512
_SLOT_INFO_WORDS = 16
_START_TIMEOUT = 60.0  # seconds for a new worker to report ready
_MAX_RESTARTS = 8
# Frames per producer partition: a poll takes a block of 1024, and blocks come back whole,
# so a partition needs room for its rings' contents plus a few blocks in flight.
DEFAULT_FRAMES_PER_PRODUCER = 16384  # replacement workers per entry before it is declared broken

_map_ids = iter(range(1, 1 << 31))


# -- the kernel's CPU limits ----------------------------------------------------------------
@cache
def nr_cpus() -> int:
    """The kernel's NR_CPUS: ``/sys/devices/system/cpu/kernel_max`` + 1."""
    try:
        with open("/sys/devices/system/cpu/kernel_max") as f:
            return int(f.read()) + 1
    except (OSError, ValueError):
        return max(os.cpu_count() or 1, 1)


@cache
def possible_cpus() -> frozenset[int]:
    """CPUs the kernel considers possible (``/sys/devices/system/cpu/possible``)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            return parse_cpu_list(f.read())
    except (OSError, ValueError):
        return frozenset(range(os.cpu_count() or 1))


def parse_cpu_list(text: str) -> frozenset[int]:
    """Parse a kernel CPU list such as ``"0-3,8,10-11"``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(cpus)


def _err(code: int, detail: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {detail}")


def _uint(value: object, bits: int, what: str) -> int:
    """A Python int as the kernel's u32/u64 argument: must fit, no silent wrap."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    v = int(value)
    if not 0 <= v < (1 << bits):
        raise OverflowError(f"{what} {v} does not fit in u{bits}")
    return v


class HandlerSetupError(RuntimeError):
    """The handler's ``setup()`` raised in a new worker; the update was not made."""


@dataclass
class WorkerResult:
    """What a worker reported when it exited."""

    key: int
    cpu: int
    generation: int
    result: Any = None
    error: str | None = None
    exitcode: int | None = None
    outputs: list[Any] = field(default_factory=list)  # second-stage outputs' reports


@dataclass
class _Entry:
    """Controller-side record of one map entry (one update)."""

    key: int
    qsize: int
    slot: int
    generation: int
    ring: Ring
    record: KthreadRecord
    state: str = "active"  # active | grace | draining | retired
    broken: bool = False  # its workers kept dying: frames sent to it are counted lost
    program: Any = None  # the second stage
    proc: Any = None
    conn: Any = None
    pinned: bool = True
    snap: np.ndarray | None = None
    lost: int = 0
    restarts: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)


class CpuMap:
    """A user-space BPF_MAP_TYPE_CPUMAP: keys are CPUs, values are queue sizes, and each
    populated key has a worker pinned to its CPU running ``handler``.

    ``handler`` (the "network stack") is called in the worker with an ``Skb`` per frame,
    or with an ``SkbBatch`` per batch if marked with :func:`cpumap.batch_handler`; it
    returns ``False`` to drop, anything else accepts.  Optional methods ``setup(info)``
    and ``finish() -> result`` run at the worker's start and clean exit; results are
    collected in :attr:`results`.

    Engine options: ``frames`` (pool size), ``frame_size``, ``headroom``, ``producers``
    (RX producer slots, one pool partition each), ``batch_size`` (frames per worker
    batch, the kernel's CPUMAP_BATCH), ``trace_events`` (records kept per tracepoint
    writer; 0 = events off), ``idle_timeout`` (a sleeping worker's safety-net timeout),
    ``busy_poll`` (seconds a worker polls its empty ring before sleeping: fewer wake-ups
    at high rates, a busier CPU at low ones; 0 = sleep at once, as the kthread does).
    """

    def __init__(
        self,
        max_entries: int,
        *,
        handler: Any = None,
        frames: int | None = None,
        frame_size: int = DEFAULT_FRAME_SIZE,
        headroom: int = DEFAULT_HEADROOM,
        producers: int = 1,
        batch_size: int = DEFAULT_BATCH,
        trace_events: int = 0,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        busy_poll: float = DEFAULT_BUSY_POLL,
    ) -> None:
        self._closed = True  # until fully built: close() must be safe on a failed init
        max_entries = _uint(max_entries, 32, "max_entries")
        if max_entries == 0:
            raise _err(errno.EINVAL, "max_entries is 0")
        if max_entries > nr_cpus():
            raise _err(errno.E2BIG, f"max_entries {max_entries} > NR_CPUS {nr_cpus()}")
        if producers < 1:
            raise ValueError(f"producers must be >= 1, not {producers}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if trace_events < 0:
            raise ValueError(f"trace_events must be >= 0, not {trace_events}")
        self.max_entries = max_entries
        self.map_id = next(_map_ids)
        self.handler = handler if handler is not None else _accept_all
        self.producers = producers
        self.batch_size = batch_size
        self.trace_events = trace_events
        self.idle_timeout = idle_timeout
        self.busy_poll = busy_poll
        self.pool = FramePool(
            frames if frames is not None else DEFAULT_FRAMES_PER_PRODUCER * producers,
            frame_size,
            headroom,
            partitions=producers,
        )
        # Live entries are bounded by the possible CPUs; retiring ones need room too.
        live = min(max_entries, len(possible_cpus()))
        self.n_slots = live + max(4, live)
        layout = Layout("map")
        layout.add("table", np.int32, max_entries)
        layout.add("slot_info", np.uint32, (self.n_slots, _SLOT_INFO_WORDS))
        layout.add("ring_hdr", np.uint8, (self.n_slots, _RING_HDR_STRIDE))
        layout.add("ring_slots", np.uint32, (self.n_slots, MAX_CAPACITY), align=4096)
        layout.add("hand", np.uint32, (self.n_slots, batch_size))
        # RX producers, then one slot per ring for its worker's second stage (it redirects).
        add_registry(layout, producers + self.n_slots)
        add_counters(layout, producers, self.n_slots, trace_events)
        self._seg: Segment = layout.create()
        self._table = self._seg.view("table")
        self._table[:] = -1
        self._slot_info = self._seg.view("slot_info")
        self.registry = ProducerRegistry(self._seg, producers + self.n_slots, producers)
        self._rings = [
            Ring(
                self._seg.address("ring_hdr", s * _RING_HDR_STRIDE), self._seg.view("ring_slots")[s]
            )
            for s in range(self.n_slots)
        ]
        self._hands = self._seg.view("hand")
        self._free_slots = list(range(self.n_slots - 1, -1, -1))
        self._entries: dict[int, _Entry] = {}
        self._retiring: list[_Entry] = []
        self._generation = 0
        self._retired_k = np.zeros(K_WORDS, dtype=np.int64)
        self._retired_lost = 0
        self.history: deque[EntryStats] = deque(maxlen=1024)
        self.results: list[WorkerResult] = []
        self._mp = multiprocessing.get_context("fork")
        self._owner = os.getpid()
        self._owner_thread = threading.get_ident()
        self._lock = threading.RLock()
        self._closed = False

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> CpuMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        keys = sorted(self._entries)
        return f"<CpuMap id={self.map_id} max_entries={self.max_entries} entries={keys}>"

    # -- map operations ----------------------------------------------------------------------
    def update(self, key: int, qsize: int, flags: int = BPF_ANY, *, program: Any = None) -> None:
        """Populate (or replace) entry ``key`` with a ring of ``qsize`` frames and a new
        worker pinned to CPU ``key``.  ``qsize == 0`` deletes.  Errors: see the table.

        ``program``: a second-stage program run by the worker on every frame before the
        skb is built (the kernel's ``bpf_cpumap_val.bpf_prog``; see second_stage.py).
        """
        key = _uint(key, 32, "key")
        qsize = _uint(qsize, 32, "qsize")
        flags = _uint(flags, 64, "flags")
        with self._lock:
            self._check_usable()
            if flags > BPF_EXIST:
                raise _err(errno.EINVAL, f"flags {flags:#x} > BPF_EXIST")
            if key >= self.max_entries:
                raise _err(errno.E2BIG, f"key {key} >= max_entries {self.max_entries}")
            if flags == BPF_NOEXIST:
                raise _err(errno.EEXIST, "cpumap entries always exist (BPF_NOEXIST)")
            if qsize > QSIZE_MAX:
                raise _err(errno.EOVERFLOW, f"qsize {qsize} > {QSIZE_MAX}")
            if key not in possible_cpus():
                raise _err(errno.ENODEV, f"CPU {key} is not possible on this machine")
            self._advance()
            if qsize == 0:
                self._replace(key, None)
                return
            if program is not None and not callable(program):
                raise TypeError(f"program must be callable, not {type(program).__name__}")
            self._replace(key, self._new_entry(key, qsize, program))

    def delete(self, key: int) -> None:
        """Empty entry ``key`` (its worker drains and exits in the background)."""
        key = _uint(key, 32, "key")
        with self._lock:
            self._check_usable()
            if key >= self.max_entries:
                raise _err(errno.EINVAL, f"key {key} >= max_entries {self.max_entries}")
            self._advance()
            self._replace(key, None)

    def program_of(self, key: int) -> Any:
        """The second-stage program of populated entry ``key`` (None if it has none);
        ENOENT like :meth:`lookup`.  (The kernel's lookup returns the program's id.)"""
        self.lookup(key)
        return self._entries[key].program

    def lookup(self, key: int) -> int:
        """The queue size of populated entry ``key``; ENOENT if empty or out of range."""
        key = _uint(key, 32, "key")
        with self._lock:
            self._check_open()
            e = self._entries.get(key)
            if e is None:
                raise _err(errno.ENOENT, f"no entry at key {key}")
            return e.qsize

    def get_next_key(self, key: int | None = None) -> int:
        """The kernel's walk: ``None`` or out of range -> 0; the last key -> ENOENT;
        otherwise ``key + 1`` whether populated or not."""
        if key is not None:
            key = _uint(key, 32, "key")
        self._check_open()
        if key is None or key >= self.max_entries:
            return 0
        if key == self.max_entries - 1:
            raise _err(errno.ENOENT, f"key {key} is the last key")
        return key + 1

    def keys(self) -> Iterator[int]:
        """Every key, by walking ``get_next_key`` like ``bpftool map dump``."""
        key: int | None = None
        while True:
            try:
                key = self.get_next_key(key)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            yield key

    __iter__ = keys

    def items(self) -> Iterator[tuple[int, int]]:
        """``(key, qsize)`` for every populated key (the walk, skipping ENOENT)."""
        for key in self.keys():
            try:
                yield key, self.lookup(key)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise

    def __len__(self) -> int:
        return self.max_entries

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and key in self._entries

    # -- traffic -------------------------------------------------------------------------------
    def producer(self, program: Any, **options: Any) -> RxProducer:
        """An RX producer running ``program``; see :class:`cpumap.rx.RxProducer`."""
        from .rx import RxProducer

        return RxProducer(self, program, **options)

    def run(
        self,
        source: Iterable[PacketBatch] | PacketBatch,
        program: Any,
        *,
        timeout: float = 60.0,
        **options: Any,
    ) -> MapStats:
        """Feed every batch of ``source`` through ``program`` on one RX producer, wait
        until every frame has an outcome, and return the stats.

        Offline processing wants every frame handled, so unless ``backpressure`` is
        given, a full ring makes the producer wait (up to 10 s) instead of dropping.
        """
        from .packets import PacketBatch

        options.setdefault("backpressure", 10.0)
        with self.producer(program, **options) as rx:
            batches = [source] if isinstance(source, PacketBatch) else source
            for batch in batches:
                rx.receive(batch)
        self.wait_idle(timeout)
        return self.stats()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no frame is in flight (staged, queued or in a worker's hands).

        Raises ``TimeoutError`` with the counts if that does not happen in ``timeout``."""
        deadline = time.monotonic() + timeout
        pause = 1e-4
        while True:
            s = self.stats()
            # No outcome pending, and no frame still on its way back to the pool (a
            # worker commits its outcomes before it releases the frames).
            if s.in_flight == 0 and not any(
                e.ring.hand_count() or len(e.ring) for e in self._live_entries()
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{s.in_flight} frames still in flight after {timeout}s")
            self._wait_workers(pause)
            pause = min(pause * 2, 0.02)

    def poll(self) -> None:
        """Advance retirements and supervise workers (also done by every map operation)."""
        with self._lock:
            self._check_open()
            self._advance()

    # -- stats -------------------------------------------------------------------------------
    def stats(self) -> MapStats:
        """A snapshot of every counter (exact at quiescent points)."""
        with self._lock:
            if not self._closed and os.getpid() == self._owner:
                # Supervise too, but fork replacement workers only from the thread that
                # made the map (a Prometheus scrape thread must not become a parent).
                self._advance(restart=threading.get_ident() == self._owner_thread)
            prod = self._seg.view("prod").sum(axis=0, dtype=np.int64)
            enq = self._seg.view("enq")
            k = self._retired_k.copy()
            lost = self._retired_lost
            entries = []
            for e in self._live_entries():
                rec = e.record.read()
                k += rec
                lost += e.lost
                entries.append(self._entry_stats(e, rec, enq[:, e.slot].sum(axis=0)))
            return MapStats(
                map_id=self.map_id,
                rx=int(prod[P_RX]),
                polls=int(prod[P_POLLS]),
                xdp_aborted=int(prod[P_XDP_ABORTED]),
                xdp_drop=int(prod[P_XDP_DROP]),
                xdp_pass=int(prod[P_XDP_PASS]),
                xdp_tx=int(prod[P_XDP_TX]),
                xdp_redirect=int(prod[P_XDP_REDIRECT]),
                redirect_err=int(prod[P_REDIRECT_ERR]),
                queue_full=int(prod[P_QUEUE_FULL] + k[K_FWD_QUEUE_FULL]),
                no_frame=int(prod[P_NO_FRAME]),
                truncated=int(prod[P_TRUNCATED]),
                enqueue_processed=int(prod[P_ENQ_PROCESSED]),
                enqueue_flushes=int(prod[P_FLUSHES]),
                kthread_processed=int(k[K_PROCESSED]),
                kthread_batches=int(k[K_BATCHES]),
                kthread_drops=int(k[K_DROPS]),
                kthread_sched=int(k[K_SCHED]),
                delivered=int(k[K_DELIVERED]),
                handler_drop=int(k[K_HANDLER_DROP]),
                handler_error=int(k[K_HANDLER_ERROR]),
                build_failed=int(k[K_BUILD_FAILED]),
                second_stage_pass=int(k[K_XDP_PASS]),
                second_stage_drop=int(k[K_XDP_DROP]),
                second_stage_redirect=int(k[K_XDP_REDIRECT]),
                redirected_out=int(k[K_REDIRECT_OUT]),
                late_wakeups=int(k[K_LATE_WAKEUPS]),
                lost=lost,
                entries=tuple(entries),
            )

    def events(self) -> tuple[list[EnqueueEvent], list[KthreadEvent]]:
        """Recorded tracepoint events still held (needs ``trace_events > 0``), each list
        in time order.  Events of retired entries are kept until their slot is reused."""
        seg = self._seg
        enq: list[EnqueueEvent] = []
        for p in range(self.producers):
            enq.extend(iter_enqueue_events(self._enq_log(p).read(), p))
        kth: list[KthreadEvent] = []
        for s in range(self.n_slots):
            kth.extend(iter_kthread_events(self._kth_log(s).read()))
        del seg
        enq.sort(key=lambda e: e.ts_ns)
        kth.sort(key=lambda e: e.ts_ns)
        return enq, kth

    def _enq_log(self, p: int) -> EventLog:
        return EventLog(
            self._seg.view("enq_ev")[p],
            self._seg.address("enq_ev_pos", p * 64),
            self.trace_events > 0,
        )

    def _kth_log(self, slot: int) -> EventLog:
        return EventLog(
            self._seg.view("kth_ev")[slot],
            self._seg.address("kth_ev_pos", slot * 64),
            self.trace_events > 0,
        )

    # -- close ---------------------------------------------------------------------------------
    def close(self, timeout: float = 60.0) -> None:
        """Delete every entry and wait until every worker has drained its ring and exited.

        Idempotent.  If workers do not finish within ``timeout`` (a handler stuck
        forever, a producer that never leaves its batch), they are killed and the frames
        they held are recovered and counted ``lost``: close never hangs and never leaks a
        process.
        """
        with self._lock:
            if self._closed:
                return
            if os.getpid() != self._owner:
                self._closed = True  # a forked child's copy: the owner cleans up
                return
            for key in list(self._entries):
                self._replace(key, None)
            deadline = time.monotonic() + timeout
            while self._retiring and time.monotonic() < deadline:
                self._advance()
                if self._retiring:
                    self._wait_workers(0.05)
            for e in list(self._retiring):
                self._force_retire(e)
            self._closed = True

    # -- internals: entries ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("map is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if os.getpid() != self._owner:
            raise RuntimeError(
                "map operations must run in the process that created the map "
                f"(pid {self._owner}); this is pid {os.getpid()}"
            )

    def _has_entry(self, key: int) -> bool:
        return 0 <= key < self.max_entries and self._table[key] >= 0

    def _live_entries(self) -> list[_Entry]:
        return [*self._entries.values(), *self._retiring]

    def _new_entry(self, key: int, qsize: int, program: Any = None) -> _Entry:
        slot = self._alloc_slot()
        self._generation += 1
        ring = self._rings[slot]
        ring.init(qsize)
        record = KthreadRecord(self._seg, slot)
        record.reset()
        self._seg.view("enq")[:, slot] = 0
        self._kth_log(slot).reset()
        info = self._slot_info[slot]
        info[:] = 0
        info[0], info[1], info[2] = key, key, qsize
        e = _Entry(key, qsize, slot, self._generation, ring, record, program=program)
        try:
            self._start_worker(e)
        except BaseException:
            self._free_slots.append(slot)
            raise
        return e

    def _alloc_slot(self) -> int:
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._free_slots:
            # Every slot is live or retiring: retirements finish in bounded time.
            if time.monotonic() > deadline:
                raise _err(errno.ENOMEM, "no free ring slot: retiring workers do not finish")
            self._wait_workers(0.01)
            self._advance()
        return self._free_slots.pop()

    def _start_worker(self, e: _Entry, resume: np.ndarray | None = None) -> None:
        info = WorkerInfo(self.map_id, e.key, e.key, e.qsize, e.slot, e.generation, True)
        spec = WorkerSpec(
            pool=self.pool,
            ring=e.ring,
            hand=self._hands[e.slot],
            record=e.record,
            events=self._kth_log(e.slot),
            info=info,
            handler=self.handler,
            batch_size=self.batch_size,
            idle_timeout=self.idle_timeout,
            busy_poll=self.busy_poll,
            resume_counters=resume,
            second_stage=e.program,
            cmap=self,
            registry_index=self.producers + e.slot,
            parent_pid=os.getpid(),
            forked_by_main_thread=threading.current_thread() is threading.main_thread(),
        )
        if e.conn is not None:
            e.conn.close()
        if e.proc is not None:  # a dead predecessor (this is a restart): free its fd
            e.proc.join()
            e.proc.close()
        r, w = self._mp.Pipe(duplex=False)
        proc = self._mp.Process(
            target=worker_main,
            args=(spec, w),
            name=f"cpumap/{e.key}/map:{self.map_id}",
            daemon=True,
        )
        try:
            proc.start()
        except OSError as exc:
            r.close()
            w.close()
            raise _err(errno.ENOMEM, f"cannot start a worker: {exc}") from exc
        w.close()
        e.proc, e.conn = proc, r
        msg = self._recv(e, _START_TIMEOUT)
        if not msg or not msg.get("ready"):
            proc.kill()
            proc.join()
            proc.close()
            r.close()
            e.proc = e.conn = None
            error = (msg or {}).get("error", "worker exited before it was ready")
            raise HandlerSetupError(f"worker for CPU {e.key} did not start:\n{error}")
        e.pinned = bool(msg.get("pinned", True))
        self._slot_info[e.slot, 3] = proc.pid or 0

    def _recv(self, e: _Entry, timeout: float) -> dict[str, Any] | None:
        try:
            if e.conn.poll(timeout):
                return e.conn.recv()
        except (EOFError, OSError):
            # The worker is gone and said all it will: stop waiting on this pipe (it
            # would stay readable at EOF and turn every wait into a busy loop).
            e.conn.close()
        return None

    def _replace(self, key: int, new: _Entry | None) -> None:
        """``__cpu_map_entry_replace``: publish ``new`` at ``key``, retire the old entry."""
        old = self._entries.pop(key, None)
        self._table[key] = new.slot if new is not None else -1
        if new is not None:
            self._entries[key] = new
        if old is not None:
            old.snap = self.registry.snapshot()  # fences after the table store
            old.state = "grace"
            self._retiring.append(old)
        self._advance()

    def _advance(self, restart: bool = True) -> None:
        """Move retiring entries along; supervise every worker (``restart``: replace the
        dead ones -- a fork)."""
        for e in self._live_entries():
            self._supervise(e, restart)
        still: list[_Entry] = []
        for e in self._retiring:
            if e.state == "grace" and e.snap is not None and self.registry.elapsed(e.snap):
                e.state = "draining"
                e.ring.request_stop()
            if e.state == "draining" and (e.proc is None or not e.proc.is_alive()):
                self._finish_retirement(e)
            if e.state != "retired":
                still.append(e)
        self._retiring = still

    def _supervise(self, e: _Entry, restart: bool = True) -> None:
        """A worker that exited while it still had work to do died: recover and replace."""
        if e.proc is None:  # no worker could be started again: broken
            if e.broken:
                self._recover(e, drop_queued=True)
            return
        if e.conn is not None and not e.conn.closed and e.conn.poll():
            msg = self._recv(e, 0)
            if msg is not None:
                e.results.append(msg)
        if e.proc.is_alive():
            return
        if e.state == "draining" and e.proc.exitcode == 0 and len(e.ring) == 0:
            return  # a clean exit: _advance finishes the retirement
        if e.broken:
            self._recover(e, drop_queued=True)  # nobody consumes: keep the ring empty
            return
        if not restart:
            return  # the next supervision from the map's own thread recovers and replaces
        self._recover(e, drop_queued=False)
        e.restarts += 1
        if e.restarts > _MAX_RESTARTS:
            e.broken = True
            self._recover(e, drop_queued=True)
            return
        self._collect_results(e)
        try:
            self._start_worker(e, e.record.read())
        except (OSError, HandlerSetupError):
            e.broken = True
            self._recover(e, drop_queued=True)

    def _recover(self, e: _Entry, *, drop_queued: bool) -> None:
        """Return the frames a dead worker held (worker.py's commit protocol).

        With ``drop_queued`` (no worker will come: a broken entry, or one being retired
        after its worker died), the frames queued in its ring are released and counted
        ``lost`` too.  Precondition: the entry's worker is dead.
        """
        ring, pool = e.ring, self.pool
        rec = e.record.read()
        cons, prod = ring.positions()
        committed = int(rec[K_COMMITTED])
        queued = ring.contents(cons, prod) if prod > cons else np.zeros(0, np.uint32)
        n_hand = ring.hand_count()
        if n_hand:
            hand = self._hands[e.slot, :n_hand].copy()
            # Only frames still tagged "in this worker's hand" are its own (worker.py).
            held = hand[pool.tag[hand] == TAG_HAND + e.slot]
            if committed < cons:  # died before committing: no outcome for these
                e.lost += len(held)
            pool.release(held)
        end = cons
        if drop_queued and len(queued):
            e.lost += len(queued)
            pool.release(queued)
            end = prod
        ring.reset_consumer(end)
        rec[K_COMMITTED] = end
        e.record.publish(rec)

    def _finish_retirement(self, e: _Entry) -> None:
        """The worker drained its ring and exited: fold its stats, free its slot."""
        if e.conn is not None:
            msg = self._recv(e, 0)
            if msg is not None:
                e.results.append(msg)
        if e.proc is not None:
            e.proc.join()
        cons, prod = e.ring.positions()
        if prod != cons or e.ring.hand_count() or cons != int(e.record.read()[K_COMMITTED]):
            self._recover(e, drop_queued=True)  # not after a clean exit; never lose frames
        rec = e.record.read()
        enq = self._seg.view("enq")[:, e.slot].sum(axis=0)
        stats = self._entry_stats(e, rec, enq)
        stats.state = "retired"
        stats.exitcode = e.proc.exitcode if e.proc is not None else None
        self.history.append(stats)
        self._retired_k += rec
        self._retired_lost += e.lost
        self._collect_results(e)
        if e.conn is not None:
            e.conn.close()
        if e.proc is not None:
            e.proc.close()  # its sentinel fd, now rather than at garbage collection
        e.state = "retired"
        self._slot_info[e.slot] = 0
        self._free_slots.append(e.slot)

    def _force_retire(self, e: _Entry) -> None:
        """Kill a worker that would not finish and recover what it held."""
        if e.proc is not None and e.proc.is_alive():
            e.proc.kill()
            e.proc.join()
        # A producer that never left its batch may still publish: make the ring refuse
        # (its frames are then counted queue_full by that producer) before emptying it.
        e.ring.kill()
        e.state = "draining"
        self._finish_retirement(e)
        self._retiring.remove(e)

    def _collect_results(self, e: _Entry) -> None:
        for msg in e.results:
            if msg.get("ready"):
                continue
            self.results.append(
                WorkerResult(
                    e.key,
                    e.key,
                    e.generation,
                    msg.get("result"),
                    msg.get("error"),
                    e.proc.exitcode if e.proc is not None else None,
                    msg.get("outputs", []),
                )
            )

    def _wait_workers(self, timeout: float) -> None:
        """Sleep until a worker exits or reports, or ``timeout`` passes."""
        waitables = []
        for e in self._live_entries():
            if e.proc is not None and e.state != "retired":
                waitables.append(e.proc.sentinel)
                if e.conn is not None and not e.conn.closed:
                    waitables.append(e.conn)
        if any(e.state == "grace" for e in self._retiring):
            timeout = min(timeout, 0.001)  # grace periods end with RX batches: poll fast
        if waitables:
            multiprocessing.connection.wait(waitables, timeout)
        else:
            time.sleep(timeout)

    def _entry_stats(self, e: _Entry, rec: np.ndarray, enq: np.ndarray) -> EntryStats:
        return EntryStats(
            key=e.key,
            cpu=e.key,
            qsize=e.qsize,
            generation=e.generation,
            state=e.state,
            pid=(e.proc.pid or 0) if e.proc is not None else 0,
            pinned=e.pinned,
            queued=len(e.ring),
            enqueue_processed=int(enq[E_PROCESSED]),
            enqueue_drops=int(enq[E_DROPS]),
            enqueue_flushes=int(enq[E_FLUSHES]),
            kthread_processed=int(rec[K_PROCESSED]),
            kthread_batches=int(rec[K_BATCHES]),
            kthread_drops=int(rec[K_DROPS]),
            kthread_sched=int(rec[K_SCHED]),
            delivered=int(rec[K_DELIVERED]),
            handler_drop=int(rec[K_HANDLER_DROP]),
            handler_error=int(rec[K_HANDLER_ERROR]),
            build_failed=int(rec[K_BUILD_FAILED]),
            xdp_pass=int(rec[K_XDP_PASS]),
            xdp_drop=int(rec[K_XDP_DROP]),
            xdp_redirect=int(rec[K_XDP_REDIRECT]),
            sleeps=int(rec[K_SLEEPS]),
            late_wakeups=int(rec[K_LATE_WAKEUPS]),
            lost=e.lost,
        )

    # -- for producers ---------------------------------------------------------------------
    def _ring(self, slot: int) -> Ring:
        return self._rings[slot]

    def _slot_cpu(self, slot: int) -> int:
        return int(self._slot_info[slot, 1])


def _accept_all(skb: object) -> None:
    """The default handler: accept every frame (like a netstack that takes everything)."""
    return None


Handler = Callable[[Any], Any]
