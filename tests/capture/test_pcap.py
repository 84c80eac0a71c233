"""pcap reader and writer: crafted files in both byte orders, damage, streaming, round trips."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpumap.capture.reader as capture
from cpumap.abi import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW
from cpumap.capture import CaptureError, open_capture, write_capture
from cpumap.capture import CaptureErrorKind as Kind
from cpumap.capture.pcap import PcapReader, PcapWriter
from cpumap.packets import Packet, PacketBatch

NS = 1_000_000_000


def pcap_bytes(
    records: list[tuple[int, int, bytes, int]],
    *,
    order: str = "<",
    ns: bool = False,
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 65535,
    version: tuple[int, int] = (2, 4),
) -> bytes:
    """A pcap file made by hand: records are (seconds, subseconds, data, original length)."""
    magic = 0xA1B23C4D if ns else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, *version, 0, 0, snaplen, linktype)]
    for sec, sub, data, wire in records:
        out.append(struct.pack(order + "IIII", sec, sub, len(data), wire) + data)
    return b"".join(out)


def read(data: bytes, **kw: object) -> tuple[list[Packet], PcapReader]:
    with PcapReader(io.BytesIO(data), **kw) as r:  # type: ignore[arg-type]
        return list(r), r


RECS = [
    (1_700_000_000, 1, b"\x01" * 60, 60),
    (1_700_000_001, 999_999, b"\x02" * 14, 1514),  # caplen < len
    (1_700_000_002, 0, b"", 0),
    (0, 0, b"\x03" * 3, 3),
]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("ns", [False, True])
def test_reads_both_byte_orders_and_resolutions(order: str, ns: bool) -> None:
    pkts, r = read(pcap_bytes(RECS, order=order, ns=ns, linktype=LINKTYPE_LINUX_SLL))
    unit = 1 if ns else 1000
    assert r.byteorder == order and r.nanosecond is ns and r.linktypes == (LINKTYPE_LINUX_SLL,)
    assert pkts == [
        Packet(d, sec * NS + sub * unit, w, 0, LINKTYPE_LINUX_SLL) for sec, sub, d, w in RECS
    ]


def test_error_message_names_file_offset_and_reason() -> None:
    data = pcap_bytes(RECS[:1]) + struct.pack("<IIII", 5, 0, 0xFFFFFFFF, 0xFFFFFFFF) + b"x" * 40
    with pytest.raises(CaptureError) as ei:
        read(data)
    e = ei.value
    assert (e.path, e.offset) == ("<stream>", 24 + 16 + 60)
    assert str(e) == (
        "<stream>: offset 100: record caplen 4294967295 exceeds the maximum of 262144 for "
        "link type 1; the rest of the file cannot be trusted"
    )
    assert isinstance(e, ValueError) and e.kind is Kind.BAD_FRAMING
    again = pickle.loads(pickle.dumps(e))
    assert (again.path, again.offset, again.reason, again.kind, str(again)) == (
        e.path,
        e.offset,
        e.reason,
        e.kind,
        str(e),
    )


def test_huge_caplen_is_an_error_not_an_allocation() -> None:
    # The bad header is the last thing in the file, so a reader that trusted it would try to
    # read (or allocate) 4 GiB before noticing the file ends.
    data = pcap_bytes(RECS[:2]) + struct.pack("<IIII", 5, 0, 0xFFFFFFF0, 0xFFFFFFF0)
    tracemalloc.start()
    try:
        pkts, r = read(data, skip_bad=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pkts) == 2 and r.skipped == 1 and r.problems[0].offset == len(data) - 16
    assert r.problems[0].kind is Kind.BAD_FRAMING
    assert peak < 8 << 20


def test_skip_bad_stops_at_an_untrustworthy_record() -> None:
    good = pcap_bytes(RECS)
    bad = struct.pack("<IIII", 5, 0, 300_000, 300_000)
    tail = pcap_bytes(RECS)[24:]  # records that look fine but cannot be trusted to be records
    pkts, r = read(good + bad + tail, skip_bad=True)
    assert len(pkts) == len(RECS) and r.skipped == 1
    assert r.problems[0].offset == len(good)
    assert "300000 exceeds the maximum of 262144" in r.problems[0].reason
    assert r.problems[0].kind is Kind.BAD_FRAMING


def test_caplen_above_original_length_is_skipped_alone() -> None:
    recs = [RECS[0], (7, 0, b"\x09" * 20, 10), RECS[1]]
    with pytest.raises(CaptureError, match=r"offset 100: record caplen 20 exceeds its orig") as ei:
        read(pcap_bytes(recs))
    assert ei.value.kind is Kind.BAD_RECORD
    pkts, r = read(pcap_bytes(recs), skip_bad=True)
    assert [p.data for p in pkts] == [RECS[0][2], RECS[1][2]] and r.skipped == 1
    assert r.problems[0].kind is Kind.BAD_RECORD


def test_strict_hands_out_the_packets_before_the_damage() -> None:
    recs = _mixed_records(40, seed=6)
    data = pcap_bytes(recs) + struct.pack("<IIII", 1, 0, 10**6, 10**6) + bytes(100)
    got = []
    with PcapReader(io.BytesIO(data)) as r:
        with pytest.raises(CaptureError) as ei:
            for p in r:
                got.append(p)
        assert got == [Packet(d, s * NS + u * 1000, w) for s, u, d, w in recs]
        with pytest.raises(CaptureError) as again:  # and it stays broken
            next(iter(r))
        assert again.value is ei.value


def test_caplen_above_snaplen_is_kept_whole() -> None:
    pkts, r = read(pcap_bytes([(1, 0, b"\x05" * 200, 300)], snaplen=96))
    assert r.snaplen == 96 and pkts[0].caplen == 200 and pkts[0].length == 300


@pytest.mark.parametrize(
    ("cut", "offset", "reason"),
    [
        (5, 24 + 76, "record header cut short: 5 of 16 bytes at end of file"),
        (16 + 7, 24 + 76, "record cut short: caplen 14 but only 7 bytes of data at end of file"),
    ],
)
def test_truncated_last_record(cut: int, offset: int, reason: str) -> None:
    data = pcap_bytes(RECS[:2])[: 24 + 76 + cut]
    with pytest.raises(CaptureError) as ei:
        read(data)
    assert (ei.value.offset, ei.value.reason, ei.value.kind) == (offset, reason, Kind.CUT_SHORT)
    pkts, r = read(data, skip_bad=True)
    assert len(pkts) == 1 and r.skipped == 1 and r.problems[0].offset == offset


def test_link_type_field_upper_bits() -> None:
    with pytest.raises(CaptureError, match=r"offset 20: .*reserved bits 0x00300000 set") as ei:
        read(pcap_bytes(RECS, linktype=0x00300001), skip_bad=True)
    assert ei.value.kind is Kind.UNSUPPORTED
    _, r = read(pcap_bytes(RECS, linktype=0x04000000 | (2 << 28) | LINKTYPE_RAW))
    assert r.linktype == LINKTYPE_RAW and r.fcs_len == 4
    _, r = read(pcap_bytes(RECS, linktype=0x30000001))  # FCS length without its flag: ignored
    assert r.linktype == 1 and r.fcs_len is None


@pytest.mark.parametrize("version", [(1, 4), (2, 5), (3, 0)])
def test_unknown_versions_are_refused(version: tuple[int, int]) -> None:
    v = f"{version[0]}.{version[1]}"
    with pytest.raises(CaptureError, match=rf"offset 4: unsupported pcap version {v}") as ei:
        read(pcap_bytes(RECS, version=version), skip_bad=True)
    assert ei.value.kind is Kind.UNSUPPORTED


def test_old_minor_versions_are_read() -> None:
    pkts, r = read(pcap_bytes(RECS, version=(2, 2)))
    assert len(pkts) == len(RECS) and r.version == (2, 2)


def test_subsecond_field_out_of_range_is_kept() -> None:
    pkts, _ = read(pcap_bytes([(10, 1_000_000, b"x", 1), (10, 2**31, b"y", 1)]))
    assert [p.ts_ns for p in pkts] == [11 * NS, 10 * NS + 2**31 * 1000]


def test_not_a_pcap_file() -> None:
    with pytest.raises(
        CaptureError, match=r"^<stream>: offset 0: not a pcap file: magic 0a0d0d0a"
    ) as ei:
        read(b"\x0a\x0d\x0d\x0a" + bytes(40))
    assert ei.value.kind is Kind.NOT_A_CAPTURE
    with pytest.raises(CaptureError, match=r"pcap file header cut short: 10 of 24 bytes") as ei:
        read(pcap_bytes([])[:10])
    assert ei.value.kind is Kind.TOO_SHORT
    with pytest.raises(
        CaptureError, match=r"offset 0: file too short for a pcap header \(2 by"
    ) as ei:
        read(pcap_bytes([])[:2])
    assert ei.value.kind is Kind.TOO_SHORT


def test_gzip_is_detected_by_magic(tmp_path: Path) -> None:
    p = tmp_path / "capture.bin"  # no telling extension
    p.write_bytes(gzip.compress(pcap_bytes(RECS, order=">", ns=True)))
    with open_capture(p) as r:
        assert isinstance(r, PcapReader) and r.compressed
        assert [x.data for x in r] == [d for _, _, d, _ in RECS]


def test_gzip_trailer_damage_is_reported_after_every_packet() -> None:
    z = bytearray(gzip.compress(pcap_bytes(RECS)))
    z[-8] ^= 0xFF  # the CRC: every byte of the capture is there, the stream is damaged
    with open_capture(io.BytesIO(bytes(z))) as r:
        got = []
        with pytest.raises(CaptureError, match=r"gzip: CRC check failed") as ei:
            got.extend(r)
        assert len(got) == len(RECS)
    assert ei.value.kind is Kind.BAD_GZIP
    with open_capture(io.BytesIO(bytes(z)), skip_bad=True) as r:
        assert len(list(r)) == len(RECS) and r.skipped == 1
        assert r.problems[0].kind is Kind.BAD_GZIP


def test_damaged_gzip_header() -> None:
    with pytest.raises(CaptureError, match=r"^<stream>: offset 0: gzip: ") as ei:
        open_capture(io.BytesIO(b"\x1f\x8b" + b"not a deflate stream" * 3))
    assert ei.value.kind is Kind.BAD_GZIP


def test_cut_gzip_stream(tmp_path: Path) -> None:
    recs = [(i, 0, bytes([i % 256]) * 100, 100) for i in range(2000)]
    z = gzip.compress(pcap_bytes(recs), compresslevel=1)
    p = tmp_path / "cut.pcap.gz"
    p.write_bytes(z[: len(z) // 2])
    with pytest.raises(CaptureError) as ei, open_capture(p) as r:
        list(r)
    assert ei.value.path == str(p) and ei.value.offset > 24
    assert ei.value.kind is Kind.CUT_SHORT  # the record the cut went through
    with open_capture(p, skip_bad=True) as r:
        pkts = list(r)
        assert r.skipped == 1 and 0 < len(pkts) < len(recs)
    assert pkts == [Packet(d, s * NS, w) for s, _, d, w in recs[: len(pkts)]]


def _mixed_records(n: int, seed: int = 1) -> list[tuple[int, int, bytes, int]]:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([0, 1, 60, 64, 577, 1514, 9000], size=n)
    return [
        (1_600_000_000 + i, int(rng.integers(0, 1_000_000)), bytes([i % 251]) * int(s), int(s))
        for i, s in enumerate(sizes)
    ]


def test_streaming_across_tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    recs = _mixed_records(300)
    data = pcap_bytes(recs)
    expect = [Packet(d, s * NS + u * 1000, w) for s, u, d, w in recs]
    for chunk in (1, 7, 64, 5000):
        monkeypatch.setattr(capture, "CHUNK_SIZE", chunk)
        pkts, _ = read(data)
        assert pkts == expect, chunk


def test_memory_is_constant_in_file_size(tmp_path: Path) -> None:
    p = tmp_path / "big.pcap"
    rec = struct.pack("<IIII", 1, 0, 1000, 1000) + bytes(1000)
    with open(p, "wb") as f:
        f.write(pcap_bytes([]))
        for _ in range(40):
            f.write(rec * 1000)  # 40 MB in all
    tracemalloc.start()
    try:
        n = 0
        with open_capture(p) as r:
            for b in r.batches(512):
                n += len(b)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 40_000
    assert peak < 12 << 20, peak


def test_batches_are_exact_and_agree_with_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    recs = _mixed_records(1000, seed=2)
    data = pcap_bytes(recs)
    monkeypatch.setattr(capture, "CHUNK_SIZE", 20_000)  # many chunk boundaries
    pkts, _ = read(data)
    with PcapReader(io.BytesIO(data)) as r:
        sizes, got = [], []
        for b in r.batches(64):
            sizes.append(len(b))
            assert not b.buf.flags.writeable
            got.extend(b)
    assert sizes == [64] * 15 + [40]
    assert got == pkts


def test_packets_and_batches_share_one_stream() -> None:
    data = pcap_bytes(_mixed_records(50, seed=3))
    all_pkts, _ = read(data)
    with PcapReader(io.BytesIO(data), batch_size=8) as r:
        head = []
        for p in r:
            head.append(p)
            if len(head) == 3:
                break
        b = next(r.batches())
        mid = list(b)
        rest = list(r)
    assert head + mid + rest == all_pkts and len(mid) == 8


def test_read_all_and_close() -> None:
    r = PcapReader(io.BytesIO(pcap_bytes(RECS)))
    batch = r.read_all()
    assert list(batch) == [Packet(d, s * NS + u * 1000, w) for s, u, d, w in RECS]
    r.close()
    r.close()  # idempotent


# --- writer ----------------------------------------------------------------------------------


def test_writer_round_trip_and_header(tmp_path: Path) -> None:
    pkts = [
        Packet(b"\xaa" * 60, 1_700_000_000_123_456_789, 60, 0, LINKTYPE_RAW),
        Packet(b"\xbb" * 10, 5, 1500, 0, LINKTYPE_RAW),
    ]
    p = tmp_path / "w.pcap"
    assert write_capture(p, pkts, format="pcap") == 2
    raw = p.read_bytes()
    assert struct.unpack_from("<IHHiIII", raw) == (0xA1B23C4D, 2, 4, 0, 0, 262144, LINKTYPE_RAW)
    with open_capture(p) as r:
        assert list(r) == pkts


def test_writer_microseconds_floor(tmp_path: Path) -> None:
    p = tmp_path / "us.pcap"
    write_capture(p, [Packet(b"x", 1_999_999_999)], format="pcap", nanosecond=False)
    with open_capture(p) as r:
        assert not r.nanosecond and next(iter(r)).ts_ns == 1_999_999_000


def test_writer_refuses_what_pcap_cannot_hold() -> None:
    w = PcapWriter(io.BytesIO(), linktype=LINKTYPE_ETHERNET)
    with pytest.raises(ValueError, match=r"^pcap holds one link type: file has 1, packet has 101$"):
        w.write(Packet(b"x", linktype=LINKTYPE_RAW))
    with pytest.raises(ValueError, match=r"does not fit a pcap record"):
        w.write(Packet(b"x", -1))
    with pytest.raises(ValueError, match=r"^caplen 2 exceeds the wire length 1$"):
        w.write(Packet(b"xy", 0, 1))
    with pytest.raises(ValueError, match=r"exceeds the maximum of 262144"):
        w.write(Packet(bytes(262145)))
    w.close()
    with pytest.raises(ValueError, match=r"closed"):
        w.write(b"x")


def test_write_batch_equals_write() -> None:
    pkts = [Packet(bytes([i]) * (i * 7 % 100), i * 1000 + 7, 2000, 0, 1) for i in range(200)]
    one, many = io.BytesIO(), io.BytesIO()
    with PcapWriter(one) as w:
        for p in pkts:
            w.write(p)
    with PcapWriter(many) as w:
        w.write_batch(PacketBatch.from_packets(pkts[:150]))
        w.write_batch(PacketBatch.from_packets(pkts[150:]))
        assert w.count == 200
    assert one.getvalue() == many.getvalue()


def test_empty_writer_still_writes_a_header() -> None:
    f = io.BytesIO()
    PcapWriter(f).close()
    pkts, r = read(f.getvalue())
    assert pkts == [] and r.linktype == LINKTYPE_ETHERNET


# --- properties ------------------------------------------------------------------------------

packets = st.lists(
    st.builds(
        Packet,
        data=st.binary(max_size=80),
        ts_ns=st.integers(0, (1 << 32) * NS - 1),
        wire_len=st.integers(80, 100_000),
        ifindex=st.just(0),
        linktype=st.just(LINKTYPE_ETHERNET),
        rx_queue=st.just(0),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(pkts=packets, ns=st.booleans())
def test_round_trip(pkts: list[Packet], ns: bool) -> None:
    f = io.BytesIO()
    with PcapWriter(f, nanosecond=ns) as w:
        for p in pkts:
            w.write(p)
    got, _ = read(f.getvalue())
    floor = 1 if ns else 1000
    assert got == [p._replace(ts_ns=p.ts_ns // floor * floor) for p in pkts]


records = st.lists(
    st.tuples(
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=40),
        st.integers(0, 60),
    ).map(lambda t: (t[0], t[1], t[2], len(t[2]) + t[3])),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(recs=records, order=st.sampled_from("<>"), ns=st.booleans())
def test_crafted_files_in_either_byte_order(
    recs: list[tuple[int, int, bytes, int]], order: str, ns: bool
) -> None:
    got, _ = read(pcap_bytes(recs, order=order, ns=ns))
    unit = 1 if ns else 1000
    assert got == [Packet(d, s * NS + u * unit, w) for s, u, d, w in recs]


def _clean_or_positioned(data: bytes, skip_bad: bool) -> list[Packet] | CaptureError:
    try:
        pkts, r = read(data, skip_bad=skip_bad)
    except CaptureError as e:
        assert 0 <= e.offset <= len(data) and e.path == "<stream>"
        assert isinstance(e.kind, Kind)
        return e
    assert r.skipped == len(r.problems)
    return pkts


def test_truncation_at_every_byte() -> None:
    data = pcap_bytes(RECS, order=">", ns=True)
    full, _ = read(data)
    bounds = {24, 24 + 76, 24 + 76 + 30, 24 + 76 + 30 + 16, len(data)}
    for cut in range(len(data) + 1):
        strict = _clean_or_positioned(data[:cut], False)
        lenient = _clean_or_positioned(data[:cut], True)
        if cut < 24:
            assert isinstance(strict, CaptureError) and isinstance(lenient, CaptureError)
            continue
        assert isinstance(lenient, list) and lenient == full[: len(lenient)]
        if cut in bounds:
            assert strict == lenient
        else:
            assert isinstance(strict, CaptureError) and strict.offset >= 24


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1),
    skip_bad=st.booleans(),
)
def test_corruption_gives_packets_or_a_positioned_error(
    flips: list[tuple[int, int]], skip_bad: bool
) -> None:
    data = bytearray(pcap_bytes(_mixed_records(20, seed=4)[:6]))
    for at, x in flips:
        data[at % len(data)] ^= x
    out = _clean_or_positioned(bytes(data), skip_bad)
    if skip_bad and isinstance(out, CaptureError):
        assert out.offset in (0, 4, 20)  # only a file header error survives skip_bad
