"""The capture reader: the chunk pump every format shares, and the two ways packets come out.

A :class:`CaptureReader` knows no file format: the format modules (``pcap.py``,
``pcapng.py``) subclass it and parse chunks; it owns the pump and hands packets out one
:class:`~cpumap.packets.Packet` at a time, or as :class:`~cpumap.packets.PacketBatch`
columns.  Nothing is read that a caller did not ask for beyond one chunk, so memory is
constant in the file size: a reader holds one chunk (:data:`CHUNK_SIZE`, or one record if a
record is bigger, bounded by :func:`~cpumap.capture.damage.max_caplen`) plus what the
caller keeps.

Theory of operation
-------------------
Python's cost is per call, not per byte.  A reader therefore never makes a ``bytes`` per
packet on the batch path: it reads a big chunk, walks the record headers (the only
per-packet work, a chain: the position of record *i + 1* depends on the length in record
*i*; compiled for pcap, ``cpumap._records``, and one ``struct.unpack_from`` per block for
pcapng), then gathers every header field of the chunk with a few numpy calls and hands out
:class:`PacketBatch` views whose ``start`` indexes into the chunk.  A record cut by the
chunk boundary is carried into the next chunk.

The format modules implement ``_parse(buf, eof) -> (chunk | None, stop)``: parse what they
can of ``buf`` (the carried bytes plus the new read), say where they stopped, and set
``self._need`` when the record at ``stop`` needs more bytes than ``buf`` has.  At end of file
a format module must consume everything (a partial record is damage: ``damage.py``).

The chunk given to a batch is never reused: a batch keeps its chunk alive, and its ``buf`` is
read-only.
"""

from __future__ import annotations

import abc
import operator
import os
import zlib
from collections import deque
from collections.abc import Iterator
from typing import Any, BinaryIO, ClassVar, NamedTuple

import numpy as np

from ..abi import LINKTYPE_RAW
from ..closing import Closing
from ..errors import ClosedResourceError
from ..packets import Packet, PacketBatch
from .damage import MAX_PROBLEMS, CaptureError, CaptureErrorKind
from .streams import Input, open_input, read_after, read_full

CHUNK_SIZE = 1 << 22  # bytes read per chunk: ~8000 typical packets, so numpy's ~2 µs calls vanish


# Link types in files that name another one, as libpcap on Linux and TShark read them:
# 12 is DLT_RAW's value on Linux and most BSDs (LINKTYPE_RAW, 101, is its portable number).
_LINKTYPE_ALIASES = {12: LINKTYPE_RAW}


def canonical_linktype(linktype: int) -> int:
    """The LINKTYPE a file's link-type field means (12, the platform DLT_RAW, is raw IP)."""
    return _LINKTYPE_ALIASES.get(linktype, linktype)


class Chunk(NamedTuple):
    """Packets parsed from one chunk of the file, and the chunk they point into."""

    raw: bytes | bytearray | np.ndarray  # the chunk, never written once parsed
    # batch.buf: a read-only view of raw
    batch: PacketBatch


def chunk_of(
    raw: bytes | bytearray | np.ndarray,
    start: np.ndarray,
    caplen: np.ndarray,
    wire_len: np.ndarray,
    ts_ns: np.ndarray,
    ifindex: np.ndarray,
    linktype: np.ndarray,
) -> Chunk:
    n = len(start)
    buf = np.frombuffer(raw, dtype=np.uint8)
    buf.flags.writeable = False  # a bytearray's view would be writable
    return Chunk(
        raw,
        PacketBatch(
            buf=buf,
            start=start,
            caplen=caplen,
            wire_len=wire_len,
            ts_ns=ts_ns,
            ifindex=ifindex,
            linktype=linktype,
            rx_queue=np.zeros(n, dtype=np.uint32),
        ),
    )


def empty_chunk() -> Chunk:
    return chunk_of(
        b"",
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.uint32),
        np.zeros(0, dtype=np.uint32),
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.uint32),
        np.zeros(0, dtype=np.uint16),
    )


def _compact(c: Chunk, lo: int, hi: int) -> Chunk:
    """Packets ``lo:hi`` of ``c`` copied into a buffer of their own (only their bytes)."""
    b = c.batch
    if hi <= lo:
        return empty_chunk()
    start = b.start[lo:hi]
    first = int(start.min())
    last = int((start + b.caplen[lo:hi]).max())
    return chunk_of(
        bytes(c.raw[first:last]),  # its own copy (an array's slice would be a view)
        start - first,
        b.caplen[lo:hi],
        b.wire_len[lo:hi],
        b.ts_ns[lo:hi],
        b.ifindex[lo:hi],
        b.linktype[lo:hi],
    )


