"""``python -m cpumap.bench``: see :mod:`cpumap.bench`."""

import sys

from .runner import main

sys.exit(main())
