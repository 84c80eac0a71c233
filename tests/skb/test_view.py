"""Tests for cpumap.skb.view: per-frame skbs read from a batch's columns equal the per-frame
parser's :class:`Skb`, field for field, for any bytes (hypothesis), through a bare
:class:`SkbBatch` and through a real frame pool (``frame_skbs``, what the worker hands a
per-frame handler), with headroom, metadata, scattered and consecutive frames."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpumap.abi import LINKTYPE_ETHERNET
from cpumap.engine.frame_pool import FramePool
from cpumap.programs.context import consecutive_start, frame_skbs, skb_batch
from cpumap.skb import ParseDepth, Skb
from cpumap.skb.view import SkbColumns, SkbView, views
from tests.skb.test_skb import EXAMPLE_FRAMES, PROPERTY_SETTINGS, batch_of, frames

POOL = 64
FRAME_SIZE = 256
HEADROOM = 64


def expected(data: bytes, **given: int | bytes) -> dict[str, object]:
    return Skb(data, **given).as_dict()  # type: ignore[arg-type]


def test_views_of_a_batch_equal_per_frame_skbs() -> None:
    batch = batch_of(EXAMPLE_FRAMES)
    got = list(views(SkbColumns(batch)))
    assert len(got) == len(EXAMPLE_FRAMES)
    for view, (linktype, data) in zip(got, EXAMPLE_FRAMES, strict=True):
        assert isinstance(view, Skb)
        assert bytes(view.data) == data
        assert view.as_dict() == expected(data, linktype=linktype)
        assert view.vlan_count == len(view.vlans)
        assert type(view.depth) is ParseDepth and type(view.is_fragment) is bool


def test_view_reads_only_the_columns_it_needs() -> None:
    batch = batch_of(EXAMPLE_FRAMES[:4])
    columns = SkbColumns(batch)
    view = next(views(columns))
    assert view.dport == 443
    assert set(columns) == {"dport"}
    assert "hash" not in batch.__dict__  # the hash stage never ran
    assert view.eth_src is not None  # a field no column holds: parsed for this frame only
    assert set(columns) == {"dport", "data", "linktype"}


def test_view_unknown_attribute_is_an_attribute_error() -> None:
    view = next(views(SkbColumns(batch_of(EXAMPLE_FRAMES[:1]))))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        view.nope  # noqa: B018


def test_a_copied_view_is_a_plain_skb_of_copied_bytes() -> None:
    linktype, data = EXAMPLE_FRAMES[0]
    view = next(views(SkbColumns(batch_of(EXAMPLE_FRAMES[:1]))))
    for twin in (copy.copy(view), pickle.loads(pickle.dumps(view))):
        assert type(twin) is Skb
        assert twin.as_dict() == view.as_dict() == expected(data, linktype=linktype)


def fill_pool(pool: FramePool, where: list[int], batch: list[tuple[int, bytes]]) -> None:
    """Frames ``batch`` in frames ``where`` of ``pool``, as the RX side writes them, with
    distinct descriptors and a metadata area on every third frame; garbage elsewhere."""
    rng = np.random.default_rng(len(batch))
    pool.data[:] = rng.integers(0, 256, pool.data.shape, dtype=np.uint8)
    for k, (i, (linktype, data)) in enumerate(zip(where, batch, strict=True)):
        head = HEADROOM - 8 * (k % 3)
        pool.headroom_col[i] = head
        pool.data[i, head : head + len(data)] = np.frombuffer(data, dtype=np.uint8)
        pool.length[i] = len(data)
        pool.wire_len[i] = len(data) + k
        pool.ts_ns[i] = 10**18 + k
        pool.ifindex[i] = 3 + k
        pool.rx_queue[i] = k % 4
        pool.linktype[i] = linktype % 65536
        pool.meta_len[i] = 4 * (k % 3 == 1)


def pool_expected(pool: FramePool, i: int, data: bytes) -> dict[str, object]:
    head, meta = int(pool.headroom_col[i]), int(pool.meta_len[i])
    start = i * FRAME_SIZE + head
    return expected(
        data,
        wire_len=int(pool.wire_len[i]),
        linktype=int(pool.linktype[i]),
        ifindex=int(pool.ifindex[i]),
        rx_queue=int(pool.rx_queue[i]),
        ts_ns=int(pool.ts_ns[i]),
        metadata=bytes(pool.mv[start - meta : start]),
        index=i,
    )


@PROPERTY_SETTINGS
@given(
    st.lists(frames(), min_size=1, max_size=12),
    st.sampled_from(["consecutive", "scattered"]),
    st.integers(0, POOL - 13),
)
def test_frame_skbs_equal_per_frame_skbs(
    batch: list[tuple[int, bytes]], order: str, first: int
) -> None:
    batch = [(lt, data[: FRAME_SIZE - HEADROOM]) for lt, data in batch]
    batch = [(lt if 0 <= lt < 65536 else LINKTYPE_ETHERNET, data) for lt, data in batch]
    n = len(batch)
    if order == "consecutive":
        where = list(range(first, first + n))
    else:
        where = np.random.default_rng(first).permutation(POOL)[:n].tolist()
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


def test_a_programs_ctx_skb_is_the_frames_skb() -> None:
    from cpumap.programs.context import XdpContext

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
