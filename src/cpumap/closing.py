"""The one context-manager shape of everything that must be closed: ``with X(...) as x:``
calls ``x.close()`` on the way out, whatever ends the block.

Rule: a class that holds a resource (a descriptor, a mapping, a process) has an idempotent
``close()`` and derives from :class:`Closing` for its ``with`` form, rather than writing
the ``__enter__``/``__exit__`` pair again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Self


class Closing:
    """``__enter__`` returns the object itself; ``__exit__`` calls ``close()``."""

    close: Callable[[], None]  # each subclass's own, idempotent

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClosedWhenCollected(Closing):
    """:class:`Closing` for what must not outlive its object even when nobody closes it --
    a socket bound to an interface, a mapping the kernel writes into, an XDP attachment,
    a process: ``__del__`` closes it (errors ignored: the interpreter may be tearing
    down, and ``__init__`` may have failed half way), and ``closed`` reads ``_closed``,
    which the subclass's ``close()`` sets."""

    _closed: bool

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def closed(self) -> bool:
        return self._closed
