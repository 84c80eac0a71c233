"""Tests for cpumap.programs.context: what an XDP program reads of a frame's skb.

``XdpContext.skb`` is a fast path: inside a poll it parses the poll's frames once
(``skb_columns``) and makes each frame's view inline instead of calling ``SkbView.of``.  It
must equal the general path -- ``frame_skbs(pool, idx)``, what the worker hands a per-frame
handler -- for any frames, consecutive or scattered, whichever rows the program reads."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cpumap.engine.frame_pool import FramePool
from cpumap.programs.context import XdpBatch, XdpContext
from cpumap.skb import SkbView, frame_skbs
from tests.skb.helpers import (
    EXAMPLE_FRAMES,
    PROPERTY_SETTINGS,
    fill_pool,
    frames,
    placed,
    pool_expected,
)

POOL = 64
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


@PROPERTY_SETTINGS
@given(
    st.lists(frames(), min_size=1, max_size=12),
    st.sampled_from(["consecutive", "scattered"]),
    st.booleans(),
    st.integers(0, POOL - 13),
    st.data(),
)
def test_ctx_skb_is_frame_skbs(
    batch: list[tuple[int, bytes]], order: str, start_given: bool, first: int, data: st.DataObject
) -> None:
    # The fast path (ctx.skb in a poll) against the general one (frame_skbs), frame by
    # frame, reading the skb of some rows only (the columns are parsed on the first read,
    # whichever row it is), with the poll's start given or not.
    batch, where = placed(batch, order, first, POOL, FRAME_SIZE - HEADROOM)
    n = len(batch)
    read = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    pool = FramePool(POOL, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        fill_pool(pool, where, batch)
        idx = np.array(where, dtype=np.uint32)
        general = list(frame_skbs(pool, idx))
        start = first if start_given and order == "consecutive" else None
        ctx = XdpContext(pool)
        for j in ctx.each(idx, start):
            if not read[j]:
                continue
            skb = ctx.skb
            want = general[j]
            assert type(skb) is SkbView and want is not None
            assert skb is ctx.skb  # one view per frame
            assert bytes(skb.data) == bytes(want.data) == batch[j][1]
            assert skb.as_dict() == want.as_dict()
    finally:
        pool.close()


@given(
    st.lists(st.integers(0, POOL - 1), min_size=1, max_size=16, unique=True),
    st.integers(-4, 80),
    st.integers(1, 40),
    st.booleans(),
)
@PROPERTY_SETTINGS
def test_bytes_at_of_scattered_frames_is_the_per_byte_gather(
    where: list[int], offset: int, width: int, shifted: bool
) -> None:
    """The row gather for scattered frames at the pool's headroom equals the general path
    (a position per byte) -- and a frame whose packet starts elsewhere takes the latter."""
    pool = FramePool(POOL, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        rng = np.random.default_rng(len(where) * 1000 + offset)
        pool.data[:] = rng.integers(0, 256, pool.data.shape, dtype=np.uint8)
        idx = np.array(where, dtype=np.uint32)
        if shifted:
            pool.headroom_col[idx[0]] = HEADROOM - 8  # bpf_xdp_adjust_head grew it
        batch = XdpBatch(pool, idx)
        got = batch.bytes_at(offset, width)
        pos = idx.astype(np.int64)[:, None] * FRAME_SIZE + pool.headroom_col[idx][:, None]
        pos = pos + np.arange(offset, offset + width)
        want = pool.flat[np.minimum(pos, len(pool.flat) - 1)]
        assert np.array_equal(got, want)
    finally:
        pool.close()
