"""Tests for cpumap.skb.batch, the batch parser's general path: every column equals the
per-frame field (hand-built frames, and any bytes with hypothesis), dtypes, broadcasting,
bounds, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpumap.abi import LINKTYPE_ETHERNET, LINKTYPE_RAW
from cpumap.skb import Skb, SkbBatch
from tests.skb.helpers import (
    EXAMPLE_FRAMES,
    PROPERTY_SETTINGS,
    V4_PACKET,
    assert_batch_matches_frames,
    batch_of,
    engine_batch,
    eth,
    frames,
    v4_tcp_frame,
    v4_udp_frame,
    v6_tcp_frame,
)


def test_batch_columns_equal_per_frame_fields() -> None:
    batch = batch_of(EXAMPLE_FRAMES)
    assert len(batch) == len(EXAMPLE_FRAMES)
    assert_batch_matches_frames(batch)
    for i, (_, frame) in enumerate(EXAMPLE_FRAMES):
        assert bytes(batch.data(i)) == frame


def test_batch_column_dtypes() -> None:
    batch = batch_of(EXAMPLE_FRAMES[:3])
    dtypes = {name: getattr(batch, name).dtype for name in SkbBatch.COLUMNS}
    assert dtypes == {
        "protocol": np.uint16,
        "l3_protocol": np.uint16,
        "vlan_count": np.uint8,
        "network_offset": np.int32,
        "ip_version": np.uint8,
        "ip_proto": np.int16,
        "is_fragment": np.bool_,
        "transport_offset": np.int32,
        "sport": np.uint16,
        "dport": np.uint16,
        "hash": np.uint32,
        "depth": np.uint8,
    }


def test_batch_never_reads_past_the_captured_length() -> None:
    # The rest of the real frame stays in the row: only ``length`` decides what exists.
    frame = v6_tcp_frame()
    rows = np.tile(np.frombuffer(frame, dtype=np.uint8), (len(frame) + 1, 1))
    batch = SkbBatch(rows, np.zeros(len(rows), dtype=np.int64), np.arange(len(rows)))
    assert_batch_matches_frames(batch)
    assert batch.depth.tolist() == [Skb(frame[:cut]).depth for cut in range(len(frame) + 1)]


def test_batch_metadata_and_scalars_broadcast() -> None:
    rows = np.zeros((2, 64), dtype=np.uint8)
    rows[:, 2 : 2 + len(V4_PACKET)] = np.frombuffer(V4_PACKET, dtype=np.uint8)
    batch = SkbBatch(
        rows,
        np.array([2, 2]),
        np.array([len(V4_PACKET), 20]),
        wire_len=np.array([100, 200]),
        linktype=LINKTYPE_RAW,
        ifindex=4,
        rx_queue=np.array([0, 1]),
        ts_ns=77,
        index=np.array([10, 11]),
    )
    skb = batch.skb(1)
    assert (skb.len, skb.wire_len, skb.linktype, skb.ifindex) == (20, 200, LINKTYPE_RAW, 4)
    assert (skb.rx_queue, skb.ts_ns, skb.index) == (1, 77, 11)
    assert batch.sport.tolist() == [1111, 0]
    assert_batch_matches_frames(batch)


def test_empty_batch() -> None:
    batch = SkbBatch(np.zeros((0, 64), dtype=np.uint8), np.zeros(0), np.zeros(0))
    assert len(batch) == 0
    for name in SkbBatch.COLUMNS:
        assert getattr(batch, name).shape == (0,)


def test_tiny_rows() -> None:
    batch = SkbBatch(np.full((1, 1), 0x45, dtype=np.uint8), np.zeros(1), np.ones(1), linktype=101)
    assert_batch_matches_frames(batch)


def test_non_contiguous_rows() -> None:
    pool = np.full((8, 128), 0x5A, dtype=np.uint8)
    frame = np.frombuffer(v4_tcp_frame(), dtype=np.uint8)
    pool[::2, 4 : 4 + len(frame)] = frame
    batch = SkbBatch(pool[::2, :100], np.full(4, 4), np.full(4, len(frame)))
    assert batch.dport.tolist() == [443] * 4
    assert_batch_matches_frames(batch)


@pytest.mark.parametrize(
    ("rows", "offset", "length", "message"),
    [
        (np.zeros(8, np.uint8), [0], [1], "rows must be a 2-D uint8 array"),
        (np.zeros((1, 8), np.int8), [0], [1], "rows must be a 2-D uint8 array"),
        (np.zeros((2, 8), np.uint8), [0], [1, 1], r"offset must have shape \(2,\), not \(1,\)"),
        (np.zeros((1, 8), np.uint8), [-1], [1], "offset and length must be >= 0"),
        (np.zeros((1, 8), np.uint8), [4], [5], "offset \\+ length must be <= frame size 8"),
    ],
)
def test_batch_rejects_bad_arguments(
    rows: np.ndarray, offset: list[int], length: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        SkbBatch(rows, np.array(offset), np.array(length))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int64])
def test_batch_accepts_any_integer_dtype(dtype: type) -> None:
    frames = [v4_udp_frame(), eth(0x0806) + bytes(28), v4_udp_frame()]
    rows = np.zeros((3, 64), dtype=np.uint8)
    for i, f in enumerate(frames):
        rows[i, 2 : 2 + len(f)] = np.frombuffer(f, dtype=np.uint8)
    linktype = np.array([LINKTYPE_ETHERNET, LINKTYPE_ETHERNET, LINKTYPE_RAW], dtype=dtype)
    lengths = np.array([len(f) for f in frames], dtype=dtype)
    batch = SkbBatch(rows, np.full(3, 2, dtype=dtype), lengths, linktype=linktype)
    assert_batch_matches_frames(batch)
    assert batch.linktype.tolist() == [1, 1, LINKTYPE_RAW]


def test_batch_given_arguments_are_int64_columns() -> None:
    batch = engine_batch([v4_udp_frame()] * 3)
    for name in ("offset", "length", "wire_len", "linktype", "ifindex", "rx_queue", "ts_ns"):
        column = getattr(batch, name)
        assert (column.dtype, column.shape) == (np.int64, (3,)), name
    assert batch.wire_len.tolist() == batch.length.tolist() == [len(v4_udp_frame())] * 3
    assert batch.index.tolist() == [-1] * 3


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.tuples(frames(), st.integers(0, 9)),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 2**32 - 1),
)
def test_batch_equals_per_frame(frames_: list[tuple[tuple[int, bytes], int]], seed: int) -> None:
    # Mixed lengths, offsets (headroom) and link types; rows full of random garbage.
    size = max(headroom + len(data) for (_, data), headroom in frames_) + 4
    rows = np.random.default_rng(seed).integers(0, 256, (len(frames_), size), dtype=np.uint8)
    for i, ((_, data), headroom) in enumerate(frames_):
        rows[i, headroom : headroom + len(data)] = np.frombuffer(data, dtype=np.uint8)
    batch = SkbBatch(
        rows,
        np.array([headroom for _, headroom in frames_]),
        np.array([len(data) for (_, data), _ in frames_]),
        linktype=np.array([linktype for (linktype, _), _ in frames_]),
    )
    assert_batch_matches_frames(batch)
