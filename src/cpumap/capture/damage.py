"""Damage: the error a damaged capture raises, and libpcap's limits that tell a damaged record.

Strict by default: the first damaged record raises :class:`CaptureError`, which names the
file, the byte offset and what is wrong (``reason`` in words, ``kind`` a
:class:`CaptureErrorKind` for code); every packet before it is handed out first, and
the reader raises the same error on every read after.  ``skip_bad=True`` instead counts the
damaged record in ``reader.skipped``, keeps its error in ``reader.problems`` (the first
:data:`MAX_PROBLEMS`), and goes on where the format says it safely can (see each format
module).  Damage to a file header (magic, version, reserved link-type bits) cannot be
skipped and raises in both modes.  Offsets in a gzip file count decompressed bytes.

A record header that claims more than :func:`max_caplen` for its link type is damage, never
an allocation; the writers refuse to write such a record.
"""

from __future__ import annotations

import enum
from typing import Any

from ..errors import Error

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


def max_caplen(linktype: int) -> int:
    """The largest captured length a record of ``linktype`` may have (libpcap's limit).

    A record header that claims more is damage, never an allocation.
    """
    return _MAX_CAPLEN_BY_LINKTYPE.get(linktype, MAXIMUM_SNAPLEN)


class CaptureErrorKind(enum.StrEnum):
    """What is wrong with a capture, for code that acts on it (``reason`` says it for people).

    ``NOT_A_CAPTURE`` and ``TOO_SHORT`` say the file holds no capture to read: ``skip_bad``
    cannot help.  The rest are damage to a capture; which of it ``skip_bad`` skips, and how
    far, the module docstring and each format module say.
    """

    NOT_A_CAPTURE = enum.auto()
    """Not a pcap or pcapng file: an unknown magic (the file's first bytes)."""
    TOO_SHORT = enum.auto()
    """Shorter than its file header: empty, or cut inside the magic, the pcap file header
    or the first pcapng section header."""
    UNSUPPORTED = enum.auto()
    """A capture this reader does not read: a pcap version other than 2.0-2.4, reserved
    link-type bits set, or a pcapng section of another version than 1.0 or 1.2 (with
    ``skip_bad``, such a section is skipped)."""
    BAD_GZIP = enum.auto()
    """The gzip stream around the capture is damaged or cut short."""
    CUT_SHORT = enum.auto()
    """A record or block runs past the end of the file."""
    BAD_FRAMING = enum.auto()
    """The way to the next record is lost: a pcap caplen above the maximum (the rest of
    the file cannot be trusted), a pcapng block length or trailer that is wrong, a
    section header of unknown byte order."""
    BAD_RECORD = enum.auto()
    """A packet record or block, soundly framed, whose fields are impossible: caplen
    above its original length or beyond its block, an interface not declared or
    damaged.  Skipped alone."""
    BAD_BLOCK = enum.auto()
    """A pcapng block that holds no packet, soundly framed, whose content is wrong: too
    short for its type, an option that runs past its block, an interface description
    with a bad option.  Skipped alone."""


class CaptureError(Error, ValueError):
    """A capture file is damaged (or is not a capture file).

    ``str(err)`` is ``"<path>: offset <offset>: <reason>"``; the three parts are attributes,
    and ``kind`` (a :class:`CaptureErrorKind`) says what is wrong for code to test, where
    ``reason`` says it for people.  ``offset`` is the byte offset of the damaged record,
    block or header (in a gzip file, in the decompressed stream).
    """

    def __init__(self, path: str, offset: int, reason: str, kind: CaptureErrorKind) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        self.kind = kind
        super().__init__(f"{path}: offset {offset}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across the engine's processes
        return (type(self), (self.path, self.offset, self.reason, self.kind))
