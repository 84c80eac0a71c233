"""The ownership state machine's recovery, driven state by state (no process): what a
dead or interrupted producer leaves is counted exactly once, from its tags and its
record's phase; the restart policy's decay; the new stats fields in ``as_dict``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cpumap.engine import EnqueueRow, EntryStats, MapStats, RestartPolicy
from cpumap.engine.control import MapShared
from cpumap.engine.counters import PHASE_CLOSED, PHASE_OPEN, ProducerCounter
from cpumap.engine.entry import Entry, EntryEvent, WorkerLife
from cpumap.engine.frame_pool import (
    TAG_DONE,
    TAG_FREE,
    TAG_HAND,
    TAG_RETURNED,
    TAG_RX,
    FramePool,
)
from cpumap.engine.ownership import (
    held_without_outcome,
    queued_tag,
    recover_partition,
    unpublished,
)
from cpumap.engine.stats import FaultCounts, WorkerStatus

P = ProducerCounter


def _setup():
    pool = FramePool(count=64, frame_size=128, headroom=0, partitions=2)
    shared = MapShared(1, 2, producers=2, n_slots=4, batch_size=8, trace_events=0)
    shared.ring(0).init(16)
    return pool, shared


def _commit(shared: MapShared, p: int, phase: int, rx: int) -> None:
    rec = shared.producer_record(p).read()
    rec[P.RX] = rx
    rec[P.PHASE] = phase
    shared.producer_record(p).publish(rec)


def test_a_flush_cut_short_is_found_and_a_published_one_is_not() -> None:
    pool, shared = _setup()
    frames = np.arange(0, 8, dtype=np.uint32)
    pool.tag[frames] = queued_tag(0)
    assert shared.ring(0).produce(frames[:5]) == 5  # 5 published, 3 never were
    got = unpublished(pool, shared.rings(), frames, 0)
    assert got.tolist() == [5, 6, 7]
    # Another publisher's frames are not ours to find.
    pool.tag[frames[5:]] = queued_tag(1)
    assert len(unpublished(pool, shared.rings(), frames, 0)) == 0


@pytest.mark.parametrize("phase", [PHASE_OPEN, PHASE_CLOSED])
def test_recovery_counts_what_has_no_outcome_once(phase: int) -> None:
    pool, shared = _setup()
    lo, _ = pool.partition_range(1)
    f = np.arange(lo, lo + 12, dtype=np.uint32)
    pool.tag[f[0:3]] = TAG_RX  # no outcome
    pool.tag[f[3:5]] = TAG_DONE  # outcome decided; counted iff the phase is CLOSED
    pool.tag[f[5:9]] = queued_tag(1)
    shared.ring(0).produce(f[5:7])  # two published (the ring's), two cut short
    pool.tag[f[9:10]] = TAG_HAND + 0  # a worker's
    pool.tag[f[10:12]] = TAG_RETURNED
    _commit(shared, 1, phase, rx=100)
    assert held_without_outcome(pool, shared, 1) == (3 + 2 + 2 if phase == PHASE_OPEN else 2)
    values, counted = recover_partition(pool, shared, 1)
    if phase == PHASE_OPEN:  # rx was counted for all; none has an outcome
        assert counted == 3 + 2 + 2 and values[P.RX] == 100
    else:  # RX (and cut-short) frames were not yet in rx; DONE ones were counted
        assert counted == 3 + 2 and values[P.RX] == 105
    assert values[P.LOST] == counted and values[P.PHASE] == PHASE_CLOSED
    tags = pool.tag[f]
    assert np.all(tags[[0, 1, 2, 3, 4, 7, 8, 10, 11]] == TAG_RETURNED)
    assert np.all(tags[5:7] == queued_tag(1)) and tags[9] == TAG_HAND
    assert shared.producer_record(1).read()[P.LOST] == counted
    # Idempotent: a second recovery finds nothing more.
    assert recover_partition(pool, shared, 1)[1] == 0
    assert np.all(pool.tag[: pool.partition_range(0)[1]] == TAG_FREE)  # partition 0 untouched


def test_restart_policy_decays() -> None:
    policy = RestartPolicy(burst=2, half_life=10.0)
    life = WorkerLife()
    assert policy.allows(life, 100.0) and policy.allows(life, 100.0)  # heat 1, 2
    assert not policy.allows(life, 100.0)  # 3 > 2: broken
    life.heat, life.heat_at = 2.0, 100.0
    assert policy.allows(life, 110.0)  # 2 halves to 1, + 1 = 2
    assert life.heat == pytest.approx(2.0)


def test_new_stats_fields_are_in_as_dict() -> None:
    e = Entry(key=0, qsize=64, slot=0, generation=1, ring=None, record=None)  # type: ignore[arg-type]
    e.fire(EntryEvent.BROKE)
    enqueue = np.array([[5, 1, 2, 0], [7, 0, 3, 0]], np.int64)  # two producer slots
    es = EntryStats.from_counters(
        e,
        np.zeros(24, np.int64),
        enqueue,
        WorkerStatus(restarts=3, heartbeat_age=1.5, stuck=True),
    )
    assert (es.enqueue_processed, es.enqueue_drops, es.enqueue_flushes) == (12, 1, 5)
    assert es.enqueue_rows == (EnqueueRow(0, 5, 1, 2), EnqueueRow(1, 7, 0, 3))
    records = np.zeros((2, 16), np.int64)
    records[1, P.RX], records[1, P.POLLS], records[1, P.LOST] = 9, 2, 1
    s = MapStats.from_counters(
        1, records, np.zeros(24, np.int64), (es,), FaultCounts(abandoned=2, worker_deaths=4)
    )
    assert s.rx == 9 and s.lost == 1
    assert [(p.producer, p.rx, p.polls, p.lost) for p in s.producers] == [
        (0, 0, 0, 0),
        (1, 9, 2, 1),
    ]
    d = s.as_dict()
    for name in ("abandoned", "hop_limit", "worker_deaths", "producer_deaths"):
        assert name in d
    assert d["broken_entries"] == 1 and d["stuck_workers"] == 1 and d["abandoned"] == 2
    assert d["entries"][0]["restarts"] == 3 and d["entries"][0]["heartbeat_age"] == 1.5
    assert d["producers"][1]["rx"] == 9 and d["entries"][0]["enqueue_rows"][1]["processed"] == 7
    json.dumps(d)  # plain data
    assert "abandoned" in s.outcomes() and s.in_flight == 9 - 1 - 2
