"""Capture files in and out: the one entry point to pcap and pcapng, and what both share.

Charter
-------
Rule 1: this module knows no file format.  It owns the error type, the byte source (plain or
gzip, sniffed by magic), the chunk pump and the two ways of handing packets out (one
:class:`~cpumap.packets.Packet` at a time, or :class:`~cpumap.packets.PacketBatch` columns).
``pcap.py`` and ``pcapng.py`` import from here; this module imports them only inside
:func:`open_capture`, :func:`open_writer` and :func:`write_capture`.
Rule 2: nothing is read that a caller did not ask for beyond one chunk, so memory is constant in
the file size: a reader holds one chunk (:data:`CHUNK_SIZE`, or one record if a record is
bigger, bounded by :func:`max_caplen`) plus what the caller keeps.

Theory of operation
-------------------
Python's cost is per call, not per byte.  A reader therefore never makes a ``bytes`` per
packet on the batch path: it reads a big chunk, walks the record headers with one
``struct.unpack_from`` per record (the only per-packet Python work: the position of record
*i + 1* depends on the length in record *i*), then gathers every header field of the chunk
with a few numpy calls and hands out :class:`PacketBatch` views whose ``start`` indexes into
the chunk.  A record cut by the chunk boundary is carried into the next chunk.

The format modules implement ``_parse(buf, eof) -> (columns | None, stop)``: parse what they
can of ``buf`` (the carried bytes plus the new read), say where they stopped, and set
``self._need`` when the record at ``stop`` needs more bytes than ``buf`` has.  At end of file
a format module must consume everything (a partial record is damage).

Damage
------
Strict by default: the first damaged record raises :class:`CaptureError`, which names the
file, the byte offset and what is wrong; every packet before it is handed out first, and
the reader raises the same error on every read after.  ``skip_bad=True`` instead counts the
damaged record in ``reader.skipped``, keeps its error in ``reader.problems`` (the first
:data:`MAX_PROBLEMS`), and goes on where the format says it safely can (see each module).
Damage to a file header (magic, version, reserved link-type bits) cannot be skipped and
raises in both modes.  Offsets in a gzip file count decompressed bytes.

The chunk given to a batch is never reused: a batch keeps its chunk alive, and its ``buf`` is
read-only.

# XX: bz2/xz/zstd input would slot into ``_open_input`` next to gzip; nobody has asked yet.
"""

from __future__ import annotations

import abc
import gzip
import operator
import os
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, BinaryIO, ClassVar, Literal, NamedTuple, Protocol

import numpy as np

from cpumap.packets import LINKTYPE_ETHERNET, Packet, PacketBatch

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "CHUNK_SIZE",
    "MAXIMUM_SNAPLEN",
    "MAX_PROBLEMS",
    "CaptureError",
    "CaptureReader",
    "CaptureWriter",
    "max_caplen",
    "open_capture",
    "open_writer",
    "write_capture",
]

CHUNK_SIZE = 1 << 20  # bytes read per chunk: ~2000 typical packets, so numpy's ~2 µs calls vanish
MAX_PROBLEMS = 100  # errors kept in reader.problems; the count in reader.skipped is exact

# libpcap's MAXIMUM_SNAPLEN: no capture it writes has a bigger record, and it refuses to read
# one (pcap-common.c, max_snaplen_for_dlt).  The exceptions are link types whose messages are
# bigger by definition; the table is libpcap's.
MAXIMUM_SNAPLEN = 262144
_MAX_CAPLEN_BY_LINKTYPE: dict[int, int] = {
    231: 128 * 1024 * 1024,  # DBUS: a D-Bus message may be 128 MiB
    279: 8 * 1024 * 1024,  # EBHSCR
    249: 1024 * 1024,  # USBPCAP
}

GZIP_MAGIC = b"\x1f\x8b"


def max_caplen(linktype: int) -> int:
    """The largest captured length a record of ``linktype`` may have (libpcap's limit).

    A record header that claims more is damage, never an allocation.
    """
    return _MAX_CAPLEN_BY_LINKTYPE.get(linktype, MAXIMUM_SNAPLEN)


