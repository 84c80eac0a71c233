"""Entry names and frame parcels: no Ray needed."""

from __future__ import annotations

import numpy as np
import pytest

from cpumap.cluster.frames import FrameBlock, fill, pack, unpack
from cpumap.cluster.places import Place, as_place, parse_entries
from cpumap.generator import Generator
from cpumap.skb import frame_skbs, skb_batch


def test_parse_entries() -> None:
    assert parse_entries("head:0-1,w1:0,2") == [
        Place("head", 0),
        Place("head", 1),
        Place("w1", 0),
        Place("w1", 2),
    ]
    assert parse_entries("0,1") == [Place("", 0), Place("", 1)]
    assert parse_entries(" head:0  w1:1 ") == [Place("head", 0), Place("w1", 1)]
    assert str(Place("w1", 3)) == "w1:3" and str(Place("", 3)) == "3"
    assert as_place("w1:3") == Place("w1", 3) == as_place(("w1", 3))


@pytest.mark.parametrize("bad", ["", "head:", "head:x", "a:b:1", "3-1", "head:0,head:0", "0,0"])
def test_parse_entries_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_entries(bad)


def test_as_place_rejects() -> None:
    with pytest.raises(ValueError):
        as_place("0,1")
    with pytest.raises(ValueError):
        as_place(("w1", -1))
    with pytest.raises(TypeError):
        as_place(3)  # type: ignore[arg-type]


def test_a_parcel_carries_what_the_handler_sees() -> None:
    gen = Generator(
        flows=20, sizes=(64, 200, 1514), vlan=(None, 7), seed=3, count=300, undersize="clamp"
    )
    batch = next(gen.batches(300))
    block = FrameBlock.empty(512)
    assert fill(block, batch) == 0
    idx = np.arange(0, 300, 3, dtype=np.uint32)  # scattered frames
    got = unpack(pack(block, idx))
    assert got.count == len(idx) and got.frame_size <= 1514
    want, have = skb_batch(block, idx), skb_batch(got, np.arange(len(idx), dtype=np.uint32), 0)
    for col in ("hash", "length", "wire_len", "ip_proto", "sport", "dport", "ts_ns"):
        assert np.array_equal(getattr(want, col), getattr(have, col)), col
    a = [bytes(s.data) for s in frame_skbs(block, idx)]
    b = [bytes(s.data) for s in frame_skbs(got, np.arange(len(idx), dtype=np.uint32))]
    assert a == b


def test_fill_cuts_what_does_not_fit_as_the_engine_does() -> None:
    gen = Generator(flows=2, sizes=(1514,), seed=1, count=4)
    batch = next(gen.batches(4))
    block = FrameBlock.empty(4, frame_size=1024, headroom=256)
    assert fill(block, batch) == 4
    assert (block.length[:4] == 768).all() and (block.wire_len[:4] == 1514).all()


def test_a_reused_block_carries_no_stale_hash() -> None:
    """A source fills the same block poll after poll; a hash that rode on the last poll's
    frames (a program computed it: programs/context.py lets it ride) must not ride on this
    poll's: the skb's hash is the new frames' own."""
    from cpumap.skb import Skb

    gen = Generator(flows=64, sizes=(64, 200), seed=3, count=16, undersize="clamp")
    first, second = gen.batches(8)
    block = FrameBlock.empty(8)
    fill(block, first)
    block.desc["rx_hash"][:8] = 12345  # as a program would have let it ride
    block.desc["hash_type"][:8] = 3
    fill(block, second)
    idx = np.arange(8, dtype=np.uint32)
    assert (block.desc["hash_type"][:8] == 0).all()
    want = [Skb(bytes(block.packet(i))).hash for i in range(8)]
    assert skb_batch(block, idx).hash.tolist() == want


def test_default_places_leave_the_first_cpu_of_a_reading_node_to_its_sources() -> None:
    """As a local run leaves its RX CPU to the producer: a node that reads files keeps its
    first CPU free of entries (when it has another); the other nodes give every CPU."""
    from cpumap.cluster.ray_setup import NodeInfo
    from cpumap.cluster.run import leave_rx_cpu

    head = NodeInfo("aa" * 28, 0, "127.0.0.1", True, None, 2.0)
    w1 = NodeInfo("bb" * 28, 1, "127.0.0.1", False, "w1", 4.0)
    solo = NodeInfo("cc" * 28, 2, "127.0.0.1", False, "solo", 1.0)
    nodes = [(head, [0, 1]), (w1, [2, 3, 5]), (solo, [7])]
    assert leave_rx_cpu(nodes, {head.node_id}) == [
        Place("head", 1),
        Place("w1", 2),
        Place("w1", 3),
        Place("w1", 5),
        Place("solo", 7),
    ]
    # A node with one CPU keeps its entry: the source shares it, as a 1-CPU local run.
    assert leave_rx_cpu(nodes, {w1.node_id, solo.node_id}) == [
        Place("head", 0),
        Place("head", 1),
        Place("w1", 3),
        Place("w1", 5),
        Place("solo", 7),
    ]
    assert len(leave_rx_cpu(nodes, set())) == 6
