"""``CpumapTracepointCounts``: the cpumap tracepoints summed in the kernel must equal the
same tracepoints read event by event through tracefs (``TraceInstance``), per CPU, field
by field; only our cpumap's events count; closing detaches the programs.

Traffic: ``KernelSteering`` on one end of a veth pair, ``TrafficGen`` from the other, a
small ring so that the enqueue drops are there to be counted.
"""

from __future__ import annotations

from collections import Counter

import pytest

from cpumap.kernel import (
    GenOptions,
    SteeringSpec,
    TraceInstance,
    TrafficGen,
    possible_cpus,
    tracing_unavailable_reason,
)
from cpumap.kernel.redirect_cpu import KernelSteering
from cpumap.kernel.tracepoint_counts import CpumapTracepointCounts
from cpumap.live.netns import VethPair
from tests.helpers import veth_unavailable, wait_for
from tests.kernel.test_steering_bpf import eth, ipv4, udp

_REASON = veth_unavailable("network namespaces and bpf(2)", bpf=True)
_TRACE = tracing_unavailable_reason() if _REASON is None else _REASON
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    pytest.mark.skipif(_TRACE is not None, reason=_TRACE or ""),
]

CPUS = sorted(possible_cpus())
FRAMES = 20_000


def per_cpu_sums(events: list) -> dict[int, Counter[str]]:
    """The tracefs events summed as the BPF programs sum them."""
    out: dict[int, Counter[str]] = {c: Counter() for c in CPUS}
    for e in events:
        f = e.fields
        if e.name == "xdp_cpumap_enqueue":
            c = out[int(f["to_cpu"])]
            c["enqueue_processed"] += int(f["processed"])
            c["enqueue_drops"] += int(f["drops"])
            c["enqueue_flushes"] += 1
        else:
            c = out[e.cpu]
            c["kthread_processed"] += int(f["processed"])
            c["kthread_drops"] += int(f["drops"])
            c["kthread_sched"] += int(f["sched"])
            c["kthread_batches"] += 1
            for k in ("xdp_pass", "xdp_drop", "xdp_redirect"):
                c[k] += int(f[k])
    return out


def test_the_kernel_sums_equal_the_events_read_through_tracefs(veth: VethPair) -> None:
    table = [eth(0x0800) + ipv4(17, udp(port, 7)) + bytes(18) for port in range(64)]
    spec = SteeringSpec.of("l4-sport", CPUS)
    with veth.in_peer():
        ks = KernelSteering(
            veth.peer.ifname, spec, qsize=64, remote_action="drop", tracepoints=True
        )
    with veth.in_local():
        gen = TrafficGen(veth.local.ifname, table)
    with ks, gen, TraceInstance(filter=f"map_id == {ks.cpumap.map_id}") as tr:
        assert ks.tracepoints is not None and ks.tracepoints_refused is None
        # The small ring overflows when the kthread falls behind the generator -- nearly
        # always, but it is the scheduler's call: send again (bounded) until it has, so
        # that the drop fields are compared with drops in them.
        sent = 0
        for _ in range(8):
            sent += gen.run(GenOptions(count=FRAMES, cpu=CPUS[0])).sent
            if sum(g.enqueue_drops for g in ks.tracepoints.read(CPUS).values()):
                break
        redirected = ks.counts().redirected
        events: list = []

        def settled() -> bool:
            events.extend(tr.drain())
            delivered = ks.delivered()
            got = ks.tracepoints.read(CPUS)  # type: ignore[union-attr]
            return all(
                delivered.get(c, 0) + got[c].enqueue_drops == redirected.get(c, 0) for c in CPUS
            ) and sum(e.name == "xdp_cpumap_kthread" for e in events) == sum(
                got[c].kthread_batches for c in CPUS
            )

        wait_for(settled, 10.0)
        assert tr.lost_events() == 0
        got = ks.tracepoints.read(CPUS)  # type: ignore[union-attr]
    want = per_cpu_sums(events)
    assert sum(redirected.values()) == sent
    assert sum(g.enqueue_drops for g in got.values()) > 0  # the small ring overflowed
    for cpu in CPUS:
        g = got[cpu]
        for name, n in want[cpu].items():
            assert getattr(g, name) == n, (cpu, name)
        assert g.enqueue_processed == redirected.get(cpu, 0)
        assert g.xdp_drop == g.kthread_processed and g.xdp_pass == g.xdp_redirect == 0


def test_only_our_cpumaps_events_count(veth: VethPair) -> None:
    """Two steerings at once on the two ends: each counts its own map's events only."""
    table = [eth(0x0800) + ipv4(17, udp(port, 7)) + bytes(18) for port in range(8)]
    spec = SteeringSpec.of("no-touch", [CPUS[-1]])
    with veth.in_peer():
        ours = KernelSteering(veth.peer.ifname, spec, remote_action="drop", tracepoints=True)
    with ours:
        assert ours.tracepoints is not None
        other = CpumapTracepointCounts(ours.cpumap.map_id + 10_000, ours.cpumap.max_entries)
        with veth.in_local(), TrafficGen(veth.local.ifname, table) as gen, other:
            sent = gen.run(GenOptions(count=1000, cpu=CPUS[0])).sent
            wait_for(lambda: ours.tracepoints.read(CPUS)[CPUS[-1]].enqueue_processed == sent)  # type: ignore[union-attr]
            assert all(c.enqueue_processed == 0 for c in other.read(CPUS).values())
        other.close()  # idempotent (the with closed it already)


def test_a_cpu_past_the_map_is_refused() -> None:
    words = r"CPU 2 is not a key of the cpumap \(0..1\)"
    with CpumapTracepointCounts(1, 2) as counts, pytest.raises(ValueError, match=words):
        counts.read([2])
