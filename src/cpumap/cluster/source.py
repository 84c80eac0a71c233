"""A source where the data is: a capture file read, steered and sent on the node holding it.

:func:`read_capture` is the body of a Ray task placed on the file's node.  It plays the RX
producer (``cpumap.engine.rx``) of the local engine, poll by poll (the loop:
``cpumap.cluster.landing``)::

    take the poll's frames                          (Landing: a free slot of the frames
                                                     it shares with the entries on its
                                                     machine, or a block of its own)
    place up to poll_size records in them           (capture.mapped, read in place:
                                                     the pool's layout, the skb's hash)
    run the steering program                        (programs.runner.ProgramRunner)
    count DROP / PASS / TX / ABORTED verdicts; a redirect to no entry: redirect_err
    group the redirected frames by key, in order    (one stable argsort)
    hand each group to its entry: an entry on       (shared_frames: its range beside the
      this machine gets it where it lies, through    slot's flag, the slot's number in
      its doorbell ring, with no call;               the entry's ring: SharedFrames.publish)
      another gets it packed onto its parcel        (frames.pack: only the columns used)
    a parcel that is full goes to its entry         (actor.offer, one Ray call after a
                                                     ray.put, made by the sender thread)

and keeps the books of every frame it read (:class:`Books`).

The doorbell: what a ring costs, not what a call costs
-------------------------------------------------------
Frames for an entry on the source's machine cost no Ray call: the source publishes each
poll's part and reads on; the entry's doorbell thread takes it into its queue as it
takes an offer (``cluster/actor.py``).  Nothing answers: the back-pressure is the slots'
(a slot is written again only once every entry said DONE with it, through its flag, so a
source ahead of its entries waits for a slot as a producer on a full ring), and the
books come from each entry's :meth:`~cpumap.cluster.actor.EntryActor.tally` at the end.
Measured here: Ray offers of shared parts left the source waiting out answers' round
trips (1 - 3 ms each) and the frames of 5 - 15 slots in flight, out of the CPU's cache
(docs/cluster.md has the figures).

Parcels: sized in frames and bytes, several in flight
------------------------------------------------------
Between machines a call costs Ray a few hundred microseconds whatever it carries, so
frames for an entry gather over polls into one parcel -- packed numpy arrays that Ray
moves as buffers, never pickled frame by frame -- until it holds ``parcel_frames`` frames
or ``parcel_bytes`` bytes; what is left goes at the end of the file.  A link's first
parcel is small and each next one twice the last, up to that size (slow start: the entry
starts while the source reads on).  A lossless parcel may be larger than the entry's
queue (the rest waits in the entry, piece by piece, as room appears); a drop-and-count
parcel is at most half the qsize, so that it fits a queue that already holds one.  An
offer is answered as soon as the entry has *queued* the frames (``cpumap.cluster.actor``:
the entry's queue is the ring, its worker thread the kthread), not when they are
handled; the answer carries the entry's running totals for this source.  A source sends
without waiting while its unanswered frames to that entry stay within a window of
``max(qsize, 2 parcels)``; past it, it takes the oldest answer.

Back-pressure is the ring's: an entry's queue holds at most its qsize frames, shared by
every source.

* lossless (files, the default): what does not fit waits *in the entry*, in arrival order,
  until its worker has taken frames out (a producer waiting on a full ring); the offer's
  answer comes then, so the source's window fills and the reader stops reading.
* drop-and-count (live sources; ``lossless=False``): what does not fit is refused at once
  and counted ``queue_full``, as the kernel's bulk-queue flush drops what the ring cannot
  take.

Failure accounting: every frame read ends as exactly one outcome
-----------------------------------------------------------------
The books are *derived* from the entries' running totals, per entry incarnation, and the
source's own count of frames offered: ``lost = offered - queue_full - outcomes``
(``cpumap.cluster.actor`` argues why no frame is counted twice or never, whatever dies
when).  An offer whose call fails -- its actor died (``ActorDiedError``;
``ActorUnavailableError`` while Ray restarts it), its node died, no answer in
``stall_timeout`` -- is never re-sent (a retry could queue part of it twice); the frames
of it, and those the dead incarnation had queued but not reported handled, are ``lost``.
So at the end ``rx == verdict drops + redirect_err + queue_full + lost + the entries'
outcomes`` exactly, whatever died (:meth:`Books.in_flight` is 0).

After ``ActorDiedError`` (Ray will not restart it: its restarts are spent, or its node is
gone) or a stall, the entry is *dead* for this source: later frames steered to it, and those
gathered for it but not yet sent, are counted ``redirect_err``, as a redirect to an entry
that is not there, and its other unanswered offers are taken without waiting.
``ActorUnavailableError`` (the actor is restarting) only loses the offers it failed: the
next ones go to the restarted actor.

Nothing hangs: every wait has a deadline (``stall_timeout``): an offer's answer, a free
slot, and at the end the entries' :meth:`~cpumap.cluster.actor.EntryActor.tally` of this
source's frames (asked again of an entry that Ray was restarting: it only reads totals).
A source whose node dies fails as a Ray task; the entries keep their totals for it, which
the driver reads (``cpumap.cluster.run``).
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.frame_pool import DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM
from ..engine.ring import MAX_CAPACITY
from ..programs import user_errors
from ..programs.cpu_table import CpuTable
from ..programs.steering import MODES, make_program
from ..programs.user_errors import UserError
from .actor import REPORT_COUNTERS, Report
from .frames import FrameBlock, Parcel, pack
from .landing import VERDICT_NAMES, pump
from .places import Place
from .shared_frames import SharedFrames

DEFAULT_POLL_SIZE = 4096  # frames per poll
DEFAULT_PARCEL_FRAMES = 16384  # frames a parcel gathers: a call costs ~1-3 ms of Ray (docs)
DEFAULT_PARCEL_BYTES = 16 << 20  # ... or bytes: what one parcel may take of the object store
DEFAULT_STALL_TIMEOUT = 60.0  # seconds an offer may stay unanswered before it is lost
_FIRST_PARCEL = 1024  # frames of a link's first parcel (slow start: Link)
DEFAULT_SHARED_BYTES = 128 << 20  # a source's frames shared with the entries on its machine


@dataclass(frozen=True)
class SourceOptions:
    """How every source task reads, steers and sends its capture."""

    lossless: bool = True  # wait for room at a full entry (False: drop, count queue_full)
    poll_size: int = DEFAULT_POLL_SIZE  # frames per poll
    frame_size: int = DEFAULT_FRAME_SIZE  # of the task's frame block
    headroom: int = DEFAULT_HEADROOM
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # an offer unanswered this long is lost
    skip_bad: bool = False  # skip damaged records instead of stopping at the first
    parcel_frames: int = DEFAULT_PARCEL_FRAMES  # a parcel's frames (lossy: <= qsize / 2)
    parcel_bytes: int = DEFAULT_PARCEL_BYTES  # ... and bytes, at most
    pipeline: bool = True  # put and offer parcels from a sender thread while reading on
    shared_bytes: int = DEFAULT_SHARED_BYTES  # with entries on this node (0: none shared)


# Per-source counters (the producer side of MapStats, plus the per-entry outcomes summed).
SOURCE_COUNTERS = (
    "rx",
    "polls",
    "xdp_aborted",
    "xdp_drop",
    "xdp_pass",
    "xdp_tx",
    "xdp_redirect",
    "redirect_err",
    "truncated",
)
# Per (source, entry) counters.  Outcomes: every one but "sent" and "parcels".
ENTRY_COUNTERS = (
    "sent",
    "parcels",
    "delivered",
    "handler_drop",
    "handler_error",
    "build_failed",
    "lost",
    "queue_full",
)


@dataclass(frozen=True)
class Target:
    """An entry as a source sees it: the program's ``key``, where it lives, its actor,
    and its qsize (the bound of its queue)."""

    key: int
    place: Place
    actor: Any  # a Ray ActorHandle
    qsize: int


class KeySpace:
    """What the steering program redirects into: keys ``0..n-1``, one per entry of the
    map when the run started (a ``CpuMapLike`` for the built-in programs)."""

    def __init__(self, n: int) -> None:
        self.max_entries = n
        self.dead: set[int] = set()

    def has_entry(self, key: int) -> bool:
        return 0 <= key < self.max_entries and key not in self.dead

    def __repr__(self) -> str:
        return f"<cluster KeySpace {self.max_entries} keys>"


ProgramFactory = Callable[[KeySpace], Any]


def build_program(program: str | ProgramFactory, keys: KeySpace) -> tuple[Any, CpuTable | None]:
    """The program a source runs: a built-in mode name (over the table ``0..n-1``), a
    loader spec (``"file.py:name"``, loaded on the source's node; a ``cmap`` keyword gets
    the key space), or a factory called with the key space.  Also the CPU table made
    here, for the caller to close."""
    if isinstance(program, str):
        if program in MODES:
            table = CpuTable(max(keys.max_entries, 1), range(keys.max_entries))
            return make_program(program, keys, table, vectorized=True), table
        from ..programs.loader import load_program

        return load_program(program, cmap=keys), None
    if not callable(program):
        raise TypeError(f"program must be a mode, a spec or a factory, not {program!r}")
    return program(keys), None


@dataclass
class Books:
    """Every frame a source read, by outcome; per entry, what was sent and what became of
    it.  ``failures`` lists each failed call's entry key and error, in order."""

    keys: int
    counters: dict[str, int] = field(default_factory=dict)
    per_entry: np.ndarray = field(init=False)
    pids: dict[int, set[int]] = field(default_factory=dict)
    failures: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counters = dict.fromkeys(SOURCE_COUNTERS, 0)
        self.per_entry = np.zeros((self.keys, len(ENTRY_COUNTERS)), dtype=np.int64)

    def add(self, key: int, name: str, n: int) -> None:
        self.per_entry[key, ENTRY_COUNTERS.index(name)] += n

    def outcomes(self) -> int:
        """Frames with an outcome: verdict drops, redirect errors and every entry's."""
        c = self.counters
        src = sum(c[name] for _, name in VERDICT_NAMES) + c["redirect_err"]
        return src + int(self.per_entry[:, 2:].sum())

    def in_flight(self) -> int:
        return self.counters["rx"] - self.outcomes()


