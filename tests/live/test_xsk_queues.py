"""AF_XDP, one RX producer per queue, for real: an :class:`XskQueues` on a veth with two
RX queues, the second queue served by a forked process with a producer of its own.

veth picks the RX queue of an XDP frame sent into it (``veth_xdp_xmit``'s
``veth_select_rxq``) as the sending CPU modulo the receiver's RX queues: the generator
sends once from each CPU, so both queues receive.

Checked: each queue's frames go through its own producer (partition), and the books are
exact over both (sent == rx + the sockets' drops; rx == the sum of the outcomes); a queue
process SIGKILLed costs only what it held (recovered by the supervisor) and the program
is detached at close; a queue the device lacks is refused by name with nothing left.
The pool is whole after every close.  Needs root and two CPUs; skips otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from cpumap import CpuMap
from cpumap.cpus import usable_cpus
from cpumap.generator import Generator
from cpumap.kernel.trafficgen import GenOptions, TrafficGen
from cpumap.live import XskError
from cpumap.live.netns import VethPair
from cpumap.live.xsk_queues import XskQueues
from tests.helpers import CPUMAP_SCRIPT, assert_usage_error, pid_gone, veth_unavailable, wait_for
from tests.helpers import cpumap as run_cpumap
from tests.live.xsk_helpers import CPU, Queues, to_cpu, xdp_attached, xdp_sockets

pytestmark = [pytest.mark.root, pytest.mark.slow]

CPUS = sorted(usable_cpus())[:2]
DEADLINE_S = 30.0

_REASON = veth_unavailable("network namespaces, AF_XDP sockets and XDP programs", bpf=True)
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)
if len(CPUS) < 2:
    pytest.skip("two CPUs are needed to send into both RX queues", allow_module_level=True)


def frames(pair: VethPair) -> list[bytes]:
    gen = Generator(
        flows=4, sizes=(64, 300), seed=1, protocols=("udp",), ip_versions=(4,), count=4,
        dst_mac=pair.local.mac_bytes, src_mac=pair.peer.mac_bytes,
    )  # fmt: skip
    return [p.data for b in gen.batches(64) for p in b]


def send_from_each_cpu(pair: VethPair, data: list[bytes], count: int) -> int:
    """``count`` frames from each CPU (so into each RX queue); frames the veth dropped
    subtracted: what reached the receiver's hook."""
    reached = 0
    with pair.in_peer(), TrafficGen(pair.peer.ifname, data) as tg:
        for cpu in CPUS:
            res = tg.run(GenOptions(count=count, cpu=cpu))
            reached += res.sent - res.drops
    return reached


def receive_until(qs: XskQueues, done: Callable[[], bool]) -> None:
    """Poll the first queue until ``done()``, or fail at the deadline (the others poll
    themselves)."""
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, f"not done in time: {qs.statistics()}"
        qs.poll(0.01)


def open_queues(pair: VethPair, m: CpuMap, rx, **kw) -> XskQueues:
    with pair.in_local():
        return XskQueues(
            rx, pair.local.ifname, twin=lambda: m.producer(to_cpu, backpressure=10.0), **kw
        )


def test_each_queue_has_its_producer_and_the_books_are_exact(two_queue_pair) -> None:
    pair = two_queue_pair
    data = frames(pair)
    with CpuMap(CPU + 1, handler=Queues(), frames=8192, producers=2) as m:
        m.update(CPU, 4096)
        with m.producer(to_cpu, backpressure=10.0) as rx:
            qs = open_queues(pair, m, rx)
            with qs:
                assert qs.queues == (0, 1) and len(qs.pids) == 1 and not qs.zero_copy
                assert xdp_attached(pair) and xdp_sockets(pair) == 2
                reached = send_from_each_cpu(pair, data, 1000)
                receive_until(qs, lambda: qs.statistics().received + qs.drops >= reached)
                qs.stop()
                stats = qs.statistics()
            (pid,) = qs.pids
            assert pid_gone(pid) and qs.deaths == 0
            assert not xdp_attached(pair) and xdp_sockets(pair) == 0
            m.wait_idle(DEADLINE_S)
            s = m.stats()
    by_queue = {q: n for r in m.results for q, n in (r.result or {}).items()}
    per_producer = {p.producer: p.rx for p in s.producers}
    assert reached == 2000 and stats.drops == 0
    assert stats.received + stats.drops == reached == s.rx  # every frame the hook saw
    assert s.rx == sum(s.outcomes().values()) and s.in_flight == 0
    assert by_queue == {0: 1000, 1: 1000}
    # Each queue through its own producer: one partition each.
    assert sorted(per_producer.values()) == [1000, 1000]
    assert m.pool.audit().whole, m.pool.audit()


