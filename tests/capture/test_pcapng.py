"""pcapng reader and writer: crafted sections in both byte orders, every block kind, damage,
resynchronisation, streaming and round trips."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpumap.capture.reader as capture
from cpumap.abi import LINKTYPE_ETHERNET, LINKTYPE_NULL, LINKTYPE_RAW
from cpumap.capture import (
    CaptureError,
    Interface,
    PcapngReader,
    PcapngWriter,
    open_capture,
    write_capture,
)
from cpumap.capture import CaptureErrorKind as Kind
from cpumap.capture.pcapng import MAX_INTERFACE_ID
from cpumap.packets import Packet, PacketBatch

NS = 1_000_000_000


# --- crafting --------------------------------------------------------------------------------


def opt(code: int, value: bytes, o: str = "<") -> bytes:
    return struct.pack(o + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def block(btype: int, body: bytes, o: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(o + "II", btype, n) + body + struct.pack(o + "I", n)


def shb(o: str = "<", version: tuple[int, int] = (1, 0), options: bytes = b"") -> bytes:
    body = struct.pack(o + "IHHq", 0x1A2B3C4D, *version, -1) + options
    return block(0x0A0D0D0A, body, o)


def idb(
    linktype: int = 1,
    snaplen: int = 0,
    o: str = "<",
    tsresol: int | None = None,
    tsoffset: int | None = None,
    name: str | None = None,
) -> bytes:
    opts = b""
    if name is not None:
        opts += opt(2, name.encode(), o)
    if tsresol is not None:
        opts += opt(9, bytes([tsresol]), o)
    if tsoffset is not None:
        opts += opt(14, struct.pack(o + "q", tsoffset), o)
    if opts:
        opts += opt(0, b"", o)
    return block(1, struct.pack(o + "HHI", linktype, 0, snaplen) + opts, o)


def epb(
    iface: int, ts: int, data: bytes, orig: int | None = None, o: str = "<", options: bytes = b""
) -> bytes:
    orig = len(data) if orig is None else orig
    body = struct.pack(o + "5I", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), orig)
    body += data + b"\0" * (-len(data) % 4) + options
    return block(6, body, o)


def spb(orig: int, data: bytes, o: str = "<") -> bytes:
    return block(3, struct.pack(o + "I", orig) + data, o)


def pb(iface: int, ts: int, data: bytes, orig: int | None = None, o: str = "<") -> bytes:
    orig = len(data) if orig is None else orig
    hdr = struct.pack(o + "HHIIII", iface, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), orig)
    return block(2, hdr + data, o)


def read(data: bytes, **kw: object) -> tuple[list[Packet], PcapngReader]:
    with PcapngReader(io.BytesIO(data), **kw) as r:  # type: ignore[arg-type]
        return list(r), r


def P(data: bytes, ts: int = 0, wire: int = -1, ifindex: int = 0, lt: int = 1) -> Packet:
    return Packet(data, ts, len(data) if wire < 0 else wire, ifindex, lt)


A, B, C = b"\xaa" * 60, b"\xbb" * 33, b"\xcc" * 4


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("o", ["<", ">"])
def test_every_packet_block_kind(o: str) -> None:
    data = (
        shb(o, options=opt(4, b"test", o) + opt(0, b"", o))
        + idb(LINKTYPE_ETHERNET, 40, o, name="eth0")
        + idb(LINKTYPE_RAW, 0, o, tsresol=9)
        + block(4, b"\x01\x00\x04\x00\x0a\x00\x00\x01" + b"\0" * 4, o)  # NRB
        + epb(0, 1_500_000_000_000_001, A, 100, o)
        + spb(60, A, o)  # caplen = min(60, snaplen 40)
        + block(5, struct.pack(o + "III", 0, 0, 0), o)  # ISB
        + pb(1, 7 * NS + 5, B, None, o)
        + block(0xBAD, b"\0" * 8, o)
        + block(0x40000BAD, b"\0" * 8, o)
        + block(0x12345678, b"whatever", o)  # unknown: skipped by its length
        + epb(1, 42, C, None, o)
    )
    pkts, r = read(data)
    assert pkts == [
        P(A, 1_500_000_000_000_001_000, 100),
        P(A[:40], 0, 60),
        P(B, 7 * NS + 5, ifindex=1, lt=LINKTYPE_RAW),
        P(C, 42, ifindex=1, lt=LINKTYPE_RAW),
    ]
    assert r.linktypes == (LINKTYPE_ETHERNET, LINKTYPE_RAW) and r.skipped == 0
    assert r.interfaces[0] == Interface(0, 0, LINKTYPE_ETHERNET, 40, 10**6, 0, "eth0")


def test_sections_have_their_own_byte_order_and_interfaces() -> None:
    data = (
        shb("<")
        + idb(LINKTYPE_ETHERNET, o="<")
        + idb(LINKTYPE_NULL, o="<")
        + epb(1, 1, A, o="<")
        + shb(">")
        + idb(LINKTYPE_RAW, o=">", tsresol=3)
        + epb(0, 2, B, o=">")
        + shb("<")
        + idb(LINKTYPE_ETHERNET, o="<", tsresol=0x80 | 10)
        + epb(0, 3 * 1024 + 512, C, o="<")
    )
    pkts, r = read(data)
    assert pkts == [
        P(A, 1000, ifindex=1, lt=LINKTYPE_NULL),
        P(B, 2_000_000, lt=LINKTYPE_RAW),
        P(C, 3 * NS + NS // 2),
    ]
    assert r.sections == 3 and [(i.section, i.id) for i in r.interfaces] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (2, 0),
    ]


@pytest.mark.parametrize(
    ("tsresol", "ts", "ns"),
    [
        (6, 1_234_567, 1_234_567_000),
        (9, 2**63 - 1, 2**63 - 1),
        (0, 3, 3 * NS),
        (12, 1_000_000_000_999, 1_000_000_000),  # finer than ns: floored
        (0x80 | 8, 50, 50 * NS // 256),  # 2^-8 s: 0.1953125 s, exact
        (0x80 | 40, 3 * 2**40 + 1, 3 * NS),  # 2^-40 s: the exact big-integer path, floored
        (0x80 | 0, 5, 5 * NS),
        (19, 10**19, NS),
        (100, 7 * 10**100 // 10**100, 0),  # absurd, but exact
    ],
)
def test_if_tsresol_both_forms(tsresol: int, ts: int, ns: int) -> None:
    data = shb() + idb(tsresol=tsresol) + epb(0, ts, A)
    pkts, _ = read(data)
    assert pkts[0].ts_ns == ns


def test_if_tsoffset_and_mixed_resolutions_in_one_run() -> None:
    data = (
        shb()
        + idb(tsoffset=1_000_000)
        + idb(tsresol=9, tsoffset=-5)
        + b"".join(epb(i % 2, 10 * NS + i, A) for i in range(6))
    )
    pkts, _ = read(data)
    assert [p.ts_ns for p in pkts] == [
        ((10 * NS + i) * 1000 + 1_000_000 * NS) if i % 2 == 0 else (10 * NS + i - 5 * NS)
        for i in range(6)
    ]


def test_header_is_read_on_open() -> None:
    data = shb() + idb(LINKTYPE_RAW) + block(4, b"\0" * 4) + idb(LINKTYPE_NULL) + epb(0, 0, A)
    with PcapngReader(io.BytesIO(data)) as r:
        assert r.linktypes == (LINKTYPE_RAW, LINKTYPE_NULL)
        assert len(list(r)) == 1


# --- damage ----------------------------------------------------------------------------------


def test_block_length_not_a_multiple_of_4_is_named(tmp_path: Path) -> None:
    good = shb() + idb() + epb(0, 0, A)
    bad = struct.pack("<II", 6, 3) + bytes(40)
    p = tmp_path / "x.pcapng"
    p.write_bytes(good + bad)
    with pytest.raises(CaptureError) as ei, open_capture(p) as r:
        list(r)
    assert str(ei.value) == f"{p}: offset {len(good)}: block total length 3 is not a multiple of 4"
    assert (ei.value.path, ei.value.offset) == (str(p), len(good))
    assert ei.value.kind is Kind.BAD_FRAMING


def test_trailer_mismatch_in_a_run_resynchronises() -> None:
    head = shb() + idb()
    e1, e2, e3, e4 = (epb(0, i, bytes([i]) * (10 + i)) for i in range(4))
    broken = e2[:-4] + struct.pack("<I", 999)
    data = head + e1 + broken + e3 + e4
    with pytest.raises(CaptureError) as ei:
        read(data)
    at = len(head + e1)
    assert ei.value.offset == at
    assert ei.value.reason == f"block total length {len(e2)} does not match its trailer 999"
    assert ei.value.kind is Kind.BAD_FRAMING
    pkts, r = read(data, skip_bad=True)
    assert [p.data for p in pkts] == [bytes([0]) * 10, bytes([2]) * 12, bytes([3]) * 13]
    assert r.skipped == 1 and r.problems[0].offset == at
    assert r.problems[0].kind is Kind.BAD_FRAMING


def test_garbage_between_blocks_is_scanned_past(monkeypatch: pytest.MonkeyPatch) -> None:
    head = shb() + idb() + epb(0, 1, A)
    garbage = struct.pack("<II", 6, 10_000) + bytes(range(256)) * 3  # a lying length
    tail = epb(0, 2, B) + spb(33, B) + epb(0, 3, C)
    data = head + garbage + tail
    for chunk in (1 << 20, 13, 64):  # resync across chunk boundaries too
        monkeypatch.setattr(capture, "CHUNK_SIZE", chunk)
        pkts, r = read(data, skip_bad=True)
        assert [p.data for p in pkts] == [A, B, B, C], chunk
        assert r.skipped == 1 and r.problems[0].offset == len(head)
        assert r.problems[0].kind is Kind.CUT_SHORT  # a lying length reads as a cut block


@pytest.mark.parametrize(
    ("bad", "reason", "kind"),
    [
        (epb(5, 0, A), "packet names interface 5 but section 0 has declared 1", Kind.BAD_RECORD),
        (epb(0, 0, A, orig=10), "caplen 60 exceeds its original length 10", Kind.BAD_RECORD),
        (
            block(6, struct.pack("<5I", 0, 0, 0, 500, 500) + bytes(8)),
            "caplen 500 does not fit in its block (8 bytes of packet data)",
            Kind.BAD_RECORD,
        ),
        (
            block(6, struct.pack("<5I", 0, 0, 0, 300_000, 300_000) + bytes(300_000)),
            "caplen 300000 exceeds the maximum of 262144 for link type 1",
            Kind.BAD_RECORD,
        ),
        (pb(3, 0, A), "packet names interface 3 but section 0 has declared 1", Kind.BAD_RECORD),
        (
            block(6, bytes(8)),
            "block of type 0x6 is 20 bytes, below its minimum of 32",
            Kind.BAD_BLOCK,
        ),
    ],
)
def test_damaged_packet_blocks_are_skipped_alone(bad: bytes, reason: str, kind: Kind) -> None:
    head = shb() + idb() + epb(0, 1, A)
    data = head + bad + epb(0, 2, B)
    with pytest.raises(CaptureError) as ei:
        read(data)
    assert (ei.value.offset, ei.value.reason, ei.value.kind) == (len(head), reason, kind)
    pkts, r = read(data, skip_bad=True)
    assert [p.data for p in pkts] == [A, B] and r.skipped == 1
    assert r.problems[0].kind is kind


def test_strict_hands_out_the_packets_before_the_damage() -> None:
    data = shb() + idb() + epb(0, 1, A) + idb(LINKTYPE_RAW) + epb(1, 2, B) + epb(7, 3, C)
    with PcapngReader(io.BytesIO(data)) as r:
        got = []
        with pytest.raises(CaptureError, match="names interface 7"):
            for b in r.batches(1):
                got.extend(b)
        assert got == [P(A, 1000), P(B, 2000, ifindex=1, lt=LINKTYPE_RAW)]
        assert len(r.interfaces) == 2  # the chunk was parsed twice; its IDB counts once
        with pytest.raises(CaptureError, match="names interface 7"):
            list(r)


def test_damaged_interface_keeps_its_id() -> None:
    bad_idb = block(1, struct.pack("<HHI", 1, 0, 0) + opt(9, b"\x06\x06"))
    data = shb() + idb() + bad_idb + idb(LINKTYPE_RAW) + epb(1, 0, A) + epb(2, 0, B) + epb(1, 0, C)
    with pytest.raises(CaptureError, match=r"interface 1 description: if_tsresol has length 2"):
        read(data)
    pkts, r = read(data, skip_bad=True)
    assert pkts == [P(B, ifindex=2, lt=LINKTYPE_RAW)]
    assert r.skipped == 3
    assert r.problems[1].reason == "packet names interface 1, whose description block was damaged"
    kinds = [p.kind for p in r.problems]
    assert kinds == [Kind.BAD_BLOCK, Kind.BAD_RECORD, Kind.BAD_RECORD]


def test_option_running_past_its_block() -> None:
    bad_idb = block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 2, 200) + b"eth0")
    with pytest.raises(CaptureError, match=r"option 2 of length 200 runs past the end") as ei:
        read(shb() + bad_idb)
    assert ei.value.kind is Kind.BAD_BLOCK


def test_spb_without_interface_zero() -> None:
    data = shb() + spb(4, C)
    with pytest.raises(
        CaptureError, match=r"simple packet block, but interface 0 is not declared"
    ) as ei:
        read(data)
    assert ei.value.kind is Kind.BAD_RECORD


def test_unsupported_version_skips_the_section() -> None:
    data = (
        shb()
        + idb()
        + epb(0, 1, A)
        + shb(version=(2, 0))
        + idb()
        + epb(0, 2, B)
        + shb(">")
        + idb(o=">")
        + epb(0, 3, C, o=">")
    )
    second = len(shb() + idb() + epb(0, 1, A))
    with pytest.raises(CaptureError) as ei:
        read(data)
    assert ei.value.offset == second
    assert ei.value.reason == "unsupported pcapng version 2.0 (readable: 1.0, 1.2)"
    assert ei.value.kind is Kind.UNSUPPORTED
    pkts, r = read(data, skip_bad=True)
    assert [p.data for p in pkts] == [A, C] and r.skipped == 1
    assert r.problems[0].reason.endswith("; section skipped")
    assert r.problems[0].kind is Kind.UNSUPPORTED


def test_version_1_2_is_read() -> None:
    pkts, _ = read(shb(version=(1, 2)) + idb() + epb(0, 0, A))
    assert len(pkts) == 1


@pytest.mark.parametrize("cut", [3, 8, 20])
def test_truncated_last_block(cut: int) -> None:
    head = shb() + idb() + epb(0, 0, A)
    data = head + epb(0, 1, B)[:cut]
    with pytest.raises(CaptureError, match=rf"offset {len(head)}: block (header )?cut short") as ei:
        read(data)
    assert ei.value.kind is Kind.CUT_SHORT
    pkts, r = read(data, skip_bad=True)
    assert len(pkts) == 1 and r.skipped == 1


@pytest.mark.parametrize("cut", [4, 11, 20, 27])
def test_a_file_cut_inside_its_first_section_header_is_too_short(cut: int) -> None:
    data = (shb() + idb())[:cut]
    with pytest.raises(CaptureError, match=r"^<stream>: offset 0: block (header )?cut short") as ei:
        read(data)
    assert ei.value.kind is Kind.TOO_SHORT


def test_bad_first_section_header() -> None:
    bad_bom = shb()[:8] + b"\x01\x02\x03\x04" + shb()[12:]
    data = bad_bom + shb() + idb() + epb(0, 0, A)
    with pytest.raises(
        CaptureError, match=r"^<stream>: offset 0: section header byte-order magic"
    ) as ei:
        read(data)
    assert ei.value.kind is Kind.BAD_FRAMING
    pkts, r = read(data, skip_bad=True)
    assert [p.data for p in pkts] == [A] and r.skipped == 1


def test_not_a_pcapng_file() -> None:
    with pytest.raises(CaptureError, match=r"offset 0: not a pcapng file: magic d4c3b2a1") as ei:
        read(b"\xd4\xc3\xb2\xa1" + bytes(20))
    assert ei.value.kind is Kind.NOT_A_CAPTURE
    with pytest.raises(CaptureError, match=r"offset 0: file too short for a pcapng header") as ei:
        read(b"\x0a\x0d")
    assert ei.value.kind is Kind.TOO_SHORT


def test_gzip_and_open_capture(tmp_path: Path) -> None:
    p = tmp_path / "x.pcap"  # a lying extension
    p.write_bytes(gzip.compress(shb(">") + idb(o=">") + epb(0, 5, A, o=">")))
    with open_capture(p) as r:
        assert isinstance(r, PcapngReader) and r.compressed
        assert list(r) == [P(A, 5000)]


def test_unknown_magic(tmp_path: Path) -> None:
    p = tmp_path / "junk.pcap"
    p.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(
        CaptureError, match=r"^.*junk.pcap: offset 0: unknown magic 47494638: "
    ) as ei:
        open_capture(p)
    assert ei.value.kind is Kind.NOT_A_CAPTURE
    p.write_bytes(b"")
    with pytest.raises(CaptureError, match=r"offset 0: empty file") as ei:
        open_capture(p)
    assert ei.value.kind is Kind.TOO_SHORT
    p.write_bytes(b"\xd4\xc3")
    with pytest.raises(CaptureError, match=r"offset 0: file too short \(2 bytes\)") as ei:
        open_capture(p)
    assert ei.value.kind is Kind.TOO_SHORT


def test_batches_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    blocks = [shb(), idb()]
    expect = []
    for i in range(500):
        d = bytes([i % 256]) * int(rng.integers(0, 300))
        if i % 50 == 0:
            blocks.append(spb(len(d), d))
            expect.append(P(d, 0, len(d)))
        else:
            blocks.append(epb(0, i, d, len(d) + 1))
            expect.append(P(d, i * 1000, len(d) + 1))
        if i % 97 == 0:
            blocks.append(block(5, bytes(12)))
    data = b"".join(blocks)
    monkeypatch.setattr(capture, "CHUNK_SIZE", 4096)
    with PcapngReader(io.BytesIO(data)) as r:
        got = [list(b) for b in r.batches(100)]
    assert [len(b) for b in got] == [100] * 5
    assert [p for b in got for p in b] == expect


# --- writer ----------------------------------------------------------------------------------


def test_writer_interfaces_follow_ifindex(tmp_path: Path) -> None:
    pkts = [
        P(A, 1, ifindex=2, lt=LINKTYPE_RAW),
        P(B, 2**62, 40, ifindex=0),
        P(C, 3, ifindex=2, lt=LINKTYPE_RAW),
    ]
    p = tmp_path / "w.pcapng"
    assert write_capture(p, pkts) == 3
    with open_capture(p) as r:
        assert list(r) == pkts
        assert [(i.id, i.linktype, i.units_per_second) for i in r.interfaces] == [
            (0, LINKTYPE_ETHERNET, 10**9),  # filled the gap: the writer's default link type
            (1, LINKTYPE_ETHERNET, 10**9),
            (2, LINKTYPE_RAW, 10**9),
        ]


def test_writer_refusals() -> None:
    w = PcapngWriter(io.BytesIO())
    w.write(P(A, ifindex=1, lt=LINKTYPE_RAW))
    with pytest.raises(ValueError, match=r"^interface 1 has link type 101, packet has 1$"):
        w.write(P(A, ifindex=1))
    with pytest.raises(ValueError, match=rf"^ifindex {MAX_INTERFACE_ID + 1} is out of range"):
        w.write(P(A, ifindex=MAX_INTERFACE_ID + 1))
    with pytest.raises(ValueError, match=r"^timestamp -1 ns is negative$"):
        w.write(P(A, -1))
    with pytest.raises(ValueError, match=r"^caplen 60 exceeds the wire length 59$"):
        w.write(P(A, 0, 59))
    w.close()
    w.close()


def test_write_batch_equals_write() -> None:
    pkts = [P(bytes([i % 256]) * (i % 70), i * 12345, 100, ifindex=i % 3) for i in range(300)]
    one, many = io.BytesIO(), io.BytesIO()
    with PcapngWriter(one) as w:
        for p in pkts:
            w.write(p)
    with PcapngWriter(many) as w:
        w.write_batch(PacketBatch.from_packets(pkts[:1]))
        w.write_batch(PacketBatch.from_packets(pkts[1:]))
        assert w.count == 300
    # Same packets; the batch writer declares a batch's interfaces before its packets.
    assert read(one.getvalue())[0] == read(many.getvalue())[0] == pkts


def test_writer_microseconds(tmp_path: Path) -> None:
    p = tmp_path / "us.pcapng"
    write_capture(p, [P(A, 1_999_999_999)], nanosecond=False)
    with open_capture(p) as r:
        assert next(iter(r)).ts_ns == 1_999_999_000 and r.interfaces[0].units_per_second == 10**6


# --- properties ------------------------------------------------------------------------------

packets = st.lists(
    st.builds(
        Packet,
        data=st.binary(max_size=70),
        ts_ns=st.integers(0, 2**63 - 1),
        wire_len=st.integers(70, 10_000),
        ifindex=st.integers(0, 3),
        linktype=st.just(LINKTYPE_ETHERNET),
        rx_queue=st.just(0),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(pkts=packets, ns=st.booleans(), as_batch=st.booleans())
def test_round_trip(pkts: list[Packet], ns: bool, as_batch: bool) -> None:
    f = io.BytesIO()
    with PcapngWriter(f, nanosecond=ns) as w:
        if as_batch:
            w.write_batch(PacketBatch.from_packets(pkts))
        else:
            for p in pkts:
                w.write(p)
    got, _ = read(f.getvalue())
    floor = 1 if ns else 1000
    assert got == [p._replace(ts_ns=p.ts_ns // floor * floor) for p in pkts]


@settings(max_examples=60, deadline=None)
@given(
    secs=st.lists(
        st.tuples(
            st.sampled_from("<>"),
            st.lists(st.tuples(st.binary(max_size=20), st.integers(0, 2**50)), max_size=4),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_crafted_sections_in_either_byte_order(
    secs: list[tuple[str, list[tuple[bytes, int]]]],
) -> None:
    data = b"".join(
        shb(o) + idb(o=o, tsresol=9) + b"".join(epb(0, t, d, o=o) for d, t in recs)
        for o, recs in secs
    )
    got, r = read(data)
    assert got == [P(d, t) for _, recs in secs for d, t in recs]
    assert r.sections == len(secs)


SMALL = (
    shb(">", options=opt(4, b"x", ">") + opt(0, b"", ">"))
    + idb(o=">", snaplen=16)
    + epb(0, 1, A, o=">")
    + block(4, bytes(4), ">")
    + spb(20, C * 4, ">")
    + shb("<")
    + idb(LINKTYPE_RAW, tsresol=9)
    + epb(0, 2, B)
)


def _clean_or_positioned(data: bytes, skip_bad: bool) -> list[Packet] | CaptureError:
    try:
        pkts, r = read(data, skip_bad=skip_bad)
    except CaptureError as e:
        assert 0 <= e.offset <= len(data)
        assert isinstance(e.kind, Kind)
        return e
    assert r.skipped >= len(r.problems)
    return pkts


def test_truncation_at_every_byte() -> None:
    full, _ = read(SMALL)
    for cut in range(len(SMALL) + 1):
        strict = _clean_or_positioned(SMALL[:cut], False)
        lenient = _clean_or_positioned(SMALL[:cut], True)
        if cut < 4:
            assert isinstance(strict, CaptureError) and isinstance(lenient, CaptureError)
            continue
        assert isinstance(lenient, list) and lenient == full[: len(lenient)]
        assert strict == lenient or isinstance(strict, CaptureError)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1),
    skip_bad=st.booleans(),
)
def test_corruption_gives_packets_or_a_positioned_error(
    flips: list[tuple[int, int]], skip_bad: bool
) -> None:
    data = bytearray(SMALL)
    for at, x in flips:
        data[at % len(data)] ^= x
    out = _clean_or_positioned(bytes(data), skip_bad)
    if skip_bad and isinstance(out, CaptureError):
        assert out.offset == 0 and "not a pcapng file" in out.reason
