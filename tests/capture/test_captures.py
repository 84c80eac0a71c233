"""Every third-party capture in ../shared/captures through our readers, against TShark.

Per file: the packet count equals the manifest's; per packet, caplen, original length,
timestamp (ns) and interface id equal TShark 4.0's; the L2-L4 fields our skb parses equal
TShark's outermost ones.  Damaged files give a positioned :class:`CaptureError` in strict
mode, and the right count with ``skip_bad``.  Where we and TShark disagree on purpose, the
disagreement is a row of data below, with its reason.  Finally, what we write TShark reads
back frame for frame.

The captures live outside the repository: ``$CPUMAP_CAPTURES``, else ``../shared/captures``
beside the checkout.  Without them these tests skip, saying so.
"""

from __future__ import annotations

import csv
import gzip
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from cpumap.abi import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from cpumap.capture import CaptureError, open_capture, write_capture
from cpumap.packets import Packet
from cpumap.skb import Skb

CAPTURES = Path(
    os.environ.get("CPUMAP_CAPTURES")
    or Path(__file__).resolve().parents[2].parent / "shared" / "captures"
)
MANIFEST = CAPTURES / "MANIFEST.txt"
ORACLE = CAPTURES / "_oracle_tshark"

needs_captures = pytest.mark.skipif(
    not MANIFEST.is_file(),
    reason=f"third-party captures not found at {CAPTURES} (set CPUMAP_CAPTURES)",
)


@dataclass(frozen=True)
class Row:
    """One line of MANIFEST.txt."""

    file: str
    count: int | None  # the manifest scanner's count (None: not a capture at all)
    tshark: int  # TShark's count; -1: TShark cannot open the file
    format: str


@cache
def manifest() -> dict[str, Row]:
    if not MANIFEST.is_file():
        return {}
    rows = {}
    for line in MANIFEST.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split("\t")
        rows[f[0]] = Row(f[0], None if f[1] == "-" else int(f[1]), int(f[2]), f[3])
    return rows


FILES = sorted(manifest()) or ["(no captures)"]


# --- where we differ from the manifest or TShark, on purpose ---------------------------------


@dataclass(frozen=True)
class Damaged:
    """A file our strict reader refuses."""

    offset: int  # of the CaptureError in strict mode
    reason: str  # the start of its reason
    skip_bad: tuple[int, int] | None  # (packets, skipped) with skip_bad; None: refused then too
    why: str


DAMAGED: dict[str, Damaged] = {
    "file_level_errors/libpcap__linktype-reserved-field-not-zero.pcap": Damaged(
        20,
        "link-type field 0x00300000 has reserved bits 0x00300000 set",
        None,
        "libpcap refuses reserved link-type bits; so does TShark",
    ),
    "file_level_errors/libpcap__pcap-invalid-version-1.pcap": Damaged(
        4, "unsupported pcap version 1.4", None, "libpcap and TShark refuse major version 1"
    ),
    "file_level_errors/libpcap__pcap-invalid-version-2.pcap": Damaged(
        4,
        "unsupported pcap version 2.5",
        None,
        "libpcap 1.11 refuses minor versions above 4 (this file is its test of that); TShark "
        "reads its one packet",
    ),
    "file_level_errors/libpcap__pcapng-invalid-vers-1.pcapng": Damaged(
        0,
        "unsupported pcapng version 0.1",
        (0, 1),
        "only 1.0 and 1.2 are pcapng versions (libpcap, TShark); skip_bad skips the section",
    ),
    "file_level_errors/libpcap__pcapng-invalid-vers-2.pcapng": Damaged(
        0, "unsupported pcapng version 1.1", (0, 1), "as above"
    ),
    "file_level_errors/libpcap__shb-option-too-long.pcapng": Damaged(
        0,
        "block total length 52 does not match its trailer 808464432",
        (0, 1),
        "the section header's trailer is garbage; no later section header to resync to",
    ),
    "file_level_errors/pcapfix__test_damaged.pcap": Damaged(
        114,
        "record cut short: caplen 16896 but only 8756 bytes of data",
        (1, 1),
        "the second record runs past the end of the file (TShark: cut short, 1 packet)",
    ),
    "file_level_errors/pcapfix__test_without_pcap_header.pcap": Damaged(
        0, "unknown magic 00000000", None, "no file header at all"
    ),
    "file_level_errors/scapy__bad_rsn_parsing_overrides_ssid.pcap": Damaged(
        359,
        "record header cut short: 1 of 16 bytes",
        (1, 1),
        "one stray byte after the last record (TShark: cut short, 1 packet)",
    ),
    "pcapng/gopacket__test901.pcapng": Damaged(
        480,
        "unsupported pcapng version 2.0",
        (2, 1),
        "the second of three sections is version 2.0: skip_bad skips it and reads the third "
        "(TShark stops at it with 1 packet; the manifest's scanner ignores versions: 3)",
    ),
}

