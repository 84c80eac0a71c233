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
Every update makes a new entry (new ring slot, new worker) and retires the old one, like
``__cpu_map_entry_replace``: entry.py has the states, the events that move an entry
between them, and what is true in each.  ``update`` and ``delete`` do not wait for a
retirement (the kernel defers it with ``call_rcu`` and a work item); the map advances
retirements on its supervisor thread (watcher.py), at every map operation, in
``stats()``, ``poll()`` and ``close()`` (:meth:`CpuMap.poll`).  ``close(timeout)``
retires everything, waits until every worker has exited, and returns by its deadline
whatever is stuck, counting what it had to abandon.  The worker processes themselves --
started, watched, recovered when they die, replaced, broken, retired -- are the
supervisor's (supervisor.py): of an entry, the map writes only its state (by firing
events) and its grace snapshot, the supervisor its ``WorkerLife``.  Retiring an entry is
the map firing the event, one ``Supervisor.retire`` call, then folding the entry's stats
into :attr:`CpuMap.history` and freeing its slot.  The supervisor thread runs the
supervision on its own, so that a dead worker is replaced within milliseconds even while
the program only feeds packets.

What a map reports: :meth:`CpuMap.stats` (a snapshot, cheap enough for a loop),
:meth:`CpuMap.report` (the whole life in one record, after ``close()``).

What is shared with producers and workers is in one control segment (control.py): this
object hands it to them as :attr:`CpuMap.shared` and keeps the rest -- the entries, the
free slots -- to itself.  Map operations run in the controlling process (the one that
created the map); RX producers may run in processes forked from it.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..abi import BPF_ANY, BPF_EXIST, BPF_NOEXIST, CPUMAP_QSIZE_MAX
from ..closing import Closing
from ..cpus import nr_cpus, possible_cpus
from ..errors import ClosedResourceError
from ..map_errors import as_seconds, as_uint, map_error, walk_keys
from ..packets import PacketBatch
from ..programs import user_errors
from ..programs.user_errors import UserError
from .control import MapShared
from .counters import KTHREAD_WORDS
from .entry import Entry, EntryEvent, EntryState
from .frame_pool import DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM, MAX_PUBLISHERS, FramePool
from .ownership import held_without_outcome
from .report import MapReport
from .rx import RxProducer
from .stats import (
    EnqueueEvent,
    EntryStats,
    FaultCounts,
    KthreadEvent,
    MapStats,
    iter_enqueue_events,
    iter_kthread_events,
)
from .supervisor import START_TIMEOUT, RestartPolicy, Supervisor, WorkerEvent, WorkerResult
from .watcher import SupervisorThread
from .worker import DEFAULT_BATCH, DEFAULT_BUSY_POLL, DEFAULT_IDLE_TIMEOUT, WorkerConfig

if TYPE_CHECKING:
    from ..programs.contract import Handler

QSIZE_MAX = CPUMAP_QSIZE_MAX  # the kernel's sanity limit
# wait_idle's longest sleep between looks: what the end of a run may overshoot its last
# outcome by (each look is one stats() snapshot).
IDLE_POLL_MAX = 0.005
# Frames per producer partition: a poll takes a block of 1024, and blocks come back whole,
# so a partition needs room for its rings' contents plus a few blocks in flight.
DEFAULT_FRAMES_PER_PRODUCER = 16384
DEFAULT_STUCK_AFTER = 10.0  # seconds without progress, with work waiting: "stuck"
# Records per tracepoint writer: 80 bytes each, one log per producer and per slot.
MAX_TRACE_EVENTS = 1 << 20
_CLOSE_LOCK_SHARE = 0.25  # of close()'s timeout, for a ring's producer lock at the end

_map_ids = iter(range(1, 1 << 31))
_open_maps: weakref.WeakSet[CpuMap] = weakref.WeakSet()


