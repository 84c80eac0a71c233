"""The second stage: a program on the target CPU (the kernel's bpf_cpumap_val.bpf_prog)."""

from __future__ import annotations

import os
import select
import signal

import numpy as np
import pytest

from cpumap import (
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    CpuMap,
    FlowHash,
    MapOptions,
    PacketBatch,
    possible_cpus,
    redirect_map,
    vectorized,
)
from cpumap.capture import open_capture
from cpumap.engine.second_stage import OutputMap
from cpumap.sinks import CaptureSink
from tests.helpers import (
    Collect,
    Gate,
    assert_balanced,
    flow_batch,
    payload_ids,
    pid_gone,
    udp_frame,
    wait_for,
)

pytestmark = pytest.mark.slow

CPUS = sorted(possible_cpus())
CPU = CPUS[0]
A = CPUS[0]
B = CPUS[-1]


def _flow(ctx) -> int:
    return payload_ids(ctx.data)[0]


def test_pass_and_drop_are_counted_like_the_kthread_tracepoint() -> None:
    def stage(ctx):
        return (XDP_PASS, XDP_DROP, XDP_TX, 99)[_flow(ctx) % 4]  # TX and junk drop too

    with CpuMap(max(CPUS) + 1, options=MapOptions(trace_events=1024)) as m:
        m.update(A, 256, program=stage)
        assert m.program_of(A) is stage
        s = m.run(flow_batch(8, 10), FlowHash(m, [A]))
        assert (s.second_stage_pass, s.second_stage_drop, s.delivered) == (20, 60, 20)
        _, kth = m.events()
        assert sum(e.xdp_pass for e in kth) == 20 and sum(e.xdp_drop for e in kth) == 60
        assert sum(e.processed for e in kth) == 80
        assert_balanced(m)


@pytest.mark.parametrize("form", ["per-frame", "vectorized"])
def test_redirect_to_another_entry(form: str) -> None:
    if A == B:
        pytest.skip("needs two CPUs")
    with CpuMap(max(CPUS) + 1, handler=Collect(), options=MapOptions(trace_events=1024)) as m:
        if form == "per-frame":

            def stage(ctx):
                return redirect_map(m, B) if _flow(ctx) % 2 else XDP_PASS

        else:

            @vectorized
            def stage(batch):
                flow = batch.bytes_at(42, 4).copy().view(">u4")[:, 0]
                v = np.where(flow % 2 == 1, XDP_REDIRECT, XDP_PASS).astype(np.uint8)
                return v, np.full(len(batch), B, np.uint32)

        m.update(B, 512)
        m.update(A, 512, program=stage)
        s = m.run(flow_batch(10, 20), FlowHash(m, [A]))
        assert s.second_stage_redirect == 100 and s.second_stage_pass == 100
        assert s.delivered == 200
        assert_balanced(m)
        by_key = {e.key: e for e in s.entries}
        assert by_key[A].xdp_redirect == 100 and by_key[B].delivered == 100
    cpu_of = {(f, q): cpu for r in m.results for f, q, cpu in r.result}
    assert all(cpu_of[(f, q)] == (B if f % 2 else A) for f in range(10) for q in range(20))
    # Order per flow survives the second hop.
    for r in m.results:
        last = {}
        for f, q, _ in r.result:
            assert q == last.get(f, -1) + 1
            last[f] = q


def test_redirect_to_an_empty_entry_or_a_full_ring_is_counted() -> None:
    if A == B:
        pytest.skip("needs two CPUs")
    gate = Gate()  # the map's handler: B's worker blocks on its first frame
    empty = max(CPUS) + 1  # in range, never populated: xdp_do_redirect fails
    with CpuMap(max(CPUS) + 2, handler=gate) as m:

        def stage(ctx):
            return redirect_map(m, empty if _flow(ctx) % 2 else B)

        m.update(B, 4)
        m.update(A, 1024, program=stage)
        entry_b = m.entry(B)
        with m.producer(FlowHash(m, [A]), backpressure=10) as rx:
            rx.poll(flow_batch(2, 1))  # one even frame reaches B, whose worker blocks
            wait_for(lambda: entry_b.ring.positions()[0] == 1)
            rx.poll(flow_batch(10, 10))  # 50 more for B's ring of 4, 50 for nowhere
        wait_for(lambda: m.stats().second_stage_drop == 51)
        gate.open()
        s = assert_balanced(m)
        assert s.rx == 102
        assert s.second_stage_drop == 51  # every odd flow's frame
        assert s.delivered + s.queue_full == 51  # B got what fitted, the rest dropped
        assert s.delivered <= 1 + 4 and s.queue_full >= 46
    gate.close()


