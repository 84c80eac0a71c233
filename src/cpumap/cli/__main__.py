"""``python -m cpumap.cli ...`` is ``cpumap ...`` (the benchmark runs the CLI this way, with
the interpreter it runs under)."""

import sys

from . import main

sys.exit(main())
