"""The live path's RX side: AF_XDP against TPACKET_V3, under the same offered load.

Each arm runs in its own process (fresh imports, its own CPU accounting), over a fresh veth
pair between two namespaces: the kernel's live test runs (:class:`TrafficGen`) send 64-byte
UDP frames from the peer for ``--seconds``, flat out or at ``--rate``; the receiving thread
feeds an RX producer whose program redirects every frame to one worker (accept-all
handler) on the other CPU.  The generator, its NAPI and the RX thread share ``--cpu``, as
``cpumap run`` on a 2-vCPU machine does.

Arms:

* ``tpacket``: :class:`~cpumap.live.LiveSource` (TPACKET_V3) batches into ``rx.poll``
  (a copy into the pool; an ``XDP_PASS`` program on the interface gives the veth NAPI).
* ``xsk``: :class:`~cpumap.live.XskSource`: the kernel places frames into the pool,
  ``rx.poll_placed``.
* ``xsk-base``: the same, with the package imported from ``--base-src`` (another
  checkout's ``src``: the code before a change), when given.

Per arm: frames/s received (the producer's ``rx``) and delivered (the workers' handler),
the source's drops, and the RX thread's CPU time (user + sys, ``RUSAGE_THREAD``) per frame
received.  Ratios are against the ``tpacket`` arm of the same run.

    .venv/bin/python benchmarks/bench_xsk_rx.py [--seconds S] [--rate R] [--repeat N]
        [--base-src DIR] [--profile]

``--base-src``: a checkout of the code before, e.g. ``git worktree add --detach /tmp/base
COMMIT`` with the built extensions copied in (``cp src/cpumap/*.so /tmp/base/src/cpumap/``),
then ``--base-src /tmp/base/src``; remove it after (``git worktree remove /tmp/base``).

Needs root.  The machine is shared and noisy: arms alternate per repeat; trust the ratios
more than the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def _program(cpu: int):
    from cpumap.abi import XDP_REDIRECT
    from cpumap.programs import vectorized

    @vectorized
    def to_worker(batch) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch)
        return np.full(n, XDP_REDIRECT, dtype=np.uint8), np.full(n, cpu, dtype=np.uint32)

    return to_worker


def _frames(pair) -> list[bytes]:
    from cpumap.generator import Generator

    gen = Generator(
        flows=64,
        sizes=(64,),
        seed=7,
        protocols=("udp",),
        ip_versions=(4,),
        count=64,
        dst_mac=pair.local.mac_bytes,
        src_mac=pair.peer.mac_bytes,
    )
    return [p.data for b in gen.batches(64) for p in b]


def _thread_cpu() -> tuple[float, float]:
    """This thread's (user, system) CPU seconds."""
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime, r.ru_stime


def _why(st) -> str:
    return f"ring_full {st.rx_ring_full:,} no_chunk {st.rx_dropped:,}"


def run_arm(
    kind: str,
    seconds: float,
    rate: float | None,
    cpu: int,
    per_call: int,
    qsize: int,
    profile: bool,
    spy: str | None = None,
) -> dict:
    """One arm, in this process: the figures as a dict.  ``spy``: a py-spy raw profile of
    this process (the RX thread and the generator's) is written there."""
    from cpumap import CpuMap
    from cpumap.kernel.trafficgen import GenOptions, TrafficGen
    from cpumap.kernel.xdp import attach, pass_program
    from cpumap.live import LiveSource, XskSource
    from cpumap.live.netns import VethPair

    worker = 1 - cpu
    os.sched_setaffinity(0, {cpu})
    stop = threading.Event()
    box: list = []
    # Room for a full fill ring (16384) besides what the worker ring holds.
    with VethPair() as pair, CpuMap(worker + 1, frames=16384 + 2 * qsize) as m:
        m.update(worker, qsize)
        with m.producer(_program(worker)) as rx:
            with pair.in_peer():
                gen = TrafficGen(pair.peer.ifname, _frames(pair))
            with pair.in_local():
                if kind == "tpacket":
                    prog = pass_program()
                    link = attach(pair.local.ifname, prog)
                    src = LiveSource(pair.local.ifname)
                else:
                    src = XskSource(rx, pair.local.ifname)
            opts = GenOptions(duration_s=seconds, rate=rate, cpu=cpu, frames_per_call=per_call)
            t = threading.Thread(target=lambda: box.append(gen.run(opts, stop)))
            prof = cProfile.Profile() if profile else None
            s0 = m.stats()
            c0, t0 = _thread_cpu(), time.perf_counter()
            t.start()
            spying = _py_spy(spy, seconds) if spy else None
            if prof:
                prof.enable()
            if kind == "tpacket":
                while t.is_alive():
                    batch = src.poll_batch(0.1)
                    if batch is not None:
                        rx.poll(batch)
            else:
                while t.is_alive():
                    src.poll(0.1)
            if prof:
                prof.disable()
            c1, t1 = _thread_cpu(), time.perf_counter()
            t.join()
            if spying is not None:
                spying.wait(30)
            drops = src.drops
            why = "" if kind == "tpacket" else _why(src.statistics())
            src.close()
            if kind == "tpacket":
                link.close()
                prog.close()
            gen.close()
            m.wait_idle(30)
            s1 = m.stats()
    wall = t1 - t0
    got = s1.rx - s0.rx
    out = {
        "kind": kind,
        "sent": box[0].sent,
        "wall_s": wall,
        "rx_per_s": got / wall,
        "delivered_per_s": (s1.delivered - s0.delivered) / wall,
        "drops": int(drops),
        "why": why,
        "outcomes": {k: v for k, v in s1.outcomes().items() if v},
        "polls": s1.polls - s0.polls,
        "cpu_ns_per_frame": (c1[0] + c1[1] - c0[0] - c0[1]) / max(got, 1) * 1e9,
        "sys_ns_per_frame": (c1[1] - c0[1]) / max(got, 1) * 1e9,
        "cpu_share": (c1[0] + c1[1] - c0[0] - c0[1]) / wall,
    }
    if prof:
        st = pstats.Stats(prof, stream=sys.stderr)
        st.sort_stats("tottime").print_stats(25)
    return out