class CaptureError(ValueError):
    """A capture file is damaged (or is not a capture file).

    ``str(err)`` is ``"<path>: offset <offset>: <reason>"``; the three parts are attributes.
    ``offset`` is the byte offset of the damaged record, block or header (in a gzip file, in
    the decompressed stream).
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: offset {offset}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across the engine's processes
        return (type(self), (self.path, self.offset, self.reason))


# --------------------------------------------------------------------------------------------
# Byte sources


class _Prefixed:
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


def _read_full(f: IO[bytes] | _Prefixed, n: int) -> bytes:
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


class _Input(NamedTuple):
    stream: IO[bytes] | _Prefixed | gzip.GzipFile
    name: str
    head: bytes  # the first bytes of the (decompressed) capture, already read from stream
    compressed: bool
    closers: tuple[Any, ...]  # what close() must close, innermost first


def _open_input(source: str | os.PathLike[str] | BinaryIO, sniff: int = 4) -> _Input:
    """Open ``source``, undo gzip if its magic says so, and read the first ``sniff`` bytes."""
    closers: list[Any] = []
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        raw: IO[bytes] = open(name, "rb")  # noqa: SIM115 (closed by the reader)
        closers.append(raw)
    else:
        raw = source
        name = str(getattr(source, "name", "<stream>"))
    try:
        head = _read_full(raw, 2)
        if head == GZIP_MAGIC:
            gz = gzip.GzipFile(fileobj=_Prefixed(head, raw), mode="rb")  # type: ignore[arg-type]
            closers.insert(0, gz)
            try:
                first = _read_full(gz, sniff)
            except (OSError, EOFError, zlib.error) as e:
                raise CaptureError(name, 0, f"gzip: {e}") from None
            return _Input(gz, name, first, True, tuple(closers))
        first = head + _read_full(raw, sniff - len(head)) if len(head) == 2 else head
        return _Input(raw, name, first, False, tuple(closers))
    except BaseException:
        for c in closers:
            c.close()
        raise


# --------------------------------------------------------------------------------------------
# Readers


class _Chunk(NamedTuple):
    raw: bytes  # the chunk; batch.buf is a read-only view of it
    batch: PacketBatch


def _columns(
    raw: bytes,
    start: np.ndarray,
    caplen: np.ndarray,
    wire_len: np.ndarray,
    ts_ns: np.ndarray,
    ifindex: np.ndarray,
    linktype: np.ndarray,
) -> _Chunk:
    n = len(start)
    return _Chunk(
        raw,
        PacketBatch(
            buf=np.frombuffer(raw, dtype=np.uint8),
            start=start,
            caplen=caplen,
            wire_len=wire_len,
            ts_ns=ts_ns,
            ifindex=ifindex,
            linktype=linktype,
            rx_queue=np.zeros(n, dtype=np.uint32),
        ),
    )


def _empty() -> _Chunk:
    return _columns(
        b"",
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.uint32),
        np.zeros(0, dtype=np.uint32),
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.uint32),
        np.zeros(0, dtype=np.uint16),
    )


def _compact(c: _Chunk, lo: int, hi: int) -> _Chunk:
    """Packets ``lo:hi`` of ``c`` copied into a buffer of their own (only their bytes)."""
    b = c.batch
    if hi <= lo:
        return _empty()
    start = b.start[lo:hi]
    first = int(start.min())
    last = int((start + b.caplen[lo:hi]).max())
    return _columns(
        c.raw[first:last],
        start - first,
        b.caplen[lo:hi],
        b.wire_len[lo:hi],
        b.ts_ns[lo:hi],
        b.ifindex[lo:hi],
        b.linktype[lo:hi],
    )


def _concat(parts: list[_Chunk]) -> _Chunk:
    """Compacted chunks as one (copies their bytes once)."""
    if not parts:
        return _empty()
    if len(parts) == 1:
        return parts[0]
    base = np.cumsum([0] + [len(p.raw) for p in parts[:-1]])
    return _columns(
        b"".join(p.raw for p in parts),
        np.concatenate([p.batch.start + b for p, b in zip(parts, base.tolist(), strict=True)]),
        *(
            np.concatenate([getattr(p.batch, name) for p in parts])
            for name in ("caplen", "wire_len", "ts_ns", "ifindex", "linktype")
        ),
    )


def _join(a: _Chunk, b: _Chunk) -> _Chunk:
    """Two compacted chunks as one (copies the bytes of both, which are few)."""
    return _concat([a, b])


class CaptureReader(abc.ABC):
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

    def __init__(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        skip_bad: bool = False,
        batch_size: int = 256,
        _input: _Input | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._closers: tuple[Any, ...] = ()
        self._closed = False
        inp = _input if _input is not None else _open_input(source)
        self._closers = inp.closers
        self._stream = inp.stream
        self.path: str = inp.name
        self.compressed: bool = inp.compressed
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
        self._pending: deque[_Chunk] = deque()
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- what a format module provides --------------------------------------------------------

    @abc.abstractmethod
    def _start(self) -> None:
        """Read and check the file header (may call :meth:`_ensure`)."""

    @abc.abstractmethod
    def _parse(self, buf: bytes, eof: bool) -> tuple[_Chunk | None, int]:
        """Parse ``buf`` (file bytes from ``self._base`` on); see the module docstring."""

    @property
    @abc.abstractmethod
    def linktypes(self) -> tuple[int, ...]:
        """The link types of the file's interfaces, in order of first appearance."""

    # -- helpers for format modules -----------------------------------------------------------

    def _error(self, offset: int, reason: str) -> CaptureError:
        return CaptureError(self.path, offset, reason)

    def _damaged(self, offset: int, reason: str) -> None:
        """A damaged record at absolute ``offset``: raise, or count it when skipping.

        Damage must be reported in file order (the first raised is the first in the file).
        """
        err = self._error(offset, reason)
        if not self.skip_bad:
            raise err
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(err)

    def _read(self, n: int) -> bytes:
        if not self.compressed:
            return _read_full(self._stream, n)
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
        except (OSError, EOFError, zlib.error) as e:
            self._stream_error = f"gzip: {e}"
            self._eof = True
        return b"".join(parts)

    def _ensure(self, n: int) -> bytes:
        """At least ``n`` bytes from ``_base`` on (fewer only at end of file)."""
        if len(self._leftover) < n and not self._eof:
            more = self._read(max(n - len(self._leftover), 4096))
            if len(self._leftover) + len(more) < n:
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

    def _restore(self, snapshot: object) -> None:  # noqa: B027 (a hook; most need none)
        """Put back what :meth:`_snapshot` saved (a format with parse state overrides)."""

    def _step(self) -> _Chunk | None:
        """Read one chunk and parse it; the packets it held (None if none).

        Strict mode: the packets before the first damage are handed out first, and the
        error is raised when the reader gets to it (and on every read after).  To find
        them, the chunk is parsed again up to the damage, from the state saved before.
        """
        if self._closed:
            raise ValueError("I/O operation on a closed capture reader")
        data = b""
        if not self._eof:
            want = max(CHUNK_SIZE, self._need - len(self._leftover))
            data = self._read(want)
            if len(data) < want:
                self._eof = True
        buf = self._leftover + data if self._leftover else data
        self._need = 0
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
        self._leftover = buf[stop:]
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
                        self._damaged(self._base, self._stream_error)
                    except CaptureError as e:
                        self._failed = e
                        if chunk is None or not len(chunk.batch):
                            raise
        if chunk is not None and len(chunk.batch):
            return chunk
        return None

    def _before(self, buf: bytes, cut: int, saved: object) -> _Chunk | None:
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

    def _next_chunk(self) -> _Chunk | None:
        """The next chunk of packets, None at the end of the file."""
        while not self._done:
            chunk = self._step()
            if chunk is not None:
                return chunk
        if self._failed is not None:
            raise self._failed
        return None

    def _take(self) -> _Chunk | None:
        if self._pending:
            return self._pending.popleft()
        return self._next_chunk()

    def _put_back(self, c: _Chunk, lo: int) -> None:
        n = len(c.batch)
        if lo < n:
            b = c.batch.slice(lo, n) if lo else c.batch
            self._pending.appendleft(_Chunk(c.raw, b))

    # -- public API ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Packet]:
        new = tuple.__new__
        while True:
            c = self._take()
            if c is None:
                return
            raw, b = c
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
        """The packets as batches of exactly ``n`` (default ``batch_size``), the last smaller.

        A batch's ``buf`` is a read-only view of a chunk of the file (never reused), or, for
        a batch that straddles two chunks, a small copy.
        """
        if n is None:
            n = self.batch_size
        if n < 1:
            raise ValueError("n must be >= 1")
        carry: _Chunk | None = None  # fewer than n packets, compacted
        c: _Chunk | None = None
        i = 0  # packets of c handed out or moved into carry
        try:
            while True:
                c = self._take()
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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} skipped={self.skipped}>"


