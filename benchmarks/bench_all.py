"""Every side in one run: a thin wrapper over ``cpumap.bench`` (``cpumap bench``).

    .venv/bin/python benchmarks/bench_all.py [--quick] [--json FILE] [--plot FILE.png]

See ``src/cpumap/bench/__init__.py`` for what is measured and docs/performance.md for the
last run's table.
"""

import sys

from cpumap.bench import main

if __name__ == "__main__":
    sys.exit(main())
