"""``cpumap gen`` from the command line: frames into a veth peer that counts them, the
warning for a peer without NAPI, a stop by SIGINT, and bad input (one line, status 2).

Bad arguments that need no kernel run everywhere; the rest needs root and skips with the
reason otherwise.  Each command runs as a subprocess with a timeout; the SIGINT test waits
for the first frames with a deadline.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cpumap.abi import XDP_DROP
from cpumap.capture import write_capture
from cpumap.kernel import KernelArrayMap, udp_frame
from cpumap.kernel.xdp import XdpLink, attach, counting_program
from cpumap.live.netns import VethPair
from tests.helpers import veth_unavailable, wait_for

pytestmark = pytest.mark.slow
CPUMAP = str(Path(sys.executable).with_name("cpumap"))
TIMEOUT_S = 60


# Root without a capability, as the kernel sees an unprivileged user (the interpreter may
# live where another uid cannot read it): util-linux's setpriv, with no bounding set.
NO_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"]


def gen(*argv: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, CPUMAP, "gen", *argv], capture_output=True, text=True, timeout=TIMEOUT_S
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--iface", "x", "--rate", "0"], "argument --rate: 0 must be > 0"),
        (["--iface", "x", "--rate", "fast"], "argument --rate: 'fast' is not a number"),
        (["--iface", "x", "--count", "0"], "argument --count: 0 must be > 0"),
        (["--iface", "x", "--cpu", "9999"], "--cpu 9999 is not available here; use one of"),
        (["--count", "1"], "the following arguments are required: --iface"),
        (["--iface", "x", "--dst-mac", "zz"], "--dst-mac zz: not a MAC address like 02:00:00"),
        (["--iface", "x", "--size", "20"], "--size 20: a generated UDP/IPv4 frame takes at least"),
        (["--iface", "x", "--flows", "70000"], "--flows 70000: at most 65536"),
        (["--iface", "x", "--capture", "/nonexistent.pcap"], "--capture /nonexistent.pcap: no"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(argv: list[str], message: str) -> None:
    r = gen(*argv)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"cpumap gen: error: {message}")
    assert r.stderr.count("\n") == 1


_REASON = veth_unavailable("network namespaces and bpf(2)", bpf=True)
needs_root = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def counting_peer(pair: VethPair, counter: KernelArrayMap) -> XdpLink:
    with counting_program(counter, XDP_DROP) as prog, pair.in_peer():
        return attach(pair.peer.ifname, prog)


def local_args(pair: VethPair) -> list[str]:
    return ["--netns", str(pair.local.netns), "--iface", pair.local.ifname]


@needs_root
@pytest.mark.root
def test_gen_sends_n_frames_and_the_peer_counts_n_minus_the_drops(veth: VethPair) -> None:
    n = 1_500_000
    counter = KernelArrayMap(1, percpu=True)
    with counter, counting_peer(veth, counter):
        r = gen(*local_args(veth), "--count", str(n), "--flows", "8", "--json")
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""  # the peer has NAPI: no warning
        out = json.loads(r.stdout)
        assert out["type"] == "summary" and out["exit_status"] == 0
        assert (out["sent"], out["calls"], out["cycle_frames"]) == (n, 2, 8)
        assert out["warnings"] == [] and out["stopped_by"] is None
        wait_for(lambda: counter.lookup(0) >= n - out["drops"], 10)
        assert counter.lookup(0) == n - out["drops"]


@needs_root
@pytest.mark.root
def test_gen_sends_a_captures_frames_in_turn(veth: VethPair, tmp_path: Path) -> None:
    frames = [udp_frame(size, dst_mac=veth.peer.mac_bytes) for size in (64, 1000, 200)]
    path = tmp_path / "three.pcapng"
    write_capture(path, frames)
    counter = KernelArrayMap(1, percpu=True)
    with counter, counting_peer(veth, counter):
        r = gen(*local_args(veth), "--capture", str(path), "--count", "9000", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert (out["sent"], out["cycle_frames"]) == (9000, 3)
        wait_for(lambda: counter.lookup(0) >= 9000 - out["drops"], 10)
        assert counter.lookup(0) == 9000 - out["drops"]


@needs_root
@pytest.mark.root
def test_gen_warns_in_one_line_when_the_peer_has_no_napi(veth: VethPair) -> None:
    r = gen(*local_args(veth), "--count", "1000")
    assert r.returncode == 0
    (warning,) = r.stderr.splitlines()
    assert warning.startswith(f"cpumap gen: warning: {veth.peer.ifname} (the peer of ")
    assert (
        "has no NAPI (no native XDP program, GRO off), so it drops every frame silently" in warning
    )
    summary = r.stdout.strip()
    assert summary.startswith(f"cpumap gen: 1,000 frames out of {veth.local.ifname} in ")
    assert summary.endswith(f"drops seen: 0 ({veth.local.ifname} tx_dropped); 1 frame in turn")


@needs_root
@pytest.mark.root
def test_sigint_stops_gen_with_its_summary_and_status_130(veth: VethPair) -> None:
    counter = KernelArrayMap(1, percpu=True)
    with counter, counting_peer(veth, counter):
        argv = [CPUMAP, "gen", *local_args(veth), "--frames-per-call", "100000", "--json"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: counter.lookup(0) > 0, TIMEOUT_S)  # it is sending
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["stopped_by"] == "SIGINT" and summary["exit_status"] == 130
    assert summary["sent"] > 0 and summary["sent"] % 100_000 == 0


@needs_root
@pytest.mark.root
def test_no_such_interface_or_namespace_is_one_line_and_status_2(veth: VethPair) -> None:
    r = gen("--iface", veth.local.ifname, "--count", "1")  # not in this namespace
    assert r.returncode == 2
    assert r.stderr == (
        f"cpumap gen: error: --iface {veth.local.ifname}: no such interface in this network "
        "namespace (`ip link`; --netns NS)\n"
    )
    r = gen("--netns", "cpumap-no-such-ns", "--iface", "x", "--count", "1")
    assert r.returncode == 2
    assert r.stderr == (
        "cpumap gen: error: --netns cpumap-no-such-ns: no network namespace named "
        "'cpumap-no-such-ns' (see `ip netns list`)\n"
    )


@needs_root
@pytest.mark.root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv")
def test_without_privilege_gen_says_it_needs_root(veth: VethPair) -> None:
    r = gen("--iface", "lo", "--count", "1", prefix=NO_CAPABILITIES)
    assert r.returncode == 2
    assert r.stderr == (
        "cpumap gen: error: sending by live test runs needs root (CAP_BPF and CAP_NET_ADMIN)\n"
    )
    r = gen(*local_args(veth), "--count", "1", prefix=NO_CAPABILITIES)
    assert r.returncode == 2
    assert r.stderr == (
        f"cpumap gen: error: --netns {veth.local.netns}: entering a network namespace needs root\n"
    )
