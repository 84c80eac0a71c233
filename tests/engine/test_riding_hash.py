"""The hash that rides with the frame, end to end and at the flow table: the flow table is
the same with every hash riding, none, or some; a stale hash left in a reused frame's
descriptor never rides (RxProducer._fill resets it); a program that computed the hash and
then rewrote the bytes makes the worker compute it again, so the table follows the new
bytes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpumap import CpuMap, FlowHash, PacketBatch, possible_cpus, redirect_map
from cpumap.engine.frame_pool import HASH_L3, HASH_L4, HASH_NONE, FramePool
from cpumap.programs.context import XdpContext
from cpumap.programs.contract import WorkerInfo
from cpumap.sinks import FlowStats, FlowTable, merge_flow_tables
from cpumap.skb import Skb, skb_batch
from tests.helpers import assert_balanced, payload_ids, udp_frame
from tests.skb.helpers import PROPERTY_SETTINGS, fill_pool, frames

CPUS = sorted(possible_cpus())
CPU = CPUS[0]


def table_of(pool: FramePool, batches: list[np.ndarray], max_flows: int) -> dict:
    table = FlowTable(max_flows=max_flows)
    table.setup(WorkerInfo(0, 0, 0, 0, 0, 0, True))
    for idx in batches:
        table(skb_batch(pool, idx))
    return {h: (f.protocol, f.a, f.b, f.packets, f.bytes) for h, f in table.flows.items()}


@PROPERTY_SETTINGS
@given(
    st.lists(frames(), min_size=1, max_size=40),
    st.integers(1, 8),
    st.integers(0, 2**32 - 1),
)
def test_the_flow_table_is_the_same_with_the_hash_riding_or_not(
    batch: list[tuple[int, bytes]], max_flows: int, seed: int
) -> None:
    pool = FramePool(64, frame_size=256, headroom=64)
    try:
        fitting = [(lt % 65536, data[:192]) for lt, data in batch]
        where = list(range(len(fitting)))
        fill_pool(pool, where, fitting)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(fitting)).astype(np.uint32)
        batches = np.array_split(order, 3)  # scattered batches, flows seen across them
        hashes = [Skb(data, linktype=lt).hash for lt, data in fitting]
        pool.hash_type[:] = HASH_NONE
        expected = table_of(pool, batches, max_flows)
        pool.rx_hash[: len(hashes)] = hashes
        for riding in (np.ones(len(hashes), bool), rng.random(len(hashes)) < 0.5):
            pool.hash_type[: len(hashes)] = np.where(riding, HASH_L3, HASH_NONE)
            assert table_of(pool, batches, max_flows) == expected
    finally:
        pool.close()


@pytest.mark.slow
def test_a_stale_hash_in_a_reused_frame_never_rides() -> None:
    frames_ = [udp_frame(f, s) for s in range(4) for f in range(50)]
    expected = Counter(Skb(f).hash for f in frames_)
    with CpuMap(max(CPUS) + 1, handler=FlowTable(), frames=256) as m:
        m.update(CPU, 256)
        # Every frame of the pool as a reused frame whose last owner left a hash riding;
        # one key: the program computes no hash, so only the worker can.
        m.pool.rx_hash[:] = 0xDEADBEEF
        m.pool.hash_type[:] = HASH_L4
        m.run(PacketBatch.from_packets(frames_), FlowHash(m, [CPU]))
        assert_balanced(m)
    assert keyed_by_hash(m) == expected


def keyed_by_hash(m: CpuMap) -> Counter:
    """Packets per flow-table key (the hash the worker used), over every worker's table;
    each key must be the hash of the flow its row describes (parsed from the bytes)."""
    packets: Counter = Counter()
    for r in m.results:
        for h, flow in r.result["flows"].items():
            assert h == _hash(flow), flow  # the key is the bytes' hash, not a stale one
            packets[h] += flow.packets
    return packets


def _hash(flow: FlowStats) -> int:
    """The flow hash of a FlowStats of udp_frame flows (both addresses and ports known)."""
    (src, sport), (dst, dport) = (e.rsplit(":", 1) for e in (flow.a, flow.b))
    frame = udp_frame(0, 0)
    ip = bytearray(frame)
    ip[26:30] = bytes(map(int, src.split(".")))
    ip[30:34] = bytes(map(int, dst.split(".")))
    ip[34:36] = int(sport).to_bytes(2, "big")
    ip[36:38] = int(dport).to_bytes(2, "big")
    return Skb(bytes(ip)).hash


@pytest.mark.slow
def test_a_program_that_rewrites_bytes_makes_the_worker_hash_again() -> None:
    frames_ = [udp_frame(f, 0) for f in range(20)]
    rewritten = []
    for f in frames_:
        b = bytearray(f)
        b[26:30] = b"\xc0\x00\x02\x01"
        rewritten.append(Skb(bytes(b)).hash)
    with CpuMap(max(CPUS) + 1, handler=FlowTable()) as m:
        m.update(CPU, 256)

        def rewrite_after_hashing(ctx: XdpContext) -> int:
            """Reads the skb hash (computed for the poll: it would ride on), then rewrites
            the frame's source address."""
            assert ctx.skb.hash
            ctx.data[26:30] = b"\xc0\x00\x02\x01"  # every frame now from 192.0.2.1
            return ctx.redirect_map(m, CPU)

        m.run(PacketBatch.from_packets(frames_), rewrite_after_hashing)
        assert_balanced(m)
    assert keyed_by_hash(m) == Counter(rewritten)
    flows = merge_flow_tables(m.results)
    assert all(f.a.startswith("192.0.2.1:") or f.b.startswith("192.0.2.1:") for f in flows)


@pytest.mark.slow
def test_flowhash_lets_its_hash_ride_into_the_worker() -> None:
    with CpuMap(max(CPUS) + 1, handler=FlowTable()) as m:
        keys = [CPU, CPU]  # two keys: the program hashes
        m.update(CPU, 256)
        frames_ = [udp_frame(f, 0) for f in range(30)]
        m.run(PacketBatch.from_packets(frames_), FlowHash(m, keys))
        assert_balanced(m)
    assert keyed_by_hash(m) == Counter(Skb(f).hash for f in frames_)


@pytest.mark.slow
def test_a_second_stage_redirect_keeps_the_hash_only_if_the_bytes_are_unchanged() -> None:
    a, b = CPUS[0], CPUS[-1]
    if a == b:
        pytest.skip("needs two CPUs")
    frames_ = [udp_frame(f, s) for s in range(3) for f in range(20)]
    expected = Counter()
    for f in frames_:
        flow = payload_ids(f)[0]
        moved = bytearray(f)
        if flow % 2:  # the second stage rewrites odd flows' source address
            moved[26:30] = b"\xc0\x00\x02\x01"
        expected[Skb(bytes(moved)).hash] += 1
    with CpuMap(max(CPUS) + 1, handler=FlowTable()) as m:

        def stage(ctx: XdpContext) -> int:
            """Reads through the read-only view; rewrites (writable view) odd flows only."""
            if payload_ids(bytes(ctx.packet))[0] % 2:
                ctx.data[26:30] = b"\xc0\x00\x02\x01"
            return redirect_map(m, b)

        m.update(b, 256)
        m.update(a, 256, program=stage)
        # Two keys (both a): the RX program computes the hash, so it rides into a's stage.
        m.run(PacketBatch.from_packets(frames_), FlowHash(m, [a, a]))
        assert_balanced(m)
    assert keyed_by_hash(m) == expected
