"""Where a run's output goes, and what is done when it cannot go there: stdout guarded
(a full disk, a closed pipe), the ``--write`` directory claimed, ``--merge`` written whole.

stdout: a write that fails -- ENOSPC on a full disk or ``/dev/full``, EIO, EPIPE when the
reader of a pipe has gone -- does not raise into the run.  The first failure is kept, the
run's stop is set (reading ends, what was read is drained: as a first signal), later
writes are dropped, and ``run`` ends with one line on stderr and the exit status
(:meth:`Output.exit_status`).  Why stop: what the run shows is its purpose; a run whose
output goes nowhere would hold CPUs for nothing.

``--write DIR``: two runs writing one directory would mix their per-CPU files and merge
each other's.  A run claims the directory with an exclusive ``flock`` on the directory
itself (no lock file to leave behind; the kernel drops it when the process and its
workers are gone, however they end); a second run gets a one-line error before any
worker starts.  ``--merge FILE`` is written to a temporary name beside it and renamed:
a reader never sees half a merge, and two runs merging into one name leave one whole
file (the last), never a mix.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from ..capture import Stop
from ..closing import Closing
from ..sinks import merge_captures
from .args import check_write_dir
from .errors import ExitStatus, UsageError


class Output(Closing):
    """The run's stdout -- the console's file and the JSON lines -- guarded; see the
    module docstring.  :meth:`close` gives the console its own file back."""

    def __init__(self, console: Console, stop: Stop) -> None:
        self.console = console
        self.stop = stop
        self.error: OSError | None = None
        self._file = console.file
        console.file = Guarded(self._file, self)  # type: ignore[assignment]
        self.json = Guarded(sys.stdout, self)

    def failed(self, stream: Any, e: OSError) -> None:
        """The first failed write: keep it, stop the run, keep the exit quiet."""
        if self.error is not None:
            return
        self.error = e
        self.stop.set()
        _quiet(stream)

    def exit_status(self, status: ExitStatus) -> ExitStatus:
        """The run's status, once stdout failed: 141 for a closed pipe, 4 (an output
        failed) otherwise -- unless a signal stopped the run first (its status wins)."""
        if self.error is None or status in (ExitStatus.SIGINT, ExitStatus.SIGTERM):
            return status
        if isinstance(self.error, BrokenPipeError):
            return ExitStatus.BROKEN_PIPE
        return ExitStatus.SOURCE

    def close(self) -> None:
        self.console.file = self._file


class Guarded:
    """A text stream whose failed writes go to :meth:`Output.failed` instead of raising."""

    def __init__(self, stream: IO[str], output: Output) -> None:
        self._stream = stream
        self._output = output

    def write(self, text: str) -> int:
        if self._output.error is None:
            try:
                self._stream.write(text)
            except OSError as e:
                self._output.failed(self._stream, e)
        return len(text)

    def flush(self) -> None:
        if self._output.error is None:
            try:
                self._stream.flush()
            except OSError as e:
                self._output.failed(self._stream, e)

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"


def _quiet(stream: Any) -> None:
    """Point the failed descriptor at /dev/null: Python flushes stdout once more at exit,
    and that flush must not print a second error (or a traceback) after ours."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def reopen_closed_std_fds() -> bool:
    """Descriptors 0-2 that are closed (``cpumap run >&-``) are opened on /dev/null, so
    that no file of the run gets number 1 and a print lands in it; True when stdout was
    one of them (the caller writes to stderr instead)."""
    closed_stdout = False
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            new = os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd``
            if new != fd:
                os.dup2(new, fd)
                os.close(new)
            closed_stdout = closed_stdout or fd == 1
    return closed_stdout


# -- --write and --merge -------------------------------------------------------------------------


def claim_write_dir(directory: Path) -> int:
    """Claim ``--write DIR`` for this run; the descriptor that holds the claim (closing
    it, or the process ending, lets go).  A directory another run holds is a
    :class:`UsageError`.  Checked again once ours: a run that ended between our first check
    and the claim has left its files there."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"--write {directory}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno != errno.EWOULDBLOCK:
            raise UsageError(f"--write {directory}: cannot lock it: {e.strerror}") from None
        raise taken(directory) from None
    try:
        check_write_dir(directory)
    except BaseException:
        os.close(fd)
        raise
    return fd


def taken(directory: Path) -> UsageError:
    return UsageError(
        f"--write {directory}: another cpumap run is writing there; wait for it to end "
        f"or choose another directory"
    )


def claimed_by_another(directory: Path) -> bool:
    """Another run holds ``directory`` now (its files there are not an earlier run's)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno == errno.EWOULDBLOCK
    finally:
        os.close(fd)  # a lock we took goes with it
    return False


def merge_into(files: Sequence[str], into: Path) -> int:
    """Merge ``files`` into ``into`` whole or not at all: written beside it under a
    temporary name, then renamed over it.  The packets merged."""
    tmp = into.with_name(f".cpumap-merge-{os.getpid()}.tmp")
    try:
        n = merge_captures(list(files), tmp)
        os.replace(tmp, into)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
