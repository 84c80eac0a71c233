"""Handlers the cluster tests hand to entries (pickled to the actors: module level)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from cpumap.skb import Skb, SkbBatch

HOLD = 60.0  # seconds a stalled handler holds its batch at most (it is killed long before)


class StallOnce:
    """A batch handler that, on CPU ``victim`` (of node ``node_id``, any when None), holds
    its first batch until its process is killed -- once per ``marks`` directory: the
    restarted actor finds the mark and goes on.  Records the largest batch it saw."""

    batch = True

    def __init__(self, marks: Path, victim: int, node_id: str | None = None) -> None:
        self.marks = marks
        self.victim = victim
        self.node_id = node_id
        self.here = False
        self.largest = 0

    def setup(self, info: Any) -> None:
        import ray

        node = ray.get_runtime_context().get_node_id()
        self.here = info.cpu == self.victim and self.node_id in (None, node)

    def __call__(self, batch: SkbBatch) -> None:
        self.largest = max(self.largest, len(batch))
        mark = self.marks / "stalled"
        if self.here and not mark.exists():
            mark.touch()
            deadline = time.monotonic() + HOLD
            while time.monotonic() < deadline:  # held: the test kills this process
                time.sleep(0.05)
        return None

    def finish(self) -> dict[str, int]:
        return {"largest": self.largest}


class Picky:
    """A per-frame handler: drops UDP, raises on ICMP (v4 and v6), accepts the rest."""

    def __call__(self, skb: Skb) -> object:
        if skb.ip_proto == 17:
            return False
        if skb.ip_proto in (1, 58):
            raise ValueError("no ICMP here")
        return True


class BadSetup:
    """A handler whose setup raises: the map update must fail."""

    def setup(self, info: Any) -> None:
        raise RuntimeError("setup refuses")

    def __call__(self, skb: Skb) -> None:
        return None


class HandleThenStall:
    """A batch handler that, on CPU ``victim``, handles batches until it has handled at
    least ``after`` frames, writes how many into ``marks/handled`` (and the mark
    ``marks/stalled`` after it), then holds its next batch until its process is killed."""

    batch = True

    def __init__(self, marks: Path, victim: int, after: int) -> None:
        self.marks = marks
        self.victim = victim
        self.after = after
        self.here = False
        self.frames = 0

    def setup(self, info: Any) -> None:
        self.here = info.cpu == self.victim

    def __call__(self, batch: SkbBatch) -> None:
        if self.here and self.frames >= self.after:
            (self.marks / "handled").write_text(str(self.frames))
            (self.marks / "stalled").touch()
            threading.Event().wait(HOLD)  # held (never set): the test kills this process
        self.frames += len(batch)
        return None


class HoldUntil:
    """A batch handler that, on CPU ``victim`` (any node when ``node_id`` is None), holds
    its first batch until the file ``marks/release`` exists (``marks/held`` says it is
    holding), then accepts everything.  Records the largest batch it saw and the frames."""

    batch = True

    def __init__(self, marks: Path, victim: int = 0, node_id: str | None = None) -> None:
        self.marks = marks
        self.victim = victim
        self.node_id = node_id
        self.here = False
        self.largest = 0
        self.frames = 0

    def setup(self, info: Any) -> None:
        import ray

        node = ray.get_runtime_context().get_node_id()
        self.here = info.cpu == self.victim and self.node_id in (None, node)

    def __call__(self, batch: SkbBatch) -> None:
        self.largest = max(self.largest, len(batch))
        self.frames += len(batch)
        if self.here:
            self.here = False
            (self.marks / "held").touch()
            deadline = time.monotonic() + HOLD
            while not (self.marks / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return None

    def finish(self) -> dict[str, int]:
        return {"largest": self.largest, "frames": self.frames}


class WhereFramesLie:
    """A per-frame handler that accepts every frame and counts where its bytes lie in the
    entry's process: in a source's shared frames (a mapping of the memfd
    ``cpumap-shared-frames``) or elsewhere (a parcel out of the object store).  An skb's
    ``data`` is a view of the frame where it lies (``cpumap.skb.frame_skbs``)."""

    def __init__(self) -> None:
        self.shared = 0
        self.elsewhere = 0
        self.ranges: list[tuple[int, int, bool]] = []  # this process's mappings

    def __call__(self, skb: Skb) -> None:
        import numpy as np

        addr = np.frombuffer(skb.data, dtype=np.uint8).ctypes.data
        where = self._lies_in(addr)
        if where is None:  # mapped since the last look
            self.ranges = _mappings()
            where = self._lies_in(addr)
        if where:
            self.shared += 1
        else:
            self.elsewhere += 1
        return None

    def _lies_in(self, addr: int) -> bool | None:
        for lo, hi, shared in self.ranges:
            if lo <= addr < hi:
                return shared
        return None

    def finish(self) -> dict[str, int]:
        return {"shared": self.shared, "elsewhere": self.elsewhere}


def _mappings() -> list[tuple[int, int, bool]]:
    """(start, end, whether it is a source's shared frames) of each mapping of ours."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            span = line.split(maxsplit=1)[0]
            lo, hi = (int(x, 16) for x in span.split("-"))
            out.append((lo, hi, "/memfd:cpumap-shared-frames " in line))
    return out
