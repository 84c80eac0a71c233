"""The built-in steering programs, per frame vs vectorized, in frames/s on one core.

Run: ``.venv/bin/python benchmarks/bench_steering.py [--traffic v4-udp|mixed] [--batch 256]
[--runs 7] [--poll]``.

Each program is driven alone over frames already in a frame pool, in batches of
``--batch`` (the engine's default poll size), the way the engine drives it:

* per frame: for each frame, ``ctx.load(...)`` (the engine's per-frame step) and
  ``prog(ctx)``;
* vectorized: for each batch, ``prog(XdpBatch(pool, index, start))`` (consecutive frames,
  as the engine's allocator gives them), returning ``(uint8 verdicts, uint32 keys)``.

A figure is the best of ``--runs`` timed passes over every batch (the machine is shared
and noisy: the best pass is the one least disturbed; compare figures of one invocation).
``--poll`` adds the whole RX poll (copy in, program, dispatch, flush into rings consumed
by two workers) for ``l4-hash``, both forms.

Traffic: ``v4-udp`` is 64-byte IPv4 UDP frames of 1000 flows (the goal's case: vectorized
``l4-hash`` >= 5 M frames/s); ``mixed`` is IPv4 and IPv6, UDP/TCP/ICMP, a third of it
VLAN-tagged, 64..300 bytes: the vectorized forms' general paths (masks and gathers).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from cpumap import CpuMap, batch_handler
from cpumap.engine.frame_pool import FramePool
from cpumap.generator import Generator
from cpumap.packets import PacketBatch
from cpumap.programs.context import XdpBatch, XdpContext
from cpumap.programs.cpu_table import CpuTable
from cpumap.programs.steering import MODES, make_program


def traffic(kind: str, count: int) -> Generator:
    if kind == "v4-udp":
        return Generator(flows=1000, sizes=64, protocols=("udp",), ip_versions=(4,), count=count)
    return Generator(
        flows=1000, sizes=(64, 128, 300), vlan=(None, None, 7), undersize="clamp", count=count
    )


def fill(pool: FramePool, batches: list[PacketBatch]) -> int:
    """Copy the batches' packets into consecutive frames from 0; returns the count."""
    i = 0
    for b in batches:
        for p in b:
            d = np.frombuffer(bytes(p.data), dtype=np.uint8)
            pool.data[i, pool.headroom : pool.headroom + len(d)] = d
            pool.length[i] = len(d)
            i += 1
    return i


def best(fn: Callable[[], None], runs: int) -> float:
    """Seconds of the fastest of ``runs`` calls."""
    out = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def bench_programs(args: argparse.Namespace) -> None:
    gen = traffic(args.traffic, args.batch * args.batches)
    pool = FramePool(args.batch * args.batches)
    total = fill(pool, list(gen.batches(args.batch)))
    starts = list(range(0, total, args.batch))
    indices = [np.arange(s, min(s + args.batch, total), dtype=np.uint32) for s in starts]
    cmap = CpuMap(2)
    table = CpuTable(4, [0, 1])
    ctx = XdpContext(pool)
    lts = pool.linktype[:total].tolist()

    print(f"traffic {args.traffic}: {total} frames in batches of {args.batch}; best of {args.runs}")
    print(f"{'mode':<12} {'per frame':>12} {'vectorized':>12} {'ratio':>7}")
    for mode in args.modes:
        vec = make_program(mode, cmap, table, vectorized=True)
        per = make_program(mode, cmap, table, vectorized=False)

        def run_vec(vec=vec) -> None:
            for s, idx in zip(starts, indices, strict=True):
                vec(XdpBatch(pool, idx, s))

        def run_per(per=per) -> None:
            load = ctx.load
            for i in range(total):
                load(i, 0, 0, lts[i])
                per(ctx)

        run_vec()  # warm the caches (patterns, table snapshot)
        t_vec = best(run_vec, args.runs)
        t_per = best(run_per, max(2, args.runs // 3))
        r_vec, r_per = total / t_vec, total / t_per
        print(f"{mode:<12} {r_per / 1e6:>9.3f} M/s {r_vec / 1e6:>9.2f} M/s {r_vec / r_per:>6.1f}x")
    cmap.close()
    table.close()


@batch_handler
def _accept(batch: object) -> None:
    return None


def bench_poll(args: argparse.Namespace) -> None:
    """The whole RX poll with l4-hash, both forms, into two workers."""
    gen = traffic(args.traffic, args.batch * args.batches)
    batches = list(gen.batches(args.batch))
    n = sum(len(b) for b in batches)
    print(f"\nRxProducer.poll, l4-hash, {n} frames per pass, 2 workers (accept all)")
    with CpuMap(2, handler=_accept) as cmap, CpuTable(4, [0, 1]) as table:
        cmap.update(0, 4096)
        cmap.update(1, 4096)
        for vectorized in (False, True):
            prog = make_program("l4-hash", cmap, table, vectorized=vectorized)
            with cmap.producer(prog, backpressure=10.0) as rx:

                def run(rx=rx) -> None:
                    for b in batches:
                        rx.poll(b)

                t = best(run, max(2, args.runs // 2))
            cmap.wait_idle()
            form = "vectorized" if vectorized else "per frame"
            print(f"  {form:<11} {n / t / 1e6:6.2f} M frames/s through poll")
        s = cmap.stats()
        print(f"  delivered {s.delivered}, queue_full {s.queue_full}, rx {s.rx}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traffic", choices=("v4-udp", "mixed"), default="v4-udp")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=32, help="pool batches per pass")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--poll", action="store_true", help="also time RxProducer.poll")
    args = parser.parse_args()
    bench_programs(args)
    if args.poll:
        bench_poll(args)


if __name__ == "__main__":
    main()
