"""The classic pcap format (libpcap's savefile): reader and writer.

Format: a 24-byte file header (magic, version 2.4, this-zone, sigfigs, snaplen, link type),
then records of a 16-byte header (seconds, sub-seconds, caplen, original length) and caplen
bytes.  The magic says the byte order and the sub-second unit: ``a1b2c3d4`` microseconds,
``a1b23c4d`` nanoseconds, each in either byte order.

Theory of operation
-------------------
Reading is the chunk pump of :mod:`cpumap.capture.reader`.  In a chunk the only per-record
work is the walk ``pos += 16 + caplen``, a chain no numpy call can take, so it is compiled
(:func:`walk_records`, ``cpumap._records``: a few ns a record); :func:`walk_records_py` is
the same walk in Python (one ``unpack_from`` a record), kept as the reference the C walk
must equal (tests/capture/test_record_walk.py).  Every header field is then gathered
with numpy from the list of record offsets, and checked there, vectorised.  The walk does not
check the caplen it follows: a record with an absurd caplen inside the chunk sends the walk
into the weeds, but the check that follows finds the first bad record and everything from it
on is dropped, so the garbage is never seen.  Where the walk stops at a caplen that is not
in the chunk, that caplen is checked *before* more data is read: never an allocation for it.

What libpcap does, and what we do
---------------------------------
* Link-type field: the low 16 bits are the link type.  Bits 16-25 are reserved: a file with
  any of them set is refused (as libpcap does), naming the bits.  Bit 26 says bits 28-31
  hold the length of an FCS at the end of each packet, in 16-bit words; we report it as
  :attr:`PcapReader.fcs_len` in bytes and keep the FCS in the packet.  Bits 28-31 without
  bit 26 are ignored, as libpcap does.  Link type 12 (the platform's DLT_RAW on Linux
  and most BSDs) is raw IP, ``LINKTYPE_RAW`` (101), as libpcap on Linux and TShark read
  it (``reader.canonical_linktype``); so is an interface of link type 12 in pcapng.
* Version: 2.0 to 2.4 are read; anything else (1.x, 2.5, ...) is refused, as libpcap 1.11
  does.  (TShark reads 2.5.)
* ``caplen > snaplen``: tolerated, as libpcap and TShark do.  libpcap then cuts the packet
  to the snaplen; we keep every captured byte (as TShark does): nothing downstream sizes a
  buffer by the snaplen, and dropping captured bytes without a word is what we do not do.
* ``caplen`` above :func:`~cpumap.capture.damage.max_caplen` (256 KiB; more for DBUS, EBHSCR,
  USBPCAP): damage, positioned, never read.
* ``caplen > original length``: damage (the packet cannot be longer than the wire's).
* Sub-second field out of range (>= 10**6 in a microsecond file): kept, as libpcap and
  TShark do; the timestamp is ``seconds * 10**9 + subseconds * unit`` all the same.

Damage and ``skip_bad``
-----------------------
A pcap record header is the only way to find the next record.  A header whose caplen is
impossible says the file is corrupt from there on (or was never a record boundary), and
there is no marker to find the next good record by.  So with ``skip_bad`` such a record
ends the reading: it counts once in ``skipped`` and the rest of the file is not read.
(Guessing the next record, as pcapfix does, is repair, not reading.)  A record whose length
is in bounds but whose caplen exceeds its original length is skipped alone: the walk to the
next record is still sound.  A record cut by the end of the file counts once.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import _records
from ..abi import LINKTYPE_ETHERNET
from ..closing import Closing
from ..errors import ClosedResourceError
from ..packets import Packet, PacketBatch
from .damage import CaptureError, max_caplen
from .damage import CaptureErrorKind as Kind
from .reader import CaptureReader, Chunk, canonical_linktype, chunk_of
from .streams import Input, open_output

__all__ = [
    "PCAP_MAGICS",
    "CaptureError",
    "PcapReader",
    "PcapWriter",
]

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
# magic bytes as found in the file -> (byte order, nanosecond?)
_MAGICS: dict[bytes, tuple[str, bool]] = {
    struct.pack("<I", MAGIC_US): ("<", False),
    struct.pack(">I", MAGIC_US): (">", False),
    struct.pack("<I", MAGIC_NS): ("<", True),
    struct.pack(">I", MAGIC_NS): (">", True),
}
PCAP_MAGICS = frozenset(_MAGICS)

FILE_HEADER_LEN = 24
RECORD_HEADER_LEN = 16

# Link-type field bits (libpcap pcap-common.h).
LT_LINKTYPE_MASK = 0x0000FFFF
LT_RESERVED1_MASK = 0x03FF0000
LT_FCS_LENGTH_PRESENT = 0x04000000
LT_FCS_LENGTH_SHIFT = 28


def walk_records_py(buf: bytes | np.ndarray, big_endian: bool) -> tuple[np.ndarray, int]:
    """The offsets of the records in a pcap chunk whose caplen can be read, and the
    position of the first whose cannot (past the end of ``buf`` when the last record read
    is incomplete) -- one call per record: the chain :func:`walk_records` takes in C."""
    caplen_at = struct.Struct((">" if big_endian else "<") + "8xI").unpack_from
    pos = 0
    offs: list[int] = []
    app = offs.append
    # No test in the loop: unpack_from raises at the end of buf.
    try:
        while True:
            app(pos)
            pos += 16 + caplen_at(buf, pos)[0]
    except struct.error:
        offs.pop()  # the record at pos: its caplen could not be read
    return np.array(offs, dtype=np.int64), pos


def walk_records(buf: bytes | np.ndarray, big_endian: bool) -> tuple[np.ndarray, int]:
    """:func:`walk_records_py` in a few ns per record (``cpumap._records``, whose file
    says why it is compiled)."""
    out = np.empty(len(buf) // RECORD_HEADER_LEN + 1, dtype=np.int64)  # records >= 16 bytes
    n, pos = _records.walk(buf, out, 0, big_endian)
    return out[:n], pos


class PcapReader(CaptureReader):
    """Read a pcap file (either byte order, µs or ns, gzip or not).

    Attributes beyond :class:`~cpumap.capture.reader.CaptureReader`'s: ``linktype``, ``snaplen``
    (as the header says), ``nanosecond``, ``byteorder`` (``"<"`` or ``">"``), ``version``
    (``(major, minor)``), ``fcs_len`` (bytes of FCS at the end of each packet, None when the
    file does not say).
    """

    _array_chunks = True  # _parse needs only struct.unpack_from and numpy

    format = "pcap"

    def __init__(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        skip_bad: bool = False,
        batch_size: int = 256,
        opened: Input | None = None,
    ) -> None:
        super().__init__(source, skip_bad=skip_bad, batch_size=batch_size, opened=opened)

    @property
    def linktypes(self) -> tuple[int, ...]:
        return (self.linktype,)

    def _start(self) -> None:
        head = self._ensure(FILE_HEADER_LEN)
        magic = head[:4]
        if magic not in _MAGICS:
            if len(magic) < 4:
                raise self._error(
                    0, f"file too short for a pcap header ({len(head)} bytes)", Kind.TOO_SHORT
                )
            raise self._error(0, f"not a pcap file: magic {magic.hex()}", Kind.NOT_A_CAPTURE)
        order, ns = _MAGICS[magic]
        if len(head) < FILE_HEADER_LEN:
            raise self._error(
                0, f"pcap file header cut short: {len(head)} of 24 bytes", Kind.TOO_SHORT
            )
        major, minor, _zone, _sigfigs, snaplen, ltfield = struct.unpack_from(
            order + "HHiIII", head, 4
        )
        if major != 2 or minor > 4:
            raise self._error(
                4,
                f"unsupported pcap version {major}.{minor} (readable: 2.0 to 2.4)",
                Kind.UNSUPPORTED,
            )
        reserved = ltfield & LT_RESERVED1_MASK
        if reserved:
            raise self._error(
                20,
                f"link-type field 0x{ltfield:08x} has reserved bits 0x{reserved:08x} set",
                Kind.UNSUPPORTED,
            )
        self.byteorder = order
        self.nanosecond = ns
        self.version = (major, minor)
        self.snaplen = snaplen
        self.linktype = canonical_linktype(ltfield & LT_LINKTYPE_MASK)
        self.fcs_len: int | None = (
            2 * (ltfield >> LT_FCS_LENGTH_SHIFT) if ltfield & LT_FCS_LENGTH_PRESENT else None
        )
        self._maxcap = max_caplen(self.linktype)
        self._caplen_at = struct.Struct(order + "8xI").unpack_from  # a record header's caplen
        self._hdr_dtype = np.dtype(order + "u4")
        self._unit = 1 if ns else 1000
        self._consume(FILE_HEADER_LEN)

    def _parse(self, buf: bytes | np.ndarray, eof: bool) -> tuple[Chunk | None, int]:
        end = len(buf)
        # offs: every record whose caplen could be read; pos: the first whose could not.
        offs, pos = walk_records(buf, self.byteorder == ">")
        # If pos is past the end, the last record read is incomplete; the one before it is
        # whole (its successor's caplen was read).
        if pos > end:
            pos = int(offs[-1])
            offs = offs[:-1]

        chunk = None
        stop = pos
        if len(offs):
            chunk, cut = self._records(buf, offs)
            if cut is not None:  # framing lost at offs[cut]: nothing after it is a record
                self._done = True
                return chunk, end
        # The record at pos is not complete in buf.
        left = end - pos
        if left >= 12:
            caplen = self._caplen_at(buf, pos)[0]
            if caplen > self._maxcap:
                self._damaged(self._base + pos, self._caplen_reason(caplen), Kind.BAD_FRAMING)
                self._done = True
                return chunk, end
            need = 16 + caplen
        else:
            need = 16
        if left == 0:
            return chunk, stop
        if eof:
            if left < 16:
                why = f"record header cut short: {left} of 16 bytes at end of file"
            else:
                why = (
                    f"record cut short: caplen {need - 16} but only {left - 16} bytes of data "
                    "at end of file"
                )
            self._damaged(self._base + pos, why, Kind.CUT_SHORT)
            return chunk, end
        self._need = need
        return chunk, stop

    def _caplen_reason(self, caplen: int) -> str:
        return (
            f"record caplen {caplen} exceeds the maximum of {self._maxcap} for link type "
            f"{self.linktype}; the rest of the file cannot be trusted"
        )

    def _records(self, buf: bytes | np.ndarray, o: np.ndarray) -> tuple[Chunk, int | None]:
        """Columns for the records at offsets ``o``; and the index where framing was lost,
        if."""
        raw = np.frombuffer(buf, dtype=np.uint8)
        hdr = sliding_window_view(raw, RECORD_HEADER_LEN)[o].view(self._hdr_dtype)
        caplen = hdr[:, 2]
        wire = hdr[:, 3]
        cut: int | None = None
        bad_cap = caplen > self._maxcap
        if bad_cap.any():
            cut = int(np.argmax(bad_cap))
        bad_len = caplen > wire
        if bad_len.any():
            bad_at = np.flatnonzero(bad_len)
            if cut is not None:
                bad_at = bad_at[bad_at < cut]
            for i in bad_at.tolist():
                self._damaged(
                    self._base + int(o[i]),
                    f"record caplen {int(caplen[i])} exceeds its original length {int(wire[i])}",
                    Kind.BAD_RECORD,
                )
        if cut is not None:
            reason = self._caplen_reason(int(caplen[cut]))
            self._damaged(self._base + int(o[cut]), reason, Kind.BAD_FRAMING)
        keep: slice | np.ndarray = slice(None, cut)
        if bad_len.any():
            ok = ~bad_len
            if cut is not None:
                ok[cut:] = False
            keep = ok
        hdr = hdr[keep]
        n = len(hdr)
        ts = hdr[:, 0].astype(np.int64) * 1_000_000_000 + hdr[:, 1].astype(np.int64) * self._unit
        return (
            chunk_of(
                buf,
                o[keep] + RECORD_HEADER_LEN,
                hdr[:, 2].astype(np.uint32),
                hdr[:, 3].astype(np.uint32),
                ts,
                np.zeros(n, dtype=np.uint32),
                np.full(n, self.linktype, dtype=np.uint16),
            ),
            cut,
        )


_FILE_HDR = struct.Struct("<IHHiIII")
_REC = struct.Struct("<IIII")
_REC_DTYPE = np.dtype("<u4")


class PcapWriter(Closing):
    """Write a pcap file: little-endian, version 2.4, µs or ns, one link type.

    ``linktype=None`` takes the link type of the first packet (Ethernet if the file stays
    empty).  ``snaplen`` defaults to :func:`~cpumap.capture.damage.max_caplen` of the link type.
    ``write`` takes a :class:`Packet` or plain ``bytes`` (a packet of the file's link type,
    timestamp 0).  Raises ``ValueError`` for a packet of another link type, a timestamp before
    1970 or after 2106 (the format's unsigned 32-bit seconds), a caplen beyond the link
    type's maximum, or a caplen above the wire length.  ``nanosecond=False`` floors
    timestamps to the microsecond.  The writer owns the file when given a path.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | BinaryIO,
        *,
        linktype: int | None = None,
        nanosecond: bool = True,
        snaplen: int | None = None,
    ) -> None:
        self._f: BinaryIO
        self._f, self._owns, self.path = open_output(path)
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.count = 0
        self._closed = False
        self._div = 1 if nanosecond else 1000
        if linktype is not None:
            self._header(linktype)

    def _header(self, linktype: int) -> None:
        if not 0 <= linktype <= LT_LINKTYPE_MASK:
            raise ValueError(f"linktype must be in 0..65535, not {linktype}")
        self.linktype = linktype
        if self.snaplen is None:
            self.snaplen = max_caplen(linktype)
        self._maxcap = max_caplen(linktype)
        magic = MAGIC_NS if self.nanosecond else MAGIC_US
        self._f.write(_FILE_HDR.pack(magic, 2, 4, 0, 0, self.snaplen, linktype))

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("write to a closed pcap writer")

    def write(self, packet: Packet | bytes) -> None:
        """Append one packet."""
        self._check_open()
        if not isinstance(packet, Packet):
            lt = LINKTYPE_ETHERNET if self.linktype is None else self.linktype
            packet = Packet(bytes(packet), linktype=lt)
        if self.linktype is None:
            self._header(packet.linktype)
        elif packet.linktype != self.linktype:
            raise ValueError(
                f"pcap holds one link type: file has {self.linktype}, packet has {packet.linktype}"
            )
        data = packet.data
        caplen = len(data)
        wire = packet.length
        if caplen > self._maxcap:
            raise ValueError(f"caplen {caplen} exceeds the maximum of {self._maxcap}")
        if caplen > wire:
            raise ValueError(f"caplen {caplen} exceeds the wire length {wire}")
        sec, sub = divmod(packet.ts_ns, 1_000_000_000)
        if not 0 <= sec <= 0xFFFFFFFF or wire > 0xFFFFFFFF:
            raise ValueError(f"timestamp {packet.ts_ns} ns does not fit a pcap record")
        self._f.write(_REC.pack(sec, sub // self._div, caplen, wire))
        self._f.write(data)
        self.count += 1

    def write_batch(self, batch: PacketBatch) -> None:
        """Append every packet of ``batch`` (vectorised headers, one write)."""
        self._check_open()
        n = len(batch)
        if n == 0:
            return
        lts = np.unique(batch.linktype)
        if self.linktype is None:
            self._header(int(batch.linktype[0]))
        if len(lts) != 1 or int(lts[0]) != self.linktype:
            raise ValueError(
                f"pcap holds one link type: file has {self.linktype}, batch has "
                f"{sorted(int(x) for x in lts)}"
            )
        caplen = batch.caplen.astype(np.int64)
        wire = batch.wire_len.astype(np.int64)
        ts = batch.ts_ns.astype(np.int64)
        if (caplen > self._maxcap).any():
            raise ValueError(f"caplen {int(caplen.max())} exceeds the maximum of {self._maxcap}")
        if (caplen > wire).any():
            i = int(np.argmax(caplen > wire))
            raise ValueError(f"caplen {int(caplen[i])} exceeds the wire length {int(wire[i])}")
        sec, sub = np.divmod(ts, 1_000_000_000)
        if (sec < 0).any() or (sec > 0xFFFFFFFF).any():
            i = int(np.argmax((sec < 0) | (sec > 0xFFFFFFFF)))
            raise ValueError(f"timestamp {int(ts[i])} ns does not fit a pcap record")
        hdr = np.empty((n, 4), dtype=_REC_DTYPE)
        hdr[:, 0] = sec
        hdr[:, 1] = sub // self._div
        hdr[:, 2] = caplen
        hdr[:, 3] = wire
        hb = hdr.tobytes()
        mv = memoryview(np.ascontiguousarray(batch.buf))
        parts: list[bytes | memoryview] = []
        app = parts.append
        for i, (s, c) in enumerate(zip(batch.start.tolist(), caplen.tolist(), strict=True)):
            app(hb[16 * i : 16 * i + 16])
            app(mv[s : s + c])
        self._f.write(b"".join(parts))
        self.count += n

    def close(self) -> None:
        """Finish the file (idempotent).  An empty file still gets its header."""
        if self._closed:
            return
        if self.linktype is None:
            self._header(LINKTYPE_ETHERNET)
        self._closed = True
        if self._owns:
            self._f.close()
        else:
            self._f.flush()
