"""``cpumap run --ray``: the CLI's cluster run, as a user types it (a subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cpumap.demo import demo_capture_path
from tests.helpers import all_pids, descendants, pid_gone, wait_for

CPUMAP = str(Path(sys.executable).with_name("cpumap"))


def _cpumap(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPUMAP, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_arguments_a_cluster_run_cannot_take_are_refused_before_ray_starts() -> None:
    for extra, says in [
        (["--generate", "10"], "--ray runs capture files only"),
        (["--iface", "lo"], "--ray runs capture files only"),
    ]:
        done = _cpumap("run", "--ray", "auto", *extra, timeout=60)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and "Traceback" not in done.stderr


def test_several_captures_without_ray_say_how_to_run_them() -> None:
    demo = str(demo_capture_path())
    done = _cpumap("run", demo, demo, timeout=60)
    assert done.returncode == 2
    assert "--ray auto" in done.stderr and "Traceback" not in done.stderr


CLUSTER_ONLY = {"ray_address", "complete", "nodes", "sources"}


def summary_of(done: subprocess.CompletedProcess[str]) -> dict:
    """One parser for both runs: the last line is the summary, and it balances."""
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout.splitlines()[-1])
    assert s["type"] == "summary" and s["exit_status"] == 0
    assert s["rx"] == sum(s["outcomes"].values()) and s["in_flight"] == 0 and s["accounted"]
    assert sum(e["delivered"] for e in s["entries"]) == s["outcomes"]["delivered"]
    return s


@pytest.mark.slow
def test_ray_auto_runs_several_captures_and_the_summary_balances(tmp_path: Path) -> None:
    """``cpumap run --json`` and ``cpumap run --ray auto FILE FILE --json``: one schema (the
    cluster adds where things ran), read by one function."""
    demo = str(demo_capture_path())
    one = summary_of(_cpumap("run", demo, "--cpus", "0", "--json", timeout=120))
    two = summary_of(_cpumap("run", "--ray", "auto", demo, demo, "--cpus", "0", "--json"))
    assert set(two) - set(one) == CLUSTER_ONLY and set(one) <= set(two)
    assert set(two["entries"][0]) - set(one["entries"][0]) == {
        "place",
        "node",
        "node_id",
        "failures",
    }
    assert two["rx"] == 2 * one["rx"]
    assert two["outcomes"]["delivered"] == 2 * one["outcomes"]["delivered"]
    assert all(pid_gone(e["pid"]) for e in two["entries"] if e["pid"])
    # No file: the embedded demo capture, as a local run.
    demo_run = summary_of(_cpumap("run", "--ray", "auto", "--cpus", "0", "--json"))
    assert demo_run["rx"] == one["rx"] and demo_run["outcomes"] == one["outcomes"]
    assert [s["path"] for s in demo_run["sources"]] == [demo]


def _end_what_we_started(before: set[int]) -> None:
    """End, by pid, every process of ours that was not there ``before`` -- ``ray start``'s
    daemons and their workers, orphans that this test process (their subreaper) adopted --
    and reap them; again until none is left (a worker is adopted when its raylet goes)."""
    import signal

    def none_left() -> bool:
        now = all_pids()
        ours = sorted(descendants(os.getpid(), now) & (now - before))
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in ours:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        return not ours

    wait_for(none_left, 30, "the processes `ray start` left to end")


@pytest.mark.slow
def test_ray_auto_joins_a_cluster_started_with_its_own_temp_dir() -> None:
    """``ray start --head --temp-dir DIR`` leaves its address file in DIR, not where Ray
    looks by default: ``--ray auto`` still joins it (by its raylet) instead of starting a
    local instance."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    temp_dir = tempfile.mkdtemp(prefix="cpumap-ray-", dir="/tmp")  # short: socket paths
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # loopback only
    env.pop("RAY_ADDRESS", None)
    before = all_pids()
    started = subprocess.run(
        [ray_cli, "start", "--head", f"--temp-dir={temp_dir}", "--port=0",
         "--node-ip-address=127.0.0.1", "--num-cpus=1", "--include-dashboard=false",
         "--disable-usage-stats"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        done = subprocess.run(
            [CPUMAP, "run", "--ray", "auto", "--cpus", "0", "--json"],
            capture_output=True, text=True, timeout=240, check=False, env=env,
        )  # fmt: skip
        s = summary_of(done)
        assert s["ray_address"] == "auto"  # joined: a local instance reads "local"
    finally:
        _end_what_we_started(before)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_damaged_capture_on_ray_exits_as_a_local_run_does(tmp_path: Path) -> None:
    """A capture cut mid-record stops its source with the file and offset, and the run
    exits with the local run's status for a damaged source (4), its books balanced."""
    demo = demo_capture_path().read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(demo[: len(demo) - 7])
    local = _cpumap("run", str(cut), "--cpus", "0", "--json", timeout=120)
    ray = _cpumap("run", "--ray", "auto", str(cut), "--cpus", "0", "--json")
    assert local.returncode == ray.returncode == 4, (local.stderr, ray.stderr)
    s = json.loads(ray.stdout.splitlines()[-1])
    assert s["exit_status"] == 4 and s["accounted"] and s["in_flight"] == 0
    # Every record before the cut is read, steered and counted, as locally: the walk
    # placed them before it handed the damage on (read in place), and they count.
    assert s["rx"] == json.loads(local.stdout.splitlines()[-1])["rx"] > 0
    assert s["rx"] == sum(s["outcomes"].values())
    assert str(cut) in ray.stderr and "offset" in ray.stderr


@pytest.mark.slow
def test_a_raising_handler_on_ray_shows_its_first_traceback_as_a_local_run_does(
    tmp_path: Path,
) -> None:
    """A handler that raises on some frames: the cluster run counts them handler_error,
    exits 1 (user error) and, as the local run, shows the first traceback of the kind
    with how many frames failed -- in the text and in the JSON summary."""
    handler = tmp_path / "raising.py"
    handler.write_text(
        "def handle(skb):\n"
        "    if skb.hash % 3 == 0:\n"
        "        raise ValueError('every third hash')\n"
        "    return True\n"
    )
    demo = str(demo_capture_path())
    spec = f"{handler}:handle"
    local = _cpumap("run", demo, "--cpus", "0", "--handler", spec, "--json", timeout=120)
    ray = _cpumap("run", "--ray", "auto", demo, "--cpus", "0", "--handler", spec, "--json")
    assert local.returncode == ray.returncode == 1, (local.stderr, ray.stderr)
    ours, theirs = (json.loads(d.stdout.splitlines()[-1]) for d in (ray, local))
    failed = ours["outcomes"]["handler_error"]
    assert failed == theirs["outcomes"]["handler_error"] > 0
    (e,) = ours["user_errors"]
    assert (e["where"], e["what"], e["count"], e["cpu"]) == ("handler", "ValueError", failed, 0)
    assert "every third hash" in e["first"] and str(handler) in e["first"]
    text = _cpumap("run", "--ray", "auto", demo, "--cpus", "0", "--handler", spec)
    assert f"handler on CPU 0: ValueError ({failed:,} frames); the first:" in text.stdout
    assert "raise ValueError('every third hash')" in text.stdout