def test_a_queue_process_killed_costs_what_it_held_and_close_detaches(two_queue_pair) -> None:
    pair = two_queue_pair
    data = frames(pair)
    with CpuMap(CPU + 1, frames=8192, producers=2) as m:
        m.update(CPU, 4096)
        with m.producer(to_cpu, backpressure=10.0) as rx:
            qs = open_queues(pair, m, rx)
            with qs:
                (pid,) = qs.pids
                send_from_each_cpu(pair, data, 500)
                receive_until(qs, lambda: qs.statistics().received >= 1000)
                lent = m.pool.audit().kernel
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: pid_gone(pid), DEADLINE_S, "the queue process to die")
                # The supervisor recovers the dead producer's partition: its lent frames
                # are the pool's again.
                wait_for(
                    lambda: m.stats().producer_deaths == 1 and m.pool.audit().kernel < lent,
                    DEADLINE_S,
                    "the dead producer's partition recovered",
                )
                assert xdp_attached(pair)  # the first queue still receives
            assert qs.deaths == 1
            assert not xdp_attached(pair) and xdp_sockets(pair) == 0
            m.wait_idle(DEADLINE_S)
            s = m.stats()
    assert s.rx == sum(s.outcomes().values()) and s.in_flight == 0
    assert m.pool.audit().whole, m.pool.audit()


def test_a_queue_the_device_lacks_is_refused_and_nothing_is_left(two_queue_pair) -> None:
    pair = two_queue_pair
    with CpuMap(CPU + 1, frames=8192, producers=3) as m, m.producer(to_cpu) as rx:
        with pytest.raises(XskError) as e:
            open_queues(pair, m, rx, queues=(0, 1, 5))
        assert not xdp_attached(pair) and xdp_sockets(pair) == 0
        assert m.pool.audit().kernel == 0
    assert e.value.errno == errno.EINVAL and "queue" in e.value.strerror
    assert m.pool.audit().whole, m.pool.audit()


# --- cpumap run --af-xdp --queues ----------------------------------------------------------------


def test_the_cli_runs_a_producer_per_queue_and_the_books_are_exact(two_queue_pair) -> None:
    pair = two_queue_pair
    data = frames(pair)
    run = subprocess.Popen(
        ["ip", "netns", "exec", pair.local.netns, CPUMAP_SCRIPT, "run", "--iface",
         pair.local.ifname, "--af-xdp",
         "--queues", "0,1", "--duration", "4", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: xdp_attached(pair) or run.poll() is not None, DEADLINE_S, "the attach")
        reached = send_from_each_cpu(pair, data, 5000)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, out + err
    summary = json.loads(out.strip().splitlines()[-1])
    assert not xdp_attached(pair) and xdp_sockets(pair) == 0
    rx = summary["rx"]
    assert summary["accounted"] is True and rx == sum(summary["outcomes"].values())
    assert rx + summary["source_drops"] == reached == 10_000
    assert sorted(p["rx"] for p in summary["counters"]["producers"]) == [5000, 5000]


def test_a_queue_the_device_lacks_is_one_line_and_status_2(two_queue_pair) -> None:
    pair = two_queue_pair
    r = run_cpumap(
        "run", "--iface", pair.local.ifname, "--af-xdp", "--queues", "0,5", "--duration",
        "1", netns=pair.local.netns, timeout=120,
    )  # fmt: skip
    assert_usage_error(r, "queue")
    assert not xdp_attached(pair) and xdp_sockets(pair) == 0


def test_a_queue_that_is_not_a_number_is_refused_by_the_parser() -> None:
    r = run_cpumap("run", "--iface", "lo", "--af-xdp", "--queues", "0,x", timeout=120)
    assert r.returncode == 2 and "argument --queues: 'x' is not an integer" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_signalled_controller_leaves_nothing_on_the_interface(two_queue_pair, sig) -> None:
    """SIGINT: the run stops in order (exit status 130, every frame accounted for).
    SIGKILL: the link dies with the controller, the queue processes with it (PDEATHSIG),
    and their sockets with them."""
    pair = two_queue_pair
    run = subprocess.Popen(
        ["ip", "netns", "exec", pair.local.netns, CPUMAP_SCRIPT, "run", "--iface",
         pair.local.ifname, "--af-xdp",
         "--queues", "all", "--duration", "60", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: xdp_attached(pair) or run.poll() is not None, DEADLINE_S, "the attach")
        wait_for(lambda: xdp_sockets(pair) == 2, DEADLINE_S, "a socket per queue")
        os.kill(run.pid, sig)  # `ip netns exec` execs cpumap: the same pid
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    wait_for(lambda: not xdp_attached(pair) and xdp_sockets(pair) == 0, DEADLINE_S, "nothing left")
    if sig == signal.SIGINT:
        assert run.returncode == 130, out + err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["accounted"] is True and len(summary["counters"]["producers"]) == 2
