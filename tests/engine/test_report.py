"""What a map reports: per-producer and per-entry enqueue rows in its stats, and the one
record of its whole life (``CpuMap.report()``)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cpumap import CpuMap, MapReport, possible_cpus, redirect_map
from tests.helpers import flow_batch

CPU = min(possible_cpus())


@pytest.mark.slow
def test_stats_have_a_row_per_producer_slot() -> None:
    with CpuMap(CPU + 1, producers=3) as m:
        m.update(CPU, 256)
        with m.producer(lambda ctx: redirect_map(m, CPU), index=1) as rx:
            rx.poll(flow_batch(2, 10))
            rx.poll(flow_batch(1, 5))
        m.wait_idle(10)
        s = m.stats()
    assert [p.producer for p in s.producers] == [0, 1, 2]
    p1 = s.producers[1]
    assert (p1.rx, p1.polls, p1.xdp_redirect, p1.lost) == (25, 2, 25, 0)
    assert s.producers[0].rx == s.producers[2].rx == 0
    assert s.rx == sum(p.rx for p in s.producers) and s.polls == 2
    (es,) = s.entries
    assert [r.producer for r in es.enqueue_rows] == [0, 1, 2]
    row = es.enqueue_rows[1]
    assert row.processed == 25 and row.drops == 0 and row.flushes > 0
    assert es.enqueue_processed == sum(r.processed for r in es.enqueue_rows)
    assert es.enqueue_flushes == sum(r.flushes for r in es.enqueue_rows)
    d = s.as_dict()
    assert d["producers"][1]["rx"] == 25 and d["entries"][0]["enqueue_rows"][1]["processed"] == 25
    json.dumps(d)


@pytest.mark.slow
def test_report_holds_the_whole_life_of_the_map() -> None:
    class Count:
        def setup(self, info):
            self.info, self.n = info, 0

        def __call__(self, skb):
            self.n += 1

        def finish(self):
            return (self.info.generation, self.n)

    with CpuMap(CPU + 1, handler=Count()) as m:
        m.update(CPU, 64)
        m.run(flow_batch(1, 3), lambda ctx: redirect_map(m, CPU))
        m.update(CPU, 128)  # replaced: generation 1 retires, generation 2 takes over
        m.run(flow_batch(1, 4), lambda ctx: redirect_map(m, CPU))
        live = m.report()  # valid any time: generation 2 is live (1 retired or retiring)
        assert [e.generation for e in live.stats.entries] == [1, 2]
        assert live.stats.entries[1].state == "active"
    report = m.report()
    assert isinstance(report, MapReport)
    s = report.stats
    assert [(e.key, e.generation, e.qsize, e.state) for e in s.entries] == [
        (CPU, 1, 64, "retired"),
        (CPU, 2, 128, "retired"),
    ]
    assert [e.delivered for e in s.entries] == [3, 4] and s.delivered == 7
    assert all(e.exitcode == 0 for e in s.entries)
    # The identity: every frame has exactly one outcome.
    assert s.in_flight == 0 and s.rx == 7 == sum(s.outcomes().values())
    assert sorted(r.result for r in report.results) == [(1, 3), (2, 4)]
    assert report.results == tuple(m.results) and report.events == () == report.user_errors
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.stats = s  # type: ignore[misc]
    json.dumps(report.as_dict())
