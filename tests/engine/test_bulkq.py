"""Bulk queues: staging per destination, flush when full and at the end of the poll,
drops at flush when the ring is full."""

from __future__ import annotations

import numpy as np

from cpumap.engine.bulkq import BulkQueues
from cpumap.engine.frame_pool import TAG_QUEUED, FramePool
from tests.helpers import make_ring


def _setup(capacity: int, bulk: int):
    pool = FramePool(count=64, frame_size=128, headroom=0, partitions=1)
    alloc = pool.allocator(0)
    rings = [make_ring(capacity) for _ in range(2)]
    flushes: list[tuple[int, int, int]] = []
    bq = BulkQueues(
        pool,
        lambda s: rings[s][1],
        alloc.free,
        lambda s, p, d: flushes.append((s, p, d)),
        n_slots=2,
        bulk_size=bulk,
    )
    return pool, alloc, rings, bq, flushes


def test_full_bulks_flush_at_once_the_rest_at_the_end() -> None:
    pool, alloc, rings, bq, flushes = _setup(capacity=64, bulk=8)
    frames = alloc.alloc(20)
    bq.enqueue(0, frames[:5])
    bq.enqueue(1, frames[5:8])
    bq.enqueue(0, frames[8:20])  # 5 + 12 = 17: two full bulks of 8 flush now
    assert flushes == [(0, 8, 0), (0, 8, 0)]
    assert bq.staged == 1 + 3
    bq.flush_all()
    assert flushes[2:] == [(0, 1, 0), (1, 3, 0)]
    assert bq.staged == 0
    ring0, ring1 = rings[0][1], rings[1][1]
    order0 = ring0.take(17, rings[0][2]).tolist()
    assert order0 == frames[:5].tolist() + frames[8:20].tolist()  # order kept
    assert ring1.take(3, rings[1][2]).tolist() == frames[5:8].tolist()
    # Tagged as published by their publisher (registry index 0), whichever ring (ownership.py).
    assert np.all(pool.tag[frames[5:8]] == TAG_QUEUED + 0)


def test_full_ring_drops_at_flush_and_returns_frames() -> None:
    pool, alloc, _rings, bq, flushes = _setup(capacity=6, bulk=4)
    frames = alloc.alloc(10)
    bq.enqueue(0, frames)
    bq.flush_all()
    assert flushes == [(0, 4, 0), (0, 4, 2), (0, 2, 2)]  # processed includes drops
    audit = pool.audit()
    assert audit.queued == 6 and audit.returned == 4  # dropped frames went back
