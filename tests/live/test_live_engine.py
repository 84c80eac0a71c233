"""End to end from a real interface: frames sent from a peer namespace over a veth pair,
received by the TPACKET_V3 live source, steered by the engine to CPU workers.

Needs root (namespaces, packet sockets); skips with the reason otherwise."""

from __future__ import annotations

import time

import pytest

from cpumap import CpuMap, make_program, possible_cpus
from cpumap.generator import Generator, read_stamp
from cpumap.live import LiveSource
from cpumap.live.netns import VethPair
from tests.helpers import veth_unavailable

pytestmark = [pytest.mark.slow, pytest.mark.root]
CPUS = sorted(possible_cpus())
_REASON = veth_unavailable("network namespaces and AF_PACKET sockets")
needs_veth = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))


class Seen:
    """Remembers (flow, seq) of every frame its CPU handled."""

    def setup(self, info):
        self.cpu, self.seen = info.cpu, []

    def __call__(self, skb):
        self.seen.append(read_stamp(skb.data))

    def finish(self):
        return self.cpu, self.seen


@needs_veth
@pytest.mark.parametrize("mode", ["l4-hash", "l4-sport"])
def test_live_traffic_reaches_the_workers_whole_and_in_order(mode: str) -> None:
    gen = Generator(
        flows=24, sizes=(96, 300), protocols=("udp", "tcp"), ip_versions=(4, 6), count=3000, seed=5
    )
    sent = list(gen.batches(500))
    total = sum(len(b) for b in sent)
    with VethPair() as pair, CpuMap(max(CPUS) + 1, handler=Seen()) as m:
        for c in CPUS:
            m.update(c, 2048)
        with pair.in_local():
            src = LiveSource(
                pair.local.ifname, block_size=1 << 18, block_count=32, block_timeout_ms=2
            )
        with src, m.producer(make_program(mode, m, CPUS), backpressure=10) as rx:
            with pair.injector() as inj:
                for b in sent:
                    inj.send(b)
            got, deadline = 0, time.monotonic() + 10
            while got < total and time.monotonic() < deadline:
                batch = src.poll_batch(0.1)
                if batch is not None:
                    rx.receive(batch)
                    got += len(batch)
            assert got == total, f"received {got} of {total}"
            assert src.statistics().kernel_drops == 0
        m.wait_idle(30)
        s = m.stats()
        assert s.rx == total == s.delivered and s.in_flight == 0
        assert m.pool.audit().whole
    cpu_of: dict[int, int] = {}
    seen = set()
    for r in m.results:
        cpu, frames = r.result
        last: dict[int, int] = {}
        for flow, seq in frames:
            assert cpu_of.setdefault(flow, cpu) == cpu  # one flow, one CPU
            assert seq > last.get(flow, -1)  # in order
            last[flow] = seq
            seen.add((flow, seq))
    assert len(seen) == total  # exactly once


@needs_veth
def test_cli_live_duration_ends_a_quiet_interface() -> None:
    from rich.console import Console

    from cpumap.cli import main

    with VethPair(local_netns=False) as pair:
        console = Console(record=True, width=200)
        t0 = time.monotonic()
        rc = main(
            ["run", "--iface", pair.local.ifname, "--duration", "0.5", "--quiet"], console=console
        )
        assert rc == 0
        assert time.monotonic() - t0 < 10  # no traffic, yet it ends
        assert "drops when a ring is full" in console.export_text()