def open_capture(
    path: str | os.PathLike[str] | BinaryIO, *, skip_bad: bool = False, batch_size: int = 256
) -> CaptureReader:
    """Open a pcap or pcapng file, gzip-compressed or not, by its magic (not its name).

    Returns a :class:`~cpumap.pcap.PcapReader` or :class:`~cpumap.pcapng.PcapngReader`.
    Raises :class:`CaptureError` for an unknown magic (naming the bytes found) or a damaged
    file header, and ``OSError`` when the file cannot be opened.
    """
    from cpumap.pcap import PCAP_MAGICS, PcapReader
    from cpumap.pcapng import SHB_MAGIC, PcapngReader

    inp = _open_input(path)
    try:
        magic = inp.head[:4]
        if len(magic) < 4:
            what = "empty file" if not magic else f"file too short ({len(magic)} bytes)"
            raise CaptureError(inp.name, 0, f"{what}: not a pcap or pcapng capture")
        kwargs: dict[str, Any] = {"skip_bad": skip_bad, "batch_size": batch_size, "_input": inp}
        if magic in PCAP_MAGICS:
            return PcapReader(path, **kwargs)
        if magic == SHB_MAGIC:
            return PcapngReader(path, **kwargs)
        raise CaptureError(
            inp.name,
            0,
            f"unknown magic {magic.hex()}: not a pcap or pcapng capture"
            + (" (inside gzip)" if inp.compressed else ""),
        )
    except BaseException:
        for c in inp.closers:
            c.close()
        raise


