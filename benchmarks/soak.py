"""Soak: generator traffic for minutes, a reconfiguration every second, a worker SIGKILL
every ten seconds; the RSS of every process and the accounting identity reported.

Not part of CI (it runs for ten minutes by default)::

    python benchmarks/soak.py                 # 10 minutes
    python benchmarks/soak.py --minutes 3     # shorter

Two RX producer processes feed generated traffic (256 flows, 64/512/1400-byte frames)
through ``FlowHash`` over every possible CPU, one lossy, one lossless.  Every second the
controller reconfigures one entry at random (a new queue size, a second-stage program on
or off, or a delete followed by a re-add next second); every ten seconds it SIGKILLs a
random worker.  Every ten seconds it samples the RSS (and its private part, RssAnon) of
the controller, the producers and the workers.  At the end the producers stop, the map
drains, and the script checks ``rx == sum(outcomes)`` and a whole pool, and prints RSS
first/last sample per long-lived process (the controller, the producers) with the
change in per cent, and the range over workers (replaced at every reconfiguration).
Exit status 1 if the identity or the pool fails, or a long-lived process's RSS grew by
more than 5 % between the first sample after warm-up and the last.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import sys
import time

from cpumap import CpuMap, FlowHash, MapOptions, RestartPolicy, possible_cpus
from cpumap.generator import Generator
from suite.rss import status_kib

_MP = multiprocessing.get_context("fork")


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of ``pid`` in KiB; (0, 0) if it is gone."""
    out = status_kib(pid, "VmRSS", "RssAnon")
    return out["VmRSS"], out["RssAnon"]


def feed(m: CpuMap, cpus: list[int], stop, index: int, backpressure: float) -> None:
    """An RX producer process: generated traffic until ``stop`` is set."""
    gen = Generator(flows=256, sizes=(64, 512, 1400), count=None, seed=index, undersize="clamp")
    rx = m.producer(FlowHash(m, cpus), index=index, backpressure=backpressure)
    for batch in gen.batches(1024):
        if stop.is_set():
            break
        rx.receive(batch)
    rx.close()


def second_stage(ctx) -> int:
    """A second stage that passes everything (it runs the program path on the worker)."""
    return 2  # XDP_PASS


def reconfigure(m: CpuMap, cpus: list[int], rng: random.Random, deleted: set[int]) -> str:
    if deleted:
        cpu = deleted.pop()
        m.update(cpu, rng.choice((256, 1024, 4096)))
        return f"re-add {cpu}"
    cpu = rng.choice(cpus)
    what = rng.random()
    if what < 0.2 and len(cpus) > 1:
        m.delete(cpu)
        deleted.add(cpu)
        return f"delete {cpu}"
    if what < 0.5:
        m.update(cpu, m.lookup(cpu), program=None if m.program_of(cpu) else second_stage)
        return f"program {cpu}"
    m.update(cpu, rng.choice((256, 1024, 4096)))
    return f"qsize {cpu}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    cpus = sorted(possible_cpus())
    duration = args.minutes * 60
    samples: dict[str, list[tuple[float, int, int]]] = {}
    worker_rss: list[int] = []
    kills = reconfigs = 0
    with CpuMap(
        max(cpus) + 1, producers=2, options=MapOptions(restart=RestartPolicy(half_life=30.0))
    ) as m:
        for cpu in cpus:
            m.update(cpu, 1024)
        stop = _MP.Event()
        procs = [
            _MP.Process(target=feed, args=(m, cpus, stop, i, bp), daemon=True)
            for i, bp in ((0, 0.0), (1, 5.0))
        ]
        for p in procs:
            p.start()
        roles = {"controller": os.getpid(), "producer-lossy": procs[0].pid}
        roles["producer-lossless"] = procs[1].pid
        deleted: set[int] = set()
        t0 = time.monotonic()
        next_kill = next_sample = 10.0
        second = 1.0
        while (now := time.monotonic() - t0) < duration:
            time.sleep(max(0.0, second - now))
            reconfigure(m, cpus, rng, deleted)
            reconfigs += 1
            second += 1.0
            now = time.monotonic() - t0
            if now >= next_kill:
                pids = [e.pid for e in m.stats().entries if e.pid and e.state == "active"]
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                next_kill += 10.0
            if now >= next_sample:
                for role, pid in roles.items():
                    samples.setdefault(role, []).append((now, *rss_kib(pid)))
                live = [rss_kib(e.pid)[0] for e in m.stats().entries if e.pid]
                worker_rss.extend(r for r in live if r)  # 0: it died since
                s = m.stats()
                print(
                    f"{now:6.0f}s rx {s.rx:>11,} delivered {s.delivered:>11,} "
                    f"lost {s.lost:>6,} deaths {s.worker_deaths:>3} "
                    f"controller {samples['controller'][-1][1]:,} KiB",
                    flush=True,
                )
                next_sample += 10.0
        stop.set()
        for p in procs:
            p.join(60)
        for cpu in deleted:
            m.update(cpu, 1024)
        m.wait_idle(120)
        s = m.stats()
        audit = m.pool.audit()
    identity = s.in_flight == 0 and s.rx == sum(s.outcomes().values())
    report = {
        "minutes": args.minutes,
        "reconfigurations": reconfigs,
        "worker_kills": kills,
        "worker_deaths": s.worker_deaths,
        "rx": s.rx,
        "outcomes": s.outcomes(),
        "in_flight": s.in_flight,
        "identity_exact": identity,
        "pool_whole": audit.whole,
        "rss_kib": {},
    }
    ok = identity and audit.whole
    print(f"\n{args.minutes} min: {reconfigs} reconfigurations, {kills} worker kills")
    print(f"rx {s.rx:,}; outcomes {s.outcomes()}; in flight {s.in_flight}")
    print(f"identity exact: {identity}; pool whole: {audit.whole}")
    for role, rows in samples.items():
        # The first sample after warm-up (a quarter of the run) against the last.
        base = rows[len(rows) // 4] if len(rows) > 3 else rows[0]
        last = rows[-1]
        growth = 100.0 * (last[1] - base[1]) / base[1] if base[1] else 0.0
        report["rss_kib"][role] = {
            "first": rows[0][1],
            "base": base[1],
            "last": last[1],
            "growth_pct": round(growth, 2),
            "anon_base": base[2],
            "anon_last": last[2],
        }
        print(
            f"RSS {role:18} first {rows[0][1]:>8,} KiB  at {base[0]:4.0f}s {base[1]:>8,}  "
            f"last {last[1]:>8,}  ({growth:+.2f} %)  anon {base[2]:,} -> {last[2]:,} KiB"
        )
        if growth > 5.0:
            ok = False
    if worker_rss:
        report["rss_kib"]["workers"] = {"min": min(worker_rss), "max": max(worker_rss)}
        print(f"RSS workers            min {min(worker_rss):,} KiB  max {max(worker_rss):,} KiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
