"""The supervisor: workers killed mid-stream, a killed controlling process, the recovery
protocol of worker.py driven step by step, and who may fork replacements.

Tests are deterministic: where a fault needs a particular interleaving, the test produces
it with pipes and gates, or plays one party step by step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cpumap import CpuMap, MapOptions, RestartPolicy, possible_cpus, redirect_map
from cpumap.engine.counters import KthreadCounter
from cpumap.engine.entry import Entry
from cpumap.engine.frame_pool import TAG_HAND, TAG_QUEUED, TAG_RETURNED
from cpumap.engine.ring import Ring
from tests.helpers import (
    Gate,
    flow_batch,
    memfd_holders,
    pid_gone,
    stays_alive,
    wait_for,
    worker_pids,
)

pytestmark = pytest.mark.slow

CPU = min(possible_cpus())
K = KthreadCounter
REPO = Path(__file__).resolve().parents[2]


def test_sigkill_worker_mid_batch_frames_come_back_and_a_new_worker_takes_over() -> None:
    gate = Gate()
    with CpuMap(1, handler=gate, batch_size=8) as m:
        m.update(CPU, 256)
        entry = m.entry(CPU)
        first_pid = entry.life.worker.pid
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(1, 1))
            wait_for(lambda: entry.ring.positions()[0] == 1)  # frame 0 in the worker's hand
            rx.poll(flow_batch(4, 25))  # 100 frames queued behind it
            os.kill(first_pid, signal.SIGKILL)
            wait_for(lambda: pid_gone(first_pid))
            gate.open()  # the replacement worker's first call passes the gate
            m.wait_idle(30)
            s = m.stats()
            assert (s.rx, s.delivered, s.lost) == (101, 100, 1)
            assert s.in_flight == 0 and s.rx == sum(s.outcomes().values())
            assert m.pool.audit().whole
            entry = m.entry(CPU)
            assert entry.life.restarts == 1 and entry.life.worker.pid != first_pid
            # The entry keeps working after the restart.
            rx.poll(flow_batch(2, 5))
        m.wait_idle(30)
        assert m.stats().delivered == 110
    gate.close()


def test_killed_worker_of_a_retiring_entry_loses_only_what_it_held() -> None:
    gate = Gate()
    with CpuMap(1, handler=gate, batch_size=4) as m:
        m.update(CPU, 64)
        entry = m.entry(CPU)
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(1, 1))
            wait_for(lambda: entry.ring.positions()[0] == 1)
            rx.poll(flow_batch(1, 20))
        m.delete(CPU)  # retiring: grace period, then drain
        pid = entry.life.worker.pid
        os.kill(pid, signal.SIGKILL)
        # Dead before the gate opens, or the dying worker could eat the replacement's byte.
        wait_for(lambda: pid_gone(pid))
        gate.open()
        m.wait_idle(30)
        s = m.stats()
        assert (s.rx, s.delivered, s.lost) == (21, 20, 1)
        assert m.pool.audit().whole
    gate.close()


def _dead_entry(m: CpuMap) -> Entry:
    """An entry whose worker we kill at once, so the test can play the worker itself (the
    map sees no worker: it neither recovers nor replaces one)."""
    m.update(CPU, 64)
    e = m.entry(CPU)
    e.life.worker.kill()
    e.life.worker.join()
    e.life.worker.close()
    e.life.worker = None
    return e


@pytest.mark.parametrize("step", ["taken", "committed", "half_released", "released"])
def test_recovery_at_every_step_of_the_commit_protocol(step: str) -> None:
    # supervise=False: the test plays the worker; the supervisor thread would replace it.
    with CpuMap(1, options=MapOptions(supervise=False)) as m:
        e = _dead_entry(m)
        # Blocks of 4 frames, so that released frames come back (as a block) quickly.
        rx = m.producer(lambda ctx: redirect_map(m, CPU), poll_size=4)
        rx.receive(flow_batch(1, 10))  # 10 frames queued, nobody consumes
        rx.close()
        hand = m.shared.hand(e.slot)
        ring, pool = e.ring, m.pool
        # Play the worker: 1. take 4 frames
        got = ring.take(4, hand, pool.tag, TAG_HAND + e.slot).copy()
        rec = e.record.read()
        if step != "taken":  # 3. commit their outcomes
            rec[K.PROCESSED] += 4
            rec[K.DELIVERED] += 4
            rec[K.COMMITTED] = ring.positions()[0]
            e.record.publish(rec)
        if step == "half_released":  # 4. release, cut short
            pool.tag[got[:2]] = TAG_RETURNED
        if step == "released":
            pool.tag[got] = TAG_RETURNED
            # The allocator reclaims one of them and queues it again into the same ring:
            # recovery must not release it a second time.
            rx2 = m.producer(lambda ctx: redirect_map(m, CPU), poll_size=4)
            rx2.receive(flow_batch(1, 5))
            rx2.close()
            cons, prod = ring.positions()
            assert set(got.tolist()) & set(ring.contents(cons, prod).tolist())
        m.supervisor.recover(e, drop_queued=False)
        lost = 4 if step == "taken" else 0
        assert e.life.lost == lost
        assert ring.hand_count() == 0
        # The queued frames are untouched and still ours; a new worker would take them.
        cons, prod = ring.positions()
        queued = ring.contents(cons, prod)
        assert np.all(pool.tag[queued] == TAG_QUEUED + e.slot)
        assert len(queued) == (11 if step == "released" else 6)
        # Everything else is back in the pool.
        a = pool.audit()
        assert a.queued == len(queued) and a.rx == 0
        # Now retire it: the queued frames are lost with it, and the books balance.
        m.shared.publish(CPU, -1)
        m.supervisor.recover(e, drop_queued=True)
        assert m.pool.audit().whole
        rec = e.record.read()
        rx_total = int(m.stats().rx)
        assert rx_total == int(rec[K.DELIVERED]) + e.life.lost


def test_recover_never_releases_a_frame_requeued_during_recovery(monkeypatch) -> None:
    """Recovery: "tagged for this ring" is ambiguous between in-hand and re-queued."""
    # supervise=False: the test plays the worker; the supervisor thread would replace it.
    with CpuMap(1, options=MapOptions(supervise=False)) as m:
        e = _dead_entry(m)
        rx = m.producer(lambda ctx: redirect_map(m, CPU), poll_size=4)  # blocks of 4
        rx.receive(flow_batch(1, 10))
        rx.close()
        ring, pool, hand = e.ring, m.pool, m.shared.hand(e.slot)
        got = ring.take(4, hand, pool.tag, TAG_HAND + e.slot).copy()  # 1. take
        rec = e.record.read()  # 3. commit
        rec[K.PROCESSED] += 4
        rec[K.DELIVERED] += 4
        rec[K.COMMITTED] = ring.positions()[0]
        e.record.publish(rec)
        pool.tag[got] = TAG_RETURNED  # 4. release; killed before 5 (hand_n still 4)

        # A producer (another process, in real life) reuses the released block and
        # queues its frames into the same ring just after recover read the positions.
        orig = Ring.positions
        armed = [True]

        def positions(self):
            r = orig(self)
            if armed[0] and self.hdr == ring.hdr:
                armed[0] = False
                rx2 = m.producer(lambda ctx: redirect_map(m, CPU), poll_size=4)
                rx2.receive(flow_batch(1, 4))
                rx2.close()
            return r

        monkeypatch.setattr(Ring, "positions", positions)
        m.supervisor.recover(e, drop_queued=False)
        monkeypatch.setattr(Ring, "positions", orig)
        assert not armed[0]
        cons, prod = ring.positions()
        queued = ring.contents(cons, prod)
        assert set(got.tolist()) <= set(queued.tolist())  # they were re-queued
        # Every frame queued in the ring must still belong to the ring.
        assert np.all(pool.tag[queued] == TAG_QUEUED + e.slot), pool.tag[queued]


def test_killing_the_controller_leaves_nothing_behind(tmp_path) -> None:
    """SIGKILL the controlling process: its workers die with it (PR_SET_PDEATHSIG) and
    its shared memory (memfd) goes with the last process that mapped it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests.helpers import flow_batch, worker_pids
        from cpumap import CpuMap, FlowHash
        m = CpuMap(2)
        m.update({CPU}, 64)
        rx = m.producer(FlowHash(m, [{CPU}]))
        rx.poll(flow_batch(4, 4))
        print(" ".join(str(pid) for pid in worker_pids(m)), flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        workers = [int(p) for p in line.split()]
        assert workers, "the controller did not start"
        memfds_before = memfd_holders([*workers, proc.pid])
        assert memfds_before, "the processes should map cpumap memfds"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while not all(pid_gone(p) for p in workers):
        assert time.monotonic() < deadline, "workers outlived their controller"
        time.sleep(0.01)
    assert not [n for n in os.listdir("/dev/shm") if "cpumap" in n]
    # No process on the machine maps a cpumap segment from that run any more.
    assert not memfd_holders([*workers, proc.pid])


def test_an_entry_whose_worker_cannot_restart_is_broken_and_loses_only_what_it_gets(
    tmp_path,
) -> None:
    flag = tmp_path / "refuse"

    class Refusing:
        def setup(self, info):
            if flag.exists():
                raise RuntimeError("cannot start again")

        def __call__(self, skb):
            return None

    with CpuMap(CPU + 1, handler=Refusing()) as m:
        m.update(CPU, 64)
        e = m.entry(CPU)
        flag.touch()
        worker = e.life.worker
        os.kill(worker.pid, signal.SIGKILL)
        # The supervisor thread notices on its own: recovery, then a restart that fails.
        wait_for(lambda: e.state.broken)
        assert e.life.worker is None and e.state == "broken"
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(2, 10))
        m.poll()
        s = m.stats()
        # Changed with issue 9: a broken entry is unpublished, so redirects to it are
        # redirect errors (they were counted lost or queue_full).
        assert s.rx == 20 and s.redirect_err == 20 and s.in_flight == 0
        assert s.broken_entries == 1 and s.entries[0].state == "broken"
        kinds = [ev.kind for ev in m.worker_events()]
        assert kinds == ["died", "broken"], kinds
        assert m.pool.audit().whole
        m.delete(CPU)  # a broken entry still retires
        m.wait_idle(10)
    assert m.stats().rx == sum(m.stats().outcomes().values())


