"""The flow table's keys: a flow kept as numpy data (``flow_keys``) and described when
asked (``describe_key``) reads exactly as ``describe_flow`` of its frame -- for every frame
of the shared captures and hypothesis-generated ones (IPv4, IPv6, TCP/UDP/ICMP, fragments,
non-IP, truncated), from plain rows and from the frame pool; a FlowTable over batches keeps
the description of each flow's last frame in its first batch (as before keys were kept);
its report pickles as a few arrays; the merge lists flows in the order a full sort gives,
whatever slice is read first."""

from __future__ import annotations

import ipaddress
import pickle
import struct
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpumap.engine.frame_pool import FramePool
from cpumap.programs.contract import WorkerInfo
from cpumap.sinks import (
    FLOW_KEY,
    FlowStats,
    FlowTable,
    FlowTableReport,
    describe_flow,
    describe_key,
    flow_keys,
    merge_flow_tables,
)
from cpumap.skb import Skb, SkbBatch, skb_batch
from tests.skb.helpers import PROPERTY_SETTINGS, fill_pool, frames, placed
from tests.skb.test_riding_hash import CAPTURES, capture_batches


def rows_batch(batch: list[tuple[int, bytes]]) -> SkbBatch:
    """The frames as a batch of plain rows, each at its own offset."""
    width = max((len(d) for _, d in batch), default=0) + 7
    rows = np.zeros((len(batch), max(width, 1)), dtype=np.uint8)
    offset = np.arange(len(batch)) % 8
    for i, (_, data) in enumerate(batch):
        rows[i, offset[i] : offset[i] + len(data)] = np.frombuffer(data, dtype=np.uint8)
    lengths = np.array([len(d) for _, d in batch], dtype=np.int64)
    linktypes = np.array([lt for lt, _ in batch], dtype=np.int64)
    return SkbBatch(rows, offset, lengths, linktype=linktypes)


def check_keys(batch: SkbBatch, expected: list[tuple[str, str, str]]) -> None:
    """Every frame's key, and a subset's (reversed), describe as ``expected``."""
    every = np.arange(len(batch))
    assert [describe_key(k) for k in flow_keys(batch, every)] == expected
    some = every[::-3].copy()
    assert [describe_key(k) for k in flow_keys(batch, some)] == [expected[i] for i in some]


@PROPERTY_SETTINGS
@given(st.lists(frames(), min_size=1, max_size=24), st.integers(0, 39))
def test_keys_describe_as_describe_flow(batch: list[tuple[int, bytes]], first: int) -> None:
    batch, where = placed(batch, "scattered", first, 64, 192)
    expected = [describe_flow(Skb(data, linktype=lt)) for lt, data in batch]
    check_keys(rows_batch(batch), expected)
    pool = FramePool(64, frame_size=256, headroom=64)
    try:
        fill_pool(pool, where, batch)
        check_keys(skb_batch(pool, np.array(where, dtype=np.uint32)), expected)
    finally:
        pool.close()


@pytest.mark.skipif(not CAPTURES.is_dir(), reason=f"no captures at {CAPTURES}")
def test_keys_describe_as_describe_flow_over_the_shared_captures() -> None:
    seen: Counter[str] = Counter()
    for name, batch in capture_batches():
        batch = [(lt % 65536, data) for lt, data in batch]
        skbs = [Skb(data, linktype=lt) for lt, data in batch]
        expected = [describe_flow(s) for s in skbs]
        b = rows_batch(batch)
        assert [describe_key(k) for k in flow_keys(b, np.arange(len(b)))] == expected, name
        seen.update(p for p, _, _ in expected)
        seen.update("fragment" for s in skbs if s.is_fragment)
        seen.update(f"ipv{s.ip_version}" for s in skbs)
    assert sum(seen.values()) > 1000
    for kind in ("TCP", "UDP", "ICMP", "ICMPv6", "fragment", "ipv4", "ipv6", "ipv0"):
        assert seen[kind], kind


def info(cpu: int) -> WorkerInfo:
    return WorkerInfo(map_id=1, key=cpu, cpu=cpu, qsize=64, slot=0, generation=1, pinned=True)


def test_a_table_keeps_the_last_frame_of_each_new_flow_in_its_batch() -> None:
    # Two frames that share a hash but not a description (a forced collision): the table
    # says what describe_flow said of the batch's last frame of that hash, as it did.
    from tests.helpers import udp_frame

    frames_ = [udp_frame(1, 0), udp_frame(2, 0), udp_frame(3, 0)]
    batch = rows_batch([(1, f) for f in frames_])
    forced = SkbBatch(
        batch.rows, batch.offset, batch.length, linktype=batch.linktype,
        rx_hash=np.array([5, 5, 9], dtype=np.uint32), hash_type=np.array([3, 3, 3], np.uint16),
    )  # fmt: skip
    table = FlowTable()
    table.setup(info(1))
    table(forced)
    flows = table.finish()["flows"]
    assert (flows[5].protocol, flows[5].a, flows[5].b) == describe_flow(batch.skb(1))
    assert (flows[5].packets, flows[9].packets) == (2, 1)


