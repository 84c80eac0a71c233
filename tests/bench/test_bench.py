"""The benchmark suite (``benchmarks/suite``): the quick benchmark runs end to end on a tiny
size and reports every row with a ratio or a reason.  No figure is asserted: a benchmark
measures, it does not test.  And ``cpumap bench`` runs the suite of the source checkout,
or says in one line what to do where there is none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cpumap.cli import bench as cli_bench
from cpumap.cli import main as cli_main
from suite import main
from suite.common import Row
from suite.report import goals, set_ratios

from .conftest import BENCHMARKS

ROW_KEYS = {"key", "group", "name", "fps", "runs", "baseline", "ratio", "skipped", "extra"}


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_quick_bench_on_a_tiny_size_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    assert (
        main(
            ["--quick", "--scale", "0.01", "--repeat", "1", "--json", str(out), "--plot", str(plot)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert {"mode", "machine", "sizes", "seconds", "rows", "costs", "goals"} <= set(result)
    assert result["mode"] == "quick"
    keys = [r["key"] for r in result["rows"]]
    for expected in (
        "kernel.xdp_drop",
        "kernel.netstack",
        "ours.second_stage_drop",
        "ours.batch_touch_64",
        "ours.batch_touch_1500",
        "ours.frame_handler",
        "ours.frame_program",
        "pipe.mp_queue_64",
        "pipe.faster_fifo_64",
        "pipe.pyzmq_64",
        "pipe.mp_queue_1500",
        "pipe.faster_fifo_1500",
        "pipe.pyzmq_1500",
        "loop.skb",
        "loop.dpkt",
        "job.cpumap_run",
        "job.tshark",
        "job.dpkt",
        "live.tpacket",
        "live.af_xdp",
        "live.kernel",
    ):
        assert expected in keys
    for row in result["rows"]:
        assert set(row) == ROW_KEYS
        has_ratio = row["ratio"] is not None and row["ratio"] > 0 and row["fps"] > 0
        assert has_ratio or row["skipped"], row
        # A row may be skipped for what this machine lacks, never because our side broke.
        assert not (row["skipped"] or "").startswith("failed"), row
    assert {g["goal"] for g in result["goals"]} >= {
        "per-frame handler, 1 worker / Skb loop",
        "main job / tshark -z conv",
    }
    for g in result["goals"]:
        assert g["met"] in (True, False, None)
        assert (g["met"] is None) == (g["value"] is None)
    assert result["costs"]["framework_us"] > 0
    assert "rss" in result["costs"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratios_use_the_baseline_of_the_same_run() -> None:
    rows = {
        "a": Row("a", "g", "A", fps=4e6, baseline="b"),
        "b": Row("b", "g", "B", fps=1e6, baseline="b"),
        "c": Row("c", "g", "C", fps=2e6, baseline="missing"),
        "d": Row("d", "g", "D", skipped="no tool", baseline="b"),
    }
    set_ratios(rows)
    assert (rows["a"].ratio, rows["b"].ratio) == (4.0, 1.0)
    assert rows["c"].ratio is None and rows["c"].skipped == "baseline missing not measured"
    assert rows["d"].ratio is None and rows["d"].skipped == "no tool"


def test_goals_are_met_or_not_or_not_measured() -> None:
    rows = {
        "ours.frame_handler": Row("ours.frame_handler", "ours", "f", fps=3e6),
        "loop.skb": Row("loop.skb", "loops", "s", fps=0.5e6),
        "loop.dpkt": Row("loop.dpkt", "loops", "d", fps=0.2e6),
    }
    found = {g["goal"]: g for g in goals(rows, {"framework_us": 0.7}, {"cpus": 2})}
    assert found["per-frame handler, 1 worker / Skb loop"]["met"] is True  # 6x >= 3x
    assert found["per-frame handler, 1 worker / dpkt loop"]["met"] is True  # 15x >= 10x
    assert found["framework cost per frame (µs)"]["met"] is False  # 0.7 > 0.5
    assert found["main job / tshark -z conv"]["met"] is None
    job = Row("job.cpumap_run", "main-job", "j", fps=1.2e6)
    tshark = Row("job.tshark", "main-job", "t", fps=0.04e6)
    rows |= {"job.cpumap_run": job, "job.tshark": tshark}
    small = {g["goal"]: g for g in goals(rows, {"job_packets": 200_000}, {"cpus": 2})}
    assert small["main job frames/s (M)"]["met"] is None  # quick mode's capture: no verdict
    assert "2,000,000 packets" in small["main job frames/s (M)"]["skipped"]
    full = {g["goal"]: g for g in goals(rows, {"job_packets": 2_000_000}, {"cpus": 2})}
    assert full["main job frames/s (M)"]["met"] is True
    assert full["main job / tshark -z conv"]["met"] is True  # 30x >= 25x


def test_the_cluster_goal_is_the_paired_ratio_of_its_two_rows() -> None:
    """``cpumap bench --only cluster``: the cluster row against the local row, round by
    round (the median of the rounds' ratios), against issue 22's 0.7."""
    local = Row("cluster.local", "cluster", "l", fps=5e6, runs=[5e6, 4e6, 6e6])
    ray = Row("cluster.ray", "cluster", "r", fps=3e6, runs=[3.9e6, 3e6, 3e6])
    for row in (local, ray):
        row.extra["round_group"] = 1  # measured in the same rounds (runner.rounds)
    found = {g["goal"]: g for g in goals({}, {}, {"cpus": 2})}
    name = "cluster map / local map, CLI defaults, one host (issue 22)"
    assert found[name]["met"] is None and found[name]["value"] is None  # not run
    rows = {"cluster.local": local, "cluster.ray": ray}
    found = {g["goal"]: g for g in goals(rows, {}, {"cpus": 2})}
    assert found[name]["value"] == pytest.approx(0.75)  # rounds 0.78, 0.75, 0.5
    assert found[name]["met"] is True and found[name]["target"] == 0.7


def test_bad_scale_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as e:
        main(["--scale", "0"])
    assert e.value.code == 2


@pytest.mark.parametrize("queues", ["a", "1,x", "0", "2,-1"])
def test_bad_live_queues_are_a_usage_error(queues: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--only", "live", "--live-queues", queues])
    assert e.value.code == 2


def test_live_queue_rows_are_measured_against_the_first_count_or_skipped_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--live-queues 1,64``: a row per count, against the first count's; a count this
    machine lacks the CPUs for is skipped with the reason.  The rows are built, not run
    (a live row needs minutes and a veth pair: ``bench_live.py --queues`` runs them)."""
    from rich.console import Console

    from suite import live
    from suite.runner import QUICK, Bench

    specs: list = []
    monkeypatch.setattr(Bench, "rounds", lambda self, s, repeat: specs.extend(s))
    Bench(QUICK, Console(quiet=True), True, ["live"]).live(1e6, 2048, [1, 64])
    rows = {s.key: s for s in specs if s.key.startswith("live.af_xdp_q")}
    assert set(rows) == {"live.af_xdp_q1", "live.af_xdp_q64"}
    assert {s.baseline for s in rows.values()} == {"live.af_xdp_q1"}
    why = live.unavailable_reason() or live.af_xdp_unavailable_reason()
    assert rows["live.af_xdp_q64"].skip == (why or "64 RX queues need CPUs 0..63")


# -- `cpumap bench`: the CLI finds the checkout's suite -----------------------------------------


def test_the_editable_install_finds_this_checkout() -> None:
    assert cli_bench.find_checkout() == BENCHMARKS.parent


def cpumap_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpumap.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cpumap_bench_runs_the_suite_with_its_arguments() -> None:
    out = cpumap_cli("bench", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: cpumap bench")
    assert "--quick" in out.stdout and "--only" in out.stdout


def test_cpumap_bench_exits_with_the_suites_status() -> None:
    out = cpumap_cli("bench", "--scale", "0")
    assert out.returncode == 2
    assert "--scale must be > 0" in out.stderr  # the suite's own check, not the CLI's


def test_without_a_checkout_cpumap_bench_says_what_to_do_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package_dir = tmp_path / "site-packages" / "cpumap"  # no benchmarks/ two levels up
    package_dir.mkdir(parents=True)
    assert cli_bench.main(["--quick"], package_dir=package_dir) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "git clone" in err and "pip install -e '.[bench]'" in err and "cpumap bench" in err


def test_the_cli_dispatches_bench_to_the_finder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[list[str]] = []

    def fake(argv: list[str]) -> int:
        calls.append(list(argv))
        return 7

    monkeypatch.setattr(cli_bench, "main", fake)
    assert cli_main(["bench", "--quick", "--only", "rss"]) == 7
    assert calls == [["--quick", "--only", "rss"]]
