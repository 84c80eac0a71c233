"""The ring on its own: capacity, wrap-around, the producer lock, and cross-process
multi-producer delivery with sleep and wake-up, and a lossless producer waiting for room."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from cpumap import CpuMap, possible_cpus, redirect_map
from cpumap import _atomics as at
from cpumap.engine import bulkq
from cpumap.engine.bulkq import BulkQueues
from cpumap.engine.frame_pool import FramePool
from cpumap.engine.ring import (
    OFF_PROD_LOCK,
    OFF_ROOM_WAIT,
    WAIT_CHANGED,
    WAIT_NOT_SLEPT,
    WAIT_SIGNAL,
    WAIT_TIMEOUT,
    WAIT_WOKEN,
    Ring,
)
from tests.helpers import flow_batch, make_ring, pid_gone, wait_for

CPU = min(possible_cpus())


def test_capacity_is_exact_and_wraps() -> None:
    _seg, ring, hand = make_ring(5)  # not a power of two, like any qsize
    assert ring.produce(np.arange(7, dtype=np.uint32)) == 5  # 2 do not fit
    assert len(ring) == 5 and ring.available() == 5
    assert ring.take(3, hand).tolist() == [0, 1, 2]
    ring.drop_hand()
    # Taking frees the slots at once, as ptr_ring_consume_batched does.
    assert ring.produce(np.arange(10, 14, dtype=np.uint32)) == 3
    assert ring.take(5, hand).tolist() == [3, 4, 10, 11, 12]  # across the wrap
    assert ring.available() == 0
    for _ in range(20):  # many laps: positions are free-running
        assert ring.produce(np.array([7, 8], dtype=np.uint32)) == 2
        assert ring.take(2, hand).tolist() == [7, 8]


def test_init_rejects_bad_capacity() -> None:
    _seg, ring, _ = make_ring(4, slots=8)
    with pytest.raises(ValueError):
        ring.init(0)
    with pytest.raises(ValueError):
        ring.init(9)  # more than the slots reserved


def test_wait_does_not_sleep_when_work_or_stop_is_there() -> None:
    _seg, ring, hand = make_ring(4)
    ring.produce(np.array([1], dtype=np.uint32))
    assert ring.wait(5.0) == WAIT_NOT_SLEPT
    ring.take(1, hand)
    assert ring.wait(0.001) == WAIT_TIMEOUT
    ring.request_stop()
    assert ring.stop_requested()
    assert ring.wait(5.0) == WAIT_NOT_SLEPT


@pytest.mark.slow
def test_lock_of_a_dead_owner_is_taken_over() -> None:
    _seg, ring, hand = make_ring(8)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    at.store_u32(ring.hdr + OFF_PROD_LOCK, pid)  # it "died holding the lock"
    assert ring.produce(np.array([5], dtype=np.uint32)) == 1
    assert at.load_u32(ring.hdr + OFF_PROD_LOCK) == 0
    assert ring.take(1, hand).tolist() == [5]


def _producer(ring: Ring, base: int, count: int, chunk: int) -> None:
    i = 0
    while i < count:
        n = min(chunk, count - i)
        vals = np.arange(base + i, base + i + n, dtype=np.uint32)
        done = ring.produce(vals)
        i += done
        if done < n:
            os.sched_yield()


def _consumer(ring: Ring, hand: np.ndarray, total: int, out) -> None:
    got = []
    waits = {WAIT_WOKEN: 0, WAIT_CHANGED: 0, WAIT_TIMEOUT: 0, WAIT_NOT_SLEPT: 0, WAIT_SIGNAL: 0}
    while len(got) < total:
        n = ring.available()
        if n:
            got.extend(ring.take(min(n, len(hand)), hand).tolist())
            ring.drop_hand()
            continue
        rc = ring.wait(30.0)  # a lost wake-up would stall for 30 s: the test would fail
        waits[rc] += 1
        if rc == WAIT_TIMEOUT:
            break
    out.send((got, waits))


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_two_producer_processes_one_consumer_exactly_once_in_order(chunk: int) -> None:
    """Every index arrives exactly once, each producer's in its order, nobody stalls."""
    _seg, ring, hand = make_ring(16, slots=16)
    ctx = multiprocessing.get_context("fork")
    total_each = 20000
    r, w = ctx.Pipe(duplex=False)
    cons = ctx.Process(target=_consumer, args=(ring, hand, 2 * total_each, w))
    cons.start()
    prods = [
        ctx.Process(target=_producer, args=(ring, base, total_each, chunk))
        for base in (0, 1_000_000)
    ]
    for p in prods:
        p.start()
    assert r.poll(120), "consumer did not finish"
    got, waits = r.recv()
    for p in (*prods, cons):
        p.join(10)
        assert p.exitcode == 0
    assert waits[WAIT_TIMEOUT] == 0  # no lost wake-up
    a = [g for g in got if g < 1_000_000]
    b = [g - 1_000_000 for g in got if g >= 1_000_000]
    assert a == list(range(total_each)) and b == list(range(total_each))


# -- the producer lock: a dead owner that is still a zombie is taken over too ---------------
@pytest.mark.slow
def test_producer_takes_over_a_lock_held_by_a_dead_child() -> None:
    with CpuMap(1) as m:
        m.update(CPU, 64)
        e = m.entry(CPU)
        rx = m.producer(lambda ctx: redirect_map(m, CPU))
        child = os.fork()
        lock = e.ring.hdr + OFF_PROD_LOCK
        if child == 0:  # a child of the controller (as a worker whose second stage
            at.cas_u32(lock, 0, os.getpid())  # flushes into this ring) dies holding the lock
            os._exit(0)
        wait_for(lambda: at.load_u32(lock) == child and pid_gone(child))
        t = threading.Thread(target=rx.poll, args=(flow_batch(1, 4),), daemon=True)
        try:
            t.start()
            t.join(3)
            stuck = t.is_alive()
        finally:
            os.waitpid(child, 0)  # reap it: now the spinning producer can take over
            t.join(10)
            rx.close()
        assert not stuck, "the producer spun on the dead child's lock"
        m.wait_idle(10)
        assert m.stats().delivered == 4


# -- waiting for room --------------------------------------------------------------------------
# Waiting for room (ring.py, "Waiting for room"): a lossless producer sleeps on the ring's
# ``room_seq`` futex and the consumer's ``take`` wakes it; ``kill`` wakes it too; a waiter
# whose consumer never drains gives up at its deadline.  Real processes; every wait is
# bounded, and a lost wake-up shows as a slice that timed out with room there
# (``BulkQueues.room_timeouts``) or as a wait far longer than the test allows.

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
