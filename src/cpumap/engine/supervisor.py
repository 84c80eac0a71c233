"""The supervisor: the process shell around map entries -- it starts, reaps, recovers and
replaces their worker processes.

The map (``map.py``) decides *what* an entry is (``entry.py``); the supervisor runs the
process that plays it, and keeps the record of it: the entry's ``WorkerLife`` (its
worker, restarts, restart heat, stuck-since, last exit, frames lost, reports), which only
this module writes.  Each entry has at most one live worker, a ``WorkerProcess``
(worker.py): a process forked from the controlling process (the handler, a closure even,
needs no pickling), pinned to the entry's CPU, with a pipe on which it sends typed
messages (messages.py): ``Ready`` once its handler's ``setup()`` has run (or
``SetupFailed``), and ``Exited`` with its results when it exits.

Supervision: a worker found dead while its entry lives (killed, crashed) is recovered --
the frames it held without a committed outcome are counted ``lost`` and returned
(:meth:`Supervisor.recover`, the supervisor's half of worker.py's commit protocol) -- and
replaced by a new worker on the same ring, which continues the dead one's counters.
Who notices: the map's supervisor thread (watcher.py argues the choice), within
milliseconds of the death; every map operation, ``stats()`` and ``poll()`` too.  A
retiring worker that exits after draining its ring is no death, however it exits: if its
``finish()`` could not report (it raised, exited the process, returned what cannot be
pickled, closed the pipe) the retirement names it -- ``finish_failed`` -- and nothing is
restarted (entry.py).  A worker's exit also ends what its handler started: its process
group (descendants.py).  A new worker has ``setup_timeout`` seconds to report ready; one
still in ``setup()`` then is killed, and the error says so.

Restarts are rate-limited with a decay (:class:`RestartPolicy`), not a lifetime count: each
death adds one to the entry's *heat*, which halves every ``half_life`` seconds; an entry
whose heat exceeds ``burst``, or whose replacement cannot start, is *broken*
(entry.py): unpublished, so that a redirect to it is a redirect error, its ring killed,
what it held counted ``lost`` (the supervisor fires ``BROKE``: the one event it fires).
Every death, restart, break and stuck worker is recorded as a :class:`WorkerEvent`.

The end of a worker: when the map retires an entry it makes one call,
:meth:`Supervisor.retire` -- wait for the exited worker, recover what it left unless it
exited clean, collect its reports as :class:`WorkerResult` records, free its handle -- and
gets back the entry's final counters; ``close()`` running out of time first calls
:meth:`Supervisor.abandon` (kill, make the ring refuse producers).

RX producers are supervised too (:meth:`Supervisor.supervise_producers`): a producer slot
whose owner process died is claimed by the controller, and the partition it left is
recovered whole (ownership.py), its frames counted ``lost``.

Forking happens only through the :class:`Forker` the supervisor is built with: the map's
supervisor thread (watcher.py: why), which runs a fork in the caller's thread once it is
gone; a supervision from another thread (a metrics scrape calling ``stats()``) only
reads.

Map operations run in the controlling process (the one that created the map); RX
producers may run in processes forked from it.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import HandlerSetupError
from ..programs.contract import WorkerInfo
from ..programs.user_errors import UserError
from .counters import KthreadCounter, ProducerCounter
from .descendants import exited_unreaped
from .entry import Entry, EntryEvent, EntryState, WorkerLife
from .frame_pool import TAG_HAND, TAG_RETURNED, FramePool
from .messages import Exited, Ready, SetupFailed, WorkerMessage
from .ownership import recover_partition, unpublished
from .pids import pid_alive
from .stats import WorkerStatus
from .worker import WorkerConfig, WorkerProcess, WorkerSpec, worker_main

if TYPE_CHECKING:
    from .control import MapShared

START_TIMEOUT = 60.0  # seconds for a new worker to report ready
RESTART_BURST = 8.0  # deaths in quick succession before an entry is broken
RESTART_HALF_LIFE = 30.0  # seconds for an entry's count of recent deaths to halve
_KILL_LOCK_WAIT = 1.0  # seconds to wait for a ring's producer lock when breaking an entry


@dataclass(frozen=True)
class RestartPolicy:
    """How fast an entry's workers may die before it is broken: a leaky bucket.

    Each death adds 1 to the entry's heat, which decays by half every ``half_life``
    seconds; a death that takes it above ``burst`` breaks the entry.  A worker killed
    every 10 s with the defaults settles near 1 / (1 - 2**(-10/30)) ~ 4.9: it is always
    replaced; nine deaths within a few seconds break the entry.
    """

    burst: float = RESTART_BURST
    half_life: float = RESTART_HALF_LIFE

    def allows(self, life: WorkerLife, now: float) -> bool:
        """Count one death of ``life``'s worker at ``now``; whether it may be replaced."""
        if life.heat_at:
            life.heat *= 0.5 ** ((now - life.heat_at) / self.half_life)
        life.heat += 1.0
        life.heat_at = now
        return life.heat <= self.burst


