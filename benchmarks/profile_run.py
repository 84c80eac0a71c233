"""Where the time goes: a sampling profile (py-spy) of a command and of every process it
forks, summed per process and per function -- the figures behind docs/performance.md.

    .venv/bin/python benchmarks/profile_run.py [--rate HZ] [--top N] -- CMD ...

e.g. ``-- .venv/bin/cpumap run big.pcap --quiet`` (the main job; make big.pcap with
``suite.main_job.make_capture`` in benchmarks/).  Needs py-spy (the ``bench`` extra) and root (it
attaches to the forked workers).  Each line: samples, share of the process's samples, and
the function with its file and line; "cumulative" counts a function when it is anywhere
on the stack, "self" only when it is the innermost frame.  py-spy samples running code
only (not a process waiting in the kernel), so shares are of busy time.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

_PATH = re.compile(r"\((?:/[^()]*?/)(?:site-packages/|src/|python3\.\d+/)")


def _clean(frame: str) -> str:
    return _PATH.sub("(", frame)


def summarize(raw: str, top: int) -> str:
    """Per process: the ``top`` functions by cumulative and by self samples."""
    cumulative: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        frames = stack.split(";")
        marks = [i for i, f in enumerate(frames) if f.startswith("process ")]
        proc = frames[marks[-1]].split('"')[0].strip().rstrip(":") if marks else "main"
        rest = [_clean(f) for f in frames[marks[-1] + 1 if marks else 0 :]]
        totals[proc] += n
        for f in set(rest):
            cumulative[proc][f] += n
        if rest:
            own[proc][rest[-1]] += n
    out = []
    for proc, total in totals.most_common():
        out.append(f"=== {proc}: {total} samples")
        for title, table in (("cumulative", cumulative[proc]), ("self", own[proc])):
            out.append(f"-- {title}")
            out += [f"{n:7d} {100 * n / total:5.1f}%  {f}" for f, n in table.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--top", type=int, default=25, help="functions per table")
    ap.add_argument("--raw", help="keep py-spy's raw output here")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to profile")
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not cmd or not os.path.exists(spy):
        print("needs a command after -- and py-spy (pip install 'cpumap[bench]')", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw or os.path.join(tmp, "raw.txt")
        subprocess.run(
            [
                spy,
                "record",
                "--subprocesses",
                "-r",
                str(args.rate),
                "-f",
                "raw",
                "-o",
                raw,
                "--",
                *cmd,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(raw) as f:
            print(summarize(f.read(), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
