"""cpumap's errors: one root, and the errors that mean the same thing wherever they are raised.

Rule: every error cpumap raises on purpose derives from :class:`Error`, so ``except
cpumap.Error`` catches exactly ours.  Each also keeps the built-in base that code caught
before the root existed (``ValueError`` for a closed object or a bad capture, ``OSError``
with the kernel's errno for a map operation, ``RuntimeError`` for a failed worker start).

An error type lives here when objects of several subsystems raise it for one reason.
Errors of one subsystem live with it (``CaptureError`` with the readers, ``LoadError``
with the loader, ``MapError`` with the map's errno table) and derive from :class:`Error`.
"""

from __future__ import annotations


class Error(Exception):
    """The root of every error cpumap raises on purpose."""


class ClosedResourceError(Error, ValueError):
    """The object was used after *your* code closed it (a map, a producer, a capture
    reader or writer, a live source, a kernel map or program).

    A ``ValueError``, as Python's own files raise for I/O on a closed file, so code that
    catches that keeps working.  The message names the object: ``"map is closed"``.
    """


class HandlerSetupError(Error, RuntimeError):
    """A handler's ``setup()`` raised in a new worker (a local map's or a cluster entry's);
    the update was not made.  The message names the worker and holds the traceback."""
