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
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from cpumap import CpuMap, FlowHash, MapOptions, PacketBatch, batch_handler, possible_cpus
from cpumap.engine.bulkq import DEFAULT_BULK_SIZE
from cpumap.engine.rx import DEFAULT_POLL_SIZE
from cpumap.engine.worker import DEFAULT_BATCH, DEFAULT_BUSY_POLL
from cpumap.generator import Generator

FRAME = 64


def make_frames(n: int, flows: int = 4096, seed: int = 1) -> np.ndarray:
    """``n`` 64-byte IPv4/UDP frames over ``flows`` flows, as a ``[n, 64]`` array."""
    gen = Generator(flows=flows, sizes=FRAME, protocols=("udp",), ip_versions=(4,), seed=seed)
    return gen.frames(n)


# -- the baseline: multiprocessing.Queue and per-frame Python hashing ------------------------
def _baseline_consumer(q, done, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    done.put(("ready", cpu))
    count = 0
    acc = 0
    while True:
        lst = q.get()
        if lst is None:
            break
        arr = np.frombuffer(b"".join(lst), dtype=np.uint8).reshape(len(lst), -1)
        acc += int(arr.sum(axis=1, dtype=np.uint32)[-1])  # touch every byte
        count += len(lst)
    done.put(("done", count))


def run_baseline(frames: list[bytes], cpus: list[int], rx_cpu: int | None, chunk: int = 64):
    ctx = multiprocessing.get_context("fork")
    queues = [ctx.Queue() for _ in cpus]
    done = ctx.Queue()
    procs = [
        ctx.Process(target=_baseline_consumer, args=(q, done, c), daemon=True)
        for q, c in zip(queues, cpus, strict=True)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        done.get()
    n = len(cpus)
    pending: list[list[bytes]] = [[] for _ in cpus]
    old = _pin(rx_cpu)
    t0 = time.perf_counter()
    for f in frames:
        a, b = f[26:30], f[30:34]
        i = hash(a + b if a < b else b + a) % n
        lst = pending[i]
        lst.append(f)
        if len(lst) == chunk:
            queues[i].put(lst)
            pending[i] = []
    for i, lst in enumerate(pending):
        if lst:
            queues[i].put(lst)
        queues[i].put(None)
    delivered = sum(done.get()[1] for _ in procs)
    elapsed = time.perf_counter() - t0
    _unpin(old)
    for p in procs:
        p.join()
    return delivered / elapsed, delivered, 0.0


# -- ours ---------------------------------------------------------------------------------------
@batch_handler
class TouchBatch:
    """Sums every byte of every frame: the same work as the baseline's consumer."""

    def __init__(self) -> None:
        self.acc = 0

    def __call__(self, batch) -> None:
        self.acc += int(batch.rows.sum(axis=1, dtype=np.uint32)[-1])


class TouchFrame:
    """A per-frame handler that looks at the parsed transport header."""

    def __init__(self) -> None:
        self.acc = 0

    def __call__(self, skb) -> None:
        self.acc += skb.dport


def run_ours(
    frames: np.ndarray,
    cpus: list[int],
    rx_cpu: int | None,
    *,
    vectorized: bool,
    lossless: bool = True,
    qsize: int = 2048,
    batch_size: int = DEFAULT_BATCH,
    bulk_size: int = DEFAULT_BULK_SIZE,
    poll_size: int = DEFAULT_POLL_SIZE,
    busy_poll: float = DEFAULT_BUSY_POLL,
):
    handler = TouchBatch() if vectorized else TouchFrame()
    n = len(frames)
    options = MapOptions(busy_poll=busy_poll)
    with CpuMap(max(cpus) + 1, handler=handler, batch_size=batch_size, options=options) as m:
        for c in cpus:
            m.update(c, qsize)
        prog = FlowHash(m, cpus, vectorized=vectorized)
        batch = PacketBatch.from_array(frames)
        with m.producer(
            prog,
            poll_size=poll_size,
            bulk_size=bulk_size,
            backpressure=30.0 if lossless else 0.0,
        ) as rx:
            old = _pin(rx_cpu)
            t0 = time.perf_counter()
            rx.receive(batch)
            _wait_idle(m)
            elapsed = time.perf_counter() - t0
            _unpin(old)
        s = m.stats()
    assert s.rx == n and s.in_flight == 0, s.outcomes()
    return s.delivered / elapsed, s.delivered, s.queue_full / n


def _wait_idle(m: CpuMap, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while m.stats().in_flight:
        if time.monotonic() > deadline:
            raise TimeoutError("frames still in flight")
        time.sleep(0.0002)


def _pin(cpu: int | None):
    if cpu is None:
        return None
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return old


def _unpin(old) -> None:
    if old is not None:
        os.sched_setaffinity(0, old)


# -- driver -----------------------------------------------------------------------------------
def measure(name: str, fn: Callable[[], tuple[float, int, float]], repeat: int) -> dict:
    runs = [fn() for _ in range(repeat)]
    fps = [r[0] for r in runs]
    return {
        "name": name,
        "fps": statistics.median(fps),
        "min": min(fps),
        "max": max(fps),
        "delivered": runs[0][1],
        "drop_ratio": statistics.median(r[2] for r in runs),
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

    base = measure("baseline", lambda: run_baseline(frames_list, cpus, rx_cpu), args.repeat)
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
                    frames, cpus, rx_cpu, vectorized=True, bulk_size=z, poll_size=z
                ),
                args.repeat,
            )
            report(r, base["fps"])
        print("bulk size sweep at poll 1024 (several flushes per poll):")
        for bulk in (8, 64, 256, 1024):
            r = measure(
                f"bulk {bulk}",
                lambda b=bulk: run_ours(frames, cpus, rx_cpu, vectorized=True, bulk_size=b),
                args.repeat,
            )
            report(r, base["fps"])
    if args.sweep_batch:
        print("worker batch size sweep, (b):")
        for bs in (8, 64, 256, 1024, 4096):
            r = measure(
                f"batch {bs}",
                lambda b=bs: run_ours(frames, cpus, rx_cpu, vectorized=True, batch_size=b),
                args.repeat,
            )
            report(r, base["fps"])
        print("busy-poll sweep, (b):")
        for bp in (0.0, 0.0001, 0.0005, 0.002):
            r = measure(
                f"busy_poll {bp * 1e6:.0f} us",
                lambda b=bp: run_ours(frames, cpus, rx_cpu, vectorized=True, busy_poll=b),
                args.repeat,
            )
            report(r, base["fps"])
    if args.kernel:
        sys.path.insert(0, os.path.dirname(__file__))
        from bench_kernel_cpumap import kernel_cpumap_fps, unavailable_reason

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
