"""ClusterMap: the map whose entries are Ray actors on the nodes of a cluster.

Its keys are places -- ``Place(node, cpu)``, written ``"node:cpu"`` (:mod:`places`) -- and
its values queue sizes, as a ``CpuMap``'s keys are CPUs.  Populating a place starts an
entry actor (:mod:`actor`) on that node, pinned to that CPU, running the handler; traffic
reaches it from sources on the nodes where the data is (:mod:`source`, :mod:`run`).

Map operations and their errors
-------------------------------
Every invalid operation raises ``OSError`` with the errno ``CpuMap`` raises for the same
mistake (``cpumap.engine.map``), and leaves the map unchanged:

=============  ===============================================  =========
operation      condition (checked in this order)                errno
=============  ===============================================  =========
update         flags > BPF_EXIST                                EINVAL
update         a new place and ``max_entries`` places in use    E2BIG
update         flags == BPF_NOEXIST (as cpumap: always)         EEXIST
update         qsize > 16384                                    EOVERFLOW
update         no alive node of that name                       ENODEV
update         the CPU is not one the node's processes may use  ENODEV
update         qsize == 0                                       (= delete)
update         the actor did not start in ``start_timeout``     ENOMEM
update         the handler's ``setup`` raised                   HandlerSetupError
delete         no alive node of that name                       EINVAL
lookup         the place is not populated                       ENOENT
get_next_key   None, or a place not in the map                  -> first
get_next_key   the last populated place                         ENOENT
get_next_key   otherwise                                        -> next
=============  ===============================================  =========

What differs from ``CpuMap``, and why
-------------------------------------
* The key space is sparse and unbounded -- any CPU of any node -- so the walk
  (``get_next_key``) is a hash map's, over the populated places in map order (by node
  name, then CPU), not an array's over every key; ``len()`` is the number of populated
  places; ``max_entries`` (default: no limit) bounds it, E2BIG when full, as a full hash map.
* Delete of a place not populated (on an alive node) succeeds, as the kernel's cpumap
  delete of an empty in-range key does.
* Update, delete and close wait for the actors (a start is a Ray actor creation: ~0.1-1 s;
  a retirement lets the entry's queue drain, calls the handler's ``finish()`` and kills
  the actor), where ``CpuMap`` retires in the background: an entry's frames were settled
  by the run that sent them (:mod:`source`), so little is left to drain.
* The map the steering program sees is a *snapshot* taken when a run starts: key ``i`` is
  the ``i``-th populated place in map order (:meth:`ClusterMap.targets`).  Every source of
  a run gets the same snapshot, so a flow reaches the same entry from whatever file or
  node; it moves only when the map changes between runs.  Updates during a run are
  refused (``EBUSY``) rather than applied to some sources and not others.
* An entry whose actor died for good (its restarts spent, its node gone) is ``dead``: it
  stays in the map, reported, until deleted or replaced; runs count frames steered to it
  ``redirect_err``.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..abi import BPF_ANY, BPF_EXIST, BPF_NOEXIST, CPUMAP_QSIZE_MAX
from ..closing import Closing
from ..errors import ClosedResourceError, HandlerSetupError
from ..map_errors import as_uint, map_error, walk_keys
from ..programs.contract import WorkerInfo
from ..programs.user_errors import UserError
from .actor import EntryActor
from .places import Place, PlaceLike, as_place
from .ray_setup import NodeInfo, cluster_nodes, node_cpus, resolve_node
from .source import Target

START_TIMEOUT = 60.0  # seconds an entry actor may take to start (a fresh node pulls workers)
DEFAULT_MAX_RESTARTS = 1  # Ray re-creates a dead entry actor this many times
ALIVE_TIMEOUT = 20.0  # seconds an entry may take to answer after a run (a restart included)

_map_ids = iter(range(1, 1 << 31))


class ActorState(StrEnum):
    """Where a cluster entry's actor is: ``live`` (it answers), ``dead`` (it died and Ray
    will not restart it), ``retired`` (deleted or replaced; in the history).  Not the
    local map's ``EntryState``: a cluster entry has no grace period and no drain -- Ray
    owns the actor's life."""

    LIVE = "live"
    DEAD = "dead"
    RETIRED = "retired"


