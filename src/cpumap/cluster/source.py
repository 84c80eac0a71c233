"""A source where the data is: a capture file read, steered and sent on the node holding it.

:func:`read_capture` is the body of a Ray task placed on the file's node.  It plays the RX
producer (``cpumap.engine.rx``) of the local engine, poll by poll::

    read up to poll_size packets                    (cpumap.capture: numpy columns)
    copy them into a frame block                    (frames.fill: the pool's layout)
    run the steering program                        (programs.runner.ProgramRunner)
    count DROP / PASS / TX / ABORTED verdicts; a redirect to no entry: redirect_err
    group the redirected frames by key, in order    (one stable argsort)
    send each group to its entry's actor            (frames.pack -> actor.deliver)

and keeps the books of every frame it read (:class:`Books`).

Back-pressure: each entry's frames in flight are bounded by its qsize
------------------------------------------------------------------------
An entry's ring is shared by every producer; here there is no shared ring, so each source
gets a fixed *share* of the entry's qsize (``qsize // sources``, at least 1; the map
computes it, :meth:`cpumap.cluster.map.ClusterMap.targets`).  A source sends a parcel of
``m`` frames to an entry only while its own unanswered parcels to it hold at most
``share - m`` frames (a group larger than the share goes as several parcels).  Summed over
sources, an entry never has more than ``qsize`` frames sent and unanswered -- queued in its
actor's mailbox or in its handler's hands -- and no coordinator is needed.  A frame is "in
flight" from the ``deliver.remote`` call until its parcel's reply (or failure) is taken.

* lossless (files, the default): with no room, wait for the oldest unanswered parcel to that
  entry (``ray.get`` of its reply, at most ``stall_timeout``), then the next oldest, until
  the parcel fits: the reader simply stops reading, as a lossless producer waits on a full
  ring.
* drop-and-count (live sources; ``lossless=False``): take the replies already there without
  waiting, then send what fits and count the rest ``queue_full``, as the kernel's bulk-queue
  flush drops what the ring cannot take.

Failure accounting: every frame read ends as exactly one outcome
-----------------------------------------------------------------
The books live here, in the source, not in the actors: a frame's outcome is known when the
reply of its parcel is taken.  A reply carries delivered / handler_drop / handler_error /
build_failed counts that sum to the parcel's size (the actor counts each frame once).  A
parcel whose call fails -- its actor died (``RayActorError``: ``ActorDiedError``,
``ActorUnavailableError`` while Ray restarts it), its node died, the object was lost, or
no answer came in ``stall_timeout`` -- has no reply: its frames are counted ``lost``, never
re-sent (a retry could deliver part of it twice).  So at the end, with every parcel
settled, ``rx == verdict drops + redirect_err + queue_full + lost + the replies' outcomes``
exactly, whatever died (:meth:`Books.in_flight` is 0).

After ``ActorDiedError`` (Ray will not restart it: its restarts are spent, or its node is
gone) or a stall, the entry is *dead* for this source: later frames steered to it are not
sent but counted ``redirect_err``, as a redirect to an entry that is not there, and its
other unanswered parcels are taken without waiting (what has no reply yet is ``lost``).
``ActorUnavailableError`` (the actor is restarting) only loses the parcels it failed: the
next parcels go to the restarted actor.

Nothing hangs: every wait has a deadline (``stall_timeout``); a source whose node dies
fails as a Ray task and the driver reports it (its books die with it).
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..abi import XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX
from ..capture import CaptureError, open_capture
from ..engine.frame_pool import DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM
from ..programs.cpu_table import CpuTable
from ..programs.runner import ProgramRunner
from ..programs.steering import MODES, make_program
from .frames import FrameBlock, fill, pack
from .places import Place

DEFAULT_POLL_SIZE = 4096  # frames per poll: a parcel costs ~0.2-2 ms of Ray, batch it (docs)
DEFAULT_STALL_TIMEOUT = 60.0  # seconds a parcel may stay unanswered before it is lost


@dataclass(frozen=True)
class SourceOptions:
    """How every source task reads, steers and sends its capture."""

    lossless: bool = True  # wait for room at a full entry (False: drop, count queue_full)
    poll_size: int = DEFAULT_POLL_SIZE  # frames per poll
    frame_size: int = DEFAULT_FRAME_SIZE  # of the task's frame block
    headroom: int = DEFAULT_HEADROOM
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # a parcel unanswered this long is lost
    skip_bad: bool = False  # skip damaged records instead of stopping at the first


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
_VERDICT_NAMES = (
    (XDP_ABORTED, "xdp_aborted"),
    (XDP_DROP, "xdp_drop"),
    (XDP_PASS, "xdp_pass"),
    (XDP_TX, "xdp_tx"),
)


@dataclass(frozen=True)
class Target:
    """An entry as a source sees it: the program's ``key``, where it lives, its actor,
    and this source's share of its qsize."""

    key: int
    place: Place
    actor: Any  # a Ray ActorHandle
    share: int


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
    it.  ``failures`` lists each failed parcel's entry key and error, in order."""

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
        src = sum(c[name] for _, name in _VERDICT_NAMES) + c["redirect_err"]
        return src + int(self.per_entry[:, 2:].sum())

    def in_flight(self) -> int:
        return self.counters["rx"] - self.outcomes()


