"""Shared fixtures: frame builders and the leak check every test runs under."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest

from cpumap import PacketBatch


def _children(pid: int) -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (after the parenthesised command, which may contain spaces) is the ppid.
        ppid = int(stat.rpartition(")")[2].split()[1])
        state = stat.rpartition(")")[2].split()[0]
        if ppid == pid and state != "Z":
            out.add(int(name))
    return out


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test must leave no child process and no shared-memory segment behind."""
    before = _children(os.getpid())
    shm_before = {n for n in os.listdir("/dev/shm") if "cpumap" in n}
    yield
    deadline = time.monotonic() + 10
    while True:
        left = _children(os.getpid()) - before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not left, f"child processes left behind: {sorted(left)}"
    shm_after = {n for n in os.listdir("/dev/shm") if "cpumap" in n}
    assert shm_after <= shm_before, f"shared memory left behind: {shm_after - shm_before}"


def udp_frame(flow: int, seq: int, size: int = 64, *, reverse: bool = False) -> bytes:
    """An Ethernet/IPv4/UDP frame of ``flow`` carrying ``seq`` (payload: flow, seq)."""
    src = 0x0A000000 | (flow & 0xFFFF)
    dst = 0x0A100000 | ((flow >> 16) & 0xFFFF)
    sport, dport = 1024 + flow % 50000, 53
    if reverse:
        src, dst, sport, dport = dst, src, dport, sport
    payload_len = max(size - 42, 8)
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + 8 + payload_len, 0, 0, 64, 17, 0, src, dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + payload_len, 0)
    payload = struct.pack("!II", flow, seq) + bytes(payload_len - 8)
    return eth + ip + udp + payload


def flow_batch(flows: int, per_flow: int, size: int = 64) -> PacketBatch:
    """``flows * per_flow`` frames, interleaved round-robin over flows, seq per flow."""
    frames = [udp_frame(f, s, size) for s in range(per_flow) for f in range(flows)]
    arr = np.frombuffer(b"".join(frames), dtype=np.uint8).reshape(len(frames), -1)
    return PacketBatch.from_array(arr.copy())


def payload_ids(data: bytes | memoryview) -> tuple[int, int]:
    """(flow, seq) from a frame made by :func:`udp_frame`."""
    return struct.unpack_from("!II", data, 42)
