"""The kernel's own cpumap, the anchor: 64-byte UDP frames enter with BPF_PROG_TEST_RUN in
live-frames mode on CPU 0, an XDP program redirects each to the cpumap entry of CPU 1
(``cpumap.kernel``; ``benchmarks/bench_kernel_cpumap.py`` prints more of it).

* ``xdp-drop``: the entry's second-stage XDP program drops every frame on CPU 1;
* ``netstack``: no second stage: CPU 1 builds an SKB per frame and runs the receive path.

Frames/s is what CPU 1 processed, from the first enqueue to the last kthread batch.
"""

from __future__ import annotations

import statistics
from typing import Any

from cpumap.kernel import (
    KernelCpumapRun,
    bpf_unavailable_reason,
    live_frames_unavailable_reason,
    tracing_unavailable_reason,
)

QSIZE = 2048


def unavailable() -> str | None:
    """Why the kernel's cpumap cannot be measured here (None if it can)."""
    try:
        return (
            bpf_unavailable_reason()
            or live_frames_unavailable_reason()
            or tracing_unavailable_reason()
        )
    except Exception as e:  # a probe that itself fails: say so, do not crash the bench
        return f"probing bpf(2) failed: {e!r}"


def kernel_fps(path: str, frames: int, repeat: int) -> dict[str, Any]:
    """frames/s on CPU 1 for ``path`` ("xdp-drop" or "netstack"): median, every run."""
    with KernelCpumapRun(
        QSIZE,
        1,
        frames=frames,
        repeat=repeat,
        second_stage="drop" if path == "xdp-drop" else None,
        rx_cpu=0,
    ) as run:
        run.run_once()  # warm-up: the page pool, the kthread, the caches
        res = run.run()
    fps = [s.frames_per_s for s in res.samples]
    return {
        "fps": statistics.median(fps),
        "runs": fps,
        "drop_ratio": res.drop_ratio,
        "ns_per_frame": res.ns_per_frame,
    }
