"""``cpumap run --iface IF --kernel`` as an operator runs it: the console script in the
interface's namespace (``ip netns exec``), traffic from the other end of the veth by
``TrafficGen``, the JSON summary and the exit status.

The per-CPU counts the run reports must equal the Python form's decisions over the same
frames in the same order (``tests/kernel/python_forms.py``), every frame sent must be
received and have one outcome, and what reached each CPU plus what its full ring dropped
must equal what was redirected there.  After a normal end, SIGINT and SIGKILL the
interface has no XDP program.  Bad input is one line and status 2.  Every wait has a
deadline; no test sleeps.
"""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

import pytest
from rich.console import Console

from cpumap.cli.kernel_view import (
    VERDICT_NAMES,
    KernelSample,
    kernel_interval_record,
    render_kernel_live,
)
from cpumap.kernel import GenOptions, SteeringSpec, TrafficGen, possible_cpus
from cpumap.kernel.tracepoint_counts import CpuTracepointCounts
from cpumap.kernel.xdp import attach, link_state, pass_program
from cpumap.live.netns import VethPair
from tests.helpers import CPUMAP_SCRIPT, assert_usage_error, veth_unavailable, wait_for
from tests.helpers import cpumap as run_cpumap
from tests.kernel.python_forms import PythonForm
from tests.kernel.test_steering_bpf import eth, ipv4, udp
from tests.live.test_cli_af_xdp import gro_on

pytestmark = pytest.mark.slow

TIMEOUT = 60
DEADLINE_S = 20.0
CPUS = sorted(possible_cpus())

