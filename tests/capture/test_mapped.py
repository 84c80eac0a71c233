"""A capture read in place (capture/mapped.py, cpumap._place) equals the general path.

The general path: the capture's reader (``open_capture``) hands batches to
``RxProducer.receive``, which copies them into frames (``_fill``).  The placed path: the
mapped file's records copied into lent frames by ``cpumap._place`` and taken by
``poll_placed``, the rest of a damaged file handed to the general reader.  For every
capture of ../shared/captures and generated ones, with and without ``skip_bad``: the same
frames byte for byte, the same descriptors (but ``rx_hash``/``hash_type``, which only the
placed path sets), the same counters, the same damage (messages and offsets); and the
hash the placed path sets equals ``Skb(bytes).hash`` frame for frame (also over
hypothesis frames).  A file truncated while a run reads it is an error naming the file
and the offset, never a crash; no descriptor or mapping is left after a run.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpumap import CpuMap, _place
from cpumap.abi import XDP_DROP, XDP_REDIRECT
from cpumap.capture import CaptureError, PcapWriter, open_capture, write_capture
from cpumap.capture.mapped import MappedCapture, open_placing
from cpumap.engine.frame_pool import DESCRIPTOR, HASH_L3, HASH_L4, HASH_NONE
from cpumap.packets import Packet
from cpumap.programs import vectorized
from cpumap.skb import Skb
from cpumap.skb.headers import ParseDepth
from tests.capture.test_captures import CAPTURES, FILES, needs_captures
from tests.helpers import udp_frame, wait_for

FRAMES = 1024
POLL = 256
_PORTS = (6, 17, 132, 136)  # the protocols whose ports go into the hash (headers.py)


@dataclass
class Run:
    """What one run left: every frame the program saw (bytes, descriptor), the map's
    counters, and the reader's books."""

    data: list[bytes] = field(default_factory=list)
    desc: list[np.ndarray] = field(default_factory=list)
    rx: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    placed: int = 0

    def descriptors(self) -> np.ndarray:
        return np.concatenate(self.desc) if self.desc else np.zeros(0, DESCRIPTOR)


def _recorder(run: Run):
    @vectorized
    def record(batch) -> np.ndarray:
        pool, idx = batch.pool, batch.index
        run.desc.append(pool.descriptors(idx))
        run.data.extend(bytes(pool.packet(int(i))) for i in idx)
        return np.full(len(idx), XDP_DROP, dtype=np.uint8)

    return record


def run_capture(path: Path | str, *, placed: bool, skip_bad: bool, frames: int = FRAMES) -> Run:
    """The capture through a producer, by the general path or the placed one."""
    run = Run()
    try:  # a file header refused: the same error from both
        opened = (open_placing if placed else open_capture)(path, skip_bad=skip_bad)
    except CaptureError as e:
        run.error = f"at open: {e}"
        return run
    opened.close()
    with CpuMap(1, frames=frames) as m:
        with m.producer(_recorder(run), poll_size=POLL) as rx:
            if placed:
                src = open_placing(path, skip_bad=skip_bad, batch_size=POLL)
                if isinstance(src, MappedCapture):
                    src.attach(rx)
                    next_batch = src.next_batch
                else:
                    next_batch = _batches(src)
            else:
                src = open_capture(path, skip_bad=skip_bad, batch_size=POLL)
                next_batch = _batches(src)
            with src:
                try:
                    while (b := next_batch()) is not None:
                        rx.receive(b)
                except CaptureError as e:
                    run.error = str(e)
                run.skipped, run.problems = src.skipped, [str(p) for p in src.problems]
                run.placed = getattr(src, "placed", 0)
        s = m.stats()
        run.rx, run.outcomes, run.truncated = s.rx, s.outcomes(), s.truncated
        assert s.rx == sum(s.outcomes().values()), s.outcomes()
        assert m.pool.audit().whole, m.pool.audit()
    return run


def _batches(reader):
    it = reader.batches(POLL)
    return lambda: next(it, None)


