"""Where a ``cpumap run FILE --quiet`` spends its wall clock outside its frames: each phase
from exec to exit, for a tiny capture and a big one, median of N fresh processes.

    python benchmarks/bench_startup.py                       # the demo capture, this tree
    python benchmarks/bench_startup.py --capture big.pcap -n 3
    python benchmarks/bench_startup.py --baseline ../main    # A/B: another checkout's src
    python benchmarks/bench_startup.py --importtime          # -X importtime's top offenders

How: each run is a fresh interpreter running :data:`DRIVER`, which imports the CLI, wraps
the functions of ``cpumap.cli.run`` that a run goes through (by their module globals, which
is how ``run`` calls them: nothing in the package is changed) and records a monotonic
timestamp at each boundary; the parent records the exec before and the exit after, on the
same clock (``CLOCK_MONOTONIC`` is system-wide).  The phases:

    interpreter   exec -> the driver's first line (python, site, the editable finder)
    imports       import cpumap.cli and the run module a capture run uses
    parse         argv -> RunConfig (argparse, the handler and program loaded)
    source        the capture opened, the banner
    map           CpuMap(): the frame pool, the rings, the control segment, its thread
    entries       the steering program, a worker forked per CPU, its handler set up
    feed setup    the view, the RX producer, the pinning
    first frame   the first batch read and received
    frames        the first batch received -> the last one received
    drain         the last received -> every frame has its outcome
    close         the workers drain, run finish() and exit; joined
    report        the source's facts, the map's report, the RunReport
    summary       the text (or JSON) summary rendered and written
    exit          main() returned -> the process is gone (atexit, finalization)

Bytecode: each tree's modules are compiled first (``compileall``), as ``pip install``
leaves a package; with ``PYTHONDONTWRITEBYTECODE=1`` in the environment (as on our test
VM) an editable checkout is otherwise compiled from source at every start, which costs
more than the imports themselves.  ``--as-is`` measures it that way.

A/B against another checkout (``--baseline DIR``): its ``src`` goes first on PYTHONPATH,
with this tree's compiled helpers copied in when it has none (they are built in place).
Ratios are baseline / this tree, in the same run, interleaved (A B A B ...).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
DEMO = HERE / "src" / "cpumap" / "data" / "demo.pcapng"

# Runs in the child: nothing but builtins before the first timestamp.
DRIVER = r"""
import time
T = {"start": time.monotonic()}
import sys
import cpumap.cli as cli
import cpumap.cli.run as R
T["imported"] = time.monotonic()

def mark(name):  # the first time of each, but the last frame's last
    if name not in T or name == "last frame":
        T[name] = time.monotonic()

def wrap(name, fn):
    def wrapped(*a, **k):
        mark(name + "<")
        try:
            return fn(*a, **k)
        finally:
            mark(name + ">")
    return wrapped

for name in ("run", "open_source", "new_map", "start_and_feed", "start_entries", "drain",
             "close_map", "write_outputs", "local_report", "show"):
    setattr(R, name, wrap(name, getattr(R, name)))
if getattr(cli, "run_command", None) is not None:
    cli.run_command = R.run
feed = R.feed
def feed_marked(receive, *a, **k):
    first = [True]
    def received(batch):
        receive(batch)
        if first[0]:
            first[0] = False
            mark("first frame")
        mark("last frame")
    mark("feed<")
    try:
        return feed(received, *a, **k)
    finally:
        mark("feed>")
R.feed = feed_marked
marks_path = sys.argv[1]
sys.argv = ["cpumap", *sys.argv[2:]]
rc = cli.main()  # as the command calls it
mark("main>")
sys.stdout.flush()
with open(marks_path, "w") as f:
    f.writelines(f"{name}\t{t!r}\n" for name, t in T.items())
sys.exit(rc)
"""

PHASES = (
    ("interpreter", "exec", "start"),
    ("imports", "start", "imported"),
    ("parse", "imported", "run<"),
    ("source", "run<", "new_map<"),
    ("map", "new_map<", "new_map>"),
    ("entries", "new_map>", "start_entries>"),
    ("feed setup", "start_entries>", "feed<"),
    ("first frame", "feed<", "first frame"),
    ("frames", "first frame", "last frame"),
    ("drain", "last frame", "drain>"),
    ("close", "close_map<", "close_map>"),
    ("report", "close_map>", "show<"),
    ("summary", "show<", "show>"),
    ("exit", "main>", "exit"),
)


def one_run(python: str, env: dict[str, str], argv: list[str]) -> dict[str, float]:
    """One fresh process: its timestamps, by name."""
    with tempfile.NamedTemporaryFile("r", suffix=".tsv") as marks:
        t0 = time.monotonic()
        out = subprocess.run(
            [python, "-c", DRIVER, marks.name, *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        t1 = time.monotonic()
        if out.returncode != 0:
            raise SystemExit(f"exit status {out.returncode}: {out.stderr.strip()[-800:]}")
        stamps = {"exec": t0, "exit": t1}
        for line in marks.read().splitlines():
            name, _, t = line.partition("\t")
            stamps[name] = float(t)
    return stamps


def phases(stamps: dict[str, float]) -> dict[str, float]:
    """Each phase in ms, and the whole run; a phase whose marks are missing is left out."""
    out = {}
    for name, a, b in PHASES:
        if a in stamps and b in stamps:
            out[name] = (stamps[b] - stamps[a]) * 1e3
    out["total"] = (stamps["exit"] - stamps["exec"]) * 1e3
    out["outside frames"] = out["total"] - out.get("frames", 0.0)
    return out


def tree_env(src: Path | None) -> dict[str, str]:
    """The environment that makes the child import ``src``'s cpumap (None: this tree's)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def baseline_src(checkout: Path, scratch: Path) -> Path:
    """A copy of ``checkout``'s committed ``src`` (HEAD) with this tree's compiled helpers."""
    dest = scratch / "baseline"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(checkout), "archive", "HEAD", "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for so in (HERE / "src" / "cpumap").glob("*.so"):
        shutil.copy2(so, dest / "src" / "cpumap" / so.name)
    return dest / "src"


