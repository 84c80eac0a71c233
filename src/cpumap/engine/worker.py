"""The worker: one process per map entry, pinned to its CPU -- the kernel's cpumap kthread.

Theory of operation
-------------------
The worker consumes its entry's ring in batches of up to ``batch_size`` frames (the
kernel's CPUMAP_BATCH is 8; ours is chosen by measurement, see bench_engine.py), builds
the skb (skb/build.py), and hands it to the user's handler -- our "network stack" -- which
accepts it or drops it.  The frames then go back to the pool.  With the ring empty the
worker sleeps and is woken by a producer's flush (ring.py argues why no wake-up is lost);
conversely each ``take`` that frees slots wakes a lossless producer that sleeps for room
(one flag load per batch when none does).

It exits only when told to stop *and* its ring is empty, like the kernel's::

    while (!kthread_should_stop() || !__ptr_ring_empty(rcpu->queue))

The stop request comes after a grace period (rcu.py): no producer can publish into this
ring any more, so once the worker has seen ``stop`` a final emptiness check is exact.

Crash-safe commit protocol (why a SIGKILL loses no frame)
---------------------------------------------------------
The worker's batch sits in a *hand* buffer in shared memory.  Per batch, in this order::

    1. take(n)    hand[:n] = next n indices; tag them HAND+slot; hand_n = n;
                  cons_tail += n                                              (ring.py)
    2. build skbs, call the handler, count outcomes locally
    3. commit     kthread record {committed = cons_tail, counters += outcomes}: one store
    4. release    tag[hand] = RETURNED            frames go back to their allocators
    5. hand_n = 0

A supervisor that finds the worker dead reads the last committed record, ``hand_n`` and
the hand buffer (``Supervisor.recover``, supervisor.py).  Of the hand's frames, only those
still tagged ``HAND + slot`` are the dead worker's: a frame it already released (step 4) is
``RETURNED`` -- or reclaimed, reused, even queued into this very ring again, ``QUEUED``
-- and a frame its second stage forwarded carries the other ring's tag.  So:

* ``committed < cons_tail``: died between 1 and 3.  Its frames have no outcome: they are
  released and counted ``lost``.
* ``committed == cons_tail``: died between 3 and 5 (outcomes counted, release perhaps
  partial): its frames are released.
* ``hand_n == 0``, or died before storing it: nothing was in hand (frames still in the
  ring are the next worker's).

Frames dropped by a second stage at a full target ring are retagged ``HAND + slot``
before they are set aside for release after the commit (second_stage.py), so they too
are found; so are frames it tagged for another ring but never published (a forward cut
short: ownership.py).  Frames in the ring were never touched; a replacement worker takes
them.

Heartbeat: the worker stores ``time.monotonic_ns()`` in its slot's heartbeat word before
and after every batch and whenever it wakes up, so that the controller can tell a worker
stuck in its handler (work waiting, no progress) from an idle one (the supervisor reports
it: ``Supervisor.check_progress``).

Failure containment: whatever the handler returns or raises (any ``BaseException``), and
whatever a second-stage program does, ends as a counted outcome of the batch; the worker
lives on.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
import traceback
from dataclasses import dataclass, replace
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _atomics as at
from ..programs import contract, user_errors
from ..programs.contract import WorkerInfo
from ..skb import frame_skbs, skb_batch
from .counters import KTHREAD_WORDS, KthreadCounter
from .descendants import (
    adopt_descendants,
    end_group,
    exit_if_copy,
    exited_unreaped,
    join_group,
    kill_descendants,
)
from .frame_pool import TAG_HAND, TAG_RETURNED, FramePool
from .messages import Exited, Ready, SetupFailed, WorkerMessage
from .ring import OFF_WAKE_SEQ, WAIT_NOT_SLEPT, WAIT_TIMEOUT
from .second_stage import SecondStage

if TYPE_CHECKING:
    from .control import MapShared

DEFAULT_BATCH = 1024  # CPUMAP_BATCH is 8 in the kernel; see the module docstring
DEFAULT_BUSY_POLL = 0.0005  # seconds a worker polls its empty ring before sleeping
DEFAULT_IDLE_TIMEOUT = 2.0  # seconds a sleeping worker waits before re-checking anyway

_K = KthreadCounter


@dataclass(frozen=True)
class WorkerConfig:
    """How every worker of one map runs: fixed when the map is created."""

    handler: Any  # the "network stack" (programs/contract.py)
    batch_size: int  # frames per batch, at most (the kernel's CPUMAP_BATCH)
    idle_timeout: float  # seconds a sleeping worker waits before re-checking anyway
    busy_poll: float  # seconds to poll an empty ring (yielding) before sleeping


@dataclass
class WorkerSpec:
    """Everything a worker needs; inherited through fork, never pickled.  The worker finds
    its ring, hand, record and event log in ``shared`` at ``info.slot``."""

    pool: FramePool
    shared: MapShared
    info: WorkerInfo
    config: WorkerConfig
    resume_counters: np.ndarray | None = None  # a replacement worker continues these
    second_stage: Any = None  # the entry's program on this CPU (second_stage.py)
    parent_pid: int = 0  # the controlling process
    forked_by_long_lived_thread: bool = True  # the map's supervisor thread forked us


class WorkerProcess:
    """One worker process of an entry, and the pipe it reports on.

    Its ``pid`` and, once it has exited, its ``exitcode`` stay readable after
    :meth:`close` (a handle kept by a tool outlives the entry's retirement).  Whoever
    first sees it exited -- :meth:`is_alive`, :meth:`join` -- kills what is left of its
    process group (descendants.py), before reaping it where it can."""

    def __init__(self, proc: Any, conn: Any, pinned: bool) -> None:
        self._proc = proc
        self._conn = conn
        self.pinned = pinned
        self._pid: int = proc.pid or 0
        self._exitcode: int | None = None
        self._closed = False
        self._group_ended = False
        if self._pid:
            join_group(self._pid)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def exitcode(self) -> int | None:
        """Its exit status once exited and reaped (negative: the signal that killed it)."""
        return self._exitcode if self._closed else self._proc.exitcode

    def is_alive(self) -> bool:
        if self._closed:
            return False
        self._end_group_if_exited()
        return bool(self._proc.is_alive())

    def kill(self) -> None:
        if not self._closed:
            self._proc.kill()

    def join(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout``) for it to exit, then end its group and reap it.  Waits
        on a pidfd, not on its sentinel pipe: a handler's children inherit the pipe's
        write end and keep it open after the worker has exited."""
        if self._closed:
            return
        if self._pid:
            with contextlib.suppress(OSError):
                fd = os.pidfd_open(self._pid)
                try:
                    select.select([fd], [], [], timeout)
                finally:
                    os.close(fd)
        self._end_group_if_exited()
        self._proc.join(0 if timeout is not None else None)

    def _end_group_if_exited(self) -> None:
        """Its descendants go once it has exited (descendants.py argues the order)."""
        if self._group_ended or not self._pid:
            return
        state = exited_unreaped(self._pid)
        if state is False:
            return
        self._group_ended = True
        end_group(self._pid, reaped=state is None)

    def waitables(self) -> list[Any]:
        """What to wait on for its exit or its next report."""
        if self._closed:
            return []
        if self._conn.closed:
            return [self._proc.sentinel]
        return [self._proc.sentinel, self._conn]

    def has_report(self) -> bool:
        return not self._conn.closed and bool(self._conn.poll())

    def receive(self, timeout: float = 0.0) -> WorkerMessage | None:
        """Its next message (messages.py), or None (none within ``timeout``, or it is
        gone)."""
        if self._conn.closed:
            return None
        try:
            if self._conn.poll(timeout):
                msg: WorkerMessage = self._conn.recv()
                return msg
        except (EOFError, OSError):
            # The worker is gone and said all it will: stop waiting on this pipe (it
            # would stay readable at EOF and turn every wait into a busy loop).
            self._conn.close()
        return None

    def said_all(self) -> bool:
        """Whether its pipe reached end of file: it exited, or closed its end."""
        return bool(self._conn.closed)

    def close(self) -> None:
        """Free its pipe and its process sentinel (it has exited: join first).  Its pid
        and exit code stay readable."""
        if self._closed:
            return
        self._exitcode = self._proc.exitcode
        self._conn.close()
        self._proc.close()
        self._closed = True


def worker_main(spec: WorkerSpec, result_conn: Any) -> None:
    """Entry point of the worker process (after fork)."""
    # Die with the controlling process: nothing may outlive it (see shm.py).  The kernel's
    # parent-death signal fires when the *thread* that forked us exits; workers are forked
    # by the map's supervisor thread, which lives until the map is closed, so it is armed
    # (SIGKILL: it also ends a stopped worker, and needs no handler to run).  A watchdog
    # thread covers a fork from elsewhere.
    if spec.forked_by_long_lived_thread:
        at.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != spec.parent_pid:  # the parent died before we armed anything
        os._exit(1)
    # And what the handler starts dies with us (descendants.py).
    adopt_descendants()
    _watch_parent(spec.parent_pid)
    # Ctrl-C goes to the whole process group; the controller decides how to stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve(spec, result_conn)
    finally:
        kill_descendants()


def _serve(spec: WorkerSpec, result_conn: Any) -> None:
    """Set up, report ready, consume until told to stop, finish, report."""
    pinned = _pin(spec.info.cpu)
    info = replace(spec.info, pinned=pinned)
    stage = None
    try:
        if spec.second_stage is not None:
            stage = SecondStage(spec.second_stage, spec.shared, spec.pool, info.slot)
            stage.setup(info)
        contract.setup(spec.config.handler, info)
    except BaseException as e:
        exit_if_copy()
        _send_last(result_conn, SetupFailed("".join(traceback.format_exception(e))))
        return
    exit_if_copy()
    result_conn.send(Ready(pinned))
    _send_last(result_conn, _run(spec, stage, pinned))


def _send_last(conn: Any, msg: WorkerMessage) -> None:
    """Send the worker's last message and close the pipe.  A result that cannot be
    pickled (whatever its ``__reduce__`` raises, a BaseException too) must not lose the
    report: an ``Exited`` saying why goes instead, with the user errors (ours: strings and
    counts, they always pickle).  A pipe the handler closed takes nothing: the supervisor
    then names the missing report (supervisor.py)."""
    try:
        data = ForkingPickler.dumps(msg)
    except BaseException as e:
        if not isinstance(msg, Exited):
            raise
        why = f"finish() failed: its result cannot be sent: {e!r}"
        data = ForkingPickler.dumps(
            Exited(msg.pinned, error=why, user_errors=msg.user_errors, finish_error=why)
        )
    with contextlib.suppress(OSError, ValueError):  # closed under us (by the handler)
        conn.send_bytes(data)
        conn.close()


def _run(spec: WorkerSpec, stage: SecondStage | None, pinned: bool) -> Exited:
    """Consume until told to stop, then finish: the worker's last message."""
    result: Any = None
    outputs: tuple[Any, ...] = ()
    error = finish_error = None
    try:
        Worker(spec, stage).run()
    except BaseException as e:  # report, never hang: the controller reaps us
        error = "".join(traceback.format_exception(e))
    else:
        try:
            handler = spec.config.handler
            if contract.has_finish(handler):
                result = contract.finish(handler)
            if stage is not None:
                outputs = tuple(stage.finish())
        except BaseException as e:
            error = "".join(traceback.format_exception(e))
            finish_error = f"finish() failed: {e!r}"
        exit_if_copy()  # a fork made in finish() returns here: it must not report
    errors = tuple(user_errors.LOG.report(cpu=spec.info.cpu))
    return Exited(pinned, result, error, outputs, errors, finish_error)


def _watch_parent(parent: int, interval: float = 0.25) -> None:
    """A daemon thread that kills this process once its parent is gone (we are then
    re-parented, and ``getppid`` changes): at most ``interval`` late, one wake-up each."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="cpumap-parent-watch", daemon=True).start()


def _pin(cpu: int) -> bool:
    try:
        os.sched_setaffinity(0, {cpu})
        return True
    except OSError:
        # Possible but not allowed to us (offline, cpuset): run unpinned, say so.
        return False


class Worker:
    """The consume loop.  Runs in the worker process only."""

    def __init__(self, spec: WorkerSpec, stage: SecondStage | None = None) -> None:
        slot = spec.info.slot
        shared = spec.shared
        self.spec = spec
        self.stage = stage
        self.pool = spec.pool
        self.ring = shared.ring(slot)
        self.record = shared.kthread_record(slot)
        self.events = shared.kthread_log(slot)
        self.handler = spec.config.handler
        self.batch_size = spec.config.batch_size
        self.counters = np.zeros(KTHREAD_WORDS, dtype=np.int64)
        if spec.resume_counters is not None:
            self.counters[:] = spec.resume_counters
        self.counters[_K.COMMITTED] = self.ring.positions()[0]
        self._hand = shared.hand(slot)
        self._heartbeat = shared.heartbeat_address(slot)
        at.store_u64(self._heartbeat, time.monotonic_ns())
        self._tags = spec.pool.tag
        self._in_hand = TAG_HAND + slot
        self._sched = 0
        self._deliver = (
            self._deliver_batch if contract.is_batch_handler(self.handler) else self._deliver_each
        )

    def run(self) -> None:
        ring = self.ring
        beat = self._heartbeat
        while True:
            exit_if_copy()  # a handler's fork that returned from it: never a consumer
            avail = ring.available()
            if avail:
                at.store_u64(beat, time.monotonic_ns())
                self._process(
                    ring.take(min(avail, self.batch_size), self._hand, self._tags, self._in_hand)
                )
                continue
            at.store_u64(beat, time.monotonic_ns())
            if ring.stop_requested():
                # stop is set after the grace period: the tail is final, recheck once.
                if ring.available() == 0:
                    return
                continue
            self._sleep()

    def _sleep(self) -> None:
        ring = self.ring
        if self.spec.config.busy_poll > 0 and self._busy_poll():
            return
        seq = at.load_u32(ring.hdr + OFF_WAKE_SEQ)
        rc = ring.wait(self.spec.config.idle_timeout)
        if rc == WAIT_NOT_SLEPT:
            return
        self._sched = 1
        self.counters[_K.SLEEPS] += 1
        if rc == WAIT_TIMEOUT and ring.available():
            # Work waited while we slept.  Legitimate only if a producer is between its
            # publish and its wake (it saw us sleeping): then wake_seq moves very soon.
            deadline = time.monotonic() + 0.2
            while at.load_u32(ring.hdr + OFF_WAKE_SEQ) == seq and time.monotonic() < deadline:
                os.sched_yield()
            if at.load_u32(ring.hdr + OFF_WAKE_SEQ) == seq:
                self.counters[_K.LATE_WAKEUPS] += 1

    def _busy_poll(self) -> bool:
        """Poll the empty ring for up to ``busy_poll`` seconds before going to sleep,
        yielding the CPU each time (to the RX producer, if it shares this CPU).  A frame
        that arrives meanwhile costs no futex wake-up on either side -- a wake-up costs
        the producer a syscall and, on a shared CPU, a context switch per flush.
        (NAPI busy polling, or AF_XDP without need_wakeup.)"""
        ring = self.ring
        deadline = time.monotonic() + self.spec.config.busy_poll
        while time.monotonic() < deadline:
            if ring.available() or ring.stop_requested():
                return True
            os.sched_yield()
        return False

    def _process(self, idx: np.ndarray) -> None:
        n = len(idx)
        c = self.counters
        stage = self.stage.run(idx) if self.stage is not None else None
        deliver = idx if stage is None else stage.passed
        delivered, hdrop, herr, bfail = self._deliver(deliver) if len(deliver) else (0, 0, 0, 0)
        exit_if_copy()  # a handler forked: its copy of the batch is not to be committed
        drops = hdrop + herr + bfail
        c[_K.PROCESSED] += n
        c[_K.BATCHES] += 1
        c[_K.DELIVERED] += delivered
        c[_K.HANDLER_DROP] += hdrop
        c[_K.HANDLER_ERROR] += herr
        c[_K.BUILD_FAILED] += bfail
        c[_K.DROPS] += drops
        c[_K.SCHED] += self._sched
        c[_K.COMMITTED] += n
        ev_stage = (0, 0, 0)
        if stage is not None:
            c[_K.XDP_PASS] += stage.n_pass
            c[_K.XDP_DROP] += stage.n_drop
            c[_K.XDP_REDIRECT] += stage.n_redirect
            c[_K.REDIRECT_OUT] += stage.n_out
            c[_K.FWD_QUEUE_FULL] += stage.fwd_queue_full
            c[_K.HOP_LIMIT] += stage.hop_limit
            ev_stage = (stage.n_pass, stage.n_drop, stage.n_redirect)
        if self.events.enabled:
            # Before the commit: whoever sees the outcomes can see the event too.
            info = self.spec.info
            self.events.emit(
                (time.monotonic_ns(), info.map_id, n, drops, self._sched, info.cpu, *ev_stage)
            )
        self._sched = 0
        self.record.publish(c)  # 3. commit
        # 4. release: every frame still ours (a second stage may have forwarded some).
        if stage is None:
            self.pool.tag[idx] = TAG_RETURNED
        else:
            if len(deliver):
                self.pool.tag[deliver] = TAG_RETURNED
            for part in stage.release:
                self.pool.tag[part] = TAG_RETURNED
        self.ring.drop_hand()  # 5.

    # -- delivery: (delivered, handler_drop, handler_error, build_failed) -------------------
    def _deliver_each(self, idx: np.ndarray) -> tuple[int, int, int, int]:
        handler = self.handler
        delivered = hdrop = herr = bfail = 0
        try:
            for skb in frame_skbs(self.pool, idx):
                if skb is None:
                    bfail += 1
                    continue
                try:
                    r = handler(skb)
                except BaseException as e:  # SystemExit too: the handler fails, not the worker
                    user_errors.record("handler", e)
                    herr += 1
                    continue
                if r is False:
                    hdrop += 1
                else:
                    delivered += 1
        except Exception:  # building an skb failed below the handler: the rest are failures
            bfail = len(idx) - delivered - hdrop - herr
        return delivered, hdrop, herr, bfail

    def _deliver_batch(self, idx: np.ndarray) -> tuple[int, int, int, int]:
        n = len(idx)
        try:
            batch = skb_batch(self.pool, idx)
        except Exception as e:
            user_errors.record("skb build", e, count=n)
            return 0, 0, 0, n
        try:
            r = self.handler(batch)
        except BaseException as e:  # SystemExit too: the handler's failure, not the worker's
            user_errors.record("handler", e, count=n)
            return 0, 0, n, 0
        if r is None:
            return n, 0, 0, 0
        ok = _accepted_count(r, n)
        if ok is None:
            user_errors.note_batch_handler_return(r, n)
            return 0, 0, n, 0  # not a verdict per frame: a handler error
        return ok, n - ok, 0, 0


def _accepted_count(r: object, n: int) -> int | None:
    """How many frames a batch handler's result accepts: a bool per frame, or None when
    it is not one (ragged, unconvertible, wrong shape or type: numpy's conversion runs
    user code -- ``__array__``, ``__len__`` -- that may raise anything)."""
    try:
        accepted = np.asarray(r)
        if accepted.shape != (n,) or accepted.dtype != np.bool_:
            return None
        return int(np.count_nonzero(accepted))
    except BaseException:
        return None
