"""The frame pool: partitions, allocation, release and reclaim, the audit."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from cpumap import CpuMap, possible_cpus, redirect_map
from cpumap.engine.control import MapShared
from cpumap.engine.counters import ProducerCounter
from cpumap.engine.frame_pool import TAG_HAND, TAG_QUEUED, TAG_RETURNED, TAG_RX, FramePool
from cpumap.engine.ownership import recover_partition
from tests.helpers import Gate, flow_batch, wait_for

CPU = min(possible_cpus())


def test_partitions_cover_the_pool() -> None:
    pool = FramePool(count=10, frame_size=128, headroom=32, partitions=3)
    ranges = [pool.partition_range(p) for p in range(3)]
    assert ranges == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError, match=r"^partition 3 not in 0\.\.2$"):
        pool.partition_range(3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "frame count"),
        ({"frame_size": 100}, "multiple of 64"),
        ({"frame_size": 128, "headroom": 100}, "leaves no room"),
        ({"count": 4, "partitions": 5}, "partitions"),
    ],
)
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        FramePool(**kwargs)


def test_blocks_alloc_release_reclaim_and_audit() -> None:
    pool = FramePool(count=64, frame_size=128, headroom=32, partitions=2)
    a = pool.allocator(1, block=8)
    assert (a.block, a.nblocks, a.available) == (8, 4, 32)
    start = a.alloc_range(5)
    assert start == 32  # the partition's first block: consecutive frames
    got = np.arange(start, start + 5)
    assert np.all(pool.tag[got] == TAG_RX) and pool.audit().rx == 5
    assert a.alloc_range(3) == 37  # the rest of the same block
    assert a.alloc_range(9) is None  # more than a block: use alloc()
    pool.tag[got[:3]] = TAG_QUEUED + 1  # handed to a ring
    assert pool.audit().queued == 3
    pool.release(got[:3])  # a worker is done with them
    a.free(np.arange(got[3], 40))  # the producer drops the others
    audit = pool.audit()
    assert audit.whole and audit.returned == 8
    assert a.reclaim() == 8  # the whole block came back
    assert a.available == 32


def test_alloc_spans_blocks_and_stops_when_exhausted() -> None:
    pool = FramePool(count=32, frame_size=128, headroom=0, partitions=1)
    a = pool.allocator(0, block=8)
    assert a.alloc_range(6) == 0
    # 6 of block 0 used; 20 more take the rest of... a fresh block each: block 0's last
    # two frames are released when the next block is opened.
    more = a.alloc(20)
    assert len(more) == 20 and len(set(more.tolist())) == 20
    assert a.alloc(100).size == 0  # 6 + 2 released + 20 + 4: nothing left
    # Everything handed out plus released leftovers accounts for the whole partition.
    assert pool.audit().rx + pool.audit().returned + pool.audit().free == 32


def test_a_block_comes_back_only_when_every_frame_has(tmp_path) -> None:
    pool = FramePool(count=16, frame_size=128, headroom=0, partitions=1)
    a = pool.allocator(0, block=4)
    frames = a.alloc(16)
    assert a.alloc_range(1) is None  # exhausted
    pool.release(frames[:7])  # block 0 whole, block 1 missing its last frame
    assert a.reclaim() == 4
    pool.release(frames[7:8])
    assert a.reclaim() == 4


@pytest.mark.slow
def test_reclaim_sees_releases_from_another_process() -> None:
    pool = FramePool(count=64, frame_size=128, headroom=0, partitions=1)
    a = pool.allocator(0, block=8)
    got = a.alloc(64)
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=pool.release, args=(got[:32],))
    p.start()
    p.join()
    assert a.reclaim() == 32
    assert np.all(pool.tag[got[:32]] == 0)


def test_a_new_allocator_takes_over_from_a_dead_owner() -> None:
    # Changed with issue 9: the allocator no longer frees RX frames silently; the new
    # owner first recovers them, counted (ownership.recover_partition).
    pool = FramePool(count=16, frame_size=128, headroom=0, partitions=1)
    shared = MapShared(1, 1, producers=1, n_slots=4, batch_size=8, trace_events=0)
    a = pool.allocator(0, block=4)
    got = a.alloc(16)  # the old owner holds everything (TAG_RX)...
    pool.tag[got[:4]] = TAG_RETURNED  # ...block 0 came back,
    pool.tag[got[4:6]] = TAG_HAND + 3  # block 1 is partly in a worker's hand, the rest it held
    _, counted = recover_partition(pool, shared, 0)  # the old one is gone: count its frames
    rec = shared.producer_record(0).read()
    assert counted == 10 and rec[ProducerCounter.RX] == rec[ProducerCounter.LOST] == 10
    b = pool.allocator(0, block=4)  # a new owner of the slot
    assert b.available == 12  # blocks 0, 2, 3; block 1 waits for its frames in flight
    pool.release(got[4:6])
    assert b.reclaim() == 4 and b.available == 16
    assert pool.audit().whole


def test_packet_and_metadata_views_are_zero_copy() -> None:
    pool = FramePool(count=4, frame_size=256, headroom=64, partitions=1)
    pool.data[2, 64:68] = [1, 2, 3, 4]
    pool.length[2] = 4
    view = pool.packet(2)
    assert bytes(view) == b"\x01\x02\x03\x04"
    view[0] = 9
    assert pool.data[2, 64] == 9
    pool.data[2, 60:64] = [7, 7, 7, 7]
    pool.meta_len[2] = 4
    assert pool.metadata(2) == b"\x07\x07\x07\x07"


# -- taking over a partition: a block with a FREE tail comes back too ---------------------
@pytest.mark.slow
def test_new_producer_on_a_slot_gets_every_frame_back() -> None:
    gate = Gate()
    try:
        with CpuMap(1, handler=gate, frames=64) as m:  # 4 blocks of 16
            m.update(CPU, 64)
            e = m.entry(CPU)
            prog = lambda ctx: redirect_map(m, CPU)  # noqa: E731
            with m.producer(prog) as rx:
                rx.poll(flow_batch(1, 1))  # frame 0 of block 0; the other 15 stay free
                wait_for(lambda: e.ring.positions()[0] == 1)
            rx2 = m.producer(prog, frame_wait=0.2)  # same slot, frame 0 still in flight
            gate.open()
            m.wait_idle(10)
            assert m.pool.audit().whole  # every frame is free...
            rx2.poll(flow_batch(1, 64))  # ...so a poll of 64 gets 64 frames
            rx2.close()
            m.wait_idle(10)
            assert m.stats().no_frame == 0
    finally:
        gate.close()
