"""A capture read where it lies: a regular pcap or pcapng file mapped once, each record
copied from the mapping straight into a frame its RX producer lends -- no read into
chunks, no second copy, no Python per record.

The general path (``reader.py`` + ``engine/rx.py``) reads the file into 4 MiB chunks,
walks and gathers each chunk's records with numpy, and the producer copies every packet
again into a frame (``RxProducer._fill``).  Here one compiled call per poll
(``cpumap._place``, whose file says why it is compiled and what it must equal) walks the
records of the mapping, copies each packet into its lent frame at the pool's headroom,
writes its descriptor -- with the flow hash the worker would compute, as a NIC's RX hash
rides with the frame -- and the producer takes the frames through the door the AF_XDP
source uses (``RxProducer.lend`` -> write -> ``poll_placed``; ``engine/ownership.py``,
"Placed frames").

Why a copy into the pool, and not descriptors pointing into the mapping: a file
truncated under the run makes every access to its lost pages raise SIGBUS, which kills
the process that touches them -- a worker, if the mapping were what it reads -- and no
Python or numpy code can catch it.  The copy is the one place the mapping is read, and it
is guarded (sigsetjmp around the access, a handler installed for the call only): a
truncated file is a :class:`CaptureError` naming the file and the byte offset, never a
crash.  (docs/performance.md, "A capture read in place", has the price of the copy.)
Two limits of reading a mapping: a file cut inside a page reads as zeros from its new
end to the page's (the kernel's), which the walk may take for empty records before the
next page faults -- the run still ends in the error; and the file is read as long as it
was when opened (bytes appended under the run are not read, where a reader would).

Where the fast walk will not judge a record -- caplen above the link type's maximum,
caplen above its wire length, a record cut by the end of the file, a pcapng EPB with a
bad trailer, interface or time -- it stops before it, and the rest of the file goes to
the general reader from that exact byte
(:meth:`~cpumap.capture.reader.CaptureReader.seek_record`): its batches come out of
:meth:`MappedCapture.next_batch` to be received as any reader's, so damage messages and
offsets, ``skip_bad`` and the books are the general path's own.  So does the rest of a
file whose workers hold every frame for the producer's ``frame_wait`` (the general path
then waits again and counts ``no_frame``, as it does).  Held equal to the general path by
tests/capture/test_mapped.py.  A pcapng block other than an EPB (an interface, a
section, statistics) is read by the general reader up to the next packet block
(``PcapngReader.walk_on``: its state is the reader's), and the walk goes on from there.

Frames lent and not placed (the end of the file, a hand-over, an exception) go back with
``RxProducer.return_lent``: this source is the partition's only lender, and it writes
nothing once its call returned, so the frames are simply the partition's again.

gzip, pipes, FIFOs and standard input keep the general reader (:func:`open_placing`
returns it).
"""

from __future__ import annotations

import io
import mmap
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .. import _place
from ..closing import Closing
from ..packets import PacketBatch
from .damage import CaptureError, max_caplen
from .damage import CaptureErrorKind as Kind
from .files import open_capture
from .pcap import FILE_HEADER_LEN, PcapReader
from .pcapng import EpbWalk, PcapngReader
from .reader import CaptureReader, empty_chunk
from .stop import Stop

# engine/frame_pool.py DESCRIPTOR's fields where cpumap._place writes them.
_LAYOUT = {"length": 0, "wire_len": 4, "ts_ns": 8, "ifindex": 16, "rx_queue": 20}
_LAYOUT |= {"linktype": 24, "headroom": 26, "meta_len": 28, "hops": 30}
_LAYOUT |= {"rx_hash": 32, "hash_type": 36, "reserved": 38}

_RELEASE_EVERY = 4 << 20  # bytes walked between two releases of the pages behind: a reader's chunk
_NO_PACKETS = empty_chunk().batch  # what a poll that placed its frames itself returns


def open_placing(
    path: str | os.PathLike[str],
    *,
    skip_bad: bool = False,
    batch_size: int = 256,
    stop: Stop | None = None,
) -> MappedCapture | CaptureReader:
    """``path`` opened as :func:`~cpumap.capture.open_capture` opens it -- and, when it is a
    regular, uncompressed pcap or pcapng file (with a packet block ahead), read in place:
    a :class:`MappedCapture` over that reader.  Anything else (gzip, a FIFO, a device) is
    the general reader."""
    name = os.fspath(path)
    try:
        # Not blocking on a FIFO without a writer (capture/stop.py reads those).
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return open_capture(name, skip_bad=skip_bad, batch_size=batch_size, stop=stop)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return open_capture(name, skip_bad=skip_bad, batch_size=batch_size, stop=stop)
    os.set_blocking(fd, True)
    raw = io.FileIO(fd, "rb")
    raw.name = name  # what errors name, as open_capture's own file would
    f = io.BufferedReader(raw)  # closed by the MappedCapture, or below
    try:
        reader = open_capture(f, skip_bad=skip_bad, batch_size=batch_size)
    except BaseException:
        f.close()
        raise
    walk = _walk_of(reader)
    if walk is None:
        reader.close()
        f.close()
        return open_capture(name, skip_bad=skip_bad, batch_size=batch_size, stop=stop)
    try:
        return MappedCapture(reader, f, walk, stop=stop)
    except BaseException:
        reader.close()
        f.close()
        raise


