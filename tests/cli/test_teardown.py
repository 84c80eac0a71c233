"""A run ends with nothing of its map left in the process: no segment's descriptor, no
mapping, once its objects are collected (the map, its RX producer and their threads hold
each other in reference cycles: the collector's next pass frees them, not the return).
And the command's own exit (``gc.freeze`` before the interpreter's teardown) still
flushes its output and exits with the run's status."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cpumap
from cpumap.cli import main

DEMO = Path(cpumap.__file__).resolve().parent / "data" / "demo.pcapng"


def segments_held() -> list[str]:
    """This process's descriptors and mappings of cpumap's shared segments (memfds)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if "memfd:cpumap-" in target:
                held.append(f"fd {fd}: {target}")
    with open("/proc/self/maps") as f:
        held += [f"mapping: {line.strip()}" for line in f if "memfd:cpumap-" in line]
    return held


@pytest.mark.slow
def test_a_run_leaves_no_segment_of_its_map() -> None:
    gc.collect()
    assert segments_held() == []  # nothing from earlier tests
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(DEMO), "--quiet"]) == 0
    assert "every frame accounted for" in out.getvalue()
    gc.collect()
    assert segments_held() == []


@pytest.mark.slow
def test_the_command_flushes_its_summary_and_exits_with_the_runs_status() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "cpumap.cli", "run", str(DEMO), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert '"type": "summary"' in ok.stdout.splitlines()[-1]
    bad = subprocess.run(
        [sys.executable, "-m", "cpumap.cli", "run", str(DEMO), "--handler", "no_such:thing"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "no_such" in bad.stderr
