"""Waiting for room (ring.py, "Waiting for room"): a lossless producer sleeps on the ring's
``room_seq`` futex and the consumer's ``take`` wakes it; ``kill`` wakes it too; a waiter
whose consumer never drains gives up at its deadline.  Real processes; every wait is
bounded, and a lost wake-up shows as a slice that timed out with room there
(``BulkQueues.room_timeouts``) or as a wait far longer than the test allows."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

from cpumap import _atomics as at
from cpumap.engine import bulkq
from cpumap.engine.bulkq import BulkQueues
from cpumap.engine.frame_pool import FramePool
from cpumap.engine.ring import (
    OFF_ROOM_WAIT,
    WAIT_NOT_SLEPT,
    WAIT_TIMEOUT,
    Ring,
)
from tests.helpers import make_ring, wait_for

CTX = multiprocessing.get_context("fork")


def _fill(ring: Ring) -> None:
    assert ring.produce(np.arange(ring.capacity, dtype=np.uint32)) == ring.capacity


def test_wait_room_does_not_sleep_with_room_or_on_a_dead_ring() -> None:
    _seg, ring, hand = make_ring(4)
    assert ring.has_room()
    assert ring.wait_room(5.0) == WAIT_NOT_SLEPT  # empty: room
    _fill(ring)
    assert not ring.has_room()
    t = time.monotonic()
    assert ring.wait_room(0.01) == WAIT_TIMEOUT  # full, nobody takes
    assert time.monotonic() - t < 5.0
    # The flag is up; the consumer's take clears it (one wake-up), then it stays down.
    assert at.load_u32(ring.hdr + OFF_ROOM_WAIT) == 1
    ring.take(1, hand)
    assert at.load_u32(ring.hdr + OFF_ROOM_WAIT) == 0
    assert ring.wait_room(5.0) == WAIT_NOT_SLEPT  # one slot free
    assert ring.produce(np.array([9], dtype=np.uint32)) == 1
    ring.kill()
    assert ring.wait_room(5.0) == WAIT_NOT_SLEPT  # dead: no point in waiting


def _sleeper(ring: Ring, timeout: float, out) -> None:
    t = time.monotonic()
    rc = ring.wait_room(timeout)
    out.send((rc, time.monotonic() - t))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["take", "kill"])
def test_a_producer_sleeping_for_room_is_woken_by_take_and_by_kill(how: str) -> None:
    _seg, ring, hand = make_ring(8, slots=8)
    _fill(ring)
    r, w = CTX.Pipe(duplex=False)
    child = CTX.Process(target=_sleeper, args=(ring, 60.0, w))
    child.start()
    try:
        # It announced itself (flag up); give it no help beyond the protocol's wake-up.
        wait_for(lambda: at.load_u32(ring.hdr + OFF_ROOM_WAIT) == 1)
        if how == "take":
            ring.take(3, hand)
        else:
            ring.kill()
        assert r.poll(20), "the sleeper was not woken (a lost wake-up sleeps 60 s)"
        rc, slept = r.recv()
        assert rc != WAIT_TIMEOUT and slept < 20
    finally:
        child.join(10)
        if child.exitcode is None:
            child.kill()
    assert child.exitcode == 0


def _lossless_producer(ring: Ring, pool: FramePool, total: int, chunk: int, out) -> None:
    # A slice far longer than the test allows: a lost wake-up cannot hide in retries.
    bulkq.ROOM_WAIT_SLICE = 30.0
    alloc = pool.allocator(0)
    bq = BulkQueues(pool, lambda s: ring, alloc.free, lambda *a: None, 1, backpressure=60.0)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        bq.enqueue(0, np.arange(sent, sent + n, dtype=np.uint32))
        bq.flush_all()
        sent += n
    out.send((bq.room_waits, bq.room_timeouts))


def _slow_consumer(ring: Ring, hand: np.ndarray, total: int, out) -> None:
    got: list[int] = []
    rng = np.random.default_rng(7)
    deadline = time.monotonic() + 60
    while len(got) < total and time.monotonic() < deadline:
        n = ring.available()
        if not n:
            ring.wait(0.05)
            continue
        got.extend(ring.take(min(n, int(rng.integers(1, 6))), hand).tolist())
        ring.drop_hand()
        if rng.random() < 0.2:
            # Let the producer find the ring full and go to sleep: wait for its flag (it
            # may have nothing left to send, so only briefly).
            until = time.monotonic() + 0.005
            while not at.load_u32(ring.hdr + OFF_ROOM_WAIT) and time.monotonic() < until:
                pass
    out.send(got)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [3, 16])
def test_lossless_producer_and_consumer_processes_lose_no_wakeup_and_no_frame(
    chunk: int,
) -> None:
    """Thousands of sleeps for room against a consumer taking a few frames at a time:
    every frame arrives once, in order, and no sleep ever waited for a wake-up that did
    not come."""
    total = 6000
    pool = FramePool(count=total, frame_size=64, headroom=0, partitions=1)
    _seg, ring, hand = make_ring(8, slots=8)
    pr, pw = CTX.Pipe(duplex=False)
    cr, cw = CTX.Pipe(duplex=False)
    cons = CTX.Process(target=_slow_consumer, args=(ring, hand, total, cw))
    prod = CTX.Process(target=_lossless_producer, args=(ring, pool, total, chunk, pw))
    cons.start()
    prod.start()
    try:
        assert cr.poll(90), "the consumer did not finish"
        got = cr.recv()
        assert pr.poll(30), "the producer did not finish"
        waits, timeouts = pr.recv()
    finally:
        for p in (prod, cons):
            p.join(10)
            if p.exitcode is None:
                p.kill()
    assert got == list(range(total))
    assert waits > 100  # it did sleep for room, many times
    assert timeouts == 0


def test_a_waiter_whose_consumer_never_drains_gives_up_at_its_deadline() -> None:
    pool = FramePool(count=16, frame_size=64, headroom=0, partitions=1)
    alloc = pool.allocator(0)
    _seg, ring, _hand = make_ring(4)
    flushes: list[tuple[int, int, int]] = []
    bq = BulkQueues(
        pool, lambda s: ring, alloc.free, lambda *a: flushes.append(a), 1, backpressure=0.3
    )
    frames = alloc.alloc(10)
    t = time.monotonic()
    bq.enqueue(0, frames)
    bq.flush_all()
    took = time.monotonic() - t
    assert 0.25 < took < 5.0  # waited for its deadline, not forever
    assert flushes[-1] == (0, 6, 6)  # 4 fit at the flush; the backlog of 6 dropped
    assert bq.room_waits >= 1 and bq.staged == 0
