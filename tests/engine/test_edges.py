"""Issue 19's engine cases ("reliability at the edges"), numbered as in the issue: a
worker whose ``finish()`` cannot report, a ``setup()`` that hangs, a handler's own child
processes, a starved pool, and arguments that must be refused.

Every case ends with the books exact and the pool whole (``settled``), and the
``no_leaks`` fixture checks that nothing -- a handler's child included -- outlives it.
"""

from __future__ import annotations

import gc
import math
import multiprocessing.connection
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cpumap import (
    ClosedResourceError,
    CpuMap,
    HandlerSetupError,
    MapOptions,
    PacketBatch,
    possible_cpus,
    redirect_map,
)
from cpumap.engine import EntryState
from tests.engine.fault_tools import settled, traffic, wait_replaced, wait_until, worker_pid
from tests.helpers import Gate, flow_batch, memfd_holders, pid_gone

CPU = min(possible_cpus())
slow = pytest.mark.slow


# -- 3. a worker whose finish() cannot report --------------------------------------------------
class _Unpicklable(BaseException):
    """Raised by pickling a finish() result: not an Exception, a BaseException."""


class _WontPickle:
    def __reduce__(self) -> Any:
        raise _Unpicklable("no pickling this")


class FinishFails:
    """A handler whose finish() cannot report: it exits the worker, returns a result that
    cannot be pickled, or closes the worker's result pipe."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __call__(self, skb: Any) -> None:
        return None

    def finish(self) -> Any:
        if self.how == "exit":
            os._exit(5)
        if self.how == "unpicklable":
            return _WontPickle()
        for obj in gc.get_objects():  # "close_pipe": the only writable pipe is the result's
            if isinstance(obj, multiprocessing.connection.Connection) and obj.writable:
                obj.close()
        return "done"


@slow
@pytest.mark.parametrize("how", ["exit", "unpicklable", "close_pipe"])
def test_3_a_retiring_worker_whose_finish_cannot_report_is_named_not_restarted(how) -> None:
    with CpuMap(CPU + 1, handler=FinishFails(how)) as m:
        m.update(CPU, 256)
        m.run(traffic(3000), lambda ctx: redirect_map(m, CPU))
        m.close()
        s = settled(m)
        report = m.report()
    assert s.rx == s.delivered == 3000 and s.lost == 0
    assert s.worker_deaths == 0 and s.broken_entries == 0
    assert not any(ev.kind in ("died", "restarted", "broken") for ev in report.events)
    (entry,) = report.stats.entries
    assert entry.state == EntryState.RETIRED and entry.restarts == 0
    assert entry.finish_error is not None and entry.finish_error.startswith("finish() failed: ")
    assert s.finish_failures == 1
    assert [ev.kind for ev in report.events] == ["finish_failed"]
    (result,) = report.results
    assert result.error is not None and "finish() failed" in result.error
    if how == "exit":
        assert "status 5" in entry.finish_error


# -- 5. a setup() that hangs -------------------------------------------------------------------
class HangsInSetup:
    def setup(self, info: Any) -> None:
        time.sleep(600)

    def __call__(self, skb: Any) -> None:
        return None


class ExitsInSetup:
    def setup(self, info: Any) -> None:
        os._exit(3)

    def __call__(self, skb: Any) -> None:
        return None


@slow
def test_5_a_setup_that_hangs_is_killed_at_the_maps_setup_timeout_and_says_so() -> None:
    with CpuMap(CPU + 1, handler=HangsInSetup(), options=MapOptions(setup_timeout=0.5)) as m:
        with pytest.raises(HandlerSetupError) as info:
            m.update(CPU, 64)
        assert "setup() did not finish within 0.5 s; the worker was killed" in str(info.value)
        with pytest.raises(OSError):
            m.lookup(CPU)  # the update was not made


@slow
def test_5_a_worker_that_exits_in_setup_says_how_it_exited() -> None:
    with (
        CpuMap(CPU + 1, handler=ExitsInSetup()) as m,
        pytest.raises(HandlerSetupError, match=r"exited with status 3 before it was ready"),
    ):
        m.update(CPU, 64)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_5_setup_timeout_must_be_a_positive_finite_number(bad) -> None:
    with pytest.raises(ValueError, match="setup_timeout"):
        MapOptions(setup_timeout=bad)


# -- 7. a handler's own child processes ---------------------------------------------------------
class LeavesChildren:
    """At its first frame: forks a child that sleeps, and an orphaned grandchild (double
    fork) -- with ``setsid``, a daemon that leaves the worker's process group and
    session; writes their pids."""

    def __init__(self, pids: Path, setsid: bool = True) -> None:
        self.pids = str(pids)
        self.setsid = setsid
        self.done = False

    def __call__(self, skb: Any) -> None:
        if self.done:
            return
        self.done = True
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(r)
            if os.fork() == 0:  # the grandchild: its parent exits at once
                if self.setsid:
                    os.setsid()
                os.write(w, f"{os.getpid()}\n".encode())
                time.sleep(600)
                os._exit(0)
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            daemon = int(f.readline())
        os.waitpid(child, 0)
        sleeper = os.fork()
        if sleeper == 0:
            time.sleep(600)
            os._exit(0)
        with open(self.pids, "w") as f:
            f.write(f"{sleeper} {daemon}\n")


def _children(path: Path) -> list[int]:
    wait_until(lambda: path.exists() and path.read_text().endswith("\n"), 30, "no children")
    return [int(p) for p in path.read_text().split()]


@slow
def test_7_a_handlers_children_end_with_its_worker_at_close(tmp_path) -> None:
    with CpuMap(CPU + 1, handler=LeavesChildren(tmp_path / "pids")) as m:
        m.update(CPU, 64)
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(1, 4))
        kids = _children(tmp_path / "pids")
        assert not any(pid_gone(p) for p in kids)
        settled(m)
    wait_until(lambda: all(pid_gone(p) for p in kids), 10, "a handler's child outlived close()")
    assert not memfd_holders(kids)


@slow
def test_7_a_killed_workers_children_die_with_it(tmp_path) -> None:
    """Its child and orphaned grandchild die with it: its process group is killed.  (A
    grandchild that also left the group -- setsid -- escapes a worker killed with SIGKILL:
    descendants.py says why.)"""
    with CpuMap(CPU + 1, handler=LeavesChildren(tmp_path / "pids", setsid=False)) as m:
        m.update(CPU, 64)
        with m.producer(lambda ctx: redirect_map(m, CPU)) as rx:
            rx.poll(flow_batch(1, 4))
            kids = _children(tmp_path / "pids")
            # The pids are written at the first frame, before the batch is committed: kill
            # only once it is, or its 4 frames are (rightly) counted lost, not delivered.
            wait_until(lambda: m.stats().delivered == 4, 30, "the first batch delivered")
            old = worker_pid(m, CPU)
            os.kill(old, signal.SIGKILL)
            wait_replaced(m, CPU, old)
            wait_until(lambda: all(pid_gone(p) for p in kids), 10, "children outlived it")
            rx.poll(flow_batch(1, 4))
        s = settled(m)
        assert s.worker_deaths == 1 and s.delivered == 8


class ForksAConsumer:
    """At its 10th frame: forks, and the child returns from the handler -- into the
    worker's loop, where it would consume the ring beside the worker."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, skb: Any) -> None:
        self.n += 1
        if self.n == 10:
            os.fork()


