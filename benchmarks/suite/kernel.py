"""The kernel's own cpumap, the anchor: 64-byte UDP frames enter with BPF_PROG_TEST_RUN in
live-frames mode on the RX CPU (0), an XDP program redirects each to the cpumap entry of
the target CPU (1) (``cpumap.kernel``), and the ``xdp_cpumap_*`` tracepoints say what
happened there.

* ``xdp-drop``: the entry's second-stage XDP program drops every frame on CPU 1;
* ``netstack``: no second stage: CPU 1 builds an SKB per frame and runs the receive path;
* ``rx-drop`` (:func:`rx_drop_fps`): the RX program drops every frame, no redirect: what
  the sender can do.

Frames/s is what CPU 1 processed, from the first enqueue to the last kthread batch.  The
one implementation of these measurements: the suite's ``kernel`` rows use it, and so do
``benchmarks/bench_kernel_cpumap.py`` (every path and ring size, printed in full) and
``bench_engine.py --kernel``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Literal

from cpumap.kernel import (
    KernelCpumapRun,
    bpf_unavailable_reason,
    live_frames_unavailable_reason,
    rx_drop_ceiling,
    tracing_unavailable_reason,
)

QSIZE = 2048  # the suite's ring size (the engine's rows use the same)

Path = Literal["xdp-drop", "netstack"]
_SECOND_STAGE: dict[str, Literal["drop"] | None] = {"xdp-drop": "drop", "netstack": None}


@dataclass(frozen=True)
class KernelFigure:
    """One configuration's result: medians over ``repeat`` runs."""

    path: str
    qsize: int
    frames_per_s: float
    """Median frames/s processed on the target CPU."""
    min_fps: float
    max_fps: float
    drop_ratio: float
    """Queue-full drops / frames redirected (0 for rx-drop)."""
    ns_per_frame: float | None
    """Median kthread CPU nanoseconds per frame on the target CPU (None for rx-drop, or
    where ``/proc/<pid>/schedstat`` cannot be read): the cost of a frame there, whatever
    else shares that CPU.  ``1e9 / ns_per_frame`` is the frames/s of a CPU it had alone."""
    frames: int
    repeat: int
    complete: bool
    """Every run's tracepoint totals were whole (no lost events, kthread caught up)."""


def unavailable_reason() -> str | None:
    """Why the kernel's cpumap cannot be measured here (None if it can)."""
    try:
        return (
            bpf_unavailable_reason()
            or live_frames_unavailable_reason()
            or tracing_unavailable_reason()
        )
    except Exception as e:  # a probe that itself fails: say so, do not crash the bench
        return f"probing bpf(2) failed: {e!r}"


def kernel_cpumap_fps(
    path: Path = "xdp-drop",
    qsize: int = 192,
    *,
    frames: int = 1_000_000,
    repeat: int = 3,
    cpu: int = 1,
    rx_cpu: int = 0,
) -> KernelFigure:
    """Measure the kernel's cpumap on one path; a warm-up run is done and discarded."""
    with KernelCpumapRun(
        qsize,
        cpu,
        frames=frames,
        repeat=repeat,
        second_stage=_SECOND_STAGE[path],
        rx_cpu=rx_cpu,
    ) as run:
        run.run_once()  # warm-up: the test run's page pool, the kthread, the caches
        res = run.run()
    fps = [s.frames_per_s for s in res.samples]
    return KernelFigure(
        path=path,
        qsize=qsize,
        frames_per_s=statistics.median(fps),
        min_fps=min(fps),
        max_fps=max(fps),
        drop_ratio=res.drop_ratio,
        ns_per_frame=res.ns_per_frame,
        frames=frames,
        repeat=repeat,
        complete=all(s.complete and s.lost_events == 0 for s in res.samples),
    )


def rx_drop_fps(*, frames: int = 1_000_000, repeat: int = 3, rx_cpu: int = 0) -> KernelFigure:
    """Frames/s of the RX side alone (XDP_DROP, no redirect): the sender's ceiling."""
    rx_drop_ceiling(frames // 10, rx_cpu=rx_cpu)  # warm-up
    fps = [rx_drop_ceiling(frames, rx_cpu=rx_cpu) for _ in range(repeat)]
    return KernelFigure(
        path="rx-drop",
        qsize=0,
        frames_per_s=statistics.median(fps),
        min_fps=min(fps),
        max_fps=max(fps),
        drop_ratio=0.0,
        ns_per_frame=None,
        frames=frames,
        repeat=repeat,
        complete=True,
    )


def kernel_fps(path: Path, frames: int, repeat: int) -> dict[str, Any]:
    """The suite's row for ``path``: frames/s on CPU 1 (median), with its drops and cost."""
    f = kernel_cpumap_fps(path, QSIZE, frames=frames, repeat=repeat)
    return {"fps": f.frames_per_s, "drop_ratio": f.drop_ratio, "ns_per_frame": f.ns_per_frame}