# TShark 4.0 shows each pcapng Custom Block (0xBAD, 0x40000BAD) as a frame of its own.
CUSTOM_BLOCK_FRAMES: dict[str, int] = {
    f"pcapng/pcapngtg__{e}_test{n}.pcapng": k
    for e in ("le", "be")
    for n, k in (("017", 4), ("018", 4), ("102", 3), ("202", 3))
}

# Timestamps where TShark's arithmetic overflows and ours does not: (file, frame) -> ns.
TIMESTAMPS: dict[tuple[str, int], tuple[int, str]] = {
    ("timestamps/tcpdump__timestamp_invalid_micro.pcap", 3): (
        1418145370 * 10**9 + 2**31 * 1000,
        "µs field 2**31: TShark multiplies by 1000 in 32 bits and shows .000000000",
    ),
    ("timestamps/tcpdump__timestamp_invalid_nano.pcap", 3): (
        1418145370 * 10**9 + 2**31,
        "ns field 2**31: TShark keeps it in a signed int and shows -1418145370.2147483648",
    ),
}


def expected_count(row: Row) -> int:
    """Packets a clean read gives: TShark's count less its custom-block frames."""
    if row.tshark < 0:
        assert row.count is not None
        return row.count  # TShark cannot open it (e.g. DSA link type): the scanner's count
    return row.tshark - CUSTOM_BLOCK_FRAMES.get(row.file, 0)


def oracle(row: Row) -> list[dict[str, str]]:
    """TShark's rows for the file's packets (custom-block frames left out)."""
    path = ORACLE / (row.file.replace("/", "_", 1) + ".csv.gz")
    if not path.is_file():
        assert row.tshark == -1, f"{row.file}: no oracle, but TShark reads it"
        pytest.skip("TShark cannot open this file: no per-packet oracle")
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    if row.format == "pcapng":
        # A custom-block frame has no interface; every packet of a pcapng file has one.
        custom = [r for r in rows if r["frame.interface_id"] == ""]
        assert len(custom) == CUSTOM_BLOCK_FRAMES.get(row.file, 0), row.file
        rows = [r for r in rows if r["frame.interface_id"] != ""]
    return rows


def tshark_ns(text: str) -> int:
    """TShark's ``frame.time_epoch`` (``secs.nsecs``, nsecs printed as an integer) in ns."""
    sign = -1 if text.startswith("-") else 1
    secs, _, frac = text.lstrip("-").partition(".")
    return sign * (int(secs) * 10**9 + int(frac))


def read_file(row: Row, skip_bad: bool) -> tuple[list[Packet], int]:
    with open_capture(CAPTURES / row.file, skip_bad=skip_bad) as r:
        pkts = list(r)
        return pkts, r.skipped


def packets_to_compare(row: Row) -> list[Packet]:
    d = DAMAGED.get(row.file)
    if d is None:
        return read_file(row, False)[0]
    if d.skip_bad is None:
        pytest.skip(f"refused in both modes: {d.why}")
    return read_file(row, True)[0]


