"""Live source and generator throughput, each beside its baseline in the same run.

Live source (needs root): 64-byte UDP frames over a veth pair between two fresh namespaces.

* ``drain``: the peer sends N frames while nobody reads (they wait in the ring, or in the
  baseline socket's receive queue, sized to hold them all); then the clock runs while the
  receiver takes them all.  This isolates the receiver's cost per frame.
  - ``ring``: :class:`~cpumap.live.LiveSource` (TPACKET_V3), yielding PacketBatches.
  - ``recvfrom``: a plain AF_PACKET socket and a ``sock.recvfrom(2048)`` loop (one syscall
    and one ``bytes`` per frame, no batch built).
  - ``recv_into``: the same with ``recv_into`` a preallocated buffer (the cheapest plain loop).
* ``live``: a sender process in the peer namespace sends N frames as fast as it can while
  the receiver runs; frames/s received (first to last) and the drops.  On a 2-core machine
  the sender (a Python loop, one ``send`` per frame) is the bottleneck: this shows whether
  the receiver keeps up, not its ceiling.

Generator: ``frames(n)`` (the 2-D fast path), ``batches()`` (PacketBatches with timestamps)
for 64-byte UDP over 1024 flows, and ``batches()`` for the default mix (3 sizes, UDP/TCP/ICMP,
IPv4/IPv6, half VLAN-tagged).

    .venv/bin/python benchmarks/bench_live.py [--frames N] [--repeat R] [--no-live]

The machines are shared and noisy: best of R, and trust the ratios more than the figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import numpy as np

from cpumap.abi import ETH_P_ALL
from cpumap.generator import Generator
from cpumap.live import LiveSource
from cpumap.live.netns import Injector, VethPair

SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: root may exceed rmem_max


def _frames(pair: VethPair, n: int) -> np.ndarray:
    gen = Generator(flows=1024, sizes=64, protocols=("udp",), ip_versions=(4,))
    frames = gen.frames(n)
    frames[:, 0:6] = np.frombuffer(pair.local.mac_bytes, dtype=np.uint8)
    return frames


def _plain_socket(pair: VethPair, rcvbuf: int) -> socket.socket:
    with pair.in_local():
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        sock.bind((pair.local.ifname, ETH_P_ALL))
    return sock


def _drain_ring(pair: VethPair, frames: np.ndarray) -> tuple[float, int]:
    n = len(frames)
    with pair.in_local():
        src = LiveSource(pair.local.ifname, block_size=1 << 20, block_count=96)
    with src:
        pair.inject(frames)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batch = src.poll_batch(1.0)
            if batch is None:
                break
            got += len(batch)
        dt = time.perf_counter() - t0
        assert src.statistics().kernel_drops == 0, "ring too small for the burst"
    return got / dt, got


def _drain_plain(pair: VethPair, frames: np.ndarray, into: bool) -> tuple[float, int]:
    n = len(frames)
    sock = _plain_socket(pair, 1 << 30)
    try:
        pair.inject(frames)
        sock.settimeout(1.0)
        got = 0
        buf = bytearray(2048)
        t0 = time.perf_counter()
        try:
            if into:
                recv_into = sock.recv_into
                while got < n:
                    recv_into(buf)
                    got += 1
            else:
                recvfrom = sock.recvfrom
                while got < n:
                    recvfrom(2048)
                    got += 1
        except TimeoutError:
            pass
        dt = time.perf_counter() - t0
    finally:
        sock.close()
    return got / dt, got


def _sender(pair: VethPair, frames: np.ndarray) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            with Injector(pair.peer.ifname, netns=pair.peer.netns) as inj:
                inj.send(frames)
        finally:
            os._exit(0)
    return pid


def _live(pair: VethPair, frames: np.ndarray, kind: str) -> tuple[float, int, int]:
    """(frames/s received, received, dropped) with a concurrent sender."""
    n = len(frames)
    if kind == "ring":
        with pair.in_local():
            src = LiveSource(pair.local.ifname, block_size=1 << 18, block_count=16)
        got, first, last = 0, 0.0, 0.0
        pid = _sender(pair, frames)
        while got < n:
            batch = src.poll_batch(0.5)
            if batch is None:
                break
            last = time.perf_counter()
            first = first or last
            got += len(batch)
        drops = src.statistics().kernel_drops
        src.close()
    else:
        sock = _plain_socket(pair, 1 << 22)  # a few MB: like the ring above (4 MB)
        sock.settimeout(0.5)
        got, first, last = 0, 0.0, 0.0
        pid = _sender(pair, frames)
        buf = bytearray(2048)
        try:
            while got < n:
                sock.recv_into(buf)
                last = time.perf_counter()
                first = first or last
                got += 1
        except TimeoutError:
            pass
        drops = n - got
        sock.close()
    os.waitpid(pid, 0)
    return (got - 1) / (last - first) if got > 1 else 0.0, got, drops


def bench_live(n: int, repeat: int, live: bool) -> None:
    print(f"live source: {n} 64-byte UDP frames over veth, best of {repeat}")
    with VethPair() as pair:
        frames = _frames(pair, n)
        runs = {
            "drain ring (LiveSource)": lambda: _drain_ring(pair, frames),
            "drain recvfrom loop": lambda: _drain_plain(pair, frames, into=False),
            "drain recv_into loop": lambda: _drain_plain(pair, frames, into=True),
        }
        results = {}
        for name, fn in runs.items():
            best = max((fn() for _ in range(repeat)), key=lambda r: r[0])
            results[name] = best[0]
            print(f"  {name:28s} {best[0] / 1e6:7.3f} M frames/s  ({best[1]} frames)")
        ratio = results["drain ring (LiveSource)"] / results["drain recvfrom loop"]
        print(f"  ring / recvfrom: {ratio:.1f}x")
        if live:
            for kind in ("ring", "recv_into"):
                fps, got, drops = max(
                    (_live(pair, frames, kind) for _ in range(repeat)), key=lambda r: r[0]
                )
                print(
                    f"  live {kind:23s} {fps / 1e6:7.3f} M frames/s  "
                    f"received {got}, dropped {drops}"
                )


def bench_generator(n: int, repeat: int) -> None:
    print(f"generator: best of {repeat}")
    bench = Generator(flows=1024, sizes=64, protocols=("udp",), ip_versions=(4,))
    mix = Generator(flows=1024, vlan=(None, 10))

    def frames(reuse: bool = False) -> float:
        into = np.empty((65536, 64), dtype=np.uint8) if reuse else None
        t = time.perf_counter()
        for k in range(0, n - n % 65536, 65536):
            bench.frames(65536, k, out=into)
        return (n - n % 65536) / (time.perf_counter() - t)

    def batches(gen: Generator, m: int) -> float:
        t = time.perf_counter()
        got = 0
        for b in gen.batches(65536):
            got += len(b)
            if got >= m:
                break
        return got / (time.perf_counter() - t)

    frames()  # warm up: first touches of fresh memory and the numpy allocator
    for name, fn in (
        ("frames(65536) 64 B UDP", frames),
        ("frames(65536, out=buf) 64 B", lambda: frames(reuse=True)),
        ("batches(65536) 64 B UDP", lambda: batches(bench, n)),
        ("batches(65536) mixed", lambda: batches(mix, n // 4)),
    ):
        best = max(fn() for _ in range(repeat))
        print(f"  {name:28s} {best / 1e6:7.2f} M frames/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-live", action="store_true", help="skip the concurrent-sender runs")
    ap.add_argument("--generator-only", action="store_true")
    args = ap.parse_args()
    bench_generator(max(args.frames, 1_000_000), args.repeat)
    if not args.generator_only:
        if os.geteuid() != 0:
            print("live source: skipped (needs root)")
            return
        bench_live(args.frames, args.repeat, not args.no_live)


if __name__ == "__main__":
    main()
