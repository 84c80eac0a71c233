"""The supervisor thread on its own: it runs forks for other threads, and a watched
process's exit wakes it at once (not at its next tick)."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from cpumap.engine.watcher import SupervisorThread


def _thread(supervise=lambda: True, pids=list, tick: float = 0.05) -> SupervisorThread:
    t = SupervisorThread(supervise, pids, tick=tick)
    t.start()
    return t


def test_call_runs_on_the_thread_and_carries_results_and_errors() -> None:
    t = _thread()
    try:
        assert t.call(lambda: threading.current_thread().name) == "cpumap-supervisor"
        with pytest.raises(ZeroDivisionError):
            t.call(lambda: 1 / 0)
        assert t.call(t.on_thread) is True and not t.on_thread()
    finally:
        t.stop()
    assert not t.alive
    assert t.call(lambda: 7) == 7  # stopped: runs in the caller


def test_a_fork_is_on_a_long_lived_thread_while_the_thread_runs_or_from_main() -> None:
    def from_other_thread(t: SupervisorThread) -> bool:
        seen: list[bool] = []
        other = threading.Thread(target=lambda: seen.append(t.forks_on_long_lived_thread()))
        other.start()
        other.join()
        return seen[0]

    idle = SupervisorThread(lambda: True, list)  # never started (a map without supervision)
    try:
        # call() then forks in the caller: the main thread lives as long as the process.
        assert idle.forks_on_long_lived_thread() and not from_other_thread(idle)
    finally:
        idle.stop()
    t = _thread()
    try:
        assert t.forks_on_long_lived_thread() and from_other_thread(t)
    finally:
        t.stop()
    assert not from_other_thread(t)


def test_a_busy_supervision_is_retried_and_ticks_go_on() -> None:
    calls = []
    t = _thread(lambda: calls.append(time.monotonic()) or len(calls) > 3, tick=0.01)
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) >= 10
    finally:
        t.stop()


@pytest.mark.slow
def test_a_watched_process_exit_wakes_the_thread_before_its_tick() -> None:
    proc = subprocess.Popen(["sleep", "0.3"])
    woke: list[float] = []
    t = _thread(lambda: woke.append(time.monotonic()) or True, lambda: [proc.pid], tick=30.0)
    try:
        t0 = time.monotonic()
        proc.wait()
        deadline = time.monotonic() + 20
        while not woke and time.monotonic() < deadline:
            time.sleep(0.005)
        assert woke, "the exit did not wake the thread"
        assert woke[0] - t0 < 20  # its tick is 30 s: the pidfd woke it
    finally:
        t.stop()