@dataclass(frozen=True)
class WorkerEvent:
    """Something that happened to a map's processes: ``kind`` is one of ``died`` (a worker
    exited while its entry needed it), ``restarted``, ``broken``, ``stuck`` (work waiting,
    no progress for the map's ``stuck_after``), ``abandoned`` (killed by ``close()``),
    ``finish_failed`` (a retiring worker drained its ring but its ``finish()`` could not
    report: the entry's ``finish_error`` says why), ``producer_died`` (an RX producer's
    process died; ``key`` is its producer slot), ``starved`` (an RX producer's pool
    partition had no free frame for ``stuck_after``; ``key`` is its producer slot, ``cpu``
    -1)."""

    ts_ns: int
    kind: str
    key: int
    cpu: int
    generation: int
    pid: int
    exitcode: int | None = None  # a negative exit code is the signal that killed it
    lost: int = 0  # frames the event lost (recovered without an outcome)


@dataclass(frozen=True)
class WorkerResult:
    """What a worker reported when it exited (its ``Exited`` message, messages.py), and
    whose it was."""

    key: int
    cpu: int
    generation: int
    result: Any = None  # the handler's finish() result
    error: str | None = None  # the traceback of what ended the worker, if anything
    exitcode: int | None = None
    outputs: tuple[Any, ...] = ()  # second-stage outputs' finish() reports
    user_errors: tuple[UserError, ...] = ()  # what failed in user code in that worker
    finish_error: str | None = None  # "finish() failed: ...": raised, or could not report


class Starvation:
    """Which RX producers' pool partitions are starved: no free frame for ``stuck_after``.

    A producer that cannot get frames waits in its poll (up to its ``frame_wait``, then
    counts ``no_frame``) and reports nothing; the frames it waits for are held elsewhere
    -- a ring nobody consumes, a worker stopped with them in hand, a copy of a worker that
    took them.  So the controller looks at the pool itself: partition ``p`` is starved
    when, at every look for ``stuck_after`` seconds, none of its frames was free or
    returned (their tags: ownership.py) and producer ``p`` finished no poll (its record's
    ``polls`` did not move -- a producer that keeps polling is not starved, however busy
    its pool).  Reported once per episode; it ends when a frame of the partition is free
    again.  Reads only shared memory (the tags, the producer's record): any thread.
    """

    INTERVAL = 0.25  # seconds between looks, at most (a look scans the partition's tags)

    def __init__(self, pool: FramePool, shared: MapShared, stuck_after: float) -> None:
        self.pool = pool
        self.shared = shared
        self.stuck_after = stuck_after
        self._since: dict[int, tuple[float, int]] = {}  # p -> (starved since, its polls)
        self.starved: set[int] = set()  # reported, not over yet
        self._next = 0.0

    def check(self, now: float) -> list[int]:
        """Look again (at most every :attr:`INTERVAL`); returns the producers newly starved."""
        if now < self._next:
            return []
        self._next = now + min(self.INTERVAL, self.stuck_after / 4)
        newly = []
        for p in range(self.shared.producers):
            if not self.shared.registry.owner(p) or self._has_free_frame(p):
                self._since.pop(p, None)
                self.starved.discard(p)
                continue
            polls = int(self.shared.producer_record(p).read()[ProducerCounter.POLLS])
            since, seen = self._since.get(p, (now, polls))
            if seen != polls:  # it finished a poll: frames came, starvation starts over
                since = now
                self.starved.discard(p)
            self._since[p] = (since, polls)
            if p not in self.starved and now - since >= self.stuck_after:
                self.starved.add(p)
                newly.append(p)
        return newly

    def now(self) -> int:
        """How many producers are starved right now: reported, and still without a free
        frame (read at once, not at the next look: a stats() after it ends is exact)."""
        return sum(
            1
            for p in list(self.starved)
            if self.shared.registry.owner(p) and not self._has_free_frame(p)
        )

    def _has_free_frame(self, p: int) -> bool:
        lo, hi = self.pool.partition_range(p)
        # TAG_FREE (0) and TAG_RETURNED (2) are the two tags t with t | 2 == 2.
        return bool(((self.pool.tag[lo:hi] | TAG_RETURNED) == TAG_RETURNED).any())


