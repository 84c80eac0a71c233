"""AF_XDP sockets for real, without an XDP program: creation, the rings as the kernel maps
them, what the kernel refuses and how we say it, shared UMEMs, and transmitting.

Receiving needs an XDP program that redirects into the socket: ``test_xsk_rx.py``.  Needs
root (namespaces, AF_XDP); skips otherwise.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import mmap
import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from cpumap.engine.frame_pool import FramePool
from cpumap.errors import ClosedResourceError, Error
from cpumap.live import LiveSource, Umem, XskError, XskMode, XskSocket, XskStatistics
from cpumap.live.netns import VethPair, entered, ip, unique_netns_name
from cpumap.live.xsk import queue_counts
from cpumap.live.xsk_rings import XDP_DESC
from tests.helpers import veth_unavailable

pytestmark = pytest.mark.root

CHUNK = 2048
DEADLINE_S = 5.0


_REASON = veth_unavailable(
    "network namespaces and AF_XDP sockets", also=lambda _: Umem(mmap.mmap(-1, 4 * CHUNK)).close()
)
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)


@pytest.fixture
def memory() -> Iterator[mmap.mmap]:
    mem = mmap.mmap(-1, 256 * CHUNK)
    yield mem
    gc.collect()  # a caught refusal's traceback cycle may hold a test's view of it
    mem.close()  # BufferError if a closed Umem still held it


@pytest.fixture
def two_queues() -> Iterator[tuple[str, str]]:
    """(namespace, interface): a veth end with 2 RX and 2 TX queues, in a fresh namespace."""
    ns = unique_netns_name()
    ip("netns", "add", ns)
    try:
        q = ("numtxqueues", "2", "numrxqueues", "2")
        ip("-n", ns, "link", "add", "xq0", *q, "type", "veth", "peer", "name", "xq1", *q)
        for ifname in ("xq0", "xq1"):
            ip("-n", ns, "link", "set", "dev", ifname, "up")
        yield ns, "xq0"
    finally:
        ip("netns", "delete", ns)


# --- creation and the rings -------------------------------------------------------------


def test_a_socket_maps_its_four_rings(veth: VethPair, memory: mmap.mmap) -> None:
    with veth.in_local(), Umem(memory, fill_size=512, completion_size=64) as umem:
        assert (umem.chunks, umem.chunk_size, umem.frame_offset, umem.size) == (
            256,
            2048,
            256,
            256 * 2048,
        )
        assert umem.address == np.frombuffer(memory, np.uint8).ctypes.data
        xsk = XskSocket(umem, veth.local.ifname, rx_size=128, tx_size=32)
        assert (xsk.ifindex, xsk.queue, xsk.shared) == (veth.local.ifindex, 0, False)
        assert xsk.fill is umem.fill and xsk.completion is umem.completion
        assert xsk.rx is not None and xsk.tx is not None
        assert (xsk.rx.entries, xsk.tx.entries, umem.fill.entries, umem.completion.entries) == (
            128,
            32,
            512,
            64,
        )
        assert xsk.rx.desc.dtype == XDP_DESC and umem.fill.desc.dtype == np.uint64
        # Fresh rings: nothing to consume, every slot free to produce into.
        assert xsk.rx.available() == 0 and umem.completion.available() == 0
        assert umem.fill.free() == 512 and xsk.tx.free() == 32
        assert xsk.statistics() == XskStatistics(0, 0, 0, 0, 0, 0)
        assert not xsk.poll(0.0)


def test_the_fill_ring_has_room_for_every_chunk_by_default(veth: VethPair) -> None:
    with veth.in_local(), Umem(mmap.mmap(-1, 300 * CHUNK)) as umem:
        assert umem.fill.entries == 512 and umem.completion.entries == 512
        xsk = XskSocket(umem, veth.local.ifname)
        assert xsk.fill.produce(umem.chunk_addresses()) == 300  # all of them, in one call
        assert xsk.fill.free() == 512 - 300


def test_copy_mode_needs_a_kick_to_transmit(veth: VethPair, memory: mmap.mmap) -> None:
    with veth.in_local(), Umem(memory) as umem:
        xsk = XskSocket(umem, veth.local.ifname, tx_size=64, mode=XskMode.COPY)
        assert not xsk.zero_copy and xsk.note is None and xsk.need_wakeup
        assert xsk.tx is not None and xsk.tx.needs_wakeup()  # copy-mode TX: always
        assert not xsk.fill.needs_wakeup()  # copy-mode RX reads the fill ring as frames come


def test_statistics_are_a_frozen_record(veth: VethPair, memory: mmap.mmap) -> None:
    with veth.in_local(), Umem(memory) as umem:
        stats = XskSocket(umem, veth.local.ifname).statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.rx_dropped = 1  # type: ignore[misc]
    assert stats.rx_lost == 0


def test_chunk_arithmetic(memory: mmap.mmap) -> None:
    with Umem(memory, chunk_size=4096) as umem:
        assert umem.chunks == 128
        assert umem.chunk_addresses(2, 4).tolist() == [8192, 12288]
        addrs = np.array([256, 4096 + 256 + 64, 3 * 4096 + 4095], dtype=np.uint64)
        assert umem.chunk_base(addrs).tolist() == [0, 4096, 3 * 4096]


# --- what the kernel refuses ------------------------------------------------------------


def _refusal(memory: object, **kw: int) -> tuple[int | None, str]:
    """(errno, message) of the refusal."""
    with pytest.raises(XskError) as info:
        Umem(memory, **kw)  # type: ignore[arg-type]
    assert isinstance(info.value, Error) and isinstance(info.value, OSError)
    return info.value.errno, str(info.value)


@pytest.mark.parametrize("chunk", [1024, 3000, 8192])
def test_a_chunk_size_the_kernel_refuses(memory: mmap.mmap, chunk: int) -> None:
    err, message = _refusal(memory, chunk_size=chunk)
    assert err == errno.EINVAL
    assert f"chunk_size {chunk}: use 2048 or 4096" in message


def test_unaligned_memory_is_refused_with_what_to_change(memory: mmap.mmap) -> None:
    unaligned = np.frombuffer(memory, np.uint8, count=64 * CHUNK, offset=64)
    err, message = _refusal(unaligned)
    assert err == errno.EINVAL
    assert "not page-aligned (4096)" in message and "align=4096" in message


def test_a_length_that_is_not_whole_chunks(memory: mmap.mmap) -> None:
    err, message = _refusal(np.frombuffer(memory, np.uint8, count=10 * CHUNK + 100))
    assert err == errno.EINVAL and "register the first 20480 bytes" in message


def test_too_much_headroom(memory: mmap.mmap) -> None:
    err, message = _refusal(memory, headroom=CHUNK - 256)
    assert err == errno.EINVAL and "headroom 1792 leaves too little" in message
    with Umem(memory, headroom=64) as umem:  # a little is fine
        assert umem.frame_offset == 256 + 64


def test_read_only_memory() -> None:
    err, message = _refusal(bytes(4 * CHUNK))
    assert err == errno.EFAULT and "writable" in message


def test_a_ring_size_that_is_not_a_power_of_two(veth: VethPair, memory: mmap.mmap) -> None:
    with pytest.raises(XskError, match="fill ring of 1000 entries refused: a power of two"):
        Umem(memory, fill_size=1000)
    with veth.in_local(), Umem(memory) as umem:
        with pytest.raises(XskError, match="RX ring of 100 entries refused") as info:
            XskSocket(umem, veth.local.ifname, rx_size=100)
        assert info.value.errno == errno.EINVAL
        # The failed socket had set rings on the UMEM's own socket: the kernel keeps them.
        with pytest.raises(XskError, match="make a new Umem"):
            XskSocket(umem, veth.local.ifname)


def test_a_queue_the_device_lacks(veth: VethPair, memory: mmap.mmap) -> None:
    with veth.in_local(), Umem(memory) as umem:
        assert queue_counts(veth.local.ifname) == (1, 1)
        with pytest.raises(XskError) as info:
            XskSocket(umem, veth.local.ifname, queue=1)
        assert info.value.errno == errno.EINVAL
        assert str(info.value) == (
            f"[Errno 22] bind to {veth.local.ifname} queue 1 refused (EINVAL): queue out of "
            f"range: {veth.local.ifname} has 1 RX and 1 TX queue(s)"
        )
        # Refused before anything was set up: the UMEM still takes a socket on queue 0.
        assert XskSocket(umem, veth.local.ifname, queue=0).queue == 0


def test_a_umem_from_another_namespace_is_refused(veth: VethPair, memory: mmap.mmap) -> None:
    """Its socket would resolve the ifindex where it was made: another device, silently."""
    with Umem(memory) as umem:  # made here, in the test's namespace
        with veth.in_local(), pytest.raises(XskError) as info:
            XskSocket(umem, veth.local.ifname)
        assert info.value.errno == errno.EINVAL
        assert "the UMEM was made in another network namespace" in str(info.value)


def test_an_unknown_interface(memory: mmap.mmap) -> None:
    with Umem(memory) as umem, pytest.raises(XskError) as info:
        XskSocket(umem, "cpumap-nonesuch")
    assert info.value.errno == errno.ENODEV and "no network interface" in str(info.value)


def test_zero_copy_is_refused_on_veth_and_auto_falls_back_to_copy(
    veth: VethPair, memory: mmap.mmap
) -> None:
    with veth.in_local():
        with Umem(memory) as umem, pytest.raises(XskError) as info:
            XskSocket(umem, veth.local.ifname, mode=XskMode.ZEROCOPY)
        assert info.value.errno == errno.EOPNOTSUPP
        assert "driver has no AF_XDP zero-copy: use XskMode.AUTO or COPY" in str(info.value)
        with Umem(memory) as umem:
            xsk = XskSocket(umem, veth.local.ifname)  # AUTO
            assert not xsk.zero_copy
            assert xsk.note == f"copy mode: {veth.local.ifname}'s driver gave no AF_XDP zero-copy"


def test_a_socket_needs_a_ring(veth: VethPair, memory: mmap.mmap) -> None:
    with veth.in_local(), Umem(memory) as umem, pytest.raises(XskError, match="RX or a TX ring"):
        XskSocket(umem, veth.local.ifname, rx_size=0, tx_size=0)


# --- sharing a UMEM ---------------------------------------------------------------------


def test_a_second_socket_on_the_same_queue_shares_the_fill_ring(
    veth: VethPair, memory: mmap.mmap
) -> None:
    with veth.in_local(), Umem(memory) as umem:
        first = XskSocket(umem, veth.local.ifname, mode=XskMode.COPY)
        second = XskSocket(umem, veth.local.ifname)
        assert second.shared and not first.shared
        assert second.fileno() != first.fileno() == umem.fd
        assert second.fill is umem.fill and second.completion is umem.completion
        assert not second.zero_copy and second.need_wakeup == first.need_wakeup
        with pytest.raises(XskError, match="takes the mode of the UMEM's first socket"):
            XskSocket(umem, veth.local.ifname, mode=XskMode.COPY)


def test_a_sharer_on_another_queue_has_its_own_fill_ring(
    two_queues: tuple[str, str], memory: mmap.mmap
) -> None:
    ns, ifname = two_queues
    with entered(ns), Umem(memory) as umem:
        assert queue_counts(ifname) == (2, 2)
        XskSocket(umem, ifname, queue=0)
        other = XskSocket(umem, ifname, queue=1, fill_size=64)
        assert other.shared and other.fill is not umem.fill and other.fill.entries == 64
        assert other.completion.entries == umem.completion.entries
        # Each fill ring takes its own partition of the chunks.
        assert umem.fill.produce(umem.chunk_addresses(0, 128)) == 128
        assert other.fill.produce(umem.chunk_addresses(128, 192)) == 64


# --- closing ----------------------------------------------------------------------------


def test_closing_the_umem_closes_its_sockets(veth: VethPair, memory: mmap.mmap) -> None:
    fds = sorted(os.listdir("/proc/self/fd"))
    with veth.in_local():
        umem = Umem(memory)
        first = XskSocket(umem, veth.local.ifname)
        second = XskSocket(umem, veth.local.ifname)
        rx = second.rx
        assert rx is not None
        second.close()
        second.close()  # idempotent
        with pytest.raises(ClosedResourceError):
            rx.peek(1)
        with pytest.raises(ClosedResourceError):
            second.statistics()
        umem.close()
        umem.close()
        assert first.closed and umem.closed
        with pytest.raises(ClosedResourceError):
            umem.fill.produce(umem.chunk_addresses())
        with pytest.raises(ClosedResourceError):
            XskSocket(umem, veth.local.ifname)
    assert sorted(os.listdir("/proc/self/fd")) == fds  # both sockets closed


# --- the frame pool as a UMEM -----------------------------------------------------------


def test_the_frame_pools_memory_is_a_umem(veth: VethPair) -> None:
    pool = FramePool(count=128, frame_size=2048)
    try:
        with veth.in_local(), Umem(pool.data) as umem:
            assert umem.address == pool.data.ctypes.data and umem.chunks == pool.count
            xsk = XskSocket(umem, veth.local.ifname)
            assert xsk.fill.produce(umem.chunk_addresses()) == pool.count
    finally:
        pool.close()


# --- transmitting -----------------------------------------------------------------------


def test_frames_sent_through_the_tx_ring_arrive_and_their_chunks_complete(
    veth: VethPair, memory: mmap.mmap
) -> None:
    n, size = 100, 90
    frames = np.random.default_rng(3).integers(0, 256, (n, size), dtype=np.uint8)
    frames[:, :6] = np.frombuffer(veth.peer.mac_bytes, np.uint8)
    frames[:, 6:12] = np.frombuffer(veth.local.mac_bytes, np.uint8)
    frames[:, 12:14] = (0x88, 0xB5)  # local experimental: nothing on the peer answers it
    with veth.in_peer():
        peer = LiveSource(veth.peer.ifname, block_size=1 << 16, block_count=8, block_timeout_ms=2)
    with peer, veth.in_local(), Umem(memory) as umem:
        xsk = XskSocket(umem, veth.local.ifname, rx_size=0, tx_size=128)
        assert xsk.tx is not None
        addrs = umem.chunk_addresses(0, n)
        umem.buffer.reshape(-1, CHUNK)[:n, :size] = frames
        slots = xsk.tx.reserve(n)
        slots["addr"], slots["len"], slots["options"] = addrs, size, 0
        xsk.tx.submit()
        done: list[int] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(done) < n and time.monotonic() < deadline:
            xsk.kick_tx()
            while len(batch := xsk.completion.peek(n)):
                done += batch.tolist()
            xsk.completion.release()
        assert sorted(done) == addrs.tolist()  # every chunk came back, once
        got: list[bytes] = []
        while len(got) < n and time.monotonic() < deadline:
            batch = peer.poll_batch(0.1)
            got += [] if batch is None else [p.data for p in batch]
        assert got == [f.tobytes() for f in frames]
        assert xsk.statistics().tx_invalid_descs == 0