# --- counts and damage -----------------------------------------------------------------------


@needs_captures
@pytest.mark.parametrize("file", FILES)
def test_count_or_positioned_error(file: str) -> None:
    row = manifest()[file]
    d = DAMAGED.get(file)
    if d is None:
        pkts, skipped = read_file(row, False)
        assert len(pkts) == expected_count(row) == row.count
        assert read_file(row, True) == (pkts, 0)
        return
    with pytest.raises(CaptureError) as ei:
        read_file(row, False)
    e = ei.value
    assert (e.path, e.offset) == (str(CAPTURES / file), d.offset)
    assert e.reason.startswith(d.reason), e.reason
    assert str(e).startswith(f"{CAPTURES / file}: offset {d.offset}: ")
    if d.skip_bad is None:
        with pytest.raises(CaptureError) as again:
            read_file(row, True)
        assert again.value.offset == d.offset
    else:
        pkts, skipped = read_file(row, True)
        assert (len(pkts), skipped) == d.skip_bad


@needs_captures
def test_the_exceptions_name_real_files() -> None:
    rows = manifest()
    assert set(DAMAGED) <= set(rows) and set(CUSTOM_BLOCK_FRAMES) <= set(rows)
    assert {f for f, _ in TIMESTAMPS} <= set(rows)
    assert {f for f, _ in SKB_DIFFERENCES} <= set(rows)
    assert len(rows) == 120


# --- per packet: lengths, time, interface ----------------------------------------------------


@needs_captures
@pytest.mark.parametrize("file", FILES)
def test_per_packet_against_tshark(file: str) -> None:
    row = manifest()[file]
    rows = oracle(row)
    pkts = packets_to_compare(row)
    if file == "pcapng/gopacket__test901.pcapng":
        pkts = pkts[:1]  # TShark stops at the bad section; we skip it (see DAMAGED)
    assert len(pkts) == len(rows)
    for i, (p, t) in enumerate(zip(pkts, rows, strict=True), start=1):
        want_ts: int
        if (file, i) in TIMESTAMPS:
            want_ts = TIMESTAMPS[file, i][0]
        elif t["frame.time_epoch"] == "":
            want_ts = 0  # a simple packet block has no timestamp
        else:
            want_ts = tshark_ns(t["frame.time_epoch"])
        want = (
            int(t["frame.cap_len"]),
            int(t["frame.len"]),
            want_ts,
            int(t["frame.interface_id"] or 0),
        )
        assert (p.caplen, p.length, p.ts_ns, p.ifindex) == want, f"frame {i}"


# --- per packet: L2-L4 through the skb -------------------------------------------------------

SKB_LINKTYPES = {
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_LOOP,
}
_LINK_TOKENS = {"eth", "sll", "null", "raw", "loop"}
_TAG_TOKENS = {"vlan", "ieee8021ad"}
_IPV6_EXT_TOKENS = {"ipv6.hopopts", "ipv6.routing", "ipv6.fraghdr", "ipv6.dstopts", "ah"}
_L4_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "igmp": 2, "gre": 47, "ipv6": 41}

# (file, frame) -> (what the skb says instead of TShark, why): differences by design.
SKB_DIFFERENCES: dict[tuple[str, int], tuple[dict[str, object], str]] = {
    ("ipv6/libpcap__ipv6_ext_headers.pcap", 1): (
        {"sport": 0, "dport": 0},
        "a chain of 61 IPv6 extension headers: the skb stops after IPV6_MAX_EXT_HEADERS (16), "
        "as the kernel's flow dissector gives up; TShark walks on to the UDP header",
    ),
    ("malformed/tcpdump__tcp_header_heapoverflow.pcap", 1): (
        {"sport": 0, "dport": 0, "tcp_flags": 0},
        "the capture ends 12 bytes into the TCP header: the skb takes a header whole or not "
        "at all; TShark shows the fields it could read",
    ),
    ("malformed/tcpdump__udp-length-heapoverflow.pcap", 1): (
        {"sport": 0, "dport": 0},
        "the capture ends 4 bytes into the UDP header (as above)",
    ),
}