def _finished(cpu: int, max_flows: int, packets: int, batch: int, flows: int):  # type: ignore[no-untyped-def]
    """A flow table on ``cpu`` over generated batches, and its report (``finish()``)."""
    from tests.test_sinks import batches

    table = FlowTable(max_flows=max_flows)
    table.setup(info(cpu))
    for b in batches(packets, batch, flows=flows):
        table(b)
    return table, table.finish()


def test_a_report_pickles_as_columns_and_reads_as_before() -> None:
    table, report = _finished(2, max_flows=100, packets=2000, batch=128, flows=300)
    back = pickle.loads(pickle.dumps(report))
    assert isinstance(back, FlowTableReport) and back["cpu"] == 2
    assert back["flows"] == report["flows"] == table.flows
    assert len(back["flows"]) == 101  # 100 flows and "other"
    assert back["flows"][-1].cpus == set()


def legacy(report: FlowTableReport) -> dict:
    return {"cpu": report.cpu, "flows": report.flows}


def full_sort(reports: list[dict]) -> list[FlowStats]:
    """The merge as it was: a dict filled report by report, then a stable sort."""
    merged: dict[int, FlowStats] = {}
    for r in reports:
        for h, f in r["flows"].items():
            m = merged.setdefault(h, FlowStats(f.protocol, f.a, f.b, 0, 0, set()))
            m.packets += f.packets
            m.bytes += f.bytes
            m.cpus |= f.cpus
    return sorted(merged.values(), key=lambda f: (-f.packets, -f.bytes, f.a, f.b))


@pytest.mark.parametrize("top", [0, 1, 3, 10, 57, 10_000])
def test_the_merge_reads_as_a_full_sort_whatever_is_read_first(top: int) -> None:
    from tests.test_sinks import batches

    bs = batches(3000, 100, flows=400, seed=11)
    reports = []
    for cpu, part in enumerate((bs[0::3], bs[1::3], bs[2::3])):
        table = FlowTable(max_flows=150 + 50 * cpu)  # "other" in some, ties in all
        table.setup(info(cpu))
        for b in part:
            table(b)
        reports.append(table.finish())
    expected = full_sort([legacy(r) for r in reports])
    merged = merge_flow_tables(reports)
    assert len(merged) == len(expected)
    assert merged[:top] == expected[:top]  # read first: only these (and their ties) made
    assert merged[-1] == expected[-1]
    assert list(merged) == expected
    # Old-style dict reports, and the two mixed, merge alike.
    assert merge_flow_tables([legacy(r) for r in reports]) == expected
    assert merge_flow_tables([reports[0], legacy(reports[1]), reports[2]]) == expected
    assert merge_flow_tables([]) == []


def test_a_report_reads_as_the_dict_it_was() -> None:
    table, report = _finished(4, max_flows=20, packets=300, batch=100, flows=50)
    as_dict = {"cpu": 4, "flows": table.flows}
    assert report == as_dict and as_dict == report
    assert dict(report) == as_dict and set(report) == {"cpu", "flows"}
    assert report.get("flows") == as_dict["flows"] and report.get("nothing") is None
    assert "flows" in report and (report or {}).get("cpu") == 4
    assert report.rows() == 21  # 20 flows and "other"


@PROPERTY_SETTINGS
@given(
    st.one_of(
        st.binary(min_size=16, max_size=16),
        # Zero runs of every length and place, and the IPv4-mapped/-compatible prefixes.
        st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xABC]), min_size=8, max_size=8).map(
            lambda hs: struct.pack(">8H", *hs)
        ),
        st.binary(min_size=4, max_size=4).map(lambda v4: bytes(10) + b"\xff\xff" + v4),
        st.binary(min_size=4, max_size=4).map(lambda v4: bytes(12) + v4),
    ),
    st.sampled_from([0, 53]),
)
def test_an_ipv6_endpoint_reads_as_ipaddress_writes_it(address: bytes, port: int) -> None:
    ip = str(ipaddress.IPv6Address(address))
    expected = f"[{ip}]:{port}" if port else ip
    key = np.zeros(1, dtype=FLOW_KEY)
    key["ip_version"], key["ip_proto"], key["sport"], key["dport"] = 6, 17, port, port
    key["src"][0] = np.frombuffer(address, dtype=np.uint8)
    key["dst"][0] = 255
    assert expected in describe_key(key[0])[1:]
