"""A cluster source's frame block filled in place (``BlockLender`` under a mapped capture)
holds the same frames as one filled from the general reader's batches (``fill``) -- no Ray
needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cpumap.capture import open_capture
from cpumap.capture.mapped import MappedCapture, open_placing
from cpumap.cluster.frames import BlockLender, FrameBlock, fill
from cpumap.engine.frame_pool import HASH_NONE
from tests.capture.test_captures import CAPTURES, FILES, needs_captures
from tests.cluster.helpers import make_captures

POLL = 64
# Written by the walk beside what fill writes: the skb's hash, riding.
_HASH = ("rx_hash", "hash_type")


def _general(path: Path) -> Iterator[tuple[bytes, np.ndarray, int]]:
    """Each frame's packet, descriptor and poll's truncated count, read and filled."""
    block = FrameBlock.empty(POLL)
    with open_capture(path, skip_bad=True) as reader:
        for batch in reader.batches(POLL):
            cut = fill(block, batch)
            yield from _frames(block, len(batch), cut)


def _in_place(path: Path) -> Iterator[tuple[bytes, np.ndarray, int]]:
    block = FrameBlock.empty(POLL)
    lender = BlockLender(block)
    with open_placing(path, skip_bad=True, batch_size=POLL) as reader:
        if not isinstance(reader, MappedCapture):  # gzip, a damaged start: the general path
            for batch in reader.batches(POLL):
                yield from _frames(block, len(batch), fill(block, batch))
            return
        reader.attach(lender)
        try:
            while (batch := reader.next_batch()) is not None:
                if len(batch):  # handed over to the general reader
                    yield from _frames(block, len(batch), fill(block, batch))
                else:
                    yield from _frames(block, *lender.take())
        finally:
            reader.detach()


def _frames(block: FrameBlock, n: int, cut: int) -> Iterator[tuple[bytes, np.ndarray, int]]:
    for i in range(n):
        yield bytes(block.packet(i)), block.desc[i].copy(), cut


def _same(path: Path) -> int:
    general, placed = list(_general(path)), list(_in_place(path))
    assert len(placed) == len(general)
    fields = [f for f in FrameBlock.empty(1).desc.dtype.names if f not in _HASH]
    for (gdata, gdesc, _), (pdata, pdesc, _) in zip(general, placed, strict=True):
        assert pdata == gdata
        assert pdesc[fields] == gdesc[fields]
        assert gdesc["hash_type"] == HASH_NONE
    assert sum(c for *_, c in general) == sum(c for *_, c in placed)
    return sum(int(d["hash_type"] != HASH_NONE) for _, d, _ in placed)


@needs_captures
@pytest.mark.parametrize("name", FILES)
def test_a_block_filled_in_place_equals_one_filled_from_batches(name: str) -> None:
    path = CAPTURES / name
    try:
        open_placing(path, skip_bad=True).close()
    except Exception:  # a file no reader opens: nothing to compare
        pytest.skip(f"{name}: not a readable capture")
    _same(path)


def test_the_hash_rides_on_the_frames_placed(tmp_path: Path) -> None:
    (path,) = make_captures(tmp_path, files=1, packets=1000)
    assert _same(path) == 1000  # every generated frame is Ethernet: each carries its hash


def test_the_lender_lends_a_poll_from_its_base() -> None:
    lender = BlockLender(FrameBlock.empty(16), span=8)
    assert lender.lend(20).tolist() == list(range(8))
    lender.base = 12  # the last slot: up to the block's end
    assert lender.lend(20).tolist() == [12, 13, 14, 15]
    lender.poll_placed(np.arange(12, 15, dtype=np.uint32), truncated=1)
    assert lender.take() == (3, 1) and lender.take() == (0, 0)
    with pytest.raises(ValueError, match=r"base\.\.base\+n-1"):
        lender.poll_placed(np.array([0, 1], dtype=np.uint32))
