"""Tests for cpumap.programs.context: what an XDP program reads of a frame's skb equals what
the worker hands a handler of the same frames."""

from __future__ import annotations

import numpy as np

from cpumap.engine.frame_pool import FramePool
from cpumap.programs.context import XdpContext
from tests.skb.helpers import EXAMPLE_FRAMES, fill_pool, pool_expected

FRAME_SIZE = 256
HEADROOM = 64


def test_a_programs_ctx_skb_is_the_frames_skb() -> None:
    pool = FramePool(16, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        frames = EXAMPLE_FRAMES[:8]
        where = [3, 4, 5, 6, 7, 8, 9, 10]
        fill_pool(pool, where, frames)
        ctx = XdpContext(pool)
        idx = np.array(where, dtype=np.uint32)
        seen = []
        for j in ctx.each(idx, 3):
            assert ctx.index == where[j] and bytes(ctx.data) == frames[j][1]
            assert ctx.skb is ctx.skb  # one view per frame
            seen.append(ctx.skb.as_dict())
        assert seen == [
            pool_expected(pool, i, data) for i, (_, data) in zip(where, frames, strict=True)
        ]
        ctx.load(5, 0, 0, int(pool.linktype[5]))  # on its own: parsed per frame, same fields
        assert ctx.skb.as_dict() == pool_expected(pool, 5, frames[2][1])
    finally:
        pool.close()
