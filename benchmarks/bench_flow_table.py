"""The flow table's first and last milliseconds: its cost where every flow is new (the
start of a run) and at the end (report, pickle to the parent, merge, the top N), against
the table as it was (a description formatted per new flow; a FlowStats per flow reported,
pickled and merged), both in this process, interleaved, medians and their ratio.

    .venv/bin/python benchmarks/bench_flow_table.py [--capture FILE] [--reps N]

The frames: the first ``--frames`` of FILE (default: the main job's mix, 4,096 flows,
generated) as the worker sees them, batches of 256 with the hash already made (it rides
with the frame in a run: neither table pays for it here).  "admit": a fresh table fed the
batches (nearly all of them new flows at first).  "end": ``finish()``, pickle and unpickle
(the worker -> parent pipe), merge, the top 10 as the summary reads them.

The baseline is the table as it was on main before this change, kept below as
:class:`DescribingFlowTable` and :func:`merge_described` (the code, not a model of it).
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cpumap.sinks import FlowStats, FlowTable, describe_flow, merge_flow_tables
from cpumap.skb import SkbBatch

BATCH = 256


class DescribingFlowTable(FlowTable):
    """The baseline: FlowTable as it was -- ``describe_flow`` (an Skb, ipaddress) per new
    flow, ``finish()`` a dict of FlowStats."""

    def setup(self, info: Any) -> None:
        super().setup(info)
        self.described: dict[int, tuple[str, str, str]] = {}
        self.hashes = np.zeros(0, dtype=np.uint32)
        self.packets = np.zeros(0, dtype=np.int64)
        self.bytes = np.zeros(0, dtype=np.int64)

    def __call__(self, batch: SkbBatch) -> None:
        hashes, wire = batch.hash, batch.wire_len
        pos, known = self.lookup(hashes)
        if not known.all():
            self.admit(batch, hashes[~known])
            pos, known = self.lookup(hashes)
        np.add.at(self.packets, pos, 1)
        np.add.at(self.bytes, pos, wire)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        table = self.hashes
        if not len(table):
            return np.zeros(len(hashes), dtype=np.intp), np.zeros(len(hashes), dtype=bool)
        pos = np.searchsorted(table, hashes)
        np.minimum(pos, len(table) - 1, out=pos)
        return pos, table[pos] == hashes

    def admit(self, batch: SkbBatch, new: np.ndarray) -> None:
        fresh = np.unique(new)
        where = np.flatnonzero(np.isin(batch.hash, fresh))
        frames = dict(zip(batch.hash[where].tolist(), where.tolist(), strict=True))
        for h in fresh.tolist():
            self.described[h] = describe_flow(batch.skb(frames[h]))
        at = np.searchsorted(self.hashes, fresh)
        self.hashes = np.insert(self.hashes, at, fresh)
        self.packets = np.insert(self.packets, at, 0)
        self.bytes = np.insert(self.bytes, at, 0)

    def finish(self) -> dict[str, Any]:  # type: ignore[override]
        flows = {}
        for h, p, b in zip(
            self.hashes.tolist(), self.packets.tolist(), self.bytes.tolist(), strict=True
        ):
            flows[h] = FlowStats(*self.described[h], p, b, {self.cpu})
        return {"cpu": self.cpu, "flows": flows}


def merge_described(reports: list[dict[str, Any]]) -> list[FlowStats]:
    """The baseline merge: a FlowStats per flow again, every flow sorted."""
    merged: dict[int, FlowStats] = {}
    for report in reports:
        for h, f in report["flows"].items():
            m = merged.get(h)
            if m is None:
                merged[h] = FlowStats(f.protocol, f.a, f.b, f.packets, f.bytes, set(f.cpus))
            else:
                m.packets += f.packets
                m.bytes += f.bytes
                m.cpus |= f.cpus
    return sorted(merged.values(), key=lambda f: (-f.packets, -f.bytes, f.a, f.b))


@dataclass
class Info:
    cpu: int = 1


def load_batches(path: str | None, frames: int) -> list[SkbBatch]:
    """The first ``frames`` frames, as the worker's batches, their hash made."""
    from cpumap.capture import open_capture

    if path is None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from cpumap.generator import Generator
        from suite.main_job import SIZES

        source: Any = Generator(flows=4096, sizes=SIZES, count=frames, seed=7, undersize="clamp")
        packets = source.batches(BATCH)
    else:
        reader = open_capture(path)
        packets = reader.batches(BATCH)
    out: list[SkbBatch] = []
    for pb in packets:
        width = int(pb.caplen.max())
        rows = np.zeros((len(pb), width), dtype=np.uint8)
        for i, (s, c) in enumerate(zip(pb.start.tolist(), pb.caplen.tolist(), strict=True)):
            rows[i, :c] = pb.buf[s : s + c]
        b = SkbBatch(rows, 0, pb.caplen.astype(np.int64), wire_len=pb.wire_len)
        _ = b.hash, b.wire_len  # made now: the hash rides with the frame in a run
        out.append(b)
        if sum(len(x) for x in out) >= frames:
            break
    return out


def admit(kind: type, batches: list[SkbBatch]) -> tuple[float, Any]:
    table = kind()
    table.setup(Info())
    t = time.perf_counter()
    for b in batches:
        table(b)
    return time.perf_counter() - t, table


def end(table: Any, merge: Any, top: int = 10) -> float:
    t = time.perf_counter()
    report = pickle.loads(pickle.dumps(table.finish(), protocol=pickle.HIGHEST_PROTOCOL))
    flows = merge([report])
    [(f.protocol, f.a, f.b, f.packets) for f in flows[:top]], len(flows)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", help="a capture (default: the main job's mix, generated)")
    ap.add_argument("--frames", type=int, default=20_000, help="frames fed (default 20,000)")
    ap.add_argument("--reps", type=int, default=9)
    a = ap.parse_args()
    batches = load_batches(a.capture, a.frames)
    frames = sum(len(b) for b in batches)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {frames:,} frames")
    phases = ("first batch", "admit", "end")
    times: dict[str, list[float]] = {f"{p} {k}": [] for p in phases for k in "AB"}
    for rep in range(a.reps):
        order = [("A", DescribingFlowTable, merge_described), ("B", FlowTable, merge_flow_tables)]
        for name, kind, merge in order if rep % 2 == 0 else order[::-1]:
            times[f"first batch {name}"].append(admit(kind, batches[:1])[0])
            seconds, table = admit(kind, batches)
            times[f"admit {name}"].append(seconds)
            times[f"end {name}"].append(end(table, merge))
    flows = len(admit(FlowTable, batches)[1].finish().hashes)
    first = len(np.unique(batches[0].hash))
    print(f"{flows:,} flows ({first} new in the first batch of {len(batches[0])});")
    print("A: describe per new flow (as on main), B: keys, described on read")
    for phase in phases:
        ma, mb = statistics.median(times[f"{phase} A"]), statistics.median(times[f"{phase} B"])
        print(f"{phase:11} A {ma * 1e3:8.2f} ms  B {mb * 1e3:8.2f} ms  A/B {ma / mb:5.2f}x")


if __name__ == "__main__":
    main()