@atexit.register
def _kill_workers_at_exit() -> None:
    """An interpreter exiting with a map still open: SIGKILL its workers now.  Registered
    after multiprocessing's own exit hook, so it runs before it: that one would SIGTERM
    daemonic children and join them -- forever, for a stopped worker."""
    for m in list(_open_maps):
        m.kill_workers()


@dataclass(frozen=True)
class MapOptions:
    """A :class:`CpuMap`'s rarely used knobs, in one record (the defaults suit most maps).

    Engine: ``frame_size`` and ``headroom`` (of each pool frame), ``trace_events``
    (records kept per tracepoint writer; 0 = events off), ``idle_timeout`` (a sleeping
    worker's safety-net timeout), ``busy_poll`` (seconds a worker polls its empty ring
    before sleeping: fewer wake-ups at high rates, a busier CPU at low ones; 0 = sleep at
    once, as the kthread does).

    Supervision: ``stuck_after`` (seconds a worker may make no progress while work waits
    before it is reported stuck; a producer whose pool partition has no free frame for as
    long is reported ``starved``), ``setup_timeout`` (seconds a new worker's handler
    ``setup()`` may take: a worker still in it then is killed and the update fails with
    ``HandlerSetupError``), ``restart`` (the restart rate limit:
    supervisor.RestartPolicy), ``supervise`` (False: no supervisor thread -- dead workers
    are then handled only by map operations, ``stats()`` and ``poll()``, as a tool that
    plays a worker itself needs).
    """

    frame_size: int = DEFAULT_FRAME_SIZE
    headroom: int = DEFAULT_HEADROOM
    trace_events: int = 0
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    busy_poll: float = DEFAULT_BUSY_POLL
    stuck_after: float = DEFAULT_STUCK_AFTER
    setup_timeout: float = START_TIMEOUT
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    supervise: bool = True

    def __post_init__(self) -> None:
        _check_int_in(self.trace_events, "trace_events", 0, MAX_TRACE_EVENTS)
        as_seconds(self.idle_timeout, "idle_timeout", zero_ok=False)
        as_seconds(self.busy_poll, "busy_poll")
        as_seconds(self.stuck_after, "stuck_after", zero_ok=False)
        as_seconds(self.setup_timeout, "setup_timeout", zero_ok=False)
        if not isinstance(self.restart, RestartPolicy):
            raise TypeError(f"restart must be a RestartPolicy, not {type(self.restart).__name__}")
        as_seconds(self.restart.half_life, "restart.half_life", zero_ok=False)
        if not (math.isfinite(self.restart.burst) and self.restart.burst >= 0):
            raise ValueError(f"restart.burst must be finite and >= 0, not {self.restart.burst}")


