"""The main job (``cpumap run FILE --quiet``) with and without the flow hash riding in the
frames' descriptors: paired runs, each in its own process, medians and their ratio.

    .venv/bin/python benchmarks/bench_riding_run.py FILE.pcap [--pairs N] [-- RUN-ARGS...]

(for instance ``-- --cpus 0,1``: two workers, sharing the CPUs with the RX side).

Until the RX side computes the hash itself (a capture's compiled record walk, as a NIC's RSS
hash), this harness stands in for it: the hashes of every packet of the file are computed
first (not timed), and the RX producer's copy into the pool writes each frame's hash and
``HASH_L4`` beside the descriptor it fills -- what the walk will do, at no cost to the RX
side.  Only the ``run`` command itself is timed (in the child, around ``cli.main``: no
imports, no precomputation), and the two flow tables printed must be the same.

Each pair runs "plain" then "riding" (the order alternates), so load drifting on a shared
machine hits both alike; the ratio is of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

WINDOW = 256  # header bytes a hash needs, with room for tags and extension headers


def packet_hashes(path: str) -> np.ndarray:
    """The skb hash of every packet of ``path``, in file order."""
    from cpumap.capture import open_capture
    from cpumap.skb import SkbBatch

    out: list[np.ndarray] = []
    with open_capture(path) as reader:
        for batch in reader.batches(4096):
            n = len(batch)
            length = np.minimum(batch.caplen, WINDOW).astype(np.int64)
            pos = batch.start.astype(np.int64)[:, None] + np.arange(WINDOW)
            np.minimum(pos, len(batch.buf) - 1, out=pos)
            rows = np.asarray(batch.buf)[pos].astype(np.uint8).reshape(n, WINDOW)
            out.append(SkbBatch(rows, 0, length, linktype=batch.linktype).hash)
    return np.concatenate(out)


def child(mode: str, args: list[str]) -> None:
    """Run ``cpumap run ARGS`` in this process (hashes riding if ``mode == "riding"``);
    print the seconds it took, then the output's last lines on stderr."""
    import contextlib
    import io

    from cpumap.cli import main
    from cpumap.engine.frame_pool import HASH_L4
    from cpumap.engine.rx import RxProducer

    if mode == "riding":
        hashes = packet_hashes(args[1])
        done = [0]
        fill = RxProducer._fill

        def riding_fill(self: RxProducer, where: Any, batch: Any) -> None:
            fill(self, where, batch)  # resets hash_type: then the hash rides again
            k, n = done[0], len(batch)
            self.pool.rx_hash[where] = hashes[k : k + n]
            self.pool.hash_type[where] = HASH_L4
            done[0] = k + n

        RxProducer._fill = riding_fill  # type: ignore[method-assign]
    out = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = main(args)
    seconds = time.perf_counter() - t
    print(f"{seconds:.4f} {rc}")
    print(out.getvalue()[-3000:], file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capture")
    ap.add_argument("--pairs", type=int, default=5)
    a, more = ap.parse_known_args(argv)  # the rest (after --): more for `cpumap run`
    args = ["run", a.capture, "--quiet", *[m for m in more if m != "--"]]
    times: dict[str, list[float]] = {"plain": [], "riding": []}
    tables: dict[str, str] = {}
    for k in range(a.pairs):
        order = ("plain", "riding") if k % 2 == 0 else ("riding", "plain")
        for mode in order:
            p = subprocess.run(
                [sys.executable, __file__, "--child", mode, *args],
                capture_output=True,
                text=True,
                check=True,
            )
            seconds, rc = p.stdout.split()
            assert rc == "0", p.stderr
            times[mode].append(float(seconds))
            tables[mode] = p.stderr[p.stderr.find("top ") :]  # the flows, not the timings
        print(f"pair {k}: plain {times['plain'][-1]:.3f} s  riding {times['riding'][-1]:.3f} s")
    same = tables["plain"] == tables["riding"]
    plain, riding = statistics.median(times["plain"]), statistics.median(times["riding"])
    print(f"median: plain {plain:.3f} s, riding {riding:.3f} s, plain/riding {plain / riding:.2f}x")
    print(f"flow tables printed: {'the same' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
