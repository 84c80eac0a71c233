"""What many tests share: frame builders, handlers that gate or collect, waiting with a
deadline, and the leak check.  Test modules import from here, never from each other."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from cpumap import CpuMap, MapStats, PacketBatch
from cpumap.engine.ring import RING_HEADER_BYTES, Ring
from cpumap.kernel import bpf_unavailable_reason
from cpumap.live.netns import NetnsError, VethPair, sweep_stale
from cpumap.shm import Layout

T = TypeVar("T")

MEMFD_MARK = "memfd:cpumap-"  # how the project's segments appear in /proc/<pid>/maps


# -- frames -------------------------------------------------------------------------------
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


def make_ring(capacity: int, slots: int = 64) -> tuple[object, Ring, np.ndarray]:
    """A ring of ``capacity`` in a segment of its own: (segment, ring, hand buffer)."""
    layout = Layout("test-ring")
    layout.add("hdr", np.uint8, RING_HEADER_BYTES)
    layout.add("slots", np.uint32, slots)
    layout.add("hand", np.uint32, slots)
    seg = layout.create()
    ring = Ring(seg.address("hdr"), seg.view("slots"))
    ring.init(capacity)
    return seg, ring, seg.view("hand")


# -- handlers -----------------------------------------------------------------------------
class Gate:
    """A handler that blocks inside its first call until the test opens the gate."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def __call__(self, skb):
        if self.r is not None:  # in the worker: its copy of the gate
            os.read(self.r, 1)
            self.r = None

    def open(self) -> None:
        os.write(self.w, b"x")

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class Collect:
    """A per-skb handler that remembers (flow, seq, cpu) of what it saw."""

    def setup(self, info):
        self.cpu = info.cpu
        self.seen = []

    def __call__(self, skb):
        self.seen.append((*payload_ids(skb.data), self.cpu))

    def finish(self):
        return self.seen


# -- waiting and checking -----------------------------------------------------------------
def veth_unavailable(
    needs: str, *, bpf: bool = False, also: Callable[[VethPair], object] | None = None
) -> str | None:
    """Why the tests of a veth pair in fresh network namespaces cannot run here (None: they
    can): not root (``needs`` says what for), no bpf(2) (``bpf``), or the pair -- and
    ``also``, a check run with it -- cannot be made.  Leftovers of killed runs are swept
    first."""
    if os.geteuid() != 0:
        return f"needs root: {needs}"
    if bpf and (reason := bpf_unavailable_reason()) is not None:
        return reason
    try:
        sweep_stale()
        with VethPair() as pair:
            if also is not None:
                also(pair)
    except (NetnsError, OSError) as e:
        return f"cannot make a veth pair in a network namespace here ({needs}): {e}"
    return None


def wait_for(cond: Callable[[], T | None], timeout: float = 10.0, what: str = "") -> T:
    """Poll ``cond`` until it gives a true value, and return that value; fail the test
    after ``timeout`` seconds (saying ``what`` was awaited)."""
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"not in {timeout:g} s: {what or 'condition'}"
        time.sleep(0.001)
    return got


def assert_balanced(m: CpuMap) -> MapStats:
    """The identity, exactly, at a quiescent point; and the pool is whole."""
    m.wait_idle(30)
    s = m.stats()
    assert s.in_flight == 0, s.outcomes()
    assert s.rx == sum(s.outcomes().values())
    audit = m.pool.audit()
    assert audit.whole, audit
    return s


def pid_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped before the open, or the read
        return True


def stays_alive(proc, seconds: float = 1.0) -> bool:
    """True if ``proc`` (anything with ``is_alive()``) lives for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not proc.is_alive():
            return False
        time.sleep(0.01)
    return True


def worker_pids(m: CpuMap) -> list[int]:
    """The pids of ``m``'s workers, from its public stats."""
    return [e.pid for e in m.stats().entries if e.pid]


# -- the leak check -----------------------------------------------------------------------
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def all_pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The fields after the parenthesised command (which may hold spaces).
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def live_children(pid: int, among: set[int] | None = None) -> set[int]:
    """The children of ``pid`` (of those ``among``, else of all processes) that have not
    exited (zombies excluded)."""
    out = set()
    for p in all_pids() if among is None else among:
        fields = _stat_fields(p)
        if fields and int(fields[1]) == pid and fields[0] != "Z":
            out.add(p)
    return out


def memfd_holders(pids: set[int] | list[int]) -> set[int]:
    """Those of ``pids`` that map one of the project's memfd segments."""
    holders = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if MEMFD_MARK in f.read():
                    holders.add(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return holders


@dataclass
class Leaks:
    """What a test left behind: child processes still running, and processes it started
    (children or not: an orphan is re-parented away) that still map a segment."""

    children: set[int]
    holders: set[int]

    def __bool__(self) -> bool:
        return bool(self.children or self.holders)

    def __str__(self) -> str:
        return (
            f"child processes left behind: {sorted(self.children)}; "
            f"processes still mapping a {MEMFD_MARK} segment: {sorted(self.holders)}"
        )


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (``PR_SET_CHILD_SUBREAPER``).

    Why: an orphan -- a worker whose controller was killed, a grandchild whose parent
    exited -- is re-parented to the nearest subreaper instead of init, so it stays our
    descendant and the leak check can look at our own process tree only, not at every new
    process on the machine (another test session, a ``cpumap run`` beside us)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def descendants(pid: int, among: set[int]) -> set[int]:
    """Those of ``among`` below ``pid`` in the process tree."""
    parent = {}
    for p in among:
        fields = _stat_fields(p)
        if fields:
            parent[p] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


class LeakCheck:
    """Snapshot the processes before a test; :meth:`leaks` says what it left behind.

    Only this process's descendants are looked at: with :func:`become_subreaper` (the
    conftest calls it) orphans stay descendants, so nothing of ours escapes the check and
    nothing of anyone else's is blamed on the test."""

    def __init__(self) -> None:
        self.me = os.getpid()
        self.pids = all_pids()

    def leaks(self, grace: float) -> Leaks:
        """What is left, after waiting up to ``grace`` seconds for it to go (processes
        being reaped, a worker's watchdog thread finishing).  Only processes that did not
        exist at the snapshot are looked at: what the test started."""
        deadline = time.monotonic() + grace
        while True:
            now = all_pids()
            started = descendants(self.me, now) & (now - self.pids)
            found = Leaks(live_children(self.me, started), memfd_holders(started))
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.01)


CPUMAP_SCRIPT = str(Path(sys.executable).with_name("cpumap"))  # the venv's console script


def cpumap(
    *argv: str, netns: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``cpumap ARGV`` as a user runs it (in network namespace ``netns``), its output."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        [*prefix, CPUMAP_SCRIPT, *argv], capture_output=True, text=True, timeout=timeout
    )


def assert_usage_error(r: subprocess.CompletedProcess[str], words: str) -> None:
    """A usage error as the CLI promises it: status 2, one line on stderr holding
    ``words``, no traceback."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr
