"""What the fault tests share: producer processes to kill, handlers that crash or stall,
and the check every fault test ends with (identity exact, pool whole)."""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpumap import CpuMap, MapStats, PacketBatch
from cpumap.generator import Generator
from tests.helpers import pid_gone

_MP = multiprocessing.get_context("fork")


def traffic(n: int, seed: int = 1, batch: int = 1024) -> list[PacketBatch]:
    """``n`` generated frames (256 flows, three sizes), in batches of ``batch``."""
    gen = Generator(flows=256, sizes=(64, 512, 1400), count=n, seed=seed, undersize="clamp")
    return list(gen.batches(batch))


def settled(m: CpuMap, timeout: float = 60.0) -> MapStats:
    """Wait for a quiescent point; then the identity must be exact and the pool whole."""
    m.wait_idle(timeout)
    s = m.stats()
    assert s.in_flight == 0, (s.rx, s.outcomes())
    assert s.rx == sum(s.outcomes().values())
    audit = m.pool.audit()
    assert audit.whole, audit
    return s


def wait_until(cond: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``cond`` (no map call in it unless the test means it) until it holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not in {timeout}s: {what}"
        time.sleep(0.002)


class CrashOnce:
    """A per-skb handler whose worker kills itself with ``sig`` at its ``at``-th frame,
    once per map (a file marks that it happened: the replacement must not crash)."""

    def __init__(self, flag: Path, at: int = 100, sig: int = signal.SIGSEGV) -> None:
        self.flag = str(flag)
        self.at = at
        self.sig = sig
        self.n = 0

    def __call__(self, skb: Any) -> None:
        self.n += 1
        if self.n == self.at and not os.path.exists(self.flag):
            with open(self.flag, "w"):
                pass
            faulthandler.disable()  # a deliberate crash: no traceback dump in the test log
            os.kill(os.getpid(), self.sig)


def kill_and_reap(proc: Any, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to a multiprocessing child and, for SIGKILL, wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    if sig == signal.SIGKILL:
        proc.join(30)
        assert not proc.is_alive()


def producer_process(
    m: CpuMap, program: Any, batches: list[PacketBatch], *, loops: int = 10**9, **options: Any
) -> Any:
    """A forked RX producer feeding ``batches`` ``loops`` times (for ever, by default),
    then exiting.  Returns once the child has claimed its producer slot."""
    ready = _MP.Event()

    def run() -> None:
        rx = m.producer(program, **options)
        ready.set()
        for _ in range(loops):
            for b in batches:
                rx.receive(b)
        rx.close()

    proc = _MP.Process(target=run, daemon=True)
    proc.start()
    assert ready.wait(30), "the producer process did not start"
    return proc


def worker_pid(m: CpuMap, key: int) -> int:
    """The pid of ``key``'s current worker (0: none), read without supervising."""
    w = m.entry(key).life.worker
    return w.pid if w is not None else 0


def wait_replaced(m: CpuMap, key: int, old_pid: int, timeout: float = 30.0) -> int:
    """Wait (without calling stats or poll) for ``key``'s worker to be a new live one."""
    wait_until(
        lambda: worker_pid(m, key) not in (0, old_pid) and not pid_gone(worker_pid(m, key)),
        timeout,
        "the worker was not replaced",
    )
    return worker_pid(m, key)
