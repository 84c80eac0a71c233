"""The supervisor thread: supervision that runs on its own, and the one thread that forks.

Why a thread in the controller, waiting on pidfds
-------------------------------------------------
A dead worker must be noticed within ~100 ms whatever the controlling program is doing:
feeding a capture through ``CpuMap.run()`` (its RX producer never calls a map operation),
sitting in a lossless flush that waits for room in the dead worker's ring, or blocked in
its own code.  Three places could notice it:

* the RX loop itself (a lossless wait checking its target's liveness): it sees only the
  rings it is waiting on, it may run in a process that cannot fork replacements (a
  forked producer), and a producer that is not polling sees nothing;
* ``stats()``/``poll()``, as before: only when the program calls them;
* a thread of the controlling process, which owns the workers: it sleeps in
  ``select(2)`` on one *pidfd* per worker (readable the moment the process exits,
  SIGKILL included) and on a wake-up pipe, so a death wakes it at once at no cost while
  nothing happens.

We take the third.  It holds its own pidfds (opened and closed here, never shared with the
map's thread, so no descriptor is closed under a waiter), and it wakes every
:data:`TICK` seconds anyway: to find dead RX producers (they are not our children: no
pidfd is needed, the registry's owner pids are probed) and to check heartbeats.  What it
does on waking is the ``supervise`` callable it was given: the map's supervision pass
(``CpuMap._supervise_on_thread``: advance retirements, have the supervisor recover,
replace or break every dead worker and recover dead producers' partitions, check
progress), under the map's lock, taken with a timeout so that the thread never waits long
on a map operation.

Why it is also the one thread that forks: ``PR_SET_PDEATHSIG`` fires when the *thread*
that forked a child exits, not the process.  Forking every worker from this thread, which
lives exactly as long as the map, lets every worker arm it unconditionally (worker.py):
no worker outlives the controller, whichever thread created the map or updated it, and
whatever state the worker is in (SIGKILL ends a stopped process too).  Another thread asks
for a fork with :meth:`SupervisorThread.call` and waits for it; the thread serves such
requests before it takes the map's lock, so a map operation that holds the lock while it
waits for a fork cannot deadlock with it.  The map hands this thread to its supervisor at
construction as the supervisor's ``Forker`` (supervisor.py):
:meth:`SupervisorThread.forks_on_long_lived_thread` tells a new worker whether it may arm
the parent-death signal.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from typing import Any

TICK = 0.05  # seconds between passes when nothing wakes the thread
_CALL_TIMEOUT = 120.0


class _Request:
    __slots__ = ("cancelled", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.cancelled = False
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SupervisorThread:
    """Calls ``supervise()`` when a watched process exits, or every ``tick`` seconds.

    ``pids()`` names the processes to watch (the map's workers); ``supervise()`` returns
    False when it could not run (the map's lock was busy): it is then retried soon.
    """

    def __init__(
        self,
        supervise: Callable[[], bool],
        pids: Callable[[], list[int]],
        *,
        tick: float = TICK,
        name: str = "cpumap-supervisor",
    ) -> None:
        self._supervise = supervise
        self._pids = pids
        self._tick = tick
        self._requests: list[_Request] = []
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pidfds: dict[int, int] = {}
        self._exited: set[int] = set()  # seen exit: not watched again (the fd stays readable)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.passes = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop

    def on_thread(self) -> bool:
        """Whether the caller is this thread."""
        return threading.current_thread() is self._thread

    def forks_on_long_lived_thread(self) -> bool:
        """Whether a fork through :meth:`call` now happens on a thread that lives as long
        as the map: this one while it runs (it ends only when the map is closed), or --
        :meth:`call` then runs the fork in the caller's thread -- the main thread (it lives
        as long as the process).  A worker forked so may arm ``PR_SET_PDEATHSIG``, which
        fires when the thread that forked it exits (worker.py); one forked from a
        short-lived thread must rely on its watchdog instead."""
        return self.alive or threading.current_thread() is threading.main_thread()

    def wake(self) -> None:
        """Make the thread run a pass now."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on this thread (a fork) and return its result or raise its error.
        Runs it here if the thread is gone (the map is closing)."""
        if self.on_thread() or not self.alive:
            return fn()
        req = _Request(fn)
        self._requests.append(req)
        self.wake()
        try:
            req.done.wait(_CALL_TIMEOUT)
        except BaseException:
            # Interrupted (Ctrl-C): the request still runs; wait for it, so the caller
            # can clean up what it made (a started process) before the interrupt goes on.
            req.done.wait(_CALL_TIMEOUT)
            raise
        if not req.done.is_set():
            req.cancelled = True  # never run it later: nobody would wait for the worker
            if not req.done.wait(1.0):  # it is running after all: taking for ever
                raise TimeoutError("the supervisor thread did not serve a fork request")
        if req.error is not None:
            raise req.error
        return req.result

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (after the map's workers are gone) and free its descriptors."""
        self._stop = True
        self.wake()
        if self._thread.is_alive() and not self.on_thread():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close_fds()

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        pending = False
        while not self._stop:
            self._serve()
            woke = self._sleep(0.005 if pending else self._tick)
            self._serve()
            if self._stop:
                break
            self.passes += 1
            try:
                pending = not self._supervise() and bool(woke)
            except Exception:  # a bug must not end supervision (nor fire PDEATHSIG)
                pending = False
            if not pending:
                self._forget(woke)
        self._serve()

    def _serve(self) -> None:
        while self._requests:
            req = self._requests.pop(0)
            if req.cancelled:  # its caller gave up waiting: it must not run now
                req.error = TimeoutError("the supervisor thread did not serve a fork in time")
                req.done.set()
                continue
            try:
                req.result = req.fn()
            except BaseException as e:
                req.error = e
            req.done.set()

    def _sleep(self, timeout: float) -> set[int]:
        """Wait for a watched process to exit, a wake-up or ``timeout``; returns the pids
        seen exiting."""
        self._refresh_pidfds()
        by_fd = {fd: pid for pid, fd in self._pidfds.items()}
        try:
            ready, _, _ = select.select([self._wake_r, *by_fd], [], [], timeout)
        except (OSError, ValueError):
            return set()
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 4096)
        return {by_fd[fd] for fd in ready if fd in by_fd}

    def _forget(self, pids: set[int]) -> None:
        """Stop watching processes whose exit was handled."""
        for pid in pids:
            fd = self._pidfds.pop(pid, None)
            if fd is not None:
                os.close(fd)
            self._exited.add(pid)

    def _refresh_pidfds(self) -> None:
        try:
            want = set(self._pids())
        except Exception:
            return
        self._exited &= want  # forget pids no longer named (a reused pid is watched again)
        for pid in [p for p in self._pidfds if p not in want]:
            os.close(self._pidfds.pop(pid))
        for pid in want - self._pidfds.keys() - self._exited:
            if pid <= 0:
                continue
            # Already gone and reaped: the next pass finds it dead anyway.
            with contextlib.suppress(OSError):
                self._pidfds[pid] = os.pidfd_open(pid)

    def _close_fds(self) -> None:
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
