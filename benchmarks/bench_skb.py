"""What building an skb costs: per frame (:class:`Skb`) and per batch (:class:`SkbBatch`).

Run: ``.venv/bin/python benchmarks/bench_skb.py [--batch 256] [--runs 15]``.  Prints
microseconds: the median of ``--runs`` timed runs (each the mean of many calls), and their
spread [min .. max].  The machine is shared and noisy: compare figures of one invocation.

The batch cases build ``SkbBatch`` the way the engine's ``cpumap.skb.skb_batch`` does:
rows are ``pool.data[index, lo:hi]`` (a C-contiguous ``[n, W]`` gather of the packets'
columns, offset 0 for every frame), and the metadata are fields of a gathered descriptor
record array (uint32 length, uint16 linktype, ...).  The gathers and field views are
``skb_batch``'s work and not timed; the ``SkbBatch(...)`` call is, in every batch figure.
Each frame of a batch is its own flow (addresses and ports vary).
"""

from __future__ import annotations

import argparse
import statistics
import struct
import timeit
from collections.abc import Callable

import numpy as np

from cpumap.skb import Skb, SkbBatch

MAC = bytes.fromhex("020000000002020000000001")
ETH_V4, ETH_V6, ETH_ARP = MAC + b"\x08\x00", MAC + b"\x86\xdd", MAC + b"\x08\x06"
ETH_VLAN_V6 = MAC + b"\x81\x00\x00\x07\x86\xdd"


def ipv4(proto: int, l4: bytes, src: bytes = b"\xc0\xa8\x01\x0a") -> bytes:
    total = 20 + len(l4)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, proto, 0, src, b"\x0a\0\0\1") + l4


def ipv6(proto: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, b"\x20" * 16, b"\x21" * 16) + l4


def pad(frame: bytes, size: int = 64) -> bytes:
    return frame + bytes(max(0, size - len(frame)))


TCP = struct.pack("!HHIIHHHH", 34567, 443, 1, 0, 0x5018, 65535, 0, 0)
UDP = struct.pack("!HHHH", 5353, 53, 8, 0)
ICMP = struct.pack("!BBHHH", 8, 0, 0, 1, 1)
ARP = bytes.fromhex("0001080006040001") + bytes(20)

V4_UDP = pad(ETH_V4 + ipv4(17, UDP))
V4_TCP = pad(ETH_V4 + ipv4(6, TCP))
V6_UDP = pad(ETH_V6 + ipv6(17, UDP), 78)
V6_TCP = pad(ETH_V6 + ipv6(6, TCP), 78)
VLAN_V6_UDP = pad(ETH_VLAN_V6 + ipv6(17, UDP), 82)
V4_ICMP = pad(ETH_V4 + ipv4(1, ICMP))
ARP_FRAME = pad(ETH_ARP + ARP)

from cpumap.engine.frame_pool import DESCRIPTOR  # noqa: E402

HEADROOM = 256


def engine_batch(frames: list[bytes], cls: type[SkbBatch] = SkbBatch) -> Callable[[], SkbBatch]:
    """A function building an ``SkbBatch`` over ``frames`` as ``skb_batch`` does (see the
    module docstring), with the flows varied: frame i gets source address 10.1.x.y / its
    IPv6 counterpart and ports derived from i."""
    n = len(frames)
    pool = np.zeros((n, 2048), dtype=np.uint8)
    desc = np.zeros(n, dtype=DESCRIPTOR)
    for i, frame in enumerate(frames):
        b = bytearray(frame)
        if b[12:14] == b"\x08\x00":
            b[26:30] = bytes([10, 1, i >> 8, i & 0xFF])
            b[34:38] = struct.pack("!HH", 1024 + 7 * i, 80 + i % 3)
        elif b[12:14] == b"\x86\xdd":
            b[22:24] = struct.pack("!H", i)
            b[54:58] = struct.pack("!HH", 1024 + 7 * i, 80 + i % 3)
        pool[i, HEADROOM : HEADROOM + len(b)] = np.frombuffer(bytes(b), dtype=np.uint8)
        desc[i] = (len(b), len(b), 1000 + i, 2, i % 4, 1, HEADROOM, 0, 0)
    index = np.arange(n, dtype=np.uint32)
    d = desc[index]
    lo = int(d["headroom"].min())
    hi = int((d["headroom"] + d["length"]).max())
    rows = pool[index, lo:hi]
    offset = d["headroom"] - lo
    fields = {name: d[name] for name in ("wire_len", "linktype", "ifindex", "rx_queue", "ts_ns")}
    length = d["length"]

    def build() -> SkbBatch:
        return cls(rows, offset, length, index=index, **fields)

    return build


