"""Tests for cpumap.skb.fast_path, the batch parser's fixed-layout path.

A batch whose frames (all, or all but a few) are Ethernet + IPv4 without options or
fragmentation + UDP/TCP, or Ethernet + IPv6 + UDP/TCP, is read at fixed offsets.  These
tests check the columns stay exact at the edges of that layout (truncation around each
minimum, frames off the layout, the patch limit, link types, offsets), and (white-box,
through ``_fast_layout()``/``_odd``) that common traffic does take it: a silent fall back to
the general path would cost the engine most of its RX budget.  On rows laid out as the
engine's (2 KiB apart, a headroom, random bytes around the frames) ``classify`` and
``hash_column`` give exactly the per-frame parser's answers; batches mixing IPv4 and IPv6
(``mixed_hash``) hash as the per-frame parser over any transport."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpumap.abi import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW
from cpumap.skb import ParseDepth, Skb, SkbBatch, fast_path
from tests.skb.helpers import (
    FRAGMENT,
    ICMP,
    ICMPV6,
    PROPERTY_SETTINGS,
    SCTP,
    TCP,
    UDP,
    assert_batch_matches_frames,
    engine_batch,
    eth,
    frames,
    icmp,
    ipv4,
    ipv6,
    l4_headers,
    sctp,
    udp,
    v4_tcp_frame,
    v4_udp_frame,
    v6_frame,
    v6_tcp_frame,
    vlan_tag,
)

FAST_LIMIT = 8  # fast_path.PATCH_LIMIT


def with_df(frame: bytes) -> bytes:
    """The IPv4 frame with Don't Fragment set (still not a fragment)."""
    b = bytearray(frame)
    b[20] |= 0x40
    return bytes(b)


def fast_path_taken(batch: SkbBatch) -> tuple[int, list[int]] | None:
    """(IP version, frames patched per frame) if the batch takes the fast path, else None."""
    layout = batch._fast_layout()
    return None if layout is None else (layout.version, batch._odd)


@pytest.mark.parametrize(
    ("frame", "version"),
    [
        (v4_udp_frame(), 4),
        (v4_tcp_frame(), 4),
        (with_df(v4_tcp_frame()), 4),
        (v6_frame(UDP), 6),
        (v6_frame(TCP), 6),
    ],
)
def test_fast_path_serves_common_traffic(frame: bytes, version: int) -> None:
    batch = engine_batch([frame] * 16, slack=5)
    assert fast_path_taken(batch) == (version, [])
    assert_batch_matches_frames(batch)
    assert batch.depth.tolist() == [ParseDepth.L4] * 16


@pytest.mark.parametrize(
    ("frame", "shortest"),
    [(v4_udp_frame(), 42), (v4_tcp_frame(), 54), (v6_frame(UDP), 62), (v6_frame(TCP), 74)],
)
def test_fast_path_truncated_around_its_minimum(frame: bytes, shortest: int) -> None:
    version = 4 if frame[12] == 0x08 else 6
    for cut in range(shortest - 3, shortest + 3):
        one_cut = engine_batch([frame] * 7 + [frame[:cut]])
        assert fast_path_taken(one_cut) == (version, [] if cut >= shortest else [7]), cut
        assert_batch_matches_frames(one_cut)
        all_cut = engine_batch([frame[:cut]] * 9)
        assert (fast_path_taken(all_cut) is None) == (cut < shortest), cut
        assert_batch_matches_frames(all_cut)


ODD_FRAMES = {
    "ihl 6": eth(0x0800) + ipv4(UDP, udp(), options=bytes(4)),
    "first fragment": eth(0x0800) + ipv4(UDP, udp(1, 2), mf=True),
    "later fragment": eth(0x0800) + ipv4(UDP, udp(1, 2), frag_offset=1480),
    "icmp": eth(0x0800) + ipv4(ICMP, icmp()),
    "sctp": eth(0x0800) + ipv4(SCTP, sctp()),
    "bad version": eth(0x0800) + b"\x65" + ipv4(UDP, udp())[1:],
    "vlan": eth(0x8100) + vlan_tag(5, 0x0800) + ipv4(UDP, udp()),
    "arp": eth(0x0806) + bytes(46),
    "ipv6 hop-by-hop": v6_tcp_frame(),
    "ipv6 in ipv4": eth(0x0800) + ipv4(41, ipv6(UDP, udp())),
    "802.3": eth(46) + bytes(46),
}


