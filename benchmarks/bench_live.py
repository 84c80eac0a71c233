"""The live path in full: one offered load through TPACKET_V3, AF_XDP and the kernel's cpumap.

Every row gets 64-byte UDP frames from the kernel traffic generator
(:class:`cpumap.kernel.TrafficGen`, live test runs of XDP_TX out of one end of a veth pair
in fresh namespaces) at the same rate, and takes them end to end into a handler:
``cpumap run --iface B`` (TPACKET_V3), ``cpumap run --iface B --af-xdp`` (AF_XDP, where
this checkout has it) and ``cpumap run --iface B --kernel`` (our steering program in B's
XDP hook, the kernel's own cpumap, a remote XDP_DROP on the worker's CPU).
The measurement is the suite's (``suite.live``: the ``live`` rows of ``cpumap bench``);
this script prints every figure of every round -- drops where they happen, CPU per frame
by part -- and each row's ratio to the TPACKET_V3 row of the same round.

    .venv/bin/python benchmarks/bench_live.py [--rate FPS] [--window S] [--rounds N]
        [--rows tpacket,af_xdp,kernel] [--worker-cpu 0|1] [--queues 1,2,4] [--json]

``--queues 1,2,4``: AF_XDP with one RX producer per queue -- a row per count
(``af_xdp_q1``, ...: ``suite.live.af_xdp_queues_row``, a veth of that many RX queues, the
load offered from as many CPUs), with each row's ratio to the one-queue row of the same
round; a count this machine has too few CPUs for is skipped with the reason.  Alone, it
runs only those rows (add ``--rows`` for the others).

Needs root.  The machines are shared and noisy: trust the same-round ratios more than
the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

from suite import live

ROWS: dict[str, Callable[[live.LiveOptions], dict[str, Any]]] = {
    "tpacket": live.tpacket_row,
    "af_xdp": live.af_xdp_row,
    "kernel": live.kernel_row,  # cpumap run --kernel
}
COLUMNS = (
    ("fps", "delivered/s", 1e-6, "{:.3f} M"),
    ("offered", "offered/s", 1e-6, "{:.2f} M"),
    ("tx_drops", "B ring drops", 1, "{:,.0f}"),
    ("source_drops", "source drops", 1, "{:,.0f}"),
    ("map_drops", "map drops", 1, "{:,.0f}"),
    ("unaccounted", "unaccounted", 1, "{:,.0f}"),
    ("rx_kernel_ns", "RX kernel ns", 1, "{:.0f}"),
    ("rx_user_ns", "RX user ns", 1, "{:.0f}"),
    ("worker_ns", "worker ns", 1, "{:.0f}"),
    ("cpu_fps", "1 CPU's worth/s", 1e-6, "{:.2f} M"),
    ("cpu_share", "CPU share", 100, "{:.0f} %"),
    ("per_poll", "frames/poll", 1, "{:.0f}"),
    ("per_batch", "frames/batch", 1, "{:.0f}"),
)


def queue_row(n: int) -> Callable[[live.LiveOptions], dict[str, Any]]:
    """The AF_XDP row with ``n`` RX queues, one producer each."""
    return lambda opts: live.af_xdp_queues_row(opts, n)


def skip_reasons(rows: list[str]) -> dict[str, str]:
    """Rows that cannot run here, and why."""
    why = live.unavailable_reason()
    out = {r: why for r in rows} if why else {}
    for r in rows:
        if r.startswith("af_xdp_q") and r not in out:
            where = live.queue_cpus(int(r.removeprefix("af_xdp_q")))
            if isinstance(where, str):
                out[r] = where
    if "af_xdp" in rows and "af_xdp" not in out:
        xsk = live.af_xdp_unavailable_reason()
        if xsk:
            out["af_xdp"] = xsk
    return out


def run_rounds(rows: list[str], opts: live.LiveOptions, rounds: int) -> dict[str, list[dict]]:
    """Each round runs every row once, in turn; each row's figures per round."""
    results: dict[str, list[dict]] = {r: [] for r in rows}
    for k in range(rounds):
        for r in rows:
            fig = ROWS[r](opts)
            results[r].append(fig)
            print(f"round {k + 1} {r:8s} {fig['fps'] / 1e6:.3f} M/s delivered", file=sys.stderr)
    return results


def ratios(
    results: dict[str, list[dict]], key: str = "fps", baseline: str = "tpacket"
) -> dict[str, float | None]:
    """Each row's median over rounds of its ``key`` over ``baseline``'s in that round."""
    base = results.get(baseline)
    out: dict[str, float | None] = {}
    for r, figs in results.items():
        pairs = [(f.get(key), b.get(key)) for f, b in zip(figs, base or [], strict=False)]
        pairs = [(f, b) for f, b in pairs if f and b]
        if not base or len(base) != len(figs) or not pairs:
            out[r] = None
            continue
        out[r] = statistics.median(f / b for f, b in pairs)
    return out


def median_row(figs: list[dict]) -> dict[str, Any]:
    keys = [k for k, v in figs[0].items() if isinstance(v, int | float)]
    return {
        k: statistics.median(f[k] for f in figs if f.get(k) is not None)
        for k in keys
        if any(f.get(k) is not None for f in figs)
    }


