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
replaced by a new worker on the same ring, which continues the dead one's counters.  An
entry whose workers die more than :data:`MAX_RESTARTS` times, or whose replacement cannot
start, is *broken*: nobody consumes its ring, and what reaches it is counted ``lost``.

Forking happens only in the map's own thread (``restart=True``): a supervision from another
thread (a metrics scrape calling ``stats()``) only reads; the next supervision from the
map's thread does the rest.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..programs.contract import WorkerInfo
from .counters import KthreadCounter
from .entry import Entry, EntryState
from .frame_pool import TAG_HAND, FramePool
from .worker import WorkerProcess, WorkerSpec, worker_main

if TYPE_CHECKING:
    from .control import MapShared

START_TIMEOUT = 60.0  # seconds for a new worker to report ready
MAX_RESTARTS = 8  # replacement workers per entry before it is declared broken


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
    user_errors: list[Any] = field(default_factory=list)  # programs/user_errors.py dicts


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
    ) -> None:
        self.shared = shared
        self.pool = pool
        self.handler = handler
        self.home = home
        self.batch_size = batch_size
        self.idle_timeout = idle_timeout
        self.busy_poll = busy_poll
        self.results: list[WorkerResult] = []
        self._mp = multiprocessing.get_context("fork")

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
            forked_by_main_thread=threading.current_thread() is threading.main_thread(),
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
            proc.start()
        except OSError as exc:
            r.close()
            w.close()
            raise OSError(
                errno.ENOMEM, f"{os.strerror(errno.ENOMEM)}: cannot start a worker: {exc}"
            ) from exc
        w.close()
        worker = WorkerProcess(proc, r, pinned=True)
        msg = worker.receive(START_TIMEOUT)
        if not msg or not msg.get("ready"):
            worker.kill()
            worker.join()
            worker.close()
            error = (msg or {}).get("error", "worker exited before it was ready")
            raise HandlerSetupError(f"worker for CPU {e.key} did not start:\n{error}")
        worker.pinned = bool(msg.get("pinned", True))
        e.worker = worker
        self.shared.set_worker_pid(e.slot, worker.pid)

    # -- watching ----------------------------------------------------------------------------
    def supervise(self, e: Entry, restart: bool = True) -> None:
        """Read what ``e``'s worker reported; a worker that exited while it still had work
        to do died: recover and (``restart``) replace it."""
        w = e.worker
        if w is None:  # no worker could be started again: broken
            if e.broken:
                self.recover(e, drop_queued=True)
            return
        if w.has_report():
            msg = w.receive()
            if msg is not None:
                e.results.append(msg)
        if w.is_alive():
            return
        if e.state == EntryState.DRAINING and w.exitcode == 0 and len(e.ring) == 0:
            return  # a clean exit: the map finishes the retirement
        if e.broken:
            self.recover(e, drop_queued=True)  # nobody consumes: keep the ring empty
            return
        if not restart:
            return  # the next supervision from the map's own thread recovers and replaces
        self.recover(e, drop_queued=False)
        e.restarts += 1
        if e.restarts > MAX_RESTARTS:
            e.broken = True
            self.recover(e, drop_queued=True)
            return
        self.collect(e)
        try:
            self.start(e, e.record.read())
        except (OSError, HandlerSetupError):
            e.broken = True
            self.recover(e, drop_queued=True)

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
    def recover(self, e: Entry, *, drop_queued: bool) -> None:
        """Return the frames a dead worker held.

        With ``drop_queued`` (no worker will come: a broken entry, or one being retired
        after its worker died), the frames queued in its ring are released and counted
        ``lost`` too.  Precondition: the entry's worker is dead.
        """
        ring, pool = e.ring, self.pool
        rec = e.record.read()
        cons, prod = ring.positions()
        committed = int(rec[KthreadCounter.COMMITTED])
        queued = ring.contents(cons, prod) if prod > cons else np.zeros(0, np.uint32)
        n_hand = ring.hand_count()
        if n_hand:
            hand = self.shared.hand(e.slot)[:n_hand].copy()
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
        rec[KthreadCounter.COMMITTED] = end
        e.record.publish(rec)

    # -- the end of a worker ----------------------------------------------------------------
    def reap(self, e: Entry) -> None:
        """Wait for ``e``'s exited worker, keeping its last report."""
        if e.worker is None:
            return
        msg = e.worker.receive()
        if msg is not None:
            e.results.append(msg)
        e.worker.join()

    def kill(self, e: Entry) -> None:
        """Kill ``e``'s worker if it still runs, and wait for it."""
        if e.worker is not None and e.worker.is_alive():
            e.worker.kill()
            e.worker.join()

    def collect(self, e: Entry) -> None:
        """Move ``e``'s workers' reports into :attr:`results`."""
        exitcode = e.worker.exitcode if e.worker is not None else None
        for msg in e.results:
            if msg.get("ready"):
                continue
            self.results.append(
                WorkerResult(
                    e.key,
                    e.cpu,
                    e.generation,
                    msg.get("result"),
                    msg.get("error"),
                    exitcode,
                    msg.get("outputs", []),
                    msg.get("user_errors", []),
                )
            )
        e.results.clear()

    def release(self, e: Entry) -> None:
        """Free ``e``'s reaped worker's pipe and process handle."""
        if e.worker is not None:
            e.worker.close()