def _py_spy(raw: str, seconds: float) -> subprocess.Popen:
    """py-spy sampling this process at 500 Hz for ``seconds`` into ``raw``.
    ``--nonblocking``: py-spy must not stop the process to sample it -- a stop interrupts
    the generator's live test run (EINTR) and ends the offered load."""
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy), "record", "--nonblocking", "-r", "500", "-f", "raw", "-o", raw]
    cmd += ["-d", str(max(1, int(seconds))), "--pid", str(os.getpid())]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _spawn(kind: str, src: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--arm", kind, "--seconds", str(args.seconds)]
    cmd += ["--cpu", str(args.cpu), "--per-call", str(args.per_call), "--qsize", str(args.qsize)]
    if args.rate:
        cmd += ["--rate", str(args.rate)]
    if args.profile:
        cmd += ["--profile"]
    if args.spy:
        cmd += ["--spy", f"{args.spy}.{kind}"]
    env = dict(os.environ, PYTHONPATH=str(src))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if res.returncode:
        raise SystemExit(f"{kind} arm failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    if args.profile:
        print(res.stderr, file=sys.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=None, help="frames/s offered (default: flat out)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--per-call",
        type=int,
        default=1 << 20,
        help="frames per live test run (each call also costs ~24 ms: small calls offer "
        "a lighter load, in bursts of this many)",
    )
    p.add_argument("--qsize", type=int, default=2048, help="the worker's ring")
    p.add_argument("--cpu", type=int, default=0, help="the generator's and RX thread's CPU")
    p.add_argument("--base-src", type=Path, default=None, help="src of the code before")
    p.add_argument("--arms", default="tpacket,xsk-base,xsk")
    p.add_argument("--profile", action="store_true", help="cProfile the RX loop (stderr)")
    p.add_argument(
        "--spy",
        metavar="PREFIX",
        help="py-spy each arm at 500 Hz (raw stacks in PREFIX.ARM; summarize them with "
        "profile_run.summarize)",
    )
    p.add_argument("--arm", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arm:
        kind = "xsk" if args.arm.startswith("xsk") else args.arm
        out = run_arm(
            kind, args.seconds, args.rate, args.cpu, args.per_call, args.qsize, args.profile,
            args.spy,
        )  # fmt: skip
        print(json.dumps(out))
        return
    arms = [a for a in args.arms.split(",") if a != "xsk-base" or args.base_src]
    load = f"{args.rate:,.0f} frames/s" if args.rate else "flat out"
    load += f", {args.per_call:,} frames per generator call, worker ring {args.qsize}"
    print(f"offered: {load}, {args.seconds:g} s per arm; load average {os.getloadavg()[0]:.1f}")
    results: dict[str, list[dict]] = {a: [] for a in arms}
    for _ in range(args.repeat):
        for a in arms:
            src = args.base_src if a == "xsk-base" else SRC
            results[a].append(_spawn(a, src, args))
    for a in arms:
        for r in results[a]:
            print(
                f"{a:9s} sent {r['sent'] / r['wall_s'] / 1e6:6.3f} M/s  "
                f"rx {r['rx_per_s'] / 1e6:6.3f} M/s  delivered "
                f"{r['delivered_per_s'] / 1e6:6.3f} M/s  drops {r['drops']:>9,}  "
                f"polls {r['polls']:>7,}  rx-thread {r['cpu_ns_per_frame']:4.0f} ns/frame "
                f"(sys {r['sys_ns_per_frame']:3.0f}) "
                f"{r['cpu_share']:.0%} of a CPU {r['why']}"
            )
    if "tpacket" not in results:
        return

    def ratio(a: str, key: str) -> float:
        """Median of arm ``a`` over the median of the TPACKET_V3 arm, same run."""
        return float(np.median([r[key] for r in results[a]])) / float(
            np.median([r[key] for r in results["tpacket"]])
        )

    for a in arms:
        if a == "tpacket":
            continue
        print(
            f"{a} / tpacket: rx {ratio(a, 'rx_per_s'):.2f}x  "
            f"delivered {ratio(a, 'delivered_per_s'):.2f}x  "
            f"RX-thread CPU/frame {ratio(a, 'cpu_ns_per_frame'):.2f}x"
        )


if __name__ == "__main__":
    main()
