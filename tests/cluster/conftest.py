"""Ray for the cluster tests: on the loopback address only, started once per module.

``use_loopback`` must run before Ray is first imported (Ray reads the switch at import):
this conftest is imported before the test modules of this directory.  The whole directory
is skipped where Ray is not installed (``pip install -e '.[test]'`` installs it).
"""

from __future__ import annotations

import pytest

from cpumap.cluster.ray_setup import use_loopback

use_loopback()
pytest.importorskip("ray", reason="Ray is not installed: pip install 'cpumap[cluster]'")

import ray.cloudpickle  # noqa: E402  (after the loopback switch)

from tests.cluster import handlers  # noqa: E402

# The actors import nothing of the tests: their handlers travel by value.
ray.cloudpickle.register_pickle_by_value(handlers)
