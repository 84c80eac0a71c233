"""Ray for the cluster tests: on the loopback address only.

``use_loopback`` must run before Ray is first imported (Ray reads the switch at import):
this conftest is imported before the test modules of this directory.  Where Ray is not
installed (``pip install -e '.[test]'`` installs it), the modules that need it are not
collected; ``test_places.py`` needs none.
"""

from __future__ import annotations

import importlib.util

from cpumap.cluster.ray_setup import use_loopback

use_loopback()

if importlib.util.find_spec("ray") is None:
    collect_ignore = ["test_local.py", "test_nodes.py"]
else:
    import ray.cloudpickle

    from tests.cluster import handlers

    # The actors import nothing of the tests: their handlers travel by value.
    ray.cloudpickle.register_pickle_by_value(handlers)
