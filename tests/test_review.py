"""Regression tests from an adversarial review of the engine core: each test showed one
bug (failing before its fix).

Tests are deterministic: where a bug needs a particular interleaving, the test produces
it with pipes and gates, or plays one party step by step (as test_faults does).
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

import numpy as np
import pytest

from conftest import flow_batch, payload_ids, udp_frame
from cpumap import (
    XDP_PASS,
    CpuMap,
    PacketBatch,
    possible_cpus,
    redirect_map,
)
from cpumap import _atomics as at
from cpumap.frame_pool import TAG_HAND, TAG_QUEUED, TAG_RETURNED
from cpumap.ring import Ring
from cpumap.second_stage import OutputMap
from cpumap.shm import Layout
from cpumap.stats import K_COMMITTED, K_DELIVERED, K_PROCESSED, K_WORDS, KthreadRecord, add_counters
from test_engine import Gate, wait_for

CPUS = sorted(possible_cpus())
CPU = CPUS[0]


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _stays_alive(proc, seconds: float = 1.0) -> bool:
    """True if ``proc`` (a multiprocessing.Process) lives for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not proc.is_alive():
            return False
        time.sleep(0.01)
    return True


# -- 1. second stage: frames dropped at a full target ring leak when the worker dies ------------
class _TwoGates:
    """Map handler: on CPU ``a`` the first call says "entered" on a pipe and blocks; on CPU
    ``b`` the first call blocks.  Each gate is a pipe the test writes to."""

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b
        self.entered_r, self.entered_w = os.pipe()
        self.gate_a = os.pipe()
        self.gate_b = os.pipe()
        self.blocked = False

    def setup(self, info) -> None:
        self.cpu = info.cpu

    def __call__(self, skb) -> None:
        if self.blocked:
            return
        self.blocked = True
        if self.cpu == self.a:
            os.write(self.entered_w, b"x")
            os.read(self.gate_a[0], 1)
        elif self.cpu == self.b:
            os.read(self.gate_b[0], 1)

    def wait_entered(self, timeout: float = 10.0) -> None:
        ready, _, _ = select.select([self.entered_r], [], [], timeout)
        assert ready, "worker A never reached its handler"
        os.read(self.entered_r, 1)

    def close(self) -> None:
        for fd in (self.entered_r, self.entered_w, *self.gate_a, *self.gate_b):
            os.close(fd)


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_second_stage_full_ring_drops_are_recovered_when_the_worker_dies() -> None:
    a, b = CPUS[0], CPUS[1]
    h = _TwoGates(a, b)

    def stage(ctx):  # on A: flow 0 passes to the handler, every other flow goes to B
        return XDP_PASS if payload_ids(ctx.data)[0] == 0 else redirect_map(m, b)

    def rx_prog(ctx):  # flows >= 100 straight to B (to fill its ring), the rest to A
        return redirect_map(m, b if payload_ids(ctx.data)[0] >= 100 else a)

    try:
        with CpuMap(max(a, b) + 1, handler=h, batch_size=64, frames=4096) as m:
            m.update(b, 2)
            m.update(a, 256, program=stage)
            ea = m._entries[a]
            eb = m._entries[b]
            with m.producer(rx_prog) as rx:
                rx.poll(PacketBatch.from_packets([udp_frame(100, 0)]))
                wait_for(lambda: eb.ring.positions()[0] == 1)  # B's worker holds it
                rx.poll(PacketBatch.from_packets([udp_frame(100, s) for s in (1, 2)]))
                assert len(eb.ring) == 2  # B's ring is full
                # Six frames for A in one batch: one passes, five are forwarded to B's
                # full ring and dropped (released only after A commits).
                rx.poll(PacketBatch.from_packets([udp_frame(f, 0) for f in range(6)]))
            h.wait_entered()  # A: stage done (flush included), handler running, no commit
            pid = ea.proc.pid
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: _pid_gone(pid))
            m.poll()  # the supervisor recovers A and restarts it
            os.write(h.gate_b[1], b"xxxx")
            m.wait_idle(5)  # times out today: the five dropped frames have no outcome
            s = m.stats()
            assert s.rx == 9 and s.delivered == 3
            assert s.lost + s.queue_full == 6  # A's uncommitted batch: lost (or counted full)
            assert m.pool.audit().whole
    finally:
        os.write(h.gate_a[1], b"xxxx")
        h.close()


