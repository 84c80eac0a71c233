"""Soak of the command line itself: ``cpumap run --generate`` for minutes while its
workers are stopped (SIGSTOP ... SIGCONT) and now and then killed; the identity check and
the figures at the end.

Not part of CI (it runs for ten minutes by default)::

    python benchmarks/soak_cli.py                 # 10 minutes
    python benchmarks/soak_cli.py --minutes 3     # shorter

``benchmarks/soak.py`` soaks the engine's API (reconfigurations, two producer processes,
RSS); this one drives the ``cpumap`` process as a user does, through its ``--json``
stream, and reuses soak.py's RSS sampling.  The command line has no configuration reload
to exercise (its entries are fixed for a run), so the faults are the processes':

1. **Baseline**: ``cpumap run --generate`` on every possible CPU for ``--baseline``
   seconds, untouched: its rate (rx per second) is the run's baseline.
2. **Soak**: the same command for ``--minutes``, and meanwhile, every ``--stop-every``
   seconds, one random live worker is stopped with SIGSTOP for a random 0.2-3 s and
   continued; every ``--kill-every`` seconds (0: never) one is killed with SIGKILL (the
   supervisor replaces it).  Generated traffic is lossless: a stopped worker's ring
   fills and the producer waits (less than its 10 s backpressure), so a stop costs time,
   not frames; a kill costs the frames the worker held (``lost``).

At the end it prints the figures and checks, from the command's final JSON summary:
``rx == sum(outcomes)`` with nothing in flight (and the summary's own ``accounted``),
``lost`` no more than the kills could cost (a batch each), its exit status (0, or 3 when
a worker died or frames were lost), and that none of its processes outlived it.  The soak's rate is
printed as a ratio of the baseline's, measured in the same run.  Exit status 1 if a
check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cpumap import possible_cpus
from soak import rss_kib

BATCH = 1024  # the command's default worker batch: what a kill may cost at most
FOREVER = 10**15  # --generate N: more frames than any soak sends


@dataclass
class Run:
    """One ``cpumap run`` process and what its JSON stream said."""

    proc: subprocess.Popen[str]
    workers: list[int] = field(default_factory=list)  # live worker pids, last interval
    summary: dict[str, Any] | None = None
    intervals: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        """Read its stdout to the end (a thread): intervals and the summary."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if obj.get("type") == "interval":
                pids = [e["pid"] for e in obj["entries"] if e["pid"] and e["state"] == "active"]
                with self.lock:
                    self.workers = pids
                    self.intervals += 1
            elif obj.get("type") == "summary":
                self.summary = obj

    def live_workers(self) -> list[int]:
        with self.lock:
            return list(self.workers)


def start(seconds: float, cpus: list[int]) -> tuple[Run, threading.Thread]:
    """``cpumap run --generate`` over ``cpus`` for ``seconds``, its JSON read by a thread."""
    cmd = [
        sys.executable,
        "-m",
        "cpumap.cli",
        "run",
        "--generate",
        str(FOREVER),
        "--cpus",
        ",".join(map(str, cpus)),
        "--duration",
        str(seconds),
        "--json",
        "-i",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = Run(proc)
    reader = threading.Thread(target=run.read, daemon=True)
    reader.start()
    return run, reader


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (from /proc)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{d}/stat") as f:
                parent[int(d)] = int(f.read().rpartition(")")[2].split()[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo.extend(kids)
    return out


def finish(run: Run, reader: threading.Thread, seconds: float) -> tuple[int, str]:
    """Wait for the command to end on its own; its exit status and stderr."""
    try:
        rc = run.proc.wait(seconds + 120)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        rc = run.proc.wait()
    reader.join(30)
    assert run.proc.stderr is not None
    return rc, run.proc.stderr.read()


def baseline(seconds: float, cpus: list[int]) -> float:
    """rx per second of an untouched run."""
    run, reader = start(seconds, cpus)
    rc, err = finish(run, reader, seconds)
    if run.summary is None:
        raise SystemExit(f"the baseline run gave no summary (status {rc}):\n{err}")
    return run.summary["rx"] / run.summary["elapsed_s"]


@dataclass
class Faults:
    stops: int = 0
    stopped_s: float = 0.0
    kills: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)  # (t, KiB) of the command


def torment(run: Run, args: argparse.Namespace, rng: random.Random) -> Faults:
    """Stop and kill random workers until the command ends; sample its RSS."""
    faults = Faults()
    t0 = time.monotonic()
    next_stop, next_kill, next_rss = args.stop_every, args.kill_every or float("inf"), 10.0
    while run.proc.poll() is None:
        time.sleep(0.05)
        now = time.monotonic() - t0
        if now > args.minutes * 60 - 5:  # leave the end alone: the drain is checked
            continue
        workers = run.live_workers()
        if now >= next_rss:
            faults.rss.append((now, rss_kib(run.proc.pid)[0]))
            next_rss += 10.0
        if not workers:
            continue
        if now >= next_stop:
            pause = rng.uniform(0.2, 3.0)
            victim = rng.choice(workers)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGSTOP)
                time.sleep(pause)
                os.kill(victim, signal.SIGCONT)
                faults.stops += 1
                faults.stopped_s += pause
            next_stop = now + pause + args.stop_every
        if now >= next_kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(workers), signal.SIGKILL)
                faults.kills += 1
            next_kill += args.kill_every
    return faults