class Link:
    """One source's link to one entry: the parcel being gathered, the offers not yet
    answered, and the latest running totals of each incarnation of the entry heard from
    (token -> counts, :data:`~cpumap.cluster.actor.REPORT_COUNTERS`)."""

    def __init__(self, target: Target, options: SourceOptions) -> None:
        self.target = target
        # Lossless, a parcel larger than the queue waits in the entry for room, piece by
        # piece; drop-and-count, it must fit a queue with a parcel in it already.
        cap = options.parcel_frames if options.lossless else target.qsize // 2
        self.limit = max(1, min(options.parcel_frames, cap))
        self.max_bytes = max(options.parcel_bytes, 1)
        self.window = max(target.qsize, 2 * self.limit)
        # Slow start: the first parcel is small, each next one twice the last, up to the
        # limit -- so the entry starts handling while the source reads on, rather than
        # waiting for a whole parcel (and its first batch, the costliest, comes early).
        self.size = min(self.limit, _FIRST_PARCEL)
        self.parts: list[Parcel] = []
        self.frames = 0  # in self.parts
        self.nbytes = 0
        self.pending: deque[tuple[Any, int]] = deque()
        self.unanswered = 0  # frames in the pending offers
        self.totals: dict[int, np.ndarray] = {}
        self.pids: set[int] = set()
        self.shared = False  # it maps the source's shared frames (shared_frames.py)
        self.token = 0  # ... the incarnation that mapped them (0 once it is gone)
        self.attached = 0  # ... and that token, kept (its totals board: Outbox.finish)
        self.ping: Any = None  # a call in flight asking which incarnation it is now

    def take(self) -> list[Parcel]:
        parts, self.parts, self.frames, self.nbytes = self.parts, [], 0, 0
        return parts

    def record(self, report: Report) -> None:
        """Keep the latest totals of ``report``'s incarnation (they only grow: the
        element-wise maximum is the latest)."""
        counts = np.asarray(report.counts, dtype=np.int64)
        seen = self.totals.get(report.token)
        self.totals[report.token] = counts if seen is None else np.maximum(seen, counts)
        self.pids.add(report.pid)

    def known(self) -> np.ndarray:
        """The totals summed over incarnations (:data:`REPORT_COUNTERS`)."""
        return sum(self.totals.values(), np.zeros(len(REPORT_COUNTERS), dtype=np.int64))