def assert_same(general: Run, placed: Run) -> None:
    """The placed run equals the general one; its hashes equal the skb's."""
    assert placed.error == general.error
    assert (placed.skipped, placed.problems) == (general.skipped, general.problems)
    assert (placed.rx, placed.outcomes, placed.truncated) == (
        general.rx,
        general.outcomes,
        general.truncated,
    )
    assert placed.data == general.data
    g, p = general.descriptors(), placed.descriptors()
    rest = [n for n in g.dtype.names if n not in ("rx_hash", "hash_type")]
    for name in rest:
        assert np.array_equal(g[name], p[name]), name
    assert not g["hash_type"].any()  # the general path computes no hash on the RX side
    # The fast walk's frames come first, each with its hash; the general reader's after a
    # hand-over have none (the worker computes it).
    assert not p["hash_type"][placed.placed :].any()
    for data, d in zip(placed.data[: placed.placed], p[: placed.placed].tolist(), strict=True):
        assert_hash(data, int(d[5]), int(d[9]), int(d[10]))


def assert_hash(data: bytes, linktype: int, rx_hash: int, hash_type: int) -> None:
    """The hash rides exactly where the skb parser finds IP (HASH_NONE otherwise), is the
    skb's, and says L4 exactly where ports went into it."""
    skb = Skb(data, linktype=linktype)
    if skb.src is None:
        assert hash_type == HASH_NONE, (data.hex(), linktype)
        return
    ports = skb.depth == ParseDepth.L4 and skb.ip_proto in _PORTS and not skb.is_fragment
    assert hash_type == (HASH_L4 if ports else HASH_L3), (data.hex(), linktype)
    assert rx_hash == skb.hash, (data.hex(), linktype)


# -- every capture of the shared corpus ---------------------------------------------------------


@needs_captures
@pytest.mark.parametrize("name", FILES)
def test_a_capture_read_in_place_equals_the_general_path(name: str) -> None:
    path = CAPTURES / name
    for skip_bad in (False, True):
        general = run_capture(path, placed=False, skip_bad=skip_bad)
        placed = run_capture(path, placed=True, skip_bad=skip_bad)
        assert_same(general, placed)


@needs_captures
def test_the_corpus_files_are_read_in_place() -> None:
    """The equality above is not the general path against itself: every uncompressed pcap
    file of the corpus (by its magic) is read in place, and most pcapng files (those the
    reader opens at a sound packet block); the fast walk places most of their packets."""
    kinds = {"pcap": 0, "pcapng": 0}
    walked = total = 0
    for name in FILES:
        path = CAPTURES / name
        magic = path.read_bytes()[:4]
        kind = "pcapng" if magic == b"\n\r\r\n" else "pcap" if magic in _PCAP_MAGICS else None
        try:
            src = open_placing(path, skip_bad=True)
        except CaptureError:  # a file header refused (test above: as the general reader)
            continue
        src.close()
        mapped = isinstance(src, MappedCapture)
        assert not mapped or kind is not None, name  # gzip: never
        if kind == "pcap":
            assert mapped, name
        if mapped:
            assert kind is not None
            kinds[kind] += 1
            run = run_capture(path, placed=True, skip_bad=True)
            walked += run.placed
            total += run.rx
    assert kinds["pcap"] >= 40 and kinds["pcapng"] >= 30, kinds
    # What is not walked: the pcapng test generator's files mix interface, simple packet
    # and statistics blocks among their few packets on purpose (the general reader's).
    assert walked > 0.85 * total, (walked, total)


_PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")


# -- generated captures ---------------------------------------------------------------------------


def _pcap_header(big: bool, ns: bool, linktype: int = 1) -> bytes:
    o = ">" if big else "<"
    return struct.pack(o + "IHHiIII", 0xA1B23C4D if ns else 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)


def _record(big: bool, data: bytes, ts: tuple[int, int] = (1, 2), wire: int | None = None) -> bytes:
    o = ">" if big else "<"
    return struct.pack(o + "IIII", *ts, len(data), len(data) if wire is None else wire) + data


def _frames(n: int) -> list[bytes]:
    sizes = (60, 64, 200, 512, 1500, 1800, 2100, 4000, 9000)  # some above the frame's room
    return [udp_frame(i % 37, i, sizes[i % len(sizes)]) for i in range(n)]


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("ns", [False, True])
def test_generated_captures_equal_the_general_path(tmp_path, big: bool, ns: bool) -> None:
    body = b"".join(
        _record(big, f, (1_700_000_000 + i, i * 7 % 999_999)) for i, f in enumerate(_frames(3000))
    )
    path = tmp_path / "gen.pcap"
    path.write_bytes(_pcap_header(big, ns) + body)
    for frames in (FRAMES, 64):  # 64: the partition runs out, lends wait for frames
        general = run_capture(path, placed=False, skip_bad=False, frames=frames)
        placed = run_capture(path, placed=True, skip_bad=False, frames=frames)
        assert_same(general, placed)
        assert placed.placed == 3000 and placed.truncated > 0


