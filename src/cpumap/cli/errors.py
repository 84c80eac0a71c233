"""What a run ends with: the exit statuses, and the error a bad argument raises."""

from __future__ import annotations

import enum

from ..errors import Error


class UsageError(Error):
    """A bad argument or input, found before any worker starts, with what to do instead."""


class ExitStatus(enum.IntEnum):
    """``cpumap run``'s exit statuses.  When several apply, the first in this order wins:
    a signal, a failed source, lost frames, user-code errors."""

    OK = 0  # every frame has an outcome; no user code failed
    USER_ERROR = 1  # a handler, program or output raised or returned a non-verdict; setup() failed
    USAGE = 2  # a bad argument or input (nothing ran)
    LOST = 3  # frames lost with a worker, a worker died, or a lossless run dropped at a full ring
    SOURCE = 4  # the source failed mid-run (a damaged capture without --skip-bad, ...)
    SIGINT = 130  # interrupted (Ctrl-C): stopped reading, drained, summarised
    BROKEN_PIPE = 141  # stdout was closed (`| head`): the run ends at once, quietly
    SIGTERM = 143  # terminated (SIGTERM): likewise


EXIT_TABLE = """\
exit status:
  0    clean: every frame has an outcome, no user code failed
  1    user code failed: a handler, program or output raised, returned what is not a
       verdict, or its setup() failed (the first traceback of each kind is shown)
  2    usage: a bad argument or input; nothing ran
  3    frames lost with a worker, a worker died or never returned, or a lossless run
       dropped at a full ring
  4    the source failed mid-run (a damaged capture without --skip-bad); the summary
       shows what was read before
  130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: reading stopped, the frames
       read were drained and the summary printed
  141  stdout was closed (a pipe into `head`): the run ends at once
  when several apply: 130/143, then 4, 3, 1"""


class SetupError(Error):
    """A handler's ``setup()`` raised in a worker: the run ends before any frame, with one
    line naming the worker, the exception and where it was raised (exit status 1)."""