@slow
def test_7_a_handlers_child_never_consumes_the_ring() -> None:
    with CpuMap(CPU + 1, handler=ForksAConsumer(), batch_size=64) as m:
        m.update(CPU, 256)
        s = m.run(traffic(20_000), lambda ctx: redirect_map(m, CPU), timeout=30, frame_wait=5)
        s = settled(m)
        assert s.rx == s.delivered == 20_000 and s.no_frame == 0
        assert not any(ev.kind == "starved" for ev in m.worker_events())


@slow
def test_7_a_pool_starved_longer_than_stuck_after_is_reported() -> None:
    gate = Gate()
    try:
        opts = MapOptions(stuck_after=0.3)
        with CpuMap(CPU + 1, handler=gate, frames=2048, options=opts) as m:
            m.update(CPU, 4096)
            with m.producer(lambda ctx: redirect_map(m, CPU), frame_wait=30) as rx:
                feeder = threading.Thread(target=rx.receive, args=(flow_batch(4, 768),))
                feeder.start()
                try:
                    wait_until(lambda: any(e.kind == "starved" for e in m.worker_events()))
                    assert m.stats().starved_producers == 1
                    (ev,) = [e for e in m.worker_events() if e.kind == "starved"]
                    assert ev.key == rx.index and ev.cpu == -1
                finally:
                    gate.open()
                    feeder.join(60)
            s = settled(m)
            assert s.delivered == s.rx == 3072 and s.starved_producers == 0
    finally:
        gate.close()