@pytest.mark.parametrize(
    "damage",
    ["caplen_above_wire", "caplen_above_max", "cut_record", "cut_header", "empty", "header_only"],
)
def test_generated_damage_is_the_general_readers(tmp_path, damage: str) -> None:
    frames = _frames(700)
    recs = [_record(False, f) for f in frames]
    if damage == "caplen_above_wire":
        recs[300] = _record(False, frames[300], wire=10)
        recs[650] = _record(False, frames[650], wire=20)
    elif damage == "caplen_above_max":
        recs[400] = struct.pack("<IIII", 1, 2, 300_000, 300_000) + frames[400]
    body = b"".join(recs)
    if damage == "cut_record":
        body = body[:-100]
    elif damage == "cut_header":
        body += b"\x01" * 9
    elif damage == "empty":
        body = b""
    path = tmp_path / "bad.pcap"
    path.write_bytes(_pcap_header(False, False) + body)
    if damage == "header_only":
        path.write_bytes(_pcap_header(False, False))
    for skip_bad in (False, True):
        general = run_capture(path, placed=False, skip_bad=skip_bad)
        placed = run_capture(path, placed=True, skip_bad=skip_bad)
        assert_same(general, placed)
        if damage not in ("empty", "header_only"):
            assert general.error is not None or general.skipped
            assert 0 < placed.placed <= 700  # the fast walk stopped before the damage


def _pcapng(path: Path, n: int, nanosecond: bool) -> list[int]:
    """A pcapng file of ``n`` packets over three interfaces; the offsets of its EPBs."""
    packets = [
        Packet(f, ts_ns=1_700_000_000_123_456_789 + 1000 * i, ifindex=i % 3)
        for i, f in enumerate(_frames(n))
    ]
    write_capture(path, packets, nanosecond=nanosecond)
    data, pos, epbs = path.read_bytes(), 0, []
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if btype == 6:
            epbs.append(pos)
        pos += blen
    assert len(epbs) == n
    return epbs


@pytest.mark.parametrize("nanosecond", [False, True])
def test_generated_pcapng_equals_the_general_path(tmp_path, nanosecond: bool) -> None:
    path = tmp_path / "gen.pcapng"
    _pcapng(path, 2000, nanosecond)
    for frames in (FRAMES, 64):
        general = run_capture(path, placed=False, skip_bad=False, frames=frames)
        placed = run_capture(path, placed=True, skip_bad=False, frames=frames)
        assert_same(general, placed)
        assert placed.placed == 2000 and placed.truncated > 0


@pytest.mark.parametrize("damage", ["trailer", "interface", "caplen", "cut", "late_idb"])
def test_generated_pcapng_damage_is_the_general_readers(tmp_path, damage: str) -> None:
    path = tmp_path / "bad.pcapng"
    epbs = _pcapng(path, 900, True)
    data = bytearray(path.read_bytes())
    at = epbs[500]
    if damage == "trailer":  # framing lost: skip_bad scans on to the next block
        struct.pack_into("<I", data, at + struct.unpack_from("<I", data, at + 4)[0] - 4, 7)
    elif damage == "interface":  # an undeclared interface: that block alone
        struct.pack_into("<I", data, at + 8, 9)
    elif damage == "caplen":  # caplen above the wire length
        struct.pack_into("<I", data, at + 24, 1)
    elif damage == "cut":
        del data[-40:]
    else:  # a sound IDB among the packets: not damage, but not the fast walk's
        idb = struct.pack("<IIHHII", 1, 20, 1, 0, 0, 20)
        data[at:at] = idb
    path.write_bytes(bytes(data))
    for skip_bad in (False, True):
        general = run_capture(path, placed=False, skip_bad=skip_bad)
        placed = run_capture(path, placed=True, skip_bad=skip_bad)
        assert_same(general, placed)
        assert 0 < placed.placed <= 900
        if damage != "late_idb":
            assert general.error is not None or general.skipped


# -- the hash, frame by frame ----------------------------------------------------------------------


