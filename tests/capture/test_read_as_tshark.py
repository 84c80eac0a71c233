"""Three ways the readers once parted from TShark, on crafted files.

* strict ``batches(n)`` of every ``n`` hands out exactly the packets iteration does before
  it raises at the damage;
* link type 12 is raw IP (libpcap on Linux and TShark read it so), in pcap and pcapng;
* a pcapng timestamp whose high word is 0xffffffff is read, not damage, its exact time kept
  (compared with TShark's ``frame.time_epoch`` where TShark is installed).
"""

from __future__ import annotations

import io
import ipaddress
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from cpumap.abi import LINKTYPE_RAW
from cpumap.capture import (
    TS_TOO_LATE,
    CaptureError,
    PcapngReader,
    PcapReader,
    WideTime,
    open_capture,
)
from cpumap.skb import Skb

from .test_pcap import pcap_bytes
from .test_pcapng import epb, idb, shb

NS = 1_000_000_000


def _records(n: int) -> list[tuple[int, int, bytes, int]]:
    return [(1_700_000_000 + i, i, bytes([i % 256]) * (20 + i % 50), 20 + i % 50) for i in range(n)]


def _damaged_pcap(good: int) -> bytes:
    """``good`` records, then one whose caplen is absurd (damage at record good + 1)."""
    return pcap_bytes(_records(good)) + struct.pack("<IIII", 1, 0, 10**6, 10**6) + bytes(64)


def _iterated(data: bytes) -> list[bytes]:
    got = []
    with PcapReader(io.BytesIO(data)) as r, pytest.raises(CaptureError):
        for p in r:
            got.append(p.data)
    return got


@pytest.mark.parametrize("good", [0, 1, 6, 7, 64])
def test_strict_batches_of_every_size_hand_out_what_iteration_does(good: int) -> None:
    data = _damaged_pcap(good)
    want = _iterated(data)
    assert len(want) == good
    for n in range(1, good + 3):
        got: list[bytes] = []
        with PcapReader(io.BytesIO(data)) as r:
            with pytest.raises(CaptureError) as ei:
                for b in r.batches(n):
                    assert len(b) <= n
                    got.extend(b.packet(i).data for i in range(len(b)))
            assert got == want, f"batches({n})"
            with pytest.raises(CaptureError) as again:  # and it stays broken
                next(r.batches(n))
            assert again.value is ei.value


def test_strict_batches_hand_out_the_packets_before_damage_in_pcapng() -> None:
    frames = [bytes([i]) * 40 for i in range(7)]
    data = shb() + idb() + b"".join(epb(0, i, f) for i, f in enumerate(frames))
    data += epb(5, 0, b"x" * 40)  # names an undeclared interface: damage
    for n in (1, 2, 4, 8, 100):
        got: list[bytes] = []
        with PcapngReader(io.BytesIO(data)) as r, pytest.raises(CaptureError):
            for b in r.batches(n):
                got.extend(b.packet(i).data for i in range(len(b)))
        assert got == frames, n


IPV4_UDP = bytes.fromhex(
    "4500001c000100004011f97c0a0000010a000002"  # 10.0.0.1 -> 10.0.0.2, UDP
    "04d2162e00080000"  # 1234 -> 5678
)


def test_link_type_12_is_raw_ip_in_pcap() -> None:
    data = pcap_bytes([(1, 0, IPV4_UDP, len(IPV4_UDP))], linktype=12)
    with PcapReader(io.BytesIO(data)) as r:
        assert r.linktype == LINKTYPE_RAW
        (p,) = list(r)
    assert p.linktype == LINKTYPE_RAW
    skb = Skb(p.data, wire_len=p.wire_len, linktype=p.linktype)
    assert (skb.sport, skb.dport, skb.ip_proto) == (1234, 5678, 17)
    assert skb.hash != 0


