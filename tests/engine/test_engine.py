"""End to end through real processes and shared memory: programs, verdicts, flushes,
worker batches, sleep and wake-up, and the accounting identity."""

from __future__ import annotations

import numpy as np
import pytest

from cpumap import (
    XDP_ABORTED,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    CpuMap,
    FlowHash,
    MapOptions,
    PacketBatch,
    batch_handler,
    possible_cpus,
    redirect_map,
    vectorized,
)
from tests.helpers import (
    Collect,
    Gate,
    assert_balanced,
    flow_batch,
    payload_ids,
    udp_frame,
    wait_for,
)

pytestmark = pytest.mark.slow

CPUS = sorted(possible_cpus())
CPU = CPUS[0]


def test_every_verdict_is_counted_once() -> None:
    verdict_of = [XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT]

    with CpuMap(2) as m:
        m.update(CPU, 256)

        def prog(ctx):
            flow, _ = payload_ids(ctx.data)
            v = verdict_of[flow % 5]
            return redirect_map(m, CPU) if v == XDP_REDIRECT else v

        s = m.run(flow_batch(5, 20), prog)
        assert (s.xdp_aborted, s.xdp_drop, s.xdp_pass, s.xdp_tx, s.delivered) == (20,) * 5
        assert s.rx == 100
        assert_balanced(m)


def test_vectorized_program_and_invalid_verdicts() -> None:
    @vectorized
    def prog(batch):
        v = np.array([7, XDP_DROP, XDP_REDIRECT, 255], dtype=np.int64)[np.arange(len(batch)) % 4]
        return v, np.full(len(batch), CPU)

    with CpuMap(2) as m:
        m.update(CPU, 256)
        s = m.run(flow_batch(4, 25), prog)
        assert (s.xdp_aborted, s.xdp_drop, s.delivered) == (50, 25, 25)
        assert_balanced(m)


def test_program_exceptions_and_garbage_are_aborted() -> None:
    def per_frame(ctx):
        flow, _ = payload_ids(ctx.data)
        if flow == 0:
            raise ValueError("bug in the program")
        return "not a verdict" if flow == 1 else True  # a bool is not a verdict either

    @vectorized
    def batch_raises(batch):
        raise RuntimeError("bug")

    @vectorized
    def batch_garbage(batch):
        return [1, 2]  # wrong length

    with CpuMap(2) as m:
        m.update(CPU, 64)
        for prog in (per_frame, batch_raises, batch_garbage):
            s0 = m.stats().xdp_aborted
            m.run(flow_batch(3, 10), prog)
            assert m.stats().xdp_aborted - s0 == 30
        assert_balanced(m)


def test_redirect_to_missing_entry_is_a_redirect_error() -> None:
    @vectorized
    def prog(batch):
        keys = np.where(np.arange(len(batch)) % 2 == 0, CPU, 1)  # key 1 empty or absent
        keys[::5] = 1000  # out of range
        return np.full(len(batch), XDP_REDIRECT), keys

    with CpuMap(1) as m:
        m.update(CPU, 256)
        s = m.run(flow_batch(10, 10), prog)
        assert s.redirect_err == 100 - s.delivered
        assert s.delivered == len([i for i in range(100) if i % 2 == 0 and i % 5])
        assert_balanced(m)


def test_redirect_map_flags_fallback_action() -> None:
    with CpuMap(2) as m:
        m.update(0, 64)  # key 1 stays empty

        def prog(ctx):
            flow, _ = payload_ids(ctx.data)
            return redirect_map(m, flow % 2, XDP_PASS)  # empty entry: fall back to PASS

        s = m.run(flow_batch(2, 5), prog)
        assert (s.xdp_pass, s.delivered, s.redirect_err) == (5, 5, 0)
        assert_balanced(m)


def test_queue_full_drops_at_flush_are_counted_and_returned() -> None:
    gate = Gate()
    with CpuMap(1, handler=gate, batch_size=1, options=MapOptions(trace_events=1024)) as m:
        m.update(CPU, 32)
        entry = m.entry(CPU)
        with m.producer(lambda ctx: redirect_map(m, CPU), bulk_size=8) as rx:
            rx.poll(flow_batch(1, 1))
            wait_for(lambda: entry.ring.positions()[0] == 1)  # the worker holds frame 0
            rx.poll(flow_batch(1, 100))  # 13 flushes into a ring of 32
        gate.open()
        s = assert_balanced(m)
        assert (s.rx, s.delivered, s.queue_full) == (101, 33, 68)
        enq, kth = m.events()
        assert [e.processed for e in enq] == [1] + [8] * 12 + [4]
        assert [e.drops for e in enq] == [0] * 5 + [8] * 8 + [4]  # 1 + 4*8 = 33 fit
        assert all(e.to_cpu == CPU and e.map_id == m.map_id for e in enq)
        assert sum(e.processed for e in kth) == 33
        assert all(e.processed == 1 for e in kth)  # batch_size 1
    gate.close()


