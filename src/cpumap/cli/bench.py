"""``cpumap bench ARGS``: run this source checkout's benchmark suite with ARGS.

The suite is not part of the installed package: it lives in the checkout's
``benchmarks/`` (the package ``benchmarks/suite``, entry point ``benchmarks/bench_all.py``),
the project's one home for benchmarks.  In an editable install (the README's), this
package is ``<checkout>/src/cpumap``, so the checkout is two directories above it.  Where
there is none (a wheel install), one line on stderr says what to do, exit status 2.

Why this process *becomes* the suite (``os.execv`` of ``sys.executable
benchmarks/bench_all.py ARGS``) rather than importing it or running it as a child:

* Imported (``benchmarks/`` put on ``sys.path``), the suite would run inside the CLI's
  ``main``, under its handlers (a Ctrl-C reported as ``cpumap run``'s "second signal"),
  every name in ``benchmarks/`` (``suite``, ``bench_engine``, ...) would shadow installed
  modules for the rest of the process, and the suite would run one way from here and
  another from ``bench_all.py``.
* As a child, this process would only wait, and waiting is not simple: a Ctrl-C reaches
  both (one process group), ``subprocess.run`` answers it by SIGKILLing the child after
  0.25 s -- before the suite has closed its maps, leaving workers and shared memory
  behind -- and a suite killed by a signal would reach the shell as an exit status.
* Replaced, nothing stands between the terminal and the suite: the same pid gets the
  signals, the shell sees the suite's own exit status (or signal), and the suite's
  ``sys.executable -m cpumap.cli run`` subprocesses use this interpreter and install,
  exactly as when ``bench_all.py`` is run by hand.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import ExitStatus

ENTRY = Path("benchmarks", "bench_all.py")  # relative to the checkout
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../cpumap (this file: cpumap/cli/bench.py)

NO_CHECKOUT = (
    "cpumap bench: error: the benchmark suite lives in a source checkout (benchmarks/), and "
    "this cpumap was installed without one; to run it: git clone the project, then in the "
    "clone `pip install -e '.[bench]'` and `cpumap bench`"
)


def find_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source checkout ``package_dir`` (``<checkout>/src/cpumap``) belongs to, if it
    has the suite's entry point; None otherwise (the package sits in site-packages)."""
    root = package_dir.parent.parent
    return root if (root / ENTRY).is_file() else None


def main(argv: Sequence[str], package_dir: Path = PACKAGE_DIR) -> int:
    """Replace this process by the checkout's suite run with ``argv``; returns only where
    there is no checkout (2, after one line on stderr) or the exec itself fails (2)."""
    checkout = find_checkout(package_dir)
    if checkout is None:
        print(NO_CHECKOUT, file=sys.stderr)
        return ExitStatus.USAGE
    script = str(checkout / ENTRY)
    sys.stdout.flush()  # exec discards what Python has buffered but not written
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, script, *argv])
    except OSError as e:  # e.g. no interpreter at sys.executable any more
        print(f"cpumap bench: error: cannot run {script}: {e}", file=sys.stderr)
    return ExitStatus.USAGE