def test_link_type_12_is_raw_ip_in_pcapng() -> None:
    data = shb() + idb(linktype=12) + epb(0, 5, IPV4_UDP)
    with PcapngReader(io.BytesIO(data)) as r:
        (p,) = list(r)
        assert r.interfaces[0].linktype == LINKTYPE_RAW
    assert p.linktype == LINKTYPE_RAW


def _wide_pcapng(n_normal: int, n_wide: int) -> tuple[bytes, list[int]]:
    """Interface 0 stamps sanely; interface 1 stamps with a high word of 0xffffffff."""
    data = shb() + idb() + idb()
    wide = []
    for i in range(max(n_normal, n_wide)):
        if i < n_normal:
            data += epb(0, 1_700_000_000_000_000 + i, bytes([1]) * 60)
        if i < n_wide:
            ts = (0xFFFFFFFF << 32) | (0x1234 + i)
            wide.append(ts)
            data += epb(1, ts, bytes([2]) * 60)
    return data, wide


def test_timestamps_past_int64_ns_are_read_and_kept_exactly() -> None:
    data, wide = _wide_pcapng(59, 100)
    with PcapngReader(io.BytesIO(data)) as r:
        batch = r.read_all()
        assert r.skipped == 0 and not r.problems
        times = r.wide_times
    assert len(batch) == 159  # none lost as damage
    saturated = [i for i in range(len(batch)) if batch.ts_ns[i] == TS_TOO_LATE]
    assert [int(batch.ifindex[i]) for i in saturated] == [1] * 100
    assert [t.ts for t in times] == wide
    t = times[0]
    assert t.ns == (wide[0] // 10**6) * NS + (wide[0] % 10**6) * 1000
    assert t.seconds == f"{wide[0] // 10**6}.{(wide[0] % 10**6) * 1000:09d}"
    assert t.seconds.startswith("184467440")  # 2**64 us is 18446744073709.551616 s


def test_wide_times_survive_batches_and_a_strict_stop() -> None:
    data, wide = _wide_pcapng(3, 5)
    data += epb(7, 0, b"x" * 40)  # damage after the last packet
    for n in (1, 3, 64):
        with PcapngReader(io.BytesIO(data)) as r:
            got = 0
            with pytest.raises(CaptureError):
                for b in r.batches(n):
                    got += int((b.ts_ns == TS_TOO_LATE).sum())
            assert got == 5 and [t.ts for t in r.wide_times] == wide


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


@needs_tshark
def test_wide_times_equal_tshark(tmp_path: Path) -> None:
    data, _ = _wide_pcapng(3, 4)
    path = tmp_path / "wide.pcapng"
    path.write_bytes(data)
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    with open_capture(path) as r:
        batch = r.read_all()
        times = iter(r.wide_times)
        ours = [
            next(times).seconds if t == TS_TOO_LATE else f"{t // NS}.{t % NS:09d}"
            for t in batch.ts_ns.tolist()
        ]
    assert len(out) == len(ours) == 7
    # TShark prints microsecond files with 9 digits too (4.x) or 6 (older): compare as ns.
    assert [_ns(x) for x in out] == [_ns(x) for x in ours]


def _ns(text: str) -> int:
    secs, _, frac = text.partition(".")
    return int(secs) * NS + int((frac + "000000000")[:9])


def test_link_type_12_file_reads_like_tshark_encap(tmp_path: Path) -> None:
    path = tmp_path / "raw12.pcap"
    path.write_bytes(pcap_bytes([(1, 0, IPV4_UDP, len(IPV4_UDP))], linktype=12))
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "ip.src", "-e", "udp.dstport"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out == ["10.0.0.1", "5678"]
    with open_capture(path) as r:
        (p,) = list(r)
    skb = Skb(p.data, wire_len=p.wire_len, linktype=p.linktype)
    assert str(ipaddress.ip_address(skb.src)) == out[0] and skb.dport == int(out[1])


def test_wide_time_is_a_plain_record() -> None:
    w = WideTime(0, 10**19, 10**6, -5)
    assert w.ns == 10**19 * 1000 - 5 * NS
