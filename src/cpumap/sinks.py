"""Sinks: handlers that consume what reaches a CPU -- a flow table, per-CPU capture files.

A sink is an ordinary handler (the "netstack" of a map entry): it runs in the worker
process of its CPU, one copy per worker (forked from the one you pass to the map), and
reports what it gathered through ``finish()``; ``CpuMap.results`` collects the reports
and the functions here merge them.

* :class:`FlowTable` -- packets and bytes per flow (both directions of a flow are one
  entry: the skb's flow hash is symmetric), with the flow's addresses, protocol and the
  CPU that handled it.  Vectorised: a few numpy calls per batch (the table is numpy
  columns) plus one parse per *new* flow.  :func:`merge_flow_tables` joins the per-CPU reports.
* :class:`CaptureSink` -- every frame a CPU accepts, written to one capture file per CPU
  (``cpu<N>.pcapng`` in a directory, or pcap); :func:`merge_captures` merges files into
  one, in timestamp order, streaming.
* :class:`Count` -- packets and bytes per CPU (the CLI's ``--handler count``).
* :class:`Chain` -- several handlers on each frame; a frame any of them drops is dropped.

Nothing here touches the engine's internals: sinks see ``SkbBatch`` objects, as any
batch handler does.
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from .capture import open_capture, open_writer, write_capture
from .packets import Packet, PacketBatch
from .programs import contract
from .skb import Skb, SkbBatch

IPPROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP", 47: "GRE", 50: "ESP"}
ETHERTYPE_NAMES = {0x0806: "ARP", 0x86DD: "IPv6", 0x0800: "IPv4", 0x88CC: "LLDP", 0x8863: "PPPoE"}


def describe_flow(skb: Skb) -> tuple[str, str, str]:
    """(protocol, endpoint a, endpoint b) of a frame, endpoints in a canonical order so
    both directions of a flow read the same."""
    if skb.ip_version:
        proto = IPPROTO_NAMES.get(skb.ip_proto, f"ip-proto-{skb.ip_proto}")
        a = _endpoint(skb.src, skb.sport, skb.ip_version)
        b = _endpoint(skb.dst, skb.dport, skb.ip_version)
        if b < a:
            a, b = b, a
        return proto, a, b
    name = ETHERTYPE_NAMES.get(skb.l3_protocol, f"ethertype-{skb.l3_protocol:#06x}")
    return name, "-", "-"


def _endpoint(addr: bytes | None, port: int, version: int) -> str:
    if addr is None:
        return "?"
    ip = str(ipaddress.ip_address(addr))
    if not port:
        return ip
    return f"[{ip}]:{port}" if version == 6 else f"{ip}:{port}"


@dataclass
class FlowStats:
    """One flow as seen by one CPU."""

    protocol: str
    a: str
    b: str
    packets: int = 0
    bytes: int = 0
    cpus: set[int] = field(default_factory=set)


# A flow's key: what describe_flow reads of its frame, as numpy data (one record per flow).
# The addresses are the header's bytes (4 of them for IPv4, the rest zero).
FLOW_KEY: Final = np.dtype(
    [
        ("l3_protocol", "<u2"),
        ("ip_version", "u1"),
        ("ip_proto", "<i2"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("src", "u1", (16,)),
        ("dst", "u1", (16,)),
    ]
)
# Where the addresses sit in the network header: (src, dst) offsets, by IP version.
_ADDRESS_AT: Final = {4: (12, 16), 6: (8, 24)}
_ADDRESS_LEN: Final = {4: 4, 6: 16}


def flow_keys(batch: SkbBatch, frames: np.ndarray) -> np.ndarray:
    """The :data:`FLOW_KEY` of each of ``frames`` of ``batch``: a few numpy calls for all
    of them, no Skb and no formatting per frame.

    The frames' bytes are copied into a batch of their own (a row each, as long as the
    frame: the headers describe_flow reads lie anywhere a frame's parse reaches), whose
    columns (``ip_version``, ``ip_proto``, ``sport``, ``dport``, ``l3_protocol``,
    ``network_offset``) equal the per-frame Skb's fields by SkbBatch's contract; the
    addresses are read at the network offset.  :func:`describe_key` of the result equals
    :func:`describe_flow` of each frame's Skb (tests/test_flow_keys.py holds them equal)."""
    k = len(frames)
    keys = np.zeros(k, dtype=FLOW_KEY)
    if not k:
        return keys
    lengths = batch.length[frames]
    rows = np.zeros((k, max(int(lengths.max()), 1)), dtype=np.uint8)
    # One copy per new flow: the frame's bytes, where they lie (no gather of the
    # batch's rows for a few of them).
    for j, i in enumerate(frames.tolist()):
        data = batch.data(i)
        rows[j, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    own = SkbBatch(rows, 0, lengths, linktype=batch.linktype[frames])
    version = own.ip_version
    keys["l3_protocol"] = own.l3_protocol
    keys["ip_version"] = version
    keys["ip_proto"] = own.ip_proto
    keys["sport"] = own.sport
    keys["dport"] = own.dport
    net = own.network_offset.astype(np.int64)
    for v, (src_at, dst_at) in _ADDRESS_AT.items():
        mine = np.flatnonzero(version == v)
        if not len(mine):
            continue
        width = np.arange(_ADDRESS_LEN[v])
        # In bounds: the IP stage set ip_version only where the whole header fits.
        keys["src"][mine, : len(width)] = rows[mine[:, None], net[mine, None] + src_at + width]
        keys["dst"][mine, : len(width)] = rows[mine[:, None], net[mine, None] + dst_at + width]
    return keys


# FLOW_KEY read with each address as one bytes value (``.item()`` of a record: one call).
_KEY_AS_BYTES: Final = np.dtype(
    {
        "names": FLOW_KEY.names,
        "formats": [
            FLOW_KEY.fields[n][0] if n not in ("src", "dst") else "V16" for n in FLOW_KEY.names
        ],
        "offsets": [FLOW_KEY.fields[n][1] for n in FLOW_KEY.names],
        "itemsize": FLOW_KEY.itemsize,
    }
)


def describe_key(key: np.void | np.ndarray) -> tuple[str, str, str]:
    """(protocol, endpoint a, endpoint b) of a :data:`FLOW_KEY` record: what
    :func:`describe_flow` says of the frame it was taken from."""
    l3, version, ip_proto, sport, dport, src, dst = (
        np.asarray(key, dtype=FLOW_KEY).reshape(1).view(_KEY_AS_BYTES)[0].item()
    )
    if version:
        proto = IPPROTO_NAMES.get(ip_proto, f"ip-proto-{ip_proto}")
        a = _endpoint_of(src, sport, version)
        b = _endpoint_of(dst, dport, version)
        if b < a:
            a, b = b, a
        return proto, a, b
    return ETHERTYPE_NAMES.get(l3, f"ethertype-{l3:#06x}"), "-", "-"


def _endpoint_of(address: bytes, port: int, version: int) -> str:
    """``_endpoint`` of a key's address (16 bytes, an IPv4 one in the first 4), formatted
    here as ``str(ipaddress.ip_address(...))`` does, at a fraction of its cost: IPv4 dotted
    decimal; IPv6 by :func:`_ipv6_text` (ipaddress's own rules) -- but an IPv4-mapped one
    (``::ffff:a.b.c.d``, whose text Python changed in 3.13) by ipaddress itself.
    tests/test_flow_keys.py holds them equal to describe_flow's."""
    if version == 4:
        ip = f"{address[0]}.{address[1]}.{address[2]}.{address[3]}"
        return f"{ip}:{port}" if port else ip
    if address[:12] == _V4_MAPPED:
        return _endpoint(address, port, version)
    ip = _ipv6_text(address)
    return f"[{ip}]:{port}" if port else ip


_V4_MAPPED: Final = bytes(10) + b"\xff\xff"


def _ipv6_text(address: bytes) -> str:
    """An IPv6 address as ipaddress writes it (``IPv6Address._compress_hextets``): hextets
    in lower-case hex, the first longest run of two or more zero hextets as ``::``."""
    hextets = [f"{h:x}" for h in struct.unpack(">8H", address)]
    best_start, best_len, start, run = -1, 0, -1, 0
    for i, h in enumerate(hextets):
        if h == "0":
            run += 1
            if start == -1:
                start = i
            if run > best_len:
                best_start, best_len = start, run
        else:
            start, run = -1, 0
    if best_len > 1:
        end = best_start + best_len
        if end == len(hextets):
            hextets += [""]
        hextets[best_start:end] = [""]
        if best_start == 0:
            hextets = ["", *hextets]
    return ":".join(hextets)


OTHER_HASH: Final = -1  # the "other" entry's hash: flows beyond max_flows


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` of a 1-D array: sorted, each value once.  Not np.unique itself
    on the worker's first batch: numpy 2's checks whether its input is a masked array, which
    imports numpy.ma (~40 ms) -- in a worker, while the RX side waits on its full ring."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


@dataclass(eq=False)
class FlowTableReport(Mapping[str, Any]):
    """What a :class:`FlowTable` reports from its worker: the table as numpy columns, in
    hash order -- one pickle of a few arrays however many flows (not an object per flow).

    ``hashes`` (uint32), ``packets``, ``bytes`` (int64) and ``flow_keys`` (:data:`FLOW_KEY`) are
    one row per flow; ``other_packets``/``other_bytes`` count the flows beyond max_flows.
    A flow is described (formatted) only when asked: :meth:`describe`, or :attr:`flows`.
    As a mapping it reads as the dict FlowTable reported before: ``{"cpu": N, "flows":
    {hash: FlowStats}}`` (``report["flows"]``, ``.get("flows")``, ``==`` a dict).
    """

    cpu: int
    hashes: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray
    flow_keys: np.ndarray  # not "keys": the mapping has a keys()
    other_packets: int = 0
    other_bytes: int = 0

    def rows(self) -> int:
        """The rows: the flows, and "other" where it counted any."""
        return len(self.hashes) + (1 if self.other_packets else 0)

    def describe(self, row: int) -> tuple[str, str, str]:
        """(protocol, a, b) of row ``row`` (the last row past the flows: "other")."""
        if row >= len(self.hashes):
            return "other", "-", "-"
        return describe_key(self.flow_keys[row])

    def cpus_of(self, row: int) -> set[int]:
        """The CPUs of row ``row``: this table's, none for "other" (as before)."""
        return set() if row >= len(self.hashes) else {self.cpu}

    def row_hashes(self) -> np.ndarray:
        """int64 ``[self.rows()]``: each row's hash, :data:`OTHER_HASH` for "other"."""
        hashes = self.hashes.astype(np.int64)
        return np.append(hashes, OTHER_HASH) if self.other_packets else hashes

    def row_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """int64 ``[self.rows()]`` each: each row's packets and bytes."""
        if not self.other_packets:
            return self.packets, self.bytes
        return np.append(self.packets, self.other_packets), np.append(self.bytes, self.other_bytes)

    @property
    def flows(self) -> dict[int, FlowStats]:
        """The table as ``{hash: FlowStats}`` ("other": hash -1), every flow described: a
        convenience for small tables."""
        flows: dict[int, FlowStats] = {}
        hashes = self.row_hashes().tolist()
        packets, nbytes = self.row_counts()
        for row, (h, p, b) in enumerate(
            zip(hashes, packets.tolist(), nbytes.tolist(), strict=True)
        ):
            flows[h] = FlowStats(*self.describe(row), p, b, self.cpus_of(row))
        return flows

    def __getitem__(self, name: str) -> Any:
        """``report["cpu"]``, ``report["flows"]``: the dict FlowTable reported before."""
        if name == "cpu":
            return self.cpu
        if name == "flows":
            return self.flows
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(("cpu", "flows"))

    def __len__(self) -> int:
        return 2


class FlowTable:
    """A batch handler counting packets and bytes (on the wire) per flow on its CPU.

    ``finish()`` returns a :class:`FlowTableReport` (numpy columns; ``report["flows"]`` is
    ``{hash: FlowStats}`` as before).  ``max_flows`` bounds the memory: beyond it, new
    flows are counted in one "other" entry (hash -1).

    Vectorized: the flows are numpy columns sorted by hash (hashes, packets, bytes, keys),
    so a batch costs a ``searchsorted`` and two ``np.add.at`` whatever its size -- no
    Python per frame or per flow.  A batch with new flows costs a few numpy calls more for
    all of them (:func:`flow_keys`: each new flow's key, from its last frame in the batch,
    as numpy data) and a copy of each one's frame; a flow is formatted
    (:func:`describe_key`, which equals ``describe_flow`` of that frame) only when someone
    asks -- the summary asks for its top N.  New flows of a batch are admitted in hash
    order while there is room, as a per-flow loop over the batch's sorted hashes would.

    Why ``np.add.at`` (measured, numpy 2.4, 1024 and 4096 frames a batch over 100 to
    100,000 flows): 5-21 µs a batch for both columns, against ``np.bincount`` 6-1080 µs
    (it allocates a column the table's size per batch: ruinous for big tables) and
    sort-based reductions (``np.unique``, ``argsort`` + ``reduceat``) 38-260 µs.  All are
    exact on int64.  A batch whose hashes ride with the frames reads nothing else of them:
    ``hash`` and ``wire_len`` come from the descriptors, no packet byte is read.
    """

    batch = True

    def __init__(self, max_flows: int = 100_000) -> None:
        self.max_flows = max_flows
        self.cpu = -1
        self._reset()

    def _reset(self) -> None:
        self._hashes = np.zeros(0, dtype=np.uint32)  # sorted
        self._packets = np.zeros(0, dtype=np.int64)
        self._bytes = np.zeros(0, dtype=np.int64)
        self._keys = np.zeros(0, dtype=FLOW_KEY)
        self._other = [0, 0]  # packets, bytes of flows beyond max_flows

    def setup(self, info: Any) -> None:
        self.cpu = info.cpu
        self._reset()

    def __call__(self, batch: SkbBatch) -> None:
        if not len(batch):
            return
        hashes = batch.hash
        wire = batch.wire_len
        pos, known = self._lookup(hashes)
        if not known.all():
            self._admit(batch, hashes[~known])
            pos, known = self._lookup(hashes)
            if not known.all():  # beyond max_flows: the "other" entry
                self._other[0] += int(np.count_nonzero(~known))
                self._other[1] += int(wire[~known].sum())
                pos, wire = pos[known], wire[known]
        np.add.at(self._packets, pos, 1)
        np.add.at(self._bytes, pos, wire)

    def _lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each hash's position in the table, and whether it is there."""
        table = self._hashes
        if not len(table):
            return np.zeros(len(hashes), dtype=np.intp), np.zeros(len(hashes), dtype=bool)
        pos = np.searchsorted(table, hashes)
        np.minimum(pos, len(table) - 1, out=pos)
        return pos, table[pos] == hashes

    def _admit(self, batch: SkbBatch, new: np.ndarray) -> None:
        """Add the batch's new flows (lowest hashes first) while there is room, each with
        the key of its last frame in the batch (the frame the table described before keys
        were kept: the same description, should two flows share a hash)."""
        room = self.max_flows - len(self._hashes)
        if room <= 0:
            return
        fresh = sorted_unique(new)[:room]
        hashes = batch.hash
        # The last frame of each hash: the first of the reversed batch.
        seen, first_reversed = np.unique(hashes[::-1], return_index=True)
        last = len(hashes) - 1 - first_reversed[np.searchsorted(seen, fresh)]
        keys = flow_keys(batch, last)
        at = np.searchsorted(self._hashes, fresh)
        self._hashes = np.insert(self._hashes, at, fresh)
        self._packets = np.insert(self._packets, at, 0)
        self._bytes = np.insert(self._bytes, at, 0)
        self._keys = np.insert(self._keys, at, keys)

    def report(self) -> FlowTableReport:
        """The table now, as a :class:`FlowTableReport` (copies of the columns)."""
        return FlowTableReport(
            self.cpu,
            self._hashes.copy(),
            self._packets.copy(),
            self._bytes.copy(),
            self._keys.copy(),
            self._other[0],
            self._other[1],
        )

    @property
    def flows(self) -> dict[int, FlowStats]:
        """The table as ``{hash: FlowStats}`` ("other", beyond max_flows: hash -1)."""
        return self.report().flows

    def finish(self) -> FlowTableReport:
        return self.report()


class Count:
    """A batch handler counting the packets and bytes (on the wire) its CPU got: a few
    numpy calls a batch.  ``finish()`` returns ``{"cpu": N, "packets": P, "bytes": B}``."""

    batch = True

    def __init__(self) -> None:
        self.cpu = -1
        self.packets = 0
        self.bytes = 0

    def setup(self, info: Any) -> None:
        self.cpu = info.cpu
        self.packets = self.bytes = 0

    def __call__(self, batch: SkbBatch) -> None:
        self.packets += len(batch)
        self.bytes += int(batch.wire_len.sum())

    def finish(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "packets": self.packets, "bytes": self.bytes}


def _reports(results: Iterable[Any]) -> list[Any]:
    """The handlers' reports in ``results`` (``WorkerResult``s or bare reports), a
    ``Chain``'s list of reports flattened."""
    reports: list[Any] = []
    for r in results:
        report = getattr(r, "result", r)
        reports.extend(report if isinstance(report, list) else [report])
    return reports


def captures_written(results: Iterable[Any]) -> list[str]:
    """The files the :class:`CaptureSink` s among ``results`` wrote (their ``finish()``
    reports: ``{"capture": path, "packets": n}``), sorted."""
    return sorted(
        str(r["capture"]) for r in _reports(results) if isinstance(r, dict) and r.get("capture")
    )


class _DictReport:
    """A report in the form FlowTable gave before :class:`FlowTableReport`
    (``{"cpu": N, "flows": {hash: FlowStats}}``), read through the same rows."""

    def __init__(self, flows: dict[int, FlowStats]) -> None:
        self._stats = list(flows.values())
        self._hashes = np.fromiter(flows, dtype=np.int64, count=len(flows))

    def rows(self) -> int:
        return len(self._stats)

    def describe(self, row: int) -> tuple[str, str, str]:
        f = self._stats[row]
        return f.protocol, f.a, f.b

    def cpus_of(self, row: int) -> set[int]:
        return set(self._stats[row].cpus)

    def row_hashes(self) -> np.ndarray:
        return self._hashes

    def row_counts(self) -> tuple[np.ndarray, np.ndarray]:
        packets = np.array([f.packets for f in self._stats], dtype=np.int64)
        return packets, np.array([f.bytes for f in self._stats], dtype=np.int64)


class MergedFlows(Sequence[FlowStats]):
    """The flow tables of several workers joined, biggest flows first: a sequence of
    :class:`FlowStats` made (and described) only as far as it is read.

    Joining is numpy over the reports' columns (a stable sort by hash, sums per hash);
    the order is ``(-packets, -bytes, a, b)`` and, among equals, the order in which the
    flows first appear in the reports (hash order within one) -- exactly the order of a
    stable ``sorted`` over a dict filled report by report, which this replaced.  Reading
    the first k flows describes the flows ranked before the k-th one's (packets, bytes)
    group ends: the tie-break on the endpoints needs their text, nothing else does.  The
    summary reads its top N; ``len`` reads nothing; iterating describes every flow.
    """

    def __init__(self, reports: Sequence[Any]) -> None:
        self._reports = list(reports)
        sizes = [r.rows() for r in self._reports]
        hashes = np.concatenate([r.row_hashes() for r in self._reports] or [np.zeros(0, int)])
        counts = [r.row_counts() for r in self._reports]
        packets = np.concatenate([c[0] for c in counts] or [np.zeros(0, np.int64)])
        nbytes = np.concatenate([c[1] for c in counts] or [np.zeros(0, np.int64)])
        self._source = np.repeat(np.arange(len(sizes)), sizes)  # each input row's report
        self._row = np.concatenate([np.arange(s) for s in sizes] or [np.zeros(0, int)])
        # Stable: each hash's inputs in report order, the first where it first appeared.
        self._by_hash = np.argsort(hashes, kind="stable")
        _, starts = np.unique(hashes[self._by_hash], return_index=True)
        self._starts = np.append(starts, len(hashes))
        self._packets = np.add.reduceat(packets[self._by_hash], starts) if len(starts) else packets
        self._bytes = np.add.reduceat(nbytes[self._by_hash], starts) if len(starts) else nbytes
        first = self._by_hash[starts]  # where each flow first appears
        self._rank = np.lexsort((first, -self._bytes, -self._packets))
        self._made: list[FlowStats] = []  # the first len(_made) flows, in their final order

    def __len__(self) -> int:
        return len(self._rank)

    def _make(self, flow: int) -> FlowStats:
        """Merged flow ``flow`` (an index into the per-hash columns) as a FlowStats: the
        description of its first appearance, the CPUs of all."""
        inputs = self._by_hash[self._starts[flow] : self._starts[flow + 1]].tolist()
        cpus: set[int] = set()
        for i in inputs:
            cpus |= self._reports[self._source[i]].cpus_of(int(self._row[i]))
        first = inputs[0]
        protocol, a, b = self._reports[self._source[first]].describe(int(self._row[first]))
        return FlowStats(protocol, a, b, int(self._packets[flow]), int(self._bytes[flow]), cpus)

    def _ensure(self, k: int) -> None:
        """Make the first ``k`` flows: up to the end of the k-th one's (packets, bytes)
        group, sorted within each group by endpoints."""
        done = len(self._made)
        if k <= done:
            return
        ranked_p = self._packets[self._rank]
        ranked_b = self._bytes[self._rank]
        rest = (ranked_p[k:] != ranked_p[k - 1]) | (ranked_b[k:] != ranked_b[k - 1])
        end = k + int(np.argmax(rest)) if rest.any() else len(self._rank)
        chunk = [self._make(int(f)) for f in self._rank[done:end]]
        chunk.sort(key=lambda f: (-f.packets, -f.bytes, f.a, f.b))  # stable: first seen first
        self._made.extend(chunk)

    def __getitem__(self, index: Any) -> Any:
        n = len(self)
        if isinstance(index, slice):
            picked = range(*index.indices(n))
            if picked:
                self._ensure(max(picked[0], picked[-1]) + 1)
            return [self._made[i] for i in picked]
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError("flow index out of range")
        self._ensure(i + 1)
        return self._made[i]

    def __iter__(self) -> Iterator[FlowStats]:
        self._ensure(len(self))
        return iter(self._made)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MergedFlows({len(self)} flows)"


def merge_flow_tables(results: Iterable[Any]) -> MergedFlows:
    """Join the reports of FlowTable workers (``CpuMap.results``), biggest flows first,
    as a :class:`MergedFlows` sequence of :class:`FlowStats` (made as far as it is read:
    ``merged[:10]`` describes about ten flows, ``list(merged)`` every one).

    A flow seen by several workers (its CPU changed, or the entry was replaced) is one row
    listing every CPU.  Reports may be :class:`FlowTableReport` s or the
    ``{"cpu": N, "flows": {hash: FlowStats}}`` dicts FlowTable returned before."""
    reports: list[Any] = []
    for report in _reports(results):
        if isinstance(report, FlowTableReport):
            reports.append(report)
        elif isinstance(report, dict) and "flows" in report:
            reports.append(_DictReport(report["flows"]))
    return MergedFlows(reports)


class CaptureSink:
    """A batch handler writing every frame to ``directory/cpu<N>.<format>``.

    The file is opened in the worker (``setup``) and closed at its clean exit
    (``finish``, which returns the path and the count).  A replaced entry's new worker
    appends a generation suffix rather than overwrite: ``cpu1.g2.pcapng``.
    """

    batch = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        format: Literal["pcapng", "pcap"] = "pcapng",
        nanosecond: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.format = format
        self.nanosecond = nanosecond
        self._writer: Any = None
        self.path: Path | None = None

    def setup(self, info: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"cpu{info.cpu}.{self.format}"
        path = self.directory / name
        if path.exists():
            path = self.directory / f"cpu{info.cpu}.g{info.generation}.{self.format}"
        self.path = path
        self._writer = open_writer(path, format=self.format, nanosecond=self.nanosecond)

    def __call__(self, batch: SkbBatch) -> None:
        if self._writer is None or not len(batch):
            return
        rows = np.ascontiguousarray(batch.rows)
        width = rows.shape[1]
        n = len(batch)
        self._writer.write_batch(
            PacketBatch(
                buf=rows.reshape(-1),
                start=np.arange(n, dtype=np.int64) * width + batch.offset,
                caplen=batch.length.astype(np.uint32),
                wire_len=np.asarray(batch.wire_len, dtype=np.uint32),
                ts_ns=np.asarray(batch.ts_ns, dtype=np.int64),
                ifindex=np.asarray(batch.ifindex, dtype=np.uint32),
                linktype=np.asarray(batch.linktype, dtype=np.uint16),
                rx_queue=np.asarray(batch.rx_queue, dtype=np.uint32),
            )
        )

    def finish(self) -> dict[str, Any]:
        count = 0
        if self._writer is not None:
            count = self._writer.count
            self._writer.close()
            self._writer = None
        return {"capture": str(self.path) if self.path else None, "packets": count}


def merge_captures(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    format: Literal["pcapng", "pcap"] = "pcapng",
) -> int:
    """Merge capture files into ``out`` in timestamp order (stable: equal timestamps keep
    file order), streaming in constant memory per input.  Returns the packets written."""
    readers = [open_capture(p) for p in paths]
    try:

        def keyed(k: int, it: Iterator[Packet]) -> Iterator[tuple[int, int, int, Packet]]:
            for j, p in enumerate(it):
                yield p.ts_ns, k, j, p

        streams = [keyed(k, iter(r)) for k, r in enumerate(readers)]
        merged = (item[3] for item in heapq.merge(*streams))
        return write_capture(out, merged, format=format)
    finally:
        for r in readers:
            r.close()


class Chain:
    """Run several handlers on every frame: all per-skb or all batch handlers.

    A frame is delivered if every handler accepts it.  ``finish()`` returns the list of
    the handlers' reports."""

    def __init__(self, *handlers: Any) -> None:
        if not handlers:
            raise ValueError("Chain needs at least one handler")
        kinds = {contract.is_batch_handler(h) for h in handlers}
        if len(kinds) != 1:
            raise ValueError("Chain handlers must be all batch handlers or all per-skb")
        self.handlers = handlers
        self.batch = kinds.pop()

    def setup(self, info: Any) -> None:
        for h in self.handlers:
            contract.setup(h, info)

    def __call__(self, arg: Any) -> Any:
        if self.batch:
            keep: np.ndarray | None = None
            for h in self.handlers:
                r = h(arg)
                if r is not None:
                    r = np.asarray(r, dtype=bool)
                    keep = r if keep is None else keep & r
            return keep
        ok = True
        for h in self.handlers:
            if h(arg) is False:
                ok = False
        return None if ok else False

    def finish(self) -> list[Any]:
        return [contract.finish(h) for h in self.handlers]
