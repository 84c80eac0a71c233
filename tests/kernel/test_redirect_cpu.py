"""``KernelSteering`` for real: our steering programs on a veth's XDP hook, redirecting into a
kernel cpumap, with traffic from ``TrafficGen`` out of the other end.

The per-key counts the kernel reports must equal the Python form's decisions over the same
frames in the same order (the generator sends its frames in turn, from one CPU, so the
steering program runs on that CPU in that order: round-robin turns alike).  What reached
each CPU (the second stage's per-CPU count) must equal what was redirected there less the
enqueue drops the ``xdp_cpumap_enqueue`` tracepoint reports for it.  Closing detaches, and
so does the death of the owning process.  Every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator

import pytest

from cpumap.abi import XDP_REDIRECT
from cpumap.generator import Generator
from cpumap.kernel import (
    GenOptions,
    KernelArrayMap,
    SteeringSpec,
    TraceInstance,
    TrafficGen,
    possible_cpus,
    tracing_unavailable_reason,
)
from cpumap.kernel.redirect_cpu import KernelSteering
from cpumap.kernel.xdp import attach, counting_program, link_state, pass_program
from cpumap.live.netns import VethPair
from tests.helpers import veth_unavailable, wait_for
from tests.kernel.python_forms import PythonForm
from tests.kernel.test_steering_bpf import crafted, eth, ipv4, udp

_REASON = veth_unavailable("network namespaces and bpf(2)", bpf=True)
_TRACE = tracing_unavailable_reason() if _REASON is None else _REASON
pytestmark = [pytest.mark.root, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

CPUS = sorted(possible_cpus())
ROUNDS = 8  # the table is sent this many times
DEADLINE_S = 10.0


def frames() -> list[bytes]:
    """Mixed traffic and the crafted frames that decide otherwise (ARP, 802.3, port 9, QinQ,
    fragments, extension headers): every verdict a mode can give.  Frame i comes 1 + i % 13
    times in a row, so that frames swapped between CPUs change the per-CPU totals (with equal
    weights, a wrong hash seed was seen to give the very same totals)."""
    gen = Generator(flows=40, sizes=(64, 200), vlan=(None, 9), count=80, undersize="clamp")
    mixed = [bytes(p.data) for p in gen.packets()]
    distinct = mixed + [f + bytes(max(0, 60 - len(f))) for f in crafted()]
    return [f for i, f in enumerate(distinct) for _ in range(1 + i % 13)]


@pytest.fixture(scope="module")
def python_form() -> Iterator[PythonForm]:
    form = PythonForm(max(CPUS) + 1)
    yield form
    form.close()


def steer(pair: VethPair, spec: SteeringSpec, **kw: object) -> KernelSteering:
    with pair.in_peer():  # the interface is resolved in the calling thread's namespace
        return KernelSteering(pair.peer.ifname, spec, **kw)  # type: ignore[arg-type]


def generator(pair: VethPair, table: list[bytes]) -> TrafficGen:
    with pair.in_local():
        return TrafficGen(pair.local.ifname, table)


def expected_counts(form: PythonForm, spec: SteeringSpec, table: list[bytes]):
    """The Python form's outcomes over the stream the generator sends: the table in turn."""
    got = form.decisions(spec.mode, spec.cpus, table * ROUNDS)
    redirected = Counter(k for v, k in got if v == XDP_REDIRECT)
    verdicts = Counter(v for v, _ in got if v != XDP_REDIRECT)
    return dict(redirected), {int(v): n for v, n in verdicts.items()}


def enqueue_drops_by_cpu(tr: TraceInstance) -> tuple[Counter[int], Counter[int]]:
    """(frames flushed towards each CPU's ring, frames of them dropped there)."""
    flushed: Counter[int] = Counter()
    dropped: Counter[int] = Counter()
    for e in tr.drain():
        if e.name == "xdp_cpumap_enqueue":
            flushed[int(e.fields["to_cpu"])] += int(e.fields["processed"])
            dropped[int(e.fields["to_cpu"])] += int(e.fields["drops"])
    return flushed, dropped


MODES = [
    ("l4-hash", [0, 1, 1]),
    ("l4-sport", [1, 0]),
    ("l4-dport", [0, 1, 0]),
    ("l4-proto", [1, 0, 1]),
    ("l4-filter", [0, 1]),
    ("round-robin", [0, 1, 1, 0, 1]),
    ("touch", [1]),
    ("no-touch", [0]),
]


