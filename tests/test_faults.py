"""Faults: workers killed mid-stream, a killed controlling process, and the recovery
protocol of worker.py driven step by step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import flow_batch
from cpumap import CpuMap, possible_cpus, redirect_map
from cpumap.frame_pool import TAG_HAND, TAG_QUEUED, TAG_RETURNED
from cpumap.stats import K_COMMITTED, K_DELIVERED, K_PROCESSED
from test_engine import Gate, wait_for

CPU = min(possible_cpus())


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_sigkill_worker_mid_batch_frames_come_back_and_a_new_worker_takes_over() -> None:
    gate = Gate()
    with CpuMap(1, handler=gate, batch_size=8) as m:
        m.update(CPU, 256)
        (entry,) = m._entries.values()
        first_pid = entry.proc.pid
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(1, 1))
            wait_for(lambda: entry.ring.positions()[0] == 1)  # frame 0 in the worker's hand
            rx.poll(flow_batch(4, 25))  # 100 frames queued behind it
            os.kill(first_pid, signal.SIGKILL)
            wait_for(lambda: _pid_gone(first_pid))
            gate.open()  # the replacement worker's first call passes the gate
            m.wait_idle(30)
            s = m.stats()
            assert (s.rx, s.delivered, s.lost) == (101, 100, 1)
            assert s.in_flight == 0 and s.rx == sum(s.outcomes().values())
            assert m.pool.audit().whole
            (entry,) = m._entries.values()
            assert entry.restarts == 1 and entry.proc.pid != first_pid
            # The entry keeps working after the restart.
            rx.poll(flow_batch(2, 5))
        m.wait_idle(30)
        assert m.stats().delivered == 110
    gate.close()


def test_killed_worker_of_a_retiring_entry_loses_only_what_it_held() -> None:
    gate = Gate()
    with CpuMap(1, handler=gate, batch_size=4) as m:
        m.update(CPU, 64)
        (entry,) = m._entries.values()
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(1, 1))
            wait_for(lambda: entry.ring.positions()[0] == 1)
            rx.poll(flow_batch(1, 20))
        m.delete(CPU)  # retiring: grace period, then drain
        os.kill(entry.proc.pid, signal.SIGKILL)
        # Dead before the gate opens, or the dying worker could eat the replacement's byte.
        wait_for(lambda: _pid_gone(entry.proc.pid))
        gate.open()
        m.wait_idle(30)
        s = m.stats()
        assert (s.rx, s.delivered, s.lost) == (21, 20, 1)
        assert m.pool.audit().whole
    gate.close()


def _dead_entry(m: CpuMap):
    """An entry whose worker we kill at once, so the test can play the worker itself."""
    m.update(CPU, 64)
    (e,) = m._entries.values()
    e.proc.kill()
    e.proc.join()
    return e


@pytest.mark.parametrize("step", ["taken", "committed", "half_released", "released"])
def test_recovery_at_every_step_of_the_commit_protocol(step: str) -> None:
    with CpuMap(1) as m:
        e = _dead_entry(m)
        # Blocks of 4 frames, so that released frames come back (as a block) quickly.
        rx = m.producer(lambda ctx: redirect_map(m, CPU), poll_size=4)
        rx.receive(flow_batch(1, 10))  # 10 frames queued, nobody consumes
        rx.close()
        hand = m._hands[e.slot]
        ring, pool = e.ring, m.pool
        # Play the worker: 1. take 4 frames
        got = ring.take(4, hand, pool.tag, TAG_HAND + e.slot).copy()
        rec = e.record.read()
        if step != "taken":  # 3. commit their outcomes
            rec[K_PROCESSED] += 4
            rec[K_DELIVERED] += 4
            rec[K_COMMITTED] = ring.positions()[0]
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
        m._recover(e, drop_queued=False)
        lost = 4 if step == "taken" else 0
        assert e.lost == lost
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
        e.proc = None
        m._entries.clear()
        m._table[CPU] = -1
        m._recover(e, drop_queued=True)
        assert m.pool.audit().whole
        rec = e.record.read()
        rx_total = int(m.stats().rx)
        assert rx_total == int(rec[K_DELIVERED]) + e.lost


def test_killing_the_controller_leaves_nothing_behind(tmp_path) -> None:
    """SIGKILL the controlling process: its workers die with it (PR_SET_PDEATHSIG) and
    its shared memory (memfd) goes with the last process that mapped it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from conftest import flow_batch
        from cpumap import CpuMap, FlowHash
        m = CpuMap(2)
        m.update({CPU}, 64)
        rx = m.producer(FlowHash(m, [{CPU}]))
        rx.poll(flow_batch(4, 4))
        print(" ".join(str(e.proc.pid) for e in m._entries.values()), flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        workers = [int(p) for p in line.split()]
        assert workers, "the controller did not start"
        memfds_before = _memfd_holders([*workers, proc.pid])
        assert memfds_before, "the processes should map cpumap memfds"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while not all(_pid_gone(p) for p in workers):
        assert time.monotonic() < deadline, "workers outlived their controller"
        time.sleep(0.01)
    assert not [n for n in os.listdir("/dev/shm") if "cpumap" in n]
    # No process on the machine maps a cpumap segment from that run any more.
    assert not _memfd_holders([*workers, proc.pid])


def _memfd_holders(pids: list[int]) -> set[int]:
    holders = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if "memfd:cpumap-" in f.read():
                    holders.add(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return holders


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
        (e,) = m._entries.values()
        flag.touch()
        os.kill(e.proc.pid, signal.SIGKILL)
        wait_for(lambda: not e.proc.is_alive())  # reaped (not just a zombie leader)
        m.poll()  # recovery, then a restart that fails: the entry is broken
        assert e.broken and e.proc is None
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(2, 10))
        m.poll()
        s = m.stats()
        assert s.rx == 20 and s.lost + s.queue_full == 20 and s.in_flight == 0
        assert m.pool.audit().whole
        m.delete(CPU)  # a broken entry still retires
        m.wait_idle(10)
    assert m.stats().rx == sum(m.stats().outcomes().values())
