"""Sinks: the flow table against a straightforward count, Chain, merge order."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cpumap import CpuMap, FlowHash, PacketBatch, possible_cpus
from cpumap.capture import open_capture, write_capture
from cpumap.demo import demo_capture_path
from cpumap.packets import Packet
from cpumap.sinks import Chain, FlowTable, merge_captures, merge_flow_tables
from cpumap.skb import Skb
from tests.helpers import udp_frame

CPUS = sorted(possible_cpus())


@pytest.mark.slow
def test_flow_table_matches_a_per_frame_count() -> None:
    with open_capture(demo_capture_path()) as r:
        batch = r.read_all()
    expected = Counter()
    for p in batch:
        expected[Skb(p.data, linktype=p.linktype).hash] += 1
    with CpuMap(max(CPUS) + 1, handler=FlowTable()) as m:
        for c in CPUS:
            m.update(c, 1024)
        m.run(batch, FlowHash(m, CPUS))
    flows = merge_flow_tables(m.results)
    assert sorted(f.packets for f in flows) == sorted(expected.values())
    assert sum(f.bytes for f in flows) == int(batch.wire_len.sum())
    assert all(len(f.cpus) == 1 for f in flows)  # one flow, one CPU


@pytest.mark.slow
def test_both_directions_are_one_flow_and_max_flows_bounds_memory() -> None:
    frames = [udp_frame(f, 0) for f in range(5)] + [udp_frame(f, 1, reverse=True) for f in range(5)]
    with CpuMap(max(CPUS) + 1, handler=FlowTable(max_flows=3)) as m:
        m.update(CPUS[0], 64)
        m.run(PacketBatch.from_packets(frames), FlowHash(m, [CPUS[0]]))
    flows = merge_flow_tables(m.results)
    named = [f for f in flows if f.protocol == "UDP"]
    other = [f for f in flows if f.protocol == "other"]
    assert [f.packets for f in named] == [2, 2, 2]  # each direction pair counted together
    assert other[0].packets == 4


@pytest.mark.slow
def test_chain_drops_what_any_handler_drops() -> None:
    class Even:
        batch = True

        def __call__(self, b):
            return (np.arange(len(b)) % 2) == 0

    with CpuMap(max(CPUS) + 1, handler=Chain(FlowTable(), Even())) as m:
        m.update(CPUS[0], 256)
        s = m.run(
            PacketBatch.from_packets([udp_frame(i, 0) for i in range(100)]), FlowHash(m, [CPUS[0]])
        )
    assert s.delivered + s.handler_drop == 100 and s.handler_drop > 0
    assert sum(f.packets for f in merge_flow_tables(m.results)) == 100


def test_merge_is_in_timestamp_order_and_stable(tmp_path) -> None:
    a = [Packet(b"a%d" % i + bytes(60), ts_ns=t) for i, t in enumerate([1, 3, 3, 7])]
    b = [Packet(b"b%d" % i + bytes(60), ts_ns=t) for i, t in enumerate([2, 3, 8])]
    write_capture(tmp_path / "a.pcapng", a)
    write_capture(tmp_path / "b.pcapng", b)
    n = merge_captures([tmp_path / "a.pcapng", tmp_path / "b.pcapng"], tmp_path / "m.pcapng")
    assert n == 7
    with open_capture(tmp_path / "m.pcapng") as r:
        got = [(p.ts_ns, p.data[:2]) for p in r]
    assert got == [
        (1, b"a0"),
        (2, b"b0"),
        (3, b"a1"),
        (3, b"a2"),
        (3, b"b1"),
        (7, b"a3"),
        (8, b"b2"),
    ]
