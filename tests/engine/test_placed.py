"""Placed frames, the engine's half (no kernel, no root): frames an RX producer lends
(``TAG_KERNEL``), a source writes, and :meth:`RxProducer.poll_placed` takes back by index
-- counted once, interrupted or not, and back in the pool whole whoever dies.  The
kernel's half (AF_XDP on a veth) is ``tests/live/test_xsk_source.py``."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

from cpumap import CpuMap
from cpumap.abi import XDP_DROP, XDP_REDIRECT
from cpumap.engine.control import MapShared
from cpumap.engine.frame_pool import TAG_FREE, TAG_KERNEL, TAG_RETURNED, TAG_RX, FramePool
from cpumap.engine.ownership import recover_partition
from cpumap.engine.stats import MapStats
from cpumap.programs import vectorized
from tests.helpers import flow_batch, wait_for

CPU = 0


@vectorized
def to_cpu(batch) -> tuple[np.ndarray, np.ndarray]:
    n = len(batch)
    return np.full(n, XDP_REDIRECT, dtype=np.uint8), np.full(n, CPU, dtype=np.uint32)


@vectorized
def drop(batch) -> np.ndarray:
    return np.full(len(batch), XDP_DROP, dtype=np.uint8)


def place(pool: FramePool, idx: np.ndarray, frames: np.ndarray) -> None:
    """What the kernel does for AF_XDP: each frame's bytes at the headroom, its length."""
    h = pool.headroom
    pool.data[idx, h : h + frames.shape[1]] = frames
    pool.length[idx] = frames.shape[1]
    pool.wire_len[idx] = frames.shape[1]


def balanced(m: CpuMap) -> MapStats:
    """The identity at a quiescent point (the pool is not whole: frames are lent)."""
    m.wait_idle(30)
    s = m.stats()
    assert s.in_flight == 0 and s.rx == sum(s.outcomes().values()), s.outcomes()
    return s


