"""Where each microsecond goes, step by step, in this process (no other process involved,
so the figures are the steps' own costs, not the machine's scheduling): per worker batch
of 1024 frames and per frame, for a per-frame handler and for the main job's flow table;
and per RX poll of 1024 packets of the main job's mixed capture.

    .venv/bin/python benchmarks/bench_breakdown.py [--capture FILE.pcap] [--repeat N]

Without ``--capture``, a mixed capture is generated (``suite.main_job``).  Each
figure is the median of ``--repeat`` runs.  docs/performance.md explains them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from cpumap import XDP_DROP, CpuMap, vectorized
from cpumap.capture import open_capture
from cpumap.engine.frame_pool import HASH_L3, HASH_NONE, FramePool
from cpumap.programs.context import XdpBatch
from cpumap.programs.contract import WorkerInfo
from cpumap.programs.steering import make_program
from cpumap.sinks import FlowTable
from cpumap.skb import Skb, frame_skbs, skb_batch, skb_columns
from cpumap.skb.view import views
from suite.common import make_frames
from suite.main_job import make_capture
from suite.ours import ReadDport

N = 1024


def median_us(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return 1e6 * statistics.median(runs)


def fill(pool: FramePool, frames: list[bytes]) -> np.ndarray:
    h = pool.headroom
    for i, f in enumerate(frames):
        pool.data[i, h : h + len(f)] = np.frombuffer(f, dtype=np.uint8)
        pool.length[i] = pool.wire_len[i] = len(f)
    return np.arange(len(frames), dtype=np.uint32)


def line(what: str, us: float, per: int = N) -> None:
    print(f"  {what:<58} {us:9.1f} µs  {us / per:7.3f} µs/frame")


def per_frame_handler(repeat: int) -> None:
    print(f"per-frame handler reading skb.dport, one worker batch of {N} 64-byte frames:")
    pool = FramePool(2 * N)
    frames = [bytes(r) for r in make_frames(N)]
    idx = fill(pool, frames)
    handler = ReadDport()
    line(
        "columns: descriptors + SkbBatch (skb_columns)",
        median_us(lambda: skb_columns(pool, idx), repeat),
    )
    line(
        "+ the dport column (fast path) as a list",
        median_us(lambda: skb_columns(pool, idx)["dport"], repeat),
    )
    cols = skb_columns(pool, idx)
    cols["dport"]

    def loop_views() -> None:
        for v in views(cols):
            handler(v)

    line("views + handler calls, columns ready", median_us(loop_views, repeat))
    plain = list(views(cols))
    line(
        "handler calls on ready views (property read + call)",
        median_us(lambda: [handler(v) for v in plain], repeat),
    )
    line(
        "all of it: for skb in frame_skbs(...): handler(skb)",
        median_us(lambda: [handler(s) for s in frame_skbs(pool, idx)], repeat),
    )
    line(
        "for comparison: Skb(bytes).dport per frame",
        median_us(lambda: [handler(Skb(f)) for f in frames], repeat),
    )
    pool.close()


def main_job_worker(batch_frames: list[bytes], repeat: int) -> None:
    print(f"main job, worker: flow table over a batch of {N} mixed frames (every other frame):")
    pool = FramePool(2 * N)
    idx_all = fill(pool, batch_frames[: 2 * N])
    idx = idx_all[::2].copy()
    line(
        "skb_batch (descriptor gather, rows gather)",
        median_us(lambda: skb_batch(pool, idx), repeat),
    )
    line(
        "+ hash column (mixed IPv4/IPv6 path)", median_us(lambda: skb_batch(pool, idx).hash, repeat)
    )
    table = FlowTable()
    table.setup(WorkerInfo(0, 0, 0, 0, 0, 0, True))
    table(skb_batch(pool, idx))
    line(
        "+ FlowTable (searchsorted, add.at), flows known",
        median_us(lambda: table(skb_batch(pool, idx)), repeat),
    )
    # The hash rides with the frames (as the RX side's record walk or a steering program
    # leaves it in the descriptors): the same steps, no hash computed, no row gathered.
    ride(pool, idx, idx_all)
    line("skb_batch, hash riding", median_us(lambda: skb_batch(pool, idx), repeat))
    line("+ hash column, hash riding", median_us(lambda: skb_batch(pool, idx).hash, repeat))
    line(
        "+ FlowTable, flows known, hash riding",
        median_us(lambda: table(skb_batch(pool, idx)), repeat),
    )
    pool.hash_type[idx[::8]] = HASH_NONE  # one frame in 8 without: computed as a subset
    line(
        "+ FlowTable, flows known, 7 in 8 hashes riding",
        median_us(lambda: table(skb_batch(pool, idx)), repeat),
    )
    pool.close()


def ride(pool: FramePool, idx: np.ndarray, idx_all: np.ndarray) -> None:
    """Set the frames' riding hash as the RX side would: their computed skb hash."""
    batch = skb_batch(pool, idx_all)
    pool.rx_hash[idx_all] = batch.hash
    pool.hash_type[idx_all] = batch.hash_types()
    pool.hash_type[idx] = np.maximum(pool.hash_type[idx], HASH_L3)  # non-IP too: all ride


