"""The embedded default: a small capture the project generates and ships.

``cpumap run`` with no source reads ``cpumap/data/demo.pcapng``: 2,000 frames of mixed
traffic -- UDP, TCP and ICMP over IPv4 and IPv6, some VLAN-tagged, 64 to 600 bytes, 48
flows -- made by :class:`cpumap.generator.Generator` with a fixed seed and start time, so
that :func:`make_demo_capture` rebuilds it byte for byte (a test checks that the shipped
file is exactly what this code makes).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from .capture import write_capture

DEMO_PACKETS = 2000
DEMO_START_NS = 1_764_000_000_000_000_000  # 2025-11-24T16:00:00Z: fixed, for determinism
DEMO_SPACING_NS = 50_000  # 20 k frames/s


def demo_capture_path() -> Path:
    """Where the shipped demo capture is."""
    return Path(str(resources.files("cpumap") / "data" / "demo.pcapng"))


def make_demo_capture(path: str | os.PathLike[str]) -> int:
    """Write the demo capture to ``path``; returns the number of packets."""
    from .generator import Generator  # only here: a run of the shipped capture needs none

    gen = Generator(
        flows=48,
        sizes=(64, 128, 256, 600),
        protocols=("udp", "tcp", "icmp"),
        ip_versions=(4, 6),
        vlan=(None, None, 100),
        seed=2025,
        count=DEMO_PACKETS,
        start_ns=DEMO_START_NS,
        undersize="clamp",
    )
    batches = []
    for b in gen.batches(DEMO_PACKETS):
        # Timestamps of an unpaced generator are its batch's build time: pin them.
        b.ts_ns[:] = DEMO_START_NS + DEMO_SPACING_NS * np.arange(len(b), dtype=np.int64)
        batches.append(b)
    return write_capture(path, batches, format="pcapng")


if __name__ == "__main__":  # python -m cpumap.demo: rebuild the shipped file
    print(make_demo_capture(demo_capture_path()), "packets written to", demo_capture_path())
