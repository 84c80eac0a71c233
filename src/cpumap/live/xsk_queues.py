"""AF_XDP, one RX producer per queue: a process per RX queue, as the kernel's NAPI per queue.

One :class:`XskQueues` receives from several RX queues of one interface through one XDP
attachment: one XSKMAP and one redirect program (``bpf_redirect_map(xskmap,
rx_queue_index, XDP_PASS)``), attached once, and an AF_XDP socket per queue in its
XSKMAP entry.  Each queue is served by its own :class:`~cpumap.live.xsk_source.XskSource`
on its own :class:`~cpumap.engine.rx.RxProducer` -- the first queue's in the calling
thread, on the producer given; every other queue's in a process forked for it, pinned to
a CPU, whose producer ``twin()`` makes there (a producer claims its own slot, which is
its own partition of the frame pool: each socket has its own UMEM over the pool, lending
only its partition's frames, so no frame is ever in two sockets' hands).

Stable API (the CLI and the benchmark use it; the same as :class:`XskSource`'s)::

    qs = XskQueues(rx, interface, *, twin, queues=None, mode=XdpMode.NATIVE,
                   bind=XskMode.AUTO, ring_size=None, cpus=None)
    qs.poll(timeout: float = 0.0) -> int    # the first queue's frames placed by this call
    qs.statistics() -> XskSourceStatistics  # every queue's, summed
    qs.drops -> int                          # rx_dropped + rx_ring_full, every socket
    qs.stop() / qs.close()                   # detach, drain every queue, reap the processes

Theory of operation: the books stay exact
-----------------------------------------
Frames the program redirected == every producer's ``rx`` + every socket's drops, as for
one :class:`XskSource`, because the end is ordered the same way for all of them:

1. Start: every queue's socket is in the XSKMAP (each process reports "ready" on its
   pipe once its socket is bound, its fill ring stocked and its entry set) *before* the
   program is attached -- so no frame the program sees finds an empty entry (an empty
   entry would pass it to the stack, counted by nobody).
2. Stop: the program is detached (the link closed) and an RCU grace period waited
   (``grace_period``): no frame reaches any socket after it.  Only then is each process
   told to stop (a word in shared memory): each reads its RX ring dry, publishes its
   final counters, closes its socket (its lent frames are its partition's again:
   ``return_lent``) and its producer, and exits.  The first queue does the same here.

Each process publishes its counters (received, polls, the kernel's XSK counters) to a row
of a shared anonymous mapping after every poll, and its final ones before it exits; the
row is read here (an aligned 8-byte store is read whole: a live figure may mix two
polls' rows, the final one is exact).

Theory of operation: nothing outlives its owner
-----------------------------------------------
* The link (which keeps the program attached) exists in this process only: the queue
  processes are forked *before* it is made, and a process forked later (a worker the
  supervisor starts) drops it in a fork hook, as :class:`XskSource` does its own -- so
  the program is detached when this process closes it, or dies.
* A queue process dies with the controller (its producer arms ``PDEATHSIG`` and a
  watchdog: ``engine/rx.py``'s ``_die_with``); its socket dies with it, and the kernel
  takes it out of the XSKMAP.
* A queue process that dies (SIGKILL, a crash) takes its socket with it; its partition
  (placed frames in flight, frames lent to its fill ring) is recovered by the map's
  supervisor as any dead producer's (``ownership.py``: RX frames counted ``lost``,
  KERNEL frames the partition's again).  That queue's frames then pass to the stack (an
  empty XSKMAP entry) until :meth:`stop`; its counters are the last it published.  It is
  reaped at :meth:`stop` (:attr:`deaths` counts it).
* SIGINT at the terminal reaches the whole process group: the queue processes ignore it
  (the controller's stop ends them, in order); SIGTERM kills them (the controller then
  recovers their partitions).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import select
import signal
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import numpy as np

from ..closing import ClosedWhenCollected
from ..cpus import possible_cpus
from ..errors import ClosedResourceError
from ..kernel.xdp import XdpError, XdpLink, XdpMode, XskMap, attach, xsk_redirect_program
from .interface import resolve_interface
from .xsk import XskError, XskMode
from .xsk_source import (
    PlacingProducer,
    XskSource,
    XskSourceStatistics,
    all_queues,
    grace_period,
)

START_TIMEOUT_S = 30.0  # a queue process that has not reported by then is killed
STOP_TIMEOUT_S = 10.0  # nor one that has not exited this long after it was told to stop
_POLL_S = 0.05  # a queue process's wait for frames: how soon it sees the stop word

# A queue process's row in the shared mapping (int64 words).
_STATE, _RECEIVED, _POLLS, _DROPPED, _RING_FULL, _FILL_EMPTY, _INVALID, _COMMAND = range(8)
_ROW_WORDS = 8
_STARTING, _RUNNING, _DONE = 0, 1, 2  # _STATE
_RUN, _STOP = 0, 1  # _COMMAND

_open: weakref.WeakSet[XskQueues] = weakref.WeakSet()
_forking = threading.local()  # .queues: the XskQueues forking a queue process right now


def _forget_in_children() -> None:
    """After fork, in the child: drop every open XskQueues' link and descriptors -- but
    in a queue process of its own, which needs the XSKMAP to put its socket in."""
    own = getattr(_forking, "queues", None)
    for qs in list(_open):
        if qs is not own:
            qs.forget()


os.register_at_fork(after_in_child=_forget_in_children)


class XskQueues(ClosedWhenCollected):
    """RX queues ``queues`` (default: every one) of ``interface``, one producer each.

    ``rx``: the first queue's producer (this thread polls it).  ``twin``: makes a
    producer on the same map, with the same program, in a forked queue process -- e.g.
    ``lambda: cmap.producer(program)``; the map needs a producer slot per queue.
    ``cpus``: the CPU each queue's process is pinned to (default: queue ``q`` on CPU
    ``q`` modulo the CPUs, as a NIC's queue interrupts usually are); the first queue's
    entry is not used (it runs in the caller's thread, pinned where the caller is).
    ``mode``, ``bind``, ``ring_size``: as :class:`XskSource`'s.  Build it in the
    interface's network namespace.  Errors: as :class:`XskSource`'s, from whichever
    queue's socket the kernel refused (every process started is then ended).
    """

    def __init__(
        self,
        rx: PlacingProducer,
        interface: str | int,
        *,
        twin: Callable[[], PlacingProducer],
        queues: Sequence[int] | None = None,
        mode: XdpMode = XdpMode.NATIVE,
        bind: XskMode = XskMode.AUTO,
        ring_size: int | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self.ifname, self.ifindex = resolve_interface(interface)
        self.queues = tuple(queues) if queues is not None else all_queues(self.ifname)
        if not self.queues:
            raise XskError(errno.EINVAL, "no queues given: name at least one RX queue")
        if len(set(self.queues)) != len(self.queues):
            raise ValueError(f"queues {self.queues}: each queue once")
        self.mode = XdpMode(mode)
        self._pid = os.getpid()
        self._stopped = self._closed = True  # until built: close() undoes what was made
        self._stack = contextlib.ExitStack()
        self._link: XdpLink | None = None
        self._own: XskSource | None = None
        self._children: list[int] = []  # pid per queue process (queues[1:])
        self._exits: list[int | None] = []
        self._final: np.ndarray | None = None
        self._shm = mmap.mmap(-1, max(1, len(self.queues) - 1) * _ROW_WORDS * 8)
        self._rows = np.frombuffer(self._shm, dtype=np.int64).reshape(-1, _ROW_WORDS)
        _open.add(self)  # from here, a process forked by another thread drops what we hold
        try:
            self._open(rx, twin, bind, ring_size, cpus)
        except BaseException:
            self._abandon()
            raise
        self._stopped = self._closed = False

    # -- building ------------------------------------------------------------------------------
    def _open(
        self,
        rx: PlacingProducer,
        twin: Callable[[], PlacingProducer],
        bind: XskMode,
        ring_size: int | None,
        cpus: Sequence[int] | None,
    ) -> None:
        stack = self._stack
        self._map = stack.enter_context(XskMap(max(self.queues) + 1, name="cpumap_xsks"))
        program = stack.enter_context(xsk_redirect_program(self._map))
        self._own = XskSource(
            rx, self.ifindex, queues=self.queues[:1], bind=bind, ring_size=ring_size,
            xskmap=self._map,
        )  # fmt: skip
        pins = _default_cpus(self.queues) if cpus is None else tuple(cpus)
        notes = list(self._own.notes)
        for k, q in enumerate(self.queues[1:]):
            note = self._start(k, q, pins[k + 1], twin, bind, ring_size)
            if note:
                notes.append(note)
        self.notes = tuple(dict.fromkeys(notes))
        """Why a socket is not zero-copy (``AUTO`` fell back to copy mode)."""
        self.zero_copy = self._own.zero_copy
        self._link = attach(self.ifindex, program, self.mode)  # after every fork

    def _start(
        self,
        k: int,
        queue: int,
        cpu: int,
        twin: Callable[[], PlacingProducer],
        bind: XskMode,
        ring_size: int | None,
    ) -> str:
        """Fork queue ``queue``'s process (row ``k``) and wait until its socket is in the
        XSKMAP; its note (why not zero-copy).  What the kernel refused it is raised here."""
        r, w = os.pipe()
        _forking.queues = self
        try:
            pid = os.fork()
        finally:
            _forking.queues = None
        if pid == 0:  # the queue process: never returns
            os.close(r)
            self._serve(k, queue, cpu, twin, bind, ring_size, w)
        os.close(w)
        self._children.append(pid)
        self._exits.append(None)
        said = _read_report(r, START_TIMEOUT_S)
        kind, _, rest = said.partition(" ")
        if kind == "ready":
            return rest
        if kind == "refused":
            err, _, text = rest.partition(" ")
            raise XskError(int(err), text)
        raise XskError(
            errno.EIO, f"the process for RX queue {queue} did not start: {said or 'no word'}"
        )

    # -- the queue process (forked) ---------------------------------------------------------
    def _serve(
        self,
        k: int,
        queue: int,
        cpu: int,
        twin: Callable[[], PlacingProducer],
        bind: XskMode,
        ring_size: int | None,
        report: int,
    ) -> None:
        """In the forked queue process: make the producer and the socket, say "ready" (or
        what the kernel refused), poll until told to stop, then stop in order and exit.
        Never returns (``os._exit``: nothing of the controller's -- atexit handlers, buffered
        output -- runs here)."""
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller's stop ends us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {cpu})
            rx = twin()
            try:
                src = XskSource(
                    rx, self.ifindex, queues=(queue,), bind=bind, ring_size=ring_size,
                    xskmap=self._map,
                )  # fmt: skip
            except (XskError, XdpError) as e:
                os.write(report, f"refused {e.errno} {e.strerror}".encode())
                rx.close()
                return
            row = self._rows[k]
            row[_STATE] = _RUNNING
            os.write(report, f"ready {src.notes[0] if src.notes else ''}".encode())
            os.close(report)
            report = -1
            while row[_COMMAND] == _RUN:
                src.poll(_POLL_S)
                _publish(row, src.statistics())
            src.stop()  # the controller detached first: the ring read dry is every frame
            _publish(row, src.statistics())
            row[_STATE] = _DONE
            src.close()
            rx.close()
            code = 0
        except BaseException as e:  # said to the controller, if it still listens
            if report >= 0:
                with contextlib.suppress(OSError):
                    os.write(report, f"failed {type(e).__name__}: {e}".encode())
        finally:
            os._exit(code)

    # -- receiving -----------------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> int:
        """The first queue's RX ring into its producer (as :meth:`XskSource.poll`); the
        other queues are polled by their own processes."""
        self._check_open()
        assert self._own is not None  # Invariant: built, not stopped
        return self._own.poll(timeout)

    # -- statistics ----------------------------------------------------------------------------
    def statistics(self) -> XskSourceStatistics:
        """Every queue's counters, summed (the queue processes': the last they published)."""
        if self._own is None:
            return XskSourceStatistics(0, 0, 0, 0, 0, 0)
        own = self._own.statistics()
        rows = self._final if self._final is not None else self._rows.copy()
        rows = rows[: len(self._children)].sum(axis=0, dtype=np.int64)
        return XskSourceStatistics(
            received=own.received + int(rows[_RECEIVED]),
            polls=own.polls + int(rows[_POLLS]),
            rx_dropped=own.rx_dropped + int(rows[_DROPPED]),
            rx_ring_full=own.rx_ring_full + int(rows[_RING_FULL]),
            rx_fill_ring_empty_descs=own.rx_fill_ring_empty_descs + int(rows[_FILL_EMPTY]),
            rx_invalid_descs=own.rx_invalid_descs + int(rows[_INVALID]),
        )

    @property
    def drops(self) -> int:
        """Frames the kernel could not deliver to any socket (``rx_dropped +
        rx_ring_full``): the source's drops."""
        return self.statistics().drops

    @property
    def deaths(self) -> int:
        """Queue processes that did not end cleanly (killed, crashed, or killed by us for
        not stopping in time); known after :meth:`stop`."""
        return sum(1 for code in self._exits if code not in (None, 0))

    @property
    def pids(self) -> tuple[int, ...]:
        """The queue processes' pids (``queues[1:]``'s, in order)."""
        return tuple(self._children)

    # -- ending --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Detach the program, wait a grace period, then every queue reads its RX ring dry
        and closes (the processes told to, and reaped).  Idempotent."""
        if self._stopped or os.getpid() != self._pid:
            return
        try:
            if self._link is not None:
                self._link.close()  # no new frame reaches any socket
            if not grace_period():
                time.sleep(0.05)
            self._rows[:, _COMMAND] = _STOP
            if self._own is not None:
                self._own.stop()
            self._reap(STOP_TIMEOUT_S)
            self._final = self._rows.copy()
        finally:
            self._stopped = True
            self._abandon()

    def close(self) -> None:
        """:meth:`stop` if not done yet.  Idempotent."""
        if self._closed and self._stopped:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            _open.discard(self)

    def _reap(self, timeout: float) -> None:
        """Wait for every queue process to exit, ``timeout`` at most for all; SIGKILL
        those still there (their partitions are recovered by the map's supervisor)."""
        deadline = time.monotonic() + timeout
        for k, pid in enumerate(self._children):
            if self._exits[k] is not None:
                continue
            if not _wait_exit(pid, max(0.0, deadline - time.monotonic())):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._exits[k] = _exit_code(pid)

    def _abandon(self) -> None:
        """Tear down what was built: the link, every queue (a process still running is
        told to stop, then killed), the program and the map."""
        if self._link is not None:
            self._link.close()
        self._rows[:, _COMMAND] = _STOP
        with contextlib.suppress(Exception):
            if self._own is not None:
                self._own.close()
        if any(code is None for code in self._exits):
            self._reap(STOP_TIMEOUT_S)
        self._stack.close()
        _open.discard(self)

    def forget(self) -> None:
        """In a forked child (the fork hook): close the link (only the child's reference:
        nothing is detached), the program and the map, touching no queue process."""
        self._stopped = self._closed = True
        self._children = []
        with contextlib.suppress(Exception):
            if self._link is not None:
                self._link.close()
            self._stack.close()

    def _check_open(self) -> None:
        if self._stopped:
            raise ClosedResourceError("AF_XDP queues are closed")

    def __repr__(self) -> str:
        state = "closed" if self._stopped else "open"
        return f"<XskQueues {self.ifname} queues={self.queues} {state}>"


def _publish(row: np.ndarray, st: XskSourceStatistics) -> None:
    row[_RECEIVED : _INVALID + 1] = (
        st.received,
        st.polls,
        st.rx_dropped,
        st.rx_ring_full,
        st.rx_fill_ring_empty_descs,
        st.rx_invalid_descs,
    )


# -- helpers ---------------------------------------------------------------------------------


def _default_cpus(queues: Sequence[int]) -> tuple[int, ...]:
    """Queue ``q`` on CPU ``q`` modulo the possible CPUs."""
    cpus = sorted(possible_cpus()) or [0]
    return tuple(cpus[q % len(cpus)] for q in queues)


def _read_report(fd: int, timeout: float) -> str:
    """What a queue process said on its pipe (up to its close or its exit), waiting
    ``timeout`` at most; closes ``fd``."""
    deadline = time.monotonic() + timeout
    said = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return said.decode(errors="replace")
            chunk = os.read(fd, 4096)
            if not chunk:
                return said.decode(errors="replace")
            said += chunk
    finally:
        os.close(fd)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Whether child ``pid`` exited within ``timeout`` (a pidfd waited on: no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _exit_code(pid: int) -> int:
    """Child ``pid``'s exit status, reaped (waiting for it: it has exited or been
    killed); -1 if someone else reaped it."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status)
