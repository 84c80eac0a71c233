"""The benchmark suite is not in the package: it lives in the checkout's ``benchmarks/``.
Put that directory on ``sys.path`` so that these tests import it as ``suite``, the way
``benchmarks/bench_all.py`` (run as a script from that directory) does."""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
