"""A map entry's life, as data: its states, the events that move it, and the record it keeps.

Rule 1: everything that decides which state an entry is in lives here, in
:data:`TRANSITIONS`; an event the table does not list for the entry's state is a bug, and
:meth:`Entry.fire` raises.  Rule 2: nothing here does anything: the map (``map.py``) fires
the events of an entry's life, and the supervisor (``supervisor.py``), which starts and
reaps the worker processes, fires ``BROKE`` when it gives up on them.  Rule 3: the state
changes only through :meth:`Entry.fire`; beside it, the map writes only the entry's
``grace`` snapshot, and the supervisor only its :class:`WorkerLife`.

Theory of operation: replace and delete while traffic flows
-----------------------------------------------------------
Every update makes a new entry (new ring slot, new worker) and retires the old one, like
``__cpu_map_entry_replace``::

    ACTIVE  --UNPUBLISHED-->   GRACE      the table no longer points at it
    GRACE   --GRACE_ELAPSED--> DRAINING   every producer was quiescent since (rcu.py):
                                          the worker is told to stop, and woken
    DRAINING --DRAINED-->      RETIRED    the worker emptied its ring and exited
    GRACE | DRAINING --ABANDONED--> RETIRED   close() ran out of time: the worker was
                                          killed and what it held recovered, counted lost

What is true in each state: once unpublished, a producer that starts an RX batch cannot find
the entry; after the grace period no producer holds it, and (bulkq.py) every frame any
producer staged for it is already in its ring; the worker drains that ring and exits only
when it is empty (worker.py); only when the entry is RETIRED is its slot reused.  Nothing is
lost on the way.

Broken entries
--------------
A worker that dies is replaced (the supervisor), in whichever state its entry is: a
retiring entry needs its worker too, to drain its ring.  But a DRAINING entry's worker that
exits having drained its ring (every outcome committed, nothing in hand) did not die,
whatever its exit status: it had nothing left but ``finish()``, and a replacement would only
run ``setup()`` and ``finish()`` again.  The entry is DRAINED; a ``finish()`` that failed to
report is named (``WorkerLife.finish_error``), never restarted.  An entry whose workers die faster
than the restart policy allows, or whose replacement cannot start, is *broken*: it has no
worker, its ring is killed (a producer's push is refused: counted ``queue_full``) and what
the ring held is counted lost.  Where it goes depends on where it was::

    ACTIVE  --BROKE-->           BROKEN     unpublished from the shared table (a redirect
                                            to it is a redirect error); lookup still
                                            finds it
    BROKEN  --UNPUBLISHED-->     BROKEN_RETIRING   replaced or deleted
    GRACE | DRAINING --BROKE-->  BROKEN_RETIRING   broken while it retired
    BROKEN_RETIRING --GRACE_ELAPSED--> RETIRED     no producer holds it: its slot may be
                                                   reused (no worker to stop and drain)
    BROKEN_RETIRING --ABANDONED-->     RETIRED     close() ran out of time first

Why a broken retiring entry still waits out its grace period: a producer that found it
before it was unpublished may still flush into its slot's ring.  While the slot is this
entry's, the killed ring refuses it; reused, the slot's ring would take those frames into
another entry.  So the slot is freed only once every such producer has left.  An entry broken
while DRAINING is past its grace period already: ``GRACE_ELAPSED`` holds at once (a grace
period that ended stays ended: rcu.py), and it retires at the map's next pass.

The whole picture (every arrow is a row of :data:`TRANSITIONS`)::

             UNPUBLISHED         GRACE_ELAPSED              DRAINED
    ACTIVE --------------> GRACE --------------> DRAINING ----------> RETIRED
      |                      |                     |                   ^   ^
      | BROKE                | BROKE               | BROKE             |   |
      v                      v                     |                   |   |
    BROKEN --UNPUBLISHED--> BROKEN_RETIRING <------+                   |   |
                             |                                         |   |
                             +------ GRACE_ELAPSED, ABANDONED ---------+   |
                                                                           |
    GRACE, DRAINING --ABANDONED--------------------------------------------+
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any

from ..errors import Error

if TYPE_CHECKING:
    import numpy as np

    from .counters import KthreadRecord
    from .messages import Exited
    from .ring import Ring
    from .worker import WorkerProcess


class EntryState(StrEnum):
    """Where an entry is in its life (a ``str``: ``state == "active"`` reads well)."""

    ACTIVE = "active"  # published at its key; its worker consumes its ring
    BROKEN = "broken"  # its workers kept dying: no worker, not in the shared table
    GRACE = "grace"  # unpublished; producers may still hold it until a grace period ends
    DRAINING = "draining"  # no producer can reach it; its worker empties the ring and exits
    BROKEN_RETIRING = "broken-retiring"  # broken and unpublished: waits out the grace period
    RETIRED = "retired"  # its worker is gone and its slot free

    @property
    def broken(self) -> bool:
        """No worker consumes its ring, and none will: BROKEN or BROKEN_RETIRING."""
        return self in (EntryState.BROKEN, EntryState.BROKEN_RETIRING)

    @property
    def current(self) -> bool:
        """The entry of its key now -- ``lookup`` finds it: ACTIVE or BROKEN (the others
        were replaced or deleted: retiring, or retired)."""
        return self in (EntryState.ACTIVE, EntryState.BROKEN)


class EntryEvent(Enum):
    """What happens to an entry."""

    UNPUBLISHED = "unpublished"  # replaced or deleted: the table points elsewhere
    GRACE_ELAPSED = "grace elapsed"  # every producer has been quiescent since
    DRAINED = "drained"  # the worker emptied the ring and exited
    ABANDONED = "abandoned"  # the worker was killed before it drained (close timed out)
    BROKE = "broke"  # its workers died faster than the restart policy allows


TRANSITIONS: dict[EntryState, dict[EntryEvent, EntryState]] = {
    EntryState.ACTIVE: {
        EntryEvent.UNPUBLISHED: EntryState.GRACE,
        EntryEvent.BROKE: EntryState.BROKEN,
    },
    EntryState.BROKEN: {EntryEvent.UNPUBLISHED: EntryState.BROKEN_RETIRING},
    EntryState.GRACE: {
        EntryEvent.GRACE_ELAPSED: EntryState.DRAINING,
        EntryEvent.BROKE: EntryState.BROKEN_RETIRING,
        EntryEvent.ABANDONED: EntryState.RETIRED,
    },
    EntryState.DRAINING: {
        EntryEvent.DRAINED: EntryState.RETIRED,
        EntryEvent.BROKE: EntryState.BROKEN_RETIRING,
        EntryEvent.ABANDONED: EntryState.RETIRED,
    },
    EntryState.BROKEN_RETIRING: {
        EntryEvent.GRACE_ELAPSED: EntryState.RETIRED,
        EntryEvent.ABANDONED: EntryState.RETIRED,
    },
    EntryState.RETIRED: {},
}


class EntryStateError(Error, RuntimeError):
    """An event that the entry's state does not allow: a bug in the engine."""


