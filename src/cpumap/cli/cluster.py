"""``cpumap run --ray ADDRESS FILES...``: the same run with the map's entries as Ray actors.

``--ray auto`` joins the Ray cluster this machine is part of, or starts a local instance
(on the loopback address) when there is none; an address joins that cluster.  ``--cpus``
/ ``-c`` then name entries as ``node:cpu`` (``head:0-1,w1:0``; a bare CPU list means the
driver's node; without them, every CPU of every node but the first CPU of each node that
reads a file, as a local run leaves its RX CPU to the producer).  Each capture is read on
the node ``--source-node FILE=NODE`` names (the driver's by default), steered by the same
programs and handled by the same handlers as a local run, and the run ends in the same
report (``report.py``) as a local one; ``docs/cluster.md`` says what differs and what it
costs.  With no capture, the embedded demo capture is run, as a local run does.

Ray is imported only here, and only when ``--ray`` is given (``cpumap[cluster]``).
"""

from __future__ import annotations

from ..demo import demo_capture_path
from .config import RunConfig
from .errors import UsageError
from .report import RunReport, cluster_report


def run_on_ray(config: RunConfig) -> RunReport:
    """Run ``config``'s captures on the cluster ``config.ray`` names; its report."""
    ray = config.ray
    assert ray is not None  # Invariant: run() sends only --ray runs here
    try:
        from ..cluster import RunOptions, SourceOptions, run_captures
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise UsageError(f"--ray needs Ray: pip install 'cpumap[cluster]' ({e})") from None
    src = config.source
    reading = SourceOptions(lossless=src.lossless, poll_size=src.poll, skip_bad=src.skip_bad)
    captures = src.captures or (str(demo_capture_path()),)
    try:
        result = run_captures(
            captures,
            entries=ray.entries,
            program=config.program.name,
            handler=config.handler.handler,
            ray_address=ray.address,
            qsize=config.qsize,
            source_nodes=dict(ray.source_nodes),
            options=RunOptions(source=reading),
        )
    except (ConnectionError, OSError, ValueError) as e:
        raise UsageError(f"--ray {ray.address}: {e}") from None
    return cluster_report(config, result, result.seconds)
