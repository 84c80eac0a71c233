"""A package's re-exports imported on first use (PEP 562), so that importing a package
costs only what its caller touches.

Why: ``cpumap run FILE`` needs the engine, the programs, the skb and a capture reader; a
package ``__init__`` that imported every module it re-exports made it pay for AF_XDP, the
kernel's bpf(2) layer, the generator and the cluster too (half its start-up).  With
:func:`lazy_exports`, ``cpumap.CpuMap`` and ``from cpumap.engine import CpuMap`` work as
before, and the module that defines the name is imported the first time it is asked for.

    __getattr__, __dir__ = lazy_exports(globals(), {"CpuMap": ".map", ...})

Each package also imports the same names under ``if TYPE_CHECKING:``, for type checkers
and readers: the table and that block list the same names (a test holds them equal).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package whose globals are ``namespace``:
    ``table`` maps each exported name to the module (relative to the package, or
    absolute) that defines it.  A name is looked up once: its value is then stored in the
    package's globals, where the next lookup finds it without calling ``__getattr__``."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        try:
            where = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(where, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__