_REASON = veth_unavailable("network namespaces and XDP programs", bpf=True)
needs_root = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def cpumap(*argv: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cpumap(*argv, netns=netns, timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--kernel"], "--kernel steers an interface's traffic: add --iface IFACE"),
        (["--iface", "lo", "--kernel", "--af-xdp"], "--kernel and --af-xdp: choose one"),
        (["--iface", "lo", "--kernel", "-p", "flow-hash"], "flow-hash has no eBPF form"),
        (["--iface", "lo", "--kernel", "-p", "json:dumps"], "json:dumps has no eBPF form"),
        (["--iface", "lo", "--kernel", "--handler", "count"], "stretch goal"),
        (["--iface", "lo", "--kernel", "-c", "4095"], "CPU 4095 is not available here"),
        (["--iface", "lo", "--kernel", "--remote-action", "redirect"], "--redirect-device DEV"),
        (["--iface", "lo", "--kernel", "-D", "lo"], "goes with --remote-action redirect"),
        (["--generate", "10", "-D", "lo"], "--redirect-device goes with --kernel"),
        (["--iface", "lo", "--kernel", "--drop-port", "9"], "takes no option drop_ports"),
        (["--iface", "lo", "--kernel", "--rx-cpu", "0"], "--rx-cpu is not for --kernel"),
        (["--iface", "lo", "--kernel", "--write", "out"], "--write is not supported"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv: list[str], words: str) -> None:
    assert_usage_error(cpumap("run", *argv), words)


@needs_root
@pytest.mark.root
def test_no_such_interface_is_one_line_and_status_2() -> None:
    assert_usage_error(cpumap("run", "--iface", "nosuchif0", "--kernel"), "`ip link`")


@needs_root
@pytest.mark.root
def test_an_interface_refusing_native_xdp_is_one_line_naming_the_fix() -> None:
    with VethPair(mtu=9000) as pair:
        r = cpumap(
            "run", "--iface", pair.local.ifname, "--kernel", "--duration", "1", "--quiet",
            netns=pair.local.netns,
        )  # fmt: skip
        assert_usage_error(r, "-m skb")
        assert "mtu 3500" in r.stderr
        with pair.in_local():
            assert not link_state(pair.local.ifname).xdp_attached


@needs_root
@pytest.mark.root
def test_an_interface_with_a_program_already_is_one_line_and_left_as_it_was(
    veth: VethPair,
) -> None:
    with veth.in_peer(), pass_program() as prog:
        link = attach(veth.peer.ifname, prog)
    with link:
        r = cpumap("run", "--iface", veth.peer.ifname, "--kernel", netns=veth.peer.netns)
        assert_usage_error(r, "already has an XDP program")
        assert xdp_prog_id(veth) == link.prog_id  # the program that was there stays


# -- runs with traffic -----------------------------------------------------------------------


def start(pair: VethPair, *argv: str) -> subprocess.Popen[str]:
    """``cpumap run --iface PEER --kernel ARGV`` in the peer's namespace, returned once its
    program is on the peer's XDP hook."""
    cmd = ["ip", "netns", "exec", str(pair.peer.netns), CPUMAP_SCRIPT, "run"]
    cmd += ["--iface", pair.peer.ifname, "--kernel", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def attached() -> bool:
        assert proc.poll() is None, proc.communicate()
        return bool(xdp_prog_id(pair))

    try:
        wait_for(attached, DEADLINE_S)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=TIMEOUT)


def xdp_prog_id(pair: VethPair) -> int:
    with pair.in_peer():
        return link_state(pair.peer.ifname).xdp_prog_id


def send(pair: VethPair, table: list[bytes], count: int) -> int:
    """``count`` frames of ``table`` in turn, from one CPU; the frames the peer got."""
    with pair.in_local():
        gen = TrafficGen(pair.local.ifname, table)
    with gen:
        res = gen.run(GenOptions(count=count, cpu=CPUS[-1]))
    assert res.drops == 0  # the generator's calls come in batches the veth ring holds
    return res.sent


def summary_of(out: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert all(r["type"] == "interval" for r in lines[:-1])
    assert lines[-1]["type"] == "summary"
    return lines[-1]


def assert_books_balance(s: dict[str, Any], sent: int) -> None:
    """Every frame sent was seen and has one outcome; per CPU, delivered + enqueue drops ==
    redirected (the tracepoints are countable here: we are root).  The enqueue tracepoint's
    ``processed`` includes its drops in native mode (one event per flush of a bulk queue),
    not in skb mode (one event per SKB: processed 1, or drops 1)."""
    assert s["rx"] == sent == sum(s["outcomes"].values())
    assert s["tracepoints"] is True and s["accounted"] is True
    skb = s["xdp_mode"] == "skb"
    for e in s["entries"]:
        flushed = e["enqueue_processed"] + (e["enqueue_drops"] if skb else 0)
        assert e["delivered"] + e["enqueue_drops"] == e["redirected"] == flushed
        assert e["kthread_processed"] == e["delivered"]
        assert e["unaccounted"] == 0


@pytest.fixture(scope="module")
def python_form() -> Any:
    form = PythonForm(max(CPUS) + 1)
    yield form
    form.close()


MODES = ["l4-hash", "l4-filter", "round-robin"]


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
def test_per_cpu_counts_equal_the_python_forms_decisions(
    veth: VethPair, python_form: PythonForm, mode: str
) -> None:
    from tests.kernel.test_redirect_cpu import ROUNDS, expected_counts, frames

    table = frames()
    redirected, verdicts = expected_counts(python_form, SteeringSpec.of(mode, CPUS), table)
    proc = start(veth, "-p", mode, "--remote-action", "drop", "--duration", "4", "--json")
    try:
        sent = send(veth, table, len(table) * ROUNDS)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        stop(proc)
    assert proc.returncode == 0, out + err
    assert xdp_prog_id(veth) == 0  # detached at the end
    s = summary_of(out)
    assert {e["cpu"]: e["redirected"] for e in s["entries"] if e["redirected"]} == redirected
    names = {VERDICT_NAMES[v]: n for v, n in verdicts.items()}
    assert {k: n for k, n in s["outcomes"].items() if n and k != "redirected"} == names
    assert s["rx_cpus"] == [{"cpu": CPUS[-1], "rx": sent}]  # all on the sending CPU
    assert_books_balance(s, sent)
    for e in s["entries"]:  # the second stage dropped every frame that reached it
        assert e["xdp_drop"] == e["delivered"] and e["xdp_pass"] == e["xdp_redirect"] == 0


@needs_root
@pytest.mark.root
def test_sigint_detaches_drains_and_summarises(veth: VethPair) -> None:
    proc = start(veth, "--remote-action", "pass", "--json", "-i", "0.2")
    try:
        table = [bytes(64)[:12] + b"\x08\x00" + bytes(50)]  # an IPv4 type, zero header
        sent = send(veth, table, 5000)
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the view runs: a record per interval
        assert first["type"] == "interval"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        stop(proc)
    assert proc.returncode == 130, out + err
    s = summary_of(out)
    assert s["stopped_by"] == "SIGINT" and s["exit_status"] == 130
    assert_books_balance(s, sent)
    for e in s["entries"]:  # the second stage passed every frame that reached it
        assert e["xdp_pass"] == e["delivered"] and e["xdp_drop"] == e["xdp_redirect"] == 0
    assert xdp_prog_id(veth) == 0


@needs_root
@pytest.mark.root
def test_remote_redirect_out_of_a_device(veth: VethPair) -> None:
    """``--remote-action redirect -D PEER``: each CPU's second stage sends the frames back
    out of the peer; the kthread counts every one as redirected.  (The local end needs
    NAPI to take them -- a program of its own: without one the kernel refuses each
    redirect, and the kthread row says ``drop``, as xdp-bench's would.)"""
    table = [eth(0x0800) + ipv4(17, udp(port, 7)) + bytes(18) for port in range(32)]
    argv = ("--remote-action", "redirect", "-D", veth.peer.ifname, "--duration", "3")
    with veth.in_local(), pass_program() as prog:
        link = attach(veth.local.ifname, prog)
    with link:
        proc = start(veth, *argv, "--json")
        try:
            sent = send(veth, table, 4000)
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            stop(proc)
    assert proc.returncode == 0, out + err
    s = summary_of(out)
    assert s["remote_action"] == "redirect" and s["redirect_device"] == veth.peer.ifname
    assert_books_balance(s, sent)
    assert sum(e["xdp_redirect"] for e in s["entries"]) == sum(e["delivered"] for e in s["entries"])


@needs_root
@pytest.mark.root
def test_skb_mode_end_to_end(veth: VethPair) -> None:
    """``-m skb``: generic XDP on the peer (GRO on gives it NAPI, so that the generator's
    frames arrive); every UDP frame sent is seen once and balanced."""
    with veth.in_peer():
        gro_on(veth.peer.ifname)
    table = [eth(0x0800) + ipv4(17, udp(port, 7)) + bytes(18) for port in range(32)]
    proc = start(veth, "-m", "skb", "--remote-action", "drop", "--duration", "3", "--json")
    try:
        sent = send(veth, table, 4000)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        stop(proc)
    assert proc.returncode == 0, out + err
    s = summary_of(out)
    assert s["xdp_mode"] == "skb" and s["source"].endswith("(kernel cpumap, skb XDP)")
    assert_books_balance(s, sent)
    assert xdp_prog_id(veth) == 0


@needs_root
@pytest.mark.root
def test_sigkill_leaves_nothing_attached(veth: VethPair) -> None:
    proc = start(veth, "--quiet")
    try:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: xdp_prog_id(veth) == 0, DEADLINE_S)


# -- the live view, from fixed samples ----------------------------------------------------------


def test_the_live_view_shows_xdp_bench_rows_and_na_without_tracepoints() -> None:
    tp = {0: CpuTracepointCounts(0, 800, 100, 100, 700, 0, 5, 90, 0, 700, 0)}
    before = KernelSample(1.0, {1: 0}, {0: 0}, {}, {0: 0}, {0: CpuTracepointCounts(0)})
    after = KernelSample(2.0, {1: 1000}, {0: 800}, {1: 200}, {0: 700}, tp)
    rec = kernel_interval_record(before, after, (0,))
    assert rec["rx_pps"] == 1000 and rec["outcomes_per_s"]["xdp_drop"] == 200
    (e,) = rec["entries"]
    assert (e["enqueue_pps"], e["enqueue_drop_pps"], e["bulk_avg"]) == (800, 100, 8.0)
    assert (e["kthread_pps"], e["sched_per_s"], e["drop_pps"]) == (700, 5, 700)
    console = Console(record=True, width=100)
    console.print(render_kernel_live(rec, extended=True, title="cpumap --kernel"))
    text = console.export_text()
    for row in ("receive total", "rx on cpu 1", "enqueue to cpu 0", "kthread cpu 0"):
        assert row in text
    assert "8.00" in text and "drop 700" in text

    bare = KernelSample(2.0, {1: 1000}, {0: 800}, {}, {0: 700}, None)
    rec = kernel_interval_record(None, bare, (0,))
    assert rec["entries"][0]["kthread_pps"] == 350  # the second stage's count, over 2 s
    assert rec["entries"][0]["enqueue_pps"] is None
    console = Console(record=True, width=100)
    console.print(render_kernel_live(rec, title="cpumap --kernel"))
    text = console.export_text()
    assert "n/a" in text and "cannot be counted here" in text
