"""The main job's issue-20 parts of the suite (``benchmarks/suite/main_job.py``): the
nfpcapd row skips with its reason where nfdump is missing, and the flow-table check --
cpumap's flow table against the dpkt script's -- finds equal tables equal and names what
differs otherwise.  No figure is asserted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from suite import main_job
from suite.common import Row
from suite.python_side import dpkt_missing
from suite.report import flow_table_goal, goals


def test_the_flow_table_check_finds_equal_tables_equal() -> None:
    table = {("UDP", "10.0.0.1:1", "10.0.0.2:2"): (3, 300), ("ARP", "-", "-"): (1, 60)}
    check = main_job.flow_table_check(dict(table), dict(table))
    assert check["equal"] is True and check["mismatches"] == 0
    assert (check["flows"], check["packets"], check["bytes"]) == (2, 4, 360)


def test_the_flow_table_check_names_what_differs() -> None:
    ours = {("UDP", "a", "b"): (3, 300), ("TCP", "c", "d"): (1, 100)}
    dpkt = {("UDP", "a", "b"): (3, 301), ("ICMP", "e", "f"): (1, 64)}
    check = main_job.flow_table_check(ours, dpkt)
    assert check["equal"] is False and check["mismatches"] == 3
    assert check["only_ours"] == [["TCP", "c", "d"]]
    assert check["only_dpkt"] == [["ICMP", "e", "f"]]
    assert check["differ"] == [["UDP", "a", "b", (3, 300), (3, 301)]]
    goal = flow_table_goal(check)
    assert (goal["value"], goal["met"]) == (3, False)


def test_the_dpkt_lines_name_flows_as_cpumap_does() -> None:
    v6, v6_1 = "fd" + "00" * 15, "fd" + "00" * 14 + "01"
    out = "\n".join(
        [
            "3 6",
            f"17 {bytes([10, 0, 0, 9]).hex()} 53 {bytes([10, 0, 0, 1]).hex()} 4000 2 200",
            f"1 {bytes([10, 0, 0, 1]).hex()} 0 {bytes([10, 0, 0, 2]).hex()} 0 1 98",
            f"6 {v6} 80 {v6_1} 9 2 10",
            "-1 2054 - - - 1 60",
        ]
    )
    assert main_job.dpkt_table(out) == {
        ("UDP", "10.0.0.1:4000", "10.0.0.9:53"): (2, 200),
        ("ICMP", "10.0.0.1", "10.0.0.2"): (1, 98),
        ("TCP", "[fd00::1]:9", "[fd00::]:80"): (2, 10),
        ("ARP", "-", "-"): (1, 60),
    }


@pytest.mark.skipif(dpkt_missing() is not None, reason=str(dpkt_missing()))
@pytest.mark.timeout(120)
def test_cpumaps_flow_table_equals_the_dpkt_scripts(tmp_path: Path) -> None:
    path = str(tmp_path / "mixed.pcap")
    main_job.make_capture(path, 20_000)
    dpkt: dict = {}
    main_job.dpkt_flows(path, table=dpkt)
    check = main_job.flow_table_check(main_job.cpumap_table(path), dpkt)
    assert check["mismatches"] == 0, check
    assert check["equal"] and check["packets"] == 20_000 and check["flows"] == len(dpkt) > 1000


@pytest.mark.skipif(shutil.which("nfpcapd") is None, reason="nfpcapd not installed")
def test_nfpcapd_reads_the_capture(tmp_path: Path) -> None:
    path = str(tmp_path / "mixed.pcap")
    main_job.make_capture(path, 5_000)
    assert main_job.nfpcapd_missing() is None
    assert main_job.nfpcapd_flows(path) > 0


def test_without_nfdump_the_nfpcapd_row_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main_job.nfpcapd_missing() == "nfpcapd not found (apt-get install nfdump)"


def test_the_nfpcapd_goal_is_a_ratio_of_the_same_run() -> None:
    rows = {
        "job.cpumap_run": Row("job.cpumap_run", "main-job", "j", fps=1.5e6),
        "job.nfpcapd": Row("job.nfpcapd", "main-job", "n", fps=1.0e6),
    }
    full = {g["goal"]: g for g in goals(rows, {"job_packets": 2_000_000}, {"cpus": 2})}
    nf = full["main job / nfpcapd, wall (issue 20)"]
    assert nf["value"] == pytest.approx(1.5) and nf["met"] is True
    small = {g["goal"]: g for g in goals(rows, {"job_packets": 200_000}, {"cpus": 2})}
    assert small["main job / nfpcapd, wall (issue 20)"]["met"] is None
    assert full["main job: flow table = the dpkt script's (flows that differ)"]["met"] is None
