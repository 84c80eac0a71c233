"""Tests for cpumap.skb.build: the skbs of frames in a frame pool (what the worker hands a
handler) equal the per-frame parser's :class:`Skb`, field for field, for any bytes
(hypothesis), with headroom, metadata, scattered and consecutive frames; their data is a
view into the pool; a batch of consecutive frames is a view of the pool; descriptors no
batch can be built from fall back to per-frame skbs; the pools satisfy :class:`Frames`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpumap.cluster.frames import FrameBlock
from cpumap.engine.frame_pool import FramePool
from cpumap.skb import Frames, Skb, SkbView, consecutive_start, frame_skbs, parsed_skbs, skb_batch
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


@PROPERTY_SETTINGS
@given(
    st.lists(frames(), min_size=1, max_size=12),
    st.sampled_from(["consecutive", "scattered"]),
    st.integers(0, POOL - 13),
)
def test_frame_skbs_equal_per_frame_skbs(
    batch: list[tuple[int, bytes]], order: str, first: int
) -> None:
    batch, where = placed(batch, order, first, POOL, FRAME_SIZE - HEADROOM)
    n = len(batch)
    pool = FramePool(POOL, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        fill_pool(pool, where, batch)
        index = np.array(where, dtype=np.uint32)
        got = list(frame_skbs(pool, index))
        assert len(got) == n
        for skb, i, (_, data) in zip(got, where, batch, strict=True):
            assert isinstance(skb, SkbView)
            assert bytes(skb.data) == data
            assert skb.as_dict() == pool_expected(pool, i, data)
    finally:
        pool.close()


def test_frame_skbs_data_is_a_writable_view_into_the_pool() -> None:
    pool = FramePool(8, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        fill_pool(pool, [2, 3], EXAMPLE_FRAMES[:2])
        skbs = list(frame_skbs(pool, np.array([2, 3], dtype=np.uint32)))
        skbs[1].data[0] = 0x77
        assert pool.data[3, int(pool.headroom_col[3])] == 0x77
        assert skbs[0].data is skbs[0].data  # one view per frame, made once
    finally:
        pool.close()


def test_frame_skbs_of_no_frames() -> None:
    pool = FramePool(8, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        assert list(frame_skbs(pool, np.zeros(0, dtype=np.uint32))) == []
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("index", "start"),
    [
        ([], None),
        ([5], 5),
        ([5, 6], 5),
        ([5, 6, 7, 8], 5),
        ([5, 7], None),
        ([6, 5], None),
        ([5, 7, 6, 8], None),
        ([5, 5, 7, 8], None),
    ],
)
def test_consecutive_start(index: list[int], start: int | None) -> None:
    assert consecutive_start(np.array(index, dtype=np.uint32)) == start


def test_skb_batch_of_consecutive_frames_is_a_view_of_the_pool() -> None:
    pool = FramePool(8, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        fill_pool(pool, [1, 2, 3], EXAMPLE_FRAMES[:3])
        batch = skb_batch(pool, np.array([1, 2, 3], dtype=np.uint32))
        assert np.shares_memory(batch.rows, pool.data)
        scattered = skb_batch(pool, np.array([3, 1, 2], dtype=np.uint32))
        assert scattered.dport.tolist() == [batch.dport[2], batch.dport[0], batch.dport[1]]
    finally:
        pool.close()


def test_frame_skbs_fall_back_to_per_frame_skbs() -> None:
    # Frame 2's descriptor claims more bytes than its frame holds: no batch's rows can hold
    # them, so every frame is parsed on its own (parsed_skbs), reading where the
    # descriptors say, as the per-frame parser would.
    pool = FramePool(8, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        fill_pool(pool, [1, 2, 3], EXAMPLE_FRAMES[:3])
        pool.length[2] = FRAME_SIZE
        index = np.array([1, 2, 3], dtype=np.uint32)
        with pytest.raises(ValueError, match="frame size"):
            skb_batch(pool, index)
        got = list(frame_skbs(pool, index))
        assert [type(skb) for skb in got] == [Skb] * 3
        for skb, i in zip(got, [1, 2, 3], strict=True):
            start = i * FRAME_SIZE + int(pool.headroom_col[i])
            data = bytes(pool.mv[start : start + int(pool.length[i])])
            assert skb is not None and skb.as_dict() == pool_expected(pool, i, data)
        again = list(parsed_skbs(pool, index))
        assert [skb.as_dict() for skb in again if skb] == [skb.as_dict() for skb in got if skb]
    finally:
        pool.close()


def test_the_pools_are_frames() -> None:
    pool = FramePool(4, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        assert isinstance(pool, Frames)
        assert isinstance(FrameBlock.empty(4), Frames)
        assert not isinstance(pool.data, Frames)  # rows alone: no descriptors
    finally:
        pool.close()
