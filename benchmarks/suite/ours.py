"""Our engine, in the shapes a user runs it: frames enter an RX producer (the caller's
process) and reach workers pinned to CPUs.

* ``second_stage_drop`` -- the kernel's remote XDP_DROP: RX on CPU 0 redirects every frame
  to the entry of CPU 1, whose second-stage program (vectorized) drops it; a full ring
  drops at flush, as the kernel's does.  Frames/s processed on CPU 1, as the kernel's
  figure is.
* ``batch_touch`` -- a vectorized program and a batch handler summing every byte of every
  frame, consumers on every CPU, lossless (a full ring makes the RX side wait).
* ``frame_handler`` -- a vectorized program and a per-frame handler reading ``skb.dport``,
  one worker (RX on CPU 0, the worker on CPU 1).
* ``frame_program`` -- a per-frame program (``FlowHash(vectorized=False)``, reading the
  frame's flow hash) and the same per-frame handler, one worker.

And ``framework_cost``: in this process, what the worker's per-frame delivery costs beyond
the handler's own body (views built from the batch's columns, the loop, the call).

:func:`run_engine` is the one end-to-end measurement of the engine here:
``benchmarks/bench_engine.py`` runs it too, with its sweeps of the engine's sizes
(:class:`Knobs`), and ``bench_scaling.py`` uses :class:`TouchBatch` as its workload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cpumap.abi import XDP_DROP
from cpumap.cpus import pinned
from cpumap.engine import CpuMap, MapOptions
from cpumap.engine.frame_pool import FramePool
from cpumap.packets import PacketBatch
from cpumap.programs import FlowHash, batch_handler, vectorized
from cpumap.skb import frame_skbs

from .common import per_second, wait_until

QSIZE = 2048


@batch_handler
class TouchBatch:
    """Sums every byte of every frame, ``passes`` times per batch (the same work as the
    pipelines' consumers in ``python_side``)."""

    def __init__(self, passes: int = 1) -> None:
        self.passes = passes
        self.acc = 0

    def __call__(self, batch: Any) -> None:
        rows = batch.rows
        for _ in range(self.passes):
            self.acc += int(rows.sum(axis=1, dtype=np.uint32)[-1])


class ReadDport:
    """A per-frame handler that reads the parsed transport header."""

    def __init__(self) -> None:
        self.acc = 0

    def __call__(self, skb: Any) -> None:
        self.acc += skb.dport


@vectorized
def drop_all(batch: Any) -> np.ndarray:
    """A second-stage program dropping every frame (the kernel's ``xdp-drop``)."""
    return np.full(len(batch), XDP_DROP, dtype=np.uint8)


@dataclass(frozen=True)
class Knobs:
    """The engine's sizes that ``bench_engine.py``'s sweeps vary; None: the default.  Only
    the sizes set are passed, so a default run makes the calls a user makes."""

    batch_size: int | None = None  #: the worker's batch (``CpuMap(batch_size=)``)
    busy_poll: float | None = None  #: the worker's spin before sleeping (``MapOptions``)
    poll_size: int | None = None  #: frames per RX poll (``producer(poll_size=)``)
    bulk_size: int | None = None  #: frames per flush (``producer(bulk_size=)``)

    def map_options(self) -> dict[str, Any]:
        """``CpuMap``'s keywords: ``batch_size``, and ``busy_poll`` in its options record."""
        options = _set({"batch_size": self.batch_size})
        if self.busy_poll is not None:
            options["options"] = MapOptions(busy_poll=self.busy_poll)
        return options

    def producer_options(self) -> dict[str, Any]:
        return _set({"poll_size": self.poll_size, "bulk_size": self.bulk_size})


def _set(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def run_engine(
    frames: np.ndarray,
    cpus: list[int],
    rx_cpu: int | None,
    *,
    handler: Any,
    program_vectorized: bool = True,
    lossless: bool = True,
    second_stage: Any = None,
    knobs: Knobs = Knobs(),  # frozen: one shared default is safe
) -> dict[str, float]:
    """Feed ``frames`` once through a fresh map; frames/s from the first frame received to
    the last one handled (``fps``: delivered, or processed when a second stage drops)."""
    n = len(frames)
    with CpuMap(max(cpus) + 1, handler=handler, **knobs.map_options()) as m:
        for c in cpus:
            m.update(c, QSIZE, program=second_stage)
        prog = FlowHash(m, cpus, vectorized=program_vectorized)
        batch = PacketBatch.from_array(frames)
        backpressure = 30.0 if lossless else 0.0
        with (
            m.producer(prog, backpressure=backpressure, **knobs.producer_options()) as rx,
            pinned(rx_cpu),
        ):
            t0 = time.perf_counter()
            rx.receive(batch)
            wait_until(lambda: m.stats().in_flight == 0, 120.0, "frames still in flight")
            elapsed = time.perf_counter() - t0
        s = m.stats()
    if s.rx != n or s.in_flight:
        raise RuntimeError(f"books do not balance: {s.outcomes()}")
    processed = sum(e.kthread_processed for e in s.entries)
    done = processed if second_stage is not None else s.delivered
    return {"fps": per_second(done, elapsed), "drop_ratio": s.queue_full / n}


def second_stage_drop(frames: np.ndarray) -> dict[str, float]:
    return run_engine(frames, [1], 0, handler=None, lossless=False, second_stage=drop_all)


def batch_touch(frames: np.ndarray, cpus: list[int]) -> dict[str, float]:
    return run_engine(frames, cpus, None, handler=TouchBatch())


def frame_handler(frames: np.ndarray) -> dict[str, float]:
    return run_engine(frames, [1], 0, handler=ReadDport())


def frame_program(frames: np.ndarray) -> dict[str, float]:
    return run_engine(frames, [1], 0, handler=ReadDport(), program_vectorized=False)


class _Plain:
    __slots__ = ("dport",)

    def __init__(self, dport: int) -> None:
        self.dport = dport


def framework_cost(frames: np.ndarray, repeat: int = 20) -> dict[str, float]:
    """µs per frame of the worker's per-frame delivery (``frame_skbs`` over a 1024-frame
    batch of the pool, the handler called on each), minus the same handler called on
    ready-made objects: the framework's own cost per frame, handler excluded."""
    n = min(len(frames), 1024)
    pool = FramePool(2 * n, frame_size=2048)
    try:
        h = pool.headroom
        width = frames.shape[1]
        pool.data[:n, h : h + width] = frames[:n]
        pool.length[:n] = pool.wire_len[:n] = width
        idx = np.arange(n, dtype=np.uint32)
        handler = ReadDport()
        dports = frames[:n, 36].astype(np.int64) * 256 + frames[:n, 37]
        plain = [_Plain(d) for d in dports.tolist()]

        def deliver() -> float:
            t = time.perf_counter()
            for skb in frame_skbs(pool, idx):
                handler(skb)
            return time.perf_counter() - t

        def bare() -> float:
            t = time.perf_counter()
            for obj in plain:
                handler(obj)
            return time.perf_counter() - t

        views = sorted(deliver() for _ in range(repeat))[repeat // 2]
        calls = sorted(bare() for _ in range(repeat))[repeat // 2]
    finally:
        pool.close()
    return {
        "us_per_frame": 1e6 * (views - calls) / n,
        "delivery_us": 1e6 * views / n,
        "handler_us": 1e6 * calls / n,
    }