@needs_captures
def test_the_hash_of_every_corpus_frame_is_the_skbs() -> None:
    seen = 0
    for name in FILES:
        try:
            with open_capture(CAPTURES / name, skip_bad=True) as r:
                for p in r:
                    h, t = _place.hash(p.data, p.linktype)
                    assert_hash(p.data, p.linktype, h, t)
                    seen += 1
        except CaptureError:
            continue
    assert seen > 1000


_IP4 = st.tuples(
    st.sampled_from([0x45, 0x45, 0x45, 0x46, 0x4F, 0x44, 0x55]),  # version/IHL, some wrong
    st.sampled_from([0, 0, 0, 0x4000, 0x2000, 0x0001, 0x20FF]),  # flags/fragment offset
    st.sampled_from([1, 6, 17, 132, 136, 47, 58]),
)
_L3 = st.sampled_from(
    [b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8", b"\x91\x00", b"\x08\x06"]
)


@st.composite
def frames(draw) -> tuple[bytes, int]:
    """Frames built header by header (tags, IPv4 options, IPv6 extension headers,
    fragments, every transport), cut anywhere, under every link type the parser reads."""
    linktype = draw(st.sampled_from([1, 1, 1, 0, 101, 108, 113, 228, 229, 276, 12345]))
    ip = b""
    version = draw(st.sampled_from([4, 6]))
    if version == 4:
        vihl, frag, proto = draw(_IP4)
        ihl = (vihl & 15) * 4
        hdr = bytes([vihl, 0]) + b"\x00\x40" + b"\x00\x00" + frag.to_bytes(2, "big")
        hdr += bytes([64, proto]) + b"\x00\x00" + draw(st.binary(min_size=8, max_size=8))
        ip = hdr + draw(st.binary(min_size=max(0, ihl - 20), max_size=max(0, ihl - 20)))
    else:
        ext = st.sampled_from([0, 43, 44, 60, 51, 135, 59])
        chain = draw(st.one_of(st.lists(ext, max_size=2), st.lists(ext, max_size=18)))
        last = draw(st.sampled_from([6, 17, 58, 132, 136, 50]))
        nexts = [*chain, last]
        ip = bytes([0x60 | draw(st.sampled_from([0, 0x10])), 0, 0, 0, 0, 0x40, nexts[0], 64])
        ip += draw(st.binary(min_size=32, max_size=32))
        for here, nxt in zip(chain, nexts[1:], strict=False):
            if here == 44:
                off = draw(st.sampled_from([0, 0x0008, 0x0001]))
                ip += bytes([nxt, 0]) + off.to_bytes(2, "big") + b"\x00" * 4
            else:
                ln = draw(st.integers(0, 2))
                unit = 4 if here == 51 else 8
                ip += bytes([nxt, ln]) + b"\x00" * (unit * ln + 6)
    # The transport header, whole or in part.
    ip += draw(st.one_of(st.binary(min_size=20, max_size=24), st.binary(max_size=24)))
    if linktype == 1:
        tpid = st.sampled_from([b"\x81\x00", b"\x88\xa8", b"\x91\x00"])
        tags = draw(st.one_of(st.lists(tpid, max_size=2), st.lists(tpid, max_size=9)))
        l3 = b"\x08\x00" if version == 4 else b"\x86\xdd"
        l3 = draw(st.sampled_from([l3, l3, l3, b"\x08\x06", b"\x05\xdc"]))
        types = [*tags, l3]
        link = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb" + types[0]
        link += b"".join(b"\x00\x05" + t for t in types[1:])
    elif linktype in (0, 108):
        fam = draw(st.sampled_from([2, 10, 24, 28, 30, 7]))
        link = fam.to_bytes(4, draw(st.sampled_from(["big", "little"])))
    elif linktype == 113:
        link = b"\x00" * 14 + (b"\x08\x00" if version == 4 else b"\x86\xdd")
    elif linktype == 276:
        link = (b"\x08\x00" if version == 4 else b"\x86\xdd") + b"\x00" * 18
    else:
        link = b""
    data = link + ip
    cut = draw(st.integers(0, len(data)))
    return data[: cut if draw(st.integers(0, 3)) == 0 else len(data)], linktype


@settings(max_examples=3000, deadline=None)
@given(frames())
def test_the_hash_of_generated_frames_is_the_skbs(frame: tuple[bytes, int]) -> None:
    data, linktype = frame
    h, t = _place.hash(data, linktype)
    assert_hash(data, linktype, h, t)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([0, 1, 101, 108, 113, 228, 229, 276]))
