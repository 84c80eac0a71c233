"""The main job: ``cpumap run big.pcap`` (the default flow table) on a generated capture of
mixed sizes, against ``tshark -q -z conv,ipv4`` and a dpkt flow-count script on the same
file.  Each is a fresh process, timed from start to exit (wall clock), as a user sees it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

from cpumap.capture import write_capture
from cpumap.generator import Generator

SIZES = (64, 128, 256, 576, 1024, 1300)  # mean ~560 bytes: 2 M packets make 1.1 GB

DPKT_SCRIPT = r"""
import sys, collections, dpkt
flows = collections.Counter()
sizes = collections.Counter()
with open(sys.argv[1], "rb") as f:
    for ts, buf in dpkt.pcap.Reader(f):
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
            l4 = ip.data
            sport = getattr(l4, "sport", 0)
            dport = getattr(l4, "dport", 0)
            a, b = (ip.src, sport), (ip.dst, dport)
            key = (min(a, b), max(a, b), ip.p if hasattr(ip, "p") else ip.nxt)
        else:
            key = ("non-ip", eth.type)
        flows[key] += 1
        sizes[key] += len(buf)
print(len(flows), sum(flows.values()))
"""


def make_capture(path: str, count: int, seed: int = 7) -> dict[str, Any]:
    """Write ``count`` mixed packets (IPv4/IPv6, TCP/UDP/ICMP, 4,096 flows, :data:`SIZES`)
    to a pcap at ``path``."""
    gen = Generator(
        flows=4096,
        sizes=SIZES,
        count=count,
        seed=seed,
        undersize="clamp",
        start_ns=1_700_000_000_000_000_000,
    )
    t = time.perf_counter()
    n = write_capture(path, gen.batches(4096), format="pcap")
    return {"packets": n, "bytes": os.path.getsize(path), "seconds": time.perf_counter() - t}


def _timed(cmd: list[str], timeout: float) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {out.returncode}: {out.stderr.strip()[-500:]}")
    return elapsed, out.stdout


def cpumap_run(path: str, timeout: float = 600.0) -> dict[str, Any]:
    """``cpumap run PATH --quiet`` in a fresh interpreter: wall seconds, and the frames/s
    it reports itself (from the first frame in to the last one handled)."""
    elapsed, out = _timed([sys.executable, "-m", "cpumap.cli", "run", path, "--quiet"], timeout)
    own = re.search(r"([\d,]+) frames/s", out)
    return {"seconds": elapsed, "own_fps": float(own.group(1).replace(",", "")) if own else None}


def tshark_missing() -> str | None:
    return None if shutil.which("tshark") else "tshark not found (apt-get install tshark)"


def tshark_conv(path: str, timeout: float = 1800.0) -> float:
    elapsed, _ = _timed(["tshark", "-q", "-z", "conv,ipv4", "-r", path], timeout)
    return elapsed


def dpkt_flows(path: str, timeout: float = 1800.0) -> float:
    elapsed, _ = _timed([sys.executable, "-c", DPKT_SCRIPT, path], timeout)
    return elapsed
