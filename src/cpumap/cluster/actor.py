"""An entry of a cluster map: a Ray actor on its node that takes parcels as a ring does.

The actor is the cluster's cpumap entry: its **queue** is the ring (``qsize`` frames) and its
**worker thread** is the kthread (``cpumap.engine.worker``), pinned to the entry's CPU,
running the user's handler under the same contract (``cpumap.programs.contract``):

* per frame -- ``handler(skb)``, ``False`` drops -- or per batch (a :func:`batch_handler`:
  ``handler(skb_batch)`` returns ``None`` or one boolean per frame);
* ``setup(info)`` once, in the worker thread before its first frame, with a
  :class:`~cpumap.programs.contract.WorkerInfo` whose ``key`` is the entry's key in the
  cluster map and ``cpu`` its CPU on its node; a setup that raises fails the actor's
  creation (the map update);
* ``finish()`` once, when the map retires the entry cleanly, after the queue has drained;
  its result is gathered in ``ClusterMap.results``.

Each handler call's outcomes -- delivered, handler_drop, handler_error, build_failed -- follow
the local worker's ``_deliver_each``/``_deliver_batch`` rules.

Taking a parcel: the producer never waits for the consumer's work
--------------------------------------------------------------------
:meth:`EntryActor.offer` is an ``async`` method, run on the actor's event loop, apart from
the worker thread: it puts the parcel's frames into the queue -- as many as there is room
for -- and answers at once.  What did not fit is refused (drop-and-count: the source
counts it ``queue_full``, the ring's drop) or, for a lossless source, waits *inside the
actor* until the worker has taken enough frames out of the queue, first come first served
(a lossless producer waiting on a full ring).  The worker takes one part at a time out of
the queue -- the room is freed then, as the kthread's dequeue frees ring slots -- and hands
it to the handler.  So a source keeps several parcels in flight and never waits on a
handler, only on a full queue.

A source on this entry's machine makes no call at all: its frames lie in its shared frames
(``shared_frames.py``), which the entry maps at the start of the run
(:meth:`EntryActor.attach_frames`), and each poll's part comes through the entry's
doorbell ring there.  A doorbell thread per source (:class:`Doorbell`) takes the parts
into the same queue under the same rules -- what fits, the rest as room appears
(lossless) or refused -- and the source learns the totals from the tally, or, for an
incarnation that died first, from the totals board it keeps in the source's pool
(``shared_frames.write_totals``: the same running totals, one more report).  The event
loop and Ray are not on that path.

Outcomes are reported later, *cumulatively*: every answer (:class:`Report`) carries, for the
source that asked, this incarnation's running totals of the frames it accepted from that
source, refused, and handled by outcome.  The source keeps the latest totals per
incarnation (:mod:`cpumap.cluster.source`); :meth:`EntryActor.tally` answers the same
totals once the source's frames have all been handled (or at a deadline), to settle a run.

Why no frame is counted twice, or never (the protocol's safety argument)
---------------------------------------------------------------------------
Per source and entry, the source counts ``offered`` (frames put in offers, or published
to the entry's doorbell: the argument below reads "offer" as either).  Each
incarnation ``P`` of the actor (a process; a restart is a new one, with a new ``token``)
keeps, per source, monotone counters ``accepted_P``, ``refused_P`` and ``outcomes_P`` (one
per kind), updated under one lock, with ``outcomes_P <= accepted_P`` (a frame is handled
only after it was accepted).  A report is a consistent snapshot of them.  The source's
books are *derived* from the latest report of each incarnation it heard from::

    queue_full = sum_P refused_P        outcomes = sum_P outcomes_P
    lost       = offered - queue_full - outcomes

* Never twice: each frame of an offer is accepted or refused at most once, by the one
  incarnation that ran the offer (``max_task_retries=0``: Ray never runs an offer again,
  not even on the restarted actor) -- a published part is taken from its ring at most
  once, by the one doorbell that reads the ring (started when the incarnation mapped the
  pool, at the start of the run: a restarted one never reads it) -- and handled at most
  once after that.  Counters are
  totals, not increments: a report that is lost (the actor died before its answer left,
  or the call failed in transit) loses no count, the next report of that incarnation
  carries it, and two reports never add up (the source takes the latest, not the sum).
* Never uncounted: ``sum_P (accepted_P + refused_P) <= offered`` (an incarnation counts only
  frames of offers it ran) and ``outcomes_P <= accepted_P``, so ``lost >= 0`` and every
  offered frame is exactly one of queue_full, an outcome, or lost.  ``lost`` is every frame
  with no known outcome: in an offer whose call failed (in flight when the actor died), in
  the queue or the handler of an incarnation that died before reporting it, or not yet
  reported when the source's deadline passed.
* An actor that dies between accept and outcome: the frames it accepted were reported
  accepted, never as an outcome; its last report is final (it will send no other), so they
  are lost, counted once.  A restarted actor starts from zero counters under a new token:
  its reports are books apart, not a continuation.
* A frame counted lost at a deadline is never handled later: the map kills an entry that is
  not idle (queue empty, worker waiting) within ``alive_timeout`` after the run
  (``ClusterMap.end_run``), and a killed actor's handler results are never gathered.

The actor's counters are per source: a source whose task died leaves its totals in the
entries, and the driver reads them (:meth:`EntryActor.tally`) for what it can still say
about that source's frames (``cpumap.cluster.run``).

Restarts: the actor is created with ``max_restarts`` (Ray re-creates it on its node when its
process dies: ``__init__`` and ``setup`` run again, in a new process) and
``max_task_retries=0`` (above).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Error
from ..programs import contract, user_errors
from ..programs.contract import WorkerInfo
from ..programs.user_errors import UserError
from ..skb import frame_skbs, skb_batch
from .doorbell import DOORBELL_NAP, Doorbell
from .frames import FrameBlock, Parcel, unpack
from .shared_frames import (
    SharedFramesReader,
    SharedHandle,
    SharedPart,
    mark_done,
    write_totals,
)

# Per-source counters of an incarnation, in this order (Report.counts).
REPORT_COUNTERS = (
    "accepted",
    "refused",
    "delivered",
    "handler_drop",
    "handler_error",
    "build_failed",
)
_OUTCOMES = slice(2, 6)
_SWITCH_INTERVAL = 0.0005  # s: the event loop gets the GIL back this soon from the handler


@dataclass(frozen=True, slots=True)
class Report:
    """One incarnation's running totals for one source (:data:`REPORT_COUNTERS`), which
    incarnation (``token``, and its ``pid``) and the queue's depth when it was taken."""

    token: int
    pid: int
    counts: tuple[int, ...]
    queued: int


class PlacementError(Error, OSError):
    """The actor could not be pinned to its CPU on its node (``errno``: ENODEV)."""


@dataclass(frozen=True, slots=True)
class _SlotFlag:
    """A (slot, entry) flag of a source's shared frames: the pool's ``token`` and the
    flag's address here.  The token keeps two pools apart that happen to be mapped at the
    same address one after the other (a count left by one never reaches the other)."""

    token: int
    addr: int


@dataclass(slots=True)
class _Part:
    """Frames ``idx`` of ``block``, of one source, in the queue: the worker's unit of work
    (one handler call).  ``flag``: their (slot, entry) flag when they lie in the source's
    shared frames, with ``total`` the slot's frames for this entry (None: a parcel from
    the object store)."""

    source: int
    block: FrameBlock
    idx: np.ndarray
    flag: _SlotFlag | None = None
    total: int = 0

    def __len__(self) -> int:
        return len(self.idx)

    def split(self, k: int) -> tuple[_Part, _Part]:
        """The first ``k`` frames, and the rest (the same frames, the same slot)."""
        a = _Part(self.source, self.block, self.idx[:k], self.flag, self.total)
        return a, _Part(self.source, self.block, self.idx[k:], self.flag, self.total)


class EntryActor:
    """The body of an entry's Ray actor (made remote by :mod:`cpumap.cluster.map`).

    ``handler`` is the user's handler object (pickled once per actor: each entry has its
    own copy, as each forked worker has), a loader spec string (``"file.py:name"``)
    loaded on the actor's node, or None (accept every frame).  ``info`` is what ``setup``
    is told; ``info.qsize`` bounds the queue; ``info.cpu`` is the CPU the worker thread
    pins itself to (``os.sched_setaffinity``; Ray's own threads of the process are left
    where Ray put them).
    """

    def __init__(self, handler: Any, info: WorkerInfo, pin: bool = True) -> None:
        import sys

        import ray

        ctx = ray.get_runtime_context()
        self.reconstructed = bool(ctx.was_current_actor_reconstructed)
        self.node_id = str(ctx.get_node_id())
        self.pid = os.getpid()
        self.token = int.from_bytes(os.urandom(8), "little")
        if pin and info.cpu not in os.sched_getaffinity(0):
            raise PlacementError(
                errno.ENODEV,  # as CpuMap.update for a CPU that is not there
                f"CPU {info.cpu} is not available on node {self.node_id[:8]} "
                f"(allowed: {sorted(os.sched_getaffinity(0))})",
            )
        if handler is None:
            handler = accept_all
        elif isinstance(handler, str):
            from ..programs.loader import load_handler

            handler = load_handler(handler)
        self.handler = handler
        self.batch = contract.is_batch_handler(handler)
        self.info = WorkerInfo(
            map_id=info.map_id,
            key=info.key,
            cpu=info.cpu,
            qsize=info.qsize,
            slot=info.slot,
            generation=info.generation,
            pinned=pin,
        )
        self.qsize = max(info.qsize, 1)
        # The queue and the counters: shared by the event loop and the worker thread.
        self.lock = threading.Condition()
        self.queue: deque[_Part | None] = deque()  # None: the worker's signal to stop
        self.queued = 0  # frames in the queue (not counting the part in the handler's hands)
        self.max_queued = 0
        self.busy = False  # the worker holds a part
        self.wanted = False  # the event loop waits for progress: the worker must say so
        self.counts: dict[int, np.ndarray] = {}
        self.calls = 0
        # The event loop's side: offers waiting for room, and waiters for progress.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.watchers: list[asyncio.Future[None]] = []
        self.gates: dict[int, tuple[list[int], asyncio.Event]] = {}
        self.offering: dict[int, int] = {}  # per source: its offers still taking frames
        # Frames of sources on this node, where they lie (shared_frames.py): the pools
        # mapped, which source's they are, and per (slot, entry) flag the frames of the
        # slot with no outcome yet -- the flag says DONE when the count reaches 0.
        self.shared = SharedFramesReader()
        self.shared_of: dict[int, set[int]] = {}
        self.slot_left: dict[_SlotFlag, int] = {}
        self.doorbells: dict[int, Doorbell] = {}  # pool token -> its doorbell thread
        # Per source: our totals board in its shared frames (and that pool's token).
        self.boards: dict[int, tuple[int, np.ndarray]] = {}
        self.to_let_go: list[tuple[Any, list[Doorbell]]] = []  # settled: let go at idle
        self.room = threading.Condition(self.lock)  # doorbells waiting for queue room
        self.room_waiters = 0
        sys.setswitchinterval(_SWITCH_INTERVAL)  # offers answer fast beside a busy handler
        self.worker = _start_worker(self, pin, self._progressed)

    # -- the producer's side (the event loop) ------------------------------------------------
    async def offer(self, source: int, parts: list[Any], lossless: bool) -> Report:
        """Put ``parts`` (one source's frames, in order: parcels, or the ``ObjectRef`` of
        a list of them, fetched here) into the queue: what fits now; the rest refused
        (drop-and-count), or for a ``lossless`` source taken as room appears, after the
        offers that were waiting before it.  The source's totals."""
        self._bind_loop()
        rest = [p for p in self._parts(source, await _fetched(parts)) if len(p)]
        if not self._others_waiting():  # nobody before it: what fits goes in now
            rest = self._enqueue(source, rest)
        first_in_line = False
        self.offering[source] = self.offering.get(source, 0) + 1
        try:
            while rest and lossless:
                fut = asyncio.get_running_loop().create_future()
                if first_in_line:  # first, and still too little room: first again
                    self.waiting.appendleft(fut)
                else:
                    self.waiting.append(fut)
                with self.lock:
                    self.wanted = True  # the worker's next progress wakes the first
                await fut
                rest = self._enqueue(source, rest)
                first_in_line = True
        finally:
            self.offering[source] -= 1
            # Room may be left for the next in line -- also when this offer was cancelled
            # (its caller died) after it was woken: the turn must not be lost with it.
            self._wake_next()
        with self.lock:
            self._counts(source)[1] += sum(len(p) for p in rest)
            self.calls += 1
            _slots_done(self.slot_left, rest)  # refused: their slots may be DONE
            _post_totals(self, source)
        return self._report(source)

    async def attach_frames(
        self, source: int, handle: SharedHandle, key: int | None = None, lossless: bool = True
    ) -> int:
        """Map ``source``'s shared frames (``shared_frames.py``): this incarnation's token
        (which the source watches for, as a sign of a restart, while it waits for a
        slot); 0 when they are not on this node (or not mappable here): the source then
        sends through the object store.  With ``key`` (this entry's number among the
        source's), a doorbell thread takes the parts the source publishes to it
        (:class:`Doorbell`), ``lossless`` or not, as offers are taken."""
        if not self.shared.attach(handle):
            return 0
        self.shared_of.setdefault(source, set()).add(handle.token)
        if key is not None and handle.token not in self.doorbells:
            with self.lock:  # from now on, its totals go on its board there too
                self.boards[source] = (handle.token, self.shared.board(handle.token, key))
                _post_totals(self, source)
            ring = self.shared.doorbell(handle.token, key)
            bell = Doorbell(
                ring, source, handle.token, key, lossless, self._from_doorbell, self._wake_room
            )
            self.doorbells[handle.token] = bell
            bell.start()
        return self.token

    async def tally(self, source: int, timeout: float) -> Report:
        """``source``'s totals once every frame it got here has been handled, or when
        ``timeout`` seconds have passed (whatever is handled by then).  Once they all are,
        its shared frames are let go at the run's end (:meth:`idle`) -- not before: its
        doorbells may still hold parts, which a later tally (the driver's, for a source
        that died) or the entry's end will find handled."""
        self._bind_loop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settled = self._settled(source)
        while not settled and loop.time() < deadline:
            fut = loop.create_future()
            self.watchers.append(fut)
            try:
                await asyncio.wait_for(fut, deadline - loop.time())
            except TimeoutError:
                break
            settled = self._settled(source)
        tokens = self.shared_of.pop(source, ()) if settled else ()
        if tokens:  # let go at the run's end (idle): not on the way of any answer
            # The doorbells leave the dict here, on the loop: it is changed nowhere else.
            bells = [self.doorbells.pop(t) for t in tokens if t in self.doorbells]
            self.to_let_go.append((tokens, bells))
        return self._report(source)

    def _from_doorbell(self, bell: Doorbell, n: int) -> None:
        """Take ``n`` parts from ``bell``'s ring into the queue (in ``bell``'s thread;
        :class:`Doorbell` argues why the books stay exact)."""
        with self.lock:
            self.offering[bell.source] = self.offering.get(bell.source, 0) + 1
        try:
            posted = [self.shared.posted(bell.token, s, bell.key) for s in bell.take(n)]
            self._queue_posted(bell, self._parts(bell.source, posted))
        finally:
            with self.lock:
                self.offering[bell.source] -= 1
                wanted, self.wanted = self.wanted, False
            if wanted:  # a tally (or an offer) waits for progress
                self.worker.notify()

    def _queue_posted(self, bell: Doorbell, parts: list[_Part]) -> None:
        """Queue ``parts``: what fits; the rest once room appears (lossless), else
        refused -- their slots DONE with, as for an offer's refused frames."""
        rest = self._enqueue(bell.source, parts)
        while rest and bell.lossless and not bell.stopping:
            with self.lock:
                self.room_waiters += 1
                try:
                    if self.queued >= self.qsize:
                        self.room.wait(DOORBELL_NAP)
                finally:
                    self.room_waiters -= 1
            rest = self._enqueue(bell.source, rest)
        if rest:
            with self.lock:
                self._counts(bell.source)[1] += sum(len(p) for p in rest)
                _slots_done(self.slot_left, rest)
                _post_totals(self, bell.source)

    def _wake_room(self) -> None:
        with self.lock:
            self.room.notify_all()

    def _letting_go(self) -> list[tuple[Any, list[Doorbell]]]:
        """The settled sources' pools and doorbells to let go now (taken: once each)."""
        out, self.to_let_go = self.to_let_go, []
        return out

    def _let_go(self, tokens: Any, bells: list[Doorbell]) -> None:
        """Stop their doorbells, unmap these pools (a thread of the loop's executor: after
        the tally's answer), and forget their counts: a slot whose last frames never came
        here is never DONE now."""
        for bell in bells:
            bell.stop()
            with self.lock:  # its board, unless a later run's pool took its place
                if self.boards.get(bell.source, (0,))[0] == bell.token:
                    del self.boards[bell.source]
        for token in tokens:
            self.shared.forget(token)
            with self.lock:
                for flag in [f for f in self.slot_left if f.token == token]:
                    del self.slot_left[flag]

    async def idle(self, timeout: float) -> bool:
        """Whether the queue is empty and the worker waiting, within ``timeout`` s.  The
        map asks it once every source is done: the pools settled sources left are let go
        then, in the loop's executor.  Not earlier, in the tally: unmapping 128 MiB of
        faulted pages holds the GIL for milliseconds (CPython's ``mmap.close``), which
        delayed the tally's answer -- 3 - 10 ms against 2.2 - 2.6 measured, of a run's
        ~0.12 s."""
        self._bind_loop()
        loop = asyncio.get_running_loop()
        for tokens, bells in self._letting_go():
            loop.run_in_executor(None, self._let_go, tokens, bells)
        deadline = loop.time() + timeout
        while not self._idle():
            if loop.time() >= deadline:
                return False
            fut = loop.create_future()
            self.watchers.append(fut)
            try:
                await asyncio.wait_for(fut, deadline - loop.time())
            except TimeoutError:
                return self._idle()
        return True

    async def gate(self, run: int, sources: int, timeout: float) -> bool:
        """A start line for a run's ``sources`` (asked of the run's first entry): answers
        once they have all arrived -- so they read together, as a local run's producer
        starts once its workers are up, not as Ray happens to start their processes --
        or after ``timeout`` s (False: some did not come)."""
        arrived, event = self.gates.setdefault(run, ([0], asyncio.Event()))
        arrived[0] += 1
        if arrived[0] >= sources:
            event.set()
            self.gates.pop(run, None)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            self.gates.pop(run, None)
            return False
        return True

    def ready(self) -> dict[str, Any]:
        """Where the actor runs: answered once it is constructed (``setup`` done); the
        affinity is the worker thread's, where the handler runs."""
        return {
            "node_id": self.node_id,
            "pid": self.pid,
            "token": self.token,
            "pinned": self.info.pinned,
            "affinity": self.worker.affinity,
            "reconstructed": self.reconstructed,
        }

    def take_user_errors(self) -> list[UserError]:
        """What failed in the handler since the last time asked (the first traceback of
        each kind, and how many: ``programs/user_errors.py``), as a local worker reports
        it; asked once a run is over."""
        errors = user_errors.LOG.report(cpu=self.info.cpu)
        user_errors.LOG.clear()
        return errors

    def stats(self) -> dict[str, Any]:
        """This incarnation's own counters, summed over sources (a cross-check of the
        sources' books), and the queue's high-water mark."""
        with self.lock:
            total = sum(self.counts.values(), np.zeros(len(REPORT_COUNTERS), dtype=np.int64))
            out: dict[str, Any] = dict(zip(REPORT_COUNTERS, map(int, total), strict=True))
            out.update(
                offers=self.calls,
                parts=self.worker.parts,
                queued=self.queued,
                busy=self.busy,
                waiting=len(self.waiting),
                max_queued=self.max_queued,
                qsize=self.qsize,
                reconstructed=self.reconstructed,
                pid=self.pid,
            )
        return out

    async def finish(self) -> Any:
        """Let the queue drain, stop the worker, and call the handler's ``finish()`` (if it
        has one) in the worker thread: the entry's result."""
        # What idle() did not let go yet (the API's own use), and the doorbells of sources
        # whose tally never settled (they died, or timed out).
        unsettled, self.doorbells = list(self.doorbells.values()), {}
        for tokens, bells in [*self._letting_go(), ((), unsettled)]:
            await asyncio.get_running_loop().run_in_executor(None, self._let_go, tokens, bells)
        with self.lock:
            self.queue.append(None)
            self.lock.notify()
        await asyncio.get_running_loop().run_in_executor(None, self.worker.join)
        if self.worker.failure is not None:
            raise self.worker.failure
        return self.worker.result

    # -- internals ----------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()

    def _counts(self, source: int) -> np.ndarray:
        c = self.counts.get(source)
        if c is None:
            c = self.counts[source] = np.zeros(len(REPORT_COUNTERS), dtype=np.int64)
        return c

    def _parts(self, source: int, parcels: list[Any]) -> list[_Part]:
        """The offer's parcels as queue parts: a shared part is its frames where they lie
        (its slot counted in ``slot_left`` until each of them has an outcome)."""
        out = []
        for p in parcels:
            if not isinstance(p, SharedPart):
                block = unpack(p)
                out.append(_Part(source, block, np.arange(block.count, dtype=np.uint32)))
                continue
            if self.shared.attach(p.shared):  # this incarnation's first part: map it
                self.shared_of.setdefault(source, set()).add(p.shared.token)
            block, idx, addr = self.shared.frames(p)
            flag = _SlotFlag(p.shared.token, addr)
            with self.lock:
                self.slot_left.setdefault(flag, p.total)
            out.append(_Part(source, block, idx, flag, p.total))
        return out

    def _enqueue(self, source: int, parts: list[_Part]) -> list[_Part]:
        """Queue what fits of ``parts`` (splitting one at the room left); the rest."""
        with self.lock:
            counts = self._counts(source)
            rest = list(parts)
            while rest:
                room = self.qsize - self.queued
                if room <= 0:
                    break
                p = rest[0]
                if len(p) > room:
                    head, rest[0] = p.split(room)
                else:
                    head = rest.pop(0)
                self.queue.append(head)
                self.queued += len(head)
                counts[0] += len(head)  # accepted before the worker can see it
            self.max_queued = max(self.max_queued, self.queued)
            self.wanted |= bool(rest)  # the caller will wait for room
            _post_totals(self, source)
            self.lock.notify()
        return rest

    def _settled(self, source: int) -> bool:
        """Whether every frame ``source`` offered here is handled or refused (none waits
        for room, none is queued or in the handler's hands)."""
        bells = [b for b in list(self.doorbells.values()) if b.source == source]
        with self.lock:
            c = self.counts.get(source)
            # A doorbell counts in ``offering`` before it takes from its ring: a part is
            # always in the ring, the doorbell's hands, the queue, or has its outcome.
            done = (
                not self.offering.get(source)
                and not any(b.ring.available() for b in bells)
                and (c is None or int(c[_OUTCOMES].sum()) == int(c[0]))
            )
            self.wanted |= not done  # the caller will wait for the worker's progress
            return done

    def _idle(self) -> bool:
        with self.lock:
            idle = not self.queue and not self.busy
            self.wanted |= not idle
            return idle

    def _report(self, source: int) -> Report:
        with self.lock:
            c = self._counts(source)
            return Report(self.token, self.pid, tuple(int(x) for x in c), self.queued)

    def _others_waiting(self) -> bool:
        """Whether an offer waits for room (those whose caller went are dropped)."""
        if any(f.done() for f in self.waiting):
            self.waiting = deque(f for f in self.waiting if not f.done())
        return bool(self.waiting)

    def _wake_next(self) -> None:
        """Room may have appeared: the first waiting offer tries again."""
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _progressed(self) -> None:
        """Called on the event loop when the worker took a part or finished one."""
        self._wake_next()
        watchers, self.watchers = self.watchers, []
        for fut in watchers:
            if not fut.done():
                fut.set_result(None)


