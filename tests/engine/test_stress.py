"""Bounded-time stress: random map operations while several producer processes push.

The identity must hold exactly at the end, the pool must be whole, and no process or
shared-memory segment may be left behind (the autouse ``no_leaks`` fixture)."""

from __future__ import annotations

import errno
import multiprocessing
import random
import time

import numpy as np
import pytest

from cpumap import XDP_DROP, XDP_REDIRECT, CpuMap, possible_cpus, vectorized
from tests.helpers import flow_batch

pytestmark = pytest.mark.slow

OPS = 1000  # successful updates (incl. replacements and qsize-0 deletes) and deletes
PRODUCERS = 2
TIME_LIMIT = 120.0  # seconds: the test fails rather than run longer


def _producer_main(cmap: CpuMap, index: int, stop, polls_done) -> None:
    """Runs in a forked process: push frames until told to stop."""
    n_keys = cmap.max_entries

    @vectorized
    def prog(batch):
        flow = batch.bytes_at(42, 4).view(">u4")[:, 0]
        verdict = np.where(flow % 13 == 0, XDP_DROP, XDP_REDIRECT)
        return verdict, (flow % n_keys).astype(np.uint32)

    batch = flow_batch(64, 4)  # 256 frames over 64 flows
    with cmap.producer(prog, index=index, bulk_size=16, frame_wait=0.5) as rx:
        while not stop.is_set():
            rx.poll(batch)
            with polls_done.get_lock():
                polls_done.value += 1


def test_random_map_operations_under_traffic() -> None:
    started = time.monotonic()
    rng = random.Random(1234)
    cpus = sorted(possible_cpus())
    max_entries = max(cpus) + 3  # some keys are not possible CPUs, one is out of range
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    polls = ctx.Value("q", 0)
    with CpuMap(max_entries, producers=PRODUCERS, frames=PRODUCERS * 2048, batch_size=32) as m:
        procs = [
            ctx.Process(target=_producer_main, args=(m, i, stop, polls)) for i in range(PRODUCERS)
        ]
        for p in procs:
            p.start()
        try:
            model: dict[int, int] = {}  # what the map must hold
            counts = {"update": 0, "delete": 0, "lookup": 0, "error": 0}
            while counts["update"] + counts["delete"] < OPS:
                assert time.monotonic() - started < TIME_LIMIT, "stress test ran too long"
                # Mostly valid keys (real entries to replace and delete), some invalid ones.
                key = rng.choice(cpus) if rng.random() < 0.85 else rng.randrange(max_entries + 1)
                op = rng.random()
                try:
                    if op < 0.55:
                        qsize = rng.choice([0, 1, 8, 64, 256, 1024, 1024, 20000])
                        flags = rng.choice([0, 0, 0, 0, 2, 2, 1, 3])
                        m.update(key, qsize, flags)
                        counts["update"] += 1
                        if qsize:
                            model[key] = qsize
                        else:
                            model.pop(key, None)
                    elif op < 0.8:
                        m.delete(key)
                        counts["delete"] += 1
                        model.pop(key, None)
                    else:
                        assert m.lookup(key) == model[key]
                        counts["lookup"] += 1
                except OSError as e:
                    counts["error"] += 1
                    assert e.errno in (
                        errno.EINVAL,
                        errno.E2BIG,
                        errno.EEXIST,
                        errno.EOVERFLOW,
                        errno.ENODEV,
                        errno.ENOENT,
                    ), e
                    if e.errno == errno.ENOENT:
                        assert key not in model
                assert dict(m.items()) == model
        finally:
            stop.set()
            for p in procs:
                p.join(30)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        assert polls.value > 0
        m.wait_idle(30)
        s = m.stats()
        outcomes = s.outcomes()
        assert s.rx == sum(outcomes.values()), outcomes
        assert s.in_flight == 0
        assert s.delivered > 0 and s.redirect_err > 0 and s.xdp_drop > 0
        assert s.lost == 0  # no worker died
        assert s.late_wakeups == 0
        assert m.pool.audit().whole, m.pool.audit()
        assert counts["update"] > 500 and counts["error"] > 100
    # After close: every entry retired, every worker gone and accounted for.
    s = m.stats()
    assert s.rx == sum(s.outcomes().values())
    assert m.pool.audit().whole
    assert all(r.error is None and r.exitcode == 0 for r in m.results)
