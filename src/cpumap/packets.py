"""Packets on their way in: the columnar batch every source yields and the RX side consumes.

A source (capture reader, live socket, generator) hands the engine a :class:`PacketBatch`:
one flat byte buffer plus one array per per-packet field.  Columns rather than a list of
``bytes`` because the RX side copies a batch into the frame pool with a few numpy calls,
and Python's cost model is per call, not per byte.

Packet ``i`` is ``buf[start[i] : start[i] + caplen[i]]``.  ``wire_len`` is the length on the
wire (``caplen < wire_len`` for a truncated capture: the skb knows the wire length).
Timestamps are integer nanoseconds since the Unix epoch, end to end; link types are
:mod:`cpumap.abi`'s ``LINKTYPE_*``.

Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .abi import LINKTYPE_ETHERNET


class Packet(NamedTuple):
    """One packet, for code that wants them one at a time (slow path, tests, writers)."""

    data: bytes
    ts_ns: int = 0
    wire_len: int = -1  # -1: same as len(data)
    ifindex: int = 0
    linktype: int = LINKTYPE_ETHERNET
    rx_queue: int = 0

    @property
    def caplen(self) -> int:
        return len(self.data)

    @property
    def length(self) -> int:
        """Length on the wire."""
        return len(self.data) if self.wire_len < 0 else self.wire_len


@dataclass(slots=True)
class PacketBatch:
    """A batch of packets in columns.

    Invariant: every array has the same length n; ``start[i] + caplen[i] <= len(buf)``;
    ``caplen[i] <= wire_len[i]``.
    """

    buf: np.ndarray  # uint8, 1-D: the bytes of every packet (and possibly gaps between them)
    start: np.ndarray  # int64[n]: offset of packet i in buf
    caplen: np.ndarray  # uint32[n]: captured bytes
    wire_len: np.ndarray  # uint32[n]: length on the wire
    ts_ns: np.ndarray  # int64[n]: nanoseconds since the epoch
    ifindex: np.ndarray  # uint32[n]: ingress interface (pcapng interface id, or ifindex)
    linktype: np.ndarray  # uint16[n]: LINKTYPE_* of each packet
    rx_queue: np.ndarray  # uint32[n]: RX queue (fanout member) that received it
    row_len: int = 0  # if > 0: packets are back-to-back rows of row_len bytes (a 2-D array)

    def __len__(self) -> int:
        return len(self.start)

    def packet(self, i: int) -> Packet:
        """Packet ``i`` as a :class:`Packet` (copies its bytes)."""
        s = int(self.start[i])
        return Packet(
            data=self.buf[s : s + int(self.caplen[i])].tobytes(),
            ts_ns=int(self.ts_ns[i]),
            wire_len=int(self.wire_len[i]),
            ifindex=int(self.ifindex[i]),
            linktype=int(self.linktype[i]),
            rx_queue=int(self.rx_queue[i]),
        )

    def __iter__(self) -> Iterator[Packet]:
        for i in range(len(self)):
            yield self.packet(i)

    def uniform_length(self) -> int | None:
        """The common caplen if every packet has it and they sit back to back, else None.

        Such a batch is a 2-D array ``buf[start[0]:].reshape(n, L)``: the fast copy path.
        """
        if self.row_len:
            return self.row_len
        n = len(self)
        if n == 0:
            return None
        length = int(self.caplen[0])
        if length == 0 or not (self.caplen == length).all():
            return None
        s0 = int(self.start[0])
        if not (self.start == s0 + length * np.arange(n, dtype=np.int64)).all():
            return None
        return length

    def check(self) -> None:
        """Raise ``ValueError`` naming the first packet that breaks the invariant: columns
        of different lengths, or a packet that starts before its buffer or runs past it
        (``start[i] + caplen[i] > len(buf)``).  Two reductions over the batch: cheap
        beside copying it (the RX side checks every batch it is given)."""
        n = len(self.start)
        for name in ("caplen", "wire_len", "ts_ns", "ifindex", "linktype", "rx_queue"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"batch columns differ in length: {name} has {len(getattr(self, name))}, "
                    f"start has {n}"
                )
        if n == 0:
            return
        size = len(self.buf)
        ends = self.start + self.caplen.astype(np.int64)
        bad = (self.start < 0) | (ends > size)
        if bad.any():
            i = int(np.argmax(bad))
            s, c = int(self.start[i]), int(self.caplen[i])
            raise ValueError(
                f"packet {i} of the batch (start {s}, caplen {c}) runs past its buffer "
                f"of {size} bytes"
                if s >= 0
                else f"packet {i} of the batch starts before its buffer (start {s})"
            )

    def slice(self, lo: int, hi: int) -> PacketBatch:
        """Packets ``lo:hi`` (views, no copy)."""
        return PacketBatch(
            self.buf,
            self.start[lo:hi],
            self.caplen[lo:hi],
            self.wire_len[lo:hi],
            self.ts_ns[lo:hi],
            self.ifindex[lo:hi],
            self.linktype[lo:hi],
            self.rx_queue[lo:hi],
            self.row_len,
        )

    @classmethod
    def empty(cls) -> PacketBatch:
        return cls.from_packets([])

    @classmethod
    def from_packets(cls, packets: Iterable[Packet | bytes]) -> PacketBatch:
        """Build a batch from packets or plain ``bytes`` (Ethernet, timestamp 0)."""
        pkts = [p if isinstance(p, Packet) else Packet(bytes(p)) for p in packets]
        n = len(pkts)
        caplen = np.fromiter((len(p.data) for p in pkts), dtype=np.uint32, count=n)
        start = np.zeros(n, dtype=np.int64)
        if n:
            np.cumsum(caplen[:-1], out=start[1:])
        buf = np.frombuffer(b"".join(p.data for p in pkts), dtype=np.uint8)
        return cls(
            buf=buf,
            start=start,
            caplen=caplen,
            wire_len=np.fromiter((p.length for p in pkts), dtype=np.uint32, count=n),
            ts_ns=np.fromiter((p.ts_ns for p in pkts), dtype=np.int64, count=n),
            ifindex=np.fromiter((p.ifindex for p in pkts), dtype=np.uint32, count=n),
            linktype=np.fromiter((p.linktype for p in pkts), dtype=np.uint16, count=n),
            rx_queue=np.fromiter((p.rx_queue for p in pkts), dtype=np.uint32, count=n),
        )

    @classmethod
    def from_array(
        cls,
        frames: np.ndarray,
        *,
        ts_ns: np.ndarray | int = 0,
        ifindex: int = 0,
        linktype: int = LINKTYPE_ETHERNET,
        rx_queue: int = 0,
    ) -> PacketBatch:
        """Build a batch of equal-length packets from a 2-D uint8 array ``[n, L]`` (no copy)."""
        if frames.ndim != 2 or frames.dtype != np.uint8:
            raise ValueError("frames must be a 2-D uint8 array")
        frames = np.ascontiguousarray(frames)
        n, length = frames.shape
        ts = np.broadcast_to(np.asarray(ts_ns, dtype=np.int64), (n,))
        return cls(
            buf=frames.reshape(-1),
            start=np.arange(n, dtype=np.int64) * length,
            caplen=np.full(n, length, dtype=np.uint32),
            wire_len=np.full(n, length, dtype=np.uint32),
            ts_ns=np.array(ts),
            ifindex=np.full(n, ifindex, dtype=np.uint32),
            linktype=np.full(n, linktype, dtype=np.uint16),
            rx_queue=np.full(n, rx_queue, dtype=np.uint32),
            row_len=length,
        )

    @classmethod
    def concat(cls, batches: list[PacketBatch]) -> PacketBatch:
        """One batch holding every packet of ``batches``, in order (copies)."""
        if not batches:
            return cls.empty()
        parts, starts, base = [], [], 0
        for b in batches:
            parts.append(b.buf)
            starts.append(b.start + base)
            base += len(b.buf)
        return cls(
            buf=np.concatenate(parts) if parts else np.zeros(0, np.uint8),
            start=np.concatenate(starts),
            caplen=np.concatenate([b.caplen for b in batches]),
            wire_len=np.concatenate([b.wire_len for b in batches]),
            ts_ns=np.concatenate([b.ts_ns for b in batches]),
            ifindex=np.concatenate([b.ifindex for b in batches]),
            linktype=np.concatenate([b.linktype for b in batches]),
            rx_queue=np.concatenate([b.rx_queue for b in batches]),
        )