def packet_rows(n: int) -> np.ndarray:
    batch = flow_batch(8, n // 8)
    return batch.buf.reshape(n, -1)


def test_alloc_some_takes_the_rest_of_the_block_first_and_wastes_none() -> None:
    pool = FramePool(count=64, frame_size=128, headroom=0)
    alloc = pool.allocator(0, block=16)
    assert alloc.alloc_some(10, TAG_KERNEL).tolist() == list(range(10))
    assert alloc.alloc_some(10, TAG_KERNEL).tolist() == list(range(10, 20))  # 6 + 4
    assert alloc.alloc_some(100, TAG_KERNEL).tolist() == list(range(20, 64))  # all there is
    assert len(alloc.alloc_some(1, TAG_KERNEL)) == 0
    assert pool.audit().kernel == 64 and not (pool.tag == TAG_RETURNED).any()
    pool.close()


@pytest.mark.slow
def test_placed_frames_are_counted_once_and_come_back_to_be_lent_again() -> None:
    with CpuMap(CPU + 1, frames=256) as m, m.producer(to_cpu, poll_size=32) as rx:
        m.update(CPU, 256)
        pool = m.pool
        lent = rx.lend(rx.lendable)
        assert len(lent) == rx.lendable == 256 and pool.audit().kernel == 256
        assert len(rx.lend(1)) == 0  # every frame is lent
        rows = packet_rows(64)
        place(pool, lent[:64], rows)
        rx.poll_placed(lent[:64])
        s = balanced(m)
        assert s.rx == 64 and s.delivered == 64
        # Released by the worker, the blocks of the placed frames come back to lend again.
        again = rx.lend(64)
        assert sorted(again.tolist()) == lent[:64].tolist()
        assert (pool.tag[again] == TAG_KERNEL).all()
        rx.return_lent()
        assert pool.audit().kernel == 0
    assert m.pool.audit().whole


class Boom(BaseException):
    """Not an Exception: the program runner lets it through."""


@pytest.mark.slow
def test_an_interrupted_poll_counts_its_frames_aborted_and_leaves_the_rest_lent() -> None:
    @vectorized
    def explodes(batch):
        raise Boom

    with CpuMap(CPU + 1, frames=256) as m, m.producer(explodes, poll_size=32) as rx:
        lent = rx.lend(rx.lendable)
        place(m.pool, lent[:32], packet_rows(32))
        with pytest.raises(Boom):
            rx.poll_placed(lent[:32])
        s = m.stats()
        assert s.rx == 32 and s.xdp_aborted == 32
        a = m.pool.audit()
        # The socket may still write the others: they stay lent through the recovery.
        assert a.kernel == 256 - 32 and a.returned == 32
        rx.close()  # a producer closed with frames lent leaves them lent ...
        assert m.pool.audit().kernel == 256 - 32
        assert (
            rx.return_lent() == 256 - 32
        )  # ... until the lender, its sockets closed, returns them
    assert m.pool.audit().whole


def test_recovery_returns_lent_frames_only_when_the_lender_is_gone() -> None:
    pool = FramePool(count=64, frame_size=128, headroom=0, partitions=2)
    shared = MapShared(1, 2, producers=2, n_slots=4, batch_size=8, trace_events=0)
    try:
        pool.tag[0:8] = TAG_KERNEL
        pool.tag[8:10] = TAG_RX
        _, counted = recover_partition(pool, shared, 0, kernel_gone=False)
        assert counted == 2 and (pool.tag[0:8] == TAG_KERNEL).all()  # still lent
        _, counted = recover_partition(pool, shared, 0)  # a dead producer: sockets gone
        assert counted == 0 and (pool.tag[0:10] == TAG_RETURNED).all()
        assert (pool.tag[10:] == TAG_FREE).all()
    finally:
        pool.close()


@pytest.mark.slow
def test_a_producer_process_killed_with_frames_lent_gives_them_all_back() -> None:
    rows = packet_rows(32)  # made here: the child only places them
    mp = multiprocessing.get_context("fork")
    ready = mp.Event()
    with CpuMap(CPU + 1, frames=256, producers=2) as m:
        m.update(CPU, 256)

        def lend_place_and_wait() -> None:  # a producer process, killed in its wait
            rx = m.producer(drop, index=1, poll_size=32)
            lent = rx.lend(rx.lendable)
            place(m.pool, lent[:32], rows)
            rx.poll_placed(lent[:32])
            ready.set()
            time.sleep(600)

        proc = mp.Process(target=lend_place_and_wait, daemon=True)
        proc.start()
        try:
            assert ready.wait(30), "the producer process did not get there"
        finally:
            proc.kill()
            proc.join(30)
        lo, hi = m.pool.partition_range(1)
        lent = int((m.pool.tag[lo:hi] == TAG_KERNEL).sum())
        # Still lent -- unless the supervisor has already seen the death and taken them back.
        assert lent == (hi - lo) - 32 or (lent == 0 and m.stats().producer_deaths == 1), lent
        wait_for(lambda: m.stats().producer_deaths == 1)  # the supervisor recovers it
        s = balanced(m)
        assert s.rx == 32 and s.xdp_drop == 32 and s.lost == 0
    assert m.pool.audit().whole


class Lengths:
    """A handler that reports each frame's first byte and length, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def __call__(self, skb) -> bool:
        data = bytes(skb.data)
        self.seen.append((data[0], len(data)))
        return True

    def finish(self) -> list[tuple[int, int]]:
        return self.seen


@pytest.mark.slow
@pytest.mark.parametrize("consecutive", [None, True, False])
def test_a_lender_that_says_whether_frames_are_consecutive_gets_the_same_delivery(
    consecutive: bool | None,
) -> None:
    """``consecutive`` only saves the check: a run said to be one (or not, or unknown)
    and a reversed run (said not to be, or unknown) reach the handler the same."""
    with CpuMap(CPU + 1, handler=Lengths(), frames=256) as m:
        m.update(CPU, 256)
        with m.producer(to_cpu, poll_size=32) as rx:
            lent = rx.lend(64)
            rows = np.zeros((64, 128), dtype=np.uint8)
            rows[:, 0] = np.arange(64)
            for i in range(64):
                place(m.pool, lent[i : i + 1], rows[i : i + 1, : 40 + i])
            rx.poll_placed(lent[:32], consecutive=consecutive)
            back = lent[32:][::-1].copy()
            rx.poll_placed(back, consecutive=None if consecutive is None else False)
            s = balanced(m)
            assert s.rx == 64 and s.delivered == 64
            rx.return_lent()
    got = [x for r in m.results for x in (r.result or [])]
    want = [(i, 40 + i) for i in range(32)] + [(i, 40 + i) for i in range(63, 31, -1)]
    assert got == want
    assert m.pool.audit().whole
