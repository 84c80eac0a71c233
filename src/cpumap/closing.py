"""The one context-manager shape of everything that must be closed: ``with X(...) as x:``
calls ``x.close()`` on the way out, whatever ends the block.

Rule: a class that holds a resource (a descriptor, a mapping, a process) has an idempotent
``close()`` and derives from :class:`Closing` for its ``with`` form, rather than writing
the ``__enter__``/``__exit__`` pair again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Self


class Closing:
    """``__enter__`` returns the object itself; ``__exit__`` calls ``close()``."""

    close: Callable[[], None]  # each subclass's own, idempotent

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
