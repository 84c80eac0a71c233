"""The engine: the kernel's cpumap rebuilt from processes and shared memory.

Rule 1: data flows down, and each module owns one kernel concept (its theory of operation
is in its docstring, with the argument for why its protocol is safe):

* the process layer -- ``map`` (``CpuMap``: the map's operations, with the kernel's errnos;
  ``MapOptions``), ``entry`` (an entry's life, as a state table; the supervisor's record
  of its workers), ``supervisor`` (worker processes: start, reap, recover, replace,
  break, retire), ``watcher`` (the supervisor thread: supervision on its own, and the
  one thread that forks), ``worker`` (the kthread: consume, second stage, deliver,
  commit), ``messages`` (what a worker tells its supervisor, typed), ``second_stage``
  (an entry's XDP program on its CPU), ``rx`` (``RxProducer``: the driver's poll, where
  the XDP program runs), ``stats`` (frozen snapshots, events), ``report`` (a map's whole
  life, after ``close()``);
* the shared-memory layer -- ``ownership`` (who holds each frame, and recovery: the
  state machine), ``control`` (``MapShared``: the map's control segment, the
  one seam between the map and its processes), ``bulkq`` (staging per destination, the
  redirect path, the flush), ``ring`` (the bounded MPSC ring, sleep and wake-up), ``rcu``
  (grace periods over producers), ``counters`` (the tracepoints' counter tables),
  ``frame_pool`` (frames and who holds each), ``pids``.

Rule 2: the shared-memory layer starts no process and calls no user code; it moves frame
indices.  The process layer calls user code only through ``cpumap.programs``.
Rule 3: a producer, a worker or a second stage is given the map's ``MapShared`` and frame
pool; nothing reaches into ``CpuMap`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the same names as the table below (tests/test_imports.py)
    from ..errors import HandlerSetupError
    from .entry import Entry, EntryEvent, EntryState, EntryStateError
    from .map import QSIZE_MAX, CpuMap, MapOptions
    from .report import MapReport
    from .rx import RxProducer
    from .second_stage import OutputMap
    from .stats import (
        EnqueueEvent,
        EnqueueRow,
        EntryStats,
        KthreadEvent,
        MapStats,
        ProducerStats,
    )
    from .supervisor import RestartPolicy, WorkerEvent, WorkerResult

__all__ = [
    "QSIZE_MAX",
    "CpuMap",
    "EnqueueEvent",
    "EnqueueRow",
    "Entry",
    "EntryEvent",
    "EntryState",
    "EntryStateError",
    "EntryStats",
    "HandlerSetupError",
    "KthreadEvent",
    "MapOptions",
    "MapReport",
    "MapStats",
    "OutputMap",
    "ProducerStats",
    "RestartPolicy",
    "RxProducer",
    "WorkerEvent",
    "WorkerResult",
]

# Each name is imported from its module when first asked for (cpumap/lazy.py).
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "HandlerSetupError": "..errors",
        "Entry": ".entry",
        "EntryEvent": ".entry",
        "EntryState": ".entry",
        "EntryStateError": ".entry",
        "QSIZE_MAX": ".map",
        "CpuMap": ".map",
        "MapOptions": ".map",
        "MapReport": ".report",
        "RxProducer": ".rx",
        "OutputMap": ".second_stage",
        "EnqueueEvent": ".stats",
        "EnqueueRow": ".stats",
        "EntryStats": ".stats",
        "KthreadEvent": ".stats",
        "MapStats": ".stats",
        "ProducerStats": ".stats",
        "RestartPolicy": ".supervisor",
        "WorkerEvent": ".supervisor",
        "WorkerResult": ".supervisor",
    },
)
