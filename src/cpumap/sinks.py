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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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


class FlowTable:
    """A batch handler counting packets and bytes (on the wire) per flow on its CPU.

    ``finish()`` returns ``{"cpu": N, "flows": {hash: FlowStats}}``.  ``max_flows`` bounds
    the memory: beyond it, new flows are counted in one "other" entry (hash -1).

    Vectorized: the flows are numpy columns sorted by hash (hashes, packets, bytes), so a
    batch costs a ``searchsorted`` and two ``np.add.at`` whatever its size -- no Python
    per frame or per flow.  Only a flow seen for the first time costs Python: its
    description is parsed then (``describe_flow``), once.  New flows of a batch are
    admitted in hash order while there is room, as a per-flow loop over the batch's sorted
    hashes would.

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
        self._described: dict[int, tuple[str, str, str]] = {}
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
        """Add the batch's new flows (lowest hashes first) while there is room."""
        room = self.max_flows - len(self._hashes)
        if room <= 0:
            return
        fresh = np.unique(new)[:room]
        # Where in the batch each new flow first appears, for its description.
        where = np.flatnonzero(np.isin(batch.hash, fresh))
        frames = dict(zip(batch.hash[where].tolist(), where.tolist(), strict=True))
        for h in fresh.tolist():
            self._described[h] = describe_flow(batch.skb(frames[h]))
        at = np.searchsorted(self._hashes, fresh)
        self._hashes = np.insert(self._hashes, at, fresh)
        self._packets = np.insert(self._packets, at, 0)
        self._bytes = np.insert(self._bytes, at, 0)

    @property
    def flows(self) -> dict[int, FlowStats]:
        """The table as ``{hash: FlowStats}`` ("other", beyond max_flows: hash -1)."""
        flows: dict[int, FlowStats] = {}
        described = self._described
        for h, p, b in zip(
            self._hashes.tolist(), self._packets.tolist(), self._bytes.tolist(), strict=True
        ):
            protocol, a, z = described[h]
            flows[h] = FlowStats(protocol, a, z, p, b, {self.cpu})
        if self._other[0]:
            flows[-1] = FlowStats("other", "-", "-", self._other[0], self._other[1])
        return flows

    def finish(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "flows": self.flows}


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


def merge_flow_tables(results: Iterable[Any]) -> list[FlowStats]:
    """Join the reports of FlowTable workers (``CpuMap.results``), biggest flows first.

    A flow seen by several workers (its CPU changed, or the entry was replaced) is one row
    listing every CPU."""
    merged: dict[int, FlowStats] = {}
    for report in _reports(results):
        if not isinstance(report, dict) or "flows" not in report:
            continue
        for h, f in report["flows"].items():
            m = merged.get(h)
            if m is None:
                merged[h] = FlowStats(f.protocol, f.a, f.b, f.packets, f.bytes, set(f.cpus))
            else:
                m.packets += f.packets
                m.bytes += f.bytes
                m.cpus |= f.cpus
    return sorted(merged.values(), key=lambda f: (-f.packets, -f.bytes, f.a, f.b))


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
