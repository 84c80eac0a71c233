"""Errors that mean the same thing wherever they are raised.

Rule: an error type lives here when objects of several subsystems raise it for one reason.
Errors of one subsystem live with it (``CaptureError`` with the readers, ``LoadError`` with
the loader, ``OSError`` with the kernel's errno for map operations).
"""

from __future__ import annotations


class ClosedResourceError(ValueError):
    """The object was used after *your* code closed it (a map, a producer, a capture
    reader or writer, a live source, a kernel map or program).

    A ``ValueError``, as Python's own files raise for I/O on a closed file, so code that
    catches that keeps working.  The message names the object: ``"map is closed"``.
    """