class Outbox:
    """The unanswered parcels of one source, per entry, and the rules for sending more
    (the module docstring: shares, lossless waits, drop-and-count, failures)."""

    def __init__(
        self, targets: list[Target], books: Books, keys: KeySpace, *, lossless: bool, stall: float
    ) -> None:
        self.targets = targets
        self.books = books
        self.keys = keys
        self.lossless = lossless
        self.stall = stall
        self.pending: list[deque[tuple[Any, int]]] = [deque() for _ in targets]
        self.held = [0] * len(targets)  # frames in the pending parcels, per entry

    def send(self, key: int, block: FrameBlock, idx: np.ndarray) -> None:
        """Send frames ``idx`` of ``block`` to entry ``key`` (parcels of at most its
        share), or count them as the rules say."""
        t = self.targets[key]
        for lo in range(0, len(idx), t.share):
            chunk = idx[lo : lo + t.share]
            if not self.keys.has_entry(key):  # died while we were sending
                self.books.counters["redirect_err"] += len(chunk)
                self.books.counters["xdp_redirect"] -= len(chunk)
                continue
            chunk = self._room_for(key, chunk)
            if len(chunk):
                parcel = pack(block, chunk)
                ref = t.actor.deliver.remote(parcel.rows, parcel.desc)
                self.pending[key].append((ref, len(chunk)))
                self.held[key] += len(chunk)
                self.books.add(key, "sent", len(chunk))
                self.books.add(key, "parcels", 1)

    def _room_for(self, key: int, chunk: np.ndarray) -> np.ndarray:
        """The part of ``chunk`` that may be sent now: all of it once the oldest parcels
        are answered (lossless), or what fits now, the rest counted ``queue_full``."""
        share = self.targets[key].share
        m = len(chunk)
        if self.lossless:
            while self.held[key] + m > share and self.pending[key]:
                self._settle_oldest(key)
            return chunk
        self._settle_ready(key)
        room = max(share - self.held[key], 0)
        if room < m:
            self.books.add(key, "queue_full", m - room)
            return chunk[:room]
        return chunk

    def _settle_ready(self, key: int) -> None:
        """Take every reply already there, without waiting (oldest first)."""
        q = self.pending[key]
        if not q:
            return
        import ray

        ready, _ = ray.wait([ref for ref, _ in q], num_returns=len(q), timeout=0)
        done = set(ready)
        while q and q[0][0] in done:
            self._settle_oldest(key)

    def _settle_oldest(self, key: int) -> None:
        """Wait (up to ``stall``) for the oldest parcel to ``key`` and book its outcome."""
        import ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayError

        ref, n = self.pending[key].popleft()
        self.held[key] -= n
        books = self.books
        # An entry already found dead or stuck gets no more waiting: what is not there now
        # is lost (a dead actor's parcels fail at once anyway).
        timeout = 0.0 if key in self.keys.dead else self.stall
        try:
            reply = ray.get(ref, timeout=timeout)
        except GetTimeoutError as e:
            e.__traceback__ = None  # Ray keeps the instance: it must not pin our frames
            self._lose(key, n, f"no reply in {timeout:g}s: entry treated as dead")
            self.keys.dead.add(key)
            return
        except RayError as e:
            # Ray caches the exception of a ref; raised, it carries a traceback whose
            # frames (and their callers': the program, its CPU table segment) it would
            # keep alive in this pooled worker after the task.
            e.__traceback__ = None
            self._lose(key, n, f"{type(e).__name__}: {_first_line(e)}")
            if isinstance(e, ActorDiedError):
                self.keys.dead.add(key)
            return
        books.add(key, "delivered", reply.delivered)
        books.add(key, "handler_drop", reply.handler_drop)
        books.add(key, "handler_error", reply.handler_error)
        books.add(key, "build_failed", reply.build_failed)
        books.pids.setdefault(key, set()).add(reply.pid)

    def _lose(self, key: int, n: int, why: str) -> None:
        self.books.add(key, "lost", n)
        self.books.failures.append((key, why))

    def drain(self) -> None:
        """Settle every parcel still unanswered (each wait bounded by ``stall``)."""
        for key in range(len(self.targets)):
            while self.pending[key]:
                self._settle_oldest(key)


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


