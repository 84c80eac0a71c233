"""A program and the hash that rides with the frame (programs/context.py): a hash the
program had computed rides on with frames that carried none (flow-hash steering over two
keys, per frame and vectorized); every way a program can be handed writable packet bytes
(``ctx.data``, ``bytes_at``'s views, ``batch.pool``) drops the hash of the frames it may
have changed; the read-only ways (``ctx.packet``, ``window``, the skb's data and rows)
keep it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from cpumap import vectorized
from cpumap.abi import XDP_DROP, XDP_PASS
from cpumap.engine.frame_pool import HASH_L4, HASH_NONE, FramePool
from cpumap.programs.context import XdpBatch, XdpContext
from cpumap.programs.runner import ProgramRunner
from cpumap.programs.steering import FlowHash, make_program
from cpumap.skb import Skb, skb_batch
from tests.helpers import udp_frame

N = 12


class Map:
    """A map with every entry present."""

    max_entries = 8

    def has_entry(self, key: int) -> bool:
        return True


@pytest.fixture
def pool() -> Any:
    p = FramePool(64, frame_size=256, headroom=64)
    for i in range(N):
        frame = udp_frame(i, i)
        p.data[i, 64 : 64 + len(frame)] = np.frombuffer(frame, np.uint8)
        p.length[i] = p.wire_len[i] = len(frame)
    yield p
    p.close()


def computed(pool: FramePool, i: int) -> int:
    return Skb(bytes(pool.packet(i))).hash


def run(pool: FramePool, program: Any, *, consecutive: bool = True) -> None:
    idx = np.arange(N, dtype=np.uint32) if consecutive else np.arange(N)[::-1].astype(np.uint32)
    ProgramRunner(program, pool).run(idx, 0 if consecutive else None)


@pytest.mark.parametrize("consecutive", [True, False], ids=["consecutive", "scattered"])
@pytest.mark.parametrize("riding", [0, 1], ids=["none-riding", "one-riding"])
@pytest.mark.parametrize("form", [True, False], ids=["vectorized", "per-frame"])
def test_a_hash_steering_computed_rides_on_with_the_frames(
    pool: FramePool, form: bool, riding: int, consecutive: bool
) -> None:
    pool.rx_hash[:riding] = computed(pool, 0)  # already riding: kept
    pool.hash_type[:riding] = HASH_L4
    run(pool, FlowHash(Map(), [0, 1], vectorized=form), consecutive=consecutive)
    assert pool.hash_type[:N].tolist() == [HASH_L4] * N
    assert pool.rx_hash[:N].tolist() == [computed(pool, i) for i in range(N)]
    assert pool.hash_type[N:].tolist() == [HASH_NONE] * (64 - N)  # frames not run: untouched


def test_steering_over_one_key_computes_nothing_and_lets_nothing_ride(pool: FramePool) -> None:
    run(pool, FlowHash(Map(), [0]))
    run(pool, make_program("l4-hash", Map(), [0, 1]))  # its hash is not skb.hash
    assert pool.hash_type[:N].tolist() == [HASH_NONE] * N


def let_all_ride(pool: FramePool) -> None:
    pool.rx_hash[:N] = [computed(pool, i) for i in range(N)]
    pool.hash_type[:N] = HASH_L4


def rewrite_source(data: Any) -> None:
    data[26:30] = b"\x0b\x0c\x0d\x0e"  # the IPv4 source address


@pytest.mark.parametrize(
    "program, dropped",
    [
        (lambda ctx: rewrite_source(ctx.data) if ctx.index == 3 else XDP_PASS, {3}),
        (lambda ctx: len(ctx.data) and XDP_PASS, set(range(N))),  # handed out: may be written
        (lambda ctx: ctx.packet[0] and ctx.skb.hash and XDP_PASS, set()),
        (lambda ctx: bytes(ctx.skb.data) and ctx.data_meta and XDP_PASS, set()),
    ],
    ids=["writes-one", "reads-data", "reads-packet-skb", "reads-skb-data-meta"],
)
def test_per_frame_writable_bytes_drop_the_hash(
    pool: FramePool, program: Callable[[XdpContext], Any], dropped: set[int]
) -> None:
    let_all_ride(pool)
    run(pool, program)
    assert pool.hash_type[:N].tolist() == [HASH_NONE if i in dropped else HASH_L4 for i in range(N)]
    got = skb_batch(pool, np.arange(N, dtype=np.uint32)).hash.tolist()
    assert got == [computed(pool, i) for i in range(N)]  # the new bytes' hash, where changed


@vectorized
def writes_through_bytes_at(batch: XdpBatch) -> np.ndarray:
    rows = batch.bytes_at(26, 4)
    rows[1] = 7
    return np.full(len(batch), XDP_PASS, np.uint8)


@vectorized
def reads_through_window(batch: XdpBatch) -> np.ndarray:
    assert not batch.window(26, 4).flags.writeable
    assert not batch.skb.rows.flags.writeable
    with pytest.raises(TypeError):
        batch.skb.skb(0).data[0] = 1
    return np.where(batch.skb.hash % 2 == 0, XDP_PASS, XDP_DROP).astype(np.uint8)


@vectorized
def takes_the_pool(batch: XdpBatch) -> np.ndarray:
    batch.pool.data[int(batch.index[0]), 64 + 26] ^= 0xFF
    return np.full(len(batch), XDP_PASS, np.uint8)


@pytest.mark.parametrize(
    "program, consecutive, kept",
    [
        (writes_through_bytes_at, True, False),
        (writes_through_bytes_at, False, True),  # a copy: writing it changes no packet
        (reads_through_window, True, True),
        (takes_the_pool, True, False),
        (takes_the_pool, False, False),
    ],
)
def test_vectorized_writable_bytes_drop_the_hash(
    pool: FramePool, program: Any, consecutive: bool, kept: bool
) -> None:
    let_all_ride(pool)
    run(pool, program, consecutive=consecutive)
    assert pool.hash_type[:N].tolist() == [HASH_L4 if kept else HASH_NONE] * N
    got = skb_batch(pool, np.arange(N, dtype=np.uint32)).hash.tolist()
    assert got == [computed(pool, i) for i in range(N)]


def test_ctx_skb_data_is_read_only(pool: FramePool) -> None:
    ctx = XdpContext(pool)
    ctx.load(2, 0, 0, 1)
    with pytest.raises(TypeError):
        ctx.skb.data[0] = 1
    with pytest.raises(TypeError):
        ctx.packet[0] = 1
    ctx.data[0] = ctx.data[0]  # writable, and so: the frame's hash is dropped
    pool.hash_type[2] = HASH_L4
    ctx.load(3, 0, 0, 1)
    assert pool.hash_type[2] == HASH_NONE
