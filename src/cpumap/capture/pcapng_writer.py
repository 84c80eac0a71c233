"""The pcapng writer: one little-endian section, interface blocks as needed, EPBs.

The format is ``pcapng.py``'s (block types, the interface-id limit); this module only writes.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import numpy as np

from ..abi import LINKTYPE_ETHERNET
from ..closing import Closing
from ..errors import ClosedResourceError
from ..packets import Packet, PacketBatch
from .damage import max_caplen
from .pcapng import BT_EPB, BT_IDB, BT_SHB, MAX_INTERFACE_ID
from .streams import open_output

_SHB = struct.Struct("<IIIHHq")
_IDB = struct.Struct("<IIHHI")
_EPB_DTYPE = np.dtype("<u4")


def _option(code: int, value: bytes) -> bytes:
    pad = -len(value) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


class PcapngWriter(Closing):
    """Write a pcapng file: one little-endian section, IDBs as needed, EPBs.

    The interface id of a packet is its ``ifindex``: the writer declares interfaces
    ``0..ifindex`` as they are needed, up to :data:`MAX_INTERFACE_ID`; an id declared only
    to fill a gap takes ``linktype``.  An interface has one link type: a packet
    whose ``(ifindex, linktype)`` contradicts an earlier one is a ``ValueError``, as are a
    negative timestamp (the format's is unsigned), a caplen above the link type's maximum or
    above the wire length.  ``nanosecond=True`` writes ``if_tsresol`` = 9 in every IDB;
    ``False`` writes microseconds (floored).  ``linktype`` is the link type of plain ``bytes``
    written.  The writer owns the file when given a path.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | BinaryIO,
        *,
        nanosecond: bool = True,
        linktype: int = LINKTYPE_ETHERNET,
        application: str = "cpumap",
    ) -> None:
        self._f: BinaryIO
        self._f, self._owns, self.path = open_output(path)
        self.nanosecond = nanosecond
        self.linktype = linktype
        self.count = 0
        self.interfaces: list[int] = []  # link type by interface id
        self._closed = False
        self._div = 1 if nanosecond else 1000
        opts = _option(4, application.encode()) + _option(0, b"") if application else b""
        blen = _SHB.size + len(opts) + 4
        self._f.write(
            _SHB.pack(BT_SHB, blen, 0x1A2B3C4D, 1, 0, -1) + opts + struct.pack("<I", blen)
        )

    def _declare(self, ifindex: int, linktype: int) -> None:
        """Make interface ``ifindex`` exist with ``linktype`` (or refuse)."""
        if ifindex < len(self.interfaces):
            if self.interfaces[ifindex] != linktype:
                raise ValueError(
                    f"interface {ifindex} has link type {self.interfaces[ifindex]}, "
                    f"packet has {linktype}"
                )
            return
        if not 0 <= ifindex <= MAX_INTERFACE_ID:
            raise ValueError(f"ifindex {ifindex} is out of range 0..{MAX_INTERFACE_ID}")
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"linktype must be in 0..65535, not {linktype}")
        opts = (_option(9, b"\x09") if self.nanosecond else b"") + _option(0, b"")
        blen = _IDB.size + len(opts) + 4
        tail = struct.pack("<I", blen)
        while len(self.interfaces) <= ifindex:
            lt = linktype if len(self.interfaces) == ifindex else self.linktype
            self._f.write(_IDB.pack(BT_IDB, blen, lt, 0, max_caplen(lt)) + opts + tail)
            self.interfaces.append(lt)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("write to a closed pcapng writer")

    def write(self, packet: Packet | bytes) -> None:
        """Append one packet."""
        self._check_open()
        if not isinstance(packet, Packet):
            packet = Packet(bytes(packet), linktype=self.linktype)
        self._declare(packet.ifindex, packet.linktype)
        data = packet.data
        caplen = len(data)
        wire = packet.length
        if caplen > max_caplen(packet.linktype):
            raise ValueError(
                f"caplen {caplen} exceeds the maximum of {max_caplen(packet.linktype)}"
            )
        if caplen > wire:
            raise ValueError(f"caplen {caplen} exceeds the wire length {wire}")
        if packet.ts_ns < 0:
            raise ValueError(f"timestamp {packet.ts_ns} ns is negative")
        if wire > 0xFFFFFFFF:
            raise ValueError(f"wire length {wire} does not fit 32 bits")
        ts = packet.ts_ns // self._div
        pad = -caplen % 4
        blen = 32 + caplen + pad
        self._f.write(
            struct.pack(
                "<7I", BT_EPB, blen, packet.ifindex, ts >> 32, ts & 0xFFFFFFFF, caplen, wire
            )
            + data
            + b"\0" * pad
            + struct.pack("<I", blen)
        )
        self.count += 1

    def write_batch(self, batch: PacketBatch) -> None:
        """Append every packet of ``batch`` (vectorised headers, one write)."""
        self._check_open()
        n = len(batch)
        if n == 0:
            return
        ifx = batch.ifindex.astype(np.int64)
        lt = batch.linktype.astype(np.int64)
        for k in np.unique(ifx * 65536 + lt).tolist():
            self._declare(k >> 16, k & 0xFFFF)
        caplen = batch.caplen.astype(np.int64)
        wire = batch.wire_len.astype(np.int64)
        ts = batch.ts_ns.astype(np.int64)
        over = caplen > np.array([max_caplen(x) for x in self.interfaces])[ifx]
        if over.any():
            i = int(np.argmax(over))
            raise ValueError(f"caplen {int(caplen[i])} exceeds the maximum for its link type")
        if (caplen > wire).any():
            i = int(np.argmax(caplen > wire))
            raise ValueError(f"caplen {int(caplen[i])} exceeds the wire length {int(wire[i])}")
        if (ts < 0).any():
            raise ValueError(f"timestamp {int(ts[np.argmax(ts < 0)])} ns is negative")
        units = (ts // self._div).astype(np.uint64)
        pad = -caplen % 4
        blen = 32 + caplen + pad
        hdr = np.empty((n, 7), dtype=_EPB_DTYPE)
        hdr[:, 0] = BT_EPB
        hdr[:, 1] = blen
        hdr[:, 2] = ifx
        hdr[:, 3] = units >> np.uint64(32)
        hdr[:, 4] = units & np.uint64(0xFFFFFFFF)
        hdr[:, 5] = caplen
        hdr[:, 6] = wire
        hb = hdr.tobytes()
        tb = blen.astype(_EPB_DTYPE).tobytes()
        zeros = b"\0\0\0"
        mv = memoryview(np.ascontiguousarray(batch.buf))
        parts: list[bytes | memoryview] = []
        app = parts.append
        for i, (s, c, p) in enumerate(
            zip(batch.start.tolist(), caplen.tolist(), pad.tolist(), strict=True)
        ):
            app(hb[28 * i : 28 * i + 28])
            app(mv[s : s + c])
            app(zeros[:p] + tb[4 * i : 4 * i + 4])
        self._f.write(b"".join(parts))
        self.count += n

    def close(self) -> None:
        """Finish the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._owns:
            self._f.close()
        else:
            self._f.flush()