class CpuMap(Closing):
    """A user-space BPF_MAP_TYPE_CPUMAP: keys are CPUs, values are queue sizes, and each
    populated key has a worker pinned to its CPU running ``handler``.

    ``handler`` (the "network stack") is called in the worker with an ``Skb`` per frame,
    or with an ``SkbBatch`` per batch if marked with :func:`cpumap.batch_handler`; it
    returns ``False`` to drop, anything else accepts (``programs/contract.py``).  Optional
    methods ``setup(info)`` and ``finish() -> result`` run at the worker's start and clean
    exit; results are collected in :attr:`results`.

    ``frames`` (pool size), ``producers`` (RX producer slots, one pool partition each),
    ``batch_size`` (frames per worker batch, the kernel's CPUMAP_BATCH); the rest in
    ``options`` (:class:`MapOptions`).  After :meth:`close`, :meth:`report` is the whole
    run in one record.
    """

    def __init__(
        self,
        max_entries: int,
        *,
        handler: Handler | Any = None,
        frames: int | None = None,
        producers: int = 1,
        batch_size: int = DEFAULT_BATCH,
        options: MapOptions | None = None,
    ) -> None:
        self._closed = True  # until fully built: close() must be safe on a failed init
        max_entries = as_uint(max_entries, 32, "max_entries")
        if max_entries == 0:
            raise map_error(errno.EINVAL, "max_entries is 0")
        if max_entries > nr_cpus():
            raise map_error(errno.E2BIG, f"max_entries {max_entries} > NR_CPUS {nr_cpus()}")
        _check_int_in(producers, "producers", 1, MAX_PUBLISHERS)
        # A batch never holds more than a ring can: the hand buffer is sized by it.
        _check_int_in(batch_size, "batch_size", 1, QSIZE_MAX)
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable (or None), not {type(handler).__name__}")
        opts = options if options is not None else MapOptions()
        if not isinstance(opts, MapOptions):
            raise TypeError(f"options must be a MapOptions, not {type(opts).__name__}")
        self.options = opts
        self.max_entries = max_entries
        self.map_id = next(_map_ids)
        self.handler = handler if handler is not None else _accept_all
        self.producers = producers
        self.batch_size = batch_size
        self.pool = FramePool(
            frames if frames is not None else DEFAULT_FRAMES_PER_PRODUCER * producers,
            opts.frame_size,
            opts.headroom,
            partitions=producers,
        )
        # Live entries are bounded by the possible CPUs; retiring ones need room too.
        live = min(max_entries, len(possible_cpus()))
        n_slots = live + max(4, live)
        self.shared = MapShared(
            self.map_id,
            max_entries,
            producers=producers,
            n_slots=n_slots,
            batch_size=batch_size,
            trace_events=opts.trace_events,
        )
        self.registry = self.shared.registry
        self._owner = os.getpid()
        self._owner_thread = threading.get_ident()
        self._lock = threading.RLock()
        # The thread first: the supervisor forks through it (watcher.py argues why).
        self._watcher = SupervisorThread(self._supervise_on_thread, self._worker_pids)
        self.supervisor = Supervisor(
            self.shared,
            self.pool,
            self._watcher,
            WorkerConfig(self.handler, batch_size, opts.idle_timeout, opts.busy_poll),
            policy=opts.restart,
            stuck_after=opts.stuck_after,
            setup_timeout=opts.setup_timeout,
        )
        self.results: list[WorkerResult] = self.supervisor.results
        self.history: deque[EntryStats] = deque(maxlen=1024)
        self._free_slots = list(range(n_slots - 1, -1, -1))
        self._entries: dict[int, Entry] = {}
        self._retiring: list[Entry] = []
        self._generation = 0
        self._retired_k = np.zeros(KTHREAD_WORDS, dtype=np.int64)
        self._retired_lost = 0
        self._closing_done = False  # close() finished: report what producers still hold
        self._hurry = False  # hurry_close(): a close in progress stops waiting
        if opts.supervise:
            self._watcher.start()
        _open_maps.add(self)
        self._closed = False

    @property
    def owner_pid(self) -> int:
        """The controlling process: the one that created the map."""
        return self._owner

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
        key = as_uint(key, 32, "key")
        qsize = as_uint(qsize, 32, "qsize")
        flags = as_uint(flags, 64, "flags")
        with self._lock:
            self._check_usable()
            if flags > BPF_EXIST:
                raise map_error(errno.EINVAL, f"flags {flags:#x} > BPF_EXIST")
            if key >= self.max_entries:
                raise map_error(errno.E2BIG, f"key {key} >= max_entries {self.max_entries}")
            if flags == BPF_NOEXIST:
                raise map_error(errno.EEXIST, "cpumap entries always exist (BPF_NOEXIST)")
            if qsize > QSIZE_MAX:
                raise map_error(errno.EOVERFLOW, f"qsize {qsize} > {QSIZE_MAX}")
            if key not in possible_cpus():
                raise map_error(errno.ENODEV, f"CPU {key} is not possible on this machine")
            self._advance()
            if qsize == 0:
                self._replace(key, None)
                return
            if program is not None and not callable(program):
                raise TypeError(f"program must be callable, not {type(program).__name__}")
            self._replace(key, self._new_entry(key, qsize, program))

    def delete(self, key: int) -> None:
        """Empty entry ``key`` (its worker drains and exits in the background)."""
        key = as_uint(key, 32, "key")
        with self._lock:
            self._check_usable()
            if key >= self.max_entries:
                raise map_error(errno.EINVAL, f"key {key} >= max_entries {self.max_entries}")
            self._advance()
            self._replace(key, None)

    def program_of(self, key: int) -> Any:
        """The second-stage program of populated entry ``key`` (None if it has none);
        ENOENT like :meth:`lookup`.  (The kernel's lookup returns the program's id.)"""
        self.lookup(key)
        return self._entries[key].program

    def lookup(self, key: int) -> int:
        """The queue size of populated entry ``key``; ENOENT if empty or out of range."""
        key = as_uint(key, 32, "key")
        with self._lock:
            self._check_open()
            e = self._entries.get(key)
            if e is None:
                raise map_error(errno.ENOENT, f"no entry at key {key}")
            return e.qsize

    def get_next_key(self, key: int | None = None) -> int:
        """The kernel's walk: ``None`` or out of range -> 0; the last key -> ENOENT;
        otherwise ``key + 1`` whether populated or not."""
        if key is not None:
            key = as_uint(key, 32, "key")
        self._check_open()
        if key is None or key >= self.max_entries:
            return 0
        if key == self.max_entries - 1:
            raise map_error(errno.ENOENT, f"key {key} is the last key")
        return key + 1

    def keys(self) -> Iterator[int]:
        """Every key, by walking ``get_next_key`` like ``bpftool map dump``."""
        return walk_keys(self.get_next_key)

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
        return isinstance(key, int) and self.has_entry(key)

    def has_entry(self, key: int) -> bool:
        """Whether ``key`` is populated right now, from the shared table: the redirect
        path's lookup (``redirect_map`` with a fallback action), valid in any process
        forked from the map's."""
        return self.shared.has_entry(key)

    def entry(self, key: int) -> Entry:
        """The controller's record of the live entry at ``key`` (its state, slot, ring,
        and its workers' :class:`~cpumap.engine.entry.WorkerLife`: worker, restarts);
        ENOENT like :meth:`lookup`.  For tools and tests."""
        key = as_uint(key, 32, "key")
        with self._lock:
            self._check_open()
            e = self._entries.get(key)
            if e is None:
                raise map_error(errno.ENOENT, f"no entry at key {key}")
            return e

    # -- traffic -------------------------------------------------------------------------------
    def producer(self, program: Any, **options: Any) -> RxProducer:
        """An RX producer running ``program``; see :class:`cpumap.engine.rx.RxProducer`."""
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
            pause = min(pause * 2, IDLE_POLL_MAX)

    def poll(self) -> None:
        """Advance retirements and supervise workers (also done by every map operation)."""
        with self._lock:
            self._check_open()
            self._advance()

    # -- stats -------------------------------------------------------------------------------
    def stats(self) -> MapStats:
        """A snapshot of every counter (exact at quiescent points).  Never raises."""
        with self._lock:
            if not self._closed and os.getpid() == self._owner:
                # Supervise too, but fork replacement workers only from the threads that
                # may (a Prometheus scrape thread must not wait for a worker's start).
                me = threading.get_ident()
                with contextlib.suppress(Exception):  # the supervisor thread retries it
                    self._advance(restart=me == self._owner_thread or self._watcher.on_thread())
            return self._snapshot()

    def report(self) -> MapReport:
        """The map's whole life in one record: its stats with every entry it ever had
        (retired and live, by key and generation), its workers' results, its process
        events and its user-code errors.  Meant for after :meth:`close` (then every entry
        is retired and every worker has reported); valid at any time."""
        with self._lock:
            now = self.stats()
            entries = sorted([*self.history, *now.entries], key=lambda e: (e.key, e.generation))
            return MapReport(
                stats=dataclasses.replace(now, entries=tuple(entries)),
                results=tuple(self.results),
                events=tuple(self.supervisor.events),
                user_errors=tuple(self.user_errors()),
            )

    def worker_events(self) -> list[WorkerEvent]:
        """What happened to the map's processes, oldest first (the last 1024): worker
        deaths, restarts, broken entries, stuck workers, producers found dead."""
        return list(self.supervisor.events)

    def events(self) -> tuple[list[EnqueueEvent], list[KthreadEvent]]:
        """Recorded tracepoint events still held (needs ``trace_events > 0``), each list
        in time order.  Events of retired entries are kept until their slot is reused."""
        shared = self.shared
        enq: list[EnqueueEvent] = []
        for p in range(self.producers):
            enq.extend(iter_enqueue_events(shared.enqueue_log(p).read(), p))
        kth: list[KthreadEvent] = []
        for s in range(shared.n_slots):
            kth.extend(iter_kthread_events(shared.kthread_log(s).read()))
        enq.sort(key=lambda e: e.ts_ns)
        kth.sort(key=lambda e: e.ts_ns)
        return enq, kth

    def user_errors(self) -> list[UserError]:
        """What failed in user code, as text: the first traceback of each kind and the
        count of each -- per worker that has exited (reported with its results), and of
        the RX program run in this process for this map (``programs/user_errors.py``)."""
        out = user_errors.LOG.report(scope=self.map_id)
        for r in self.results:
            out.extend(r.user_errors)
        return out

    # -- close ---------------------------------------------------------------------------------
    def close(self, timeout: float = 60.0) -> None:
        """Delete every entry and wait until every worker has drained its ring and exited.

        Idempotent, and returns by its deadline whatever a producer, worker or handler is
        doing.  Workers that do not finish within ``timeout`` (a handler stuck forever, a
        stopped worker, a producer that never leaves its batch) are killed (SIGKILL) and
        the frames they held recovered and counted ``lost``; dead producers' partitions
        are recovered (``lost``); frames still held by a producer that is alive but never
        lets go (stopped, hung) are counted ``abandoned`` and reported
        (``worker_events()``, ``stats().abandoned``).  Never leaks a process.
        """
        if getattr(self, "_watcher", None) is None:
            return  # __init__ failed before anything was started
        deadline = time.monotonic() + timeout
        locked = self._lock.acquire(timeout=max(timeout, 0.0))
        try:
            if self._closed:
                return
            if os.getpid() != self._owner:
                self._closed = True  # a forked child's copy: the owner cleans up
                return
            self._retire_all(deadline)
            self.supervisor.supervise_producers()
            self._count_abandoned()
            self._closed = True
            self.shared.mark_closed()
            _open_maps.discard(self)
        finally:
            if locked:
                self._lock.release()
        self._watcher.stop(max(0.1, deadline - time.monotonic()))

    def hurry_close(self) -> None:
        """Make a close in progress -- or the next one -- stop waiting: the workers still
        draining their rings or running ``finish()`` are killed and what they held is
        counted ``lost``, as at ``close(timeout=0)``.

        Safe to call from a signal handler that interrupted ``close()`` itself (a second
        Ctrl-C): it only stores a flag.  ``close()``'s wait loop reads it at least every
        50 ms (its longest sleep) and then goes on to the same path as an expired
        deadline -- the one that kills and recovers -- so nothing ``close()`` was in the
        middle of is cut: the flag ends the waiting, never the bookkeeping."""
        self._hurry = True

    def kill_workers(self) -> None:
        """SIGKILL every worker now, without recovery (the controlling process is exiting:
        its shared memory goes with it).  Only in the controlling process: a forked copy
        of the map (a producer process exiting) must not touch the workers."""
        if os.getpid() == self._owner:
            self.supervisor.kill_all(self._live_entries())

    def _snapshot(self) -> MapStats:
        """Every counter now: the producers', the live entries' and the retired ones'."""
        sup, shared = self.supervisor, self.shared
        k = self._retired_k.copy()
        lost = self._retired_lost
        entries = []
        now = time.monotonic_ns()
        for e in self._live_entries():
            rec = e.record.read()
            k += rec
            status = sup.status(e, now)
            lost += status.lost
            entries.append(
                EntryStats.from_counters(e, rec, self._enqueue_rows(e), status, len(e.ring))
            )
        faults = FaultCounts(
            lost=lost,
            abandoned=self._held_by_producers() if self._closing_done else 0,
            worker_deaths=sup.deaths,
            producer_deaths=sup.producer_deaths,
            finish_failures=sup.finish_failures,
            starved_producers=sup.starvation.now(),
        )
        records = [shared.producer_record(p).read().tolist() for p in range(self.producers)]
        return MapStats.from_counters(self.map_id, records, k, tuple(entries), faults)

    def _enqueue_rows(self, e: Entry) -> list[list[int]]:
        """``e``'s enqueue counters, a row per producer slot (``EnqueueCounter`` words)."""
        slot = e.slot
        return [self.shared.enqueue_counters(p)[slot].tolist() for p in range(self.producers)]

    def _retire_all(self, deadline: float) -> None:
        for key in list(self._entries):
            self._replace(key, None)
        while self._retiring and time.monotonic() < deadline and not self._hurry:
            self._advance()
            if all(_unattended(e) for e in self._retiring):
                break  # no worker will drain these rings: waiting cannot help
            if self._retiring:
                self._wait_workers(min(0.05, max(0.0, deadline - time.monotonic())))
        if self._hurry:
            deadline = time.monotonic()
        # A ring's producer lock held by a stopped producer gets a share of the time left.
        lock_deadline = time.monotonic() + max(0.0, deadline - time.monotonic()) * _CLOSE_LOCK_SHARE
        for e in list(self._retiring):
            self._abandon(e, lock_deadline)

    def _count_abandoned(self) -> None:
        """Report the frames producers still hold now that every worker is gone."""
        self._closing_done = True
        n = self._held_by_producers()
        if n:
            self.supervisor.events.append(
                WorkerEvent(time.monotonic_ns(), "abandoned", -1, -1, 0, 0, lost=n)
            )

    def _held_by_producers(self) -> int:
        """After close: frames live producers hold, counted in rx, with no outcome -- from
        their tags and records, not from the counters (ownership.held_without_outcome), so
        that the identity still checks the books.  A producer that resumes and finishes
        its poll gives them an outcome: they leave this count as they enter another."""
        return sum(
            held_without_outcome(self.pool, self.shared, p)
            for p in range(self.producers)
            if self.registry.owner(p)
        )

    # -- the supervisor thread (watcher.py) --------------------------------------------------------
    def _supervise_on_thread(self) -> bool:
        """One pass of the supervisor thread; False if the map's lock was busy."""
        if not self._lock.acquire(timeout=0.01):
            return False
        try:
            if self._closed:
                return True
            self._advance(restart=True)
            self.supervisor.check_progress(self._live_entries())
            self.supervisor.check_pool()
            return True
        finally:
            self._lock.release()

    def _worker_pids(self) -> list[int]:
        """The pids the supervisor thread watches (read without the lock: a copy)."""
        return [e.life.worker.pid for e in self._live_entries() if e.life.worker is not None]

    # -- internals: entries ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("map is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if os.getpid() != self._owner:
            raise RuntimeError(
                "map operations must run in the process that created the map "
                f"(pid {self._owner}); this is pid {os.getpid()}"
            )

    def _live_entries(self) -> list[Entry]:
        return [*self._entries.values(), *self._retiring]

    def _new_entry(self, key: int, qsize: int, program: Any = None) -> Entry:
        slot = self._alloc_slot()
        self._generation += 1
        shared = self.shared
        shared.prepare_slot(slot, key, qsize)
        e = Entry(
            key,
            qsize,
            slot,
            self._generation,
            shared.ring(slot),
            shared.kthread_record(slot),
            program=program,
        )
        try:
            self.supervisor.start(e)
        except BaseException:
            self._free_slots.append(slot)
            raise
        return e

    def _alloc_slot(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while not self._free_slots:
            # Every slot is live or retiring: retirements finish in bounded time.
            if time.monotonic() > deadline:
                raise map_error(errno.ENOMEM, "no free ring slot: retiring workers do not finish")
            self._wait_workers(0.01)
            self._advance()
        return self._free_slots.pop()

    def _replace(self, key: int, new: Entry | None) -> None:
        """``__cpu_map_entry_replace``: publish ``new`` at ``key``, retire the old entry."""
        old = self._entries.pop(key, None)
        self.shared.publish(key, new.slot if new is not None else -1)
        if new is not None:
            self._entries[key] = new
        if old is not None:
            old.grace = self.registry.snapshot()  # fences after the table store
            old.fire(EntryEvent.UNPUBLISHED)
            self._retiring.append(old)
        self._advance()

    def _advance(self, restart: bool = True) -> None:
        """Move retiring entries along; supervise every worker (``restart``: replace the
        dead ones -- a fork -- and recover dead producers' partitions)."""
        for e in self._live_entries():
            self.supervisor.supervise(e, restart)
        if restart:
            self.supervisor.supervise_producers()
        for e in self._retiring:
            self._advance_retiring(e)
        self._retiring = [e for e in self._retiring if e.state != EntryState.RETIRED]

    def _advance_retiring(self, e: Entry) -> None:
        """One step of a retiring entry's life (entry.py): the grace period ends, its
        worker drains its ring and exits, or -- broken, no worker -- it is done."""
        waiting = e.state in (EntryState.GRACE, EntryState.BROKEN_RETIRING)
        if waiting and (e.grace is None or not self.registry.elapsed(e.grace)):
            return
        if e.state == EntryState.GRACE:
            e.fire(EntryEvent.GRACE_ELAPSED)
            e.ring.request_stop()
        if e.state == EntryState.DRAINING and self.supervisor.drained(e):
            self._retire(e, EntryEvent.DRAINED)
        elif e.state == EntryState.BROKEN_RETIRING:
            self._retire(e, EntryEvent.GRACE_ELAPSED)

    def _retire(self, e: Entry, event: EntryEvent) -> None:
        """``event`` retires ``e``: its workers' end is the supervisor's; the map folds its
        stats into the history and frees its slot (unless quarantined)."""
        e.fire(event)
        done = self.supervisor.retire(e, drained=event == EntryEvent.DRAINED)
        self.history.append(
            EntryStats.from_counters(
                e, done.counters, self._enqueue_rows(e), done.status, len(e.ring)
            )
        )
        self._retired_k += done.counters
        self._retired_lost += done.status.lost
        self.shared.release_slot(e.slot)
        if not done.quarantined:
            self._free_slots.append(e.slot)

    def _abandon(self, e: Entry, lock_deadline: float) -> None:
        """Kill a worker that would not finish, recover what it held, retire it."""
        self.supervisor.abandon(e, lock_deadline)
        self._retire(e, EntryEvent.ABANDONED)
        self._retiring.remove(e)

    def _wait_workers(self, timeout: float) -> None:
        """Sleep until a worker exits or reports, or ``timeout`` passes."""
        waiting = (EntryState.GRACE, EntryState.BROKEN_RETIRING)  # for a grace period
        if any(e.state in waiting for e in self._retiring):
            timeout = min(timeout, 0.001)  # grace periods end with RX batches: poll fast
        self.supervisor.wait(self._live_entries(), timeout)


def _unattended(e: Entry) -> bool:
    """A draining entry with no worker (``supervise=False`` after its worker was taken
    away, or a replacement that could not start): nothing will ever drain its ring, so a
    close abandons it at once -- its ring counted ``lost`` -- rather than at its deadline."""
    return e.state == EntryState.DRAINING and e.life.worker is None


def _check_int_in(value: object, what: str, lo: int, hi: int) -> None:
    """An int argument within ``lo..hi`` (a TypeError for a non-int, a ValueError else)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, not {value}")


def _accept_all(skb: object) -> None:
    """The default handler: accept every frame (like a netstack that takes everything)."""
    return None
