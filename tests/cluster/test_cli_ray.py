"""``cpumap run --ray``: the CLI's cluster run, as a user types it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cpumap.demo import demo_capture_path
from tests.helpers import pid_gone

CPUMAP = str(Path(sys.executable).with_name("cpumap"))


def _cpumap(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPUMAP, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_arguments_a_cluster_run_cannot_take_are_refused_before_ray_starts() -> None:
    for extra, says in [
        (["--generate", "10"], "--ray runs capture files only"),
        (["--iface", "lo"], "--ray runs capture files only"),
        ([], "--ray needs one or more capture files"),
    ]:
        done = _cpumap("run", "--ray", "auto", *extra, timeout=60)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and "Traceback" not in done.stderr


def test_several_captures_without_ray_say_how_to_run_them() -> None:
    demo = str(demo_capture_path())
    done = _cpumap("run", demo, demo, timeout=60)
    assert done.returncode == 2
    assert "--ray auto" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_ray_auto_runs_several_captures_and_the_summary_balances(tmp_path: Path) -> None:
    demo = str(demo_capture_path())
    local = _cpumap("run", demo, "--cpus", "0", "--json", timeout=120)
    assert local.returncode == 0, local.stderr
    one = json.loads(local.stdout.splitlines()[-1])
    done = _cpumap("run", "--ray", "auto", demo, demo, "--cpus", "0", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["exit_status"] == 0
    stats = summary["stats"]
    assert stats["rx"] == 2 * one["rx"]
    assert stats["rx"] == sum(summary["outcomes"].values())
    assert summary["outcomes"]["delivered"] == 2 * one["outcomes"]["delivered"]
    assert all(pid_gone(e["pid"]) for e in summary["entries"] if e["pid"])
