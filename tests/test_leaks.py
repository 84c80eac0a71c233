"""The leak check every test runs under (conftest.py) can fail: shown on deliberate leaks,
run through pytest itself so that it is the real fixture that catches them."""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import live_children, memfd_holders, pid_gone

pytestmark = pytest.mark.slow

LEAKY = textwrap.dedent(
    """
    import os, time
    import pytest
    from cpumap.shm import Layout

    def test_orphan_keeps_a_segment_mapped(tmp_path):
        # A grandchild, re-parented away from this process: no child check can see it.
        seg = Layout("leak").create()
        child = os.fork()
        if child == 0:
            if os.fork() == 0:
                with open({pidfile!r}, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(60)
            os._exit(0)
        os.waitpid(child, 0)
        deadline = time.monotonic() + 10
        while not os.path.exists({pidfile!r}) or not open({pidfile!r}).read():
            assert time.monotonic() < deadline, "the orphan never started"
            time.sleep(0.01)

    @pytest.mark.slow
    def test_child_left_running():
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)

    def test_forks_unmarked():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    """
)


def _kill_and_wait(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while not pid_gone(pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # ours, if it was a child


def test_the_leak_check_fails_on_deliberate_leaks(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pidfile = str(tmp_path / "orphan.pid")
    pytester.makeconftest("from tests.conftest import no_leaks  # noqa: F401\n")
    pytester.makepyfile(test_leaky=LEAKY.format(pidfile=pidfile))
    monkeypatch.setenv("CPUMAP_TEST_LEAK_GRACE", "0.2")
    before = set(os.listdir("/proc"))
    try:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
        result.assert_outcomes(passed=3, errors=3)
        out = result.stdout.str()
        assert "processes still mapping a memfd:cpumap- segment: [" in out
        assert "child processes left behind: [" in out
        assert "this test forks processes: mark it pytest.mark.slow" in out
    finally:
        # Clean up what the inner run left on purpose, so that this test leaks nothing.
        started = {int(n) for n in set(os.listdir("/proc")) - before if n.isdigit()}
        for pid in live_children(os.getpid(), started) | memfd_holders(started):
            _kill_and_wait(pid)
