"""Grace periods over producers, in one process and across processes."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from cpumap.engine.rcu import ProducerRegistry, add_registry
from cpumap.shm import Layout


def make_registry(n: int) -> ProducerRegistry:
    layout = Layout("test-rcu")
    add_registry(layout, n)
    return ProducerRegistry(layout.create(), n)


def test_grace_period_waits_for_producers_inside_a_batch() -> None:
    reg = make_registry(3)
    p0, p1 = reg.claim(), reg.claim()
    assert (p0, p1) == (0, 1)
    reg.read_lock(p0)  # p0 is inside an RX batch, p1 and p2 are not
    snap = reg.snapshot()
    assert not reg.elapsed(snap)
    reg.read_lock(p1)  # a batch that started after the snapshot does not matter
    assert not reg.elapsed(snap)
    reg.read_unlock(p0)
    assert reg.elapsed(snap)
    reg.read_lock(p0)  # nor does p0's next batch
    assert reg.elapsed(snap)


def test_claiming() -> None:
    reg = make_registry(2)
    assert reg.claim(1) == 1
    with pytest.raises(RuntimeError, match=r"^producer slot 1 is in use"):
        reg.claim(1)
    assert reg.claim() == 0
    with pytest.raises(RuntimeError, match=r"^any producer slot is in use"):
        reg.claim()
    reg.unclaim(1)
    assert reg.claim() == 1


def _die_inside_a_batch(reg: ProducerRegistry) -> None:
    p = reg.claim(0)
    reg.read_lock(p)  # and exits without read_unlock


@pytest.mark.slow
def test_a_dead_producer_is_quiescent_and_its_slot_reusable() -> None:
    reg = make_registry(1)
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_die_inside_a_batch, args=(reg,))
    proc.start()
    proc.join()
    snap = reg.snapshot()
    assert snap[0] & 1  # it died inside a batch
    assert reg.elapsed(snap)  # ...but holds nothing any more
    assert reg.claim() == 0
    assert np.all(reg.snapshot() % 2 == 0)
