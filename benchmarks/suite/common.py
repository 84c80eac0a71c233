"""What every measurement shares: the frames, pinning, medians, and the result row."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cpumap.generator import Generator

FLOWS = 4096


@dataclass
class Row:
    """One line of the table: a configuration's frames/s (median of ``runs``), or why it
    was not measured (``skipped``)."""

    key: str  #: a stable id, e.g. "ours.frame_handler"
    group: str  #: the table section
    name: str  #: what a reader sees
    fps: float | None = None  #: frames/s, median
    runs: list[float] = field(default_factory=list)  #: every run's frames/s
    baseline: str | None = None  #: key of the row the ratio is against
    ratio: float | None = None  #: fps / baseline's fps
    skipped: str | None = None  #: why not measured
    extra: dict[str, Any] = field(default_factory=dict)  #: drops, µs/frame, seconds ...

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_frames(n: int, size: int = 64, seed: int = 1) -> np.ndarray:
    """``n`` IPv4/UDP frames of ``size`` bytes over :data:`FLOWS` flows, ``[n, size]``."""
    gen = Generator(flows=FLOWS, sizes=size, protocols=("udp",), ip_versions=(4,), seed=seed)
    return gen.frames(n)


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def per_second(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.0002)
