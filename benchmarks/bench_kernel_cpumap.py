"""The kernel's own cpumap throughput, the anchor our engine is measured against.

64-byte UDP frames enter with ``BPF_PROG_TEST_RUN`` in live-frames mode on the RX CPU
(0), an XDP program redirects each one to the cpumap entry of the target CPU (1), and
the ``xdp_cpumap_*`` tracepoints say what happened there.  Paths measured:

* ``rx-drop``: the RX program drops every frame, no redirect: what the sender can do.
* ``xdp-drop``: redirect; the entry's second-stage XDP program drops on the target CPU.
* ``netstack``: redirect; no second stage: the target CPU builds an SKB per frame and
  runs the real receive path (``ip_rcv`` → ``udp_rcv`` → a socket whose buffer is full).

frames/s is what the *target* CPU processed (kthread ``processed``) per second from the
first enqueue to the last kthread batch; the RX side usually outruns it, and the rest are
queue-full drops (shown).  That figure falls when other work shares CPU 1; the kthread's
own CPU time per frame (``/proc/<pid>/schedstat``) does not, and is printed beside it.

Needs root.  The measurements are the suite's (``suite.kernel``, in this directory: the
``kernel`` rows of ``cpumap bench`` and ``bench_engine.py --kernel`` use them too, to print
the kernel's figure beside ours, on the same machine in the same run); this script prints
every path at several ring sizes.

    .venv/bin/python benchmarks/bench_kernel_cpumap.py [--frames N] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from suite.kernel import kernel_cpumap_fps, rx_drop_fps, unavailable_reason


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration")
    ap.add_argument("--qsize", type=int, action="append", help="ring sizes (default 192, 2048)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per line")
    args = ap.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"kernel cpumap not measurable here: {reason}", file=sys.stderr)
        return 2
    qsizes = args.qsize or [192, 2048]
    figures = [rx_drop_fps(frames=args.frames, repeat=args.repeat)]
    for path in ("xdp-drop", "netstack"):
        for q in qsizes:
            figures.append(
                kernel_cpumap_fps(path, q, frames=args.frames, repeat=args.repeat)  # type: ignore[arg-type]
            )
    if args.json:
        for f in figures:
            print(json.dumps(f.__dict__))
        return 0
    print(f"kernel cpumap, 64-byte UDP frames, {args.frames:,} frames x {args.repeat} runs")
    print(
        f"{'path':<10} {'qsize':>6} {'frames/s on CPU 1':>18} {'range':>17} {'drops':>6}"
        f" {'kthread ns/frame':>17} {'= frames/s/CPU':>15}"
    )
    for f in figures:
        q = f"{f.qsize}" if f.qsize else "-"
        rng = f"{f.min_fps / 1e6:.2f}-{f.max_fps / 1e6:.2f} M"
        if f.ns_per_frame:
            cost = f"{f.ns_per_frame:>17.0f} {1e3 / f.ns_per_frame:>13.2f} M"
        else:
            cost = f"{'-':>17} {'-':>15}"
        note = "" if f.complete else "  (partial: events lost or kthread late)"
        print(
            f"{f.path:<10} {q:>6} {f.frames_per_s / 1e6:>16.2f} M {rng:>17}"
            f" {f.drop_ratio:>6.0%} {cost}{note}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