# Ray records every call's state changes ("task events") for its dashboard and state API:
# per offer that is work in both processes.  benchmarks/bench_cluster.py measures offers
# with and without (parcel_rate): without is what it showed faster, so offers skip them
# (the attribute is what ``@ray.method(enable_task_events=False)`` sets; setting it here
# keeps Ray out of this module's import).
EntryActor.offer.__ray_enable_task_events__ = False  # type: ignore[attr-defined]


class _Worker(threading.Thread):
    """The entry's kthread: pinned to its CPU, it sets the handler up, takes parts out of
    the queue one at a time and hands them to the handler, and finishes it at the end."""

    def __init__(self, entry: EntryActor, pin: bool, progressed: Callable[[], None]) -> None:
        super().__init__(name=f"cpumap-entry-{entry.info.cpu}", daemon=True)
        self.entry = entry
        self.pin = pin
        self.progressed = progressed  # run on the entry's event loop when it made progress
        self.affinity: list[int] = []
        self.parts = 0
        self.result: Any = None
        self.failure: BaseException | None = None
        self.started_up = threading.Event()

    def run(self) -> None:
        e = self.entry
        try:
            if self.pin:
                os.sched_setaffinity(0, {e.info.cpu})  # this thread only: the handler's
            self.affinity = sorted(os.sched_getaffinity(0))
            contract.setup(e.handler, e.info)
        except BaseException as exc:
            self.failure = exc
            self.started_up.set()
            return
        self.started_up.set()
        while True:
            with e.lock:
                while not e.queue:
                    e.lock.wait()
                part = e.queue.popleft()
                if part is None:
                    break
                e.queued -= len(part)
                e.busy = True
                wanted, e.wanted = e.wanted, False
                if e.room_waiters:  # a doorbell waits for room (lossless)
                    e.room.notify_all()
            if wanted:
                self.notify()  # room in the queue
            out = _deliver(e.handler, e.batch, part.block, part.idx)
            with e.lock:
                e.counts[part.source][_OUTCOMES] += out
                _post_totals(e, part.source)  # before DONE: the source may then end
                _slots_done(e.slot_left, (part,))
                e.busy = False
                wanted, e.wanted = e.wanted, False
            # Its frames' views would keep a source's shared frames mapped here until the
            # next part comes (between runs: until the next run).
            del part
            self.parts += 1
            if wanted:
                self.notify()  # outcomes to report
        try:
            self.result = contract.finish(e.handler)
        except BaseException as exc:  # reported by finish(), as the local worker's
            self.failure = exc

    def notify(self) -> None:
        """Run ``progressed`` on the entry's event loop (it made progress)."""
        loop = self.entry.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the actor is ending
                loop.call_soon_threadsafe(self.progressed)