def print_table(results: dict[str, list[dict]], skipped: dict[str, str], opts: Any) -> None:
    rate = f"{opts.rate / 1e6:.1f} M/s" if opts.rate else "as fast as it goes"
    print(
        f"live path, 64-byte frames offered at {rate}, {opts.window_s:g} s a row, NAPI and RX "
        f"on CPU {live.RX_CPU}, worker on CPU {opts.worker_cpu}, medians of "
        f"{len(next(iter(results.values()), []))} rounds"
    )
    head = ["row", *(c[1] for c in COLUMNS), "x TPACKET_V3", "1 CPU's worth x TPACKET_V3"]
    print(" | ".join(head))
    rx, per_cpu = ratios(results), ratios(results, "cpu_fps")
    for r, figs in results.items():
        med = median_row(figs)
        cells = [
            fmt.format(med[key] * scale) if key in med else "-" for key, _, scale, fmt in COLUMNS
        ]
        shown = [f"{x:.2f}x" if x else "-" for x in (rx.get(r), per_cpu.get(r))]
        print(" | ".join([r, *cells, *shown]))
    if "af_xdp_q1" in results:
        print_scaling(results)
    for r, why in skipped.items():
        print(f"{r}: skipped ({why})")


def print_scaling(results: dict[str, list[dict]]) -> None:
    """The queue rows against the one-queue row of the same round."""
    fps, cpu = ratios(results, baseline="af_xdp_q1"), ratios(results, "cpu_fps", "af_xdp_q1")
    print("AF_XDP, one RX producer per queue | delivered/s | x 1 queue | 1 CPU's worth x 1 "
          "queue | rx per producer | workers share an RX CPU")  # fmt: skip
    for r, figs in results.items():
        if not r.startswith("af_xdp_q"):
            continue
        med = median_row(figs)
        split = "/".join(f"{x:,}" for x in figs[-1]["rx_per_producer"])
        print(
            f"{r.removeprefix('af_xdp_q')} queue(s) | {med['fps'] / 1e6:.3f} M | "
            f"{fps[r]:.2f}x | {cpu[r]:.2f}x | {split} (last round) | "
            f"{'yes' if med.get('shared') else 'no'}"
        )


def machine() -> dict[str, Any]:
    """Where and when it was measured."""
    import datetime
    import platform

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpus": len(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rate", type=float, default=live.LiveOptions.rate, help="frames/s offered (0: max)"
    )
    ap.add_argument("--window", type=float, default=4.0, help="seconds offered per row")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each runs every row)")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    ap.add_argument(
        "--worker-cpu",
        type=int,
        choices=(live.WIRE_CPU, live.RX_CPU),
        default=live.LiveOptions.worker_cpu,
        help=f"the worker's CPU, the kernel's entry's (default {live.WIRE_CPU}, beside the "
        f"generator; {live.RX_CPU}: all the receiving on one CPU; see suite/live.py)",
    )
    ap.add_argument(
        "--qsize",
        type=int,
        default=live.LiveOptions.qsize,
        help=f"the map's ring per CPU, every row (default {live.LiveOptions.qsize})",
    )
    ap.add_argument(
        "--queues",
        default="",
        metavar="LIST",
        help="AF_XDP with one RX producer per queue: a row per count, e.g. 1,2,4",
    )
    ap.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = ap.parse_args(argv)
    try:
        counts = [int(q) for q in args.queues.split(",") if q]
    except ValueError:
        ap.error("--queues takes counts of RX queues, e.g. 1,2,4")
    for n in counts:
        ROWS[f"af_xdp_q{n}"] = queue_row(n)
    given = any(a == "--rows" or a.startswith("--rows=") for a in (argv or sys.argv[1:]))
    rows = [r for r in args.rows.split(",") if r] if given or not counts else []
    rows += [f"af_xdp_q{n}" for n in counts]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or args.rate < 0 or args.window <= 0 or args.rounds < 1:
        ap.error(f"--rows takes {', '.join(ROWS)}; --rate >= 0, --window > 0, --rounds >= 1")
    if not 1 <= args.qsize <= 16384:
        ap.error("--qsize must be in 1..16384")
    opts = live.LiveOptions(
        rate=args.rate or None, window_s=args.window, worker_cpu=args.worker_cpu,
        qsize=args.qsize,
    )  # fmt: skip
    skipped = skip_reasons(rows)
    load = [os.getloadavg()[0]]
    results = run_rounds([r for r in rows if r not in skipped], opts, args.rounds)
    load.append(os.getloadavg()[0])
    if args.json:
        doc = {"options": vars(opts), "rounds": results, "ratios": ratios(results),
               "cpu_ratios": ratios(results, "cpu_fps"), "machine": machine()}  # fmt: skip
        if "af_xdp_q1" in results:  # each queue count against one queue, same round
            doc["queue_ratios"] = ratios(results, baseline="af_xdp_q1")
            doc["queue_cpu_ratios"] = ratios(results, "cpu_fps", "af_xdp_q1")
        print(json.dumps(doc | {"skipped": skipped, "load": load}, indent=2))
    else:
        print_table(results, skipped, opts)
        print(f"load average {load[0]:.2f} -> {load[1]:.2f} (other work on the machine: noise)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
