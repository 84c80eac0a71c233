"""A map entry's life, as data: its states, the events that move it, and the record it keeps.

Rule 1: everything that decides which state an entry is in lives here, in
:data:`TRANSITIONS`; an event the table does not list for the entry's state is a bug, and
:meth:`Entry.fire` raises.  Rule 2: nothing here does anything: the map (``map.py``) fires
the events, and the supervisor (``supervisor.py``) starts and reaps the worker processes.

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

An ACTIVE entry whose worker dies is not moved: its worker is replaced (the supervisor).
One whose workers die faster than the restart policy allows, or whose replacement cannot
start, is BROKEN::

    ACTIVE  --BROKE-->        BROKEN     unpublished from the shared table (a redirect to
                                         it is a redirect error), its ring killed and what
                                         it held counted lost; lookup still finds it
    BROKEN  --UNPUBLISHED-->  GRACE      replaced or deleted: it retires like any entry
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any

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
    RETIRED = "retired"  # its worker is gone and its slot free


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
    EntryState.BROKEN: {EntryEvent.UNPUBLISHED: EntryState.GRACE},
    EntryState.GRACE: {
        EntryEvent.GRACE_ELAPSED: EntryState.DRAINING,
        EntryEvent.ABANDONED: EntryState.RETIRED,
    },
    EntryState.DRAINING: {
        EntryEvent.DRAINED: EntryState.RETIRED,
        EntryEvent.ABANDONED: EntryState.RETIRED,
    },
    EntryState.RETIRED: {},
}


class EntryStateError(RuntimeError):
    """An event that the entry's state does not allow: a bug in the engine."""


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
    state: EntryState = EntryState.ACTIVE
    worker: WorkerProcess | None = None  # the supervisor's handle; None: none running
    grace: np.ndarray | None = None  # the producers' sequence words when it was unpublished
    broken: bool = False  # its workers kept dying (also while retiring): none consumes
    restarts: int = 0  # replacement workers started, over its whole life
    heat: float = 0.0  # recent deaths, decaying (supervisor.RestartPolicy)
    heat_at: float = 0.0  # when ``heat`` was last brought up to date (monotonic)
    stuck_since: float = 0.0  # when it was reported stuck (0: not stuck)
    last_exitcode: int | None = None  # of its last worker that died
    quarantined: bool = False  # its ring was killed without its lock: never reuse the slot
    lost: int = 0  # frames lost with its workers
    results: list[Exited] = field(default_factory=list)  # what its workers reported

    @property
    def cpu(self) -> int:
        """The CPU its worker is pinned to (the key: a cpumap's key is a CPU)."""
        return self.key

    @property
    def retiring(self) -> bool:
        return self.state in (EntryState.GRACE, EntryState.DRAINING)

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
