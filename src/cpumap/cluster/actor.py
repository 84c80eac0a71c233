"""An entry of a cluster map: a Ray actor on its node, pinned to its CPU, running the handler.

The actor is the cluster's worker process (``cpumap.engine.worker``): it receives parcels of
frames (:mod:`cpumap.cluster.frames`) instead of taking them from a ring, and hands them to
the user's handler under the same contract (``cpumap.programs.contract``):

* per frame -- ``handler(skb)``, ``False`` drops -- or per batch (a :func:`batch_handler`:
  ``handler(skb_batch)`` returns ``None`` or one boolean per frame);
* ``setup(info)`` once, when the actor starts (before its first frame), with a
  :class:`~cpumap.programs.contract.WorkerInfo` whose ``key`` is the entry's key in the
  cluster map and ``cpu`` its CPU on its node; a setup that raises fails the map update;
* ``finish()`` once, when the map closes the entry cleanly; its result is gathered in
  ``ClusterMap.results``.

Each parcel's outcomes -- delivered, handler_drop, handler_error, build_failed, the same
rules as the local worker's ``_deliver_each``/``_deliver_batch`` -- are returned to the
caller (the source) as a :class:`Reply`, with the pid of the process that handled it.
The *source* keeps the books, not the actor: an actor that dies takes its counters with
it, but the replies already returned are safe with their sources, and a parcel without a
reply is exactly a parcel whose frames have no known outcome (``lost``; see
:mod:`cpumap.cluster.source`).  The actor's own counters (:meth:`EntryActor.stats`) are a
cross-check and a live view.

Concurrency: Ray runs an actor's calls one at a time, in submission order per caller
(``max_concurrency=1``, the default): like a ring, a parcel waits in the actor's queue until
the previous one is handled.  Parcels from different sources interleave in arrival order,
as two RX queues' flushes interleave in one ring.

Restarts: the actor is created with ``max_restarts`` (Ray re-creates it on its node when
its process dies: ``__init__`` and ``setup`` run again, in a new process) and
``max_task_retries=0``: a parcel in flight when the process died is *not* re-sent (it may
have been handled in part: re-sending could deliver frames twice); it fails at its
source, which counts it lost.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Error
from ..programs import contract
from ..programs.contract import WorkerInfo
from ..skb import frame_skbs, skb_batch
from .frames import Parcel, unpack


@dataclass(frozen=True, slots=True)
class Reply:
    """The outcomes of one parcel, and which incarnation of the actor handled it."""

    delivered: int
    handler_drop: int
    handler_error: int
    build_failed: int
    pid: int  # the actor process that handled it (a restart makes a new one)


class PlacementError(Error, OSError):
    """The actor could not be pinned to its CPU on its node (``errno``: ENODEV)."""


class EntryActor:
    """The body of an entry's Ray actor (made remote by :mod:`cpumap.cluster.map`).

    ``handler`` is the user's handler object (pickled once per actor: each entry has its
    own copy, as each forked worker has), a loader spec string (``"file.py:name"``)
    loaded on the actor's node, or None (accept every frame).  ``info`` is what ``setup``
    is told; ``info.cpu`` is the CPU the process pins itself to (``os.sched_setaffinity``).
    """

    def __init__(self, handler: Any, info: WorkerInfo, pin: bool = True) -> None:
        import ray

        ctx = ray.get_runtime_context()
        self.reconstructed = bool(ctx.was_current_actor_reconstructed)
        self.node_id = str(ctx.get_node_id())
        self.pid = os.getpid()
        self.pinned = False
        if pin:
            allowed = os.sched_getaffinity(0)
            if info.cpu not in allowed:
                raise PlacementError(
                    errno.ENODEV,  # as CpuMap.update for a CPU that is not there
                    f"CPU {info.cpu} is not available on node {self.node_id[:8]} "
                    f"(allowed: {sorted(allowed)})",
                )
            os.sched_setaffinity(0, {info.cpu})
            self.pinned = True
        if handler is None:
            handler = accept_all
        elif isinstance(handler, str):
            from ..programs.loader import load_handler

            handler = load_handler(handler)
        self.handler = handler
        self.info = WorkerInfo(
            map_id=info.map_id,
            key=info.key,
            cpu=info.cpu,
            qsize=info.qsize,
            slot=info.slot,
            generation=info.generation,
            pinned=self.pinned,
        )
        self.batch = contract.is_batch_handler(handler)
        self.counts = np.zeros(4, dtype=np.int64)  # delivered, hdrop, herr, bfail
        self.parcels = 0
        contract.setup(handler, self.info)

    def ready(self) -> dict[str, Any]:
        """Where the actor runs: answered once it is constructed (``setup`` done)."""
        return {
            "node_id": self.node_id,
            "pid": self.pid,
            "pinned": self.pinned,
            "affinity": sorted(os.sched_getaffinity(0)),
            "reconstructed": self.reconstructed,
        }

    def deliver(self, rows: np.ndarray, desc: np.ndarray) -> Reply:
        """Hand one parcel's frames to the handler; their outcomes."""
        block = unpack(Parcel(rows, desc))
        idx = np.arange(block.count, dtype=np.uint32)
        if self.batch:
            out = _deliver_batch(self.handler, block, idx)
        else:
            out = _deliver_each(self.handler, block, idx)
        self.counts += out
        self.parcels += 1
        return Reply(*out, self.pid)

    def stats(self) -> dict[str, int]:
        """This incarnation's own counters (a cross-check of the sources' books)."""
        d, hd, he, bf = (int(x) for x in self.counts)
        return {
            "parcels": self.parcels,
            "delivered": d,
            "handler_drop": hd,
            "handler_error": he,
            "build_failed": bf,
            "reconstructed": self.reconstructed,
            "pid": self.pid,
        }

    def finish(self) -> Any:
        """Call the handler's ``finish()`` (if it has one): the entry's result."""
        return contract.finish(self.handler)


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
        except _HANDLER_FAILURES:
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
        batch = skb_batch(block, idx, 0)
    except Exception:
        return 0, 0, 0, n
    try:
        r = handler(batch)
    except _HANDLER_FAILURES:
        return 0, 0, n, 0
    if r is None:
        return n, 0, 0, 0
    accepted = np.asarray(r)
    if accepted.shape != (n,) or accepted.dtype != np.bool_:
        return 0, 0, n, 0
    ok = int(np.count_nonzero(accepted))
    return ok, n - ok, 0, 0
