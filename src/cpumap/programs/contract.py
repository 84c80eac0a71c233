"""The contract between the engine and the code users plug into it: programs and handlers.

Two kinds of user code, each in two forms:

* A **program** is the XDP program.  It runs for every frame before any expensive work --
  on the RX side, or as an entry's second stage on the entry's CPU -- and returns a verdict
  (:class:`~cpumap.abi.Verdict`).  Per frame: ``prog(ctx: XdpContext) -> int``, redirecting
  with ``redirect_map(target, key)``.  Vectorized (marked with :func:`vectorized`):
  ``prog(batch: XdpBatch) -> verdicts | (verdicts, keys) | (verdicts, keys, target)``, numpy
  arrays with one verdict and one key per frame.  Anything that is not a verdict, and any
  exception, is ``XDP_ABORTED`` (``runner.py``).
* A **handler** is the network stack of a map entry.  It runs in the entry's worker, per
  frame ``handler(skb: Skb)`` -- ``False`` drops the frame, anything else accepts it -- or,
  marked with :func:`batch_handler`, per worker batch ``handler(batch: SkbBatch)``
  returning ``None`` (all accepted) or a boolean array, True = accepted, one per frame.

A handler (and each output of a second stage's ``OutputMap``) may have two hooks, called in
the worker process: ``setup(info: WorkerInfo)`` when the worker starts (before its first
frame; if a handler's raises, the map update fails with ``HandlerSetupError``) and
``finish() -> result`` when it exits cleanly (the result is reported in
``CpuMap.results``).  A second-stage program may name its default redirect target in a
``redirect_target`` attribute (an ``OutputMap``, say).

The marks are attributes (``vectorized = True``, ``batch = True``), so a class may simply
declare them.  What cannot carry an attribute (a bound method, a builtin) is wrapped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np

    from ..skb import Skb, SkbBatch
    from .context import XdpBatch, XdpContext

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class WorkerInfo:
    """What a handler's (or second-stage program's) ``setup(info)`` is told about where it
    runs."""

    map_id: int
    key: int
    cpu: int
    qsize: int
    slot: int
    generation: int
    pinned: bool


class Program(Protocol):
    """A per-frame program: a verdict for the frame in ``ctx``."""

    def __call__(self, ctx: XdpContext, /) -> int: ...


class VectorizedProgram(Protocol):
    """A vectorized program: verdicts (and keys, and a target) for a whole batch."""

    vectorized: bool

    def __call__(self, batch: XdpBatch, /) -> Any: ...


class Handler(Protocol):
    """A per-frame handler: ``False`` drops the frame, anything else accepts it."""

    def __call__(self, skb: Skb, /) -> object: ...


class BatchHandler(Protocol):
    """A batch handler: ``None`` accepts every frame, else one boolean per frame."""

    batch: bool

    def __call__(self, batch: SkbBatch, /) -> np.ndarray | None: ...


class Hooks(Protocol):
    """The optional hooks of a handler or an output."""

    def setup(self, info: WorkerInfo) -> None: ...

    def finish(self) -> Any: ...


def vectorized(fn: _F) -> _F:
    """Mark ``fn`` as a vectorized program (called once per batch)."""
    return _mark(fn, "vectorized")


def batch_handler(fn: _F) -> _F:
    """Mark ``fn`` as a batch handler: called once per worker batch with an ``SkbBatch``.

    It returns ``None`` (all accepted) or a boolean array, True = accepted, one per frame.
    """
    return _mark(fn, "batch")


def is_vectorized(program: object) -> bool:
    """Whether ``program`` is marked vectorized: the one test of the mark, everywhere."""
    return bool(getattr(program, "vectorized", False))


def is_batch_handler(handler: object) -> bool:
    """Whether ``handler`` is marked a batch handler: the one test of the mark, everywhere."""
    return bool(getattr(handler, "batch", False))


def redirect_target_of(program: object) -> Any:
    """A second-stage program's default redirect target (None: its own map)."""
    return getattr(program, "redirect_target", None)


def setup(obj: object, info: WorkerInfo) -> None:
    """Call ``obj.setup(info)`` if it has one."""
    hook = getattr(obj, "setup", None)
    if hook is not None:
        hook(info)


def finish(obj: object) -> Any:
    """``obj.finish()`` if it has one, else None."""
    hook = getattr(obj, "finish", None)
    return hook() if hook is not None else None


def has_finish(obj: object) -> bool:
    return hasattr(obj, "finish")


class _Marked:
    """Wraps a callable that cannot carry the marking attribute (a bound method...)."""

    def __init__(self, fn: Any, attr: str) -> None:
        self.fn = fn
        setattr(self, attr, True)
        for hook in ("setup", "finish"):
            if hasattr(fn, hook):
                setattr(self, hook, getattr(fn, hook))

    def __call__(self, arg: Any) -> Any:
        return self.fn(arg)

    def __repr__(self) -> str:
        return f"<{self.fn!r}, marked>"


def _mark(obj: Any, attr: str) -> Any:
    try:
        setattr(obj, attr, True)
    except (AttributeError, TypeError):
        return _Marked(obj, attr)
    return obj
