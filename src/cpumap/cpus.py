"""CPU numbers: the kernel's list format, and which CPUs exist and may be used here.

Rule: every module that reads a CPU list (``/sys/devices/system/cpu/*``, a ``--cpus``
argument) or asks which CPUs there are does it through this module.

* ``nr_cpus()`` is the kernel's ``NR_CPUS`` (``kernel_max + 1``): a cpumap's
  ``max_entries`` may not exceed it.
* ``possible_cpus()`` are the CPUs the kernel may ever bring up: a cpumap entry may only
  be populated for one of them (ENODEV otherwise).
* ``usable_cpus()`` are the possible CPUs this process may run on (its affinity mask,
  which a cpuset or ``taskset`` narrows): where workers can really be pinned.

The first two are read once per process: they do not change while the system runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache

_SYS_CPU = "/sys/devices/system/cpu"


def parse_cpu_list(text: str) -> frozenset[int]:
    """The CPUs of a list in the kernel's format, such as ``"0-3,8,10-11\\n"``.

    Raises ``ValueError`` naming the part that is not a number or a range ``lo-hi``.
    Empty parts (a trailing comma, an empty string) contribute nothing.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"{part!r} is not a CPU number or a range like 0-3") from None
        if first < 0 or last < first or (dash and not hi):
            raise ValueError(f"{part!r} is not a CPU number or a range like 0-3")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 8]`` as ``"0-3,8"``: the kernel's format, ranges folded."""
    parts: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            parts.append(_run(run))
        run = [c]
    if run:
        parts.append(_run(run))
    return ",".join(parts)


def _run(run: list[int]) -> str:
    if len(run) == 1:
        return str(run[0])
    if len(run) == 2:
        return f"{run[0]},{run[1]}"
    return f"{run[0]}-{run[-1]}"


@cache
def nr_cpus() -> int:
    """The kernel's ``NR_CPUS``: ``/sys/devices/system/cpu/kernel_max`` + 1."""
    try:
        with open(f"{_SYS_CPU}/kernel_max") as f:
            return int(f.read()) + 1
    except (OSError, ValueError):
        return max(os.cpu_count() or 1, 1)


@cache
def possible_cpus() -> frozenset[int]:
    """CPUs the kernel considers possible (``/sys/devices/system/cpu/possible``)."""
    try:
        with open(f"{_SYS_CPU}/possible") as f:
            return parse_cpu_list(f.read())
    except (OSError, ValueError):
        return frozenset(range(os.cpu_count() or 1))


def usable_cpus() -> list[int]:
    """The possible CPUs this process may run on, in order (its affinity mask today)."""
    return sorted(possible_cpus() & os.sched_getaffinity(0))


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the block on ``cpu`` only (None: as is), then restore the affinity.

    ``sched_setaffinity(0, ...)`` sets the calling thread's mask only: threads already
    running keep theirs, threads started inside the block inherit ``{cpu}``.
    """
    if cpu is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)
