"""Shared-memory segments that cannot outlive their processes.

Theory of operation
-------------------
Every segment is an anonymous ``memfd`` mapped ``MAP_SHARED``.  It has no name in
``/dev/shm``, so nothing can be left behind: the kernel frees the memory when the last
process that maps it exits, however it exits (``SIGKILL`` of the controlling process
included).  Compare ``multiprocessing.shared_memory``, whose named segments survive a
killed owner and, on 3.11, get unlinked by the resource tracker of whichever attaching
process exits first (cpython#82300).

Sharing works by inheritance: the controlling process creates every segment *before* it
forks the processes that use it (workers, RX producers).  Segments whose contents grow
later (rings for new map entries) are therefore preallocated at their maximum size;
``ftruncate`` on a memfd is sparse, so untouched pages cost nothing.

Ownership is simple: the process that created a :class:`Segment` owns it; children only
use the inherited mapping.  ``close()`` drops this process's mapping; the memory goes
when every process has dropped it.

A :class:`Layout` carves one segment into named, aligned numpy arrays, so a structure
spread over several arrays (a frame pool: data plus descriptor columns) lives in one
mapping and is described in one place.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field

import numpy as np

CACHE_LINE = 64


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass
class _Field:
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass
class Layout:
    """Named arrays at aligned offsets; ``create()`` makes the segment that holds them."""

    name: str
    fields: dict[str, _Field] = field(default_factory=dict)
    size: int = 0

    def add(
        self,
        name: str,
        dtype: np.typing.DTypeLike,
        shape: int | tuple[int, ...],
        align: int = CACHE_LINE,
    ) -> int:
        """Reserve an array; returns its byte offset.  Arrays start on cache lines so
        that words written by different processes never share one (no false sharing)."""
        if name in self.fields:
            raise ValueError(f"field {name!r} defined twice")
        dt = np.dtype(dtype)
        shp = (shape,) if isinstance(shape, int) else tuple(shape)
        off = _align(self.size, align)
        nbytes = dt.itemsize * int(np.prod(shp, dtype=np.int64))
        self.fields[name] = _Field(off, dt, shp)
        self.size = off + max(nbytes, 1)
        return off

    def create(self, populate: bool = False) -> Segment:
        """The segment.  ``populate``: fault every page in now (one madvise), so that the
        first pass over a big array does not pay a page fault per 4 KiB on the hot path."""
        return Segment(self, populate)


def populate_mapping(mm: mmap.mmap, *, write: bool) -> None:
    """Fault every page of ``mm`` in now (one madvise: ``MADV_POPULATE_WRITE``, or
    ``_READ`` for a mapping that only reads pages another process wrote), so that the
    first pass over it does not pay a page fault per 4 KiB on the hot path."""
    advice = getattr(mmap, "MADV_POPULATE_WRITE" if write else "MADV_POPULATE_READ", None)
    try:
        if advice is None:
            raise OSError("no MADV_POPULATE_*")
        mm.madvise(advice)
    except OSError:  # an older kernel: touch one byte per page instead
        pages = np.frombuffer(mm, dtype=np.uint8)[:: mmap.PAGESIZE]
        if write:
            pages[:] = 0
        else:
            int(pages.sum())


class Segment:
    """One memfd-backed shared mapping, carved into the arrays of its :class:`Layout`."""

    def __init__(self, layout: Layout, populate: bool = False) -> None:
        self.layout = layout
        self.size = _align(max(layout.size, 1), mmap.PAGESIZE)
        fd = os.memfd_create(f"cpumap-{layout.name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, self.size)
            self._mm: mmap.mmap | None = mmap.mmap(
                fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        finally:
            # The mapping keeps the memory alive; the fd would only leak into children.
            os.close(fd)
        if populate:
            populate_mapping(self._mm, write=True)
        self.buf = np.frombuffer(self._mm, dtype=np.uint8)
        self.addr: int = self.buf.ctypes.data
        self._views: dict[str, np.ndarray] = {}

    def view(self, name: str) -> np.ndarray:
        """The numpy array named ``name`` (a view into shared memory, cached)."""
        v = self._views.get(name)
        if v is None:
            f = self.layout.fields[name]
            count = int(np.prod(f.shape, dtype=np.int64))
            v = np.frombuffer(self._mm, dtype=f.dtype, count=count, offset=f.offset)
            v = v.reshape(f.shape)
            self._views[name] = v
        return v

    def address(self, name: str, byte_offset: int = 0) -> int:
        """Raw address of field ``name`` (+ ``byte_offset``), for cpumap._atomics."""
        return self.addr + self.layout.fields[name].offset + byte_offset

    def memoryview(self) -> memoryview:
        """The whole segment as a writable memoryview (zero-copy frame access)."""
        assert self._mm is not None
        return memoryview(self._mm)

    def close(self) -> None:
        """Drop this process's mapping, if no view of it is still alive.

        numpy views pin the mapping (``mmap.close`` refuses while buffers are exported);
        then the mapping goes when the views are collected or the process exits.  Either
        way the memory is reclaimed by the kernel: nothing is left behind.
        """
        if self._mm is None:
            return
        self._views.clear()
        self.buf = np.zeros(0, dtype=np.uint8)
        with contextlib.suppress(BufferError):
            self._mm.close()
        self._mm = None