def tshark_view(t: dict[str, str]) -> dict[str, object]:
    """What TShark says about the outermost headers, in the skb's terms.

    TShark's fields are their first occurrence in the frame, which for a tunnel may be an
    inner header; ``frame.protocols`` says which layer is outermost, so only fields of the
    outer layers are taken.
    """
    tokens = [x for x in t["frame.protocols"].split(":") if x != "ethertype"]
    i = 0
    while i < len(tokens) and tokens[i] in _LINK_TOKENS:
        i += 1
    tags = 0
    while i < len(tokens) and tokens[i] in _TAG_TOKENS:
        tags += 1
        i += 1
    l3 = tokens[i] if i < len(tokens) else ""
    want: dict[str, object] = {}
    if t["eth.src"] and tokens[:1] == ["eth"]:
        want["eth_src"] = bytes.fromhex(t["eth.src"].replace(":", ""))
        want["eth_dst"] = bytes.fromhex(t["eth.dst"].replace(":", ""))
        if t["eth.type"]:
            want["protocol"] = int(t["eth.type"], 16)
        want["vlan_count"] = tags
        if "ieee8021ad" in tokens[:i] and t["ieee8021ad.id"]:
            want["first_8021ad"] = int(t["ieee8021ad.id"])
        if "vlan" in tokens[:i] and t["vlan.id"]:
            want["first_8021q"] = int(t["vlan.id"])
    l4 = ""
    if l3 == "ip" and t["ip.src"] and t["ip.dst"]:
        want["ip_version"] = 4
        want["src"] = ipaddress.ip_address(t["ip.src"]).packed
        want["dst"] = ipaddress.ip_address(t["ip.dst"]).packed
        want["ip_proto"] = int(t["ip.proto"])
        if t["ip.flags.mf"] and t["ip.frag_offset"]:
            want["is_fragment"] = t["ip.flags.mf"] == "1" or t["ip.frag_offset"] != "0"
        l4 = tokens[i + 1] if i + 1 < len(tokens) else ""
    elif l3 == "ipv6" and t["ipv6.src"] and t["ipv6.dst"]:
        want["ip_version"] = 6
        want["src"] = ipaddress.ip_address(t["ipv6.src"]).packed
        want["dst"] = ipaddress.ip_address(t["ipv6.dst"]).packed
        j = i + 1
        while j < len(tokens) and tokens[j] in _IPV6_EXT_TOKENS:
            j += 1
        want["is_fragment"] = "ipv6.fraghdr" in tokens[i + 1 : j]
        l4 = tokens[j] if j < len(tokens) else ""
        if l4 in _L4_NUMBERS and not want["is_fragment"]:
            want["ip_proto"] = _L4_NUMBERS[l4]
    elif l3 in ("arp", "llc", "mpls", "data", "loop"):
        want["src"] = None
    if l4 == "tcp" and t["tcp.srcport"] and t["tcp.dstport"]:
        want["sport"], want["dport"] = int(t["tcp.srcport"]), int(t["tcp.dstport"])
        if t["tcp.flags"]:
            want["tcp_flags"] = int(t["tcp.flags"], 16)
    elif l4 == "udp" and t["udp.srcport"] and t["udp.dstport"]:
        want["sport"], want["dport"] = int(t["udp.srcport"]), int(t["udp.dstport"])
    elif l4 == "icmp" and t["icmp.type"] and t["icmp.code"]:
        want["icmp_type"], want["icmp_code"] = int(t["icmp.type"]), int(t["icmp.code"])
    elif l4 == "icmpv6" and t["icmpv6.type"] and t["icmpv6.code"]:
        want["icmp_type"], want["icmp_code"] = int(t["icmpv6.type"]), int(t["icmpv6.code"])
    return want