# -- 8. arguments that must be refused ----------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 10**8}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"handler": 5}, "handler must be callable"),
        ({"options": "fast"}, "options must be a MapOptions"),
    ],
)
def test_8_map_arguments_are_refused(kwargs, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        CpuMap(CPU + 1, **kwargs)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("busy_poll", math.inf),
        ("busy_poll", -1.0),
        ("busy_poll", math.nan),
        ("idle_timeout", math.nan),
        ("idle_timeout", 0),
        ("stuck_after", math.inf),
        ("trace_events", 10**9),
        ("trace_events", -1),
    ],
)
def test_8_map_options_are_refused(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        MapOptions(**{field: value})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backpressure": -1}, "backpressure"),
        ({"backpressure": math.nan}, "backpressure"),
        ({"frame_wait": math.nan}, "frame_wait"),
        ({"frame_wait": -0.5}, "frame_wait"),
        ({"bulk_size": 0}, "bulk_size"),
    ],
)
def test_8_producer_arguments_are_refused_and_free_the_slot(kwargs, match) -> None:
    with CpuMap(CPU + 1) as m:
        with pytest.raises(ValueError, match=match):
            m.producer(lambda ctx: 2, index=0, **kwargs)
        m.producer(lambda ctx: 2, index=0).close()  # the slot was not kept


def _overrun(n: int = 4) -> PacketBatch:
    """A batch whose packet 2 runs past the end of its buffer."""
    b = PacketBatch.from_packets([bytes(60 + i) for i in range(n)])
    b.caplen[2] += 1000
    b.wire_len[2] += 1000
    return b


def test_8_a_batch_that_runs_past_its_buffer_is_refused_by_name() -> None:
    with CpuMap(CPU + 1) as m, m.producer(lambda ctx: 1) as rx:
        with pytest.raises(ValueError, match=r"packet 2 .*runs past"):
            rx.poll(_overrun())
        rx.poll(flow_batch(1, 3))  # the producer is still good
        s = m.stats()
        assert s.rx == s.xdp_drop == 3 and s.in_flight == 0
        assert m.pool.audit().whole


def test_8_a_batch_check_names_the_packet() -> None:
    with pytest.raises(ValueError, match=r"packet 2 "):
        _overrun().check()
    b = PacketBatch.from_packets([b"x" * 60] * 3)
    b.start[1] = -5
    with pytest.raises(ValueError, match=r"packet 1 "):
        b.check()
    flow_batch(2, 5).check()  # a good batch passes


def test_8_a_producer_of_a_closed_map_refuses_to_poll() -> None:
    m = CpuMap(CPU + 1)
    rx = m.producer(lambda ctx: redirect_map(m, CPU))
    m.close()
    with pytest.raises(ClosedResourceError, match="map is closed"):
        rx.poll(flow_batch(1, 3))
    assert m.stats().rx == 0
    rx.close()


@slow
def test_8_a_replaced_entrys_worker_handle_keeps_its_pid() -> None:
    with CpuMap(CPU + 1) as m:
        m.update(CPU, 64)
        w = m.entry(CPU).worker
        assert w is m.entry(CPU).life.worker
        pid = w.pid
        m.update(CPU, 64)
        wait_until(lambda: (m.poll(), not m._retiring)[1], 30, "the old entry did not retire")
        assert w.pid == pid and w.exitcode == 0 and not w.is_alive()
        assert m.entry(CPU).life.worker.pid != pid


def test_8_a_packet_batch_of_mismatched_columns_is_refused() -> None:
    b = PacketBatch.from_packets([b"x" * 60] * 3)
    b.caplen = np.array([60, 60], dtype=np.uint32)
    with pytest.raises(ValueError, match="caplen"):
        b.check()
