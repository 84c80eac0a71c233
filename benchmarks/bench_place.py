"""The RX side per frame: a capture read in place (capture/mapped.py) against today's
reader + copy, same file, same run.

Rows, each the RX side alone (one producer in this process, a program that drops every
frame, so no worker runs; the pool's frames come back at once):

* ``general``: ``open_capture`` + ``reader.batches(poll)`` + ``RxProducer.receive`` --
  the chunk read, the record walk and gather, the copy into the pool (``_fill``), the poll.
* ``placed``: ``open_placing`` + ``attach`` + ``next_batch`` -- ``lend``, the compiled
  walk + copy + descriptor + flow hash (``cpumap._place``), ``poll_placed``.
* ``place-only``: ``cpumap._place.place`` alone over the same mapping into one set of
  frames, poll after poll: what the copy, the descriptors and the hash cost per frame --
  the most that "descriptors pointing into the file" could save over the placed path.
* ``place-no-copy``: the same into frames with 64 bytes of room (every copy cut to 64
  bytes, what the hash reads): the walk over the mapping, the descriptors and the hash
  without the rest of the copy, so ``place-only`` minus this is the copy's share -- what
  descriptors pointing into the file would save (measured: within the noise; the walk
  touches every page of the file either way).

The rows run alternately (``--repeat`` rounds, the order rotating), and the medians and
ratios against ``general`` of the same round are printed: the machine is shared and
noisy, trust the ratios.  ``--capture FILE`` reads a given pcap (else ``--packets`` of the
main job's mix are written to a temporary directory).

    .venv/bin/python benchmarks/bench_place.py [--capture FILE | --packets N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cpumap import CpuMap, _place
from cpumap.abi import XDP_DROP
from cpumap.capture import open_capture
from cpumap.capture.mapped import MappedCapture, open_placing
from cpumap.engine.frame_pool import FramePool
from cpumap.programs import vectorized

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite.main_job import make_capture

POLL = 1024


@vectorized
def drop(batch) -> np.ndarray:
    return np.full(len(batch), XDP_DROP, dtype=np.uint8)


def general(path: str) -> int:
    with CpuMap(1) as m, m.producer(drop, poll_size=POLL) as rx:
        with open_capture(path, batch_size=POLL) as r:
            for b in r.batches(POLL):
                rx.receive(b)
        return m.stats().rx


def placed(path: str) -> int:
    with CpuMap(1) as m, m.producer(drop, poll_size=POLL) as rx:
        src = open_placing(path, batch_size=POLL)
        assert isinstance(src, MappedCapture)
        with src:
            src.attach(rx)
            while (b := src.next_batch()) is not None:
                rx.receive(b)
        return m.stats().rx


def place_only(path: str, frame_size: int = 2048, headroom: int = 256) -> int:
    """The compiled call alone, poll after poll into the same frames."""
    pool = FramePool(count=POLL, frame_size=frame_size, headroom=headroom)
    frames = np.arange(POLL, dtype=np.uint32)
    desc = pool.desc.view(np.uint8)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        mm.madvise(mmap.MADV_SEQUENTIAL)
        big = mm[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
        pos, n, why = 24, 0, _place.STOP_FULL
        while why == _place.STOP_FULL:
            k, pos, why, _, _ = _place.place(
                mm, pos, pool.flat, frame_size, headroom, desc, frames, big, 1000, 262144, 1
            )
            n += k
    pool.close()
    return n


def place_no_copy(path: str) -> int:
    return place_only(path, frame_size=128, headroom=64)


ROWS: dict[str, Callable[[str], int]] = {
    "general": general,
    "placed": placed,
    "place-only": place_only,
    "place-no-copy": place_no_copy,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--capture", help="a pcap file to read (default: one written here)")
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.capture
        if path is None:
            path = os.path.join(tmp, "mix.pcap")
            make_capture(path, args.packets)
        size = os.path.getsize(path)
        names = list(ROWS)
        times: dict[str, list[float]] = {n: [] for n in names}
        ratios: dict[str, list[float]] = {n: [] for n in names}
        frames = 0
        for r in range(args.repeat):
            order = names[r % len(names) :] + names[: r % len(names)]
            got: dict[str, float] = {}
            for name in order:
                t = time.perf_counter()
                frames = ROWS[name](path)
                got[name] = time.perf_counter() - t
            for name in names:
                times[name].append(got[name])
                ratios[name].append(got["general"] / got[name])
    load = os.getloadavg()[0]
    print(f"{frames:,} frames, {size / 2**20:.0f} MiB, {args.repeat} rounds, load {load:.2f}")
    print(f"{'row':<16} {'ns/frame':>9} {'x general':>10}  (medians; ratio per round)")
    out = {"frames": frames, "bytes": size, "load": load, "rows": {}}
    for name in names:
        ns = statistics.median(times[name]) / frames * 1e9
        ratio = statistics.median(ratios[name])
        print(f"{name:<16} {ns:>9.1f} {ratio:>9.2f}x")
        out["rows"][name] = {"ns_per_frame": ns, "speedup": ratio, "seconds": times[name]}
    copy = (
        statistics.median(times["place-only"]) - statistics.median(times["place-no-copy"])
    ) / frames
    print(f"the copy's share of place-only: {copy * 1e9:.1f} ns/frame")
    out["copy_ns_per_frame"] = copy * 1e9
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
