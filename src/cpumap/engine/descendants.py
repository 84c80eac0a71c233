"""A worker's descendants: the processes a handler starts die with the worker that runs it.

A handler may fork (``os.fork``, ``multiprocessing``, ``subprocess``) and leave children
behind.  A fork of the worker maps the map's segments (memfds) like the worker does, and
a child that returns from the handler finds itself in the worker's consume loop: it would
take frames from the worker's own ring.  Nothing of the map may outlive it (shm.py), so a
worker's descendants must end with the worker -- whichever way the worker ends.

Theory of operation: three mechanisms, each for what the others miss
-------------------------------------------------------------------------
1. **The worker's own process group** (``setpgid(0, 0)``, set by the worker and by the
   controller right after the fork, so that neither order loses it).  A handler's
   descendants inherit it unless they leave it (``setsid``/``setpgid``, which daemons do).
   When the worker has exited -- however: a clean exit, a crash, SIGKILL -- the controller
   kills the group (:func:`end_group`).  Why this is safe from pid reuse: the group's id
   is the worker's pid.  While the worker is an unreaped zombie its pid is taken, so the
   controller kills the group *before* it reaps the worker wherever it can (``waitid``
   with ``WNOWAIT``).  If something else reaped it first (``multiprocessing`` reaps
   finished children whenever it starts a process), the pid is still taken for as long as
   any process is in the group (the kernel frees a pid only when no process uses it as a
   process id, group id or session id): so the group is killed only when no process has
   that pid -- then every member of the group is the worker's.  (The one window left: all
   members exit and a new process takes that pid as *its* group's id between the check
   and the kill -- a full wrap of the pid space within microseconds.)
2. **The worker as its descendants' subreaper** (``PR_SET_CHILD_SUBREAPER``): an orphan
   below it -- a daemon's intermediate parent exited -- is re-parented to the worker, not to
   init, so the worker can still find it.  Before it exits, the worker kills its children
   and reaps them, round after round, until none is left (:func:`kill_descendants`): the
   orphans of each round are its children in the next.  This catches the daemons that
   left its group, on every exit the worker makes itself.
3. **The parent-death signal for its direct children** forked from its main thread
   (``PR_SET_PDEATHSIG``, armed in each child by an at-fork hook): a child that left the
   group still dies the moment the worker dies, SIGKILL included.

What is left: a grandchild that both left the worker's group *and* was orphaned, when the
worker itself is killed -- it was re-parented to the worker (2), which is gone, so it goes
to init.  A cgroup per worker (``cgroup.kill``) would catch even that, but needs a
writable cgroup v2 hierarchy, which a container or an unprivileged user often lacks; the
three above need nothing.

And a fork of the worker never plays the worker: the at-fork hook marks the child as a
*copy*, and the worker's code calls :func:`exit_if_copy` wherever a handler's fork could
return into it (after ``setup()``, after each batch's handler calls, in the consume loop,
after ``finish()``): a copy exits there (``os._exit``) before it commits, releases or
takes a frame, or sends a message on the worker's pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading

from .. import _atomics as at

_PR_SET_CHILD_SUBREAPER = 36
_ROUNDS = 64  # kill-and-reap rounds at most: each takes the orphans of the last

_copy = False  # this process is a fork of a worker (the at-fork hook says so)
_worker_pid = 0  # the worker this process is, or was forked from
_main_forks = True  # the last fork in this process was made by its main thread


def adopt_descendants() -> None:
    """In a new worker: take its own process group, become the subreaper of its
    descendants, and have every fork of it marked a copy (its direct children also armed
    to die with it)."""
    global _worker_pid
    _worker_pid = os.getpid()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _before_fork() -> None:
    global _main_forks
    _main_forks = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    """A fork of the worker, or of one of its descendants: a copy, never the worker.  A
    direct child of the worker forked by its main thread dies with it (the signal fires
    when the *thread* that forked exits: a handler's short-lived thread would kill it)."""
    global _copy
    _copy = True
    if _main_forks and os.getppid() == _worker_pid:
        at.set_pdeathsig(signal.SIGKILL)


def exit_if_copy() -> None:
    """In worker code that a handler's fork could return into: a copy exits here."""
    if _copy:
        os._exit(0)


def kill_descendants() -> int:
    """In the worker, before it exits: SIGKILL and reap every child -- the orphans of
    each round (it is their subreaper) are its children in the next.  Returns how many."""
    killed = 0
    for _ in range(_ROUNDS):
        kids = _children()
        if not kids:
            break
        for pid in kids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in kids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
        killed += len(kids)
    return killed


def _children() -> list[int]:
    """This process's children (zombies included), from ``/proc``."""
    me = os.getpid()
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as f:
                kids.extend(int(p) for p in f.read().split())
        return kids
    except OSError:  # no ``children`` files (CONFIG_PROC_CHILDREN): scan every process
        return [pid for pid in _all_pids() if _ppid(pid) == me]


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def join_group(pid: int) -> None:
    """In the controller, right after forking worker ``pid``: put it in its own group
    (the worker does too; whichever runs first wins, the other is a no-op)."""
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)


def end_group(pid: int, *, reaped: bool) -> None:
    """In the controller, once worker ``pid`` has exited: SIGKILL what is left of its
    process group.  ``reaped``: something already waited for it -- then the group is
    killed only if no process has that pid (module docstring: why that is safe)."""
    if reaped and os.path.exists(f"/proc/{pid}"):
        return  # the pid is someone else's now: so is any group of that id
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def exited_unreaped(pid: int) -> bool | None:
    """Whether our child ``pid`` has exited but is not reaped yet (True), still runs
    (False), or was reaped already (None).  Reaps nothing (``WNOWAIT``)."""
    try:
        st = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return st is not None