def compile_tree(src: Path) -> None:
    """Write ``src``'s bytecode caches (``__pycache__``: ignored by git)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(src / "cpumap")],
        stdout=subprocess.DEVNULL,
        check=True,
    )


def measure(trees: dict[str, dict[str, str]], argv: list[str], n: int) -> dict[str, dict]:
    """``n`` runs of each tree, interleaved; the median of each phase."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(n):
        for name, env in trees.items():
            runs[name].append(phases(one_run(sys.executable, env, argv)))
    return {
        name: {k: statistics.median(r[k] for r in rs if k in r) for k in rs[0]}
        for name, rs in runs.items()
    }


def show(label: str, medians: dict[str, dict[str, float]]) -> None:
    names = list(medians)
    print(f"\n{label}: median ms" + (f"; ratio {names[0]}/{names[1]}" if len(names) > 1 else ""))
    print(f"  {'phase':<15}" + "".join(f"{n:>12}" for n in names) + ("   ratio" * (len(names) > 1)))
    for phase in medians[names[0]]:
        row = [medians[n].get(phase, float("nan")) for n in names]
        ratio = f"{row[0] / row[1]:7.2f}x" if len(row) > 1 and row[1] > 0 else ""
        print(f"  {phase:<15}" + "".join(f"{v:12.1f}" for v in row) + f" {ratio}")


def importtime(env: dict[str, str], top: int) -> None:
    """``python -X importtime -c 'import cpumap.cli'``: the top modules by own time."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import cpumap.cli, cpumap.cli.run"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    rows = []
    for line in out.splitlines():
        if line.startswith("import time:") and "|" in line and "self" not in line:
            own, cum, mod = line[len("import time:") :].split("|")
            rows.append((int(own), int(cum), mod.rstrip()))
    print(f"\n-X importtime: {len(rows)} modules, {sum(r[0] for r in rows) / 1e3:.1f} ms own")
    print(f"  {'own ms':>7} {'cum ms':>7}  module")
    for own, cum, mod in sorted(rows, reverse=True)[:top]:
        print(f"  {own / 1e3:7.1f} {cum / 1e3:7.1f}  {mod.strip()}")
    ours = [r for r in rows if r[2].strip().startswith("cpumap")]
    print(f"  cpumap's own modules: {len(ours)}, {sum(r[0] for r in ours) / 1e3:.1f} ms own")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", action="append", help="a capture to run (repeatable)")
    ap.add_argument("-n", type=int, default=5, help="runs of each (median)")
    ap.add_argument("--baseline", type=Path, help="another checkout: its HEAD's src as A")
    ap.add_argument("--importtime", type=int, nargs="?", const=20, metavar="TOP")
    ap.add_argument("--as-is", action="store_true", help="no compileall first (see above)")
    ap.add_argument("extra", nargs="*", help="more `cpumap run` arguments (after --)")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    dont_write = os.environ.get("PYTHONDONTWRITEBYTECODE")
    print(
        f"PYTHONDONTWRITEBYTECODE={dont_write!r}; bytecode "
        + ("as is" if a.as_is else "compiled first")
    )
    with tempfile.TemporaryDirectory(prefix="bench_startup.") as scratch:
        srcs: dict[str, Path | None] = {}
        if a.baseline is not None:
            srcs["baseline"] = baseline_src(a.baseline, Path(scratch))
        srcs["this tree"] = None
        if not a.as_is:
            for src in srcs.values():
                compile_tree(src or HERE / "src")
        trees = {name: tree_env(src) for name, src in srcs.items()}
        if a.importtime:
            for name, env in trees.items():
                print(f"\n[{name}]", end="")
                importtime(env, a.importtime)
        for capture in a.capture or [str(DEMO)]:
            argv = ["run", capture, "--quiet", *a.extra]
            show(f"cpumap {' '.join(argv)}", measure(trees, argv, a.n))
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