def test_an_entry_broken_while_retiring_is_broken_retiring_until_its_grace_ends() -> None:
    """Changed with issue 17: it showed "grace" (a flag beside the state said broken), and
    ``broken_entries`` did not count it."""
    # burst 0: the first death breaks the entry.
    with CpuMap(CPU + 1, options=MapOptions(restart=RestartPolicy(burst=0))) as m:
        m.update(CPU, 64)
        e = m.entry(CPU)
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(1, 5))
            m.wait_idle(10)
            # The test plays a producer inside its RX batch: the grace period cannot end.
            m.registry.read_lock(rx.index)
            m.delete(CPU)
            assert e.state == "grace"
            pid = e.life.worker.pid
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: e.state.broken)  # the supervisor thread: died, then broken
            s = m.stats()
            (es,) = s.entries
            assert es.state == "broken-retiring" and es.pid == 0 and es.exitcode == -9
            assert s.broken_entries == 1
            assert [ev.kind for ev in m.worker_events()] == ["died", "broken"]
            m.registry.read_unlock(rx.index)  # the batch ends: so does the grace period
            wait_for(lambda: m.stats().entries == ())
        (retired,) = m.history
        assert retired.state == "retired" and retired.exitcode == -9
        s = m.stats()
        assert s.broken_entries == 0 and (s.rx, s.delivered, s.lost) == (5, 5, 0)
        assert m.pool.audit().whole


