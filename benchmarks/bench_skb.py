"""What building an skb costs: per frame (:class:`Skb`) and per batch (:class:`SkbBatch`).

Run: ``.venv/bin/python benchmarks/bench_skb.py [--batch 256]``.  Prints microseconds; the
numbers are the best of several repeats, so they are the cost without scheduler noise.
"""

from __future__ import annotations

import argparse
import struct
import timeit
from collections.abc import Callable

import numpy as np

from cpumap.skb import Skb, SkbBatch

ETH_V4 = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
IPV4_TCP = struct.pack(
    "!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, b"\xc0\xa8\x01\x0a", b"\x0a\x00\x00\x01"
)
TCP = struct.pack("!HHIIHHHH", 34567, 443, 1, 0, 0x5018, 65535, 0, 0)
IPV6_UDP = struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64, b"\x20" * 16, b"\x21" * 16)
UDP = struct.pack("!HHHH", 5353, 53, 8, 0)

FRAMES = {
    "eth/ipv4/tcp": ETH_V4 + IPV4_TCP + TCP + bytes(6),
    "eth/vlan/ipv6/udp": bytes(12) + b"\x81\x00\x00\x07\x86\xdd" + IPV6_UDP + UDP,
}


def best_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def bench_per_frame() -> None:
    for name, frame in FRAMES.items():
        view = memoryview(np.frombuffer(frame, dtype=np.uint8).copy()).cast("B")
        n = 20000
        print(f"per frame, {name}:")
        print(f"  construct only          {best_us(lambda v=view: Skb(v, index=3), n):6.2f} us")
        print(f"  construct + dport       {best_us(lambda v=view: Skb(v).dport, n):6.2f} us")
        print(f"  construct + all fields  {best_us(lambda v=view: Skb(v).as_dict(), n):6.2f} us")
        print(f"  construct + hash        {best_us(lambda v=view: Skb(v).hash, n):6.2f} us")


def make_batch(size: int) -> SkbBatch:
    frames = list(FRAMES.values())
    rows = np.zeros((size, 2048), dtype=np.uint8)
    lengths = np.zeros(size, dtype=np.int64)
    for i in range(size):
        frame = frames[i % len(frames)]
        rows[i, 256 : 256 + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
        lengths[i] = len(frame)
    return SkbBatch(rows, np.full(size, 256), lengths)


def bench_batch(size: int) -> None:
    batch = make_batch(size)
    stages = {
        "link (protocol..network_offset)": ["protocol"],
        "+ ip (ip_version..transport_offset)": ["protocol", "ip_proto"],
        "+ transport (sport, dport, depth)": ["protocol", "ip_proto", "dport"],
        "all columns, hash included": list(SkbBatch.COLUMNS),
    }
    print(f"batch of {size} (mixed eth/ipv4/tcp and eth/vlan/ipv6/udp, 2048-byte rows):")
    for label, columns in stages.items():

        def run(columns: list[str] = columns) -> None:
            b = SkbBatch(batch.rows, batch.offset, batch.length)
            for column in columns:
                getattr(b, column)

        us = best_us(run, 50)
        print(f"  {label:36s} {us:8.1f} us  ({us / size:5.2f} us/frame)")
    us = best_us(lambda: [batch.skb(i).hash for i in range(size)], 5)
    label = "per-frame skb(i).hash loop, for scale"
    print(f"  {label:36s} {us:8.1f} us  ({us / size:5.2f} us/frame)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    bench_per_frame()
    for size in sorted({args.batch, 16, 1024}):
        bench_batch(size)


if __name__ == "__main__":
    main()
