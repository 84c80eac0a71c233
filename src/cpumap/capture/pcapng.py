"""The pcapng format, and its reader (the writer is ``pcapng_writer.py``).

Format: a sequence of blocks ``[type u32][total length u32][body][total length u32]``.  A
Section Header Block (SHB) opens each section and fixes its byte order; Interface
Description Blocks (IDB) declare the section's interfaces (link type, snaplen, timestamp
resolution ``if_tsresol`` and offset ``if_tsoffset``); packets come in Enhanced Packet
Blocks (EPB), Simple Packet Blocks (SPB, interface 0, no timestamp) and the obsolete Packet
Block (PB, type 2).  Everything else (name resolution, statistics, custom 0xBAD/0x40000BAD,
decryption secrets, unknown types) is skipped by its length.

Theory of operation
-------------------
The chunk pump of :mod:`cpumap.capture.reader` hands us a chunk.  The hot loop walks consecutive
EPBs with one ``unpack_from`` each and stops at any other block; the EPBs walked are
converted as one run with numpy (header fields, trailer check, interface lookup, timestamp
conversion per interface) and any other block is handled in Python, one at a time.  A run
is converted before any block that changes the section state (SHB, IDB) or yields a packet
of its own (SPB, PB), so packets keep file order and each EPB is read against the interface
table it was written under.  Options of packet blocks are not read.

Packets out
-----------
``ifindex`` is the interface id *within its section* (as TShark shows it: in a file of
several sections the same id can name different interfaces; :attr:`PcapngReader.interfaces`
tells them apart).  ``linktype`` is the interface's.  ``ts_ns`` is
``floor(ts / units_per_second * 10**9) + if_tsoffset * 10**9``; an SPB has no timestamp and
gets ``ts_ns = 0`` (TShark shows none).

Timestamps the int64-ns column cannot hold.  An EPB's timestamp is 64 bits of units
(microseconds, by default): beyond 2**63 ns -- the year 2262 -- or before -2**63 ns (a
negative ``if_tsoffset``), ``ts_ns`` cannot say it.  Such a packet is *not* damage (libpcap
and TShark read it; a writer with a broken clock stamps a high word of 0xffffffff, which
TShark shows as 18446744073204.126329 s).  Its ``ts_ns`` is saturated to
:data:`TS_TOO_LATE` (``2**63 - 1``) or :data:`TS_TOO_EARLY` (``-2**63``), and its exact
time is kept in :attr:`PcapngReader.wide_times`, one :class:`WideTime` per such packet in
file order: the *k*-th packet whose ``ts_ns`` is saturated has ``wide_times[k]``.  What
cannot be had: ordering or arithmetic on such times in the column itself (they all compare
equal there), and a ``PacketBatch`` row that carries its exact time.  An SPB's captured length is
``min(original length, snaplen of interface 0)`` (snaplen 0: no limit).  ``caplen >
snaplen`` in an EPB is tolerated, as in pcap; ``caplen`` above
:func:`~cpumap.capture.damage.max_caplen` is damage.

Damage and ``skip_bad``
-----------------------
Unlike pcap, pcapng can resynchronise: every block ends with its own length.
* A block whose *framing* is broken (length not a multiple of 4, too small, above
  :data:`MAX_BLOCK` or the section's larger limit, trailer not equal to the header, byte-order
  magic unknown) counts once; the reader then scans forward from the damaged block, 4 bytes
  at a time, for a block that is whole (known type, sane length, matching trailer) and
  goes on from there.
* A block whose framing is sound but whose content is wrong (EPB naming an undeclared
  interface, caplen beyond the block or above the original length, an option running
  past its block) is skipped alone.  A damaged IDB still takes
  its interface id, so packets of that interface are skipped too, each counted.
* A section of an unsupported version (only 1.0 and 1.2 are read, as by libpcap and
  TShark) is skipped whole, to the next SHB, and counts once.
* A block that runs past the end of the file counts once.  Strict mode calls it cut short;
  ``skip_bad`` scans on from it as from broken framing, in case its length lied.
Strict mode raises the first of these.
"""

from __future__ import annotations

import copy
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .damage import CaptureError, max_caplen
from .damage import CaptureErrorKind as Kind
from .reader import CaptureReader, Chunk, canonical_linktype, chunk_of, empty_chunk
from .streams import Input

