"""The vectorized built-in handlers, called directly on batches (no processes): FlowTable
equals a per-frame count by flow hash over many batches, new flows are admitted in hash
order up to max_flows, Count counts, and merge_flow_tables joins reports."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cpumap.generator import Generator
from cpumap.programs.contract import WorkerInfo
from cpumap.sinks import Count, FlowStats, FlowTable, describe_flow, merge_flow_tables
from cpumap.skb import SkbBatch


def batches(n: int, size: int, flows: int = 300, seed: int = 5) -> list[SkbBatch]:
    gen = Generator(flows=flows, sizes=(64, 200, 700), seed=seed, undersize="clamp", count=n)
    out = []
    for pb in gen.batches(size):
        width = int(pb.caplen.max())
        rows = np.zeros((len(pb), width), dtype=np.uint8)
        for i, (s, c) in enumerate(zip(pb.start.tolist(), pb.caplen.tolist(), strict=True)):
            rows[i, :c] = pb.buf[s : s + c]
        out.append(SkbBatch(rows, 0, pb.caplen.astype(np.int64), wire_len=pb.wire_len + 4))
    return out


def info(cpu: int) -> WorkerInfo:
    return WorkerInfo(map_id=1, key=cpu, cpu=cpu, qsize=64, slot=0, generation=1, pinned=True)


def reference(bs: list[SkbBatch]) -> tuple[Counter[int], Counter[int], dict[int, tuple]]:
    packets: Counter[int] = Counter()
    nbytes: Counter[int] = Counter()
    first: dict[int, tuple] = {}
    for b in bs:
        for i in range(len(b)):
            skb = b.skb(i)
            packets[skb.hash] += 1
            nbytes[skb.hash] += skb.wire_len
            first.setdefault(skb.hash, describe_flow(skb))
    return packets, nbytes, first


@pytest.mark.parametrize("size", [1, 7, 256])
def test_flow_table_equals_a_per_frame_count(size: int) -> None:
    bs = batches(1500, size)
    table = FlowTable()
    table.setup(info(3))
    for b in bs:
        table(b)
    packets, nbytes, first = reference(bs)
    flows = table.finish()["flows"]
    assert table.finish()["cpu"] == 3
    assert {h: f.packets for h, f in flows.items()} == dict(packets)
    assert {h: f.bytes for h, f in flows.items()} == dict(nbytes)
    assert {h: (f.protocol, f.a, f.b) for h, f in flows.items()} == first
    assert all(f.cpus == {3} for f in flows.values())


def test_flow_table_admits_the_lowest_new_hashes_up_to_max_flows() -> None:
    bs = batches(900, 300)
    table = FlowTable(max_flows=50)
    table.setup(info(0))
    for b in bs:
        table(b)
    packets, nbytes, _ = reference(bs)
    flows = table.finish()["flows"]
    other = flows.pop(-1)
    assert len(flows) == 50
    first_batch = sorted(set(bs[0].hash.tolist()))
    assert sorted(flows) == first_batch[:50]  # the first batch fills the table, in hash order
    assert {h: f.packets for h, f in flows.items()} == {h: packets[h] for h in flows}
    assert other.packets == sum(packets.values()) - sum(f.packets for f in flows.values())
    assert other.bytes == sum(nbytes.values()) - sum(f.bytes for f in flows.values())
    assert (other.protocol, other.cpus) == ("other", set())


def test_flow_table_of_an_empty_batch_and_no_room() -> None:
    table = FlowTable(max_flows=0)
    table.setup(info(0))
    table(SkbBatch(np.zeros((0, 64), dtype=np.uint8), np.zeros(0), np.zeros(0)))
    assert table.finish()["flows"] == {}
    b = batches(10, 10)[0]
    table(b)
    assert {h: f.packets for h, f in table.finish()["flows"].items()} == {-1: 10}


def test_count_counts_packets_and_wire_bytes() -> None:
    bs = batches(700, 64)
    count = Count()
    count.setup(info(2))
    for b in bs:
        assert count(b) is None
    assert count.finish() == {
        "cpu": 2,
        "packets": 700,
        "bytes": sum(int(b.wire_len.sum()) for b in bs),
    }


def test_merge_joins_cpus_and_sorts_by_packets() -> None:
    a = FlowStats("UDP", "1.1.1.1:1", "2.2.2.2:2", 5, 500, {0})
    b = FlowStats("UDP", "1.1.1.1:1", "2.2.2.2:2", 2, 100, {1})
    c = FlowStats("TCP", "3.3.3.3:3", "4.4.4.4:4", 6, 60, {1})
    merged = merge_flow_tables([{"cpu": 0, "flows": {7: a}}, {"cpu": 1, "flows": {7: b, 9: c}}])
    assert [(f.protocol, f.packets, f.bytes, f.cpus) for f in merged] == [
        ("UDP", 7, 600, {0, 1}),
        ("TCP", 6, 60, {1}),
    ]
    assert a.packets == 5  # the reports are not changed
