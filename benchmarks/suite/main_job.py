"""The main job: ``cpumap run big.pcap`` (the default flow table) on a generated capture of
mixed sizes, against the C flow meter ``nfpcapd`` (nfdump), ``tshark -q -z conv,ipv4`` and
a dpkt flow-count script on the same file.  Each is a fresh process, timed from start to
exit (wall clock), as a user sees it.

The flow table is checked too (:func:`flow_table_check`): cpumap's, from ``cpumap run FILE
--json --top N`` (every flow), equals the dpkt script's packets and bytes per flow, the
flows named alike (protocol, the two endpoints in cpumap's canonical order).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from cpumap.capture import write_capture
from cpumap.generator import Generator

SIZES = (64, 128, 256, 576, 1024, 1300)  # mean ~560 bytes: 2 M packets make 1.1 GB

# Prints the flow count and the packet count, then (with a second argument) one line per
# flow: protocol number (-1: not IP, then the ethertype), the endpoints' address bytes in
# hex and ports, packets, bytes.
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
if len(sys.argv) > 2:
    for key, n in flows.items():
        if key[0] == "non-ip":
            print(-1, key[1], "-", "-", "-", n, sizes[key])
        else:
            (sa, sp), (da, dp), proto = key
            print(proto, sa.hex(), sp, da.hex(), dp, n, sizes[key])
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


def compile_package() -> bool:
    """Write cpumap's bytecode caches, as ``pip install`` does; True if it compiled all.

    Why: an editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (our test VM's
    environment) compiles every module from source at every start -- ~0.2 s of a run
    that is not the program's (``benchmarks/bench_startup.py``).  The caches go in the
    package's ``__pycache__`` directories, which git ignores."""
    import compileall

    import cpumap

    return bool(compileall.compile_dir(os.path.dirname(cpumap.__file__), quiet=1))


def _timed(cmd: list[str], timeout: float) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {out.returncode}: {out.stderr.strip()[-500:]}")
    return elapsed, out.stdout


def nfpcapd_missing() -> str | None:
    return None if shutil.which("nfpcapd") else "nfpcapd not found (apt-get install nfdump)"


def nfpcapd_flows(path: str, timeout: float = 1800.0) -> float:
    """``nfpcapd -r FILE -w DIR``: nfdump's C flow meter reading the capture and writing
    its flow records (NetFlow-style, one direction a flow) into a fresh directory."""
    with tempfile.TemporaryDirectory(prefix="cpumap-nfpcapd-") as out:
        elapsed, _ = _timed(["nfpcapd", "-r", path, "-w", out], timeout)
    return elapsed


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


def dpkt_flows(path: str, timeout: float = 1800.0, table: dict | None = None) -> float:
    """The dpkt script's wall clock; with ``table``, its flow table is put there."""
    cmd = [sys.executable, "-c", DPKT_SCRIPT, path, *(["--flows"] if table is not None else [])]
    elapsed, out = _timed(cmd, timeout)
    if table is not None:
        table.update(dpkt_table(out))
    return elapsed


Flow = tuple[str, str, str]  # protocol, endpoint a, endpoint b (cpumap's names and order)


def dpkt_table(out: str) -> dict[Flow, tuple[int, int]]:
    """The dpkt script's per-flow lines, named as cpumap's flow table names flows
    (``cpumap.sinks.describe_flow``): packets and bytes per flow."""
    from cpumap.sinks import ETHERTYPE_NAMES, IPPROTO_NAMES

    table: dict[Flow, tuple[int, int]] = {}
    for line in out.splitlines()[1:]:
        proto, sa, sp, da, dp, n, size = line.split()
        if int(proto) < 0:
            ethertype = int(sa)
            flow = (ETHERTYPE_NAMES.get(ethertype, f"ethertype-{ethertype:#06x}"), "-", "-")
        else:
            a, b = _endpoint(sa, int(sp)), _endpoint(da, int(dp))
            name = IPPROTO_NAMES.get(int(proto), f"ip-proto-{proto}")
            flow = (name, *sorted((a, b)))
        packets, size_sum = table.get(flow, (0, 0))
        table[flow] = (packets + int(n), size_sum + int(size))
    return table


def _endpoint(addr_hex: str, port: int) -> str:
    ip = ipaddress.ip_address(bytes.fromhex(addr_hex))
    if not port:
        return str(ip)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def cpumap_table(path: str, timeout: float = 600.0) -> dict[Flow, tuple[int, int]]:
    """cpumap's merged flow table of ``path``: ``cpumap run PATH --json`` listing every flow."""
    cmd = [sys.executable, "-m", "cpumap.cli", "run", path, "--json", "--top", "100000000"]
    _, out = _timed(cmd, timeout)
    summary = json.loads(out.splitlines()[-1])
    table: dict[Flow, tuple[int, int]] = {}
    for f in summary["flows"]:
        flow = (f["protocol"], f["a"], f["b"])
        packets, size_sum = table.get(flow, (0, 0))
        table[flow] = (packets + f["packets"], size_sum + f["bytes"])
    return table


def flow_table_check(ours: dict[Flow, tuple[int, int]], dpkt: dict[Flow, tuple[int, int]]) -> dict:
    """Whether the two flow tables are equal, and where not: flows only one side has,
    flows whose packets or bytes differ (a few examples of each)."""
    only_ours = sorted(set(ours) - set(dpkt))
    only_dpkt = sorted(set(dpkt) - set(ours))
    differ = sorted(f for f in set(ours) & set(dpkt) if ours[f] != dpkt[f])
    return {
        "equal": not (only_ours or only_dpkt or differ),
        "flows": len(ours),
        "dpkt_flows": len(dpkt),
        "packets": sum(p for p, _ in ours.values()),
        "bytes": sum(b for _, b in ours.values()),
        "only_ours": [list(f) for f in only_ours[:5]],
        "only_dpkt": [list(f) for f in only_dpkt[:5]],
        "differ": [[*f, ours[f], dpkt[f]] for f in differ[:5]],
        "mismatches": len(only_ours) + len(only_dpkt) + len(differ),
    }
