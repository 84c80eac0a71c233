"""The fast path reads its fields from one gathered copy per call (fast_path._gather): on
rows laid out as the engine's (2 KiB apart, a headroom, random bytes around the frames),
``classify`` and ``hash_column`` give exactly the per-frame parser's answers; and
FlowHash's vectorized key choice (mask for a power of two, identity keys) is
``keys[hash % len(keys)]`` for any key list."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpumap.abi import LINKTYPE_ETHERNET
from cpumap.programs import FlowHash
from cpumap.skb import Skb, SkbBatch, fast_path
from tests.skb.test_skb import PROPERTY_SETTINGS, common_frames, eth


def pool_rows(frames: list[bytes], headroom: int, seed: int) -> np.ndarray:
    pool = np.random.default_rng(seed).integers(0, 256, (len(frames), 2048), dtype=np.uint8)
    for i, f in enumerate(frames):
        pool[i, headroom : headroom + len(f)] = np.frombuffer(f, dtype=np.uint8)
    return pool[:, headroom : headroom + max(len(f) for f in frames) + 7]


@PROPERTY_SETTINGS
@given(
    st.sampled_from([4, 6]).flatmap(lambda v: st.lists(common_frames(v), min_size=1, max_size=40)),
    st.lists(st.integers(0, 39), max_size=3),
    st.sampled_from([0, 2, 256]),
    st.integers(0, 2**32 - 1),
)
def test_gathered_fast_path_matches_the_per_frame_parser(
    frames: list[bytes], arp_at: list[int], headroom: int, seed: int
) -> None:
    for i in arp_at:  # a few frames off the layout: patched
        frames.insert(min(i, len(frames)), eth(0x0806) + bytes(46))
    rows = pool_rows(frames, headroom, seed)
    lengths = np.array([len(f) for f in frames])
    found = fast_path.classify(rows, 0, lengths, LINKTYPE_ETHERNET)
    arps = {i for i, f in enumerate(frames) if f[12:14] == b"\x08\x06"}
    if not arp_at:  # one layout throughout: fast, nothing to patch
        assert found.layout is not None and found.odd == []
    elif found.layout is not None:
        assert arps <= set(found.odd)
    batch = SkbBatch(rows, 0, lengths)
    assert batch.hash.tolist() == [Skb(f).hash for f in frames]


class _Batch:
    def __init__(self, hashes: np.ndarray) -> None:
        self.skb = type("S", (), {"hash": hashes})()
        self._n = len(hashes)

    def __len__(self) -> int:
        return self._n


@pytest.mark.parametrize(
    "keys", [[0], [7], [0, 1], [1, 0], [3, 9], [0, 1, 2], [0, 1, 2, 3], [4, 5, 6, 7], [2, 0, 5]]
)
@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
def test_flow_hash_keys_are_hash_mod_count(keys: list[int], dtype: type) -> None:
    h = np.random.default_rng(len(keys)).integers(0, 2**32, 1000).astype(dtype)
    verdicts, chosen = FlowHash(None, keys).batch(_Batch(h))  # type: ignore[arg-type]
    assert chosen.dtype == np.uint32
    assert chosen.tolist() == [keys[int(x) % len(keys)] for x in h]
    assert len(verdicts) == len(h)