@dataclass(eq=False)
class WorkerLife:
    """The supervisor's record of an entry's worker processes, over the entry's life.

    Written only by the supervisor (``supervisor.py``), under the map's lock; the map and
    the stats only read it.  The map's part of an entry is its state and grace snapshot.
    """

    worker: WorkerProcess | None = None  # the live (or dead, not yet reaped) worker
    restarts: int = 0  # replacement workers started, over the entry's whole life
    heat: float = 0.0  # recent deaths, decaying (supervisor.RestartPolicy)
    heat_at: float = 0.0  # when ``heat`` was last brought up to date (monotonic)
    stuck_since: float = 0.0  # when it was reported stuck (0: not stuck)
    last_exitcode: int | None = None  # of its last worker that died
    lost: int = 0  # frames lost with its workers (recovered without an outcome)
    reports: list[Exited] = field(default_factory=list)  # received, not yet collected
    quarantined: bool = False  # its ring was killed without its lock: never reuse the slot
    finish_error: str | None = None  # "finish() failed: ..." of its last, drained worker


@dataclass(eq=False)
class Entry:
    """The controller's record of one map entry (one update: replacing a key makes a new
    one).  The kernel's ``struct bpf_cpu_map_entry``: its CPU, its ring, its worker."""

    key: int
    qsize: int
    slot: int
    generation: int
    ring: Ring
    record: KthreadRecord
    program: Any = None  # the second stage (second_stage.py), or None
    state: EntryState = EntryState.ACTIVE  # written only by fire()
    grace: np.ndarray | None = None  # the producers' sequence words when it was unpublished
    life: WorkerLife = field(default_factory=WorkerLife)  # the supervisor's

    @property
    def cpu(self) -> int:
        """The CPU its worker is pinned to (the key: a cpumap's key is a CPU)."""
        return self.key

    @property
    def worker(self) -> WorkerProcess | None:
        """Its current worker (``life.worker``; None while it has none).  A handle kept
        after the worker is replaced or retired still reads its ``pid`` and
        ``exitcode``; it no longer runs."""
        return self.life.worker

    def fire(self, event: EntryEvent) -> EntryState:
        """Move to the state :data:`TRANSITIONS` gives for ``event``; returns it."""
        new = TRANSITIONS[self.state].get(event)
        if new is None:
            raise EntryStateError(
                f"entry {self.key} (generation {self.generation}) cannot handle "
                f"{event.value!r} in state {self.state.value!r}"
            )
        self.state = new
        return new