__all__ = [
    "MAX_BLOCK",
    "MAX_INTERFACE_ID",
    "SHB_MAGIC",
    "CaptureError",
    "EpbWalk",
    "Interface",
    "PcapngReader",
]

SHB_MAGIC = b"\x0a\x0d\x0d\x0a"  # the same in both byte orders, by design
BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_PB = 0x00000002  # obsolete Packet Block
BT_SPB = 0x00000003
BT_NRB = 0x00000004
BT_ISB = 0x00000005
BT_EPB = 0x00000006
BT_DSB = 0x0000000A
BT_CB = 0x00000BAD
BT_CB_NOCOPY = 0x40000BAD
_BOM_LE = b"\x4d\x3c\x2b\x1a"
_BOM_BE = b"\x1a\x2b\x3c\x4d"

# Blocks the resync scan accepts as a fresh start, with their smallest total length.
_MIN_LEN = {
    BT_SHB: 28,
    BT_IDB: 20,
    BT_PB: 32,
    BT_SPB: 16,
    BT_NRB: 12,
    BT_ISB: 24,
    BT_EPB: 32,
    0x7: 12,  # IRIG timestamp (obsolete)
    0x8: 12,  # ARINC 429 (obsolete)
    0x9: 12,  # systemd journal export
    BT_DSB: 20,
    BT_CB: 16,
    BT_CB_NOCOPY: 16,
}
_SUPPORTED_VERSIONS = ((1, 0), (1, 2))  # 1.2 was written by old tools; libpcap reads it

# libpcap's INITIAL_MAX_BLOCKSIZE; a section with a DBUS interface allows bigger blocks.
MAX_BLOCK = 16 * 1024 * 1024
_BLOCK_OVERHEAD = 1024  # EPB header + trailer + options allowance above a link type's max_caplen

INT64_MAX = (1 << 63) - 1
TS_TOO_LATE = INT64_MAX  # ts_ns of a packet later than an int64 of ns can say
TS_TOO_EARLY = -INT64_MAX - 1  # ... or earlier
NS = 1_000_000_000
MAX_INTERFACE_ID = 4095  # the writer declares ids 0..ifindex; a bigger ifindex is refused


class Interface(NamedTuple):
    """One interface as its IDB declared it."""

    section: int  # 0 for the file's first section
    id: int  # its interface id within the section (the packets' ifindex)
    linktype: int
    snaplen: int
    units_per_second: int  # from if_tsresol; 10**6 when absent
    tsoffset: int  # if_tsoffset, seconds
    name: str | None  # if_name