def _concat(parts: list[Chunk]) -> Chunk:
    """Compacted chunks as one (copies their bytes once)."""
    if not parts:
        return empty_chunk()
    if len(parts) == 1:
        return parts[0]
    base = np.cumsum([0] + [len(p.raw) for p in parts[:-1]])
    return chunk_of(
        b"".join(p.raw for p in parts),
        np.concatenate([p.batch.start + b for p, b in zip(parts, base.tolist(), strict=True)]),
        *(
            np.concatenate([getattr(p.batch, name) for p in parts])
            for name in ("caplen", "wire_len", "ts_ns", "ifindex", "linktype")
        ),
    )


def _join(a: Chunk, b: Chunk) -> Chunk:
    """Two compacted chunks as one (copies the bytes of both, which are few)."""
    return _concat([a, b])


class CaptureReader(Closing, abc.ABC):
    """A capture file as a stream of packets: iterate for :class:`Packet`, or call
    :meth:`batches` for :class:`PacketBatch` columns (the engine's fast path).

    Both ways consume the same stream; a packet handed out by one is not seen by the other.
    Breaking out of either loop puts the packets it did not hand out back, so a later loop
    starts where the first stopped.

    Attributes common to every format:

    ``path``
        The file's name (``"<stream>"`` for an unnamed file object).
    ``skipped``
        Damaged records, blocks or sections skipped (only with ``skip_bad=True``; each skip
        counts once, however many packets it lost).
    ``problems``
        The :class:`CaptureError` of each skip, the first :data:`MAX_PROBLEMS` of them.
    ``compressed``
        True when the file was gzip-compressed.
    ``batch_size``
        The default ``n`` of :meth:`batches`.
    """

    format: ClassVar[str] = "?"
    # A format module whose parser needs only the buffer protocol (struct, numpy) may take
    # its chunks as uint8 arrays, which are cheaper to make than bytearrays.
    _array_chunks: ClassVar[bool] = False

    def __init__(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        skip_bad: bool = False,
        batch_size: int = 256,
        opened: Input | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._closers: tuple[Any, ...] = ()
        self._closed = False
        inp = opened if opened is not None else open_input(source)
        self._closers = inp.closers
        self._stream = inp.stream
        self.path: str = inp.name
        self.compressed: bool = inp.compressed
        # A pipe or FIFO read through a stop's waits: a short read is what the writer gave
        # so far, not the end of the file (only an empty read is).
        self._partial = inp.partial
        self.skip_bad = skip_bad
        self.batch_size = batch_size
        self.skipped = 0
        self.problems: list[CaptureError] = []
        # Invariant: _leftover holds the file's bytes from offset _base on, not yet parsed.
        self._leftover: bytes = inp.head
        self._base = 0
        self._need = 0  # bytes the record at _base needs before it can be parsed
        self._eof = False
        self._done = False  # nothing more will be parsed (end of file, or untrusted rest)
        self._stream_error: str | None = None  # a gzip stream that broke; reported at its end
        self._holding = False  # a format module reading ahead may leave bytes at end of file
        self._failed: CaptureError | None = None  # strict mode: raised once its packets are out
        self._pending: deque[Chunk] = deque()
        # Bytes the header's read brought beyond the header, to parse before any read: a
        # pipe's writer may give nothing more for a long time (or ever).
        self._unparsed = False
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self._unparsed = self._partial and bool(self._leftover)

    # -- what a format module provides --------------------------------------------------------

    @abc.abstractmethod
    def _start(self) -> None:
        """Read and check the file header (may call :meth:`_ensure`)."""

    @abc.abstractmethod
    def _parse(self, buf: bytes, eof: bool) -> tuple[Chunk | None, int]:
        """Parse ``buf`` (file bytes from ``self._base`` on); see the module docstring."""

    @property
    @abc.abstractmethod
    def linktypes(self) -> tuple[int, ...]:
        """The link types of the file's interfaces, in order of first appearance."""

    # -- helpers for format modules -----------------------------------------------------------

    def _error(self, offset: int, reason: str, kind: CaptureErrorKind) -> CaptureError:
        return CaptureError(self.path, offset, reason, kind)

    def _damaged(self, offset: int, reason: str, kind: CaptureErrorKind) -> None:
        """A damaged record at absolute ``offset``: raise, or count it when skipping.

        Damage must be reported in file order (the first raised is the first in the file).
        """
        err = self._error(offset, reason, kind)
        if not self.skip_bad:
            raise err
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(err)

    def _read(self, n: int) -> bytes:
        if not self.compressed:
            if self._partial:
                return self._stream.read(n) or b""
            return read_full(self._stream, n)
        # gzip: read1 piece by piece, so that a damaged or cut stream still delivers every byte
        # before the damage; the error is reported once the parser has used those bytes.
        parts: list[bytes] = []
        got = 0
        try:
            while got < n:
                d = self._stream.read1(n - got)  # type: ignore[union-attr]
                if not d:
                    break
                parts.append(d)
                got += len(d)
                if self._partial:  # what the writer gave so far
                    break
        except (OSError, EOFError, zlib.error) as e:
            self._stream_error = f"gzip: {e}"
            self._eof = True
        return b"".join(parts)

    def _ensure(self, n: int) -> bytes:
        """At least ``n`` bytes from ``_base`` on (fewer only at end of file)."""
        while len(self._leftover) < n and not self._eof:
            more = self._read(max(n - len(self._leftover), 4096))
            # A short read is the end of a file; of a pipe, only an empty one is.
            if not more or (not self._partial and len(self._leftover) + len(more) < n):
                self._eof = True
            self._leftover += more
        return self._leftover

    def _consume(self, n: int) -> None:
        self._leftover = self._leftover[n:]
        self._base += n

    # -- the chunk pump -----------------------------------------------------------------------

    def _snapshot(self) -> object:
        """The parser state a format module changes while parsing (see :meth:`_step`)."""
        return None

    def _restore(self, snapshot: object) -> None:  # a hook; most formats need none
        """Put back what :meth:`_snapshot` saved (a format with parse state overrides)."""

    def _step(self) -> Chunk | None:
        """Read one chunk and parse it; the packets it held (None if none).

        Strict mode: the packets before the first damage are handed out first, and the
        error is raised when the reader gets to it (and on every read after).  To find
        them, the chunk is parsed again up to the damage, from the state saved before.
        """
        if self._closed:
            raise ClosedResourceError("I/O operation on a closed capture reader")
        buf: bytes | bytearray | np.ndarray = self._leftover
        if not self._eof and not self._unparsed:
            want = max(CHUNK_SIZE, self._need - len(self._leftover))
            if self.compressed:
                data = self._read(want)
                got = len(data)
                buf = self._leftover + data if self._leftover else data
            else:
                # The carried bytes and the new ones in one buffer, made once.
                buf = read_after(
                    self._stream,
                    self._leftover,
                    want,
                    as_array=self._array_chunks,
                    partial=self._partial,
                )
                got = len(buf) - len(self._leftover)
            if got == 0 or (got < want and not self._partial):
                self._eof = True
        self._need = 0
        self._unparsed = False
        skipped_before = self.skipped
        saved = self._snapshot()
        try:
            chunk, stop = self._parse(buf, self._eof)
        except CaptureError as e:
            self._failed = e
            self._done = True
            chunk = self._before(buf, e.offset - self._base, saved)
            if chunk is None:
                raise
            return chunk
        self._leftover = bytes(buf[stop:])
        self._base += stop
        if self._eof and not self._done:
            if self._leftover:
                # At end of file a format module consumes everything (a partial record is
                # damage), unless it is only reading ahead to the first packet.
                assert self._holding, f"{self.format} parser left bytes at end of file"
            else:
                self._done = True
                if self._stream_error is not None and self.skipped == skipped_before:
                    try:
                        self._damaged(self._base, self._stream_error, CaptureErrorKind.BAD_GZIP)
                    except CaptureError as e:
                        self._failed = e
                        if chunk is None or not len(chunk.batch):
                            raise
        if chunk is not None and len(chunk.batch):
            return chunk
        return None

    def _before(self, buf: bytes, cut: int, saved: object) -> Chunk | None:
        """The packets of ``buf`` before offset ``cut`` (None if none), parsed anew."""
        if cut <= 0:
            return None
        self._restore(saved)
        try:
            chunk, _ = self._parse(buf[:cut], False)
        except CaptureError:  # not expected: everything before the damage parsed once
            return None
        finally:
            self._need = 0
            self._done = True
        return chunk if chunk is not None and len(chunk.batch) else None

    def _next_chunk(self) -> Chunk | None:
        """The next chunk of packets, None at the end of the file."""
        while not self._done:
            chunk = self._step()
            if chunk is not None:
                return chunk
        if self._failed is not None:
            raise self._failed
        return None

    def _take(self) -> Chunk | None:
        if self._pending:
            return self._pending.popleft()
        return self._next_chunk()

    def _put_back(self, c: Chunk, lo: int) -> None:
        n = len(c.batch)
        if lo < n:
            b = c.batch.slice(lo, n) if lo else c.batch
            self._pending.appendleft(Chunk(c.raw, b))

    # -- public API ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Packet]:
        new = tuple.__new__
        while True:
            c = self._take()
            if c is None:
                return
            raw, b = c
            if not isinstance(raw, bytes):  # packets are bytes: slice an immutable copy
                raw = bytes(raw)
            starts = iter(b.start.tolist())
            try:
                for s, n, w, t, i, lt in zip(
                    starts,
                    b.caplen.tolist(),
                    b.wire_len.tolist(),
                    b.ts_ns.tolist(),
                    b.ifindex.tolist(),
                    b.linktype.tolist(),
                    strict=True,
                ):
                    yield new(Packet, (raw[s : s + n], t, w, i, lt, 0))
            finally:
                # Closed early (a loop that breaks): put back what was not handed out.  The
                # list iterator knows how many starts it has left, at no per-packet cost.
                self._put_back(c, len(b) - operator.length_hint(starts))

    def batches(self, n: int | None = None) -> Iterator[PacketBatch]:
        """The packets as batches of exactly ``n`` (default ``batch_size``), the last smaller
        -- and, from a pipe whose writer has given nothing more yet, the packets so far.

        Strict mode: the packets before the damage come out first, as from iteration --
        the short batch before the error included -- and the error is raised after them.

        A batch's ``buf`` is a read-only view of a chunk of the file (never reused), or, for
        a batch that straddles two chunks, a small copy.
        """
        if n is None:
            n = self.batch_size
        if n < 1:
            raise ValueError("n must be >= 1")
        carry: Chunk | None = None  # fewer than n packets, compacted
        c: Chunk | None = None
        i = 0  # packets of c handed out or moved into carry
        try:
            while True:
                if carry is not None and self._would_wait():
                    # A pipe that has nothing more now: what is whole goes out, short,
                    # rather than wait for a writer that may never write (or a stop).
                    out, carry = carry, None
                    yield out.batch
                try:
                    c = self._take()
                except CaptureError:
                    # Strict mode's damage: the packets before it come out first, as they
                    # do from iteration -- the short batch carried so far included.
                    if carry is not None:
                        out, carry = carry, None
                        yield out.batch
                    raise
                i = 0
                if c is None:
                    break
                size = len(c.batch)
                if carry is not None:
                    i = min(n - len(carry.batch), size)
                    joined = _join(carry, _compact(c, 0, i))
                    if len(joined.batch) < n:
                        carry = joined
                        continue
                    carry = None
                    yield joined.batch
                while i + n <= size:
                    i += n
                    yield c.batch.slice(i - n, i)
                if i < size:
                    carry = _compact(c, i, size)
                    i = size
            if carry is not None:
                out, carry = carry, None
                yield out.batch
        finally:
            if c is not None:
                self._put_back(c, i)
            if carry is not None:
                self._pending.appendleft(carry)

    def _would_wait(self) -> bool:
        """A pipe with nothing to give now: the next read would wait for its writer."""
        if not self._partial or self._pending or not self._closers:
            return False
        ready = getattr(self._closers[-1], "ready", None)  # the WaitingReader
        return ready is not None and not ready()

    def seek_record(self, offset: int) -> None:
        """Read on from byte ``offset`` of the file, a record boundary the caller found --
        where the placing source's walk stopped (``mapped.py``) -- as if every record
        before it had been read: what was read ahead is dropped, and damage found from
        there is reported at its own offset, as a reading from the start would.  Only for
        an uncompressed regular file, with no packet handed out or put back, where the
        format's parse state at ``offset`` is the one the reader has now: pcap's (its file
        header's), pcapng's when only EPBs lie between (``PcapngReader.epb_walk``)."""
        if self._closed:
            raise ClosedResourceError("I/O operation on a closed capture reader")
        if self.compressed or self._partial or self._pending or not self._stream.seekable():
            raise ValueError(f"{self.path}: only an uncompressed file's reading can move")
        if offset < self._base:
            raise ValueError(f"offset {offset} is before the header's end ({self._base})")
        self._stream.seek(offset)
        self._leftover = b""
        self._base = offset
        self._need = 0
        self._eof = self._done = self._unparsed = False

    @property
    def progress(self) -> tuple[int, int | None]:
        """(bytes of the file on disk read so far, its size): for a progress bar.  For a
        gzip file both count compressed bytes; the size is None where it cannot be known
        (a pipe, a file object without a descriptor)."""
        raw: Any = self._closers[-1] if self._closers else self._stream
        try:
            done = int(raw.tell())
        except (AttributeError, OSError, ValueError):
            done = self._base
        try:
            size: int | None = os.fstat(raw.fileno()).st_size or None
        except (AttributeError, OSError, ValueError):
            size = None
        return done, size

    def read_all(self) -> PacketBatch:
        """Every remaining packet in one batch (for tests and small files: it is all in memory)."""
        parts = []
        while (c := self._take()) is not None:
            parts.append(_compact(c, 0, len(c.batch)))
        return _concat(parts).batch

    def close(self) -> None:
        """Close the file (idempotent).  Batches already handed out stay valid."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        for c in self._closers:
            c.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} skipped={self.skipped}>"