def _start_worker(entry: EntryActor, pin: bool, progressed: Callable[[], None]) -> _Worker:
    """Start the worker thread and wait for its ``setup``: a failure raises here, so the
    actor's creation (the map update) fails with it."""
    w = _Worker(entry, pin, progressed)
    w.start()
    w.started_up.wait()
    if w.failure is not None:
        failure = w.failure
        w.join()
        raise failure
    return w


async def _fetched(parts: list[Any]) -> list[Parcel]:
    """The parcels of an offer.  A source sends the ``ObjectRef`` of its parts (in a list,
    so that Ray does not resolve it before the call runs): fetched here, in the call's own
    coroutine, a parcel that cannot be fetched -- its source's node died with it -- fails
    that offer alone.  Passed as a plain argument, Ray would fetch it before dispatching
    the call, and the actor's other calls would wait behind that fetch until Ray gives up
    on the node (tens of seconds)."""
    import ray

    if not parts or not isinstance(parts[0], ray.ObjectRef):
        return parts
    out: list[Parcel] = []
    for got in await asyncio.gather(*parts):
        out.extend(got)
    return out


def _post_totals(e: EntryActor, source: int) -> None:
    """Put ``e``'s running totals for ``source`` on its board in that source's shared
    frames, when it has one (under ``e``'s lock: one writer per board)."""
    posted = e.boards.get(source)
    if posted is not None and source in e.counts:
        write_totals(posted[1], e.token, e.pid, e.counts[source])