class _Walk(NamedTuple):
    """How to walk a file's records from ``start``: ``place(map, pos, pool, frame_size,
    headroom, desc, frames)`` with the format's own arguments bound; and, for pcapng, how
    to go on after a block the walk does not take (``PcapngReader.walk_on``)."""

    start: int
    place: Callable[..., tuple[int, int, int, int, int]]
    resume: Callable[[int], _Walk | None] | None = None


def _walk_of(reader: CaptureReader) -> _Walk | None:
    """The compiled walk for ``reader``'s file, from where it stands; None when it has
    none (gzip; pcapng not at a clean packet block: ``PcapngReader.epb_walk``)."""
    if reader.compressed:
        return None
    if isinstance(reader, PcapReader):
        tail = (
            reader.byteorder == ">",
            1 if reader.nanosecond else 1000,
            max_caplen(reader.linktype),
            reader.linktype,
        )
        return _Walk(FILE_HEADER_LEN, lambda *a: _place.place(*a, *tail))
    if isinstance(reader, PcapngReader):
        epb = reader.epb_walk()
        if epb is None:
            return None
        return _epb_walk(reader, epb)
    return None


def _epb_walk(reader: PcapngReader, epb: EpbWalk) -> _Walk:
    tail = (epb.big_endian, epb.interfaces, epb.max_block)

    def resume(offset: int) -> _Walk | None:
        on = reader.walk_on(offset)
        return None if on is None else _epb_walk(reader, on)

    return _Walk(epb.offset, lambda *a: _place.place_epb(*a, *tail), resume)


