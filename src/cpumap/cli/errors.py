"""What a run ends with: the exit statuses, and the error a bad argument raises."""

from __future__ import annotations

import enum
import errno
import resource

from ..errors import Error


class UsageError(Error):
    """A bad argument or input, found before any worker starts, with what to do instead."""


class ExitStatus(enum.IntEnum):
    """``cpumap run``'s exit statuses.  When several apply, the first in this order wins:
    a signal, a failed source, lost frames, user-code errors."""

    OK = 0  # every frame has an outcome; no user code failed
    USER_ERROR = 1  # a handler, program or output raised or returned a non-verdict; setup() failed
    USAGE = 2  # a bad argument, input or limit (nothing ran)
    LOST = 3  # frames lost with a worker, a worker died, or a lossless run dropped at a full ring
    SOURCE = 4  # the source or an output failed mid-run (a damaged capture, a full disk, ...)
    SIGINT = 130  # interrupted (Ctrl-C): stopped reading, drained, summarised
    BROKEN_PIPE = 141  # stdout was closed (`| head`): the run ends at once, quietly
    SIGTERM = 143  # terminated (SIGTERM): likewise


EXIT_TABLE = """\
exit status:
  0    clean: every frame has an outcome, no user code failed
  1    user code failed: a handler, program or output raised, returned what is not a
       verdict, or its setup() failed (the first traceback of each kind is shown)
  2    usage: a bad argument or input, a path that cannot be looked at, or a limit
       (ulimit -n, -v) the map cannot start under; nothing ran
  3    frames lost with a worker, a worker died or never returned, or a lossless run
       dropped at a full ring
  4    the source or an output failed mid-run (a damaged capture without --skip-bad,
       --merge, stdout on a full disk); the summary shows what was read before
  130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: reading stopped, the frames
       read were drained and the summary printed; a second signal stops at once
       (the workers are killed, what they held counted lost, the summary printed)
  141  stdout was closed (a pipe into `head`): reading stops, quietly
  when several apply: 130/143, then 4, 3, 1"""


class SetupError(Error):
    """A handler's ``setup()`` raised in a worker: the run ends before any frame, with one
    line naming the worker, the exception and where it was raised (exit status 1)."""


class LimitError(UsageError):
    """The map could not start under this process's limits (open files, address space,
    threads): one line naming the limit, exit status 2 -- nothing ran."""


# What a limit is called by the shell that sets it, per errno it causes.
_LIMITS = {
    errno.EMFILE: (resource.RLIMIT_NOFILE, "open files", "ulimit -n", ""),
    errno.ENOMEM: (resource.RLIMIT_AS, "address space", "ulimit -v", " KiB"),
    errno.EAGAIN: (resource.RLIMIT_NPROC, "processes", "ulimit -u", ""),
}


def limit_text(code: int | None) -> str:
    """``(open files: ulimit -n is 8; raise it)`` for an errno that a set limit explains;
    "" when none is set for it."""
    if code not in _LIMITS:
        return ""
    which, what, shell, unit = _LIMITS[code]
    soft, _ = resource.getrlimit(which)
    if soft == resource.RLIM_INFINITY:
        return ""
    value = soft // 1024 if unit else soft
    return f" ({what}: `{shell}` is {value:,}{unit}; raise it)"


def os_error_text(e: OSError) -> str:
    """One line for an ``OSError`` that is not the user's code: the file it names, what
    the kernel said and, for a limit, which one (a path too long, a directory we may not
    enter, a full disk, too many open files)."""
    what = e.strerror or str(e)
    where = f"{e.filename}: " if e.filename is not None else ""
    return f"{where}{what}{limit_text(e.errno)}"


def start_failure(e: BaseException) -> LimitError:
    """Why the map (its segments, its threads, its workers) could not start, as one line."""
    if isinstance(e, OSError):
        cause = e.__cause__  # a worker's start: ENOMEM, from what fork or a pipe said
        hint = limit_text(cause.errno) if isinstance(cause, OSError) else ""
        return LimitError(f"cannot start the map: {os_error_text(e)}{hint}")
    # RuntimeError("can't start new thread"): a thread's stack did not fit the address
    # space, or no more processes (threads count) were allowed.
    hint = limit_text(errno.ENOMEM) or limit_text(errno.EAGAIN)
    return LimitError(f"cannot start the map: {e}{hint}")
