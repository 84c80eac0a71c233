"""The supervisor: the process shell around map entries -- it starts, reaps, recovers and
replaces their worker processes.

The map (``map.py``) decides *what* an entry is (``entry.py``); the supervisor runs the
process that plays it.  Each entry has at most one live worker, a ``WorkerProcess``
(worker.py): a process forked from the controlling process (the handler, a closure even, needs no
pickling), pinned to the entry's CPU, with a pipe on which it says "ready" once its
handler's ``setup()`` has run, and its results when it exits.

Supervision: a worker found dead while its entry lives (killed, crashed) is recovered --
the frames it held without a committed outcome are counted ``lost`` and returned
(:meth:`Supervisor.recover`, the supervisor's half of worker.py's commit protocol) -- and
replaced by a new worker on the same ring, which continues the dead one's counters.
Who notices: the map's supervisor thread (watcher.py argues the choice), within
milliseconds of the death; every map operation, ``stats()`` and ``poll()`` too.

Restarts are rate-limited with a decay (:class:`RestartPolicy`), not a lifetime count: each
death adds one to the entry's *heat*, which halves every ``half_life`` seconds; an entry
whose heat exceeds ``burst``, or whose replacement cannot start, is *broken*
(entry.py): unpublished, so that a redirect to it is a redirect error, its ring killed,
what it held counted ``lost``.  Every death, restart, break and stuck worker is recorded
as a :class:`WorkerEvent`.

RX producers are supervised too (:meth:`Supervisor.supervise_producers`): a producer slot
whose owner process died is claimed by the controller, and the partition it left is
recovered whole (ownership.py), its frames counted ``lost``.

Forking happens only on the map's supervisor thread (watcher.py: why), or, failing it, in
the map's own thread; a supervision from another thread (a metrics scrape calling
``stats()``) only reads.

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
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import HandlerSetupError
from ..programs.contract import WorkerInfo
from ..programs.user_errors import UserError
from .counters import KthreadCounter
from .entry import Entry, EntryEvent, EntryState
from .frame_pool import TAG_HAND, FramePool
from .messages import Exited, Ready, SetupFailed, WorkerMessage
from .ownership import recover_partition, unpublished
from .pids import pid_alive
from .worker import WorkerProcess, WorkerSpec, worker_main

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

    def allows(self, e: Entry, now: float) -> bool:
        """Count one death of ``e``'s worker at ``now``; whether it may be replaced."""
        if e.heat_at:
            e.heat *= 0.5 ** ((now - e.heat_at) / self.half_life)
        e.heat += 1.0
        e.heat_at = now
        return e.heat <= self.burst


@dataclass(frozen=True)
class WorkerEvent:
    """Something that happened to a map's processes: ``kind`` is one of ``died`` (a worker
    exited while its entry needed it), ``restarted``, ``broken``, ``stuck`` (work waiting,
    no progress for the map's ``stuck_after``), ``abandoned`` (killed by ``close()``),
    ``producer_died`` (an RX producer's process died; ``key`` is its producer slot)."""

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


