"""The compiled walk over a pcap chunk's record headers equals the Python one, on record
chains cut anywhere and on bytes that are no capture at all."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpumap import _records
from cpumap.capture.pcap import walk_records, walk_records_py


def chain(caplens: list[int], big: bool, fill: int = 0xAB) -> bytes:
    order = ">" if big else "<"
    return b"".join(
        struct.pack(order + "IIII", 1, 2, c, c + 3) + bytes([fill]) * c for c in caplens
    )


def same(buf: bytes | np.ndarray, big: bool) -> tuple[np.ndarray, int]:
    offs, pos = walk_records(buf, big)
    ref_offs, ref_pos = walk_records_py(buf, big)
    assert offs.tolist() == ref_offs.tolist()
    assert pos == ref_pos
    return offs, pos


@settings(max_examples=300, deadline=None)
@given(
    caplens=st.lists(st.integers(0, 300), max_size=40),
    cut=st.integers(0, 400),
    big=st.booleans(),
    as_array=st.booleans(),
)
def test_a_record_chain_cut_anywhere(caplens, cut, big, as_array) -> None:
    whole = chain(caplens, big)
    buf = whole[: max(len(whole) - cut, 0)]
    offs, pos = same(np.frombuffer(buf, dtype=np.uint8) if as_array else buf, big)
    starts = np.cumsum([0] + [16 + c for c in caplens])
    # Every record whose caplen lies inside the buffer is found, at its real start.
    assert offs.tolist() == [int(s) for s in starts[:-1] if s + 12 <= len(buf)]
    assert pos + 12 > len(buf)  # the walk stops at the first caplen it cannot read


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), big=st.booleans())
def test_bytes_that_are_no_capture(data, big) -> None:
    same(data, big)


def test_huge_caplens_end_the_walk_past_the_buffer() -> None:
    buf = struct.pack("<IIII", 0, 0, 0xFFFFFFFF, 0) + b"x" * 64
    offs, pos = same(buf, False)
    assert offs.tolist() == [0] and pos == 16 + 0xFFFFFFFF


def test_bad_arguments_raise_not_crash() -> None:
    out = np.empty(4, dtype=np.int64)
    with pytest.raises(ValueError):
        _records.walk(b"x" * 32, out, -1, False)
    with pytest.raises(TypeError):
        _records.walk(b"x" * 32, out, 0)
    with pytest.raises(BufferError):  # a read-only output
        _records.walk(b"x" * 32, b"y" * 32, 0, False)
    # An output with too few slots stops the walk early, never writes past it.
    n, pos = _records.walk(chain([0] * 10, False), np.empty(3, dtype=np.int64), 0, False)
    assert (n, pos) == (3, 48)
