"""``cpumap`` as an operator runs it: a subprocess, its exit status, its output, its signals.

Every test here starts the installed console script (the venv's ``cpumap``) and bounds
it with a timeout; the ``no_leaks`` fixture then checks that nothing it started is left
(a worker re-parented to init would still be found: it maps the project's memfd).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpumap.capture import write_capture
from cpumap.cpus import format_cpu_list, usable_cpus
from cpumap.generator import Generator
from tests.helpers import live_children, memfd_holders, pid_gone

pytestmark = pytest.mark.slow

CPUMAP = str(Path(sys.executable).with_name("cpumap"))
FIRST_CPU = str(min(usable_cpus()))  # a CPU this process may run on
TIMEOUT = 120


def cpumap(
    *argv: str, cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPUMAP, *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=env,
    )


def _children_of(pid: int, at_least: int, timeout: float = 60) -> set[int]:
    """Wait (with a deadline) until ``pid`` has ``at_least`` live children; them."""
    deadline = time.monotonic() + timeout
    while True:
        kids = live_children(pid)
        if len(kids) >= at_least:
            return kids
        assert time.monotonic() < deadline, f"{pid} never had {at_least} children"
        time.sleep(0.01)


def _readline(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output in time"
    return proc.stdout.readline()


# -- ending by a signal --------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_drains_summarises_and_leaves_nothing(sig, status) -> None:
    proc = subprocess.Popen(
        [CPUMAP, "run", "--generate", "100000000", "--handler", "count", "--json", "-i", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(_readline(proc))  # an interval: frames are flowing
        assert first["type"] == "interval" and first["rx"] > 0
        workers = _children_of(proc.pid, 1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    assert "Traceback" not in err
    records = [json.loads(line) for line in out.splitlines()]
    summary = records[-1]
    assert summary["type"] == "summary"
    assert summary["stopped_by"] == signal.Signals(sig).name
    assert summary["exit_status"] == status
    # Stopped, not lost: every frame read has its outcome.
    assert summary["rx"] > 0 and summary["in_flight"] == 0 and summary["accounted"]
    assert summary["rx"] == sum(summary["outcomes"].values()) == summary["outcomes"]["delivered"]
    assert all(pid_gone(w) for w in workers)
    assert not memfd_holders(workers)


def test_sigint_in_text_mode_prints_the_summary() -> None:
    proc = subprocess.Popen(
        [CPUMAP, "run", "--generate", "100000000", "--handler", "count"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "cpumap: 100,000,000 generated frames" in _readline(proc)
        workers = _children_of(proc.pid, 1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "every frame's outcome" in out and "every frame accounted for" in out
    assert "stopped by SIGINT" in out and "exit status 130" in out
    assert all(pid_gone(w) for w in workers)


# -- machine-readable output ---------------------------------------------------------------


def test_json_is_one_object_per_interval_and_a_summary_that_balances() -> None:
    r = cpumap("run", "--json", "--interval", "0.001", "--poll", "64")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]  # nothing else on stdout
    *intervals, summary = records
    assert intervals and all(x["type"] == "interval" for x in intervals)
    assert summary["type"] == "summary"
    assert summary["rx"] == 2000 == sum(summary["outcomes"].values())
    assert summary["accounted"] and summary["in_flight"] == 0 and summary["lossless"]
    assert summary["exit_status"] == 0 and summary["stopped_by"] is None
    assert {e["state"] for e in summary["entries"]} == {"retired"}
    assert sum(e["delivered"] for e in summary["entries"]) == 2000
    assert summary["rx_cpu"] not in summary["cpus"] or len(usable_cpus()) == 1
    # Intervals: cumulative counts grow; rates are per interval and never negative.
    rx = [x["rx"] for x in intervals]
    assert rx == sorted(rx)
    for x in intervals:
        assert x["interval_s"] > 0 and x["rx_pps"] >= 0
        assert x["rx"] == sum(x["outcomes"].values()) + x["in_flight"]
        for e in x["entries"]:
            assert {"enqueue_pps", "bulk_avg", "kthread_pps", "sched_per_s", "state"} <= set(e)


def test_a_raising_handler_is_shown_and_the_status_says_so(tmp_path) -> None:
    (tmp_path / "bad.py").write_text(
        "def handle(skb):\n    raise RuntimeError(f'cannot take {skb.len} bytes')\n"
    )
    r = cpumap("run", "--handler", "bad:handle", "--quiet", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "RuntimeError: cannot take" in r.stdout
    assert 'bad.py", line 2, in handle' in r.stdout
    r = cpumap("run", "--handler", "bad:handle", "--json", cwd=tmp_path)
    summary = json.loads(r.stdout.splitlines()[-1])
    assert r.returncode == summary["exit_status"] == 1
    (err,) = {(e["where"], e["what"]) for e in summary["user_errors"]}
    assert err == ("handler", "RuntimeError")
    assert sum(e["count"] for e in summary["user_errors"]) == summary["outcomes"]["handler_error"]


@pytest.mark.skipif(len(usable_cpus()) < 2, reason="the RX CPU is a target on one CPU")
def test_a_costly_handler_gets_a_hint_to_use_the_rx_cpu_too(tmp_path) -> None:
    """The default keeps the RX CPU to itself; when the one worker is what makes the RX
    side wait for room, the summary says so and names the --cpus that adds a worker."""
    (tmp_path / "slow.py").write_text(
        "def handle(skb):\n    x = 0\n    for i in range(300):\n        x += i\n    return True\n"
    )
    r = cpumap("run", "--generate", "100000", "--handler", "slow:handle", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "the workers set the pace" in r.stdout
    assert f"--cpus {format_cpu_list(usable_cpus())}" in r.stdout.replace("\n", " ")
    r = cpumap("run", "--generate", "100000", "--handler", "count", "--quiet")  # cheap: no hint
    assert r.returncode == 0, r.stderr
    assert "set the pace" not in r.stdout


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "/"], "is a directory"),
        (["run", "--metrics-port", "99999"], "out of range"),
        (["run", "--drop-port", "0"], "out of range"),
        (["run", "--non-ip-index", "-1"], "out of range"),
        (["run", "--cpus", "0-"], "not a CPU number or a range"),
        (["run", "--top", "-3"], "out of range"),
        (["run", "--duration", "-1"], "> 0"),
        (["run", "--iface", "nosuchif0"], "ip link"),
        (["run", "-p", "nope"], "unknown; use one of"),
    ],
)
def test_bad_input_is_a_message_and_status_2(argv, message) -> None:
    r = cpumap(*argv)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stderr.count("ip link") <= 1
    assert "per CPU" not in r.stdout  # nothing ran


def test_a_handler_that_exits_at_import_is_a_load_error(tmp_path) -> None:
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(0)\ndef handle(skb): pass\n")
    r = cpumap("run", "--handler", "quits:handle", cwd=tmp_path)
    assert r.returncode == 2
    assert "called sys.exit(0)" in r.stderr


def test_a_capture_with_no_subcommand_is_run(tmp_path) -> None:
    path = tmp_path / "trace.pcapng"
    write_capture(path, Generator(flows=8, count=300, seed=3).batches(100))
    r = cpumap(str(path), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "received  │    300" in r.stdout or re.search(r"received\s+│\s+300", r.stdout)


def test_a_module_in_the_working_directory_loads_as_with_python_m(tmp_path) -> None:
    (tmp_path / "mymodule.py").write_text(
        "import cpumap\n"
        f"def steer(ctx, *, cmap):\n    return cpumap.redirect_map(cmap, {FIRST_CPU})\n"
        "def handle(skb):\n    return True\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = cpumap(
        "run", "-p", "mymodule:steer", "--handler", "mymodule:handle", "--cpus", FIRST_CPU,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert re.search(r"delivered\s+│\s+2,000", r.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="the check applies to root only")
def test_root_refuses_code_others_can_write(tmp_path) -> None:
    mod = tmp_path / "shared_handler.py"
    mod.write_text("def handle(skb):\n    return True\n")
    mod.chmod(0o646)
    r = cpumap("run", "--handler", "shared_handler:handle", cwd=tmp_path)
    assert r.returncode == 2
    assert "refusing to run" in r.stderr and f"chmod go-w {mod}" in r.stderr
    r = cpumap("run", "--handler", f"{mod}:handle")
    assert r.returncode == 2 and "writable by others" in r.stderr
    mod.chmod(0o644)
    tmp_path.chmod(tmp_path.stat().st_mode | stat.S_IWOTH)  # its directory, now
    try:
        r = cpumap("run", "--handler", f"{mod}:handle")
        assert r.returncode == 2 and f"chmod go-w {tmp_path}" in r.stderr
    finally:
        tmp_path.chmod(0o700)
    r = cpumap("run", "--handler", f"{mod}:handle", "--quiet")
    assert r.returncode == 0, r.stderr


# -- what it shows -------------------------------------------------------------------------


def test_piped_output_is_not_cut() -> None:
    r = cpumap("run")  # stdout is a pipe here
    assert r.returncode == 0
    assert "…" not in r.stdout  # rich's ellipsis: a cut cell
    endpoints = re.findall(r"\[fd[0-9a-f:]+\]:\d+", r.stdout)
    assert endpoints and all(len(e) > 20 for e in endpoints)
    assert max(len(line) for line in r.stdout.splitlines()) > 80
    assert "\x1b[" not in r.stdout  # and no colour codes in a log


def _big_capture(tmp_path: Path, frames: int = 200_000) -> Path:
    path = tmp_path / "big.pcap"
    gen = Generator(flows=64, sizes=(64,), count=frames, seed=5, undersize="clamp")
    write_capture(path, gen.batches(10_000), format="pcap")
    return path


def test_the_progress_of_a_file_in_json(tmp_path) -> None:
    path = _big_capture(tmp_path)
    r = cpumap("run", str(path), "--json", "--interval", "0.01", "--handler", "count")
    assert r.returncode == 0, r.stderr
    *intervals, summary = [json.loads(line) for line in r.stdout.splitlines()]
    progress = [x["progress"] for x in intervals]
    assert progress and all(p["total"] == path.stat().st_size for p in progress)
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1
    assert summary["rx"] == 200_000


def test_the_live_view_and_progress_bar_on_a_terminal(tmp_path) -> None:
    """On a terminal (a pty here) the live view is drawn, with the file's progress bar."""
    path = _big_capture(tmp_path, 400_000)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [CPUMAP, "run", str(path), "--interval", "0.01", "--handler", "count", "-e"],
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "160", "LINES": "60", "TERM": "xterm"},
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen[-2000:]
    assert "enqueue to cpu" in screen and "kthread cpu" in screen and "bulk-avg" in screen
    assert "rx 0 -> cpu" in screen and "rx 0 on cpu" in screen  # --extended
    assert re.search(r"\[#*\.*\]\s+\d+%\s+[\d.,]+ [kM]B of [\d.,]+ [kM]B", screen)
    assert "every frame accounted for" in screen  # the summary after the live view


def test_a_worker_that_dies_is_reported_and_the_status_says_so() -> None:
    """A lossless run whose worker is killed mid-run: the replacement is named, every
    frame still has an outcome (some ``lost``), and the exit status is 3."""
    proc = subprocess.Popen(
        [
            CPUMAP,
            "run",
            "--generate",
            "100000000",
            "--handler",
            "count",
            "--duration",
            "3",
            "--json",
            "-i",
            "0.1",
            "--cpus",
            FIRST_CPU,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(_readline(proc))
        (victim,) = [e["pid"] for e in first["entries"]]
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["exit_status"] == 3 and summary["accounted"]
    died = f"died 1 time(s) (pid {victim} killed by SIGKILL)"
    assert any(died in n for n in summary["notes"]), summary["notes"]
    assert pid_gone(victim)


def test_a_closed_pipe_ends_the_run_quietly() -> None:
    r = subprocess.run(
        f"{CPUMAP} run --generate 100000000 --json -i 0.01 | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert json.loads(r.stdout)["type"] == "interval"
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
