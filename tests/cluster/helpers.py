"""What the cluster tests share: captures, a local reference run, and the checks that Ray
listened on loopback only and left nothing running."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cpumap import CpuMap
from cpumap.capture import open_capture, write_capture
from cpumap.generator import Generator
from cpumap.programs.steering import make_program
from cpumap.sinks import FlowStats, FlowTable, merge_flow_tables
from tests.helpers import all_pids

OBJECT_STORE = 150 * 1024 * 1024  # per node: small, the machine is shared


def make_captures(directory: Path, files: int, packets: int, *, flows: int = 96) -> list[Path]:
    """``files`` captures of one generator's stream dealt round-robin by batch of 64, so
    every flow appears in every file (what flow affinity across files needs)."""
    gen = Generator(
        flows=flows,
        sizes=(64, 128, 600),
        protocols=("udp", "tcp", "icmp"),
        ip_versions=(4, 6),
        vlan=(None, 100),
        seed=12,
        count=packets * files,
        start_ns=1_764_000_000_000_000_000,
        undersize="clamp",
    )
    parts: list[list[Any]] = [[] for _ in range(files)]
    for i, batch in enumerate(gen.batches(64)):
        parts[i % files].append(batch)
    paths = []
    for k, batches in enumerate(parts):
        p = directory / f"part{k}.pcapng"
        write_capture(p, batches, format="pcapng")
        paths.append(p)
    return paths


def local_flow_table(paths: Sequence[Path], cpus: Sequence[int]) -> list[FlowStats]:
    """The reference: the same captures through a local ``CpuMap`` with a FlowTable."""
    with CpuMap(max(cpus) + 1, handler=FlowTable()) as cmap:
        for cpu in cpus:
            cmap.update(cpu, 2048)
        program = make_program("l4-hash", cmap, list(cpus))
        try:
            for p in paths:
                with open_capture(p) as reader:
                    stats = cmap.run(reader.batches(1024), program)
        finally:
            program.table.close()
        assert stats.in_flight == 0
    return merge_flow_tables(cmap.results)


def by_flow(flows: Sequence[FlowStats]) -> dict[tuple[str, str, str], tuple[int, int]]:
    return {(f.protocol, f.a, f.b): (f.packets, f.bytes) for f in flows}


def entry_of_each_flow(results: Sequence[Any]) -> dict[int, set[str]]:
    """flow hash -> the entries (places) whose FlowTable saw it."""
    seen: dict[int, set[str]] = {}
    for r in results:
        for h in (r.result or {}).get("flows", {}):
            seen.setdefault(h, set()).add(str(r.place))
    return seen


def packets_in(paths: Sequence[Path]) -> int:
    n = 0
    for p in paths:
        with open_capture(p) as reader:
            n += sum(len(b) for b in reader.batches(4096))
    return n


def assert_loopback_only() -> None:
    """Every alive Ray node registered 127.0.0.1, and no socket of a Ray process listens
    on anything but loopback."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert nodes
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}, nodes
    listening = _listening_sockets()
    ours = _socket_inodes(_ray_pids())
    bad = [addr for inode, addr in listening.items() if inode in ours and not _loopback(addr)]
    assert not bad, f"Ray listens beyond loopback: {bad}"


def _loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1"


def _listening_sockets() -> dict[int, str]:
    """inode -> local address of every listening TCP socket (v4 and v6)."""
    out: dict[int, str] = {}
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":  # TCP_LISTEN
                continue
            out[int(f[9])] = _addr(f[1].split(":")[0], v6)
    return out


def _addr(hexaddr: str, v6: bool) -> str:
    raw = bytes.fromhex(hexaddr)
    if not v6:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    b = b"".join(words)
    if b == bytes(15) + b"\x01":
        return "::1"
    if b[:12] == bytes(10) + b"\xff\xff":
        return ".".join(str(x) for x in b[12:])
    return b.hex()


def _socket_inodes(pids: set[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
        except OSError:
            continue
    return inodes


def _descendants(root: int) -> set[int]:
    children: dict[int, set[int]] = {}
    for pid in all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), set()).add(pid)
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _ray_pids() -> set[int]:
    """Ray's processes: this test process's descendants and Ray's by name."""
    return _descendants(os.getpid()) | _ray_named()


@contextmanager
def nothing_left_running(grace: float = 30.0) -> Iterator[None]:
    """Around a module's Ray: afterwards no Ray process that appeared meanwhile may be left
    (Ray's processes are found by their command lines -- raylet, gcs_server, ``ray::``
    workers, Ray's Python services -- since they do not all stay our children)."""
    before = all_pids()
    yield
    deadline = time.monotonic() + grace
    while True:
        left = {p for p in _ray_named() - before if _running(p)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"Ray processes left running: {[(p, _cmd(p)) for p in sorted(left)]}"


def ray_processes() -> set[int]:
    """The running Ray processes, as :func:`nothing_left_running` finds them."""
    return {p for p in _ray_named() if _running(p)}


def _ray_named() -> set[int]:
    out = set()
    for pid in all_pids():
        cmd = _cmd(pid)
        if "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd or "ray/_private" in cmd:
            out.add(pid)
    return out


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def flows_equal(a: Sequence[FlowStats], b: Sequence[FlowStats]) -> None:
    fa, fb = by_flow(a), by_flow(b)
    assert fa.keys() == fb.keys()
    diff = {k: (fa[k], fb[k]) for k in fa if fa[k] != fb[k]}
    assert not diff, f"{len(diff)} flows differ: {list(diff.items())[:3]}"


def total_packets(flows: Sequence[FlowStats]) -> int:
    return int(np.sum([f.packets for f in flows]))
