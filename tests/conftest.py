"""The check every test runs under: it must leave no process and no shared memory behind.

The project's segments are memfds (``cpumap.shm``): they have no name in ``/dev/shm`` and
go with the last process that maps them.  So a leak is a process: one the test started
that is still running, or -- orphaned -- still maps a segment (``/proc/<pid>/maps`` shows
``memfd:cpumap-...``).  The test process makes itself the subreaper of its orphans, so the
check looks only at its own process tree: another session or a ``cpumap run`` on the same
machine is never blamed on a test.  ``tests/test_leaks.py`` shows this
check failing on a deliberate leak.

The same fixture holds the marking rule: a test that forks processes (workers, producers,
``multiprocessing``) is a multi-process test and must carry ``pytest.mark.slow``, so that
``pytest -m "not slow"`` is the quick single-process run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cpumap.live.netns import VethPair
from tests.helpers import LeakCheck, become_subreaper

pytest_plugins = ["pytester"]

_forks = [0]  # forks made by this process (os.fork, multiprocessing's fork context)
os.register_at_fork(after_in_parent=lambda: _forks.__setitem__(0, _forks[0] + 1))


become_subreaper()


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test must leave no child process and no process mapping a segment."""
    check = LeakCheck()
    forks = _forks[0]
    yield
    if _forks[0] > forks and request.node.get_closest_marker("slow") is None:
        pytest.fail("this test forks processes: mark it pytest.mark.slow", pytrace=False)
    # Seconds the test's processes get to finish exiting before they count as leaked.
    grace = float(os.environ.get("CPUMAP_TEST_LEAK_GRACE", "10"))
    leaks = check.leaks(grace)
    assert not leaks, str(leaks)


@pytest.fixture
def veth() -> Iterator[VethPair]:
    """A veth pair between two fresh network namespaces, gone after the test (root only:
    the modules that use it skip with ``tests.helpers.veth_unavailable``'s reason)."""
    with VethPair() as pair:
        yield pair
