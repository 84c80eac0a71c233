"""Memory over many frames: the resident set of the RX process and of every worker, sampled
while a long stream of generated frames runs through a map, must stay flat (no growth with
the frame count: the pool, the rings and the handler's state are bounded)."""

from __future__ import annotations

import time
from typing import Any

from cpumap.engine import CpuMap
from cpumap.generator import Generator
from cpumap.programs import FlowHash
from cpumap.sinks import FlowTable

from .ours import ReadDport


def status_kib(pid: int, *fields: str) -> dict[str, int]:
    """The ``fields`` (e.g. "VmRSS", "RssAnon") of ``/proc/PID/status`` in KiB; 0 for a
    field absent or a process gone.  ``benchmarks/soak.py`` samples with it too."""
    out = dict.fromkeys(fields, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if it is gone)."""
    return status_kib(pid, "VmRSS")["VmRSS"]


def rss_over(frames: int, cpus: list[int], *, per_frame: bool, samples: int = 10) -> dict[str, Any]:
    """Run ``frames`` generated frames (mixed sizes, 4,096 flows) through a map with a flow
    table (or a per-frame handler), sampling every process's RSS ``samples`` times.  The
    growth is the last sample over the first (taken after the first tenth: warm)."""
    import os

    gen = Generator(flows=4096, sizes=(64, 512, 1400), count=frames, seed=3, undersize="clamp")
    handler: Any = ReadDport() if per_frame else FlowTable()
    every = max(frames // samples, 1)
    rows: list[dict[str, int]] = []
    t0 = time.perf_counter()
    with CpuMap(max(cpus) + 1, handler=handler) as m:
        for c in cpus:
            m.update(c, 2048)
        pids = {"rx": os.getpid()} | {f"worker{e.cpu}": e.pid for e in m.stats().entries}
        with m.producer(FlowHash(m, cpus), backpressure=30.0) as rx:
            seen = next_sample = 0
            for batch in gen.batches(1024):
                rx.receive(batch)
                seen += len(batch)
                if seen >= next_sample:
                    rows.append({"frames": seen} | {k: rss_kib(p) for k, p in pids.items()})
                    next_sample += every
        m.wait_idle(60)
        rows.append({"frames": seen} | {k: rss_kib(p) for k, p in pids.items()})
        s = m.stats()
    elapsed = time.perf_counter() - t0
    warm = rows[1] if len(rows) > 2 else rows[0]
    growth = {k: (rows[-1][k] - warm[k]) / warm[k] if warm[k] else 0.0 for k in pids if k in warm}
    return {
        "frames": s.rx,
        "seconds": elapsed,
        "fps": s.rx / elapsed,
        "samples": rows,
        "growth": growth,
        "max_growth": max((abs(g) for g in growth.values()), default=0.0),
        "balanced": s.rx == sum(s.outcomes().values()) and not s.in_flight,
    }