def test_the_hash_of_random_bytes_is_the_skbs(data: bytes, linktype: int) -> None:
    h, t = _place.hash(data, linktype)
    assert_hash(data, linktype, h, t)


# -- a file truncated under the run; nothing left after it ---------------------------------------


class _SlowUntilCut:
    """A handler that takes its time until the file it is given has been cut: the
    producer fills the pool and waits for frames meanwhile, mid-file."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size

    def __call__(self, skb) -> None:
        if os.path.getsize(self.path) == self.size:
            threading.Event().wait(0.002)  # a slow handler, not a poll of a condition


@vectorized
def _to_cpu0(batch):
    n = len(batch)
    return np.full(n, XDP_REDIRECT, dtype=np.uint8), np.zeros(n, dtype=np.uint32)


@pytest.mark.slow
def test_a_file_truncated_under_the_run_is_an_error_with_its_offset(tmp_path) -> None:
    path = tmp_path / "cut.pcap"
    with PcapWriter(path) as w:
        for i in range(20_000):
            w.write(Packet(udp_frame(i % 50, i, 1000), ts_ns=i))
    size = path.stat().st_size
    cut = (size // 2) & ~4095  # a page boundary: every record past it faults
    with CpuMap(1, handler=_SlowUntilCut(str(path), size), frames=256) as m:
        m.update(0, 256)
        with m.producer(_to_cpu0, poll_size=64, backpressure=10.0) as rx:
            src = open_placing(path, batch_size=64)
            assert isinstance(src, MappedCapture)
            src.attach(rx)

            def truncate() -> None:
                wait_for(lambda: src.placed >= 500, 60, "the run to be under way")
                os.truncate(path, cut)

            t = threading.Thread(target=truncate)
            t.start()
            with src, pytest.raises(CaptureError) as info:
                while (b := src.next_batch()) is not None:
                    rx.receive(b)
            t.join()
        e = info.value
        assert e.path == str(path) and e.offset <= cut < e.offset + 16 + 1000, (e.offset, cut)
        assert "truncated" in str(e) and str(path) in str(e)
        assert src.placed < 20_000
        m.wait_idle(30)
        s = m.stats()
        assert s.rx == src.placed == sum(s.outcomes().values())
        assert s.outcomes()["delivered"] == s.rx
    assert _leftovers(path) == ([], [])


def _leftovers(path: Path) -> tuple[list[str], list[str]]:
    """This process's mappings and descriptors of ``path``."""
    name = str(path)
    with open("/proc/self/maps") as f:
        maps = [line for line in f if line.rstrip().endswith(name)]
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == name:
                fds.append(fd)
        except OSError:
            continue
    return maps, fds


def test_no_descriptor_or_mapping_is_left_after_a_run(tmp_path) -> None:
    path = tmp_path / "gen.pcap"
    path.write_bytes(_pcap_header(False, True) + b"".join(_record(False, f) for f in _frames(900)))
    src = open_placing(path)
    assert isinstance(src, MappedCapture)
    assert _leftovers(path)[0] and _leftovers(path)[1]  # the test can see them
    src.close()
    assert _leftovers(path) == ([], [])
    for skip_bad in (False, True):
        run_capture(path, placed=True, skip_bad=skip_bad)
        assert _leftovers(path) == ([], [])
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(path.read_bytes()[:-50])
    assert run_capture(bad, placed=True, skip_bad=False).error is not None
    assert _leftovers(bad) == ([], [])


def test_pipes_gzip_and_pcapng_keep_the_general_reader(tmp_path) -> None:
    import gzip

    path = tmp_path / "gen.pcap"
    path.write_bytes(_pcap_header(False, True) + b"".join(_record(False, f) for f in _frames(10)))
    gz = tmp_path / "gen.pcap.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with open_placing(gz) as r:
        assert not isinstance(r, MappedCapture) and r.compressed
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(path.read_bytes()))
    writer.start()
    with open_placing(fifo) as r:
        assert not isinstance(r, MappedCapture) and len(r.read_all()) == 10
    writer.join()


# -- what an interruption, a stalled worker and a big file leave ---------------------------------


