"""The AF_XDP ring protocol of :mod:`cpumap.live.xsk_rings`, without a kernel.

A producer and a consumer ring mapped from one memfd share their index words and
descriptor array exactly as user space and the kernel share a real ring, so each side can
be checked against the other: batches stop at the array's end, indices run free across
2**32, nothing is handed out twice or skipped.  (The kernel's side of real rings is in
``test_xsk.py``, as root.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

from cpumap.errors import ClosedResourceError
from cpumap.live.if_xdp import XDP_RING_NEED_WAKEUP, xdp_ring_offset
from cpumap.live.xsk_rings import XDP_DESC, ConsumerRing, ProducerRing

ENTRIES = 8
# The kernel's layout on 6.18: producer, consumer and flags words, then the descriptors.
OFFSETS = xdp_ring_offset(producer=0, consumer=128, desc=320, flags=196)
WORD = {"producer": 0, "consumer": 128 // 4, "flags": 196 // 4}


class Pair:
    """A producer and a consumer view of one ring (both user space, for the test)."""

    def __init__(self, dtype: np.dtype, start: int = 0) -> None:
        self.fd = os.memfd_create("ring-test")
        os.ftruncate(self.fd, 4096)
        words = np.memmap(f"/proc/self/fd/{self.fd}", dtype=np.uint32, mode="r+", shape=(64,))
        words[WORD["producer"]] = words[WORD["consumer"]] = start
        words.flush()
        self.words = words
        self.prod = ProducerRing(self.fd, 0, OFFSETS, ENTRIES, dtype)
        self.cons = ConsumerRing(self.fd, 0, OFFSETS, ENTRIES, dtype)

    def close(self) -> None:
        self.prod.close()
        self.cons.close()
        del self.words
        os.close(self.fd)


@pytest.fixture(params=[0, 2**32 - 5], ids=["from-0", "across-2**32"])
def ring(request: pytest.FixtureRequest) -> Iterator[Pair]:
    pair = Pair(np.dtype(np.uint64), start=request.param)
    yield pair
    pair.close()


def test_a_batch_moves_from_producer_to_consumer(ring: Pair) -> None:
    assert ring.prod.free() == ENTRIES and ring.cons.available() == 0
    slots = ring.prod.reserve(3)
    slots[:] = [10, 11, 12]
    assert ring.cons.available() == 0  # reserved is not published
    ring.prod.submit()
    assert ring.cons.available() == 3
    got = ring.cons.peek(8)
    assert got.tolist() == [10, 11, 12] and not got.flags.writeable
    assert ring.prod.free() == ENTRIES - 3  # peeked is not released
    ring.cons.release()
    assert ring.prod.free() == ENTRIES


def test_views_stop_at_the_end_of_the_array_and_the_next_call_wraps(ring: Pair) -> None:
    sent: list[int] = []
    received: list[int] = []
    for lap in range(5):  # laps of 6 over 8 slots: the wrap falls elsewhere each lap
        values = np.arange(6, dtype=np.uint64) + 100 * lap
        assert ring.prod.produce(values) == 6
        sent += values.tolist()
        while len(batch := ring.cons.peek(ENTRIES)):
            first = (batch.ctypes.data - ring.cons.desc.ctypes.data) // 8
            assert first + len(batch) <= ENTRIES  # a view of the array itself, never past it
            received += batch.tolist()
        ring.cons.release()
    assert received == sent


def test_produce_takes_what_fits_and_reports_it(ring: Pair) -> None:
    assert ring.prod.produce(np.arange(5, dtype=np.uint64)) == 5
    assert ring.prod.produce(np.arange(5, dtype=np.uint64) + 5) == 3  # 3 free slots
    assert ring.prod.free() == 0
    assert len(ring.prod.reserve(1)) == 0
    ring.cons.peek(2)
    ring.cons.release(2)
    assert ring.prod.produce(np.arange(4, dtype=np.uint64)) == 2
    everything = np.concatenate([ring.cons.peek(8), ring.cons.peek(8)]).tolist()
    assert everything == [2, 3, 4, 5, 6, 7, 0, 1]


def test_produce_can_mask_entries_on_the_way_in(ring: Pair) -> None:
    rx_addrs = np.array([256, 2048 + 256 + 64, 5 * 2048 + 2047], dtype=np.uint64)
    assert ring.prod.produce(rx_addrs, mask=~2047 & (2**64 - 1)) == 3
    assert ring.cons.peek(8).tolist() == [0, 2048, 5 * 2048]


def test_release_and_submit_count_what_was_handed_out(ring: Pair) -> None:
    ring.prod.reserve(4)[:] = [1, 2, 3, 4]
    ring.prod.submit(2)  # the other two slots are handed out again by the next reserve
    with pytest.raises(ValueError, match="reserved"):
        ring.prod.submit(1)
    again = ring.prod.reserve(1)
    again[:] = [9]
    ring.prod.submit(1)
    assert ring.cons.peek(8).tolist() == [1, 2, 9]
    with pytest.raises(ValueError, match="peeked"):
        ring.cons.release(4)
    ring.cons.release(1)
    assert ring.cons.peek(8).tolist() == []  # the two still peeked are not handed out again
    ring.cons.release(2)
    assert ring.prod.free() == ENTRIES


def test_cancel_hands_the_newest_peeked_entries_out_again(ring: Pair) -> None:
    ring.prod.produce(np.array([1, 2, 3, 4, 5], dtype=np.uint64))
    assert ring.cons.peek(4).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="peeked"):
        ring.cons.cancel(5)
    ring.cons.cancel(2)  # 3 and 4: not released, not lost
    ring.cons.release(2)
    assert ring.prod.free() == ENTRIES - 3
    assert ring.cons.peek(8).tolist() == [3, 4, 5]
    ring.cons.release()
    assert ring.prod.free() == ENTRIES


def test_descriptor_words_are_the_records_as_u32s() -> None:
    pair = Pair(XDP_DESC)
    try:
        rec = np.zeros(3, dtype=XDP_DESC)
        rec["addr"] = [1 << 33 | 5, 2048, 4096]
        rec["len"] = [60, 61, 62]
        pair.prod.produce(rec)
        words = pair.cons.peek_words(8)
        assert not words.flags.writeable
        assert words.tolist() == [[5, 2, 60, 0], [2048, 0, 61, 0], [4096, 0, 62, 0]]
        del words
        pair.cons.cancel(3)
        assert pair.cons.peek(8).tolist() == rec.tolist()  # the same entries
    finally:
        pair.close()


def test_the_indices_run_free_and_wrap_at_2_32(ring: Pair) -> None:
    start = int(ring.words[WORD["producer"]])
    for _ in range(3):
        ring.prod.produce(np.arange(ENTRIES, dtype=np.uint64))
        ring.cons.peek(ENTRIES)
        ring.cons.peek(ENTRIES)
        ring.cons.release()
    expected = (start + 3 * ENTRIES) % 2**32
    assert int(ring.words[WORD["producer"]]) == int(ring.words[WORD["consumer"]]) == expected


def test_descriptor_rings_hand_out_records() -> None:
    pair = Pair(XDP_DESC)
    try:
        slots = pair.prod.reserve(2)
        slots["addr"] = [256, 2304]
        slots["len"] = [60, 1514]
        pair.prod.submit()
        got = pair.cons.peek(2)
        assert got["addr"].tolist() == [256, 2304] and got["len"].tolist() == [60, 1514]
    finally:
        pair.close()


def test_needs_wakeup_reads_the_flag(ring: Pair) -> None:
    assert not ring.prod.needs_wakeup()
    ring.words[WORD["flags"]] = XDP_RING_NEED_WAKEUP
    assert ring.prod.needs_wakeup() and ring.prod.flags == XDP_RING_NEED_WAKEUP


def test_a_closed_ring_refuses(ring: Pair) -> None:
    ring.prod.close()
    ring.prod.close()  # idempotent
    with pytest.raises(ClosedResourceError):
        ring.prod.produce(np.arange(2, dtype=np.uint64))
    ring.cons.close()
    with pytest.raises(ClosedResourceError):
        ring.cons.peek(1)