def check(summary: dict[str, Any], rc: int, faults: Faults, left: set[int]) -> list[str]:
    """What failed, in words (empty: every check passed)."""
    failed = []
    outcomes = summary["outcomes"]
    if summary["rx"] != sum(outcomes.values()) or summary["in_flight"] != 0:
        failed.append(f"identity: rx {summary['rx']} != {sum(outcomes.values())} outcomes")
    if not summary.get("accounted"):
        failed.append("the summary says the books are not accounted")
    if outcomes["lost"] > faults.kills * BATCH:
        failed.append(f"lost {outcomes['lost']} > {faults.kills} kills x {BATCH}")
    deaths = summary["counters"]["worker_deaths"]
    if rc not in (0, 3) or (rc == 3) != (outcomes["lost"] > 0 or deaths > 0):
        failed.append(f"exit status {rc} (lost {outcomes['lost']}, {deaths} worker deaths)")
    if left:
        failed.append(f"processes outlived the command: {sorted(left)}")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--baseline", type=float, default=15.0, help="seconds of untouched run")
    ap.add_argument("--stop-every", type=float, default=5.0, help="seconds between stops")
    ap.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    cpus = sorted(possible_cpus())
    base = baseline(args.baseline, cpus)
    print(f"baseline: {args.baseline:g} s untouched, {base:,.0f} rx/s", flush=True)
    seconds = args.minutes * 60
    run, reader = start(seconds, cpus)
    faults = torment(run, args, rng)
    rc, err = finish(run, reader, seconds)
    left = descendants(run.proc.pid) if run.proc.pid else set()
    if run.summary is None:
        print(f"no summary (exit status {rc}):\n{err}")
        return 1
    s = run.summary
    rate = s["rx"] / s["elapsed_s"]
    counters = s["counters"]
    failed = check(s, rc, faults, left)
    figures = {
        "minutes": args.minutes,
        "baseline_rx_per_s": base,
        "soak_rx_per_s": rate,
        "ratio_vs_baseline": rate / base,
        "stops": faults.stops,
        "stopped_s": faults.stopped_s,
        "kills": faults.kills,
        "worker_deaths": counters["worker_deaths"],
        "stuck_workers_at_end": counters["stuck_workers"],
        "rx": s["rx"],
        "outcomes": {k: v for k, v in s["outcomes"].items() if v},
        "in_flight": s["in_flight"],
        "exit_status": rc,
        "rss_kib": [r for _, r in faults.rss],
        "failed": failed,
    }
    print(
        f"soak: {args.minutes:g} min, {faults.stops} stops ({faults.stopped_s:.0f} s stopped), "
        f"{faults.kills} kills, {counters['worker_deaths']} deaths handled"
    )
    print(f"rx {s['rx']:,}; outcomes {figures['outcomes']}; in flight {s['in_flight']}")
    print(
        f"identity exact: {s['rx'] == sum(s['outcomes'].values()) and s['in_flight'] == 0}; "
        f"accounted: {s.get('accounted')}; exit status {rc}; processes left: {len(left)}"
    )
    print(f"rate {rate:,.0f} rx/s = {rate / base:.2f} x the baseline's {base:,.0f} rx/s")
    if faults.rss:
        first, last = faults.rss[0][1], faults.rss[-1][1]
        print(f"RSS of the command: {first:,} KiB at 10 s -> {last:,} KiB at the last sample")
    for f in failed:
        print(f"FAILED: {f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