class Forker(Protocol):
    """Where the supervisor's forks run: the map's supervisor thread (watcher.py)."""

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a fork) where forks run; return its result or raise its error."""
        ...

    def forks_on_long_lived_thread(self) -> bool:
        """Whether a fork through :meth:`call` now runs on a thread that lives as long as
        the map (its worker may then arm the parent-death signal: worker.py)."""
        ...


@dataclass(frozen=True)
class RetiredWorker:
    """What a retired entry's workers leave behind (:meth:`Supervisor.retire`)."""

    counters: np.ndarray  # its worker record, final (after any recovery): KthreadCounter
    status: WorkerStatus  # its last worker, as the stats show it (exit code, lost, ...)
    quarantined: bool  # its ring was killed without its lock: never reuse the slot


class Supervisor:
    """Starts and watches the worker processes of one map's entries; owns every entry's
    :class:`~cpumap.engine.entry.WorkerLife` (the only writer of it)."""

    def __init__(
        self,
        shared: MapShared,
        pool: FramePool,
        forker: Forker,
        config: WorkerConfig,
        *,
        policy: RestartPolicy,
        stuck_after: float,
        setup_timeout: float = START_TIMEOUT,
    ) -> None:
        self.shared = shared
        self.pool = pool
        self.forker = forker
        self.config = config
        self.policy = policy
        self.stuck_after = stuck_after
        self.setup_timeout = setup_timeout
        self.results: list[WorkerResult] = []
        self.events: deque[WorkerEvent] = deque(maxlen=1024)
        self.deaths = 0  # workers found dead while their entry needed them
        self.producer_deaths = 0  # producer processes found dead, their partition recovered
        self.finish_failures = 0  # retired entries whose last worker's finish() failed
        self.starvation = Starvation(pool, shared, stuck_after)
        self._mp = multiprocessing.get_context("fork")

    def record(self, kind: str, e: Entry, pid: int = 0, **extra: Any) -> None:
        """Add a :class:`WorkerEvent` about entry ``e``."""
        self.events.append(
            WorkerEvent(time.monotonic_ns(), kind, e.key, e.cpu, e.generation, pid, **extra)
        )

    # -- starting ----------------------------------------------------------------------------
    def start(self, e: Entry, resume: np.ndarray | None = None) -> None:
        """Start ``e``'s worker and wait until it is ready (its handler set up).

        ``resume``: the counters a replacement continues.  Raises ``OSError(ENOMEM)`` when
        no process can be started, ``HandlerSetupError`` when the handler's setup fails.
        """
        life = e.life
        if life.worker is not None:  # a dead predecessor (this is a restart): free its fds
            life.worker.join()
            life.worker.close()
            life.worker = None
        worker = self._fork(e, self._spec(e, resume))
        try:
            msg = worker.receive(self.setup_timeout)
        except BaseException:
            _discard_worker(worker)
            raise
        match msg:
            case Ready(pinned=pinned):
                worker.pinned = pinned
            case SetupFailed(error=error):
                _discard_worker(worker)
                raise HandlerSetupError(f"worker for CPU {e.key} did not start:\n{error}")
            case _:  # None: it died, or said nothing in time
                why = self._not_ready(worker)
                raise HandlerSetupError(f"worker for CPU {e.key} did not start:\n{why}")
        life.worker = worker
        self.shared.set_worker_pid(e.slot, worker.pid)

    def _not_ready(self, worker: WorkerProcess) -> str:
        """Why ``worker`` sent neither ``Ready`` nor ``SetupFailed``, once it is gone: it
        exited (its pipe at end of file), or it is still in ``setup()`` at the deadline --
        alive, hung -- and is killed."""
        hung = not worker.said_all() and worker.is_alive()
        _discard_worker(worker)
        if hung:
            return (
                f"setup() did not finish within {self.setup_timeout:g} s; the worker was "
                "killed (MapOptions.setup_timeout sets the deadline)"
            )
        return f"the worker {exit_status(worker.exitcode)} before it was ready"

    def _spec(self, e: Entry, resume: np.ndarray | None) -> WorkerSpec:
        info = WorkerInfo(
            self.shared.map_id, e.key, e.cpu, e.qsize, e.slot, e.generation, pinned=True
        )
        return WorkerSpec(
            pool=self.pool,
            shared=self.shared,
            info=info,
            config=self.config,
            resume_counters=resume,
            second_stage=e.program,
            parent_pid=os.getpid(),
            forked_by_long_lived_thread=self.forker.forks_on_long_lived_thread(),
        )

    def _fork(self, e: Entry, spec: WorkerSpec) -> WorkerProcess:
        """Fork ``e``'s worker process (through the forker), with the pipe it reports on."""
        r, w = self._mp.Pipe(duplex=False)
        proc = self._mp.Process(
            target=worker_main,
            args=(spec, w),
            name=f"cpumap/{e.key}/map:{self.shared.map_id}",
            daemon=True,
        )
        try:
            self.forker.call(proc.start)
        except OSError as exc:
            r.close()
            w.close()
            raise OSError(
                errno.ENOMEM, f"{os.strerror(errno.ENOMEM)}: cannot start a worker: {exc}"
            ) from exc
        except BaseException:  # interrupted: the fork may have happened all the same
            w.close()
            _discard(proc, r)
            raise
        w.close()
        return WorkerProcess(proc, r, pinned=True)

    # -- watching ----------------------------------------------------------------------------
    def supervise(self, e: Entry, restart: bool = True) -> None:
        """Read what ``e``'s worker reported; a worker that exited while it still had work
        to do died: recover and (``restart``) replace it, or break the entry."""
        w = e.life.worker
        if w is None:  # no worker could be started again: broken
            if e.state.broken:
                self.recover(e, drop_queued=True)
            return
        if w.has_report():
            _keep_report(e, w.receive())
        if w.is_alive():
            return
        if e.state == EntryState.DRAINING and self._exited_clean(e):
            # It drained its ring, committed every outcome and holds nothing: told to
            # stop, it had nothing left but finish().  However it exited, a replacement
            # would only run setup() and finish() again -- no restart: the map retires
            # it, and the retirement names a finish() that failed (retire()).
            return
        if e.state.broken:
            self.recover(e, drop_queued=True)  # nobody consumes: keep the ring empty
            return
        if restart:  # else the next supervision from a thread that may fork does it
            self._replace_dead(e, w)

    def _replace_dead(self, e: Entry, dead: WorkerProcess) -> None:
        """Recover what ``dead`` held, and start a replacement -- or break the entry when
        its workers die too fast or the replacement cannot start."""
        life = e.life
        lost = self.recover(e, drop_queued=False)
        life.last_exitcode = dead.exitcode
        self.deaths += 1
        self.record("died", e, dead.pid, exitcode=dead.exitcode, lost=lost)
        allowed = self.policy.allows(life, time.monotonic())
        self._collect(e)
        if not allowed:
            self.break_entry(e)
            return
        try:
            self.start(e, e.record.read())
        except (OSError, HandlerSetupError):
            self.break_entry(e)
            return
        life.restarts += 1
        self.record("restarted", e, life.worker.pid if life.worker is not None else 0)

    def break_entry(self, e: Entry) -> None:
        """Its workers keep dying: nobody will consume its ring.  Fire ``BROKE`` (entry.py
        says where to: an active entry is unpublished -- a redirect to it is a redirect
        error from now on -- a retiring one waits out its grace period), kill its ring (a
        producer waiting on it gives up: lossless flushes resume), and count what it held
        ``lost``."""
        was_active = e.state == EntryState.ACTIVE
        e.fire(EntryEvent.BROKE)
        if was_active:
            self.shared.publish(e.key, -1)
        life = e.life
        if life.worker is not None and not life.worker.is_alive():
            life.worker.join()
            life.worker.close()
            life.worker = None
        if not e.ring.kill(time.monotonic() + _KILL_LOCK_WAIT):
            life.quarantined = True  # a stopped producer holds its lock: it may still publish
        lost = self.recover(e, drop_queued=True)
        self.record("broken", e, lost=lost)

    def supervise_producers(self) -> int:
        """Recover the partitions of RX producers whose process died (not the controller's
        own: they run in this process).  Returns frames counted lost."""
        registry, me, total = self.shared.registry, os.getpid(), 0
        for p in range(self.shared.producers):
            owner = registry.owner(p)
            if not owner or owner == me or pid_alive(owner):
                continue
            try:
                registry.claim(p)  # ours while we recover it (a dead owner frees it)
            except RuntimeError:
                continue  # a new producer claimed it first: it recovers the partition
            try:
                _, lost = recover_partition(self.pool, self.shared, p)
            finally:
                registry.unclaim(p)
            total += lost
            self.producer_deaths += 1
            self.events.append(
                WorkerEvent(time.monotonic_ns(), "producer_died", p, -1, 0, owner, lost=lost)
            )
        return total

    # -- progress (worker.py's heartbeat) -------------------------------------------------------
    def check_progress(self, entries: Iterable[Entry]) -> None:
        """Report (once per episode) a worker that has work waiting and made no progress
        for ``stuck_after`` seconds: stuck in its handler, or stopped."""
        now = time.monotonic()
        for e in entries:
            life = e.life
            if life.worker is None:
                continue
            if self.stuck(e, time.monotonic_ns()):
                if not life.stuck_since:
                    life.stuck_since = now
                    self.record("stuck", e, life.worker.pid)
            else:
                life.stuck_since = 0.0

    def check_pool(self) -> None:
        """Report (once per episode) an RX producer whose pool partition has had no free
        frame for ``stuck_after`` (:class:`Starvation`)."""
        for p in self.starvation.check(time.monotonic()):
            owner = self.shared.registry.owner(p)
            self.events.append(WorkerEvent(time.monotonic_ns(), "starved", p, -1, 0, owner))

    def heartbeat_age(self, e: Entry, now_ns: int) -> float:
        """Seconds since ``e``'s worker last made progress (-1: none reported yet)."""
        beat = self.shared.heartbeat(e.slot)
        return (now_ns - beat) / 1e9 if beat else -1.0

    def stuck(self, e: Entry, now_ns: int) -> bool:
        """Work waiting (in the ring or in hand) and no progress for ``stuck_after``."""
        has_work = len(e.ring) > 0 or e.ring.hand_count() > 0
        return has_work and self.heartbeat_age(e, now_ns) > self.stuck_after

    def status(self, e: Entry, now_ns: int) -> WorkerStatus:
        """``e``'s worker as the stats show it, at ``now_ns`` (monotonic)."""
        life = e.life
        w = life.worker
        if w is None:  # broken: its last worker's exit
            return WorkerStatus(exitcode=life.last_exitcode, restarts=life.restarts, lost=life.lost)
        return WorkerStatus(
            pid=w.pid,
            pinned=w.pinned,
            # A dead worker not yet replaced (a scrape thread saw it), or a reaped one.
            exitcode=None if w.is_alive() else w.exitcode,
            restarts=life.restarts,
            lost=life.lost,
            heartbeat_age=self.heartbeat_age(e, now_ns),
            stuck=self.stuck(e, now_ns),
            finish_error=life.finish_error,
        )

    def drained(self, e: Entry) -> bool:
        """Whether ``e``'s worker has exited with its ring drained, every outcome
        committed and nothing in hand.  A worker that died with work left is not: the
        next supervision with ``restart`` replaces it -- even if it died after this pass's
        :meth:`supervise` saw it alive."""
        w = e.life.worker
        return w is not None and not w.is_alive() and self._exited_clean(e)

    def wait(self, entries: Iterable[Entry], timeout: float) -> None:
        """Sleep until a worker of ``entries`` exits or reports, or ``timeout`` passes."""
        waitables: list[Any] = []
        for e in entries:
            if e.life.worker is not None and e.state != EntryState.RETIRED:
                waitables.extend(e.life.worker.waitables())
        if waitables:
            multiprocessing.connection.wait(waitables, timeout)
        else:
            time.sleep(timeout)

    # -- recovery (worker.py's commit protocol, the supervisor's half) -------------------------
    def recover(self, e: Entry, *, drop_queued: bool) -> int:
        """Return the frames a dead worker held; returns how many were counted lost.

        With ``drop_queued`` (no worker will come: a broken entry, or one being retired
        after its worker died), the frames queued in its ring are released and counted
        ``lost`` too.  Precondition: the entry's worker is dead.
        """
        ring, pool, life = e.ring, self.pool, e.life
        before = life.lost
        rec = e.record.read()
        cons, prod = ring.positions()
        committed = int(rec[KthreadCounter.COMMITTED])
        queued = ring.contents(cons, prod) if prod > cons else np.zeros(0, np.uint32)
        n_hand = ring.hand_count()
        if n_hand:
            hand = self.shared.hand(e.slot)[:n_hand].copy()
            # Only frames still tagged "in this worker's hand" are its own (worker.py), and
            # those its second stage tagged for another ring but never published.
            stage = self.shared.second_stage_producer(e.slot)
            forwarded = unpublished(pool, self.shared.rings(), hand, stage)
            held = np.concatenate([hand[pool.tag[hand] == TAG_HAND + e.slot], forwarded])
            if committed < cons:  # died before committing: no outcome for these
                life.lost += len(held)
            pool.release(held)
        end = cons
        if drop_queued and len(queued):
            life.lost += len(queued)
            pool.release(queued)
            end = prod
        ring.reset_consumer(end)
        rec[KthreadCounter.COMMITTED] = end
        e.record.publish(rec)
        return life.lost - before

    # -- the end of a worker ----------------------------------------------------------------
    def retire(self, e: Entry, *, drained: bool = False) -> RetiredWorker:
        """The end of a retired entry's workers, in this order: wait for its exited worker
        (keeping its last report); recover what it left unless it exited clean (never lose
        a frame); name a ``finish()`` that failed (``drained``: its worker drained the
        ring and exited); read its final counters; move its reports into
        :attr:`results`; free its process handle and pipe.  Precondition: no live worker
        (drained, or abandoned)."""
        self._reap(e)
        if not self._exited_clean(e):
            self.recover(e, drop_queued=True)
        elif drained and e.life.worker is not None:
            self._check_finish(e, e.life.worker)
        status = self.status(e, time.monotonic_ns())
        counters = e.record.read()
        self._collect(e)
        if e.life.worker is not None:
            e.life.worker.close()
        return RetiredWorker(counters, status, e.life.quarantined)

    def _check_finish(self, e: Entry, w: WorkerProcess) -> None:
        """A drained worker's end: its ``finish()`` failed if it reported so, or if it
        sent no report at all (it exited inside ``finish()``, its result pipe was closed,
        it was killed).  Counted once, named in the entry's stats, an event and a result;
        never a restart (supervise())."""
        life = e.life
        last = life.reports[-1] if life.reports else None
        if last is not None:
            why = last.finish_error
        else:
            why = f"finish() failed: the worker {exit_status(w.exitcode)} without its report"
            life.reports.append(Exited(w.pinned, error=why, finish_error=why))
        if why is None:
            return
        life.finish_error = why
        self.finish_failures += 1
        self.record("finish_failed", e, w.pid, exitcode=w.exitcode)

    def abandon(self, e: Entry, lock_deadline: float) -> None:
        """A retiring entry whose worker would not finish in time (``close()``): kill its
        worker if it still runs (SIGKILL: also ends a stopped one) and wait for it; then
        make its ring refuse producers -- one that never left its batch may still publish
        (its frames are then counted ``queue_full`` by that producer) -- before the
        retirement empties it.  A producer stopped inside the ring's lock is waited for
        only until ``lock_deadline``; the slot is then quarantined."""
        w = e.life.worker
        if w is not None and w.is_alive():
            w.kill()
            w.join()
            self.record("abandoned", e, w.pid, exitcode=w.exitcode)
        if not e.ring.kill(lock_deadline):
            e.life.quarantined = True

    def kill_all(self, entries: Iterable[Entry]) -> None:
        """SIGKILL every worker and its process group (what its handler started:
        descendants.py), without waiting (the controller is exiting)."""
        for e in entries:
            w = e.life.worker
            if w is not None and w.pid:
                if exited_unreaped(w.pid) is not None:  # our child, not reaped: its own id
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(w.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)  # not yet in its group, or left it

    def _reap(self, e: Entry) -> None:
        """Wait for ``e``'s exited worker, keeping its last report."""
        w = e.life.worker
        if w is not None:
            _keep_report(e, w.receive())
            w.join()

    def _exited_clean(self, e: Entry) -> bool:
        """Its worker drained the ring, committed every outcome and holds nothing."""
        cons, prod = e.ring.positions()
        committed = int(e.record.read()[KthreadCounter.COMMITTED])
        return prod == cons and e.ring.hand_count() == 0 and cons == committed

    def _collect(self, e: Entry) -> None:
        """Move ``e``'s workers' reports into :attr:`results`."""
        life = e.life
        exitcode = life.worker.exitcode if life.worker is not None else None
        for msg in life.reports:
            self.results.append(
                WorkerResult(
                    e.key,
                    e.cpu,
                    e.generation,
                    msg.result,
                    msg.error,
                    exitcode,
                    msg.outputs,
                    msg.user_errors,
                    msg.finish_error,
                )
            )
        life.reports.clear()


def exit_status(code: int | None) -> str:
    """How a process ended, in words: "exited with status 5", "was killed by SIGKILL"."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _keep_report(e: Entry, msg: WorkerMessage | None) -> None:
    """Keep a running worker's message for collection: only its last one, ``Exited``, is a
    report (``Ready`` was read by :meth:`Supervisor.start`; nothing comes after)."""
    if isinstance(msg, Exited):
        e.life.reports.append(msg)


def _discard_worker(worker: WorkerProcess) -> None:
    """A worker that did not start: kill it, wait for it, free its pipe."""
    worker.kill()
    worker.join()
    worker.close()


def _discard(proc: Any, conn: Any) -> None:
    """A worker whose start was interrupted: kill it if it was forked, free its pipe."""
    conn.close()
    if proc.pid is not None:
        proc.kill()
        proc.join()