class Supervisor:
    """Starts and watches the worker processes of one map's entries."""

    def __init__(
        self,
        shared: MapShared,
        pool: FramePool,
        handler: Any,
        *,
        home: object,
        batch_size: int,
        idle_timeout: float,
        busy_poll: float,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.shared = shared
        self.pool = pool
        self.handler = handler
        self.home = home
        self.batch_size = batch_size
        self.idle_timeout = idle_timeout
        self.busy_poll = busy_poll
        self.results: list[WorkerResult] = []
        self.policy = policy or RestartPolicy()
        self.events: deque[WorkerEvent] = deque(maxlen=1024)
        self.producer_lost = 0  # frames recovered from dead producers (also in their records)
        self.deaths = 0  # workers found dead while their entry needed them
        self.producer_deaths = 0  # producer processes found dead, their partition recovered
        # Runs a fork on the map's supervisor thread (watcher.py); None: fork here.
        self.fork_on: Callable[[Callable[[], Any]], Any] | None = None
        self.forks_on_long_lived_thread: Callable[[], bool] = lambda: False
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
        info = WorkerInfo(
            self.shared.map_id, e.key, e.cpu, e.qsize, e.slot, e.generation, pinned=True
        )
        spec = WorkerSpec(
            pool=self.pool,
            shared=self.shared,
            info=info,
            handler=self.handler,
            batch_size=self.batch_size,
            idle_timeout=self.idle_timeout,
            busy_poll=self.busy_poll,
            resume_counters=resume,
            second_stage=e.program,
            home=self.home,
            parent_pid=os.getpid(),
            forked_by_long_lived_thread=self.forks_on_long_lived_thread(),
        )
        if e.worker is not None:  # a dead predecessor (this is a restart): free its fds
            e.worker.join()
            e.worker.close()
            e.worker = None
        r, w = self._mp.Pipe(duplex=False)
        proc = self._mp.Process(
            target=worker_main,
            args=(spec, w),
            name=f"cpumap/{e.key}/map:{self.shared.map_id}",
            daemon=True,
        )
        try:
            if self.fork_on is not None:
                self.fork_on(proc.start)
            else:
                proc.start()
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
        worker = WorkerProcess(proc, r, pinned=True)
        try:
            msg = worker.receive(START_TIMEOUT)
        except BaseException:
            _discard_worker(worker)
            raise
        match msg:
            case Ready(pinned=pinned):
                worker.pinned = pinned
            case SetupFailed(error=error):
                _discard_worker(worker)
                raise HandlerSetupError(f"worker for CPU {e.key} did not start:\n{error}")
            case _:  # None (it died, or said nothing in time), or not its first message
                _discard_worker(worker)
                raise HandlerSetupError(
                    f"worker for CPU {e.key} did not start:\nworker exited before it was ready"
                )
        e.worker = worker
        self.shared.set_worker_pid(e.slot, worker.pid)

    # -- watching ----------------------------------------------------------------------------
    def supervise(self, e: Entry, restart: bool = True) -> None:
        """Read what ``e``'s worker reported; a worker that exited while it still had work
        to do died: recover and (``restart``) replace it, or break the entry."""
        w = e.worker
        if w is None:  # no worker could be started again: broken
            if e.broken:
                self.recover(e, drop_queued=True)
            return
        if w.has_report():
            _keep_report(e, w.receive())
        if w.is_alive():
            return
        if e.state == EntryState.DRAINING and w.exitcode == 0 and len(e.ring) == 0:
            return  # a clean exit: the map finishes the retirement
        if e.broken:
            self.recover(e, drop_queued=True)  # nobody consumes: keep the ring empty
            return
        if not restart:
            return  # the next supervision from a thread that may fork does the rest
        lost = self.recover(e, drop_queued=False)
        e.last_exitcode = w.exitcode
        self.deaths += 1
        self.record("died", e, w.pid, exitcode=w.exitcode, lost=lost)
        if not self.policy.allows(e, time.monotonic()):
            self.collect(e)
            self.break_entry(e)
            return
        self.collect(e)
        try:
            self.start(e, e.record.read())
        except (OSError, HandlerSetupError):
            self.break_entry(e)
            return
        e.restarts += 1
        self.record("restarted", e, e.worker.pid if e.worker is not None else 0)

    def break_entry(self, e: Entry) -> None:
        """Its workers keep dying: nobody will consume its ring.  Unpublish it (a redirect
        to it is a redirect error from now on), kill its ring (a producer waiting on it
        gives up: lossless flushes resume), and count what it held ``lost``."""
        e.broken = True
        if e.state == EntryState.ACTIVE:
            e.fire(EntryEvent.BROKE)
            self.shared.publish(e.key, -1)
        if e.worker is not None and not e.worker.is_alive():
            e.worker.join()
            e.worker.close()
            e.worker = None
        if not e.ring.kill(time.monotonic() + _KILL_LOCK_WAIT):
            e.quarantined = True  # a stopped producer holds its lock: it may still publish
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
            self.producer_lost += lost
            self.producer_deaths += 1
            self.events.append(
                WorkerEvent(time.monotonic_ns(), "producer_died", p, -1, 0, owner, lost=lost)
            )
        return total

    # -- progress (worker.py's heartbeat) -------------------------------------------------------
    def check_progress(self, entries: Iterable[Entry], stuck_after: float) -> None:
        """Report (once per episode) a worker that has work waiting and made no progress
        for ``stuck_after`` seconds: stuck in its handler, or stopped."""
        now = time.monotonic()
        for e in entries:
            if e.worker is None:
                continue
            if self.stuck(e, time.monotonic_ns(), stuck_after):
                if not e.stuck_since:
                    e.stuck_since = now
                    self.record("stuck", e, e.worker.pid)
            else:
                e.stuck_since = 0.0

    def heartbeat_age(self, e: Entry, now_ns: int) -> float:
        """Seconds since ``e``'s worker last made progress (-1: none reported yet)."""
        beat = self.shared.heartbeat(e.slot)
        return (now_ns - beat) / 1e9 if beat else -1.0

    def stuck(self, e: Entry, now_ns: int, stuck_after: float) -> bool:
        """Work waiting (in the ring or in hand) and no progress for ``stuck_after``."""
        has_work = len(e.ring) > 0 or e.ring.hand_count() > 0
        return has_work and self.heartbeat_age(e, now_ns) > stuck_after

    def exited(self, e: Entry) -> bool:
        """Whether ``e`` has no live worker."""
        return e.worker is None or not e.worker.is_alive()

    def wait(self, entries: Iterable[Entry], timeout: float) -> None:
        """Sleep until a worker of ``entries`` exits or reports, or ``timeout`` passes."""
        waitables: list[Any] = []
        for e in entries:
            if e.worker is not None and e.state != EntryState.RETIRED:
                waitables.extend(e.worker.waitables())
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
        ring, pool = e.ring, self.pool
        before = e.lost
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
                e.lost += len(held)
            pool.release(held)
        end = cons
        if drop_queued and len(queued):
            e.lost += len(queued)
            pool.release(queued)
            end = prod
        ring.reset_consumer(end)
        rec[KthreadCounter.COMMITTED] = end
        e.record.publish(rec)
        return e.lost - before

    # -- the end of a worker ----------------------------------------------------------------
    def reap(self, e: Entry) -> None:
        """Wait for ``e``'s exited worker, keeping its last report."""
        if e.worker is None:
            return
        _keep_report(e, e.worker.receive())
        e.worker.join()

    def kill(self, e: Entry) -> None:
        """Kill ``e``'s worker if it still runs (SIGKILL: also ends a stopped one), and
        wait for it."""
        if e.worker is not None and e.worker.is_alive():
            pid = e.worker.pid
            e.worker.kill()
            e.worker.join()
            self.record("abandoned", e, pid, exitcode=e.worker.exitcode)

    def collect(self, e: Entry) -> None:
        """Move ``e``'s workers' reports into :attr:`results`."""
        exitcode = e.worker.exitcode if e.worker is not None else None
        for msg in e.results:
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
                )
            )
        e.results.clear()

    def kill_all(self, entries: Iterable[Entry]) -> None:
        """SIGKILL every worker, without waiting (the controller is exiting)."""
        for e in entries:
            if e.worker is not None:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(e.worker.pid, signal.SIGKILL)

    def release(self, e: Entry) -> None:
        """Free ``e``'s reaped worker's pipe and process handle."""
        if e.worker is not None:
            e.worker.close()


def _keep_report(e: Entry, msg: WorkerMessage | None) -> None:
    """Keep a running worker's message for :meth:`Supervisor.collect`: only its last one,
    ``Exited``, is a report (``Ready`` was read by ``start``; nothing else comes after)."""
    if isinstance(msg, Exited):
        e.results.append(msg)


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
