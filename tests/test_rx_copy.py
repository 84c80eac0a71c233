"""The RX producer's copy of packets of mixed lengths into the pool (engine/rx.py
``_copy_ragged``, grouped by length class): every packet's bytes land whole in its frame,
whatever the mix of lengths, truncated to the frame's room, and up to the source buffer's
last byte."""

from __future__ import annotations

import numpy as np
import pytest

from cpumap import XDP_DROP, CpuMap, PacketBatch, vectorized
from cpumap.packets import Packet


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