def _slots_done(left: dict[_SlotFlag, int], parts: Any) -> None:
    """Frames of ``parts`` have their outcome (handled, or refused): a shared slot with
    none left for this entry (``left``: frames per flag) is DONE -- its source may write
    it again (shared_frames.py argues why this store comes after every read of it).
    Called under the entry's lock."""
    for p in parts:
        if p.flag is None:
            continue
        n = left.get(p.flag)
        if n is None:  # its pool was let go (idle): nobody waits for this flag
            continue
        n -= len(p)
        if n > 0:
            left[p.flag] = n
        else:
            del left[p.flag]
            mark_done(p.flag.addr)  # its pool is mapped: this part's views hold it


def _deliver(
    handler: Any, batch: bool, block: FrameBlock, idx: np.ndarray
) -> tuple[int, int, int, int]:
    if batch:
        return _deliver_batch(handler, block, idx)
    return _deliver_each(handler, block, idx)


# What a handler may raise and have its frames counted handler_error, as in the local
# worker (SystemExit too: the handler's failure, not the entry's).  KeyboardInterrupt is
# left to Ray: it is how Ray interrupts a worker.
_HANDLER_FAILURES = (Exception, SystemExit)


@contract.batch_handler
def accept_all(batch: Any) -> None:
    """The default handler: accept every frame (a batch handler: no skb per frame)."""
    return None


