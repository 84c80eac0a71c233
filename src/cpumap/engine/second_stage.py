"""The second stage: an XDP program that runs on the target CPU, before the skb is built.

Since Linux 5.9 a cpumap entry's value is ``struct bpf_cpumap_val {qsize; bpf_prog}``:
the entry may carry a program (attach type BPF_XDP_CPUMAP) that the kthread runs on every
frame it dequeues.  Its verdict decides what happens next, as in the kernel's
``cpu_map_bpf_prog_run_xdp``:

* ``PASS``     -- build the skb and hand it to the handler (the netstack);
* ``REDIRECT`` -- to another entry of the map (``redirect_map(cmap, key)``): the worker
  acts as a producer into that entry's ring, with its own bulk queues, flushed at the end
  of the batch; or to an output of an :class:`OutputMap` (``redirect_map(outputs, i)``),
  such as a per-CPU capture writer.  A redirect that fails (empty entry, bad output) is a
  drop, as ``xdp_do_redirect`` failing is in the kernel;
* anything else (``DROP``, ``ABORTED``, ``TX``, not a verdict, an exception -- any
  ``BaseException``: nothing a program raises kills the worker) -- dropped.

A frame redirected from entry to entry more than :data:`MAX_REDIRECT_HOPS` times (a loop:
0 -> 1 -> 0 ...) is dropped and counted (``hop_limit``, part of ``xdp_drop``): its hop
count travels in its descriptor.  The kernel has no such bound (docs/kernel-differences.md).

The kthread tracepoint's ``xdp_pass``, ``xdp_drop`` and ``xdp_redirect`` count them.

Why the worker takes part in grace periods: a worker that redirects is a producer of
other entries' rings, so it holds a producer slot in the registry (rcu.py) and brackets
each batch's second stage with ``read_lock``/``read_unlock``: an entry it redirects to
cannot be retired while one of its batches may still be flushing into it.

The verdicts come from the program runner (``programs/runner.py``) and redirects go through
the bulk queues' redirect path (``bulkq.py``), as on the RX side.

Crash safety (worker.py's commit protocol): frames this stage forwards into another ring
change hands at the flush (their tag says so), so a supervisor never counts them as lost;
every other frame -- dropped here, dropped at a full ring, given to an output -- is only
released after the batch's outcomes are committed, so a crash counts them ``lost``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..abi import XDP_PASS, XDP_REDIRECT
from ..programs import contract, user_errors
from ..programs.runner import ProgramRunner
from ..skb import skb_batch
from .bulkq import DEFAULT_BULK_SIZE, BulkQueues
from .frame_pool import TAG_HAND, FramePool
from .ownership import queued_tag

if TYPE_CHECKING:
    from ..programs.contract import WorkerInfo
    from .control import MapShared

MAX_REDIRECT_HOPS = 8  # redirects between entries a frame may take (second stages)


class OutputMap:
    """Outputs a second-stage program can redirect to, by index (like a devmap).

    Each output is a batch handler-like callable taking an ``SkbBatch`` (e.g.
    :class:`cpumap.sinks.CaptureSink`); it runs in every worker that redirects to it, as
    a forked copy, with optional ``setup(info)`` / ``finish()`` like a handler (their
    reports are part of the worker's result).
    """

    def __init__(self, outputs: Sequence[Any]) -> None:
        if not outputs:
            raise ValueError("OutputMap needs at least one output")
        for o in outputs:
            if not callable(o):
                raise TypeError(f"an output must be callable, not {type(o).__name__}")
        self.outputs = list(outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def has_entry(self, key: int) -> bool:
        """Whether ``key`` names an output (the redirect path's lookup)."""
        return 0 <= key < len(self.outputs)


@dataclass
class StageResult:
    """What the second stage did with one worker batch."""

    passed: np.ndarray  # frames to build skbs for and deliver
    release: list[np.ndarray] = field(default_factory=list)  # frames to release after commit
    n_pass: int = 0
    n_drop: int = 0
    n_redirect: int = 0  # to entries and outputs, successful
    n_out: int = 0  # to outputs (a final outcome)
    fwd_queue_full: int = 0  # redirected to an entry whose ring was full at flush
    hop_limit: int = 0  # dropped: redirected between entries too many times (in n_drop)


class SecondStage:
    """One entry's second-stage program, in its worker process.

    ``shared``: the control segment of the map this worker belongs to (a redirect naming
    that map goes to its entries); ``slot``: the worker's slot, whose producer slot
    (rcu.py) its redirects run under.
    """

    def __init__(
        self,
        program: Any,
        shared: MapShared,
        pool: FramePool,
        slot: int,
        *,
        bulk_size: int = DEFAULT_BULK_SIZE,
    ) -> None:
        self.program = program
        self.shared = shared
        self.pool = pool
        self.registry_index = shared.second_stage_producer(slot)
        self._runner = ProgramRunner(program, pool, contain=BaseException)
        self._dropped: list[np.ndarray] = []
        self._in_hand = TAG_HAND + slot  # our slot's hand tag
        self._bulk = BulkQueues(
            pool,
            shared.ring,
            self._drop_at_flush,  # released after the commit, not now
            self._on_flush,
            shared.n_slots,
            bulk_size,
            queued_tag=queued_tag(self.registry_index),
        )
        self._fwd_full = 0
        self._info: WorkerInfo | None = None
        self._opened: dict[int, OutputMap] = {}

    def setup(self, info: WorkerInfo) -> None:
        """Claim our producer slot and remember where we run; outputs are set up when first
        redirected to (a program may name its OutputMap only in what it returns)."""
        self.shared.registry.claim(self.registry_index)
        self._info = info
        target = contract.redirect_target_of(self.program)
        if isinstance(target, OutputMap):
            self._open(target)

    def finish(self) -> list[Any]:
        """The reports of every output this worker used."""
        return [
            contract.finish(o)
            for om in self._opened.values()
            for o in om.outputs
            if contract.has_finish(o)
        ]

    def _open(self, outputs: OutputMap) -> None:
        if id(outputs) in self._opened:
            return
        self._opened[id(outputs)] = outputs
        assert self._info is not None  # Invariant: setup() ran before the first batch
        for o in outputs.outputs:
            contract.setup(o, self._info)

    def _drop_at_flush(self, frames: np.ndarray) -> None:
        """Frames a full target ring refused: ours again (the flush had tagged them for
        the target), released after the commit -- a crash before it counts them lost."""
        self.pool.tag[frames] = self._in_hand
        self._dropped.append(frames.copy())

    def _on_flush(self, slot: int, processed: int, drops: int) -> None:
        self._fwd_full += drops

    # -- one batch -----------------------------------------------------------------------
    def run(self, idx: np.ndarray) -> StageResult:
        registry = self.shared.registry
        registry.read_lock(self.registry_index)
        try:
            v = self._runner.run(idx)
            counts = v.counts
            res = StageResult(passed=idx[v.verdicts == XDP_PASS] if counts[XDP_PASS] else idx[:0])
            res.n_pass = counts[XDP_PASS]
            dropped = len(idx) - counts[XDP_PASS] - counts[XDP_REDIRECT]
            if dropped:
                res.release.append(idx[(v.verdicts != XDP_PASS) & (v.verdicts != XDP_REDIRECT)])
            res.n_drop = dropped
            if counts[XDP_REDIRECT]:
                red = v.verdicts == XDP_REDIRECT
                self._redirect(idx[red], v.keys[red], v.target, res)
            self._fwd_full = 0
            self._bulk.flush_all()
            res.fwd_queue_full = self._fwd_full
        finally:
            registry.read_unlock(self.registry_index)
        res.release.extend(self._dropped)
        self._dropped.clear()
        return res

    def _redirect(self, ridx: np.ndarray, rkeys: np.ndarray, target: Any, res: StageResult) -> None:
        if isinstance(target, OutputMap):
            try:
                self._open(target)
            except BaseException:  # an output's setup failed: its frames are dropped
                res.n_drop += len(ridx)
                res.release.append(ridx)
                return
            self._to_outputs(ridx, rkeys, target, res)
            return
        # Our own map is recognised by its control segment: the program's target is the map
        # object it captured, and in this worker -- forked from the controller, whose heap
        # it copies with every object's identity -- that map's ``shared`` is the very
        # object our spec's ``shared`` is.  Any other map has another segment, or none.
        if target is not None and getattr(target, "shared", None) is not self.shared:
            res.n_drop += len(ridx)  # a map we cannot reach from here
            res.release.append(ridx)
            return
        ridx, rkeys = self._count_hop(ridx, rkeys, res)
        failed = self._bulk.redirect(self.shared, ridx, rkeys)
        if len(failed):  # xdp_do_redirect failed: a drop
            res.n_drop += len(failed)
            res.release.append(failed)
        res.n_redirect += len(ridx) - len(failed)

    def _count_hop(
        self, ridx: np.ndarray, rkeys: np.ndarray, res: StageResult
    ) -> tuple[np.ndarray, np.ndarray]:
        """One more hop for each frame redirected to an entry; those over the bound are
        dropped (counted ``hop_limit``): a redirect loop ends."""
        hops = self.pool.hops[ridx]
        over = hops >= MAX_REDIRECT_HOPS
        if over.any():
            n = int(np.count_nonzero(over))
            res.n_drop += n
            res.hop_limit += n
            res.release.append(ridx[over])
            keep = ~over
            ridx, rkeys, hops = ridx[keep], rkeys[keep], hops[keep]
        self.pool.hops[ridx] = hops + 1
        return ridx, rkeys

    def _to_outputs(
        self, ridx: np.ndarray, rkeys: np.ndarray, outputs: OutputMap, res: StageResult
    ) -> None:
        bad = rkeys >= len(outputs)
        if bad.any():
            res.n_drop += int(np.count_nonzero(bad))
            res.release.append(ridx[bad])
            ridx, rkeys = ridx[~bad], rkeys[~bad]
        for k in np.unique(rkeys).tolist():
            sel = ridx[rkeys == k]
            try:
                outputs.outputs[k](skb_batch(self.pool, sel))
            except BaseException as e:  # any failure of the output is its own, not the worker's
                user_errors.record("output", e, count=len(sel))
                res.n_drop += len(sel)  # the output failed: the frames are dropped
                res.release.append(sel)
                continue
            res.n_redirect += len(sel)
            res.n_out += len(sel)
            res.release.append(sel)