def test_redirect_to_outputs(tmp_path) -> None:
    outputs = OutputMap([CaptureSink(tmp_path / "even"), CaptureSink(tmp_path / "odd")])

    @vectorized
    def stage(batch):
        flow = batch.bytes_at(42, 4).copy().view(">u4")[:, 0]
        return (np.full(len(batch), XDP_REDIRECT, np.uint8), (flow % 2).astype(np.uint32), outputs)

    with CpuMap(max(CPUS) + 1) as m:
        m.update(A, 256, program=stage)
        s = m.run(flow_batch(6, 5), FlowHash(m, [A]))
        assert s.redirected_out == 30 and s.delivered == 0
        assert_balanced(m)
    reports = [o for r in m.results for o in r.outputs]
    assert sorted(o["packets"] for o in reports) == [15, 15]
    for sub, parity in (("even", 0), ("odd", 1)):
        (f,) = (tmp_path / sub).glob("cpu*.pcapng")
        with open_capture(f) as r:
            flows = {payload_ids(p.data)[0] % 2 for p in r}
        assert flows == {parity}


def test_second_stage_exception_drops_the_batch() -> None:
    @vectorized
    def stage(batch):
        raise RuntimeError("bug in the second stage")

    with CpuMap(max(CPUS) + 1) as m:
        m.update(A, 256, program=stage)
        s = m.run(flow_batch(3, 10), FlowHash(m, [A]))
        assert s.second_stage_drop == 30 and s.delivered == 0
        assert_balanced(m)


def test_a_redirect_to_another_map_is_a_drop() -> None:
    """A worker knows its own map by its control segment (it is handed no map object); a
    second stage's redirect to any other map is dropped, as one it cannot reach."""
    with CpuMap(max(CPUS) + 1) as other, CpuMap(max(CPUS) + 1) as m:
        other.update(B, 256)
        if B != A:
            m.update(B, 256)  # the same key in this map: a redirect taken here would work
        m.update(A, 256, program=lambda ctx: redirect_map(other, B))
        s = m.run(flow_batch(2, 5), FlowHash(m, [A]))
        assert s.second_stage_drop == 10 and s.second_stage_redirect == 0 and s.delivered == 0
        assert_balanced(m)
        assert other.stats().kthread_processed == 0


def test_retiring_a_redirect_target_under_traffic_loses_nothing() -> None:
    """A worker that redirects is a producer too: the target's grace period waits for it."""
    if A == B:
        pytest.skip("needs two CPUs")
    with CpuMap(max(CPUS) + 1, batch_size=16) as m:

        def stage(ctx):
            return redirect_map(m, B)

        m.update(B, 1024)
        m.update(A, 1024, program=stage)
        with m.producer(FlowHash(m, [A]), backpressure=10) as rx:
            for i in range(40):
                rx.poll(flow_batch(8, 8))
                if i % 5 == 0:
                    m.update(B, 1024)  # replace the target while A's worker feeds it
        s = assert_balanced(m)
        assert s.rx == 40 * 64
        assert s.lost == 0


def test_update_rejects_a_non_callable_program() -> None:
    with CpuMap(max(CPUS) + 1) as m, pytest.raises(TypeError):
        m.update(A, 16, program=42)


# -- crash safety: frames dropped at a full target ring are recovered when the worker dies --
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
            ea = m.entry(a)
            eb = m.entry(b)
            with m.producer(rx_prog) as rx:
                rx.poll(PacketBatch.from_packets([udp_frame(100, 0)]))
                wait_for(lambda: eb.ring.positions()[0] == 1)  # B's worker holds it
                rx.poll(PacketBatch.from_packets([udp_frame(100, s) for s in (1, 2)]))
                assert len(eb.ring) == 2  # B's ring is full
                # Six frames for A in one batch: one passes, five are forwarded to B's
                # full ring and dropped (released only after A commits).
                rx.poll(PacketBatch.from_packets([udp_frame(f, 0) for f in range(6)]))
            h.wait_entered()  # A: stage done (flush included), handler running, no commit
            pid = ea.life.worker.pid
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: pid_gone(pid))
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


# -- two redirect targets in one batch: the second is a failed redirect, the worker lives ------
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
        assert m.entry(CPU).life.restarts == 0
