"""Tests for cpumap.skb.view: per-frame skbs read from a batch's columns equal the per-frame
parser's :class:`Skb`, field for field, read only the columns they need, and copy as plain
skbs.  Through a real frame pool: tests/skb/test_build.py."""

from __future__ import annotations

import copy
import pickle

import pytest

from cpumap.skb import ParseDepth, Skb
from cpumap.skb.view import SkbColumns, views
from tests.skb.helpers import EXAMPLE_FRAMES, batch_of


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
