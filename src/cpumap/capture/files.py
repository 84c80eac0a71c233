"""Opening capture files: the format by its magic when reading, by name when writing.

:func:`open_capture` reads the first bytes (through gzip when they say so) and hands the
opened stream to the reader of that format; :func:`open_writer` and :func:`write_capture`
make a pcapng (the default) or pcap file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, BinaryIO, Literal, Protocol

from ..abi import LINKTYPE_ETHERNET
from ..packets import Packet, PacketBatch
from .damage import CaptureError, CaptureErrorKind
from .pcap import PCAP_MAGICS, PcapReader, PcapWriter
from .pcapng import SHB_MAGIC, PcapngReader
from .pcapng_writer import PcapngWriter
from .reader import CaptureReader
from .stop import Stop
from .streams import open_input


def open_capture(
    path: str | os.PathLike[str] | BinaryIO,
    *,
    skip_bad: bool = False,
    batch_size: int = 256,
    stop: Stop | None = None,
) -> CaptureReader:
    """Open a pcap or pcapng file, gzip-compressed or not, by its magic (not its name).

    Returns a :class:`~cpumap.capture.PcapReader` or :class:`~cpumap.capture.PcapngReader`.
    Raises :class:`CaptureError` for an unknown magic (naming the bytes found) or a damaged
    file header, and ``OSError`` when the file cannot be opened.  With ``stop``, a FIFO or
    pipe is read through its waits: opening and every read raise
    :class:`~cpumap.capture.stop.ReadInterrupted` once it is set (``stop.py``).
    """
    inp = open_input(path, stop=stop)
    try:
        magic = inp.head[:4]
        if len(magic) < 4:
            what = "empty file" if not magic else f"file too short ({len(magic)} bytes)"
            raise CaptureError(
                inp.name, 0, f"{what}: not a pcap or pcapng capture", CaptureErrorKind.TOO_SHORT
            )
        kwargs: dict[str, Any] = {"skip_bad": skip_bad, "batch_size": batch_size, "opened": inp}
        if magic in PCAP_MAGICS:
            return PcapReader(path, **kwargs)
        if magic == SHB_MAGIC:
            return PcapngReader(path, **kwargs)
        raise CaptureError(
            inp.name,
            0,
            f"unknown magic {magic.hex()}: not a pcap or pcapng capture"
            + (" (inside gzip)" if inp.compressed else ""),
            CaptureErrorKind.NOT_A_CAPTURE,
        )
    except BaseException:
        for c in inp.closers:
            c.close()
        raise


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
    """A writer for ``path``: :class:`~cpumap.capture.PcapngWriter` or
    :class:`~cpumap.capture.PcapWriter`.

    ``linktype`` is the link type of ``bytes`` written (default Ethernet); for pcap it is the
    file's one link type (default: that of the first packet).
    """
    if format == "pcapng":
        return PcapngWriter(
            path,
            nanosecond=nanosecond,
            linktype=LINKTYPE_ETHERNET if linktype is None else linktype,
        )
    if format == "pcap":
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
