"""Capture files in and out: pcap and pcapng, plain or gzip, read as TShark reads them.

Rule 1: one module per concept, and data flows one way: ``files`` (open by magic or by
name) -> the formats (``pcap``, ``pcapng`` with ``pcapng_writer``) -> ``reader`` (the chunk
pump and the ways packets come out) -> ``streams`` (bytes in and out) -> ``stop`` (a read
that waits for a writer, ended by a stop or a deadline) -> ``damage`` (the error and the
limits).  A format module knows its format and nothing else; ``reader`` knows
no format.
Rule 2: memory is constant in the file size (a reader holds one chunk), and damage is never
silent: it raises :class:`CaptureError` naming the file, the byte offset and the damage's
:class:`CaptureErrorKind`, or -- with ``skip_bad`` -- is counted (``damage.py`` says which
damage can be skipped and how).
Rule 3: packets come out as the engine takes them in (:mod:`cpumap.packets`): columns for
the fast path, one :class:`~cpumap.packets.Packet` at a time for the rest.

    with open_capture("trace.pcapng.gz") as reader:
        for batch in reader.batches(1024):
            ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the same names as the table below (tests/test_imports.py)
    from .damage import MAX_PROBLEMS, MAXIMUM_SNAPLEN, CaptureError, CaptureErrorKind, max_caplen
    from .files import CaptureWriter, open_capture, open_writer, write_capture
    from .pcap import PcapReader, PcapWriter
    from .pcapng import TS_TOO_EARLY, TS_TOO_LATE, Interface, PcapngReader, WideTime
    from .pcapng_writer import PcapngWriter
    from .reader import CHUNK_SIZE, CaptureReader
    from .stop import ReadInterrupted, Stop

__all__ = [
    "CHUNK_SIZE",
    "MAXIMUM_SNAPLEN",
    "MAX_PROBLEMS",
    "TS_TOO_EARLY",
    "TS_TOO_LATE",
    "CaptureError",
    "CaptureErrorKind",
    "CaptureReader",
    "CaptureWriter",
    "Interface",
    "PcapReader",
    "PcapWriter",
    "PcapngReader",
    "PcapngWriter",
    "ReadInterrupted",
    "Stop",
    "WideTime",
    "max_caplen",
    "open_capture",
    "open_writer",
    "write_capture",
]

# Each name is imported from its module when first asked for (cpumap/lazy.py).
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "MAX_PROBLEMS": ".damage",
        "MAXIMUM_SNAPLEN": ".damage",
        "CaptureError": ".damage",
        "CaptureErrorKind": ".damage",
        "max_caplen": ".damage",
        "CaptureWriter": ".files",
        "open_capture": ".files",
        "open_writer": ".files",
        "write_capture": ".files",
        "PcapReader": ".pcap",
        "PcapWriter": ".pcap",
        "TS_TOO_EARLY": ".pcapng",
        "TS_TOO_LATE": ".pcapng",
        "Interface": ".pcapng",
        "PcapngReader": ".pcapng",
        "WideTime": ".pcapng",
        "PcapngWriter": ".pcapng_writer",
        "CHUNK_SIZE": ".reader",
        "CaptureReader": ".reader",
        "ReadInterrupted": ".stop",
        "Stop": ".stop",
    },
)