@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_worker_batches_respect_batch_size(batch_size: int) -> None:
    gate = Gate()
    with CpuMap(1, handler=gate, batch_size=batch_size, options=MapOptions(trace_events=4096)) as m:
        m.update(CPU, 1024)
        entry = m.entry(CPU)
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(1, 1))
            wait_for(lambda: entry.ring.positions()[0] == 1)
            rx.poll(flow_batch(10, 50))  # 500 frames wait while the worker is held
        gate.open()
        s = assert_balanced(m)
        _, kth = m.events()
        assert sum(e.processed for e in kth) == 501 == s.kthread_processed
        assert max(e.processed for e in kth) == batch_size
        # Everything was queued before the worker resumed: full batches, then the rest.
        sizes = [e.processed for e in kth[1:]]
        assert sizes == [batch_size] * (500 // batch_size) + (
            [500 % batch_size] if 500 % batch_size else []
        )
    gate.close()


def test_handler_drops_and_errors_are_kthread_drops() -> None:
    def handler(skb):
        flow, _ = payload_ids(skb.data)
        if flow == 0:
            return False
        if flow == 1:
            raise KeyError("handler bug")
        return True

    with CpuMap(1, handler=handler, options=MapOptions(trace_events=256)) as m:
        m.update(CPU, 256)
        s = m.run(flow_batch(4, 10), FlowHash(m, [CPU]))
        assert (s.handler_drop, s.handler_error, s.delivered) == (10, 10, 20)
        assert s.kthread_drops == 20
        _, kth = m.events()
        assert sum(e.drops for e in kth) == 20
        assert_balanced(m)


def test_batch_handler_verdicts() -> None:
    @batch_handler
    def keep_even(batch):
        return (batch.length % 2) == 0

    @batch_handler
    def wrong(batch):
        return [True]

    sizes = [64, 65] * 50
    pb = PacketBatch.from_packets([udp_frame(i, 0, size) for i, size in enumerate(sizes)])
    for handler, expected in ((keep_even, (50, 50, 0)), (wrong, (0, 0, 100))):
        with CpuMap(1, handler=handler) as m:
            m.update(CPU, 256)
            s = m.run(pb, FlowHash(m, [CPU], vectorized=False))
            assert (s.delivered, s.handler_drop, s.handler_error) == expected
            assert_balanced(m)


def test_no_wakeup_is_lost() -> None:
    """Many short bursts, each arriving as the worker goes back to sleep.  With a 60 s
    safety-net timeout a lost wake-up would stall a burst; every burst is waited for
    with a 10 s deadline, and the worker reports no timeout that found work."""
    with CpuMap(1, options=MapOptions(idle_timeout=60)) as m:
        m.update(CPU, 64)
        one = flow_batch(1, 3)
        with m.producer(FlowHash(m, [CPU])) as rx:
            for _ in range(300):
                rx.poll(one)
                m.wait_idle(10)
        s = assert_balanced(m)
        assert s.delivered == 900
        assert s.late_wakeups == 0
        assert s.kthread_sched > 0  # it did go to sleep between bursts


def test_frames_reach_the_handler_intact_and_in_order() -> None:
    with CpuMap(2, handler=Collect()) as m:
        for cpu in CPUS[:2]:
            m.update(cpu, 512)
        s = m.run(flow_batch(16, 40), FlowHash(m, CPUS[:2]))
        assert s.delivered == 640
    seen = [t for r in m.results for t in r.result]
    assert sorted((f, q) for f, q, _ in seen) == [(f, q) for f in range(16) for q in range(40)]
    cpu_of = {}
    for flow, _seq, cpu in seen:
        assert cpu_of.setdefault(flow, cpu) == cpu  # one flow, one CPU
    for r in m.results:
        last = {}
        for flow, seq, _ in r.result:
            assert seq == last.get(flow, -1) + 1  # per-flow order
            last[flow] = seq