def _deliver_each(handler: Any, block: Any, idx: np.ndarray) -> tuple[int, int, int, int]:
    """Per frame, as the local worker's ``_deliver_each``: an skb that cannot be built is
    ``build_failed``; a raise is ``handler_error``; ``False`` is ``handler_drop``."""
    delivered = hdrop = herr = bfail = 0
    for skb in frame_skbs(block, idx):
        if skb is None:
            bfail += 1
            continue
        try:
            r = handler(skb)
        except _HANDLER_FAILURES as e:
            user_errors.record("handler", e)
            herr += 1
            continue
        if r is False:
            hdrop += 1
        else:
            delivered += 1
    return delivered, hdrop, herr, bfail


def _deliver_batch(handler: Any, block: Any, idx: np.ndarray) -> tuple[int, int, int, int]:
    """Per batch, as the local worker's ``_deliver_batch``: ``None`` accepts all, a
    boolean array accepts per frame, anything else (or a raise) is ``handler_error``."""
    n = len(idx)
    try:
        batch = skb_batch(block, idx)  # start: found out (a shared part may be any run)
    except Exception as e:
        user_errors.record("skb build", e, count=n)
        return 0, 0, 0, n
    try:
        r = handler(batch)
    except _HANDLER_FAILURES as e:
        user_errors.record("handler", e, count=n)
        return 0, 0, n, 0
    if r is None:
        return n, 0, 0, 0
    accepted = np.asarray(r)
    if accepted.shape != (n,) or accepted.dtype != np.bool_:
        user_errors.note_batch_handler_return(r, n)
        return 0, 0, n, 0
    ok = int(np.count_nonzero(accepted))
    return ok, n - ok, 0, 0
