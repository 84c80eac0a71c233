"""Bulk queues: staging per destination, flush when full and at the end of the poll,
drops at flush when the ring is full; the redirect path against a reference (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- redirect against a reference --------------------------------------------------------------
# BulkQueues.redirect against a reference: every frame staged for its key's slot, in
# order per slot, the frames whose key names no entry returned -- for keys spanning a
# few values (grouped by key) and many (grouped by slot), with holes in the table and
# two keys naming one slot.

N_SLOTS = 4


class Table:
    def __init__(self, table: list[int]) -> None:
        self.table = np.array(table, dtype=np.int32)

    def slot_of(self, key: int) -> int:
        return int(self.table[key]) if 0 <= key < len(self.table) else -1

    def slots_of(self, keys: np.ndarray, largest: int | None = None) -> np.ndarray:
        return np.array([self.slot_of(int(k)) for k in keys], dtype=np.int32)


def _run(table: list[int], keys: list[int]) -> tuple[list[list[int]], list[int]]:
    pool = FramePool(count=256, frame_size=64, headroom=0, partitions=1)
    rings = [make_ring(256, slots=256) for _ in range(N_SLOTS)]
    bq = BulkQueues(pool, lambda s: rings[s][1], lambda f: None, lambda *a: None, N_SLOTS)
    frames = np.arange(100, 100 + len(keys), dtype=np.uint32)
    failed = bq.redirect(Table(table), frames, np.array(keys, dtype=np.uint32))
    bq.flush_all()
    got = []
    for _seg, ring, hand in rings:
        got.append(ring.take(ring.available(), hand).tolist())
    return got, sorted(failed.tolist())


def _reference(table: list[int], keys: list[int]) -> tuple[list[list[int]], list[int]]:
    t = Table(table)
    per_slot: list[list[int]] = [[] for _ in range(N_SLOTS)]
    failed = []
    for i, k in enumerate(keys):
        s = t.slot_of(k)
        if s < 0:
            failed.append(100 + i)
        else:
            per_slot[s].append(100 + i)
    return per_slot, failed


@pytest.mark.parametrize(
    ("table", "keys"),
    [
        ([0, 1], [0, 1, 1, 0, 1, 0, 0]),  # two keys: one mask
        ([2, 0, 1, 3], [3, 1, 2, 3, 1, 1, 2]),  # three keys, grouped by key
        ([0, -1, 1], [0, 1, 2, 0, 2, 1]),  # a hole in the range: the general path
        ([1, 1, 0], [0, 1, 2, 0, 1, 2]),  # two keys, one slot: order across keys kept
        ([0, 1], [0, 1, 5, 1]),  # a key beyond the table
        ([3], [0, 0, 0]),  # one key
    ],
)
def test_redirect_matches_the_reference(table: list[int], keys: list[int]) -> None:
    assert _run(table, keys) == _reference(table, keys)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-1, N_SLOTS - 1), min_size=1, max_size=12),
    st.lists(st.integers(0, 14), min_size=1, max_size=120),
)
def test_redirect_matches_the_reference_for_any_table(table: list[int], keys: list[int]) -> None:
    assert _run(table, keys) == _reference(table, keys)
