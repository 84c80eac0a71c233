"""End-to-end engine throughput, beside the pipeline a Python user would write without us.

Every figure is frames/s from the first frame received to the last frame handled, on
64-byte UDP frames over many flows, measured in the same run as its baseline:

* ``baseline``  -- the RX process hashes each frame in Python (a symmetric flow hash of
  the address words) and sends lists of 64 frames through ``multiprocessing.Queue`` to
  one consumer process per CPU; each consumer touches every byte of every frame with
  numpy (``np.frombuffer(b"".join(lst))`` then a sum per frame).
* ``ours-frame`` (a) -- a per-frame program (``FlowHash(vectorized=False)``: parses each
  frame) and a per-frame handler (reads the parsed ports of each skb).
* ``ours-batch`` (b) -- a vectorized program (``FlowHash``) and a batch handler that sums
  every byte of every frame (the same touch as the baseline's consumer).

Both pipelines deliver every frame (ours with ``backpressure``: a full ring makes the RX
side wait, as the baseline's unbounded queue never drops).  ``ours-batch-drop`` runs (b)
with the kernel's semantics instead -- a full ring drops at flush -- and reports frames/s
delivered and the drop ratio, the way the kernel's own cpumap is measured
(``bench_kernel_cpumap.py``; pass ``--kernel`` to print its figure beside ours).

Consumer CPUs: ``--cpus 1`` puts one worker on CPU 1 (the RX side is pinned to CPU 0,
like the kernel measurement); the default uses every CPU for consumers.

    .venv/bin/python benchmarks/bench_engine.py [--frames N] [--repeat R] [--cpus 0,1]
        [--sweep-bulk] [--sweep-batch] [--kernel] [--json FILE]

The machines are shared and noisy: trust the ratios printed, not the absolute figures.

The measurements are the suite's (``suite`` in this directory, ``cpumap bench``): the
baseline is its ``mp.Queue`` pipeline (``suite.python_side.run_pipeline``), ours its
``suite.ours.run_engine``; this script adds the sweeps of the engine's sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

from cpumap import possible_cpus
from suite.common import make_frames
from suite.kernel import kernel_cpumap_fps, unavailable_reason
from suite.ours import Knobs, ReadDport, TouchBatch, run_engine
from suite.python_side import run_pipeline

FRAME = 64
DEFAULTS = Knobs()  # the engine's sizes


def run_ours(
    frames: Any,
    cpus: list[int],
    rx_cpu: int | None,
    *,
    vectorized: bool,
    lossless: bool = True,
    knobs: Knobs = DEFAULTS,
) -> dict[str, float]:
    """(b) with ``vectorized``: a vectorized program and a batch handler; (a) without: a
    per-frame program and a per-frame handler."""
    handler = TouchBatch() if vectorized else ReadDport()
    return run_engine(
        frames,
        cpus,
        rx_cpu,
        handler=handler,
        program_vectorized=vectorized,
        lossless=lossless,
        knobs=knobs,
    )


# -- driver -----------------------------------------------------------------------------------
def measure(name: str, fn: Callable[[], float | dict[str, float]], repeat: int) -> dict:
    runs = [out if isinstance(out, dict) else {"fps": out} for out in (fn() for _ in range(repeat))]
    fps = [r["fps"] for r in runs]
    return {
        "name": name,
        "fps": statistics.median(fps),
        "min": min(fps),
        "max": max(fps),
        "drop_ratio": statistics.median(r.get("drop_ratio", 0.0) for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument(
        "--frames-per-frame",
        type=int,
        default=200_000,
        help="frames for the per-frame configuration (it is ~20x slower)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpus", default=None, help="consumer CPUs, e.g. 1 or 0,1 (default: all)")
    ap.add_argument("--sweep-bulk", action="store_true", help="bulk sizes 8..1024 for (b)")
    ap.add_argument("--sweep-batch", action="store_true", help="worker batch sizes 8..1024")
    ap.add_argument("--kernel", action="store_true", help="also measure the kernel's cpumap")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)

    all_cpus = sorted(possible_cpus() & os.sched_getaffinity(0))
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else all_cpus
    rx_cpu = 0 if cpus == [c for c in all_cpus if c != 0] and 0 in all_cpus else None
    frames = make_frames(args.frames)
    frames_list = [bytes(r) for r in frames]
    small = frames[: args.frames_per_frame]
    print(
        f"{len(frames)} frames of {FRAME} B, consumers on CPUs {cpus}, "
        f"RX {f'on CPU {rx_cpu}' if rx_cpu is not None else 'unpinned'}, "
        f"{len(all_cpus)} CPUs",
        flush=True,
    )

    results = []

    def report(r: dict, base: float) -> None:
        results.append({**r, "ratio": r["fps"] / base})
        drop = f"  drops {r['drop_ratio']:.0%}" if r["drop_ratio"] else ""
        print(
            f"  {r['name']:<22} {r['fps'] / 1e6:6.2f} M frames/s "
            f"(min {r['min'] / 1e6:.2f}, max {r['max'] / 1e6:.2f})  "
            f"x{r['fps'] / base:5.2f} baseline{drop}",
            flush=True,
        )

    base = measure(
        "baseline", lambda: run_pipeline("mp.Queue", frames_list, cpus, rx_cpu=rx_cpu), args.repeat
    )
    report(base, base["fps"])
    report(
        measure(
            "ours-batch (b)", lambda: run_ours(frames, cpus, rx_cpu, vectorized=True), args.repeat
        ),
        base["fps"],
    )
    report(
        measure(
            "ours-batch-drop",
            lambda: run_ours(frames, cpus, rx_cpu, vectorized=True, lossless=False),
            args.repeat,
        ),
        base["fps"],
    )
    report(
        measure(
            "ours-frame (a)", lambda: run_ours(small, cpus, rx_cpu, vectorized=False), args.repeat
        ),
        base["fps"],
    )

    if args.sweep_bulk:
        print("poll = bulk size sweep, (b), worker batch 1024:")
        for size in (64, 256, 512, 1024, 2048, 4096):
            r = measure(
                f"poll+bulk {size}",
                lambda z=size: run_ours(
                    frames, cpus, rx_cpu, vectorized=True, knobs=Knobs(poll_size=z, bulk_size=z)
                ),
                args.repeat,
            )
            report(r, base["fps"])
        print("bulk size sweep at poll 1024 (several flushes per poll):")
        for bulk in (8, 64, 256, 1024):
            r = measure(
                f"bulk {bulk}",
                lambda b=bulk: run_ours(
                    frames, cpus, rx_cpu, vectorized=True, knobs=Knobs(bulk_size=b)
                ),
                args.repeat,
            )
            report(r, base["fps"])
    if args.sweep_batch:
        print("worker batch size sweep, (b):")
        for bs in (8, 64, 256, 1024, 4096):
            r = measure(
                f"batch {bs}",
                lambda b=bs: run_ours(
                    frames, cpus, rx_cpu, vectorized=True, knobs=Knobs(batch_size=b)
                ),
                args.repeat,
            )
            report(r, base["fps"])
        print("busy-poll sweep, (b):")
        for bp in (0.0, 0.0001, 0.0005, 0.002):
            r = measure(
                f"busy_poll {bp * 1e6:.0f} us",
                lambda b=bp: run_ours(
                    frames, cpus, rx_cpu, vectorized=True, knobs=Knobs(busy_poll=b)
                ),
                args.repeat,
            )
            report(r, base["fps"])
    if args.kernel:
        why = unavailable_reason()
        if why:
            print(f"kernel cpumap: not measured ({why})")
        else:
            k = kernel_cpumap_fps("netstack", 2048, frames=1_000_000, repeat=args.repeat)
            print(
                f"  kernel cpumap netstack  {k.frames_per_s / 1e6:6.2f} M frames/s "
                f"(drops {k.drop_ratio:.0%}); ours-batch-drop / kernel = "
                f"{results[2]['fps'] / k.frames_per_s:.2f}"
            )
            results.append(
                {"name": "kernel-netstack", "fps": k.frames_per_s, "drop_ratio": k.drop_ratio}
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpus": cpus, "frames": len(frames), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
