"""The cpumap's tracepoints, read from a tracefs instance of our own, and their totals.

The ``xdp:xdp_cpumap_enqueue`` (one per bulk-queue flush, on the RX CPU) and
``xdp:xdp_cpumap_kthread`` (one per kthread batch, on the target CPU) tracepoints, in a
tracefs *instance* of our own (``instances/cpumap-<pid>-<n>``) so the global buffer and
other tracers are untouched, filtered on our map's id, on the ``mono`` clock so that
timestamps of the two CPUs compare.  The buffer is sized to hold a whole run (``overwrite``
off, so an overflow drops new events and the per-CPU ``stats`` count them).

What each tracepoint field means on this kernel (6.x) is recorded in
``docs/kernel-differences.md``; the short version: enqueue ``processed`` counts every frame
flushed towards the ring *including* the ``drops`` that found it full; kthread
``processed`` is the batch size (<= ``CPUMAP_BATCH`` = 8) and ``xdp_pass + xdp_drop +
xdp_redirect`` split it by second-stage verdict; its ``drops`` counts only SKB allocation
failures.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import re
import select
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..closing import Closing

CPUMAP_EVENTS: Final = ("xdp/xdp_cpumap_enqueue", "xdp/xdp_cpumap_kthread")
_TRACEFS_CANDIDATES: Final = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_instance_ids = itertools.count()


def tracefs_root(*, mount: bool = True) -> str:
    """Where tracefs is mounted, mounting it at /sys/kernel/tracing if it is not (root only).

    Raises ``OSError`` if it is neither mounted nor mountable.  A mount we make stays: it
    is the kernel's standard place, and another process may be using it by the time we
    would unmount it.
    """
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs":
                return parts[1]
    for cand in _TRACEFS_CANDIDATES:
        if os.path.exists(os.path.join(cand, "instances")):
            return cand
    if mount and os.path.isdir(_TRACEFS_CANDIDATES[0]):
        # mount(2) itself, not the mount(8) binary a minimal image may lack.
        libc = ctypes.CDLL(None, use_errno=True)
        target = _TRACEFS_CANDIDATES[0].encode()
        if libc.mount(b"nodev", target, b"tracefs", ctypes.c_ulong(0), None) == 0:
            return _TRACEFS_CANDIDATES[0]
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount tracefs on {target.decode()}: {os.strerror(err)}")
    raise OSError(errno.ENODEV, "tracefs is not mounted and cannot be mounted here")


class TraceEvent(NamedTuple):
    """One tracepoint hit, parsed from a ``trace_pipe`` line."""

    name: str
    """``xdp_cpumap_enqueue`` or ``xdp_cpumap_kthread``."""
    cpu: int
    """The CPU that recorded it (the RX CPU for enqueue, the target CPU for kthread)."""
    ts: float
    """Seconds on the instance's trace clock (``mono``: comparable across CPUs)."""
    fields: dict[str, int | str]
    """The event's ``key=value`` fields, integers where they parse as integers."""


# "<task>-<pid> [001] d..1. 123.456789: xdp_cpumap_kthread: kthread cpu=1 map_id=7 ..."
# The task name may contain spaces and the irq-info flags column may be absent, so the
# match is anchored on "[cpu]" and the timestamp instead of splitting on whitespace.
_LINE = re.compile(rb"\[(\d+)\]\s+(?:\S+\s+)?(\d+\.\d+): (\w+): \w+ (.*)$")


def parse_trace_line(line: bytes) -> TraceEvent | None:
    """Parse one ``trace``/``trace_pipe`` line; None for headers and lines of other shapes."""
    m = _LINE.search(line)
    if m is None:
        return None
    fields: dict[str, int | str] = {}
    for tok in m.group(4).split():
        k, sep, v = tok.partition(b"=")
        if not sep:
            continue
        try:
            fields[k.decode()] = int(v)
        except ValueError:
            fields[k.decode()] = v.decode(errors="replace")
    return TraceEvent(m.group(3).decode(), int(m.group(1)), float(m.group(2)), fields)


