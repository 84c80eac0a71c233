"""``cpumap run --iface IF --kernel`` beside the user-space ``cpumap run --iface IF``, on
the same offered load from ``cpumap gen``, in one run.

Set-up: a veth pair between two fresh namespaces.  ``cpumap gen`` sends 64-byte UDP frames
(64 flows, for another MAC) out of the local end, pinned to CPU 0; the peer's NAPI runs
there too.  In the peer's namespace, one receiver at a time, both steering with ``l4-hash``
to one entry on CPU 1 whose second stage drops every frame (``--remote-action drop``):

* ``kernel``: ``--kernel -c 1``: the program on the peer's XDP hook, a real cpumap entry
  on CPU 1 -- no frame comes to user space.
* ``user``: ``--cpus 1 --rx-cpu 1 --handler count``: TPACKET_V3 into our engine, the RX
  side and the worker both on CPU 1 (the kernel's kthread has CPU 1 to itself; so has our
  side).  An XDP_PASS program on the peer gives it NAPI, without which the generator's
  frames are refused.

Each receiver is started first and the generator once the receiver's first interval
record shows it running; the receiver outlives the generator.  Figures: frames offered per
second (the generator's), frames the receiver saw per second and frames that reached the
entry on CPU 1 per second (the kernel's second stage, our worker), each over the
generator's seconds.  Two loads: as fast as the generator goes, and ``--rate``.  Receivers
alternate, ``--repeat`` pairs; medians, and the ratio kernel / user per load.

    .venv/bin/python benchmarks/bench_kernel_run.py [--seconds S] [--repeat R] [--rate PPS]

Root.  The machines are shared and noisy: trust the ratios more than the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cpumap.kernel.xdp import attach, pass_program
from cpumap.live.netns import VethPair

CPUMAP = str(Path(sys.executable).with_name("cpumap"))
OTHER_MAC = "02:00:00:00:00:99"  # not the peer's: its stack drops them after the taps
STEER = ("-p", "l4-hash", "--remote-action", "drop", "--json", "-i", "0.2")
RECEIVERS = {
    "kernel": ("--kernel", "-c", "1", *STEER),
    "user": ("--cpus", "1", "--rx-cpu", "1", "--handler", "count", *STEER),
}


def through(summary: dict[str, Any]) -> int:
    """Frames that reached the entry on CPU 1: the kernel's second stage ran on them, or our
    worker took them."""
    if summary.get("kernel"):
        return sum(e["delivered"] for e in summary["entries"])
    return sum(e["kthread_processed"] for e in summary["entries"])


def one_run(pair: VethPair, receiver: str, seconds: float, rate: float | None) -> dict[str, float]:
    cmd = ["ip", "netns", "exec", str(pair.peer.netns), CPUMAP, "run"]
    cmd += ["--iface", pair.peer.ifname, "--duration", str(seconds + 3), *RECEIVERS[receiver]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the receiver runs: its first interval record
        if not first:
            raise RuntimeError(f"{receiver} did not start: {proc.communicate()[1]}")
        gen = [CPUMAP, "gen", "--netns", str(pair.local.netns), "--iface", pair.local.ifname]
        gen += ["--duration", str(seconds), "--cpu", "0", "--flows", "64"]
        gen += ["--dst-mac", OTHER_MAC, "--json", *(["--rate", str(rate)] if rate else [])]
        sent = json.loads(subprocess.run(gen, capture_output=True, text=True, check=True).stdout)
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    summary = json.loads(out.strip().splitlines()[-1])
    if summary["exit_status"] != 0:
        raise RuntimeError(f"{receiver} ended with {summary['exit_status']}: {err}")
    s = sent["seconds"]
    return {"offered": sent["sent"] / s, "rx": summary["rx"] / s, "through": through(summary) / s}


@contextlib.contextmanager
def napi(pair: VethPair, receiver: str) -> Iterator[None]:
    """An XDP_PASS program on the peer for the user-space receiver (the kernel run's own
    program gives the peer NAPI)."""
    if receiver != "user":
        yield
        return
    with pair.in_peer(), pass_program() as prog:
        link = attach(pair.peer.ifname, prog)
    with link:
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="the generator's seconds")
    ap.add_argument("--repeat", type=int, default=3, help="pairs of runs per load")
    ap.add_argument("--rate", type=float, default=1e6, help="the second load, frames/s")
    args = ap.parse_args()
    print(f"cpumap run --kernel vs user space, veth, {args.seconds:g} s a run, medians of "
          f"{args.repeat}; M frames/s over the generator's seconds")  # fmt: skip
    with VethPair() as pair:
        for rate in (None, args.rate):
            results: dict[str, list[dict[str, float]]] = {r: [] for r in RECEIVERS}
            for _ in range(args.repeat):
                for receiver in RECEIVERS:
                    with napi(pair, receiver):
                        results[receiver].append(one_run(pair, receiver, args.seconds, rate))
            report(rate, results)


def report(rate: float | None, results: dict[str, list[dict[str, float]]]) -> None:
    load = "as fast as it goes" if rate is None else f"offered {rate / 1e6:g} M/s"
    med = {
        r: {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        for r, runs in results.items()
    }
    print(f"\nload: {load}")
    print(f"  {'receiver':<8} {'offered':>8} {'seen':>8} {'through':>8}   (through, each run)")
    for r, m in med.items():
        each = " ".join(f"{x['through'] / 1e6:.2f}" for x in results[r])
        figures = " ".join(f"{m[k] / 1e6:8.2f}" for k in ("offered", "rx", "through"))
        print(f"  {r:<8} {figures}   ({each})")
    pairs = [
        k["through"] / u["through"]
        for k, u in zip(results["kernel"], results["user"], strict=True)
        if u["through"]
    ]
    ratio = med["kernel"]["through"] / med["user"]["through"] if med["user"]["through"] else 0.0
    each = " ".join(f"{r:.2f}" for r in pairs)
    print(
        f"  ratio kernel / user, frames through to CPU 1: {ratio:.2f}x of the medians; "
        f"per pair {each} (median {statistics.median(pairs):.2f}x)"
    )


if __name__ == "__main__":
    main()