def worker_batch_sizes(batch_frames: list[bytes], repeat: int) -> None:
    print("main job, worker: the flow table's cost per frame by worker batch size:")
    for n in (1024, 2048, 4096):
        pool = FramePool(2 * n)
        frames = (batch_frames * (2 * n // len(batch_frames) + 1))[: 2 * n]
        idx_all = fill(pool, frames)
        idx = idx_all[::2].copy()
        table = FlowTable()
        table.setup(WorkerInfo(0, 0, 0, 0, 0, 0, True))

        def step(table: FlowTable = table, pool: FramePool = pool, idx: np.ndarray = idx) -> None:
            table(skb_batch(pool, idx))

        step()
        line(f"{n} frames, hash computed", median_us(step, repeat), n)
        ride(pool, idx, idx_all)
        line(f"{n} frames, hash riding", median_us(step, repeat), n)
        pool.close()


def main_job_rx(path: str, repeat: int) -> None:
    print(f"main job, RX side: per poll of {N} mixed packets:")
    reader = open_capture(path, batch_size=N)
    t = time.perf_counter()
    polls = sum(1 for _ in reader.batches(N))
    reader.close()
    line("reader: batches(1024) over the whole file", 1e6 * (time.perf_counter() - t) / polls)
    with open_capture(path, batch_size=N) as r:
        batch = next(iter(r.batches(N)))
    with CpuMap(2, handler=None) as m:  # no entry: nothing is forked
        rx = m.producer(_drop)
        where = slice(0, N)
        # The copy into the pool and the descriptors (a private step of the producer).
        line(
            "copy into the pool + descriptors (RxProducer._fill)",
            median_us(lambda: rx._fill(where, batch), repeat),
        )
        idx = np.arange(N, dtype=np.uint32)
        prog = make_program("l4-hash", m, [0, 1])
        line(
            "l4-hash program, vectorized", median_us(lambda: prog(XdpBatch(m.pool, idx, 0)), repeat)
        )
        line(
            "a whole poll, DROP program (fill, run, count, free)",
            median_us(lambda: rx.poll(batch), repeat),
        )
        rx.close()


@vectorized
def _drop(batch: XdpBatch) -> np.ndarray:
    return np.full(len(batch), XDP_DROP, dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", help="a mixed pcap (default: generate 200,000 packets)")
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)
    per_frame_handler(args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.capture or os.path.join(tmp, "mixed.pcap")
        if not args.capture:
            make_capture(path, 200_000)
        with open_capture(path) as r:
            first = next(iter(r.batches(2 * N)))
        frames = [
            bytes(first.buf[s : s + c])
            for s, c in zip(first.start.tolist(), first.caplen.tolist(), strict=True)
        ]
        main_job_worker(frames, args.repeat)
        worker_batch_sizes(frames, args.repeat)
        main_job_rx(path, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
