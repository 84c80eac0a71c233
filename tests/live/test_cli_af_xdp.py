"""``cpumap run --iface IF --af-xdp`` as an operator runs it: the console script in the
interface's namespace (``ip netns exec``), traffic from the peer by the kernel's live test
runs, the JSON summary and the exit status; bad input is one line and status 2.  Needs
root for the runs; skips them otherwise.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import socket
import struct
import subprocess
import threading

import pytest

from cpumap.generator import Generator
from cpumap.kernel.trafficgen import GenOptions, GenResult, TrafficGen
from cpumap.kernel.xdp import link_state
from cpumap.live.netns import VethPair
from tests.helpers import assert_usage_error, veth_unavailable
from tests.helpers import cpumap as run_cpumap

pytestmark = pytest.mark.slow

TIMEOUT = 120

_REASON = veth_unavailable("network namespaces, AF_XDP sockets and XDP programs", bpf=True)
needs_root = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def cpumap(*argv: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cpumap(*argv, netns=netns, timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--af-xdp"], "--af-xdp receives from an interface: add --iface IFACE"),
        (["--generate", "10", "-m", "skb"], "-m/--xdp-mode goes with --af-xdp or --kernel"),
        (["--generate", "10", "--queue", "1"], "--queue goes with --af-xdp"),
        (["--iface", "lo", "--af-xdp", "--promisc"], "ip link set IFACE promisc on"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv: list[str], words: str) -> None:
    assert_usage_error(cpumap("run", *argv), words)


@needs_root
@pytest.mark.root
def test_no_such_interface_is_one_line_and_status_2() -> None:
    assert_usage_error(cpumap("run", "--iface", "nosuchif0", "--af-xdp"), "`ip link`")


@needs_root
@pytest.mark.root
def test_an_mtu_native_xdp_refuses_is_one_line_naming_the_fix_and_status_2() -> None:
    with VethPair(mtu=9000) as pair:
        r = cpumap(
            "run", "--iface", pair.local.ifname, "--af-xdp", "--duration", "1", "--quiet",
            netns=pair.local.netns,
        )  # fmt: skip
        assert r.returncode == 2, r.stdout + r.stderr
        assert "mtu 3500" in r.stderr and "-m skb" in r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        with pair.in_local():
            assert not link_state(pair.local.ifname).xdp_attached


def gro_on(ifname: str) -> None:
    """``ethtool -K IF gro on`` (ETHTOOL_SGRO by ioctl), in the calling thread's namespace."""
    value = (ctypes.c_uint32 * 2)(0x2C, 1)  # struct ethtool_value {cmd, data}
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8946, ifreq)  # SIOCETHTOOL


def _sender(pair: VethPair, stop: threading.Event, box: list[GenResult]) -> threading.Thread:
    """Frames from the peer at a steady rate until ``stop``."""
    gen = Generator(
        flows=64, sizes=(64, 300), seed=3, count=64, protocols=("udp",), ip_versions=(4,),
        dst_mac=pair.local.mac_bytes, src_mac=pair.peer.mac_bytes,
    )  # fmt: skip
    frames = [p.data for b in gen.batches(64) for p in b]
    with pair.in_peer():
        tg = TrafficGen(pair.peer.ifname, frames)

    def send() -> None:
        with tg:
            box.append(tg.run(GenOptions(rate=200_000), stop))

    return threading.Thread(target=send)


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("mode", ["native", "skb"])
def test_a_run_end_to_end_in_json(mode: str) -> None:
    with VethPair() as pair:
        if mode == "skb":  # generic XDP gives the local end no NAPI: GRO does
            with pair.in_local():
                gro_on(pair.local.ifname)
        stop, box = threading.Event(), []
        sender = _sender(pair, stop, box)
        sender.start()
        try:
            r = cpumap(
                "run", "--iface", pair.local.ifname, "--af-xdp", "-m", mode,
                "--duration", "2", "--json", netns=pair.local.netns,
            )  # fmt: skip
        finally:
            stop.set()
            sender.join()
        assert r.returncode == 0, r.stdout + r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        with pair.in_local():
            assert not link_state(pair.local.ifname).xdp_attached  # detached at the end
    assert summary["type"] == "summary" and summary["accounted"] is True
    # veth has no AF_XDP zero-copy: the sockets fell back to copy mode, and say so
    assert summary["source"] == f"interface {pair.local.ifname} (AF_XDP, {mode} XDP, copy mode)"
    assert summary["rx"] > 0 and summary["rx"] == sum(summary["outcomes"].values())
    assert isinstance(summary["source_drops"], int)
    # --af-xdp's own default ring (args.AF_XDP_QSIZE): its polls hand the map bursts
    assert {e["qsize"] for e in summary["entries"]} == {8192}
    assert summary["rx"] + summary["source_drops"] <= box[0].sent


@needs_root
@pytest.mark.root
def test_the_text_summary_names_the_af_xdp_drop_counters() -> None:
    with VethPair() as pair:
        stop, box = threading.Event(), []
        sender = _sender(pair, stop, box)
        sender.start()
        try:
            r = cpumap(
                "run", "--iface", pair.local.ifname, "--af-xdp", "--duration", "1", "--quiet",
                netns=pair.local.netns,
            )  # fmt: skip
        finally:
            stop.set()
            sender.join()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "AF_XDP socket drops (kernel, rx_dropped + rx_ring_full)" in r.stdout
    assert "tp_drops" not in r.stdout  # TPACKET_V3's counter is not this source's