class TraceInstance(Closing):
    """A tracefs instance of our own with some events enabled, read through ``trace_pipe``.

    ``with TraceInstance(filter="map_id == 7") as tr: ...; events = tr.drain()``.  The
    instance directory is removed on ``close()`` (idempotent), also when the body raised.
    """

    def __init__(
        self,
        events: Iterable[str] = CPUMAP_EVENTS,
        *,
        filter: str | None = None,
        buffer_kb: int = 4096,
        clock: str = "mono",
        root: str | None = None,
    ) -> None:
        self.root: Final = root or tracefs_root()
        self.name: Final = f"cpumap-{os.getpid()}-{next(_instance_ids)}"
        self.path: Final = os.path.join(self.root, "instances", self.name)
        self.events: Final = tuple(events)
        self._pipe: int | None = None
        self._partial = b""
        os.mkdir(self.path)
        try:
            self._write("tracing_on", "0")
            self._write("buffer_size_kb", str(buffer_kb))
            self._write("trace_clock", clock)
            # Overwrite off: a full buffer drops the newest events and counts them, rather
            # than silently eating the oldest (which would skew every total the same way).
            self._write("options/overwrite", "0")
            for ev in self.events:
                if filter is not None:
                    self._write(f"events/{ev}/filter", filter)
                self._write(f"events/{ev}/enable", "1")
            self._pipe = os.open(os.path.join(self.path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
            self._write("tracing_on", "1")
        except BaseException:
            self.close()
            raise

    def _write(self, rel: str, value: str) -> None:
        with open(os.path.join(self.path, rel), "w") as f:
            f.write(value)

    def drain(self) -> list[TraceEvent]:
        """Every event recorded since the last drain (consumed: a second drain won't repeat it)."""
        if self._pipe is None:
            raise ValueError("TraceInstance is closed")
        chunks = [self._partial]
        while True:
            try:
                chunk = os.read(self._pipe, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        events = []
        for line in data[:cut].splitlines():
            ev = parse_trace_line(line)
            if ev is not None:
                events.append(ev)
        return events

    def wait_readable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``trace_pipe`` to have data."""
        if self._pipe is None:
            raise ValueError("TraceInstance is closed")
        poller = select.poll()
        poller.register(self._pipe, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def lost_events(self) -> int:
        """Events the buffer could not hold (``overrun`` + ``dropped events``, all CPUs)."""
        lost = 0
        per_cpu = os.path.join(self.path, "per_cpu")
        for cpu_dir in os.listdir(per_cpu):
            with open(os.path.join(per_cpu, cpu_dir, "stats")) as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k.strip() in ("overrun", "dropped events"):
                        lost += int(v)
        return lost

    def close(self) -> None:
        """Disable our events and remove the instance directory.  Idempotent."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if not os.path.isdir(self.path):
            return
        with contextlib.suppress(OSError):
            self._write("tracing_on", "0")
        for ev in self.events:
            with contextlib.suppress(OSError):
                self._write(f"events/{ev}/enable", "0")
        # rmdir fails with EBUSY while a file of the instance is open (not ours: closed above).
        os.rmdir(self.path)


def tracing_unavailable_reason() -> str | None:
    """Why the cpumap tracepoints cannot be read here (None if they can)."""
    try:
        root = tracefs_root()
    except OSError as e:
        return str(e)
    for ev in CPUMAP_EVENTS:
        if not os.path.isdir(os.path.join(root, "events", ev)):
            return f"tracepoint {ev} not in {root}/events"
    try:
        TraceInstance(root=root, buffer_kb=64).close()
    except OSError as e:
        return f"cannot create a tracefs instance: {e}"
    return None


# --- totals ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnqueueTotals:
    """Sum of ``xdp_cpumap_enqueue`` events: the RX side's bulk-queue flushes."""

    events: int
    processed: int
    """Frames flushed towards the ring, *including* ``drops``."""
    drops: int
    """Frames that found the ring full (returned to the page pool)."""
    max_batch: int
    """Largest ``processed`` of one flush (≤ CPU_MAP_BULK_SIZE = 8)."""
    to_cpus: frozenset[int]


@dataclass(frozen=True, slots=True)
class KthreadTotals:
    """Sum of ``xdp_cpumap_kthread`` events: the target CPU's batches."""

    events: int
    processed: int
    """Frames taken off the ring (all of them: passed, dropped by the second stage, …)."""
    drops: int
    """Frames the kthread could not turn into an SKB (allocation failure)."""
    xdp_pass: int
    xdp_drop: int
    xdp_redirect: int
    sched: int
    """Batches after which the kthread slept or yielded."""
    batch_sizes: dict[int, int]
    """``processed`` of one event → how many events had it."""
    cpus: frozenset[int]

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes, default=0)


def sum_enqueue(events: Iterable[TraceEvent]) -> EnqueueTotals:
    evs = [e.fields for e in events if e.name == "xdp_cpumap_enqueue"]
    return EnqueueTotals(
        events=len(evs),
        processed=sum(int(f["processed"]) for f in evs),
        drops=sum(int(f["drops"]) for f in evs),
        max_batch=max((int(f["processed"]) for f in evs), default=0),
        to_cpus=frozenset(int(f["to_cpu"]) for f in evs),
    )


def sum_kthread(events: Iterable[TraceEvent]) -> KthreadTotals:
    evs = [e for e in events if e.name == "xdp_cpumap_kthread"]
    fs = [e.fields for e in evs]
    return KthreadTotals(
        events=len(fs),
        processed=sum(int(f["processed"]) for f in fs),
        drops=sum(int(f["drops"]) for f in fs),
        xdp_pass=sum(int(f.get("xdp_pass", 0)) for f in fs),
        xdp_drop=sum(int(f.get("xdp_drop", 0)) for f in fs),
        xdp_redirect=sum(int(f.get("xdp_redirect", 0)) for f in fs),
        sched=sum(1 for f in fs if int(f["sched"])),
        batch_sizes=dict(Counter(int(f["processed"]) for f in fs)),
        cpus=frozenset(e.cpu for e in evs),
    )
