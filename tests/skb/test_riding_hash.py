"""The hash that rides with the frame (``rx_hash`` / ``hash_type`` in the descriptor): the
``hash`` column takes it where it rides and computes the rest, and the result equals the
per-frame :class:`Skb` hash for every frame -- every frame of the shared captures and
generated ones (hypothesis) -- whether every hash rides, none or some; a batch whose every
hash rides reads no packet byte (no row gathered); ``hash_types`` says which kind each is."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpumap.capture import CaptureError, open_capture
from cpumap.engine.frame_pool import HASH_L3, HASH_L4, HASH_NONE, FramePool
from cpumap.skb import Skb, SkbBatch, frame_skbs, skb_batch
from cpumap.skb.headers import L4_HEADERS, ParseDepth
from cpumap.skb.rows import PoolRows
from tests.skb.helpers import PROPERTY_SETTINGS, fill_pool, frames, placed

CAPTURES = Path(
    os.environ.get("CPUMAP_CAPTURES")
    or Path(__file__).resolve().parents[2].parent / "shared" / "captures"
)
POOL = 64
FRAME_SIZE = 256
HEADROOM = 64


def expected_type(skb: Skb) -> int:
    """The kind of ``skb.hash``, from the per-frame parser's fields."""
    if not skb.ip_version:
        return HASH_NONE
    ports = L4_HEADERS.get(skb.ip_proto, (None, 0, False))[2]
    if ports and not skb.is_fragment and skb.depth == ParseDepth.L4:
        return HASH_L4
    return HASH_L3


def let_ride(pool: FramePool, index: np.ndarray, which: np.ndarray) -> None:
    """Let frames ``index[which]`` carry their hash, as a writer of the RX side does: the
    hash computed with none riding, and its kind."""
    batch = skb_batch(pool, index)
    rx_hash, kinds = batch.hash, batch.hash_types()
    pool.rx_hash[index[which]] = rx_hash[which]
    pool.hash_type[index[which]] = np.maximum(kinds[which], HASH_L3)  # non-IP rides too


def check_every_way(pool: FramePool, index: np.ndarray, expected: list[int]) -> None:
    """The hash column and the per-frame views equal ``expected`` with no hash riding,
    every hash riding and some riding (every third frame without)."""
    rng = np.random.default_rng(len(index))
    for which in (
        np.zeros(len(index), bool),
        np.ones(len(index), bool),
        np.arange(len(index)) % 3 != 0,
        rng.random(len(index)) < 0.5,
    ):
        pool.hash_type[:] = HASH_NONE
        let_ride(pool, index, which)
        assert skb_batch(pool, index).hash.tolist() == expected
        assert [s.hash for s in frame_skbs(pool, index)] == expected  # type: ignore[union-attr]


@PROPERTY_SETTINGS
@given(
    st.lists(frames(), min_size=1, max_size=24),
    st.sampled_from(["consecutive", "scattered"]),
    st.integers(0, POOL - 25),
)
def test_riding_hash_equals_the_computed_hash(
    batch: list[tuple[int, bytes]], order: str, first: int
) -> None:
    batch, where = placed(batch, order, first, POOL, FRAME_SIZE - HEADROOM)
    pool = FramePool(POOL, frame_size=FRAME_SIZE, headroom=HEADROOM)
    try:
        fill_pool(pool, where, batch)
        index = np.array(where, dtype=np.uint32)
        skbs = [Skb(data, linktype=lt) for lt, data in batch]
        check_every_way(pool, index, [s.hash for s in skbs])
        pool.hash_type[:] = HASH_NONE  # computed, every path: the kinds from the bytes
        assert skb_batch(pool, index).hash_types().tolist() == list(map(expected_type, skbs))
    finally:
        pool.close()


def capture_batches() -> list[tuple[str, list[tuple[int, bytes]]]]:
    """Every capture of ../shared/captures our readers open, as batches of frames."""
    out: list[tuple[str, list[tuple[int, bytes]]]] = []
    for path in sorted(CAPTURES.rglob("*")):
        if not path.is_file() or path.name.startswith(("_", "MANIFEST", "README")):
            continue
        try:
            with open_capture(path) as reader:
                packets = [(p.linktype, bytes(p.data)) for p in reader]
        except (CaptureError, OSError, ValueError):
            continue  # not a capture, or a damaged one (tests/capture covers those)
        for k in range(0, len(packets), 200):
            out.append((f"{path.relative_to(CAPTURES)}@{k}", packets[k : k + 200]))
    return out


