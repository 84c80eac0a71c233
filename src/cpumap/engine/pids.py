"""Whether a process is alive: the test every takeover from a dead process rests on.

A producer that dies holding a ring's lock (ring.py), or inside a grace period's read-side
section (rcu.py), can hold nothing once it is dead; the lock is taken over, the grace
period ends.  "Dead" must then mean exited, zombies included.
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited.  A zombie (exited, not yet
    reaped: state Z or X in /proc) is dead -- ``kill(pid, 0)`` alone would call it alive,
    and a lock or grace period held by it would then stall until someone reaps it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:  # no procfs: fall back to the signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in (b"Z", b"X")