@pytest.mark.skipif(_TRACE is not None, reason=_TRACE or "")
@pytest.mark.parametrize(("mode", "cpus"), MODES, ids=[m for m, _ in MODES])
def test_per_cpu_counts_equal_the_python_forms_decisions(
    veth: VethPair, python_form: PythonForm, mode: str, cpus: list[int]
) -> None:
    cpus = [c % len(CPUS) for c in cpus]
    spec = SteeringSpec.of(mode, [CPUS[c] for c in cpus])
    table = frames()
    redirected, verdicts = expected_counts(python_form, spec, table)
    rx_cpu = CPUS[-1]
    with steer(veth, spec, qsize=256) as ks, generator(veth, table) as gen:
        assert gen.napi_problem() is None
        with TraceInstance(filter=f"map_id == {ks.cpumap.map_id}") as tr:
            res = gen.run(GenOptions(count=len(table) * ROUNDS, cpu=rx_cpu))
            # The peer's NAPI runs on the sending CPU between the test run's batches of 64,
            # fewer than its ring of 256 holds: no frame is lost before our program.
            assert res.drops == 0 and res.sent == len(table) * ROUNDS
            counts = ks.counts()
            assert counts.redirected == redirected
            assert counts.verdicts == verdicts
            assert counts.frames == res.sent
            assert ks.rx_cpus() == {rx_cpu: res.sent}  # all ran on the sending CPU
            flushed: Counter[int] = Counter()
            dropped: Counter[int] = Counter()

            def arrived() -> bool:
                f, d = enqueue_drops_by_cpu(tr)
                flushed.update(f)
                dropped.update(d)
                want = {c: n - dropped[c] for c, n in redirected.items() if n > dropped[c]}
                return flushed == Counter(redirected) and ks.delivered() == want

            wait_for(arrived, DEADLINE_S)
            assert tr.lost_events() == 0


def test_remote_redirect_sends_each_frame_out_of_the_device(veth: VethPair) -> None:
    """The second stage redirects out of the peer itself: the frames come back to the local
    end, where an XDP program counts them (and gives it NAPI)."""
    spec = SteeringSpec.of("l4-sport", CPUS)
    table = [eth(0x0800) + ipv4(17, udp(port, 7)) + bytes(18) for port in range(32)]
    with KernelArrayMap(1, percpu=True) as back, counting_program(back) as counter:
        with veth.in_local():
            link = attach(veth.local.ifname, counter)
        ks = steer(veth, spec, remote_action="redirect", redirect_to=veth.peer.ifname)
        with link, ks, generator(veth, table) as gen:
            res = gen.run(GenOptions(count=len(table) * ROUNDS, cpu=CPUS[0]))
            assert sum(ks.counts().redirected.values()) == res.sent - res.drops

            def peer_dropped() -> int:
                with veth.in_peer():
                    return link_state(veth.peer.ifname).tx_dropped

            # Every frame delivered to a CPU went out of the peer: counted back, or dropped
            # at the peer's transmit (the local end's ring full).
            wait_for(lambda: back.lookup(0) + peer_dropped() == sum(ks.delivered().values()))
            assert back.lookup(0) > 0


def test_remote_pass_hands_frames_to_the_netstack(veth: VethPair) -> None:
    spec = SteeringSpec.of("no-touch", [CPUS[-1]])
    table = [eth(0x0800) + ipv4(17, udp(9, 9)) + bytes(18)]
    with steer(veth, spec, remote_action="pass") as ks, generator(veth, table) as gen:
        res = gen.run(GenOptions(count=500, cpu=CPUS[0]))
        assert ks.counts().redirected == {CPUS[-1]: res.sent - res.drops}
        wait_for(lambda: 0 < sum(ks.delivered().values()) <= res.sent)


def test_close_detaches(veth: VethPair) -> None:
    ks = steer(veth, SteeringSpec.of("l4-hash", CPUS))
    with veth.in_peer():
        assert link_state(veth.peer.ifname).xdp_prog_id == ks.program.prog_id
    ks.close()
    ks.close()  # idempotent
    with veth.in_peer():
        assert link_state(veth.peer.ifname).xdp_prog_id == 0
        with pass_program() as prog, attach(veth.peer.ifname, prog):  # the hook is free
            pass


@pytest.mark.slow
def test_a_killed_owner_leaves_nothing_attached(veth: VethPair) -> None:
    """The owner dies by SIGKILL: no close, no finalizer; the link fd goes with it."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from cpumap.kernel import SteeringSpec
        from cpumap.kernel.redirect_cpu import KernelSteering
        ks = KernelSteering({veth.peer.ifname!r}, SteeringSpec.of("l4-hash", {CPUS!r}))
        print(ks.program.prog_id, flush=True)
        time.sleep(60)
        """
    )
    cmd = ["ip", "netns", "exec", str(veth.peer.netns), sys.executable, "-c", code]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        prog_id = int(proc.stdout.readline())  # type: ignore[union-attr]
        with veth.in_peer():
            assert link_state(veth.peer.ifname).xdp_prog_id == prog_id
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE_S)
        proc.stdout.close()  # type: ignore[union-attr]
    with veth.in_peer():
        wait_for(lambda: link_state(veth.peer.ifname).xdp_prog_id == 0, DEADLINE_S)


@pytest.mark.parametrize(
    ("cpus", "kw", "words"),
    [
        ([max(CPUS) + 1], {}, f"CPU {max(CPUS) + 1} is not possible here: choose CPUs among"),
        (CPUS, {"qsize": 0}, "qsize must be in 1..16384 frames, got 0"),
        (CPUS, {"qsize": 16385}, "qsize must be in 1..16384 frames, got 16385"),
        (CPUS, {"remote_action": "bounce"}, "remote action must be one of drop, pass, redirect"),
        (CPUS, {"remote_action": "redirect"}, "redirect_to names the device of remote action"),
        (CPUS, {"redirect_to": "lo"}, "redirect_to names the device of remote action"),
    ],
)
def test_refusals_name_the_fix(cpus: list[int], kw: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        KernelSteering("lo", SteeringSpec.of("l4-hash", cpus), **kw)