class MappedCapture(Closing):
    """A regular pcap or pcapng file read in place into an RX producer's frames.

    Made by :func:`open_placing` from the general reader that checked the file header
    (``reader``, on the open file ``file``; both are this object's from then on).  A wait
    for frames ends when ``stop`` (the run's) is set or its deadline passes.  Until
    :meth:`attach` names the producer, and from a hand-over on, packets come out of
    :meth:`next_batch` as the reader's batches; attached, each call places up to
    ``batch_size`` records into lent frames itself and returns an empty batch.

    Attributes as a reader's: ``path``, ``skipped``, ``problems``, ``linktypes``,
    ``compressed`` (False), ``batch_size``, :attr:`progress`; and ``placed`` (records
    placed by the fast walk) and ``handed_over`` (the byte offset the general reader took
    over at, or None).
    """

    compressed = False

    def __init__(
        self, reader: CaptureReader, file: Any, walk: _Walk, *, stop: Stop | None = None
    ) -> None:
        self._reader = reader
        self._stop = stop
        self._file = file
        self._closed = False
        self._map: mmap.mmap | None = None
        self.path = reader.path
        self.format = reader.format
        self.batch_size = reader.batch_size
        self.placed = 0
        self.handed_over: int | None = None
        self._general: Iterator[PacketBatch] | None = None
        self._rx: Any = None
        self._walk = walk
        self._pos = walk.start
        self._released = 0  # pages before this offset are unmapped (_release_behind)
        self._size = os.fstat(file.fileno()).st_size
        self._ended = self._size <= walk.start
        if not self._ended:
            # mmap keeps its own duplicate of the descriptor until it is closed.
            self._map = mmap.mmap(file.fileno(), self._size, prot=mmap.PROT_READ)
            self._map.madvise(mmap.MADV_SEQUENTIAL)

    # -- as a reader ---------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        return self._reader.skipped

    @property
    def problems(self) -> list[CaptureError]:
        return self._reader.problems

    @property
    def linktypes(self) -> tuple[int, ...]:
        return self._reader.linktypes

    @property
    def wide_times(self) -> list[Any]:
        """pcapng: the exact times of packets whose ``ts_ns`` is saturated (the general
        reader's: the fast walk leaves such packets to it)."""
        return list(getattr(self._reader, "wide_times", ()))

    @property
    def progress(self) -> tuple[int, int | None]:
        """(bytes of the file done, its size), for a progress bar."""
        if self._general is not None:
            return self._reader.progress
        return self._pos, self._size

    # -- placing -----------------------------------------------------------------------------
    def attach(self, rx: Any) -> None:
        """Place from now on into ``rx`` (an ``RxProducer`` of a map whose pool has the
        frame descriptor ``cpumap._place`` writes; checked here)."""
        got = {name: off for name, (_, off) in rx.pool.desc.dtype.fields.items()}
        if rx.pool.desc.dtype.itemsize != _place.DESCRIPTOR_SIZE or got != _LAYOUT:
            raise ValueError(f"pool descriptor layout {got} is not the one _place writes")
        self._rx = rx
        self._frames_flat = rx.pool.flat
        self._desc_bytes = rx.pool.desc.view(np.uint8)

    def detach(self) -> None:
        """Stop placing into the producer (idempotent): frames still lent -- an
        interruption between a lend and its hand-over -- go back to its partition
        (``return_lent``: nothing writes them once this source is not placing).  Call it
        before the producer closes."""
        rx, self._rx = self._rx, None
        if rx is not None and not rx.closed:
            rx.return_lent()

    def next_batch(self) -> PacketBatch | None:
        """The next batch for the producer to receive: the general reader's, once it has
        taken over (or before a producer is attached); an empty one when this call placed
        frames itself; None at the end of the file.  Raises :class:`CaptureError` for a
        file truncated under the run (and the general reader's damage, strict mode)."""
        if self._closed:
            raise ValueError(f"{self.path}: read of a closed capture")
        if self._general is not None:
            return next(self._general, None)
        if self._ended:
            return None
        if self._rx is None:
            return self._hand_over()
        return self._place_poll()

    def _place_poll(self) -> PacketBatch | None:
        rx = self._rx
        idx = rx.lend(self.batch_size)
        if not len(idx):
            idx = self._wait_for_frames()
            if idx is None:  # stopped while waiting: nothing placed
                return _NO_PACKETS
            if not len(idx):  # the workers kept every frame for frame_wait: as the general path
                return self._hand_over()
        placed = 0
        assert self._map is not None  # Invariant: not ended, so mapped
        try:
            placed, pos, why, truncated, fault = self._walk.place(
                self._map,
                self._pos,
                self._frames_flat,
                rx.pool.frame_size,
                rx.pool.headroom,
                self._desc_bytes,
                idx,
            )
            self._pos = pos
            self.placed += placed
            if pos - self._released >= _RELEASE_EVERY:
                self._release_behind(pos)
            if placed:
                rx.poll_placed(idx[:placed], truncated=truncated)
        finally:
            if placed < len(idx):
                rx.return_lent()  # the rest never held a packet: the partition's again
        if why == _place.STOP_FAULT:
            self._ended = True
            raise CaptureError(
                self.path,
                pos,
                f"the file lost its bytes under the run: SIGBUS at byte {fault}, in this "
                f"record (the file was truncated while it was read?)",
                Kind.CUT_SHORT,
            )
        if why == _place.STOP_END:
            self._ended = True
            return _NO_PACKETS if placed else None
        if why == _place.STOP_JUDGE:
            if self._walk.resume is not None:  # pcapng: the blocks between, then walk on
                self._walk_on(pos)
                return _NO_PACKETS
            if placed:  # this poll's frames first; the general reader from the next call
                self._general = self._general_from(pos)
                return _NO_PACKETS
            return self._hand_over()
        return _NO_PACKETS

    def _walk_on(self, pos: int) -> None:
        """pcapng: the general reader reads the blocks from ``pos`` up to the next packet
        block (sections, interfaces: its state), and the walk goes on from there -- or,
        where it cannot (a packet block it will not judge, a section being skipped), the
        general reader reads on from where it stands."""
        assert self._walk.resume is not None
        walk = self._walk.resume(pos)
        if walk is None or walk.start == pos:
            self.handed_over = pos
            self._general = self._reader.batches(self.batch_size)
            return
        self._walk = walk
        self._pos = walk.start

    def _release_behind(self, pos: int) -> None:
        """Unmap the pages before ``pos`` from this process (MADV_DONTNEED: the page
        cache keeps them; only the mapping's hold goes), so that its RSS stays flat in the
        file's size as a reader's does -- the pages read stay in RssFile otherwise."""
        assert self._map is not None
        upto = pos & ~(mmap.PAGESIZE - 1)
        if upto > self._released:
            self._map.madvise(mmap.MADV_DONTNEED, self._released, upto - self._released)
            self._released = upto

    def _wait_for_frames(self) -> np.ndarray | None:
        """Frames lent once workers give some back -- a capture is lossless: the reading
        waits, as ``RxProducer.poll``'s allocation does (backing off from 20 us to 5 ms, up
        to the producer's ``frame_wait``).  Empty: none came in time; None: the run's stop
        was set meanwhile (the caller returns, and the feed loop sees it)."""
        rx = self._rx
        deadline = time.monotonic() + rx.frame_wait
        pause = 2e-5
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
            idx = rx.lend(self.batch_size)
            if len(idx):
                return idx
            if self._stop is not None and (self._stop.is_set() or self._stop.expired()):
                return None
        return np.zeros(0, dtype=np.uint32)

    def _general_from(self, offset: int) -> Iterator[PacketBatch]:
        self.handed_over = offset
        self._reader.seek_record(offset)
        return self._reader.batches(self.batch_size)

    def _hand_over(self) -> PacketBatch | None:
        """The rest of the file to the general reader, from where the walk stands."""
        self._general = self._general_from(self._pos)
        return next(self._general, None)

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap the file and close it (idempotent); batches handed out stay valid."""
        if self._closed:
            return
        self._closed = True
        try:
            self._reader.close()
        finally:
            if self._map is not None:
                self._map.close()
                self._map = None
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<MappedCapture {self.path!r} placed={self.placed} pos={self._pos}>"