# -- who forks: PR_SET_PDEATHSIG is per thread, and a scrape thread must not fork -------------
def test_worker_started_from_a_thread_outlives_the_thread() -> None:
    """Workers forked by a short-lived thread must not die with it."""
    with CpuMap(1) as m:
        t = threading.Thread(target=m.update, args=(CPU, 64))
        t.start()
        t.join()
        e = m.entry(CPU)
        assert stays_alive(e.life.worker), f"worker died: exitcode {e.life.worker.exitcode}"


def test_stats_in_a_thread_never_forks_and_the_owner_replaces_the_worker() -> None:
    # supervise=False: the supervisor thread would replace the worker before the scrape.
    with CpuMap(1, options=MapOptions(supervise=False)) as m:
        m.update(CPU, 64)
        e = m.entry(CPU)
        first = e.life.worker
        os.kill(first.pid, signal.SIGKILL)
        # Reaped, not merely a zombie leader (its other threads may still be exiting).
        wait_for(lambda: not first.is_alive())
        t = threading.Thread(target=m.stats)  # what a metrics scrape does
        t.start()
        t.join()
        assert e.life.worker is first and e.life.restarts == 0  # read-only from that thread
        m.poll()  # the map's own thread supervises: recover and replace
        assert e.life.worker is not first and e.life.restarts == 1
        assert stays_alive(e.life.worker), f"replacement died: exitcode {e.life.worker.exitcode}"


def test_stats_report_the_workers_pids() -> None:
    with CpuMap(1) as m:
        m.update(CPU, 64)
        (pid,) = worker_pids(m)
        assert pid == m.entry(CPU).life.worker.pid and not pid_gone(pid)