def read_capture(
    path: str,
    targets: list[Target],
    program: str | ProgramFactory,
    options: SourceOptions | None = None,
) -> SourceReport:
    """Read ``path`` and send its frames to ``targets`` (the body of a source task).

    A capture that cannot be opened or is damaged stops the source with ``error`` set;
    everything read before the damage is accounted as usual."""
    import ray

    t0 = time.perf_counter()
    options = options or SourceOptions()
    keys = KeySpace(len(targets))
    books = Books(len(targets))
    out = Outbox(targets, books, keys, lossless=options.lossless, stall=options.stall_timeout)
    error: str | None = None
    program_obj, table = build_program(program, keys)
    try:
        error = _pump(path, program_obj, keys, out, books, options)
        out.drain()
    finally:
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
    )


def _pump(
    path: str,
    program: Any,
    keys: KeySpace,
    out: Outbox,
    books: Books,
    options: SourceOptions,
) -> str | None:
    """Read, steer and send the whole file; the error that stopped it early, if any."""
    block = FrameBlock.empty(options.poll_size, options.frame_size, options.headroom)
    runner = ProgramRunner(program, block, target=keys)
    try:
        with open_capture(path, skip_bad=options.skip_bad) as reader:
            for batch in reader.batches(options.poll_size):
                _poll(batch, block, runner, out, books)
    except (CaptureError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _poll(batch: Any, block: FrameBlock, runner: ProgramRunner, out: Outbox, books: Books) -> None:
    """One poll: fill, steer, count, group by entry, send."""
    n = len(batch)
    if n == 0:
        return
    c = books.counters
    c["rx"] += n
    c["polls"] += 1
    c["truncated"] += fill(block, batch)
    idx = np.arange(n, dtype=np.uint32)
    v = runner.run(idx, 0)
    for verdict, name in _VERDICT_NAMES:
        c[name] += v.counts[verdict]
    if not v.counts[XDP_REDIRECT]:
        return
    red = np.flatnonzero(v.verdicts == XDP_REDIRECT).astype(np.uint32)
    rkeys = v.keys[red].astype(np.int64)
    ok = rkeys < out.keys.max_entries
    if out.keys.dead:
        ok &= ~np.isin(rkeys, list(out.keys.dead))
    n_bad = len(ok) - int(np.count_nonzero(ok))
    c["redirect_err"] += n_bad
    c["xdp_redirect"] += len(red) - n_bad
    red, rkeys = red[ok], rkeys[ok]
    order = np.argsort(rkeys, kind="stable")  # per entry, in arrival order
    red, rkeys = red[order], rkeys[order]
    bounds = np.flatnonzero(np.diff(rkeys)) + 1
    for group in np.split(np.arange(len(red)), bounds):
        if len(group):
            out.send(int(rkeys[group[0]]), block, red[group])
