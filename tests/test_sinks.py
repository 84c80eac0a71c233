"""Sinks: the flow table against a straightforward count (in workers, and called directly
on batches), Count, Chain, merge order."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpumap import CpuMap, FlowHash, PacketBatch, possible_cpus
from cpumap.capture import open_capture, write_capture
from cpumap.demo import demo_capture_path
from cpumap.generator import Generator
from cpumap.packets import Packet
from cpumap.programs.contract import WorkerInfo
from cpumap.sinks import (
    Chain,
    Count,
    FlowStats,
    FlowTable,
    describe_flow,
    merge_captures,
    merge_flow_tables,
    sorted_unique,
)
from cpumap.skb import Skb, SkbBatch
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


# -- the vectorized handlers called directly ---------------------------------------------------
# The vectorized built-in handlers, called directly on batches (no processes): FlowTable
# equals a per-frame count by flow hash over many batches, new flows are admitted in hash
# order up to max_flows, Count counts, and merge_flow_tables joins reports.


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


@given(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 9), max_size=300))
def test_sorted_unique_is_np_unique(values: list[int]) -> None:
    """The flow table's unique (no numpy.ma import on a worker's first batch) is np.unique."""
    a = np.asarray(values, dtype=np.uint32)
    got, want = sorted_unique(a), np.unique(a)
    assert got.dtype == want.dtype and np.array_equal(got, want)