@pytest.mark.parametrize("odd", ODD_FRAMES)
@pytest.mark.parametrize("common", [v4_udp_frame(), v6_frame(TCP)])
def test_fast_path_patches_a_frame_off_its_layout(odd: str, common: bytes) -> None:
    frames = [common] * 5 + [ODD_FRAMES[odd]] + [common] * 5
    batch = engine_batch(frames)
    assert fast_path_taken(batch) == (4 if common[12] == 0x08 else 6, [5])
    assert_batch_matches_frames(batch)


def test_fast_path_patch_limit() -> None:
    odd = list(ODD_FRAMES.values())
    for count in (FAST_LIMIT, FAST_LIMIT + 1):
        frames = [v4_udp_frame(i, 99) for i in range(20)]
        frames[1 : 1 + count] = odd[:count]
        batch = engine_batch(frames)
        assert fast_path_taken(batch) == (
            (4, list(range(1, 1 + count))) if count == FAST_LIMIT else None
        )
        assert_batch_matches_frames(batch)


def test_fast_path_needs_ethernet_link_type() -> None:
    frames = [v4_udp_frame()] * 6
    other = np.array([1, 1, LINKTYPE_LINUX_SLL, 1, 1, 1], dtype=np.uint16)
    batch = engine_batch(frames, linktype=other)
    assert fast_path_taken(batch) == (4, [2])
    assert_batch_matches_frames(batch)
    scalar = engine_batch(frames, linktype=LINKTYPE_RAW)
    assert fast_path_taken(scalar) is None
    assert_batch_matches_frames(scalar)


def test_fast_path_mixed_ip_versions() -> None:
    # One layout per batch: a few frames of the other version are patched, more go general.
    few = engine_batch([v4_udp_frame()] * 10 + [v6_frame()] * 2)
    assert fast_path_taken(few) == (4, [10, 11])
    half = engine_batch([v4_udp_frame(), v6_frame()] * 10)
    assert fast_path_taken(half) is None
    for batch in (few, half):
        assert_batch_matches_frames(batch)


