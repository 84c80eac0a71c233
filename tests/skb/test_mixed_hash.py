"""The batch hash's mixed path (fast_path.mixed_hash): batches mixing IPv4 and IPv6 frames
over any transport hash exactly as the per-frame parser, at the edges of both layouts
(truncation around each minimum, extension headers, fragments, other link types)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cpumap.abi import LINKTYPE_ETHERNET, LINKTYPE_RAW
from cpumap.skb import Skb, SkbBatch, fast_path
from tests.skb.test_skb import (
    FRAGMENT,
    ICMP,
    ICMPV6,
    PROPERTY_SETTINGS,
    TCP,
    UDP,
    assert_batch_matches_frames,
    common_frames,
    eth,
    icmp,
    ipv4,
    ipv6,
    off_layout_frames,
    udp,
)


@st.composite
def any_transport(draw: st.DrawFn, version: int) -> bytes:
    """A frame of either fixed layout over any protocol, truncated anywhere near it."""
    proto = draw(st.sampled_from([TCP, UDP, ICMP, ICMPV6, 132, 136, 47, 50, 59, 255]))
    body = draw(st.binary(max_size=28))
    if proto in (ICMP, ICMPV6):
        body = icmp(draw(st.integers(0, 255)), 0) + body
    src, dst = (draw(st.binary(min_size=version, max_size=version)) for _ in range(2))
    if version == 4:
        frame = eth(0x0800) + ipv4(proto, body, src, dst)
    else:
        frame = eth(0x86DD) + ipv6(proto, body, src * 4, dst * 4)
    cut = draw(st.one_of(st.just(len(frame)), st.integers(max(0, len(frame) - 40), len(frame))))
    return frame[:cut]


def engine_rows(frames: list[bytes], headroom: int, slack: int, seed: int) -> np.ndarray:
    width = headroom + max(len(f) for f in frames) + slack
    pool = np.random.default_rng(seed).integers(0, 256, (len(frames), width + 32), dtype=np.uint8)
    for i, f in enumerate(frames):
        pool[i, headroom : headroom + len(f)] = np.frombuffer(f, dtype=np.uint8)
    return pool[:, :width]


@PROPERTY_SETTINGS
@given(st.data(), st.integers(0, 6), st.integers(0, 70), st.integers(0, 2**32 - 1))
def test_mixed_batches_hash_as_per_frame(
    data: st.DataObject, headroom: int, slack: int, seed: int
) -> None:
    frames = data.draw(
        st.lists(
            st.one_of(any_transport(4), any_transport(6), common_frames(4), common_frames(6)),
            min_size=1,
            max_size=30,
        )
    )
    for _, odd in data.draw(
        st.lists(off_layout_frames(data.draw(st.sampled_from([4, 6]))), max_size=10)
    ):
        frames.insert(data.draw(st.integers(0, len(frames))), odd)
    rows = engine_rows(frames, headroom, slack, seed)
    lengths = np.array([len(f) for f in frames], dtype=np.uint32)
    batch = SkbBatch(rows, np.full(len(frames), headroom, dtype=np.uint16), lengths)
    assert batch.hash.tolist() == [Skb(f).hash for f in frames]
    assert_batch_matches_frames(batch)


def test_common_mixed_traffic_takes_the_mixed_path() -> None:
    frames = [
        eth(0x0800) + ipv4(UDP, udp(1, 2)),
        eth(0x86DD) + ipv6(TCP, bytes(20)),
        eth(0x0800) + ipv4(ICMP, icmp()),
        eth(0x86DD) + ipv6(ICMPV6, icmp(128)),
        eth(0x86DD) + ipv6(FRAGMENT, bytes(8) + udp()),  # an extension header: patched
        eth(0x0806) + bytes(46),  # ARP: patched
    ] * 3
    rows = engine_rows(frames, 2, 8, 1)
    lengths = np.array([len(f) for f in frames])
    found = fast_path.mixed_hash(rows, 2, lengths, LINKTYPE_ETHERNET)
    assert found is not None and found[1] == [4, 5, 10, 11, 16, 17]
    batch = SkbBatch(rows, 2, lengths)
    assert batch.hash.tolist() == [Skb(f).hash for f in frames]
    assert fast_path.mixed_hash(rows, 2, lengths, LINKTYPE_RAW) is None
    assert fast_path.mixed_hash(rows, None, lengths, LINKTYPE_ETHERNET) is None
    many_odd = [eth(0x0806) + bytes(60)] * 9 + frames
    odd_rows = engine_rows(many_odd, 0, 0, 2)
    odd_lengths = np.array([len(f) for f in many_odd])
    assert fast_path.mixed_hash(odd_rows, 0, odd_lengths, LINKTYPE_ETHERNET) is None
    assert SkbBatch(odd_rows, 0, odd_lengths).hash.tolist() == [Skb(f).hash for f in many_odd]
