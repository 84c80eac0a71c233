"""Every side in one run: the entry point of the benchmark suite (``benchmarks/suite``).

    .venv/bin/python benchmarks/bench_all.py [--quick] [--json FILE] [--plot FILE.png]

``cpumap bench ARGS`` runs this script from a source checkout (``cpumap/cli/bench.py``).
See ``benchmarks/suite/__init__.py`` for what is measured and docs/performance.md for the
last run's table.
"""

import sys

from suite import main  # this script's directory is on sys.path: benchmarks/suite

if __name__ == "__main__":
    sys.exit(main())
