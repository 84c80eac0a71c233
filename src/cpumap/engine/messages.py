"""What a worker says to its supervisor, as typed records on the worker's pipe.

Who sends what, and when
------------------------
A worker process (worker.py) writes to its pipe; only its supervisor (supervisor.py)
reads it.  In one worker's life, in this order:

* :class:`Ready` -- once, after its handler's (and second stage's) ``setup()`` ran: the
  supervisor waits for it before the update returns.  It says whether the worker could
  pin itself to its CPU.
* :class:`SetupFailed` -- instead of ``Ready``, when a ``setup()`` raised: the traceback,
  which the supervisor raises as ``HandlerSetupError``.  The worker exits after it.
* :class:`Exited` -- exactly once, last, after a ``Ready``: the handler's ``finish()``
  result, the second stage's outputs' reports, the error that ended the worker (if any),
  and its user-code failures (``programs/user_errors.py``).  A worker killed (SIGKILL, a
  crash), or whose ``finish()`` exits the process or closes the pipe, sends none: the
  supervisor then sees end of file and reads the exit code.

Why frozen dataclasses, not dicts: the reader dispatches on the message's *type*
(``match``), so a misspelt key cannot silently read as "absent"; the fields are typed
and documented in one place; and a message cannot change after it was received (a
:class:`~cpumap.engine.supervisor.WorkerResult` copies it).  They pickle like dicts (the
pipe pickles), carrying only what a worker may send: user values (``result``,
``outputs``) are the handler's own and must pickle; when they do not, the worker sends an
``Exited`` with the error instead, so the report is never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..programs.user_errors import UserError


@dataclass(frozen=True)
class Ready:
    """The worker's ``setup()`` calls succeeded: it consumes its ring from now on."""

    pinned: bool  # it runs on its entry's CPU (False: the CPU refused, it runs unpinned)


@dataclass(frozen=True)
class SetupFailed:
    """A ``setup()`` raised in the new worker; the worker exits."""

    error: str  # the formatted traceback


@dataclass(frozen=True)
class Exited:
    """The worker's last message, sent as it exits."""

    pinned: bool
    result: Any = None  # the handler's finish() result
    error: str | None = None  # the formatted traceback of what ended it, if anything
    outputs: tuple[Any, ...] = ()  # the finish() reports of its second stage's outputs
    user_errors: tuple[UserError, ...] = ()  # what failed in user code in this worker
    finish_error: str | None = None  # "finish() failed: ...": it raised, or its result
    # could not be sent (then ``result`` is None)


WorkerMessage = Ready | SetupFailed | Exited
