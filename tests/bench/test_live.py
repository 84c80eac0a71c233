"""The live group of the benchmark suite (``suite.live``): its books balance on a real veth
(root), its CPU accounting splits a thread's time as the kernel's ticks say, and its goals
are met, not met, or not measured with the reason.  No figure is asserted."""

from __future__ import annotations

import os

import pytest

from suite import live
from suite.common import Row
from suite.live import CpuSpent, LiveOptions, ThreadTime
from suite.report import live_goals, live_note

from ..helpers import veth_unavailable

_REASON = veth_unavailable("the live benchmark's veth pair", bpf=True) or live.unavailable_reason()
needs_root = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
TINY = LiveOptions(rate=1e6, window_s=0.3)


def test_cpu_time_is_split_by_the_ticks() -> None:
    s = CpuSpent()
    s.add(ThreadTime(1_000, 1, 1), ThreadTime(5_000, 4, 2))  # 4000 ns, 3 user : 1 sys ticks
    assert (s.user_ns, s.kernel_ns) == (3_000, 1_000)
    s.add(ThreadTime(0, 0, 0), ThreadTime(500, 0, 0))  # no tick fell: kernel time
    assert (s.user_ns, s.kernel_ns, s.total_ns) == (3_000, 1_500, 4_500)
    s.add(ThreadTime(0, 0, 0), None)  # the thread is gone: nothing to add
    assert s.total_ns == 4_500


def test_this_thread_has_a_clock_and_a_dead_one_none() -> None:
    me = live.thread_time(os.getpid())
    assert me is not None and me.total_ns > 0
    assert live.thread_time(2**22 + 1) is None  # above pid_max's default: no such process


def test_without_root_the_live_rows_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert live.unavailable_reason() == "needs root (network namespaces, XDP, bpf(2))"


def row(key: str, fps: float | None, skipped: str | None = None, **extra: float) -> Row:
    r = Row(key, "live", key, fps=fps, skipped=skipped, baseline="live.tpacket")
    r.extra.update(extra)
    return r


def test_the_live_goals_from_the_rows() -> None:
    rows = {
        "live.tpacket": row("live.tpacket", 0.5e6),
        "live.af_xdp": row("live.af_xdp", 1.2e6, rx_kernel_ns=150.0, rx_user_ns=100.0),
    }
    ratio, rx = live_goals(rows)
    assert (ratio["value"], ratio["met"]) == (2.4, True)
    assert rx["value"] == pytest.approx(0.25) and rx["met"] is True and rx["at_most"]
    rows["live.af_xdp"].extra["rx_user_ns"] = 400.0
    assert live_goals(rows)[1]["met"] is False


def test_a_skipped_af_xdp_row_leaves_the_live_goals_unmeasured_with_its_reason() -> None:
    rows = {
        "live.tpacket": row("live.tpacket", 0.5e6),
        "live.af_xdp": row("live.af_xdp", None, skipped="no --af-xdp here"),
    }
    for goal in live_goals(rows):
        assert goal["value"] is None and goal["met"] is None
        assert goal["skipped"] == "no --af-xdp here"
    assert all(g["skipped"] for g in live_goals({}))  # the group did not run at all


def test_a_live_note_says_where_frames_were_dropped() -> None:
    note = live_note(
        {"offered": 3e6, "sent": 1000, "tx_drops": 500, "source_drops": 100, "map_drops": 0,
         "unaccounted": 0, "rx_kernel_ns": 300.4, "rx_user_ns": None, "worker_ns": 90.0}
    )  # fmt: skip
    assert "offered 3.00 M/s" in note and "B's ring 50%" in note and "source 10%" in note
    assert "RX kernel 300 + user -" in note


@needs_root
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_tpacket_row_accounts_for_every_frame_sent() -> None:
    fig = live.tpacket_row(TINY)
    assert fig["sent"] > 0 and fig["accounted"] == 1  # cpumap run's own identity held
    assert fig["unaccounted"] == 0  # sent == B's ring drops + read + the socket's drops
    assert fig["hook"] == fig["rx"] + fig["source_drops"]  # what XDP passed, the socket saw
    assert fig["delivered"] + fig["map_drops"] == fig["rx"]
    assert fig["rx_kernel_ns"] > 0 and fig["worker_ns"] > 0


@needs_root
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_kernel_row_runs_cpumap_run_kernel_and_its_books_balance() -> None:
    fig = live.kernel_row(TINY)
    assert fig["sent"] > 0 and fig["delivered"] > 0
    assert fig["accounted"] == 1  # cpumap run --kernel's own identities held
    assert fig["unaccounted"] == 0  # sent == B's ring drops + what the hook saw
    assert fig["rx"] == fig["redirected"] + fig["not_redirected"]
    assert fig["not_redirected"] == 0  # UDP/IPv4 to one CPU: l4-hash redirects every frame
    assert fig["delivered"] + fig["map_drops"] == fig["redirected"]
    assert fig["worker_ns"] > 0 and fig["rx_kernel_ns"] > 0  # the kthread and NAPI ran


def test_the_kernel_row_steers_to_the_engine_rows_worker_cpu() -> None:
    engine, kernel = live.engine_argv(0, []), live.kernel_argv(0)
    assert engine[engine.index("--cpus") + 1] == kernel[kernel.index("-c") + 1] == "0"
    assert "--rx-cpu" not in kernel and "--handler" not in kernel  # refused by --kernel
    assert kernel[kernel.index("--remote-action") + 1] == "drop"