def test_an_interrupted_poll_leaves_the_pool_whole_and_the_books_exact(tmp_path) -> None:
    """A program that raises on the third poll: the exception comes out of next_batch,
    the poll's frames are counted xdp_aborted, the rest of the lent frames go back."""
    path = tmp_path / "gen.pcap"
    path.write_bytes(_pcap_header(False, True) + b"".join(_record(False, f) for f in _frames(2000)))
    polls = []

    @vectorized
    def third_raises(batch) -> np.ndarray:
        polls.append(len(batch))
        if len(polls) == 3:
            raise KeyboardInterrupt
        return np.full(len(batch), XDP_DROP, dtype=np.uint8)

    with CpuMap(1, frames=FRAMES) as m:
        with m.producer(third_raises, poll_size=POLL) as rx:
            src = open_placing(path, batch_size=POLL)
            assert isinstance(src, MappedCapture)
            with src, pytest.raises(KeyboardInterrupt):
                src.attach(rx)
                while (b := src.next_batch()) is not None:
                    rx.receive(b)
            src.detach()
        s = m.stats()
        assert s.rx == 3 * POLL == sum(s.outcomes().values())
        assert s.outcomes()["xdp_aborted"] == POLL and s.outcomes()["xdp_drop"] == 2 * POLL
        assert m.pool.audit().whole, m.pool.audit()


class _StallOnce:
    """A handler whose first frame takes half a second: every frame stays in flight."""

    def __init__(self) -> None:
        self.stalled = False

    def __call__(self, skb) -> None:
        if not self.stalled:
            self.stalled = True
            threading.Event().wait(0.5)


@pytest.mark.slow
def test_workers_that_keep_every_frame_hand_the_file_to_the_general_path(tmp_path) -> None:
    """The producer's frame_wait passes with no frame back: the rest of the file is the
    general path's, which waits and counts no_frame as it does -- nothing lost."""
    path = tmp_path / "gen.pcap"
    path.write_bytes(_pcap_header(False, True) + b"".join(_record(False, f) for f in _frames(3000)))
    with CpuMap(1, handler=_StallOnce(), frames=256) as m:
        m.update(0, 256)
        with m.producer(_to_cpu0, poll_size=64, frame_wait=0.1, backpressure=10.0) as rx:
            src = read_in_place(path, rx, 64)
            assert src.handed_over is not None and 0 < src.placed < 3000
        m.wait_idle(30)
        s = m.stats()
        assert s.rx == 3000 == sum(s.outcomes().values()), s.outcomes()
        assert s.outcomes()["delivered"] + s.outcomes()["no_frame"] == 3000
    assert m.pool.audit().whole


def read_in_place(path: Path, rx, batch_size: int) -> MappedCapture:
    """Read ``path`` in place into ``rx`` to its end, as the CLI's feed loop does; the
    source, closed."""
    src = open_placing(path, batch_size=batch_size)
    assert isinstance(src, MappedCapture)
    with src:
        src.attach(rx)
        while (b := src.next_batch()) is not None:
            rx.receive(b)
        src.detach()
    return src


def _mapped_rss(path: Path) -> int:
    """KiB of ``path``'s mapping resident in this process (/proc/self/smaps)."""
    rss, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0] and " " in line:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return rss


def test_the_mapping_does_not_stay_resident_behind_the_walk(tmp_path) -> None:
    """RSS flat in the file's size: the pages behind the walk are unmapped as it goes
    (an 80 MB file; the mapping never holds much more than the 4 MiB between releases and
    a poll's records)."""
    path = tmp_path / "big.pcap"
    rec = _record(False, udp_frame(1, 2, 1400))
    path.write_bytes(_pcap_header(False, True) + rec * 60_000)
    peak = []

    @vectorized
    def watch(batch) -> np.ndarray:
        if len(peak) % 8 == 0:
            peak.append(_mapped_rss(path))
        else:
            peak.append(0)
        return np.full(len(batch), XDP_DROP, dtype=np.uint8)

    with CpuMap(1, frames=FRAMES) as m, m.producer(watch, poll_size=POLL) as rx:
        src = read_in_place(path, rx, POLL)
        assert src.placed == 60_000
    assert max(peak) > 1 << 10  # it was watched: the mapping does go resident
    assert max(peak) < 12 << 10, max(peak)  # KiB: not the 80 MB of the file