class WideTime(NamedTuple):
    """The exact time of a packet whose ``ts_ns`` is saturated (see the module docstring)."""

    offset: int  # the packet block's offset in the file
    ts: int  # the block's 64-bit timestamp, in units of its interface
    units_per_second: int
    tsoffset: int  # the interface's if_tsoffset, seconds

    @property
    def ns(self) -> int:
        """The time in ns since the epoch, as a Python int (floored, as wiretap does)."""
        t, ups = self.ts, self.units_per_second
        return (t // ups) * NS + (t % ups) * NS // ups + self.tsoffset * NS

    @property
    def seconds(self) -> str:
        """The time as TShark's ``frame.time_epoch`` prints it: ``secs.nnnnnnnnn``."""
        secs, frac = divmod(self.ns, NS)
        return f"{secs}.{frac:09d}"


@dataclass
class _Section:
    index: int
    order: str  # "<" or ">"
    offset: int  # absolute offset of its SHB
    skipping: bool = False
    ifaces: list[Interface | None] = field(default_factory=list)
    max_block: int = MAX_BLOCK

    def __post_init__(self) -> None:
        self.hdr2 = struct.Struct(self.order + "II").unpack_from
        self.u32 = struct.Struct(self.order + "I").unpack_from
        self.dt = np.dtype(self.order + "u4")
        self._tables: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, iface: Interface | None) -> None:
        self.ifaces.append(iface)
        self._tables = None
        if iface is not None:
            self.max_block = max(self.max_block, max_caplen(iface.linktype) + _BLOCK_OVERHEAD)

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(valid, linktype, max caplen) per interface id, at least one entry long."""
        if self._tables is None:
            ok = [i is not None for i in self.ifaces] or [False]
            lt = [i.linktype if i is not None else 0 for i in self.ifaces] or [0]
            mc = [max_caplen(i.linktype) if i is not None else 0 for i in self.ifaces] or [0]
            self._tables = (
                np.array(ok, dtype=bool),
                np.array(lt, dtype=np.uint16),
                np.array(mc, dtype=np.int64),
            )
        return self._tables


def _ts_ns(t: int, ups: int, off: int) -> int | None:
    """One timestamp in ``ups`` units to ns (None when it does not fit an int64)."""
    ns = (t // ups) * NS + (t % ups) * NS // ups + off * NS
    return ns if -INT64_MAX - 1 <= ns <= INT64_MAX else None


def _ts_ns_array(ts: np.ndarray, ups: int, off: int) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (uint64, ``ups`` units per second) to int64 ns; and a mask of misfits.

    Exact (floored, as wiretap does) for every resolution: the numpy paths are taken only
    where no intermediate can overflow 64 bits; anything else goes through Python ints.
    """
    off_ns = off * NS
    head = INT64_MAX - max(off_ns, 0)  # the largest ns before the offset is added
    u64 = np.uint64
    if NS % ups == 0:
        mult = NS // ups
        bad = ts > u64(min(head // mult, (1 << 64) - 1))
        ns = np.where(bad, u64(0), ts).astype(np.int64) * mult + off_ns
    elif ups % NS == 0 and ups < (1 << 64):
        q = ts // u64(ups // NS)
        bad = q > u64(head)
        ns = np.where(bad, u64(0), q).astype(np.int64) + off_ns
    elif ups < (1 << 64) // NS:
        secs = ts // u64(ups)
        frac = (ts % u64(ups)) * u64(NS) // u64(ups)
        bad = secs > u64((head - NS) // NS)
        secs = np.where(bad, u64(0), secs)
        ns = secs.astype(np.int64) * NS + frac.astype(np.int64) + off_ns
    else:
        vals = [_ts_ns(t, ups, off) for t in ts.tolist()]
        bad = np.array([v is None for v in vals], dtype=bool)
        ns = np.array([0 if v is None else v for v in vals], dtype=np.int64)
    return ns, bad


class _Framing(Exception):  # an internal signal, never escapes the reader
    """The block at ``pos`` has broken framing (or is cut short): resynchronise from there."""

    def __init__(self, pos: int, reason: str, kind: Kind) -> None:
        self.pos = pos
        self.reason = reason
        self.kind = kind


class EpbWalk(NamedTuple):
    """How a placing source walks a section's EPBs itself (``mapped.py``, ``_place``)."""

    offset: int  # the next block's (a packet block's) offset in the file
    big_endian: bool
    interfaces: np.ndarray  # int64 [ids, 5]: valid, link type, max caplen, units/s, tsoffset
    max_block: int  # the section's largest block


class PcapngReader(CaptureReader):
    """Read a pcapng file (any number of sections, either byte order, gzip or not).

    Attributes beyond :class:`~cpumap.capture.reader.CaptureReader`'s: ``interfaces`` (every
    :class:`Interface` declared so far, all sections), ``sections`` (SHBs read so far).
    ``linktypes`` grows as IDBs are read; on open the reader reads the blocks before the
    first packet, so the first section's leading interfaces are known at once.
    """

    format = "pcapng"

    def __init__(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        skip_bad: bool = False,
        batch_size: int = 256,
        opened: Input | None = None,
    ) -> None:
        self.interfaces: list[Interface] = []
        self.wide_times: list[WideTime] = []  # exact times of saturated ts_ns, file order
        self.sections = 0
        self._sec: _Section | None = None
        self._scan: str | None = None  # "shb": look for the next SHB; "block": for any block
        self._header_only = False
        self._at_packet = False
        super().__init__(source, skip_bad=skip_bad, batch_size=batch_size, opened=opened)

    @property
    def linktypes(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(i.linktype for i in self.interfaces))

    def epb_walk(self) -> EpbWalk | None:
        """How a placing source may walk EPBs itself from the packet block this reader
        stands at (on opening, or after :meth:`walk_on`); None where it may not (no packet
        block ahead, a section skipped or scanned, gzip, packets read).  An interface
        whose times the walk cannot convert (over 2**63 units a second) is marked not
        valid: the walk stops at its packets.  Walking EPBs changes none of the reader's
        parse state but ``wide_times``, whose packets the walk leaves to it."""
        sec = self._sec
        busy = self._scan is not None or self._done or self._pending or not self._at_packet
        if sec is None or sec.skipping or busy or self.compressed or self._partial:
            return None
        rows = [
            (1, i.linktype, max_caplen(i.linktype), i.units_per_second, i.tsoffset)
            if i is not None and i.units_per_second < INT64_MAX
            else (0, 0, 0, 1, 0)
            for i in sec.ifaces
        ]
        table = np.array(rows, dtype=np.int64).reshape(-1, 5)
        return EpbWalk(self._base, sec.order == ">", table, sec.max_block)

    def walk_on(self, offset: int) -> EpbWalk | None:
        """The blocks from ``offset`` -- where a placing source's EPB walk stopped, a block
        it does not take -- read as on opening, up to the next packet block (interfaces,
        sections, statistics; damage reported or skipped as always), and :meth:`epb_walk`
        from there.  The reader then stands at that packet block: if the walk cannot go
        on (None, or a walk from ``offset`` itself: a packet block the walk will not
        judge), its batches read on from there."""
        self.seek_record(offset)
        self._at_packet = False
        self._read_to_packet()
        return self.epb_walk()

    def _read_to_packet(self) -> None:
        self._header_only = self._holding = True
        try:
            while not (self._at_packet or self._done):
                self._step()  # reads blocks up to the next packet block; yields no packets
        finally:
            self._header_only = self._holding = False

    def _snapshot(self) -> object:
        sec = self._sec
        if sec is not None:
            sec = copy.copy(sec)
            sec.ifaces = list(sec.ifaces)
        state = (sec, list(self.interfaces), self.sections, self._scan, self._at_packet)
        return (*state, len(self.wide_times))

    def _restore(self, snapshot: object) -> None:
        sec, interfaces, self.sections, self._scan, self._at_packet, wide = snapshot  # type: ignore[misc]
        self._sec = sec
        self.interfaces = interfaces
        del self.wide_times[wide:]

    def _start(self) -> None:
        head = self._ensure(4)
        if head[:4] != SHB_MAGIC:
            if len(head) < 4:
                raise self._error(
                    0, f"file too short for a pcapng header ({len(head)} bytes)", Kind.TOO_SHORT
                )
            raise self._error(0, f"not a pcapng file: magic {head[:4].hex()}", Kind.NOT_A_CAPTURE)
        self._read_to_packet()

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, buf: bytes, eof: bool) -> tuple[Chunk | None, int]:
        self._out: Chunk = empty_chunk()  # packets of this chunk so far, in file order
        self._slow: list[tuple[int, int, int, int, int, int]] = []  # single packets pending
        epb: list[int] = []  # offsets of a run of EPBs not yet converted
        end = len(buf)
        pos = 0
        while True:
            try:
                if self._scan is not None:
                    pos = self._resync(buf, pos, eof)
                    if self._scan is None:
                        continue
                    stop = pos  # needs more data, or the file ended
                else:
                    sec = self._sec
                    if sec is not None and not self._header_only:
                        # The hot loop: one call per EPB; the end of buf raises.  Lengths
                        # that are not a multiple of 4 are caught with the trailers, later.
                        hdr2 = sec.hdr2
                        app = epb.append
                        try:
                            while True:
                                app(pos)
                                btype, blen = hdr2(buf, pos)
                                if btype != BT_EPB or blen < 32:
                                    break
                                pos += blen
                        except struct.error:
                            pass
                        # epb[-1] == pos is not a whole EPB header; if pos is past the end,
                        # the EPB before it is cut too (the one before that is whole).
                        epb.pop()
                        if pos > end:
                            pos = epb.pop()
                    pos = self._block(buf, pos, eof, epb)
                    if pos >= 0:
                        continue
                    stop = -pos - 1  # needs more data, the file ended, or the header is read
                self._flush(buf, epb)
                break
            except _Framing as f:
                epb.clear()
                self._need = 0
                self._at_packet = False
                self._damaged(self._base + f.pos, f.reason, f.kind)
                self._scan = "block" if self._sec is not None else "shb"
                pos = f.pos + 4
        self._flush_slow(buf)
        return self._out, stop

    def _flush(self, buf: bytes, epb: list[int]) -> None:
        """Convert the pending EPB run (raises _Framing at a broken trailer)."""
        if not epb:
            return
        self._flush_slow(buf)
        sec = self._sec
        assert sec is not None
        offs = epb.copy()
        epb.clear()
        cut = self._epb_run(buf, offs, sec)
        if cut is not None:
            reason = self._framing_reason(buf, offs[cut], sec)
            raise _Framing(offs[cut], reason, Kind.BAD_FRAMING)

    def _framing_reason(self, buf: bytes, pos: int, sec: _Section) -> str:
        _, blen = sec.hdr2(buf, pos)
        if blen & 3:
            return f"block total length {blen} is not a multiple of 4"
        (trailer,) = sec.u32(buf, pos + blen - 4)
        return f"block total length {blen} does not match its trailer {trailer}"

    def _append(self, c: Chunk) -> None:
        out = self._out
        if not len(out.batch):
            self._out = c
            return
        b, x = out.batch, c.batch
        self._out = chunk_of(
            out.raw,
            np.concatenate([b.start, x.start]),
            np.concatenate([b.caplen, x.caplen]),
            np.concatenate([b.wire_len, x.wire_len]),
            np.concatenate([b.ts_ns, x.ts_ns]),
            np.concatenate([b.ifindex, x.ifindex]),
            np.concatenate([b.linktype, x.linktype]),
        )

    def _flush_slow(self, buf: bytes) -> None:
        if not self._slow:
            return
        s, c, w, t, i, lt = zip(*self._slow, strict=True)
        self._slow = []
        self._append(
            chunk_of(
                buf,
                np.array(s, dtype=np.int64),
                np.array(c, dtype=np.uint32),
                np.array(w, dtype=np.uint32),
                np.array(t, dtype=np.int64),
                np.array(i, dtype=np.uint32),
                np.array(lt, dtype=np.uint16),
            )
        )

    def _epb_run(self, buf: bytes, offs: list[int], sec: _Section) -> int | None:
        """Append the packets of the EPBs at ``offs``; the index of a broken trailer, if any."""
        o = np.array(offs, dtype=np.int64)
        raw = np.frombuffer(buf, dtype=np.uint8)
        h = sliding_window_view(raw, 28)[o].view(sec.dt)  # type blen iface hi lo cap orig
        blen = h[:, 1].astype(np.int64)
        trailer = sliding_window_view(raw, 4)[o + blen - 4].view(sec.dt)[:, 0]
        broken = (trailer != h[:, 1]) | (blen & 3 != 0)
        cut = int(np.argmax(broken)) if broken.any() else None

        iface = h[:, 2].astype(np.int64)
        cap = h[:, 5].astype(np.int64)
        orig = h[:, 6].astype(np.int64)
        valid, lts, maxcap = sec.tables()
        idx = np.minimum(iface, len(valid) - 1)
        bad = ~valid[idx] | (iface >= len(sec.ifaces))
        bad |= 32 + ((cap + 3) & ~3) > blen
        bad |= cap > orig
        bad |= cap > maxcap[idx]
        ts = (h[:, 3].astype(np.uint64) << np.uint64(32)) | h[:, 4].astype(np.uint64)
        ns = np.zeros(len(o), dtype=np.int64)
        params = {(i.units_per_second, i.tsoffset) for i in sec.ifaces if i is not None}
        if len(params) == 1:
            ((ups, off),) = params
            ns, wide = _ts_ns_array(ts, ups, off)
        else:
            wide = np.zeros(len(o), dtype=bool)
            for k in np.unique(iface[~bad]).tolist():
                m = iface == k
                it = sec.ifaces[k]
                assert it is not None
                ns_k, wide_k = _ts_ns_array(ts[m], it.units_per_second, it.tsoffset)
                ns[m] = ns_k
                wide[m] = wide_k
        if cut is not None:
            bad[cut:] = True  # past the cut nothing is a block; before it, report in order
            for i in np.flatnonzero(bad[:cut]).tolist():
                self._bad_packet(buf, offs[i], sec)
        elif bad.any():
            for i in np.flatnonzero(bad).tolist():
                self._bad_packet(buf, offs[i], sec)
        keep = ~bad
        for i in np.flatnonzero(wide & keep).tolist():
            it = sec.ifaces[int(iface[i])]
            assert it is not None
            ns[i] = self._wide(offs[i], int(ts[i]), it)
        self._append(
            chunk_of(
                buf,
                o[keep] + 28,
                cap[keep].astype(np.uint32),
                orig[keep].astype(np.uint32),
                ns[keep],
                iface[keep].astype(np.uint32),
                lts[idx[keep]],
            )
        )
        return cut

    def _bad_packet(self, buf: bytes, pos: int, sec: _Section) -> None:
        """Report the damaged EPB at ``pos`` (the vectorised check found it; say why)."""
        _, blen, iface, hi, lo, cap, orig = struct.unpack_from(sec.order + "7I", buf, pos)
        reason = self._packet_problem(sec, iface, cap, orig, blen - 32, (hi << 32) | lo)
        self._damaged(
            self._base + pos, reason or "enhanced packet block is damaged", Kind.BAD_RECORD
        )

    def _packet_problem(
        self, sec: _Section, iface: int, cap: int, orig: int, room: int, ts: int | None
    ) -> str | None:
        """Why a packet block is damaged, or None."""
        if iface >= len(sec.ifaces):
            return (
                f"packet names interface {iface} but section {sec.index} has declared "
                f"{len(sec.ifaces)}"
            )
        it = sec.ifaces[iface]
        if it is None:
            return f"packet names interface {iface}, whose description block was damaged"
        if cap > room:
            return f"caplen {cap} does not fit in its block ({room} bytes of packet data)"
        if cap > orig:
            return f"caplen {cap} exceeds its original length {orig}"
        if cap > max_caplen(it.linktype):
            return (
                f"caplen {cap} exceeds the maximum of {max_caplen(it.linktype)} for link "
                f"type {it.linktype}"
            )
        return None

    def _wide(self, pos: int, ts: int, it: Interface) -> int:
        """Keep the exact time of the packet at ``pos`` (of this chunk); its saturated ns."""
        w = WideTime(self._base + pos, ts, it.units_per_second, it.tsoffset)
        self.wide_times.append(w)
        return TS_TOO_LATE if w.ns > 0 else TS_TOO_EARLY

    # -- one block, the slow way --------------------------------------------------------------

    def _block(self, buf: bytes, pos: int, eof: bool, epb: list[int]) -> int:
        """Handle the block at ``pos``; the next position, or ``-(stop + 1)`` to stop."""
        end = len(buf)
        left = end - pos
        if left == 0:
            return -(pos + 1)
        is_shb = buf[pos : pos + 4] == SHB_MAGIC
        sec = self._sec
        if left < (12 if is_shb else 8):
            return self._short(pos, left, 12 if is_shb else 8, eof, epb, buf)
        if is_shb:
            bom = buf[pos + 8 : pos + 12]
            if bom not in (_BOM_LE, _BOM_BE):
                self._flush(buf, epb)
                why = f"section header byte-order magic {bom.hex()} is unknown"
                raise _Framing(pos, why, Kind.BAD_FRAMING)
            order = "<" if bom == _BOM_LE else ">"
            (blen,) = struct.unpack_from(order + "I", buf, pos + 4)
            btype = BT_SHB
            limit = MAX_BLOCK
        elif sec is None:
            raise AssertionError("no section and not at a section header")
        else:
            order = sec.order
            btype, blen = sec.hdr2(buf, pos)
            limit = sec.max_block
        floor = 28 if btype == BT_SHB else 12  # below this the block cannot be framed at all
        if blen & 3 or blen < floor or blen > limit:
            self._flush(buf, epb)
            if blen & 3:
                why = "is not a multiple of 4"
            elif blen > limit:
                why = f"exceeds the maximum of {limit}"
            else:
                why = f"is below the minimum of {floor}"
            raise _Framing(pos, f"block total length {blen} {why}", Kind.BAD_FRAMING)
        if left < blen:
            return self._short(pos, left, blen, eof, epb, buf)
        (trailer,) = struct.unpack_from(order + "I", buf, pos + blen - 4)
        if trailer != blen:
            self._flush(buf, epb)
            why = f"block total length {blen} does not match its trailer {trailer}"
            raise _Framing(pos, why, Kind.BAD_FRAMING)
        if self._header_only and btype in (BT_EPB, BT_SPB, BT_PB):
            self._at_packet = True
            return -(pos + 1)
        if blen < _MIN_LEN.get(btype, 12):  # sound framing, but no room for the block's fields
            self._flush(buf, epb)
            self._damaged(
                self._base + pos,
                f"block of type 0x{btype:x} is {blen} bytes, below its minimum of "
                f"{_MIN_LEN[btype]}",
                Kind.BAD_BLOCK,
            )
            return pos + blen

        if btype == BT_SHB:
            self._flush(buf, epb)
            self._section(buf, pos, blen, order)
        elif sec is None or sec.skipping:
            raise AssertionError("block outside a section")
        elif btype == BT_IDB:
            self._flush(buf, epb)
            self._interface(buf, pos, blen, sec)
        elif btype in (BT_SPB, BT_PB, BT_EPB):
            self._flush(buf, epb)
            self._packet(buf, pos, blen, btype, sec)
        # else: NRB, ISB, DSB, custom, unknown: nothing we need
        return pos + blen

    def _short(self, pos: int, left: int, need: int, eof: bool, epb: list[int], buf: bytes) -> int:
        """The block at ``pos`` needs ``need`` bytes and ``left`` are here."""
        if not eof:
            self._need = need
            return -(pos + 1)
        self._flush(buf, epb)
        what = "block header" if need <= 12 else "block"
        # The file is cut short, or the length lies; a resync scan tells which (with skip_bad).
        # Cut inside the first section header, the file is shorter than its file header.
        kind = Kind.TOO_SHORT if self._base + pos == 0 else Kind.CUT_SHORT
        reason = f"{what} cut short: {need} bytes needed, {left} left at end of file"
        raise _Framing(pos, reason, kind)

    def _section(self, buf: bytes, pos: int, blen: int, order: str) -> None:
        major, minor = struct.unpack_from(order + "HH", buf, pos + 12)
        sec = _Section(self.sections, order, self._base + pos)
        self.sections += 1
        self._sec = sec
        if (major, minor) not in _SUPPORTED_VERSIONS:
            sec.skipping = True
            why = f"unsupported pcapng version {major}.{minor} (readable: 1.0, 1.2)"
            why += "; section skipped" if self.skip_bad else ""
            self._damaged(self._base + pos, why, Kind.UNSUPPORTED)
            self._scan = "shb"
            return
        problem = self._options(buf, pos + 24, pos + blen - 4, order, {})
        if problem:
            self._damaged(self._base + pos, f"section header: {problem}", Kind.BAD_BLOCK)

    def _options(
        self, buf: bytes, p: int, end: int, order: str, want: dict[int, bytes]
    ) -> str | None:
        """Walk options in ``buf[p:end]``, filling ``want`` (code -> value); why not, or None."""
        hh = struct.Struct(order + "HH").unpack_from
        while p + 4 <= end:
            code, olen = hh(buf, p)
            if code == 0:
                return None
            vend = p + 4 + olen
            if vend > end:
                return f"option {code} of length {olen} runs past the end of its block"
            if code in want:
                want[code] = buf[p + 4 : vend]
            p += 4 + ((olen + 3) & ~3)
        return None

    def _interface(self, buf: bytes, pos: int, blen: int, sec: _Section) -> None:
        linktype, _reserved, snaplen = struct.unpack_from(sec.order + "HHI", buf, pos + 8)
        opts: dict[int, bytes] = {2: b"", 9: b"", 14: b""}
        problem = self._options(buf, pos + 16, pos + blen - 4, sec.order, opts)
        ups, off = 10**6, 0
        if problem is None and opts[9]:
            if len(opts[9]) != 1:
                problem = f"if_tsresol has length {len(opts[9])}, not 1"
            else:
                r = opts[9][0]
                ups = 2 ** (r & 0x7F) if r & 0x80 else 10**r
        if problem is None and opts[14]:
            if len(opts[14]) != 8:
                problem = f"if_tsoffset has length {len(opts[14])}, not 8"
            else:
                (off,) = struct.unpack(sec.order + "q", opts[14])
                if abs(off) * NS > INT64_MAX:
                    problem = f"if_tsoffset {off} s is out of range"
        iid = len(sec.ifaces)
        if problem is not None:
            sec.add(None)
            why = f"interface {iid} description: {problem}"
            self._damaged(self._base + pos, why, Kind.BAD_BLOCK)
            return
        name = opts[2].decode("utf-8", "replace") if opts[2] else None
        iface = Interface(sec.index, iid, canonical_linktype(linktype), snaplen, ups, off, name)
        sec.add(iface)
        self.interfaces.append(iface)

    def _packet(self, buf: bytes, pos: int, blen: int, btype: int, sec: _Section) -> None:
        if btype == BT_SPB:
            (orig,) = sec.u32(buf, pos + 8)
            it = sec.ifaces[0] if sec.ifaces else None
            if it is None:
                why = "damaged" if sec.ifaces else "not declared"
                why = f"simple packet block, but interface 0 is {why}"
                self._damaged(self._base + pos, why, Kind.BAD_RECORD)
                return
            cap = orig if it.snaplen == 0 else min(orig, it.snaplen)
            problem = self._packet_problem(sec, 0, cap, orig, blen - 16, None)
            if problem:
                why = f"simple packet block: {problem}"
                self._damaged(self._base + pos, why, Kind.BAD_RECORD)
                return
            self._slow.append((pos + 12, cap, orig, 0, 0, it.linktype))
            return
        if btype == BT_PB:
            iface, _drops, hi, lo, cap, orig = struct.unpack_from(
                sec.order + "HHIIII", buf, pos + 8
            )
        else:  # an EPB the fast loop left (only when its length is odd: already refused)
            iface, hi, lo, cap, orig = struct.unpack_from(sec.order + "5I", buf, pos + 8)
        ts = (hi << 32) | lo
        problem = self._packet_problem(sec, iface, cap, orig, blen - 32, ts)
        if problem:
            self._damaged(self._base + pos, problem, Kind.BAD_RECORD)
            return
        it = sec.ifaces[iface]
        assert it is not None
        ns = _ts_ns(ts, it.units_per_second, it.tsoffset)
        if ns is None:
            ns = self._wide(pos, ts, it)
        self._slow.append((pos + 28, cap, orig, ns, iface, it.linktype))

    # -- resynchronisation --------------------------------------------------------------------

    def _resync(self, buf: bytes, pos: int, eof: bool) -> int:
        """Scan for a block to go on from; clears ``self._scan`` when found.

        Returns where to go on from (the block found), or where the scan stopped for more
        data (``self._need`` set), or the end of ``buf`` when the file ended without one.
        """
        end = len(buf)
        if self._scan == "shb":
            while True:
                at = buf.find(SHB_MAGIC, pos)
                if at < 0:
                    return end if eof else max(pos, end - 3)
                ok = self._whole_shb(buf, at, eof)
                if ok is None:  # needs more data
                    return at
                if ok:
                    self._scan = None
                    return at
                pos = at + 1
        sec = self._sec
        assert sec is not None
        hdr2 = sec.hdr2
        while pos + 8 <= end:
            if buf[pos : pos + 4] == SHB_MAGIC:
                ok = self._whole_shb(buf, pos, eof)
            else:
                btype, blen = hdr2(buf, pos)
                ok = False
                if btype in _MIN_LEN and not blen & 3 and _MIN_LEN[btype] <= blen <= sec.max_block:
                    if pos + blen <= end:
                        ok = sec.u32(buf, pos + blen - 4)[0] == blen
                    elif not eof:
                        ok = None
                        self._need = blen
            if ok is None:
                return pos
            if ok:
                self._scan = None
                return pos
            pos += 4
        if eof:
            return end
        self._need = 8
        return pos

    def _whole_shb(self, buf: bytes, at: int, eof: bool) -> bool | None:
        """Is there a sound SHB at ``at``?  None: cannot tell without more data."""
        end = len(buf)
        if at + 12 > end:
            if eof:
                return False
            self._need = 12
            return None
        bom = buf[at + 8 : at + 12]
        if bom not in (_BOM_LE, _BOM_BE):
            return False
        order = "<" if bom == _BOM_LE else ">"
        (blen,) = struct.unpack_from(order + "I", buf, at + 4)
        if blen & 3 or not 28 <= blen <= MAX_BLOCK:
            return False
        if at + blen > end:
            if eof:
                return False
            self._need = blen
            return None
        return struct.unpack_from(order + "I", buf, at + blen - 4)[0] == blen
