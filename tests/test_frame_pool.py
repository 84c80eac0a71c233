"""The frame pool: partitions, allocation, release and reclaim, the audit."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from cpumap.frame_pool import TAG_QUEUED, TAG_RETURNED, TAG_RX, FramePool


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


def test_alloc_free_reclaim_and_audit() -> None:
    pool = FramePool(count=16, frame_size=128, headroom=32, partitions=2)
    a = pool.allocator(0)
    assert a.available == 8
    got = a.alloc(5)
    assert len(got) == 5 and np.all(pool.tag[got] == TAG_RX)
    assert pool.audit().rx == 5 and not pool.audit().whole
    pool.tag[got[:3]] = TAG_QUEUED + 1  # handed to a ring
    assert pool.audit().queued == 3
    pool.release(got[:3])  # a worker is done with them
    a.free(got[3:])  # never left the producer
    audit = pool.audit()
    assert audit.whole and audit.returned == 3
    # Exhaustion: asking for more than the partition returns what there is, after a
    # reclaim of the RETURNED frames.
    everything = a.alloc(100)
    assert sorted(everything.tolist()) == list(range(8))
    assert a.alloc(1).size == 0
    a.free(everything)
    assert pool.audit().whole and pool.audit().free == 16


def test_reclaim_sees_releases_from_another_process() -> None:
    pool = FramePool(count=64, frame_size=128, headroom=0, partitions=1)
    a = pool.allocator(0)
    got = a.alloc(64)
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=pool.release, args=(got[::2],))
    p.start()
    p.join()
    assert a.reclaim() == 32
    assert np.all(pool.tag[got[::2]] == 0)


def test_a_new_allocator_takes_over_free_and_returned_frames() -> None:
    pool = FramePool(count=8, frame_size=128, headroom=0, partitions=1)
    a = pool.allocator(0)
    got = a.alloc(8)
    pool.tag[got[:2]] = TAG_RETURNED
    b = pool.allocator(0)  # e.g. after the first owner died
    assert b.available == 2


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
