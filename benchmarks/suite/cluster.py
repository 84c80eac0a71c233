"""The cluster map against the local map from the command line: ``cpumap run FILE`` and
``cpumap run --ray local FILE``, each with the CLI's defaults, on the same capture -- each
run's frames/s from its own summary (``rx / elapsed_s``: from its first frame to its last
outcome, not Python's or Ray's start).  ``benchmarks/bench_cluster.py`` measures the same
beside the cluster's other figures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys


def ray_missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "Ray not installed (pip install 'cpumap[cluster]')"
    return None


def cli_rate(path: str, *ray: str, timeout: float = 900.0) -> float:
    """frames/s of ``cpumap run [--ray ...] PATH --json`` (from the summary's ``rx`` and
    ``elapsed_s``), after checking that its books balance."""
    cmd = [sys.executable, "-m", "cpumap.cli", "run", *ray, path, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()[-400:]}")
    s = json.loads(done.stdout.splitlines()[-1])
    assert s["in_flight"] == 0 and s["accounted"], s
    return s["rx"] / s["elapsed_s"]
