"""CpuMap operations: the seed's checks, in the seed's order, with the kernel's errnos."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from cpumap import (
    BPF_ANY,
    BPF_EXIST,
    BPF_NOEXIST,
    CpuMap,
    MapOptions,
    RestartPolicy,
    nr_cpus,
    possible_cpus,
    redirect_map,
)
from cpumap.engine.counters import KthreadRecord
from tests.helpers import Gate, flow_batch, wait_for

CPU = min(possible_cpus())
NOT_POSSIBLE = max(possible_cpus()) + 1  # a key that fits a big map but no CPU has


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


# -- create ---------------------------------------------------------------------------------
def test_create_zero_entries_is_einval() -> None:
    assert _errno(CpuMap, 0) == errno.EINVAL


def test_create_more_than_nr_cpus_is_e2big() -> None:
    assert _errno(CpuMap, nr_cpus() + 1) == errno.E2BIG


def test_create_nr_cpus_entries_is_fine_even_beyond_present_cpus() -> None:
    # NR_CPUS, not the CPUs present, bounds a map.
    with CpuMap(nr_cpus()) as m:
        assert len(m) == nr_cpus()


def test_create_rejects_non_int_and_negative() -> None:
    with pytest.raises(TypeError, match=r"^max_entries must be an int, not str$"):
        CpuMap("4")  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        CpuMap(-1)


# -- update: every row of the table, in order -------------------------------------------------
@pytest.mark.parametrize(
    ("key", "qsize", "flags", "expected"),
    [
        (0, 64, BPF_EXIST + 1, errno.EINVAL),  # flags > BPF_EXIST first...
        (99, 64, 4, errno.EINVAL),  # ...even before the key check (BPF_F_LOCK too)
        (4, 64, BPF_ANY, errno.E2BIG),  # key >= max_entries
        (4, 64, BPF_NOEXIST, errno.E2BIG),  # key checked before NOEXIST
        (CPU, 64, BPF_NOEXIST, errno.EEXIST),  # NOEXIST always fails
        (CPU, 16385, BPF_NOEXIST, errno.EEXIST),  # ...before the qsize check
        (CPU, 16385, BPF_ANY, errno.EOVERFLOW),
        (CPU, 0xFFFFFFFF, BPF_EXIST, errno.EOVERFLOW),
    ],
)
def test_update_errnos(key: int, qsize: int, flags: int, expected: int) -> None:
    with CpuMap(4) as m:
        assert _errno(m.update, key, qsize, flags) == expected
        assert list(m.items()) == []  # unchanged


def test_update_impossible_cpu_is_enodev() -> None:
    if nr_cpus() <= NOT_POSSIBLE:
        pytest.skip("every key below NR_CPUS is a possible CPU here")
    with CpuMap(nr_cpus()) as m:
        assert _errno(m.update, NOT_POSSIBLE, 64) == errno.ENODEV
        # qsize is checked before the CPU: EOVERFLOW wins.
        assert _errno(m.update, NOT_POSSIBLE, 20000) == errno.EOVERFLOW
        # ...and qsize 0 (delete) on an impossible CPU is still ENODEV.
        assert _errno(m.update, NOT_POSSIBLE, 0) == errno.ENODEV
        assert list(m.items()) == []


@pytest.mark.slow
def test_update_qsize_limit_is_inclusive() -> None:
    with CpuMap(1) as m:
        m.update(CPU, 16384)
        assert m.lookup(CPU) == 16384


@pytest.mark.slow
def test_update_exist_on_empty_entry_succeeds() -> None:
    with CpuMap(2) as m:
        m.update(CPU, 32, BPF_EXIST)  # the kernel does not check
        assert m.lookup(CPU) == 32


@pytest.mark.slow
def test_update_replaces_and_qsize_zero_deletes() -> None:
    with CpuMap(2) as m:
        m.update(CPU, 32)
        first = m.stats().entries[0]
        m.update(CPU, 64)
        assert m.lookup(CPU) == 64
        gens = {e.generation for e in m.stats().entries if e.state == "active"}
        assert first.generation not in gens  # every update makes a new entry
        m.update(CPU, 0)
        assert _errno(m.lookup, CPU) == errno.ENOENT
        m.update(CPU, 0)  # deleting an empty entry is fine


def test_update_key_types() -> None:
    with CpuMap(2) as m:
        with pytest.raises(TypeError):
            m.update(0.0, 64)  # type: ignore[arg-type]
        with pytest.raises(OverflowError):
            m.update(-1, 64)
        with pytest.raises(OverflowError):
            m.update(0, 1 << 32)


# -- delete ------------------------------------------------------------------------------------
def test_delete_out_of_range_is_einval_not_e2big() -> None:
    # The kernel's asymmetry, kept because it is ABI: update says E2BIG for the same key.
    with CpuMap(2) as m:
        assert _errno(m.delete, 2) == errno.EINVAL
        assert _errno(m.update, 2, 64) == errno.E2BIG


@pytest.mark.slow
def test_delete_empty_and_populated() -> None:
    with CpuMap(2) as m:
        m.delete(CPU)
        m.update(CPU, 16)
        m.delete(CPU)
        assert list(m.items()) == []


# -- lookup / get_next_key / iteration ----------------------------------------------------------
def test_lookup_enoent_for_empty_and_out_of_range() -> None:
    with CpuMap(2) as m:
        assert _errno(m.lookup, CPU) == errno.ENOENT
        assert _errno(m.lookup, 2) == errno.ENOENT
        assert _errno(m.lookup, 0xFFFFFFFF) == errno.ENOENT


def test_get_next_key_walk() -> None:
    with CpuMap(4) as m:
        assert m.get_next_key(None) == 0
        assert m.get_next_key(4) == 0  # out of range restarts the walk
        assert m.get_next_key(0xFFFFFFFF) == 0
        assert m.get_next_key(0) == 1  # populated or not
        assert m.get_next_key(2) == 3
        assert _errno(m.get_next_key, 3) == errno.ENOENT
        assert list(m) == [0, 1, 2, 3]


def test_get_next_key_single_entry_map() -> None:
    with CpuMap(1) as m:
        assert m.get_next_key(None) == 0
        assert _errno(m.get_next_key, 0) == errno.ENOENT


@pytest.mark.slow
def test_items_lists_populated_entries() -> None:
    with CpuMap(4) as m:
        for cpu in sorted(possible_cpus())[:2]:
            m.update(cpu, 8 + cpu)
        assert list(m.items()) == [(c, 8 + c) for c in sorted(possible_cpus())[:2]]


# -- lifecycle -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_close_is_idempotent_and_final() -> None:
    m = CpuMap(2)
    m.update(CPU, 16)
    m.close()
    m.close()
    with pytest.raises(ValueError, match=r"^map is closed$"):
        m.update(CPU, 16)
    with pytest.raises(ValueError, match=r"^map is closed$"):
        m.lookup(CPU)


@pytest.mark.slow
def test_workers_are_pinned_to_their_cpu() -> None:
    import os

    with CpuMap(2) as m:
        m.update(CPU, 16)
        (entry,) = m.stats().entries
        assert entry.pinned
        assert os.sched_getaffinity(entry.pid) == {CPU}


@pytest.mark.slow
def test_handler_setup_failure_leaves_the_map_unchanged() -> None:
    from cpumap import HandlerSetupError

    class Broken:
        def setup(self, info):
            raise RuntimeError("no database")

        def __call__(self, skb):
            return None

    with CpuMap(2, handler=Broken()) as m:
        with pytest.raises(HandlerSetupError, match="no database"):
            m.update(CPU, 16)
        assert list(m.items()) == []


@pytest.mark.slow
def test_handler_results_are_collected() -> None:
    class Setup:
        def setup(self, info):
            self.info = info

        def __call__(self, skb):
            return None

        def finish(self):
            return (self.info.cpu, self.info.qsize, self.info.pinned)

    with CpuMap(2, handler=Setup()) as m:
        m.update(CPU, 16)
        m.update(CPU, 32)  # replace: the first worker reports when it retires
    assert sorted(r.result for r in m.results) == [(CPU, 16, True), (CPU, 32, True)]
    assert all(r.error is None and r.exitcode == 0 for r in m.results)


# -- wait_idle means the pool is whole (not merely every outcome committed) ------------------
@pytest.mark.slow
def test_wait_idle_means_the_pool_is_whole(monkeypatch) -> None:
    parent = os.getpid()
    orig = KthreadRecord.publish

    def slow_commit(self, values):
        orig(self, values)
        if os.getpid() != parent:  # in a worker: preempted between steps 3 and 4
            time.sleep(0.5)

    monkeypatch.setattr(KthreadRecord, "publish", slow_commit)
    with CpuMap(1) as m:
        m.update(CPU, 64)
        e = m.entry(CPU)
        m.run(flow_batch(1, 10), lambda ctx: redirect_map(m, CPU))  # includes wait_idle
        assert e.ring.hand_count() == 0
        assert m.pool.audit().whole


# -- close(): a producer still inside its batch cannot publish into a force-retired ring -------
@pytest.mark.slow
def test_forced_close_loses_no_frame_to_a_producer_still_in_its_batch() -> None:
    gate = Gate()
    try:
        m = CpuMap(1, handler=gate, frames=1024)
        m.update(CPU, 4)
        e = m.entry(CPU)
        rx = m.producer(lambda ctx: redirect_map(m, CPU), backpressure=2.0)
        rx.poll(flow_batch(1, 1))
        wait_for(lambda: e.ring.positions()[0] == 1)  # the worker is stuck with frame 0
        t = threading.Thread(target=rx.poll, args=(flow_batch(1, 10),))
        t.start()  # 4 fit, the producer waits for room for 6 more (inside its batch)
        wait_for(lambda: len(e.ring) == 4)
        m.close(timeout=0.5)  # the grace period cannot end: workers are killed
        t.join(15)
        assert not t.is_alive()
        rx.close()
        s = m.stats()
        assert s.in_flight == 0, s.outcomes()
        assert m.pool.audit().whole
    finally:
        gate.close()


# -- options ------------------------------------------------------------------------------------
def test_rarely_used_knobs_are_one_options_record() -> None:
    opts = MapOptions(trace_events=16, stuck_after=2.0, restart=RestartPolicy(burst=3))
    with CpuMap(2, frames=256, producers=2, batch_size=8, options=opts) as m:
        assert m.options is opts and m.shared.trace_events == 16
        assert m.supervisor.policy == RestartPolicy(3.0, 30.0) and m.supervisor.stuck_after == 2
    with CpuMap(2) as m:
        assert m.options == MapOptions()  # the defaults


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trace_events": -1}, r"^trace_events must be in 0\.\.1048576, not -1$"),
        ({"stuck_after": 0}, r"^stuck_after must be a finite number of seconds > 0, not 0$"),
        ({"restart": RestartPolicy(half_life=0)}, r"^restart.half_life must be a finite"),
        ({"restart": RestartPolicy(burst=-1)}, r"^restart.burst must be finite and >= 0"),
    ],
)
def test_options_are_checked_when_made(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MapOptions(**options)  # type: ignore[arg-type]


def test_the_old_keywords_are_gone() -> None:
    for name in ("trace_events", "restart_burst", "restart_half_life", "supervise"):
        with pytest.raises(TypeError):
            CpuMap(2, **{name: 1})  # type: ignore[arg-type]
