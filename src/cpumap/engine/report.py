"""A map's whole life as one record: what a run reports once it is over.

:meth:`CpuMap.report` builds it from the map's public records only -- its stats, with
every entry it ever had (the retired ones from its history, the live ones now), its
workers' results, its process events and its user-code errors -- so that a command line,
a test or a script reads one frozen value instead of five sources.  Read after
``close()``, it is final: every entry retired, every worker reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..programs.user_errors import UserError
from .stats import MapStats
from .supervisor import WorkerEvent, WorkerResult


@dataclass(frozen=True)
class MapReport:
    """Everything a map did, in one frozen record (:meth:`CpuMap.report`)."""

    stats: MapStats  # totals, and every entry the map ever had, by (key, generation)
    results: tuple[WorkerResult, ...]  # what each worker reported when it exited
    events: tuple[WorkerEvent, ...]  # deaths, restarts, broken entries, stuck workers, ...
    user_errors: tuple[UserError, ...]  # what failed in user code, per kind

    def as_dict(self) -> dict[str, object]:
        """The stats and the events and user errors as plain JSON-able data (the workers'
        results are the handlers' own values: they are left out)."""
        return {
            "stats": self.stats.as_dict(),
            "events": [vars(e).copy() for e in self.events],
            "user_errors": [e.as_dict() for e in self.user_errors],
        }