def skb_view(skb: object, keys: set[str]) -> dict[str, object]:
    got: dict[str, object] = {}
    vlans: tuple[tuple[int, int], ...] = skb.vlans  # type: ignore[attr-defined]
    for k in keys:
        if k == "vlan_count":
            got[k] = len(vlans)
        elif k == "first_8021ad":
            got[k] = next((vid for tpid, vid in vlans if tpid == 0x88A8), None)
        elif k == "first_8021q":
            got[k] = next((vid for tpid, vid in vlans if tpid == 0x8100), None)
        else:
            got[k] = getattr(skb, k)
    return got


@needs_captures
@pytest.mark.parametrize("file", FILES)
def test_l2_l4_fields_against_tshark(file: str) -> None:
    row = manifest()[file]
    rows = oracle(row)
    pkts = packets_to_compare(row)[: len(rows)]
    compared = 0
    problems = []
    for i, (p, t) in enumerate(zip(pkts, rows, strict=True), start=1):
        if p.linktype not in SKB_LINKTYPES:
            continue
        skb = Skb(p.data, wire_len=p.wire_len, linktype=p.linktype)
        want = tshark_view(t)
        want.update(SKB_DIFFERENCES.get((file, i), ({}, ""))[0])
        got = skb_view(skb, set(want))
        compared += 1
        if got != want:
            diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
            problems.append(f"frame {i}: (tshark, skb) {diff} [{t['frame.protocols']}]")
    if compared == 0:
        pytest.skip("no frame of a link type the skb parses")
    assert not problems, "\n".join(problems)


# --- what we write, TShark reads back --------------------------------------------------------

# wiretap's WTAP_ENCAP_* numbers, as TShark 4.0 reports them in frame.encap_type.
WTAP_ENCAP = {
    LINKTYPE_ETHERNET: 1,
    LINKTYPE_RAW: 7,
    LINKTYPE_NULL: 15,
    LINKTYPE_LINUX_SLL: 25,
    LINKTYPE_IPV4: 129,
    LINKTYPE_IPV6: 130,
    LINKTYPE_LINUX_SLL2: 210,
}


def _written_packets() -> list[Packet]:
    pkts = []
    for i, lt in enumerate(WTAP_ENCAP):
        for k in range(3):
            n = 20 + 37 * k + i
            pkts.append(
                Packet(
                    bytes((i * 7 + j) % 256 for j in range(n)),
                    ts_ns=1_700_000_000_123_456_789 + 1_000_000_007 * (3 * i + k),
                    wire_len=n + 100 * k,  # caplen < len for k > 0
                    ifindex=i,
                    linktype=lt,
                )
            )
    return pkts


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize(
    ("fmt", "nanosecond"), [("pcapng", True), ("pcapng", False), ("pcap", True), ("pcap", False)]
)
def test_tshark_reads_back_what_we_write(tmp_path: Path, fmt: str, nanosecond: bool) -> None:
    pkts = _written_packets()
    if fmt == "pcap":  # one link type per pcap file
        pkts = [p._replace(ifindex=0) for p in pkts if p.linktype == LINKTYPE_LINUX_SLL]
    path = tmp_path / f"ours.{fmt}"
    write_capture(path, pkts, format=fmt, nanosecond=nanosecond)  # type: ignore[arg-type]
    fields = ["number", "time_epoch", "cap_len", "len", "interface_id", "encap_type"]
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=,"]
        + [arg for f in fields for arg in ("-e", f"frame.{f}")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert len(out) == len(pkts)
    unit = 1 if nanosecond else 1000
    for i, (line, p) in enumerate(zip(out, pkts, strict=True), start=1):
        number, ts, caplen, wire, iface, encap = line.split(",")
        assert int(number) == i
        assert tshark_ns(ts) == p.ts_ns // unit * unit
        assert (int(caplen), int(wire)) == (p.caplen, p.length)
        assert int(iface or 0) == p.ifindex
        assert int(encap) == WTAP_ENCAP[p.linktype]
