"""The ring on its own: capacity, wrap-around, the producer lock, and cross-process
multi-producer delivery with sleep and wake-up."""

from __future__ import annotations

import multiprocessing
import os
import threading

import numpy as np
import pytest

from cpumap import CpuMap, possible_cpus, redirect_map
from cpumap import _atomics as at
from cpumap.engine.ring import (
    OFF_PROD_LOCK,
    WAIT_CHANGED,
    WAIT_NOT_SLEPT,
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
    waits = {WAIT_WOKEN: 0, WAIT_CHANGED: 0, WAIT_TIMEOUT: 0, WAIT_NOT_SLEPT: 0, 3: 0}
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