# -- 2. recovery: "tagged for this ring" is ambiguous between in-hand and re-queued -------------
def test_recover_never_releases_a_frame_requeued_during_recovery(monkeypatch) -> None:
    with CpuMap(1) as m:
        m.update(CPU, 64)
        (e,) = m._entries.values()
        e.proc.kill()  # the test plays the worker
        e.proc.join()
        rx = m.producer(lambda ctx: redirect_map(m, CPU), poll_size=4)  # blocks of 4
        rx.receive(flow_batch(1, 10))
        rx.close()
        ring, pool, hand = e.ring, m.pool, m._hands[e.slot]
        got = ring.take(4, hand, pool.tag, TAG_HAND + e.slot).copy()  # 1. take
        rec = e.record.read()  # 3. commit
        rec[K_PROCESSED] += 4
        rec[K_DELIVERED] += 4
        rec[K_COMMITTED] = ring.positions()[0]
        e.record.publish(rec)
        pool.tag[got] = TAG_RETURNED  # 4. release; killed before 5 (hand_n still 4)

        # A producer (another process, in real life) reuses the released block and
        # queues its frames into the same ring just after _recover read the positions.
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
        m._recover(e, drop_queued=False)
        monkeypatch.setattr(Ring, "positions", orig)
        assert not armed[0]
        cons, prod = ring.positions()
        queued = ring.contents(cons, prod)
        assert set(got.tolist()) <= set(queued.tolist())  # they were re-queued
        # Every frame queued in the ring must still belong to the ring.
        assert np.all(pool.tag[queued] == TAG_QUEUED + e.slot), pool.tag[queued]


