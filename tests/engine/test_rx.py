"""The RX producer: packets land in frames byte for byte, whatever their shape."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpumap
from cpumap import (
    XDP_DROP,
    CpuMap,
    MapOptions,
    PacketBatch,
    possible_cpus,
    redirect_map,
    vectorized,
)
from cpumap.packets import Packet
from tests.helpers import flow_batch, udp_frame

CPU = min(possible_cpus())


def seen_by_program(batch: PacketBatch, **producer_options) -> tuple[list[bytes], object]:
    seen: list[bytes] = []

    def prog(ctx):
        seen.append(bytes(ctx.data))
        return XDP_DROP

    with CpuMap(1, options=MapOptions(frame_size=2048, headroom=256)) as m:
        with m.producer(prog, **producer_options) as rx:
            rx.receive(batch)
        return seen, m.stats()


def ragged(lengths: list[int], gap: int = 3, seed: int = 0) -> PacketBatch:
    """Packets of the given lengths inside one buffer, with junk between them."""
    rng = np.random.default_rng(seed)
    parts, starts, pos = [], [], 0
    for n in lengths:
        parts.append(rng.integers(0, 256, gap, dtype=np.uint8))
        pos += gap
        starts.append(pos)
        parts.append(rng.integers(0, 256, n, dtype=np.uint8))
        pos += n
    buf = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    k = len(lengths)
    return PacketBatch(
        buf=buf,
        start=np.array(starts, dtype=np.int64),
        caplen=np.array(lengths, dtype=np.uint32),
        wire_len=np.array(lengths, dtype=np.uint32) + 10,
        ts_ns=np.arange(k, dtype=np.int64),
        ifindex=np.zeros(k, np.uint32),
        linktype=np.ones(k, np.uint16),
        rx_queue=np.zeros(k, np.uint32),
    )


@pytest.mark.parametrize(
    "lengths",
    [
        [60] * 300,  # equal lengths, but with gaps: not the 2-D fast path
        [14, 60, 1514, 64, 300, 9, 1500] * 40,  # wide: gathered rows of 1514
        [100, 3000, 64],  # one too wide to gather: per-packet copies
        [64, 64, 64, 4],  # the last window runs past the buffer's end
    ],
)
def test_every_packet_lands_intact(lengths: list[int]) -> None:
    batch = ragged(lengths)
    seen, stats = seen_by_program(batch, poll_size=64)
    room = 2048 - 256
    want = [batch.packet(i).data[:room] for i in range(len(batch))]
    assert seen == want
    assert stats.truncated == sum(1 for n in lengths if n > room)
    assert stats.rx == stats.xdp_drop == len(lengths)


def test_uniform_rows_and_from_packets() -> None:
    arr = np.arange(64 * 100, dtype=np.uint32).astype(np.uint8).reshape(100, 64)
    seen, _ = seen_by_program(PacketBatch.from_array(arr))
    assert seen == [bytes(r) for r in arr]
    pkts = [Packet(bytes([i]) * (i + 1), ts_ns=i) for i in range(50)]
    seen, _ = seen_by_program(PacketBatch.from_packets(pkts))
    assert seen == [p.data for p in pkts]


@pytest.mark.slow
def test_an_interrupted_poll_keeps_the_books_balanced() -> None:
    """Ctrl-C inside a poll: the frames with no outcome are counted ABORTED and freed,
    nothing stays staged, and the producer goes on working."""
    from cpumap import FlowHash

    calls = [0]

    def prog(ctx):
        calls[0] += 1
        if calls[0] == 150:
            raise KeyboardInterrupt
        return cpumap.redirect_map(m, 0)

    with CpuMap(1) as m:
        m.update(0, 1024)
        with m.producer(prog, poll_size=256) as rx:
            with pytest.raises(KeyboardInterrupt):
                rx.poll(ragged([64] * 256))
            rx.poll(ragged([64] * 10))
        m.wait_idle(10)
        s = m.stats()
        assert s.rx == 266 and s.xdp_aborted == 256 and s.delivered == 10
        assert m.pool.audit().whole
        with m.producer(FlowHash(m, [0])) as rx2:
            rx2.poll(ragged([64] * 5))
        m.wait_idle(10)
        assert m.stats().delivered == 15


@pytest.mark.slow
def test_a_poll_bigger_than_the_partition_is_split() -> None:
    with CpuMap(1, frames=256) as m:
        m.update(0, 1024)
        with m.producer(lambda ctx: cpumap.redirect_map(m, 0), frame_wait=30) as rx:
            rx.poll(ragged([64] * 1000))  # 1000 > 256 frames: would wait for itself
        m.wait_idle(10)
        assert m.stats().delivered == 1000


# -- RX: redirect_map into another map is a redirect error, not a delivery here -------------
@pytest.mark.slow
def test_rx_redirect_into_another_map_is_not_delivered_here() -> None:
    with CpuMap(1, frames=1024) as m, CpuMap(1, frames=1024) as other:
        m.update(CPU, 64)  # ``other`` has no entry at all
        s = m.run(flow_batch(1, 10), lambda ctx: redirect_map(other, CPU))
        assert s.delivered == 0
        assert s.redirect_err + s.xdp_aborted == 10


# -- PASS: the RX side's local stack sees the same skb a worker would ---------------------------
def test_pass_handler_sees_every_field_of_the_frame() -> None:
    seen = []

    def prog(ctx):
        assert ctx.adjust_meta(-4) == 0
        ctx.data_meta[:] = b"meta"
        return cpumap.XDP_PASS

    pkts = [Packet(udp_frame(1, 0), ts_ns=1_700_000_000_123_456_789, ifindex=3, rx_queue=2)]
    with CpuMap(1, frames=1024) as m, m.producer(prog, pass_handler=seen.append) as rx:
        rx.poll(PacketBatch.from_packets(pkts))
    (skb,) = seen
    assert (skb.ts_ns, skb.ifindex, skb.rx_queue) == (1_700_000_000_123_456_789, 3, 2)
    assert skb.metadata == b"meta" and skb.wire_len == len(pkts[0].data)


def test_every_closed_object_says_so_with_one_error() -> None:
    m = CpuMap(1, frames=1024)
    rx = m.producer(lambda ctx: XDP_DROP)
    rx.close()
    m.close()
    with pytest.raises(cpumap.ClosedResourceError, match=r"^producer is closed$"):
        rx.poll(flow_batch(1, 1))
    with pytest.raises(cpumap.ClosedResourceError, match=r"^map is closed$"):
        m.lookup(0)


# -- the copy of mixed lengths -----------------------------------------------------------------
# The RX producer's copy of packets of mixed lengths into the pool (engine/rx.py
# ``_copy_ragged``, grouped by length class): every packet's bytes land whole in its frame,
# whatever the mix of lengths, truncated to the frame's room, and up to the source buffer's
# last byte.


@vectorized
def _drop(batch):
    return np.full(len(batch), XDP_DROP, dtype=np.uint8)


@pytest.mark.parametrize(
    "lengths",
    [
        [60, 61, 64, 65, 127, 128, 129, 700, 1024, 1025, 1500, 1],
        [1500] * 5 + [64],
        [1500, 1025],  # the last packet: its class's window would pass the buffer's end
        [64] * 7,  # uniform: the plain path
        [2000, 3000, 64],  # longer than a frame's room: truncated
        [0, 0, 5],
    ],
)
def test_every_packet_lands_whole_in_its_frame(lengths: list[int]) -> None:
    rng = np.random.default_rng(len(lengths))
    payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    batch = PacketBatch.from_packets([Packet(p) for p in payloads])
    with CpuMap(2, handler=None) as m:  # no entry: nothing is forked
        rx = m.producer(_drop)
        try:
            room = m.pool.frame_size - m.pool.headroom
            start = rx.allocator.alloc_range(len(batch))
            assert start is not None
            where = slice(start, start + len(batch))
            rx._fill(where, batch)
            for k, p in enumerate(payloads):
                frame = start + k
                assert int(m.pool.length[frame]) == min(len(p), room)
                assert bytes(m.pool.packet(frame)) == p[:room]
            rx.allocator.free(np.arange(start, start + len(batch), dtype=np.uint32))
        finally:
            rx.close()


# -- the copy's fast paths equal the per-packet copy --------------------------------------------
# ``_fill``'s 2-D copy (equal lengths back to back), ``_copy_ragged``'s one-class gather and its
# class-sorted gathers each equal ``_copy_each`` (one memoryview copy per packet) of every packet.
LENGTHS = st.one_of(
    st.tuples(st.integers(1, 300), st.integers(1, 40)).map(lambda t: [t[0]] * t[1]),
    st.lists(st.integers(0, 80), min_size=1, max_size=40),  # one or two length classes
    st.lists(st.one_of(st.integers(0, 2100), st.sampled_from([64, 1500])), min_size=1, max_size=40),
)


@pytest.fixture(scope="module")
def producer():
    with CpuMap(2, options=MapOptions(frame_size=2048, headroom=256)) as m:  # no entry: no fork
        rx = m.producer(_drop)
        try:
            yield m, rx
        finally:
            rx.close()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lengths=LENGTHS, gap=st.integers(0, 4), scattered=st.booleans(), seed=st.integers(0, 999))
def test_fill_fast_paths_equal_the_per_packet_copy(
    producer, lengths: list[int], gap: int, scattered: bool, seed: int
) -> None:
    m, rx = producer
    pool = m.pool
    h, room = pool.headroom, pool.frame_size - pool.headroom
    batch = ragged(lengths, gap=gap, seed=seed)  # gap 0 and equal lengths: the 2-D path
    n = len(batch)
    start = rx.allocator.alloc_range(2 * n)
    assert start is not None
    taken = np.arange(start, start + 2 * n, dtype=np.uint32)
    try:
        if scattered:
            frames = np.random.default_rng(seed).permutation(taken)[:n]
            where: slice | np.ndarray = frames
        else:
            frames = taken[:n]
            where = slice(start, start + n)
        pool.data[taken] = 0
        rx._fill(where, batch)
        fast = [bytes(pool.packet(int(f))) for f in frames]
        pool.data[taken] = 0
        caplen = np.minimum(batch.caplen, room)
        rx._copy_each(batch.buf, frames, batch.start, caplen)
        general = [
            bytes(pool.data[f, h : h + c]) for f, c in zip(frames, caplen.tolist(), strict=True)
        ]
        assert fast == general == [batch.packet(i).data[:room] for i in range(n)]
    finally:
        rx.allocator.free(taken)
