"""Byte streams in and out of capture files: a path or a file object, gzip undone on the way in.

A reader is given a path or a binary file object; :func:`open_input` opens it, sniffs its
first bytes, and when they are gzip's magic reads through a decompressor instead -- by the
content, never the name.  :func:`open_output` is the writers' side: a path is opened (and
owned: the writer closes it), a file object is written as it is.

# XX: bz2/xz/zstd input would slot into ``open_input`` next to gzip; nobody has asked yet.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import IO, Any, BinaryIO, NamedTuple

import numpy as np

from .damage import CaptureError, CaptureErrorKind
from .stop import Stop, WaitingReader, open_waiting, waiting

GZIP_MAGIC = b"\x1f\x8b"


class Prefixed:
    """A read-only stream that first gives back bytes already read while sniffing."""

    def __init__(self, prefix: bytes, f: IO[bytes]) -> None:
        self._prefix = prefix
        self._f = f
        self.name = getattr(f, "name", "")
        self.mode = "rb"

    def read(self, n: int = -1) -> bytes:
        p = self._prefix
        if not p:
            return self._f.read(n)
        if n < 0:
            self._prefix = b""
            return p + self._f.read()
        if n <= len(p):
            self._prefix = p[n:]
            return p[:n]
        self._prefix = b""
        return p + self._f.read(n - len(p))


def read_after(
    f: IO[bytes] | Prefixed,
    prefix: bytes,
    n: int,
    *,
    as_array: bool = False,
    partial: bool = False,
) -> bytearray | np.ndarray:
    """``prefix`` and then up to ``n`` more bytes of ``f`` (fewer only at end of file), in
    one new buffer: a ``bytearray``, or with ``as_array`` a uint8 array (for a parser that
    needs only the buffer protocol).

    Why not ``prefix + read_full(f, n)``: that makes the chunk twice (the read's bytes,
    then the joined copy, each a fresh buffer to fault in); ``readinto`` lands the file's
    bytes where they stay.  Why an array: ``bytearray(n)`` zero-fills what the read
    overwrites at once, ``np.empty`` does not (a quarter less time per chunk, measured).
    Short reads from pipes are retried, as in :func:`read_full` -- unless ``partial``
    (``f`` is a :class:`~cpumap.capture.stop.WaitingReader`): then the read stops at what
    the writer has given so far (at least a byte, none only at the end): a capture that
    trickles through a pipe is parsed as it comes, not when a chunk is full.
    """
    k = len(prefix)
    readinto = getattr(f, "readinto", None)
    if readinto is None:  # a file object of the user's with read() only
        joined = prefix + read_full(f, n)
        return np.frombuffer(joined, dtype=np.uint8) if as_array else bytearray(joined)
    buf: bytearray | np.ndarray = np.empty(k + n, dtype=np.uint8) if as_array else bytearray(k + n)
    got = k
    with memoryview(buf) as view:
        view[:k] = prefix
        while got < k + n:
            more = readinto(view[got:])
            if not more:
                break
            got += more
            if partial and not f.ready():  # type: ignore[union-attr]
                break
    if got < k + n:
        if as_array:
            # A short read of a pipe: its own buffer, not a view keeping the whole chunk.
            return buf[:got].copy() if partial else buf[:got]
        del buf[got:]  # the view is released: the buffer may shrink
    return buf


def read_full(f: IO[bytes] | Prefixed, n: int) -> bytes:
    """Read ``n`` bytes, fewer only at end of file (short reads from pipes are retried)."""
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class Input(NamedTuple):
    stream: IO[bytes] | Prefixed | gzip.GzipFile
    name: str
    head: bytes  # the first bytes of the (decompressed) capture, already read from stream
    compressed: bool
    closers: tuple[Any, ...]  # what close() must close, innermost first
    partial: bool = False  # a pipe or FIFO: a read returns what the writer gave so far


def open_input(
    source: str | os.PathLike[str] | BinaryIO, sniff: int = 4, *, stop: Stop | None = None
) -> Input:
    """Open ``source``, undo gzip if its magic says so, and read the first ``sniff`` bytes.

    With ``stop``, a FIFO, pipe or terminal is read through its waits (``stop.py``): the
    open and every read end with :class:`~cpumap.capture.stop.ReadInterrupted` when it is
    set or its deadline passes, however long the writer keeps silent."""
    closers: list[Any] = []
    raw: Any
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        # Closed by the reader (closers).
        raw = open(name, "rb") if stop is None else open_waiting(name, stop)  # noqa: SIM115
        closers.append(raw)
    else:
        raw = source
        name = str(getattr(source, "name", "<stream>"))
        w = waiting(source, name, stop) if stop is not None else None  # type: ignore[arg-type]
        if w is not None:
            raw = w
            closers.append(w)
    partial = isinstance(raw, WaitingReader)
    try:
        head = read_full(raw, 2)
        if head == GZIP_MAGIC:
            gz = gzip.GzipFile(fileobj=Prefixed(head, raw), mode="rb")  # type: ignore[arg-type]
            closers.insert(0, gz)
            try:
                first = read_full(gz, sniff)
            except (OSError, EOFError, zlib.error) as e:
                raise CaptureError(name, 0, f"gzip: {e}", CaptureErrorKind.BAD_GZIP) from None
            return Input(gz, name, first, True, tuple(closers), partial)
        first = head + read_full(raw, sniff - len(head)) if len(head) == 2 else head
        return Input(raw, name, first, False, tuple(closers), partial)
    except BaseException:
        for c in closers:
            c.close()
        raise


def open_output(path: str | os.PathLike[str] | BinaryIO) -> tuple[BinaryIO, bool, str]:
    """(file, whether we own it, its name) for a writer: a path is opened (and later
    closed by the writer), a file object is written as it is."""
    if isinstance(path, str | os.PathLike):
        return open(path, "wb"), True, os.fspath(path)
    return path, False, str(getattr(path, "name", "<stream>"))
