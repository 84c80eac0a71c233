"""Randomized fault injection: hundreds of trials, each killing, stopping or interrupting a
producer, a worker or a forwarding worker at a random moment under traffic, lossless and
lossy.  After every trial the identity is exact and the pool whole; at the end nothing is
left behind (the ``no_leaks`` fixture).

One map serves every trial (forking a map's workers per trial would cost most of the time
budget): entry A forwards half of its frames to entry B from its second stage, so a
killed A is a forwarding worker killed mid-forward.  The test stops after
``CPUMAP_FAULT_TRIALS`` trials (default 200) or ``CPUMAP_FAULT_SECONDS`` (default 150 s),
whichever comes first, and must have run at least 200 trials unless the time ran out on a
machine too loaded to do them; it prints what ran.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from cpumap import CpuMap, possible_cpus, vectorized
from cpumap.abi import XDP_PASS, XDP_REDIRECT
from tests.engine.fault_tools import kill_and_reap, producer_process, settled, traffic

pytestmark = pytest.mark.slow

CPUS = sorted(possible_cpus())
TRIALS = int(os.environ.get("CPUMAP_FAULT_TRIALS", "200"))
SECONDS = float(os.environ.get("CPUMAP_FAULT_SECONDS", "150"))
KINDS = (
    "worker_kill",  # B's worker: SIGKILL
    "forwarder_kill",  # A's worker, whose second stage forwards to B: SIGKILL
    "worker_stop",  # a worker SIGSTOPped for a while, then continued
    "producer_kill",  # a producer process: SIGKILL
    "producer_stop_kill",  # a producer process: SIGSTOP, then SIGKILL while stopped
    "interrupt",  # KeyboardInterrupt in the controller's own poll (Ctrl-C)
)


def _programs(a: int, b: int):
    """RX: half the frames to A, half to B.  A's second stage: half passed, half to B."""

    @vectorized
    def rx_program(batch):
        n = len(batch)
        keys = np.where(np.arange(n) % 2 == 0, a, b).astype(np.uint32)
        return np.full(n, XDP_REDIRECT, np.uint8), keys

    @vectorized
    def forward(batch):
        n = len(batch)
        v = np.where(np.arange(n) % 2 == 0, XDP_PASS, XDP_REDIRECT).astype(np.uint8)
        return v, np.full(n, b, np.uint32)

    return rx_program, forward


class _Interrupt:
    """SIGALRM raises KeyboardInterrupt in the main thread, as Ctrl-C would, when armed."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, signum, frame) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    def arm(self, after: float) -> None:
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, after)

    def disarm(self) -> None:
        self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two possible CPUs")
def test_random_faults_under_traffic_keep_every_frame_accounted_for() -> None:
    rng = random.Random(int(os.environ.get("CPUMAP_FAULT_SEED", "9")))
    a, b = CPUS[0], CPUS[1]
    rx_program, forward = _programs(a, b)
    batches = traffic(4096, batch=256)
    interrupt = _Interrupt()
    old_handler = signal.signal(signal.SIGALRM, interrupt)
    ran: collections.Counter[tuple[str, str]] = collections.Counter()
    t0 = time.monotonic()
    try:
        with CpuMap(
            max(CPUS) + 1, producers=3, batch_size=64, frames=3 * 8192, restart_burst=1e9
        ) as m:
            m.update(b, 256)
            m.update(a, 256, program=forward)
            own = {
                "lossy": m.producer(rx_program, index=0),
                "lossless": m.producer(rx_program, index=1, backpressure=30.0),
            }
            while len(ran) == 0 or sum(ran.values()) < TRIALS:
                if time.monotonic() - t0 > SECONDS:
                    break
                kind = rng.choice(KINDS)
                mode = rng.choice(("lossy", "lossless"))
                _trial(m, rng, kind, mode, own[mode], rx_program, batches, interrupt, a, b)
                settled(m, 60)
                ran[kind, mode] += 1
            for rx in own.values():
                rx.close()
            s = settled(m, 60)
    finally:
        interrupt.disarm()
        signal.signal(signal.SIGALRM, old_handler)
    elapsed = time.monotonic() - t0
    total = sum(ran.values())
    kinds = collections.Counter(k for k, _ in ran.elements())
    print(
        f"\n{total} fault trials in {elapsed:.1f}s; by kind {dict(kinds)}; "
        f"lossless {sum(v for (k, md), v in ran.items() if md == 'lossless')}; "
        f"rx {s.rx}, lost {s.lost}, aborted {s.xdp_aborted}, worker deaths {s.worker_deaths}, "
        f"producer deaths {s.producer_deaths}"
    )
    assert total >= min(TRIALS, 200) or elapsed > SECONDS, (total, elapsed)
    assert len(kinds) == len(KINDS)
    assert s.worker_deaths > 0 and s.producer_deaths > 0 and s.xdp_aborted > 0


def _trial(m, rng, kind, mode, rx, program, batches, interrupt, a, b) -> None:
    """Traffic for a few tens of ms with one fault at a random moment in it."""
    at = rng.uniform(0.0, 0.04)
    if kind.startswith("producer"):
        _producer_fault(m, rng, kind, mode, program, batches, at)
        return
    if kind == "interrupt":
        _feed(rx, rng, batches, at + 0.02, interrupt=(interrupt, at))
        return
    key = a if kind == "forwarder_kill" else rng.choice((a, b)) if kind == "worker_stop" else b
    pid = m.entry(key).worker.pid
    fault = threading.Timer(at, _signal_worker, args=(kind, pid, rng.uniform(0.005, 0.05)))
    fault.start()
    try:
        _feed(rx, rng, batches, at + 0.02)
    finally:
        fault.join()


def _signal_worker(kind: str, pid: int, pause: float) -> None:
    try:
        if kind == "worker_stop":
            os.kill(pid, signal.SIGSTOP)
            time.sleep(pause)
            os.kill(pid, signal.SIGCONT)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _feed(rx, rng, batches, seconds, interrupt=None) -> None:
    """Feed batches from a random place for ``seconds`` (Ctrl-C: ends the feeding)."""
    deadline = time.monotonic() + seconds
    i = rng.randrange(len(batches))
    if interrupt is not None:
        interrupt[0].arm(max(interrupt[1], 1e-4))
    try:
        while time.monotonic() < deadline:
            rx.receive(batches[i % len(batches)])
            i += 1
        if interrupt is not None:  # not fired yet: wait for it in a poll
            while interrupt[0].armed:
                rx.receive(batches[i % len(batches)])
                i += 1
    except KeyboardInterrupt:
        pass
    finally:
        if interrupt is not None:
            interrupt[0].disarm()


def _producer_fault(m, rng, kind, mode, program, batches, at) -> None:
    options = {"backpressure": 30.0} if mode == "lossless" else {}
    proc = producer_process(m, program, batches, index=2, **options)
    time.sleep(at)
    if kind == "producer_stop_kill":
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(rng.uniform(0.0, 0.02))
    kill_and_reap(proc)
    # The supervisor thread recovers its partition; wait for that before the next claim
    # (a new producer on the slot would recover it itself, which is fine too).
    deadline = time.monotonic() + 30
    while m.registry.owner(2) and time.monotonic() < deadline:
        time.sleep(0.002)
