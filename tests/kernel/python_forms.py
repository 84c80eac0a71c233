"""The Python form of the steering modes, run per frame on frames given as bytes: what the
kernel tests hold the BPF form (``cpumap.kernel.steering``) against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cpumap import CpuMap
from cpumap.abi import LINKTYPE_ETHERNET, XDP_REDIRECT
from cpumap.engine.frame_pool import FramePool
from cpumap.programs.context import NO_KEY, XdpContext
from cpumap.programs.cpu_table import CpuTable
from cpumap.programs.steering import make_program

POOL_FRAMES = 128
Outcome = tuple[int, int]  # (verdict, key redirected to or attempted; -1 for none)


class PythonForm:
    """A CpuMap (the programs read its max_entries), a frame pool with room for a 9,000-byte
    frame, and a context: ``decisions`` runs one program object over a list of frames."""

    def __init__(self, max_entries: int) -> None:
        self.cmap = CpuMap(max_entries)
        self.pool = FramePool(POOL_FRAMES, frame_size=9216 + 256, headroom=256)
        self.ctx = XdpContext(self.pool)

    def close(self) -> None:
        self.cmap.close()
        self.pool.close()

    def decisions(
        self, mode: str, cpus: Sequence[int], frames: Sequence[bytes], **options: Any
    ) -> list[Outcome]:
        """The outcome of each frame, in order, through one per-frame program object (so
        round-robin turns as it would over this stream)."""
        out: list[Outcome] = []
        with CpuTable(max(len(cpus), 1), cpus) as table:
            prog = make_program(mode, self.cmap, table, vectorized=False, **options)
            for at in range(0, len(frames), POOL_FRAMES):
                chunk = frames[at : at + POOL_FRAMES]
                self.load(chunk)
                for i in range(len(chunk)):
                    self.ctx.load(i, 0, 0, LINKTYPE_ETHERNET)
                    v = prog.frame(self.ctx)  # type: ignore[union-attr]
                    key = self.ctx.redirect_key
                    out.append((int(v), int(key) if v == XDP_REDIRECT and key != NO_KEY else -1))
        return out

    def load(self, frames: Sequence[bytes], linktype: int = LINKTYPE_ETHERNET) -> None:
        """Frames into pool rows 0.. (the context's ``load(i, ...)`` then points at row i)."""
        pool = self.pool
        for i, f in enumerate(frames):
            pool.data[i, pool.headroom : pool.headroom + len(f)] = np.frombuffer(f, np.uint8)
            pool.length[i] = len(f)
            pool.linktype[i] = linktype
            pool.meta_len[i] = 0