@dataclass
class ClusterEntry:
    """One update of one place: its actor, where it runs, what became of it."""

    place: Place
    node: NodeInfo
    qsize: int
    generation: int
    actor: Any
    pid: int
    pinned: bool
    state: ActorState = ActorState.LIVE
    pids: set[int] = field(default_factory=set)  # every process that handled its frames
    failures: list[str] = field(default_factory=list)

    @property
    def restarts(self) -> int:
        """Restarts seen: processes that handled its frames, less the first."""
        return max(len(self.pids | {self.pid}) - 1, 0)


@dataclass(frozen=True)
class EntryResult:
    """What an entry's handler returned from ``finish()`` when the entry was retired
    (``result`` None if it has no ``finish``, or its actor was dead)."""

    place: Place
    node_id: str
    generation: int
    result: Any
    error: str | None = None


class ClusterMap(Closing):
    """A cpumap whose entries are Ray actors on the cluster's nodes (module docstring).

    ``handler``: the entries' handler (the same contract as ``CpuMap``'s: per frame, or a
    batch handler; ``setup(info)``/``finish()``), pickled to each entry, or a loader spec
    string loaded on the entry's node.  ``max_entries``: None for no limit.  ``pin``: pin
    each actor to its CPU (``os.sched_setaffinity``).  ``max_restarts``: how many times Ray
    re-creates an entry's actor after its process dies.  ``start_timeout``: seconds an
    actor may take to start; ``alive_timeout``: to answer after a run (else it is killed
    and ``dead``).  Ray must be connected
    (:func:`cpumap.cluster.ray_setup.connect`).
    """

    def __init__(
        self,
        handler: Any = None,
        *,
        max_entries: int | None = None,
        pin: bool = True,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        start_timeout: float = START_TIMEOUT,
        alive_timeout: float = ALIVE_TIMEOUT,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("Ray is not connected: cpumap.cluster.connect() first")
        if max_entries is not None and max_entries < 1:
            raise map_error(errno.EINVAL, f"max_entries is {max_entries}")
        self.map_id = next(_map_ids)
        self.handler = handler  # None: the actor accepts every frame
        self.max_entries = max_entries
        self.pin = pin
        self.max_restarts = max_restarts
        self.start_timeout = start_timeout
        self.alive_timeout = alive_timeout
        self.results: list[EntryResult] = []
        self.history: list[ClusterEntry] = []
        self._entries: dict[Place, ClusterEntry] = {}
        self._generation = 0
        self._node_cpus: dict[str, frozenset[int]] = {}
        self._lock = threading.RLock()
        self._running = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<ClusterMap id={self.map_id} entries={[str(p) for p in self._entries]}>"

    # -- map operations ----------------------------------------------------------------------
    def update(self, place: PlaceLike, qsize: int, flags: int = BPF_ANY) -> None:
        """Populate (or replace) ``place`` with an entry whose queue holds ``qsize`` frames
        (its ring): a new actor on its node, its worker thread pinned to its CPU.
        ``qsize == 0`` deletes.  Errors: see the table."""
        place = as_place(place)
        qsize = as_uint(qsize, 32, "qsize")
        flags = as_uint(flags, 64, "flags")
        with self._lock:
            self._check_usable()
            if flags > BPF_EXIST:
                raise map_error(errno.EINVAL, f"flags {flags:#x} > BPF_EXIST")
            full = self.max_entries is not None and len(self._entries) >= self.max_entries
            if place not in self._entries and full:
                raise map_error(errno.E2BIG, f"{self.max_entries} places in use (max_entries)")
            if flags == BPF_NOEXIST:
                raise map_error(errno.EEXIST, "cpumap entries always exist (BPF_NOEXIST)")
            if qsize > CPUMAP_QSIZE_MAX:
                raise map_error(errno.EOVERFLOW, f"qsize {qsize} > {CPUMAP_QSIZE_MAX}")
            node = resolve_node(place.node, cluster_nodes())
            if place.cpu not in self._cpus_of(node):
                raise map_error(
                    errno.ENODEV,
                    f"CPU {place.cpu} is not usable on node {node.name} "
                    f"(its CPUs: {sorted(self._cpus_of(node))})",
                )
            if qsize == 0:
                self._retire(place)
                return
            new = self._start(place, node, qsize)
            self._retire(place)
            self._entries[place] = new

    def delete(self, place: PlaceLike) -> None:
        """Empty ``place``: its handler's ``finish()`` result is gathered, its actor ends."""
        place = as_place(place)
        with self._lock:
            self._check_usable()
            try:
                resolve_node(place.node, cluster_nodes())
            except OSError as e:
                if place not in self._entries:  # an entry on a node that died: deletable
                    raise map_error(errno.EINVAL, str(e)) from None
            self._retire(place)

    def lookup(self, place: PlaceLike) -> int:
        """The qsize of populated ``place``; ENOENT if it is not populated."""
        place = as_place(place)
        with self._lock:
            self._check_open()
            e = self._entries.get(place)
            if e is None:
                raise map_error(errno.ENOENT, f"no entry at {place}")
            return e.qsize

    def get_next_key(self, place: PlaceLike | None = None) -> Place:
        """The walk (a hash map's): ``None`` or an unknown place -> the first place; the
        last -> ENOENT; otherwise the next populated place in map order."""
        with self._lock:
            self._check_open()
            order = self._order()
            if not order:
                raise map_error(errno.ENOENT, "the map is empty")
            if place is None:
                return order[0]
            place = as_place(place)
            if place not in self._entries:
                return order[0]
            i = order.index(place)
            if i == len(order) - 1:
                raise map_error(errno.ENOENT, f"{place} is the last key")
            return order[i + 1]

    def keys(self) -> Iterator[Place]:
        """Every populated place, by walking ``get_next_key``."""
        return walk_keys(self.get_next_key)

    __iter__ = keys

    def items(self) -> Iterator[tuple[Place, int]]:
        """``(place, qsize)`` for every populated place."""
        for place in self.keys():
            yield place, self.lookup(place)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, place: object) -> bool:
        try:
            return as_place(place) in self._entries  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def entry(self, place: PlaceLike) -> ClusterEntry:
        """The record of populated ``place`` (its actor, node, state); ENOENT as lookup."""
        self.lookup(place)
        return self._entries[as_place(place)]

    def entries(self) -> list[ClusterEntry]:
        """The populated entries in map order (key ``i`` of a run is ``entries()[i]``)."""
        with self._lock:
            return [self._entries[p] for p in self._order()]

    # -- runs ----------------------------------------------------------------------------------
    def targets(self) -> list[Target]:
        """The snapshot a run's sources steer into: key ``i`` is the ``i``-th entry in map
        order, with its actor and qsize (its queue's bound, shared by every source, as a
        ring is by every producer)."""
        return [Target(i, e.place, e.actor, e.qsize) for i, e in enumerate(self.entries())]

    def begin_run(self) -> list[ClusterEntry]:
        """Freeze the map for a run (updates then fail with EBUSY); the entries, in key
        order.  :meth:`end_run` unfreezes it."""
        with self._lock:
            self._check_usable()
            if not self._entries:
                raise map_error(errno.ENOENT, "the map has no entries: update() some places first")
            self._running = True
            return self.entries()

    def end_run(self, pids: dict[int, set[int]], failures: dict[int, list[str]]) -> list[UserError]:
        """Unfreeze; fold what the run saw into the entries (processes, failures) and mark
        the ones whose actor died for good ``dead``.  What failed in the live entries'
        handlers during the run (asked once each is idle: its handler is not running)."""
        import ray

        errors: list[UserError] = []
        with self._lock:
            self._running = False
            entries = self.entries()
            for key, e in enumerate(entries):
                e.pids |= pids.get(key, set())
                e.failures.extend(failures.get(key, []))
            for e in entries:
                if e.state == ActorState.LIVE and not _idle(ray, e.actor, self.alive_timeout):
                    # Dead, or stuck in its handler (its frames were settled as lost at
                    # the sources' deadline): either way it is retired for good now, so
                    # that no frame counted lost is handled later (actor.py).
                    ray.kill(e.actor, no_restart=True)
                    e.state = ActorState.DEAD
            for e in entries:
                if e.state == ActorState.LIVE:
                    errors.extend(_user_errors(ray, e.actor, self.alive_timeout))
        return errors

    def abort(self) -> None:
        """End every entry's actor now, without its ``finish()``, and close the map: an
        interrupted run (Ctrl-C) stops at once -- no idle wait, no drain of what the
        queues hold, no result gathered (each entry's result says so).  Idempotent."""
        self._end_all(self._kill)

    # -- close ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Retire every entry (gathering ``finish()`` results) and end every actor.
        Idempotent; safe after Ray's shutdown (nothing is left to end then)."""
        self._end_all(self._retire)

    def _end_all(self, end: Callable[[Place], None]) -> None:
        """Close the map, ending each entry with ``end`` (once: the first close wins)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._running = False
            for place in self._order():
                end(place)

    def _kill(self, place: Place) -> None:
        """Take ``place`` out of the map and end its actor now, without ``finish()``."""
        import ray

        e = self._entries.pop(place)
        if ray.is_initialized():
            ray.kill(e.actor, no_restart=True)
        e.state = ActorState.DEAD
        self.results.append(EntryResult(place, e.node.node_id, e.generation, None, "interrupted"))
        self.history.append(e)

    # -- internals -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("cluster map is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._running:
            raise map_error(errno.EBUSY, "a run is in progress: the map changes between runs")

    def _order(self) -> list[Place]:
        return sorted(self._entries, key=lambda p: (p.node, p.cpu))

    def _cpus_of(self, node: NodeInfo) -> frozenset[int]:
        """The CPUs a process on ``node`` may run on (asked once per node)."""
        cpus = self._node_cpus.get(node.node_id)
        if cpus is None:
            try:
                cpus = node_cpus(node, self.start_timeout)
            except Exception as e:  # the node went away between listing and asking
                raise map_error(errno.ENODEV, f"node {node.name} did not answer: {e}") from None
            self._node_cpus[node.node_id] = cpus
        return cpus

    def _start(self, place: Place, node: NodeInfo, qsize: int) -> ClusterEntry:
        """Create the entry's actor on ``node`` and wait until it is set up."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._generation += 1
        info = WorkerInfo(
            map_id=self.map_id,
            key=place.cpu,  # as CpuMap's (key == CPU); a run's key is its map order
            cpu=place.cpu,
            qsize=qsize,
            slot=self._generation,
            generation=self._generation,
            pinned=self.pin,
        )
        cls = ray.remote(EntryActor)
        actor = cls.options(
            num_cpus=0,  # placement is by node and CPU, not Ray's logical CPUs (docs)
            max_restarts=self.max_restarts,
            max_task_retries=0,  # an offer is never run twice: actor.py
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        ).remote(self.handler, info, self.pin)
        try:
            ready = ray.get(actor.ready.remote(), timeout=self.start_timeout)
        except GetTimeoutError:
            ray.kill(actor, no_restart=True)
            raise map_error(errno.ENOMEM, f"the actor for {place} did not start in time") from None
        except RayActorError as e:
            ray.kill(actor, no_restart=True)
            raise HandlerSetupError(f"entry {place} did not start:\n{e}") from None
        return ClusterEntry(
            place=place,
            node=node,
            qsize=qsize,
            generation=self._generation,
            actor=actor,
            pid=int(ready["pid"]),
            pinned=bool(ready["pinned"]),
        )

    def _retire(self, place: Place) -> None:
        """Take ``place`` out of the map: gather its ``finish()`` result, end its actor."""
        import ray

        e = self._entries.pop(place, None)
        if e is None:
            return
        result, error = None, None
        if ray.is_initialized():
            try:
                result = ray.get(e.actor.finish.remote(), timeout=self.start_timeout)
            except Exception as exc:  # dead, or its finish() raised: reported, not raised
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            ray.kill(e.actor, no_restart=True)
        self.results.append(EntryResult(place, e.node.node_id, e.generation, result, error))
        if e.state != ActorState.DEAD:
            e.state = ActorState.RETIRED
        self.history.append(e)


def _user_errors(ray: Any, actor: Any, timeout: float) -> list[UserError]:
    """What failed in ``actor``'s handler (none when it does not answer: it died)."""
    try:
        return list(ray.get(actor.take_user_errors.remote(), timeout=timeout))
    except Exception:
        return []


def _idle(ray: Any, actor: Any, timeout: float) -> bool:
    """Whether ``actor`` answers within ``timeout`` with its queue empty and its worker
    waiting (a dead one fails at once; a restarting one answers once it is back)."""
    try:
        return bool(ray.get(actor.idle.remote(timeout), timeout=timeout + 5.0))
    except Exception:
        return False