class Outbox:
    """One source's links to the entries, and the rules for sending (module docstring:
    parcels, the window, lossless waits, drop-and-count, failures)."""

    def __init__(
        self,
        targets: list[Target],
        books: Books,
        keys: KeySpace,
        options: SourceOptions,
        source: int = 0,
    ) -> None:
        self.links = [Link(t, options) for t in targets]
        self.books = books
        self.keys = keys
        self.source = source
        self.lossless = options.lossless
        self.stall = options.stall_timeout
        self.sender = Sender() if options.pipeline else None
        self.frames: SharedFrames | None = None  # shared with entries on this node

    def share_frames(self, options: SourceOptions) -> SharedFrames | None:
        """The source's frames, shared with each entry on this node (``shared_frames.py``):
        made once, offered to every entry at once, each mapping it starting a doorbell
        thread for it; an entry that cannot map them (another node) gets its frames
        packed into parcels, through the object store.  None when no entry maps them (or
        ``shared_bytes`` is 0).  Slots: as many polls as ``shared_bytes`` holds, at
        least 3 (a ring's capacity bounds them too)."""
        if options.shared_bytes <= 0 or not self.links:
            return None
        import ray
        from ray.exceptions import RayError

        poll = options.poll_size
        slot_bytes = poll * (options.frame_size + 44)
        slots = min(max(3, options.shared_bytes // slot_bytes), MAX_CAPACITY)
        frames = SharedFrames(slots, poll, options.frame_size, options.headroom, len(self.links))
        asked = [
            (
                link,
                link.target.actor.attach_frames.remote(
                    self.source, frames.handle, key, self.lossless
                ),
            )
            for key, link in enumerate(self.links)
        ]
        for link, ref in asked:
            try:
                link.token = link.attached = int(ray.get(ref, timeout=self.stall))
                link.shared = link.token != 0
            except RayError as e:  # that entry is gone or stuck: the offers will say so
                e.__traceback__ = None  # as in _take
        if not any(link.shared for link in self.links):
            frames.close()
            return None
        self.frames = frames
        return frames

    def send(
        self, key: int, block: FrameBlock, idx: np.ndarray, at: tuple[int, int] | None
    ) -> None:
        """Hand entry ``key`` frames ``idx`` of ``block``: where they lie, through its
        doorbell, when the entry shares the source's frames (``at``: their slot, and where
        ``idx`` starts in the index area); else packed (a copy: the block is reused) onto
        its parcel, sending each parcel that fills up."""
        link = self.links[key]
        total = len(idx)
        if link.shared and at is not None and self.frames is not None:
            self._publish(key, *at, total)
            return
        lo = 0
        while lo < total:
            if not self.keys.has_entry(key):  # died while we were sending
                self._unsent(total - lo)
                return
            hi = min(total, lo + link.size - link.frames)
            part = pack(block, idx[lo:hi])
            link.parts.append(part)
            link.frames += hi - lo
            link.nbytes += _nbytes(part)
            lo = hi
            if link.frames >= link.size or link.nbytes >= link.max_bytes:
                self.flush(key)

    def _publish(self, key: int, slot: int, first: int, n: int) -> None:
        """Hand entry ``key`` its ``n`` frames of ``slot`` (their indices from ``first``
        in the index area) through its doorbell ring: no call, no answer to wait for --
        the slots are the back-pressure, and the books come from the entry's tally at the
        end (``finish``)."""
        if not self.keys.has_entry(key):  # died while we were sending
            self._unsent(n)
            return
        assert self.frames is not None
        published = self.frames.publish(self.frames.part(slot, key, first, first + n, n))
        assert published  # Invariant: a ring holds a number per slot (publish says why)
        self.books.add(key, "sent", n)
        self.books.add(key, "parcels", 1)

    def flush_all(self) -> None:
        """Offer every entry what is gathered for it."""
        for key in range(len(self.links)):
            self.flush(key)

    def unshare(self, key: int) -> None:
        """Entry ``key`` is not the process it was, or is stuck: share no more frames with
        it, and never write again the slots it holds (shared_frames.py, faults)."""
        link = self.links[key]
        if link.shared:
            link.shared = False
            if self.frames is not None:
                self.frames.lose(key)

    def stuck(self, key: int, why: str) -> None:
        """Entry ``key`` is treated as dead for this source (as an offer with no answer)."""
        self.unshare(key)
        if key not in self.keys.dead:
            self._failed(key, why)
            self.keys.dead.add(key)

    def stop_sharing(self) -> None:
        """Every slot is lost: no entry gets shared frames any more."""
        for key in range(len(self.links)):
            self.unshare(key)

    def flush(self, key: int) -> None:
        """Offer entry ``key`` its gathered parcel, once its window has room for it."""
        link = self.links[key]
        if not link.frames:
            return
        while link.unanswered + link.frames > link.window and link.pending:
            self._settle_oldest(key)
        n = link.frames
        parts = link.take()
        link.size = min(link.limit, 2 * link.size)
        if not self.keys.has_entry(key):  # it died while we waited
            self._unsent(n)
            return
        offer = link.target.actor.offer
        if self.sender is not None:
            ref: Any = self.sender.submit(_offer, offer, self.source, parts, self.lossless)
        else:
            ref = _offer(offer, self.source, parts, self.lossless)
        link.pending.append((ref, n))
        link.unanswered += n
        self.books.add(key, "sent", n)
        self.books.add(key, "parcels", 1)

    def finish(self) -> None:
        """At the end of the input: send what is gathered, take every answer, and ask each
        live entry for its totals once it has handled this source's frames (each wait
        bounded by ``stall``); then derive the books."""
        for key in range(len(self.links)):
            self.flush(key)
        for key in range(len(self.links)):
            while self.links[key].pending:
                self._settle_oldest(key)
        self._stop_sender()  # (the shared frames go in close(), once the run is timed)
        keys = [
            key
            for key in range(len(self.links))
            if key not in self.keys.dead and self.books.per_entry[key, 0]  # it sent some
        ]
        refs = {key: self._ask_tally(key) for key in keys}
        deadline = time.monotonic() + self.stall + 10.0
        for key, ref in refs.items():
            self._take(key, self._tallied(key, ref, deadline), max(deadline - time.monotonic(), 0))
        self._read_boards()
        self._derive()

    def _read_boards(self) -> None:
        """What each incarnation that mapped our frames last wrote on its totals board
        there (``shared_frames.write_totals``): a report like any other -- running
        totals, the latest kept -- which counts what an incarnation that died (or never
        answered its tally) had accepted and handled, instead of calling it all lost."""
        if self.frames is None:
            return
        for key, link in enumerate(self.links):
            got = self.frames.totals(key) if link.attached else None
            if got is not None and got[0] == link.attached:
                token, pid, counts = got
                link.record(Report(token, pid, counts[: len(REPORT_COUNTERS)], 0))

    def _ask_tally(self, key: int) -> Any:
        return self.links[key].target.actor.tally.remote(self.source, self.stall)

    def _tallied(self, key: int, ref: Any, deadline: float) -> Any:
        """``ref``, or -- when it failed because its actor was restarting -- a tally asked
        again (it only reads totals: asking twice counts nothing twice), so that the new
        incarnation's totals and pid are known; until ``deadline``."""
        import ray
        from ray.exceptions import ActorUnavailableError

        while time.monotonic() < deadline:
            try:
                ray.get(ref, timeout=max(deadline - time.monotonic(), 0))
            except ActorUnavailableError as e:
                e.__traceback__ = None  # as in _take
                self._failed(key, f"{type(e).__name__}: {_first_line(e)}")
                time.sleep(0.05)  # Ray is restarting it: ask the new process
                ref = self._ask_tally(key)
                continue
            except Exception:  # a timeout or another failure: _take reads it again, notes it
                pass
            break
        return ref

    def close(self) -> None:
        """Stop the sender thread (the task's worker process outlives the task), then let
        the shared frames go (an entry that mapped them keeps its own mapping until it
        lets go)."""
        self._stop_sender()
        for link in self.links:
            link.shared = False
        if self.frames is not None:
            self.frames.close()

    def _stop_sender(self) -> None:
        if self.sender is not None:
            self.sender.shutdown(wait=True, cancel_futures=True)
            self.sender = None

    def _unsent(self, n: int) -> None:
        """Frames steered to an entry found dead before they were sent: a redirect to an
        entry that is not there."""
        self.books.counters["redirect_err"] += n
        self.books.counters["xdp_redirect"] -= n

    def take_answers(self) -> None:
        """Take every answer already come (no wait), oldest first per entry: their totals
        recorded, their failures seen (``_take``)."""
        import ray

        for key, link in enumerate(self.links):
            while link.pending:
                ref, n = link.pending[0]
                if isinstance(ref, Future):
                    if not ref.done():
                        break
                    if ref.exception() is None:
                        ready, _ = ray.wait([ref.result()], timeout=0, fetch_local=False)
                        if not ready:
                            break
                elif not ray.wait([ref], timeout=0, fetch_local=False)[0]:
                    break
                link.pending.popleft()
                link.unanswered -= n
                self._take(key, ref, 0.0)

    def ping(self, keys: set[int]) -> None:
        """Ask each shared entry of ``keys`` which incarnation it is (one small call each,
        one in flight at a time): a source waiting for slots learns of a restart even
        when every offer of the old incarnation was answered before it died."""
        for key in keys:
            link = self.links[key]
            if link.shared and link.ping is None:
                link.ping = link.target.actor.ready.remote()

    def take_pings(self) -> None:
        """The pings answered (no wait): an entry that answers as another incarnation, or
        whose call failed, shares no more frames -- the slots the old one held are lost
        (its failure noted as an offer's would be, ``_take``)."""
        import ray
        from ray.exceptions import ActorDiedError, RayError

        for key, link in enumerate(self.links):
            if link.ping is None or not ray.wait([link.ping], timeout=0, fetch_local=False)[0]:
                continue
            ref, link.ping = link.ping, None
            try:
                ready = ray.get(ref, timeout=0)
                token = int(ready["token"])
                link.pids.add(int(ready["pid"]))
            except RayError as e:
                e.__traceback__ = None  # as in _take
                self.unshare(key)
                self._failed(key, f"{type(e).__name__}: {_first_line(e)}")
                if isinstance(e, ActorDiedError):
                    self.keys.dead.add(key)
                continue
            if token != link.token:  # restarted: the new process never saw those slots
                self._restarted(key)

    def _settle_oldest(self, key: int) -> None:
        """Wait (up to ``stall``) for the oldest offer to ``key``; keep its report."""
        link = self.links[key]
        ref, n = link.pending.popleft()
        link.unanswered -= n
        # An entry already found dead or stuck gets no more waiting: what is not there now
        # is lost (a dead actor's calls fail at once anyway).
        self._take(key, ref, 0.0 if key in self.keys.dead else self.stall)

    def _take(self, key: int, ref: Any, timeout: float) -> None:
        """The report behind ``ref``, recorded; a failure noted (and the entry dead for
        this source when it will not come back)."""
        import ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayError

        try:
            if isinstance(ref, Future):  # the sender's: the offer's ref once it is made
                ref = ref.result(timeout=self.stall)
            report = ray.get(ref, timeout=timeout)
        except (GetTimeoutError, FutureTimeout) as e:
            e.__traceback__ = None  # Ray keeps the instance: it must not pin our frames
            self.unshare(key)  # its slots never written again: it may still read them
            if key not in self.keys.dead:
                self._failed(key, f"no answer in {timeout:g}s: entry treated as dead")
                self.keys.dead.add(key)
            return
        except RayError as e:
            # Ray caches the exception of a ref; raised, it carries a traceback whose
            # frames (and their callers': the program, its CPU table segment) it would
            # keep alive in this pooled worker after the task.
            e.__traceback__ = None
            self.unshare(key)  # as above: whatever that process held stays as is
            self._failed(key, f"{type(e).__name__}: {_first_line(e)}")
            if isinstance(e, ActorDiedError):
                self.keys.dead.add(key)
            return
        link = self.links[key]
        link.record(report)
        if len(link.totals) > 1:  # a new incarnation answered: the old one's slots stay
            self.unshare(key)
        if link.token and report.token != link.token:  # it mapped our frames, then died
            self._restarted(key)

    def _restarted(self, key: int) -> None:
        """Entry ``key`` answers as a new process: what the old one held of our shared
        frames is lost (noted once), and it gets no more of them."""
        link = self.links[key]
        if link.token:
            self._failed(key, "restarted: what it held of the shared frames is lost")
            link.token = 0
        self.unshare(key)

    def _failed(self, key: int, why: str) -> None:
        self.books.failures.append((key, why))

    def _derive(self) -> None:
        """The per-entry outcomes from the totals: every frame offered is queue_full, an
        outcome, or lost (``cpumap.cluster.actor`` argues why exactly once)."""
        books = self.books
        for key, link in enumerate(self.links):
            known = link.known()
            refused, outcomes = int(known[1]), known[2:]
            offered = int(books.per_entry[key, ENTRY_COUNTERS.index("sent")])
            for name, v in zip(REPORT_COUNTERS[2:], outcomes, strict=True):
                books.add(key, name, int(v))
            books.add(key, "queue_full", refused)
            books.add(key, "sent", -refused)  # sent: what the entry took (or lost on the way)
            books.add(key, "lost", offered - refused - int(outcomes.sum()))
            if link.pids:
                books.pids.setdefault(key, set()).update(link.pids)


class Sender(ThreadPoolExecutor):
    """One thread that puts each parcel into the object store and makes its offer, in the
    order they were given (one worker: a FIFO), while the source reads and steers on.

    Why a thread: a ``ray.put`` and an actor call each wait on other processes (the
    object store creates and seals the object; the call is handed to Ray's core worker),
    and on a busy host those waits cost milliseconds per parcel -- measured, a 10 MB put
    takes 4 - 17 ms where copying it takes 1 ms.  Ray releases the GIL while it waits, so
    the reader's next polls run meanwhile, as a NIC keeps receiving while the driver
    flushes.

    Why it is safe: the thread touches nothing of the source's books, and the parts it
    puts are packed copies that the source has handed over (``Link.take``) and no longer
    touches -- not views of the reused frame block.  One thread makes the offers in the
    order they were given, so a source's parcels leave in order, as before.  The source
    counts a parcel ``sent`` when it hands it over, and keeps the :class:`Future` where it
    kept the offer's reference; taking the answer first takes the reference (bounded by
    the stall deadline).  An offer the thread could not make fails its future with Ray's
    error, and is counted as an offer whose call failed (its frames ``lost``), exactly
    as before."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="cpumap-source-send")


def _offer(offer: Any, source: int, parts: list[Any], lossless: bool) -> Any:
    """Offer ``parts``, put into the object store first, the call carrying their
    reference (``actor.py``'s ``_fetched`` says why).  The call's ref."""
    import ray

    return offer.remote(source, [ray.put(parts)], lossless)


def _nbytes(part: Parcel) -> int:
    """Bytes a part takes of the object store."""
    return int(part.rows.nbytes + part.desc.nbytes)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


@dataclass
class SourceReport:
    """What one source did: where it ran, its counters, its per-entry books (rows in
    key order, columns :data:`ENTRY_COUNTERS`), the failures it saw, and the error that
    stopped it early (a damaged capture), if any."""

    path: str
    node_id: str
    pid: int
    counters: dict[str, int]
    per_entry: list[list[int]]
    pids: dict[int, list[int]]
    failures: list[tuple[int, str]]
    error: str | None
    seconds: float
    started: float = 0.0  # time.time() of its first poll (0: it read nothing)
    ended: float = 0.0  # time.time() when its last frame had its outcome
    user_errors: list[UserError] = field(default_factory=list)  # its program's failures


@dataclass(frozen=True)
class Start:
    """Which source this is in its run, and how the run's sources start together: ``run``
    names the run, ``sources`` is how many there are; they wait for each other (at most
    ``timeout`` s) at the first entry's :meth:`~cpumap.cluster.actor.EntryActor.gate`."""

    source: int = 0
    run: int = 0
    sources: int = 1
    timeout: float = 30.0


def read_capture(
    path: str,
    targets: list[Target],
    program: str | ProgramFactory,
    options: SourceOptions | None = None,
    start: Start | None = None,
) -> SourceReport:
    """Read ``path`` and send its frames to ``targets`` (the body of a source task);
    ``start.source`` is its number in the run, under which the entries count its frames.

    A capture that cannot be opened or is damaged stops the source with ``error`` set;
    everything read before the damage is accounted as usual."""
    import ray

    t0 = time.perf_counter()
    options = options or SourceOptions()
    keys = KeySpace(len(targets))
    books = Books(len(targets))
    start = start or Start()
    out = Outbox(targets, books, keys, options, start.source)
    error: str | None = None
    program_obj, table = build_program(program, keys)
    user_errors.LOG.clear()  # a pooled worker process: only this run's failures
    try:
        # Before the start line: a pool's pages are faulted in as it is made (tens of ms),
        # which must not overlap another source's first polls.
        out.share_frames(options)
        _start_line(targets, start)
        error, started = pump(path, program_obj, keys, out, books, options)
        out.finish()
        ended = time.time()
    finally:
        out.close()
        # The task's worker process outlives the task: the CPU table's shared segment must
        # not stay mapped in it.  The segment unmaps only once no view of it is alive.
        del program_obj
        if table is not None:
            table.close()
            del table
            gc.collect()
    return SourceReport(
        path=path,
        node_id=str(ray.get_runtime_context().get_node_id()),
        pid=os.getpid(),
        counters=books.counters,
        per_entry=books.per_entry.tolist(),
        pids={k: sorted(v) for k, v in books.pids.items()},
        failures=books.failures,
        error=error,
        seconds=time.perf_counter() - t0,
        started=started,
        ended=ended if started else 0.0,
        user_errors=user_errors.LOG.report(),
    )


def _start_line(targets: list[Target], start: Start) -> None:
    """Wait for the run's other sources (module ``Start``); a gate that fails (its entry
    died) or times out only means this source starts alone."""
    if start.sources <= 1 or not targets:
        return
    import ray
    from ray.exceptions import RayError

    ref = targets[0].actor.gate.remote(start.run, start.sources, start.timeout)
    try:
        ray.get(ref, timeout=start.timeout + 10.0)
    except RayError as e:
        e.__traceback__ = None  # as in Outbox._take
