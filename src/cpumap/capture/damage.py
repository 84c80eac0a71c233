"""Damage: the error a damaged capture raises, and libpcap's limits that tell a damaged record.

Strict by default: the first damaged record raises :class:`CaptureError`, which names the
file, the byte offset and what is wrong; every packet before it is handed out first, and
the reader raises the same error on every read after.  ``skip_bad=True`` instead counts the
damaged record in ``reader.skipped``, keeps its error in ``reader.problems`` (the first
:data:`MAX_PROBLEMS`), and goes on where the format says it safely can (see each format
module).  Damage to a file header (magic, version, reserved link-type bits) cannot be
skipped and raises in both modes.  Offsets in a gzip file count decompressed bytes.

A record header that claims more than :func:`max_caplen` for its link type is damage, never
an allocation; the writers refuse to write such a record.
"""

from __future__ import annotations

from typing import Any

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
