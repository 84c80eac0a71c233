"""How a map operation fails, the kernel's way: :class:`MapError`, an ``OSError`` with the
kernel's errno, the checks its u32/u64 arguments (and its durations in seconds) get, and
the key walk ``bpftool map dump`` does.

Shared by the local map (``engine/map.py``) and the cluster map (``cluster/map.py``), so
that both answer bad input with the same errors.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from .errors import Error

K = TypeVar("K")


class MapError(Error, OSError):
    """A map operation failed as the kernel's would: ``errno`` is the kernel's errno.

    An ``OSError``, so code that caught the kernel's (or this package's) ``OSError`` and
    read ``e.errno`` keeps working.  Unlike a bare ``OSError(errno.ENOENT, ...)`` it is not
    turned into ``FileNotFoundError`` and the like: every map error is this one class, and
    its errno says which.
    """


def map_error(code: int, detail: str) -> MapError:
    """``MapError(code)`` whose message is the errno's text and what was wrong:
    ``str(e)`` is ``"[Errno N] <strerror>: <detail>"``, ``e.strerror`` that message."""
    return MapError(code, f"{os.strerror(code)}: {detail}")


def as_uint(value: object, bits: int, what: str) -> int:
    """A Python int as the kernel's u32/u64 argument: must fit, no silent wrap."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    v = int(value)
    if not 0 <= v < (1 << bits):
        raise OverflowError(f"{what} {v} does not fit in u{bits}")
    return v


def as_seconds(value: object, what: str, *, zero_ok: bool = True) -> float:
    """A duration argument in seconds: a real number, finite, >= 0 (> 0 unless
    ``zero_ok``).  NaN and infinity are refused: a NaN deadline never passes and never
    fails a comparison, and an infinite one turns a bounded wait into a hang."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{what} must be a finite number of seconds {bound}, not {value!r}")
    return v


def walk_keys(get_next_key: Callable[[K | None], K]) -> Iterator[K]:
    """Every key, by walking ``get_next_key`` from None until it raises ENOENT."""
    key: K | None = None
    while True:
        try:
            key = get_next_key(key)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return
            raise
        yield key
