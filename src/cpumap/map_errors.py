"""How a map operation fails, the kernel's way: :class:`MapError`, an ``OSError`` with the
kernel's errno, the checks its u32/u64 arguments get, and the key walk ``bpftool map dump``
does.

Shared by the local map (``engine/map.py``) and the cluster map (``cluster/map.py``), so
that both answer bad input with the same errors.
"""

from __future__ import annotations

import errno
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