def timed(fn: Callable[[], object], number: int, runs: int) -> tuple[float, float, float]:
    """Median, min and max over ``runs`` of the mean µs per call of ``number`` calls."""
    times = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=runs)]
    return statistics.median(times), min(times), max(times)


def show(label: str, figures: tuple[float, float, float], per: int = 0) -> None:
    median, lo, hi = figures
    extra = f"  ({median / per:5.3f} us/frame)" if per else ""
    print(f"  {label:44s} {median:8.2f} us  [{lo:7.2f} .. {hi:7.2f}]{extra}")


def bench_per_frame(runs: int) -> None:
    print("per frame (Skb), median of runs [min .. max]:")
    n = 20000
    for name, frame in [("eth/ipv4/tcp", V4_TCP), ("eth/vlan/ipv6/udp", VLAN_V6_UDP)]:
        view = memoryview(np.frombuffer(frame, dtype=np.uint8).copy()).cast("B")
        parse = timed(lambda v=view: Skb(v).dport, n, runs)
        hashed = timed(lambda v=view: Skb(v).hash, n, runs)
        show(f"{name}: construct only", timed(lambda v=view: Skb(v, index=3), n, runs))
        show(f"{name}: construct + parse (dport)", parse)
        show(f"{name}: construct + all fields", timed(lambda v=view: Skb(v).as_dict(), n, runs))
        show(f"{name}: construct + parse + hash", hashed)
        label = f"{name}: hash on top of the parse"
        print(f"  {label:44s} {hashed[0] - parse[0]:8.2f} us  (difference of the medians)")


def mixed_frames(size: int) -> list[bytes]:
    """A traffic mix: 1/2 IPv4 TCP/UDP, then IPv6, VLAN + IPv6, ICMP and ARP."""
    cycle = [V4_UDP, V4_TCP, V4_UDP, V4_TCP, V6_UDP, VLAN_V6_UDP, V4_ICMP, ARP_FRAME]
    return [cycle[i % len(cycle)] for i in range(size)]


def with_odd(size: int, count: int) -> list[bytes]:
    """IPv4 UDP but ``count`` frames, spread out, that the fast path patches per frame."""
    odd = [ARP_FRAME, V4_ICMP, VLAN_V6_UDP, V6_UDP]
    frames = [V4_UDP] * size
    for k in range(count):
        frames[k * size // count] = odd[k % len(odd)]
    return frames


def bench_batch(size: int, runs: int) -> None:
    cases = {
        "common: eth/ipv4/udp": [V4_UDP] * size,
        "common: eth/ipv4/tcp+udp": [(V4_TCP, V4_UDP)[i % 2] for i in range(size)],
        "common: eth/ipv6/tcp+udp": [(V6_TCP, V6_UDP)[i % 2] for i in range(size)],
        "common but 1 frame (ARP)": with_odd(size, 1),
        "common but 8 frames (ARP, ICMP, VLAN, IPv6)": with_odd(size, 8),
        "mixed (v4 tcp/udp, v6, vlan, icmp, arp)": mixed_frames(size),
    }
    columns = {
        "hash": ["hash"],
        "protocol": ["protocol"],
        "ip_proto": ["ip_proto"],
        "sport": ["sport"],
        "dport": ["dport"],
        "every column": list(SkbBatch.COLUMNS),
    }
    number = max(20, 10000 // size)
    for case, frames in cases.items():
        build = engine_batch(frames)
        print(f"batch of {size}, {case}: SkbBatch(...) + columns, median [min .. max]")
        show("construction only", timed(build, number, runs), size)
        for label, names in columns.items():

            def run(build: Callable[[], SkbBatch] = build, names: list[str] = names) -> None:
                b = build()
                for name in names:
                    getattr(b, name)

            show(label, timed(run, number, runs), size)
    batch = engine_batch(cases["mixed (v4 tcp/udp, v6, vlan, icmp, arp)"])()
    us = timed(lambda: [batch.skb(i).hash for i in range(size)], 3, min(runs, 5))
    show("for scale: mixed, per-frame skb(i).hash loop", us, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-per-frame", action="store_true")
    args = parser.parse_args()
    if not args.no_per_frame:
        bench_per_frame(args.runs)
    bench_batch(args.batch, args.runs)


if __name__ == "__main__":
    main()
