"""What went wrong in user code: the first traceback of each kind, and how many followed.

The engine turns a failing program or handler into a counted outcome (``xdp_aborted``,
``handler_error``) and carries on: one bad frame must not stop a capture.  The counters
say *how many*; this module keeps *why*, so that an operator sees the exception once
instead of a bare count.

Per process there is one :data:`LOG` (a worker, a second stage, the RX side).  A *kind* is
``(scope, where, what)``: the map the frames were steered into (``scope``: its
``map_id``; None in a worker, whose process serves one map), the code that failed
(``"handler"``, ``"program"``, ``"output"``) and the exception's type name -- or, for a
return value that is not a verdict, ``"invalid verdict"`` / ``"bad return value"``.  The
first occurrence of a kind keeps its formatted traceback; later ones only count.  At most
:data:`MAX_KINDS` kinds keep text (a program raising a new message each frame cannot
fill memory); the rest are counted under their kind with no text.

Cost: recording happens only on the failure path.  Formatting a traceback (tens of
microseconds) happens once per kind; after that a record is a dict lookup and an add.

Worker processes inherit a copy of their parent's log at fork; :func:`_reset_in_child`
empties it there, so a worker reports only its own errors: ``LOG.report()``, as the
:class:`UserError` records of its last message (``engine/messages.py``'s ``Exited``: a
frozen dataclass pickles as it is), which ``CpuMap.user_errors()`` gathers.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_KINDS = 64
N_VERDICTS = 5  # XDP_ABORTED..XDP_REDIRECT (abi.py; not imported: this stays a leaf)

Kind = tuple[int | None, str, str]


@dataclass(frozen=True)
class UserError:
    """One kind of user-code failure: where, what, the first one's text, how many.
    (:meth:`as_dict` is its JSON form.)"""

    where: str  # "handler", "program", "output", ...
    what: str  # an exception's type name, or "invalid verdict" / "bad return value"
    first: str  # the first one's traceback (or description); "" past MAX_KINDS
    count: int
    cpu: int | None = None  # the worker's CPU; None: the controlling process (RX side)

    def as_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "what": self.what,
            "first": self.first,
            "count": self.count,
            "cpu": self.cpu,
        }


class UserErrorLog:
    """First text and count per kind.  Not thread-safe: one per process, written by the
    one thread that runs user code there (the RX producer's, the worker's)."""

    def __init__(self) -> None:
        self._first: dict[Kind, str] = {}
        self._count: dict[Kind, int] = {}

    def record(
        self,
        where: str,
        exc: BaseException | None = None,
        *,
        what: str | None = None,
        detail: str = "",
        count: int = 1,
        scope: int | None = None,
    ) -> None:
        """Count ``count`` failures of one kind; keep the text of the first."""
        name = what if what is not None else type(exc).__name__
        kind = (scope, where, name)
        n = self._count.get(kind)
        if n is not None:
            self._count[kind] = n + count
            return
        self._count[kind] = count
        if len(self._first) < MAX_KINDS:
            text = _format(exc) if exc is not None else detail
            self._first[kind] = text

    def report(self, scope: int | None = None, cpu: int | None = None) -> list[UserError]:
        """Every kind recorded (those of ``scope`` if given), oldest first."""
        return [
            UserError(where, what, self._first.get(k, ""), n, cpu)
            for k, n in self._count.items()
            for (s, where, what) in (k,)
            if scope is None or s == scope
        ]

    def clear(self) -> None:
        self._first.clear()
        self._count.clear()


LOG = UserErrorLog()


def record(where: str, exc: BaseException | None = None, **kw: Any) -> None:
    """Record into this process's :data:`LOG` (see :meth:`UserErrorLog.record`)."""
    LOG.record(where, exc, **kw)


def note_vectorized_return(out: Any, n: int, where: str, scope: int | None = None) -> None:
    """A vectorized program's batch came out with aborted frames and did not raise: say
    whether its return value was malformed or held verdicts outside 0..4 (an explicit
    ``XDP_ABORTED`` is the program's own choice and is not recorded)."""
    v = out[0] if type(out) is tuple and len(out) in (2, 3) else out
    try:
        arr = np.asarray(v)
    except Exception:
        arr = np.asarray(None)
    if arr.shape == ():
        arr = np.full(n, arr.item() if arr.dtype.kind in "iub" else -1)
    if arr.shape != (n,) or arr.dtype.kind not in "iub":
        record(
            where,
            what="bad return value",
            detail=f"a vectorized program must return {n} verdicts (ints 0..4, optionally "
            f"with {n} keys); it returned {_describe(out)}",
            count=n,
            scope=scope,
        )
        return
    # Booleans pass as 0/1, and a False is an abort the program hardly meant.
    bad = ~arr if arr.dtype.kind == "b" else (arr < 0) | (arr >= N_VERDICTS)
    nbad = int(np.count_nonzero(bad))
    if nbad:
        first = arr[bad][0]
        record(
            where,
            what="invalid verdict",
            detail=f"verdicts are ints 0..4 (XDP_ABORTED..XDP_REDIRECT); got {first!r}",
            count=nbad,
            scope=scope,
        )


def note_per_frame_return(value: Any, where: str, scope: int | None = None) -> None:
    """A per-frame program returned ``value``, which made the frame aborted: record it
    unless it was ``XDP_ABORTED`` (0) itself."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and value == 0:
        return
    record(
        where,
        what="invalid verdict",
        detail=f"a program returns a verdict, an int 0..4 (XDP_ABORTED..XDP_REDIRECT); "
        f"got {_describe(value)}",
        scope=scope,
    )


def note_batch_handler_return(value: Any, n: int) -> None:
    """A batch handler returned ``value``, neither None nor a bool per frame."""
    record(
        "handler",
        what="bad return value",
        detail=f"a batch handler returns None (all accepted) or a bool array of {n} "
        f"(True = accepted); it returned {_describe(value)}",
        count=n,
    )


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if type(value) is tuple:
        return "a tuple (" + ", ".join(_describe(v) for v in value) + ")"
    try:
        text = repr(value)
    except BaseException:  # the user's __repr__ is user code too
        return f"a {type(value).__name__} whose repr() raised"
    return text if len(text) <= 60 else text[:57] + "..."


def _format(exc: BaseException) -> str:
    """The traceback from the user's code on: the first frame is the engine's call."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _reset_in_child() -> None:
    LOG.clear()


os.register_at_fork(after_in_child=_reset_in_child)