def test_fast_path_needs_one_offset_for_every_frame() -> None:
    frame = v4_udp_frame()
    rows = np.zeros((4, 80), dtype=np.uint8)
    for i, headroom in enumerate([0, 2, 0, 4]):
        rows[i, headroom : headroom + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    uneven = SkbBatch(rows, np.array([0, 2, 0, 4]), np.full(4, len(frame)))
    assert fast_path_taken(uneven) is None
    assert_batch_matches_frames(uneven)
    rows[:, 7 : 7 + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    shifted = SkbBatch(rows, 7, len(frame))  # one offset, not 0, given as a scalar
    assert fast_path_taken(shifted) == (4, [])
    assert_batch_matches_frames(shifted)


@st.composite
def common_frames(draw: st.DrawFn, version: int) -> bytes:
    """A frame of the fast path's layout for ``version``, varied where the layout allows
    (TOS, DF and the reserved flag, TTL, traffic class, flow label, trailing bytes)."""
    proto = draw(st.sampled_from([TCP, UDP]))
    l4 = draw(l4_headers(proto)) + draw(st.binary(max_size=6))
    src, dst = (draw(st.binary(min_size=version, max_size=version)) for _ in range(2))
    if version == 4:
        frame = bytearray(eth(0x0800) + ipv4(proto, l4, src, dst))
        frame[15], frame[22] = draw(st.integers(0, 255)), draw(st.integers(0, 255))
        frame[20] |= draw(st.sampled_from([0, 0x40, 0x80]))
    else:
        frame = bytearray(eth(0x86DD) + ipv6(proto, l4, src * 4, dst * 4))
        frame[14] |= draw(st.integers(0, 15))
        frame[15:18] = draw(st.binary(min_size=3, max_size=3))
    return bytes(frame)


@st.composite
def off_layout_frames(draw: st.DrawFn, version: int) -> tuple[int, bytes]:
    """A frame near the fast path's layout: cut around its minimum length, one header byte
    changed, a named odd case, or anything at all."""
    kind = draw(st.sampled_from(["cut", "byte", "named", "any"]))
    frame = draw(common_frames(version))
    if kind == "cut":
        shortest = {4: 42, 6: 62}[version]
        return LINKTYPE_ETHERNET, frame[: draw(st.integers(shortest - 6, shortest + 2))]
    if kind == "byte":
        changed = bytearray(frame)
        changed[draw(st.integers(12, 24))] = draw(st.integers(0, 255))
        return LINKTYPE_ETHERNET, bytes(changed)
    if kind == "named":
        return LINKTYPE_ETHERNET, draw(st.sampled_from(list(ODD_FRAMES.values())))
    return draw(frames())


@PROPERTY_SETTINGS
@given(st.data(), st.sampled_from([4, 6]), st.integers(0, 6), st.booleans())
def test_batch_equals_per_frame_near_the_fast_path(
    data: st.DataObject, version: int, headroom: int, engine_rows: bool
) -> None:
    # Mostly common frames, with up to a dozen off the layout (below and above the patch
    # limit) at random places; one offset for all; random bytes after every frame.
    batch_frames = [
        (LINKTYPE_ETHERNET, f)
        for f in data.draw(st.lists(common_frames(version), min_size=1, max_size=24))
    ]
    for odd in data.draw(st.lists(off_layout_frames(version), max_size=12)):
        batch_frames.insert(data.draw(st.integers(0, len(batch_frames))), odd)
    n = len(batch_frames)
    width = headroom + max(len(f) for _, f in batch_frames) + data.draw(st.integers(0, 8))
    pool = np.random.default_rng(n).integers(0, 256, (n, width + 16), dtype=np.uint8)
    for i, (_, f) in enumerate(batch_frames):
        pool[i, headroom : headroom + len(f)] = np.frombuffer(f, dtype=np.uint8)
    linktypes = np.array([lt for lt, _ in batch_frames], dtype=np.uint16)
    batch = SkbBatch(
        pool[:, :width] if engine_rows else np.ascontiguousarray(pool[:, :width]),
        np.full(n, headroom, dtype=np.uint16) if engine_rows else headroom,
        np.array([len(f) for _, f in batch_frames], dtype=np.uint32 if engine_rows else int),
        linktype=linktypes if engine_rows or linktypes.any() else LINKTYPE_ETHERNET,
    )
    assert_batch_matches_frames(batch)


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


def headroom_rows(frames: list[bytes], headroom: int, slack: int, seed: int) -> np.ndarray:
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
    rows = headroom_rows(frames, headroom, slack, seed)
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
    rows = headroom_rows(frames, 2, 8, 1)
    lengths = np.array([len(f) for f in frames])
    found = fast_path.mixed_hash(rows, 2, lengths, LINKTYPE_ETHERNET)
    assert found is not None and found[1] == [4, 5, 10, 11, 16, 17]
    batch = SkbBatch(rows, 2, lengths)
    assert batch.hash.tolist() == [Skb(f).hash for f in frames]
    assert fast_path.mixed_hash(rows, 2, lengths, LINKTYPE_RAW) is None
    assert fast_path.mixed_hash(rows, None, lengths, LINKTYPE_ETHERNET) is None
    many_odd = [eth(0x0806) + bytes(60)] * 9 + frames
    odd_rows = headroom_rows(many_odd, 0, 0, 2)
    odd_lengths = np.array([len(f) for f in many_odd])
    assert fast_path.mixed_hash(odd_rows, 0, odd_lengths, LINKTYPE_ETHERNET) is None
    assert SkbBatch(odd_rows, 0, odd_lengths).hash.tolist() == [Skb(f).hash for f in many_odd]