# --------------------------------------------------------------------------------------------
# Writers


def _open_output(path: str | os.PathLike[str] | BinaryIO) -> tuple[BinaryIO, bool, str]:
    """(file, whether we own it, its name) for a writer: a path is opened (and later
    closed by the writer), a file object is written as it is."""
    if isinstance(path, str | os.PathLike):
        return open(path, "wb"), True, os.fspath(path)
    return path, False, str(getattr(path, "name", "<stream>"))


class CaptureWriter(Protocol):
    """What :func:`open_writer` returns: a pcap or pcapng writer."""

    count: int

    def write(self, packet: Packet | bytes) -> None: ...

    def write_batch(self, batch: PacketBatch) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> CaptureWriter: ...

    def __exit__(self, *exc: object) -> None: ...


def open_writer(
    path: str | os.PathLike[str] | BinaryIO,
    *,
    format: Literal["pcapng", "pcap"] = "pcapng",
    linktype: int | None = None,
    nanosecond: bool = True,
) -> CaptureWriter:
    """A writer for ``path``: :class:`~cpumap.pcapng.PcapngWriter` or
    :class:`~cpumap.pcap.PcapWriter`.

    ``linktype`` is the link type of ``bytes`` written (default Ethernet); for pcap it is the
    file's one link type (default: that of the first packet).
    """
    if format == "pcapng":
        from cpumap.pcapng import PcapngWriter

        return PcapngWriter(
            path,
            nanosecond=nanosecond,
            linktype=LINKTYPE_ETHERNET if linktype is None else linktype,
        )
    if format == "pcap":
        from cpumap.pcap import PcapWriter

        return PcapWriter(path, linktype=linktype, nanosecond=nanosecond)
    raise ValueError(f"format must be 'pcapng' or 'pcap', not {format!r}")


def write_capture(
    path: str | os.PathLike[str] | BinaryIO,
    packets_or_batches: Iterable[Packet | bytes | PacketBatch],
    *,
    format: Literal["pcapng", "pcap"] = "pcapng",
    linktype: int | None = None,
    nanosecond: bool = True,
) -> int:
    """Write packets (and/or batches) to a new capture file; returns the packets written.

    pcapng: one section, one interface block per ``ifindex`` (the interface id *is* the
    ifindex), ``if_tsresol`` = 9 when ``nanosecond``.  pcap: one link type for the file; a
    packet of another link type is a ``ValueError``.  ``nanosecond=False`` writes microseconds
    (timestamps are floored).  See the writer classes for the rest.
    """
    with open_writer(path, format=format, linktype=linktype, nanosecond=nanosecond) as w:
        for item in packets_or_batches:
            if isinstance(item, PacketBatch):
                w.write_batch(item)
            else:
                w.write(item)
        return w.count