# -- 3. KthreadRecord: a reader accepts a record the writer is rewriting -------------------------
def test_kthread_record_read_is_never_torn() -> None:
    layout = Layout("review-krec")
    add_counters(layout, 1, 1, 0)
    seg = layout.create()
    writer = KthreadRecord(seg, 0)
    reader = KthreadRecord(seg, 0)
    writer.reset()
    writer.publish(np.zeros(K_WORDS, np.int64))  # seq 1, buffer 1 = all 0

    class Interleave:
        """The reader's view of the buffers: between its first seq load and its copy,
        the writer publishes batch 1 and starts batch 2 (into the reader's buffer)."""

        def __init__(self, real) -> None:
            self.real = real
            self.fired = False

        def __getitem__(self, i):
            if not self.fired:
                self.fired = True
                writer.publish(np.ones(K_WORDS, np.int64))  # seq 2, buffer 0
                self.real[1, : K_WORDS // 2] = 2  # batch 2 half written into buffer 1
            return self.real[i]

    reader._rec = Interleave(reader._rec)
    out = reader.read()
    assert len(set(out.tolist())) == 1, f"torn record: {out.tolist()}"


# -- 4. wait_idle returns between a worker's commit and its release ----------------------------
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
        (e,) = m._entries.values()
        m.run(flow_batch(1, 10), lambda ctx: redirect_map(m, CPU))  # includes wait_idle
        assert e.ring.hand_count() == 0
        assert m.pool.audit().whole


# -- 5. PR_SET_PDEATHSIG is per thread: workers forked by a short-lived thread die with it ------
def test_worker_started_from_a_thread_outlives_the_thread() -> None:
    with CpuMap(1) as m:
        t = threading.Thread(target=m.update, args=(CPU, 64))
        t.start()
        t.join()
        (e,) = m._entries.values()
        assert _stays_alive(e.proc), f"worker died: exitcode {e.proc.exitcode}"


def test_stats_in_a_thread_never_forks_and_the_owner_replaces_the_worker() -> None:
    with CpuMap(1) as m:
        m.update(CPU, 64)
        (e,) = m._entries.values()
        first = e.proc.pid
        os.kill(first, signal.SIGKILL)
        # Reaped, not merely a zombie leader (its other threads may still be exiting).
        wait_for(lambda: not e.proc.is_alive())
        t = threading.Thread(target=m.stats)  # what a metrics scrape does
        t.start()
        t.join()
        assert e.proc.pid == first and e.restarts == 0  # read-only from that thread
        m.poll()  # the map's own thread supervises: recover and replace
        assert e.proc.pid != first and e.restarts == 1
        assert _stays_alive(e.proc), f"replacement died: exitcode {e.proc.exitcode}"


# -- 6. the ring's producer lock: a dead owner that is a zombie is never taken over ------------
def test_producer_takes_over_a_lock_held_by_a_dead_child() -> None:
    with CpuMap(1) as m:
        m.update(CPU, 64)
        (e,) = m._entries.values()
        rx = m.producer(lambda ctx: redirect_map(m, CPU))
        child = os.fork()
        if child == 0:  # a child of the controller (as a worker whose second stage
            e.ring._lock_producers()  # flushes into this ring) dies holding the lock
            os._exit(0)
        wait_for(lambda: at.load_u32(e.ring._lock) == child and _pid_gone(child))
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


# -- 7. frame allocator: a block with a FREE tail is never reclaimed ---------------------------
def test_new_producer_on_a_slot_gets_every_frame_back() -> None:
    gate = Gate()
    try:
        with CpuMap(1, handler=gate, frames=64) as m:  # 4 blocks of 16
            m.update(CPU, 64)
            (e,) = m._entries.values()
            prog = lambda ctx: redirect_map(m, CPU)  # noqa: E731
            with m.producer(prog) as rx:
                rx.poll(flow_batch(1, 1))  # frame 0 of block 0; the other 15 stay free
                wait_for(lambda: e.ring.positions()[0] == 1)
            rx2 = m.producer(prog, frame_wait=0.2)  # same slot, frame 0 still in flight
            gate.open()
            m.wait_idle(10)
            assert m.pool.audit().whole  # every frame is free...
            rx2.poll(flow_batch(1, 64))  # ...so a poll of 64 gets 64 frames
            rx2.close()
            m.wait_idle(10)
            assert m.stats().no_frame == 0
    finally:
        gate.close()


# -- 8. close(): a producer still inside its batch publishes into a force-retired ring ---------
def test_forced_close_loses_no_frame_to_a_producer_still_in_its_batch() -> None:
    gate = Gate()
    try:
        m = CpuMap(1, handler=gate, frames=1024)
        m.update(CPU, 4)
        (e,) = m._entries.values()
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


# -- 9. RX: redirect_map into another map is delivered to this map's entry -----------------------
def test_rx_redirect_into_another_map_is_not_delivered_here() -> None:
    with CpuMap(1, frames=1024) as m, CpuMap(1, frames=1024) as other:
        m.update(CPU, 64)  # ``other`` has no entry at all
        s = m.run(flow_batch(1, 10), lambda ctx: redirect_map(other, CPU))
        assert s.delivered == 0
        assert s.redirect_err + s.xdp_aborted == 10


# -- 10. second stage: two redirect targets in one batch crash the worker ----------------------
class _Sink:
    def __call__(self, batch) -> None:
        return None


def test_second_stage_with_two_targets_in_a_batch_does_not_crash_the_worker() -> None:
    outputs = OutputMap([_Sink()])

    def stage(ctx):
        flow = payload_ids(ctx.data)[0]
        return redirect_map(outputs, 0) if flow % 2 else redirect_map(m, 1)  # key 1 empty

    with CpuMap(2, frames=1024) as m:
        m.update(CPU, 256, program=stage)
        s = m.run(flow_batch(10, 1), lambda ctx: redirect_map(m, CPU))
        assert s.lost == 0, s.outcomes()
        assert m._entries[CPU].restarts == 0
