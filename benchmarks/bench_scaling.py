"""Multi-core scaling: frames/s as RX producers and CPU workers are added.

Meant for a many-core machine (our 2-core VMs can only run its smallest points).  RX
producers are pinned to CPUs 0..P-1 and workers to the next W CPUs; every producer
pushes its share of 64-byte UDP frames through a vectorized ``FlowHash`` program (lossless:
a full ring makes it wait), and every worker runs a batch handler that does ``--work``
passes over every byte of every frame -- a stand-in for real per-frame processing, heavy
enough that the workers, not the RX side, are the bottleneck at one worker.

Beside it, in the same run, the baseline a Python user would write without us: one RX
process hashing each frame in Python and sending lists of 64 frames through a
``multiprocessing.Queue`` to W consumer processes doing the same work.

The baseline is the suite's ``mp.Queue`` pipeline (``suite.python_side.run_pipeline``, with
``--work`` passes), the workers' handler its ``suite.ours.TouchBatch``.

Printed: frames/s per configuration, the speed-up against one worker, and ours against
the baseline at the same W.  ``--json FILE`` writes everything.

    python benchmarks/bench_scaling.py [--frames N] [--work K] [--repeat R] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time

import numpy as np

from cpumap import CpuMap, FlowHash, PacketBatch
from suite.common import make_frames
from suite.ours import TouchBatch
from suite.python_side import run_pipeline


def _rx_main(
    cmap: CpuMap, index: int, cpu: int, frames: np.ndarray, keys, go, done, poll: int
) -> None:
    os.sched_setaffinity(0, {cpu})
    prog = FlowHash(cmap, keys)
    with cmap.producer(prog, index=index, backpressure=60.0, poll_size=poll, bulk_size=poll) as rx:
        go.wait()
        rx.receive(PacketBatch.from_array(frames))
    done.put(index)


def run_ours(
    frames: np.ndarray, producers: int, workers: int, work: int, poll: int = 1024
) -> float:
    cpus = sorted(os.sched_getaffinity(0))
    rx_cpus = cpus[:producers]
    w_cpus = cpus[producers : producers + workers]
    ctx = multiprocessing.get_context("fork")
    per = len(frames) // producers
    with CpuMap(
        max(cpus) + 1,
        handler=TouchBatch(passes=work),
        producers=producers,
        frames=max(32768, 8 * poll) * producers,
        batch_size=max(1024, poll // 2),
    ) as m:
        for c in w_cpus:
            m.update(c, 4096)
        go, done = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(
                target=_rx_main,
                args=(m, p, rx_cpus[p], frames[p * per : (p + 1) * per], w_cpus, go, done, poll),
            )
            for p in range(producers)
        ]
        for p in procs:
            p.start()
        time.sleep(0.2)  # producers attached and waiting on the event (setup, not timed)
        t0 = time.perf_counter()
        go.set()
        for _ in procs:
            done.get()
        while m.stats().in_flight:
            time.sleep(0.0005)
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.join()
        s = m.stats()
        assert s.rx == per * producers == s.delivered, s.outcomes()
    return s.delivered / elapsed


def run_baseline(frames: list[bytes], workers: int, work: int) -> float:
    """The pipeline: this process on the first CPU, ``workers`` consumers on the next."""
    cpus = sorted(os.sched_getaffinity(0))
    return run_pipeline("mp.Queue", frames, cpus[1 : 1 + workers], rx_cpu=cpus[0], passes=work)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2_000_000)
    ap.add_argument("--work", type=int, default=8, help="passes over each frame per batch")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", default=None, help="worker counts, e.g. 1,2,4,8")
    ap.add_argument("--producers", default="1,2,4", help="RX producer counts")
    ap.add_argument("--poll", type=int, default=1024, help="frames per RX poll (and bulk)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ncpu = len(os.sched_getaffinity(0))
    frames = make_frames(args.frames)
    flist = [bytes(r) for r in frames]
    ws = (
        [int(w) for w in args.workers.split(",")]
        if args.workers
        else [w for w in (1, 2, 4, 8, 12, 14) if w < ncpu]
    )
    print(
        f"{ncpu} CPUs, {len(frames):,} frames of 64 B, work {args.work} passes/frame, "
        f"poll {args.poll}"
    )
    results: list[dict] = []

    def med(fn) -> float:
        return statistics.median(fn() for _ in range(args.repeat))

    base: dict[int, float] = {}
    for w in [] if args.no_baseline else ws:
        if 1 + w > ncpu:
            continue
        base[w] = med(lambda w=w: run_baseline(flist, w, args.work))
        results.append({"name": "baseline", "producers": 1, "workers": w, "fps": base[w]})
        print(f"  baseline  P=1 W={w:<3} {base[w] / 1e6:6.2f} M frames/s", flush=True)
    one: dict[int, float] = {}
    for p in (int(x) for x in args.producers.split(",")):
        for w in ws:
            if p + w > ncpu or w < p // 2:
                continue
            fps = med(lambda p=p, w=w: run_ours(frames, p, w, args.work, args.poll))
            one.setdefault(p, fps)
            vs = f"  x{fps / base[w]:5.2f} baseline" if p == 1 and w in base else ""
            results.append({"name": "ours", "producers": p, "workers": w, "fps": fps})
            print(
                f"  ours      P={p} W={w:<3} {fps / 1e6:6.2f} M frames/s  "
                f"x{fps / one[p]:5.2f} vs W={ws[0]}{vs}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"cpus": ncpu, "frames": len(frames), "work": args.work, "results": results},
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
