"""A stop that interrupts a blocked read: a FIFO with no writer, a pipe whose writer
stalls, a terminal -- whatever a capture is read from that may have no byte to give.

Why: a reader checks its caller's stop between reads, but a read that blocks in the
kernel is never between reads.  Python retries a read(2) that a signal interrupted (PEP
475), and the ``open`` of a FIFO with no writer blocks before any read at all.  So the
wait is made explicit: the descriptor is opened without blocking, and before each read
the reader polls it *together with* the stop's own pipe, which :meth:`Stop.set` makes
readable, and with the stop's deadline as the poll's timeout.  A read then only happens
when the descriptor has bytes (or its end) -- a pipe's read(2) returns what it has,
never waiting for more -- and a stop or a deadline ends the wait within one poll.

Regular files are read as before: a disk read does not wait for a writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import stat
import time

from ..closing import Closing

PIPE_SIZE = 1 << 20
_READY = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL


class ReadInterrupted(Exception):
    """A wait for bytes ended by :meth:`Stop.set` or the stop's deadline.

    Not an ``OSError``: a reader's handlers of damaged input (gzip's, the formats') must
    let it through, as they let ``KeyboardInterrupt`` through."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name
        self.why = why  # "stopped" or "deadline"


class Stop(Closing):
    """A stop and a deadline that end a wait for input.

    Safe to :meth:`set` from a signal handler (it runs in the main thread between
    bytecodes, possibly while that thread waits in :meth:`wait_readable`): it stores a flag
    and writes one byte to a non-blocking pipe; a full pipe means a byte is there already.
    The waiting ``poll`` returns EINTR for the signal, Python runs the handler and retries
    the poll (PEP 475), which then finds the pipe readable: no wake-up is lost, whichever
    comes first."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._set = False
        self.deadline: float | None = None  # time.monotonic() at which waits end

    def set(self) -> None:
        self._set = True
        # A full pipe: set already; a closed one: nobody waits any more.
        with contextlib.suppress(OSError):
            os.write(self._w, b"x")

    def is_set(self) -> bool:
        return self._set

    def expired(self) -> bool:
        """The deadline has passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def wait(self, timeout: float) -> bool:
        """Sleep until set or ``timeout`` passes; whether it is set."""
        if not self._set:
            select.select([self._r], [], [], max(timeout, 0.0))
        return self._set

    def wait_readable(self, fd: int, name: str) -> None:
        """Return when ``fd`` has bytes, or its end; raise :class:`ReadInterrupted` when
        the stop is set or its deadline passes first."""
        poller = select.poll()
        poller.register(fd, _READY)
        poller.register(self._r, select.POLLIN)
        while True:
            if self._set:
                raise ReadInterrupted(name, "stopped")
            left = None if self.deadline is None else self.deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ReadInterrupted(name, "deadline")
            # ms, rounded up: a timeout of 0 would spin until the deadline
            ms = None if left is None else int(left * 1000) + 1
            if any(f == fd for f, _ in poller.poll(ms)):
                return

    def close(self) -> None:
        for fd in (self._r, self._w):
            if fd >= 0:
                os.close(fd)
        self._r = self._w = -1


class WaitingReader(io.RawIOBase):
    """A raw binary stream over a descriptor that may have no bytes to give (a FIFO, a
    pipe, a terminal): every read waits in :meth:`Stop.wait_readable` first, so a stop
    or a deadline ends it (:class:`ReadInterrupted`).  Short reads are normal, as from
    any pipe; the capture readers retry them."""

    def __init__(self, fd: int, name: str, stop: Stop, *, closefd: bool = True) -> None:
        super().__init__()
        self._fd = fd
        self.name = name
        self._stop = stop
        self._closefd = closefd
        # A bigger pipe buffer: fewer wake-ups and reads of a fast writer (64 KiB by
        # default; up to /proc/sys/fs/pipe-max-size, 1 MiB, without privilege).
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._stop.wait_readable(self._fd, self.name)
        return os.readv(self._fd, [buffer])

    def ready(self) -> bool:
        """Bytes (or the end) are there now: a read would not wait."""
        poller = select.poll()
        poller.register(self._fd, _READY)
        return bool(poller.poll(0))

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)  # a pipe: ESPIPE (progress knows)

    def close(self) -> None:
        if not self.closed and self._closefd:
            os.close(self._fd)
        super().close()


def open_waiting(path: str, stop: Stop) -> io.RawIOBase | io.BufferedReader:
    """Open ``path`` for reading without blocking on a FIFO that has no writer yet: a
    regular file as a buffered file, anything else as a :class:`WaitingReader`."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # Blocking reads again: a read only ever follows a poll that found bytes.  (A FIFO
        # that never had a writer polls as not ready -- Linux -- where a non-blocking read
        # would say end of file.)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return open(fd, "rb")  # closed by the reader
        return WaitingReader(fd, path, stop)
    except BaseException:
        os.close(fd)
        raise


def waiting(f: io.RawIOBase | io.BufferedIOBase, name: str, stop: Stop) -> WaitingReader | None:
    """A file object already open (stdin) read through ``stop``'s waits, unless it is a
    regular file (None: read it as it is).  The file object keeps its descriptor."""
    try:
        fd = f.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except (AttributeError, OSError, ValueError):
        return None
    return None if regular else WaitingReader(fd, name, stop, closefd=False)