@pytest.mark.skipif(not CAPTURES.is_dir(), reason=f"no captures at {CAPTURES}")
def test_riding_hash_equals_the_computed_hash_over_the_shared_captures() -> None:
    batches = capture_batches()
    assert batches, "no capture could be read"
    frames_seen = 0
    pool = FramePool(256, frame_size=2048 + 256, headroom=256)
    try:
        for name, batch in batches:
            fitting = [(lt % 65536, data[:2048]) for lt, data in batch]
            where = list(range(len(fitting)))
            fill_pool(pool, where, fitting)
            index = np.array(where, dtype=np.uint32)
            scattered = index[::-1].copy()  # a gather, not a view
            skbs = [Skb(data, linktype=lt) for lt, data in fitting]
            expected = [s.hash for s in skbs]
            check_every_way(pool, index, expected)
            check_every_way(pool, scattered, expected[::-1])
            pool.hash_type[:] = HASH_NONE
            kinds = skb_batch(pool, index).hash_types().tolist()
            assert kinds == list(map(expected_type, skbs)), name
            frames_seen += len(fitting)
    finally:
        pool.close()
    assert frames_seen > 1000


def test_a_batch_whose_hashes_ride_gathers_no_row() -> None:
    pool = FramePool(16, frame_size=256, headroom=64)
    try:
        index = np.array([9, 2, 5], dtype=np.uint32)
        pool.rx_hash[index] = [7, 8, 9]
        pool.hash_type[index] = HASH_L4
        batch = skb_batch(pool, index)
        assert batch.hash.tolist() == [7, 8, 9]  # taken as it rides, not computed
        assert batch.wire_len.tolist() == [0, 0, 0]
        assert "rows" not in vars(batch)  # no packet byte was gathered
        assert bytes(batch.data(1)) == b""  # one frame's bytes: still no gather
        assert "rows" not in vars(batch)
        assert batch.rows.shape[0] == 3  # gathered on demand
    finally:
        pool.close()


def test_frames_without_a_riding_hash_are_computed_a_few_or_many() -> None:
    frame = bytes.fromhex(
        "020000000002020000000001 0800 4500001c00070000 40110000 c0a8010a 0a000001"
        "14e90035 00080000".replace(" ", "")
    )
    computed = Skb(frame).hash
    for missing in (1, 8, 9, 40, 63):  # per frame, as a batch of the rows, everything
        rows = np.zeros((64, 64), np.uint8)
        rows[:, : len(frame)] = np.frombuffer(frame, np.uint8)
        rx_hash = np.full(64, 0xBAD, np.uint32)
        hash_type = np.full(64, HASH_L4, np.uint16)
        hash_type[:missing] = HASH_NONE
        batch = SkbBatch(rows, 0, len(frame), rx_hash=rx_hash, hash_type=hash_type)
        got = batch.hash.tolist()
        assert got[:missing] == [computed] * missing
        if 2 * missing <= 64:  # the riding values are taken (0xBAD: proof nothing was computed)
            assert got[missing:] == [0xBAD] * (64 - missing)


def test_rx_hash_and_hash_type_go_together() -> None:
    rows = np.zeros((2, 64), np.uint8)
    with pytest.raises(ValueError, match="together"):
        SkbBatch(rows, 0, 60, rx_hash=np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match="shape"):
        SkbBatch(rows, 0, 60, rx_hash=np.zeros(3, np.uint32), hash_type=np.zeros(3, np.uint16))
    data = np.zeros((4, 64), np.uint8)
    assert SkbBatch(PoolRows(data, np.array([3, 1]), 0, 64), 0, 60).rows.shape == (2, 64)


def test_the_hash_of_scattered_frames_reads_their_first_bytes_only() -> None:
    """Computed, the hash of a scattered batch gathers the first bytes of each frame, not
    the rows (full-size frames: 20x the bytes), and equals the per-frame hash -- for
    batches of one layout, of two, and of frames off both (a VLAN tag, an ARP frame)."""
    v4 = bytes.fromhex("0200000000020200000000010800450005dc00004000400600000a0000010a000002")
    v4 += bytes.fromhex("04d2005000000001000000005010ffff00000000") + bytes(1446)
    v6 = bytes.fromhex("02000000000202000000000186dd6000000005a41140") + bytes(range(32))
    v6 += bytes.fromhex("303900350000000000") + bytes(1443)
    tagged = v4[:12] + bytes.fromhex("81000005") + v4[12:]
    arp = v4[:12] + b"\x08\x06" + bytes(46)
    pool = FramePool(64, frame_size=2048, headroom=128)
    try:
        for batch, gathered in (
            ([v4] * 12, False),
            ([v4, v6] * 6, False),
            ([v4, v6, tagged, arp] * 3, False),  # 6 frames off both layouts: patched
            ([tagged] * 12, True),  # the general path: the whole rows
        ):
            where = list(range(60, 60 - 2 * len(batch), -2))  # scattered: a gather
            for i, f in zip(where, batch, strict=True):
                pool.data[i, 128 : 128 + len(f)] = np.frombuffer(f, np.uint8)
                pool.length[i] = len(f)
            got = skb_batch(pool, np.array(where, dtype=np.uint32))
            assert got.hash.tolist() == [Skb(f).hash for f in batch]
            assert ("rows" in vars(got)) == gathered
    finally:
        pool.close()
