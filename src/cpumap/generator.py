"""Generator source: synthetic Ethernet traffic, pktgen-like, deterministic for a seed.

It feeds the demo, the benchmarks (millions of frames/s) and the end-to-end tests (which need
to know each frame's flow and its place in that flow).  Frames are valid: IPv4 header, UDP,
TCP, ICMP and ICMPv6 checksums are correct, lengths agree, VLAN tags are well formed.

The stream
----------
Frame ``i`` of the stream belongs to flow ``f = i % F`` (flows take turns, round robin) and is
that flow's frame number ``q = i // F`` (its per-flow sequence number).  Flow ``f`` cycles
through the sizes starting at its own offset: frame ``(f, q)`` has size ``sizes[(f + q) % S]``,
so consecutive frames differ in size as well as flow.  With ``flows=N`` the flows take the
protocol / IP version / VLAN combinations in turn: flow ``f`` has protocol
``protocols[f % P]``, IP version ``ip_versions[(f // P) % V]``, VLAN ``vlans[(f // (P*V)) % W]``,
so every combination appears once ``N >= P*V*W`` (``flows=None``: exactly one flow each).
Addresses, ports, TCP initial sequence numbers and payload bytes come from ``seed``.
Same arguments, same seed: byte-identical stream, whatever the batch size.

Frame layout (``size`` is the whole Ethernet frame without FCS, VLAN tag included)::

    Ethernet 14 | [802.1Q tag 4] | IPv4 20 or IPv6 40 | UDP 8, TCP 20, ICMP echo 8 | payload

Payload: the *stamp*, then filler::

    offset 0: flow id, u32 big-endian      (the f above)
    offset 4: per-flow sequence, u32 BE    (the q above, modulo 2**32)
    offset 8: filler (seeded bytes, the same for every flow)

Per frame, the generator also varies: IPv4 identification = ``q & 0xffff``; TCP sequence
number = ISN + payload bytes sent before in this flow (mod 2**32); ICMP echo sequence =
``q & 0xffff`` (the echo identifier is the flow's ``sport``).  :func:`read_stamp` recovers
``(flow id, seq)`` from a frame's bytes; :meth:`Generator.flow_id_of` / :meth:`seq_of` give them
from the stream index.

A size below the smallest frame a flow can have (headers + 8-byte stamp, see
:func:`min_frame_size`) raises ``ValueError`` by default; ``undersize="clamp"`` raises such
frames to the minimum instead (so ``sizes=64`` with IPv6 TCP flows makes 82-byte frames).

How it is fast
--------------
Per flow and size, one *template* frame is built once, with every per-frame field zero, and
the one's-complement sum of its checksummed words kept (vectorised over flows with numpy).  A
batch is then: gather template rows into a 2-D array (``n x Lmax``), write the per-frame fields
column by column for all rows at once, and fix each checksum by adding the new words to the
template's sum (RFC 1624 incremental update).  No Python work per frame.  Frames of one width
come out back to back (``PacketBatch.uniform_length`` holds); mixed sizes sit in rows of the
widest size (the batch's ``start``/``caplen`` say where each is; the gaps are never read).

Pacing
------
With ``rate`` (frames/s), frame ``i`` becomes eligible at ``t0 + i/rate`` on the monotonic
clock, and a batch is handed out no earlier than its last frame's eligible time (the generator
sleeps).  Each frame's timestamp is its eligible time (on the epoch clock), so the pacing is
visible in the timestamps: equal spacing of 1/rate.  A token bucket of depth ``burst`` bounds
the catch-up: if the consumer stalls longer than ``burst`` frames' worth, the schedule restarts
from "now" and the timestamps show the gap (they never claim a rate that was not delivered).
Without ``rate`` every frame of a batch gets the time the batch was built.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .abi import (
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LINKTYPE_ETHERNET,
    VLAN_HLEN,
)
from .packets import Packet, PacketBatch

Protocol = Literal["udp", "tcp", "icmp"]
PROTOCOLS: tuple[Protocol, ...] = ("udp", "tcp", "icmp")

STAMP_LEN = 8  # flow id u32 + sequence u32, both big-endian, at payload offset 0
L3_HLEN = {4: 20, 6: 40}
L4_HLEN: dict[str, int] = {"udp": 8, "tcp": 20, "icmp": 8}
IPPROTO: dict[tuple[int, str], int] = {
    (4, "udp"): IPPROTO_UDP,
    (4, "tcp"): IPPROTO_TCP,
    (4, "icmp"): IPPROTO_ICMP,
    (6, "udp"): IPPROTO_UDP,
    (6, "tcp"): IPPROTO_TCP,
    (6, "icmp"): IPPROTO_ICMPV6,
}
ICMP_ECHO_REQUEST = {4: 8, 6: 128}
TCP_FLAGS_PSH_ACK = 0x18
MAX_FRAME = 65535
TEMPLATE_BYTES_MAX = 1 << 30  # flows x sizes x widest frame; beyond this, refuse

_U24_SCRAMBLE = 2654435761  # odd, so f -> f * A mod 2**24 is a bijection: unique addresses


def min_frame_size(protocol: Protocol, ip_version: int, vlan: bool = False) -> int:
    """The smallest frame a flow of this kind can have: its headers plus the 8-byte stamp."""
    return (
        ETH_HLEN + (VLAN_HLEN if vlan else 0) + L3_HLEN[ip_version] + L4_HLEN[protocol] + STAMP_LEN
    )


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow: its 5-tuple, IP version and VLAN.  For ICMP, ``sport`` is the echo identifier
    and ``dport`` is 0."""

    protocol: Protocol
    ip_version: int
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dport: int
    vlan: int | None = None  # VLAN id 0..4095; None: untagged

    def __post_init__(self) -> None:
        if self.protocol not in L4_HLEN:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.ip_version not in (4, 6):
            raise ValueError(f"ip_version must be 4 or 6, got {self.ip_version!r}")
        if self.src.version != self.ip_version or self.dst.version != self.ip_version:
            raise ValueError(
                f"addresses of an IPv{self.ip_version} flow must be IPv{self.ip_version}"
            )
        if not (0 <= self.sport <= 0xFFFF and 0 <= self.dport <= 0xFFFF):
            raise ValueError("ports must be in 0..65535")
        if self.vlan is not None and not 0 <= self.vlan <= 4095:
            raise ValueError(f"vlan must be in 0..4095 or None, got {self.vlan}")


def _mac(value: str | bytes) -> np.ndarray:
    raw = value if isinstance(value, bytes) else bytes.fromhex(value.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"a MAC address has 6 bytes, got {value!r}")
    return np.frombuffer(raw, dtype=np.uint8)


def _fold(s: np.ndarray) -> np.ndarray:
    """Fold a (uint64) one's-complement sum to 16 bits."""
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _word_sum(rows: np.ndarray) -> np.ndarray:
    """Sum of the big-endian 16-bit words of each row (odd length: zero-padded), uint64."""
    if rows.shape[1] % 2:
        rows = np.pad(rows, ((0, 0), (0, 1)))
    w = rows.astype(np.uint64)
    return (w[:, 0::2] << np.uint64(8)).sum(axis=1) + w[:, 1::2].sum(axis=1)


def _put16(out: np.ndarray, sel: slice | np.ndarray, col: int, v: np.ndarray) -> None:
    """Write ``v`` big-endian into bytes ``col, col+1`` of rows ``sel``.

    Fields sit at even offsets; in rows of even width that is one column of a ``>u2`` view
    (a single strided store per row, ~4x faster than two byte columns).
    """
    if col % 2 == 0 and out.shape[1] % 2 == 0:
        out.view(">u2")[sel, col // 2] = v
    else:
        out[sel, col] = v >> 8
        out[sel, col + 1] = v & 0xFF


def _put32(out: np.ndarray, sel: slice | np.ndarray, col: int, v: np.ndarray) -> None:
    _put16(out, sel, col, v >> 16)
    _put16(out, sel, col + 2, v & 0xFFFF)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where things are in frames of one (IP version, protocol, tagged) kind."""

    ip_version: int
    protocol: Protocol
    tagged: bool

    @property
    def l3(self) -> int:
        return ETH_HLEN + (VLAN_HLEN if self.tagged else 0)

    @property
    def l4(self) -> int:
        return self.l3 + L3_HLEN[self.ip_version]

    @property
    def payload(self) -> int:
        return self.l4 + L4_HLEN[self.protocol]

    @property
    def csum(self) -> int:  # L4 checksum field
        return self.l4 + {"udp": 6, "tcp": 16, "icmp": 2}[self.protocol]


class Generator:
    """Synthetic traffic: flows x sizes x protocols, as fast as possible or at a rate.

    See the module docstring for the stream, the frame layout and pacing.  The object is a
    description: each call of :meth:`batches`, :meth:`packets` or :meth:`frames` starts the
    stream from frame 0.

    ``flows``: a number of generated flows, explicit :class:`Flow` s, or ``None`` (one per
    protocol x IP version x VLAN combination).  ``sizes``: frame sizes in bytes (whole frame,
    no FCS).  ``vlan``: ``None`` (untagged), a VLAN id, or a sequence mixing ids and ``None``.
    ``count``: stream length (``None``: endless).  ``rate``: frames per second (``None``: as
    fast as possible).  ``burst``: token-bucket depth in frames.  ``clock`` / ``sleep``:
    monotonic nanoseconds and a sleep in seconds (tests pass fakes).  ``start_ns``: epoch
    timestamp of the stream's start (default: the wall clock when the stream starts).
    """

    def __init__(
        self,
        flows: int | Sequence[Flow] | None = None,
        sizes: int | Sequence[int] = (96, 512, 1514),
        protocols: Sequence[Protocol] = PROTOCOLS,
        ip_versions: Sequence[int] = (4, 6),
        vlan: int | Sequence[int | None] | None = None,
        seed: int = 0,
        rate: float | None = None,
        count: int | None = None,
        src_mac: str | bytes = "02:00:00:00:00:01",
        dst_mac: str | bytes = "02:00:00:00:00:02",
        undersize: Literal["error", "clamp"] = "error",
        burst: int = 1024,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
        start_ns: int | None = None,
        ifindex: int = 0,
        rx_queue: int = 0,
    ) -> None:
        sizes_t = (sizes,) if isinstance(sizes, int) else tuple(sizes)
        if not sizes_t:
            raise ValueError("sizes must not be empty")
        for s in sizes_t:
            if not 1 <= s <= MAX_FRAME:
                raise ValueError(f"sizes must be in 1..{MAX_FRAME}, got {s}")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 frames/s, got {rate}")
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if undersize not in ("error", "clamp"):
            raise ValueError(f"undersize must be 'error' or 'clamp', got {undersize!r}")
        self.sizes = sizes_t
        self.seed = seed
        self.rate = rate
        self.count = count
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self.start_ns = start_ns
        self.ifindex = ifindex
        self.rx_queue = rx_queue
        self._src_mac, self._dst_mac = _mac(src_mac), _mac(dst_mac)
        rng = np.random.default_rng(seed)

        if flows is None or isinstance(flows, int):
            self._flows_from_seed(flows, protocols, ip_versions, vlan, rng)
        else:
            self._flows_given(list(flows))
            # The same draws as the seeded path would not make sense here; only the ISNs and
            # the filler come from the seed.
        n_flows = len(self._proto)
        self._isn = rng.integers(0, 1 << 32, n_flows, dtype=np.uint64)
        self._fill = rng.integers(0, 256, MAX_FRAME, dtype=np.uint8)
        self._build_templates(undersize)

    # --- flows -------------------------------------------------------------------------------

    def _flows_from_seed(
        self,
        flows: int | None,
        protocols: Sequence[Protocol],
        ip_versions: Sequence[int],
        vlan: int | Sequence[int | None] | None,
        rng: np.random.Generator,
    ) -> None:
        protocols = tuple(protocols)
        ip_versions = tuple(ip_versions)
        vlans = (vlan,) if vlan is None or isinstance(vlan, int) else tuple(vlan)
        for p in protocols:
            if p not in L4_HLEN:
                raise ValueError(f"protocols must be among {PROTOCOLS}, got {p!r}")
        for v in ip_versions:
            if v not in (4, 6):
                raise ValueError(f"ip_versions must be among (4, 6), got {v!r}")
        for t in vlans:
            if t is not None and not 0 <= t <= 4095:
                raise ValueError(f"vlan ids must be in 0..4095, got {t}")
        if not protocols or not ip_versions or not vlans:
            raise ValueError("protocols, ip_versions and vlan must not be empty")
        n_p, n_v, n_w = len(protocols), len(ip_versions), len(vlans)
        n = n_p * n_v * n_w if flows is None else flows
        if not 1 <= n <= 1 << 24:
            raise ValueError(f"flows must be in 1..{1 << 24}, got {n}")
        f = np.arange(n, dtype=np.int64)
        self._proto = np.array([protocols[i] for i in range(n_p)])[f % n_p]
        self._ipver = np.array(ip_versions, dtype=np.int64)[(f // n_p) % n_v]
        vl = np.array([-1 if t is None else t for t in vlans], dtype=np.int64)
        self._vlan = vl[(f // (n_p * n_v)) % n_w]
        # Addresses: 10.0.0.0/8 and fd00::/8; the low 24 bits of the source are a bijection
        # of the flow id, so every flow has its own source address (and so its own 5-tuple).
        low = (rng.integers(0, 1 << 24) + f * _U24_SCRAMBLE) % (1 << 24)
        dst_low = rng.integers(0, 1 << 24, n)
        src = np.zeros((n, 16), dtype=np.uint8)
        dst = np.zeros((n, 16), dtype=np.uint8)
        v6 = self._ipver == 6
        src[:, 0] = np.where(v6, 0xFD, 10)
        dst[:, 0] = np.where(v6, 0xFD, 10)
        src[v6, 1:13] = rng.integers(0, 256, 12, dtype=np.uint8)  # one random /104 prefix
        dst[v6, 1:13] = rng.integers(0, 256, 12, dtype=np.uint8)
        for k in range(3):
            shift = 16 - 8 * k
            col4, col6 = 1 + k, 13 + k
            src[~v6, col4] = (low[~v6] >> shift) & 0xFF
            src[v6, col6] = (low[v6] >> shift) & 0xFF
            dst[~v6, col4] = (dst_low[~v6] >> shift) & 0xFF
            dst[v6, col6] = (dst_low[v6] >> shift) & 0xFF
        self._src, self._dst = src, dst
        self._sport = rng.integers(1024, 1 << 16, n, dtype=np.int64)
        self._dport = rng.integers(1024, 1 << 16, n, dtype=np.int64)
        self._dport[self._proto == "icmp"] = 0

    def _flows_given(self, flows: list[Flow]) -> None:
        if not 1 <= len(flows) <= 1 << 24:
            raise ValueError(f"flows must hold 1..{1 << 24} flows, got {len(flows)}")
        n = len(flows)
        self._proto = np.array([fl.protocol for fl in flows])
        self._ipver = np.array([fl.ip_version for fl in flows], dtype=np.int64)
        self._vlan = np.array([-1 if fl.vlan is None else fl.vlan for fl in flows], dtype=np.int64)
        self._src = np.zeros((n, 16), dtype=np.uint8)
        self._dst = np.zeros((n, 16), dtype=np.uint8)
        for i, fl in enumerate(flows):
            self._src[i, : len(fl.src.packed)] = np.frombuffer(fl.src.packed, dtype=np.uint8)
            self._dst[i, : len(fl.dst.packed)] = np.frombuffer(fl.dst.packed, dtype=np.uint8)
        self._sport = np.array([fl.sport for fl in flows], dtype=np.int64)
        self._dport = np.array([fl.dport for fl in flows], dtype=np.int64)

    @property
    def n_flows(self) -> int:
        return len(self._proto)

    def flow(self, flow_id: int) -> Flow:
        """Flow ``flow_id`` as a :class:`Flow`."""
        v = int(self._ipver[flow_id])
        alen = 4 if v == 4 else 16
        addr = ipaddress.IPv4Address if v == 4 else ipaddress.IPv6Address
        vlan = int(self._vlan[flow_id])
        return Flow(
            protocol=str(self._proto[flow_id]),  # type: ignore[arg-type]
            ip_version=v,
            src=addr(self._src[flow_id, :alen].tobytes()),
            dst=addr(self._dst[flow_id, :alen].tobytes()),
            sport=int(self._sport[flow_id]),
            dport=int(self._dport[flow_id]),
            vlan=None if vlan < 0 else vlan,
        )

    @property
    def flows(self) -> tuple[Flow, ...]:
        """Every flow, in flow-id order (builds objects: slow for millions of flows)."""
        return tuple(self.flow(f) for f in range(self.n_flows))

    def flow_id_of(self, i: int | np.ndarray) -> int | np.ndarray:
        """Flow id of stream frame ``i`` (vectorised over arrays)."""
        return i % self.n_flows

    def seq_of(self, i: int | np.ndarray) -> int | np.ndarray:
        """Per-flow sequence number of stream frame ``i`` (before the mod 2**32 of the stamp)."""
        return i // self.n_flows

    def size_of(self, i: int | np.ndarray) -> int | np.ndarray:
        """Frame length of stream frame ``i`` (after ``undersize`` clamping)."""
        f, q = i % self.n_flows, i // self.n_flows
        return self._tlen[f * len(self.sizes) + (f + q) % len(self.sizes)]

    # --- templates ---------------------------------------------------------------------------

    def _build_templates(self, undersize: str) -> None:
        n_f, n_s = self.n_flows, len(self.sizes)
        layouts: dict[_Layout, np.ndarray] = {}
        lay_id = np.empty(n_f, dtype=np.int64)
        kinds = zip(self._ipver.tolist(), self._proto.tolist(), self._vlan.tolist(), strict=True)
        for key in sorted({(v, p, t >= 0) for v, p, t in kinds}):
            lay = _Layout(key[0], key[1], key[2])  # type: ignore[arg-type]
            members = np.nonzero(
                (self._ipver == lay.ip_version)
                & (self._proto == lay.protocol)
                & ((self._vlan >= 0) == lay.tagged)
            )[0]
            lay_id[members] = len(layouts)
            layouts[lay] = members
        self._layouts = list(layouts)
        self._lay_of_flow = lay_id

        tlen = np.empty(n_f * n_s, dtype=np.int64)
        for lay, members in layouts.items():
            m = min_frame_size(lay.protocol, lay.ip_version, lay.tagged)
            for si, s in enumerate(self.sizes):
                if s < m and undersize == "error":
                    tag = " with a VLAN tag" if lay.tagged else ""
                    raise ValueError(
                        f"size {s} is too small for {lay.protocol} over IPv{lay.ip_version}{tag}: "
                        f"the minimum is {m} bytes (headers + {STAMP_LEN}-byte stamp); pass "
                        "undersize='clamp' to raise such frames to the minimum"
                    )
                tlen[members * n_s + si] = max(s, m)
        self._tlen = tlen
        self._lmax = int(tlen.max())
        self.uniform_size: int | None = self._lmax if (tlen == self._lmax).all() else None
        if tlen.size * self._lmax > TEMPLATE_BYTES_MAX:
            raise ValueError(
                f"{n_f} flows x {n_s} sizes x {self._lmax} bytes of templates exceed "
                f"{TEMPLATE_BYTES_MAX} bytes: use fewer flows or sizes"
            )
        # Mixed sizes sit in rows of the widest; make that width even (see _put16).
        width = self._lmax if self.uniform_size is not None else self._lmax + self._lmax % 2
        self._tm = np.zeros((n_f * n_s, width), dtype=np.uint8)
        self._ipsum = np.zeros(n_f * n_s, dtype=np.uint32)  # folded, not complemented
        self._l4sum = np.zeros(n_f * n_s, dtype=np.uint32)
        for lay, members in layouts.items():
            for si in range(n_s):
                rows = members * n_s + si
                for length in np.unique(tlen[rows]):
                    sub = rows[tlen[rows] == length]
                    self._fill_templates(lay, sub // n_s, sub, int(length))
        # Per-flow TCP bookkeeping: payload bytes per cycle of sizes, and prefix sums within
        # one cycle, in the flow's own size order ((f + k) % S).
        hdr = np.array([lay.payload for lay in self._layouts])[lay_id]
        pay = self._tlen.reshape(n_f, n_s) - hdr[:, None]
        order = (np.arange(n_f)[:, None] + np.arange(n_s)[None, :]) % n_s
        rotated = np.take_along_axis(pay, order, axis=1)
        self._tcp_prefix = np.zeros((n_f, n_s + 1), dtype=np.int64)
        np.cumsum(rotated, axis=1, out=self._tcp_prefix[:, 1:])

    def _fill_templates(
        self, lay: _Layout, flows: np.ndarray, rows: np.ndarray, length: int
    ) -> None:
        """Build the template frames of ``flows`` (all of layout ``lay``) at ``length`` bytes."""
        n = len(flows)
        t = np.zeros((n, length), dtype=np.uint8)
        t[:, 0:6] = self._dst_mac
        t[:, 6:12] = self._src_mac
        et = ETH_P_IP if lay.ip_version == 4 else ETH_P_IPV6
        col = 12
        if lay.tagged:
            _put16(t, slice(None), 12, np.full(n, ETH_P_8021Q))
            _put16(t, slice(None), 14, self._vlan[flows] & 0x0FFF)
            col = 16
        _put16(t, slice(None), col, np.full(n, et))
        l3, l4, pay = lay.l3, lay.l4, lay.payload
        l4len = length - l4
        ipproto = IPPROTO[(lay.ip_version, lay.protocol)]
        all_rows = slice(None)
        if lay.ip_version == 4:
            t[:, l3] = 0x45
            _put16(t, all_rows, l3 + 2, np.full(n, length - l3))
            t[:, l3 + 6] = 0x40  # DF
            t[:, l3 + 8] = 64  # TTL
            t[:, l3 + 9] = ipproto
            t[:, l3 + 12 : l3 + 16] = self._src[flows, :4]
            t[:, l3 + 16 : l3 + 20] = self._dst[flows, :4]
            ipsum = _fold(_word_sum(t[:, l3 : l3 + 20]))
            _put16(t, all_rows, l3 + 10, ~ipsum & 0xFFFF)
            self._ipsum[rows] = ipsum
            pseudo = _word_sum(t[:, l3 + 12 : l3 + 20]) + np.uint64(ipproto + l4len)
        else:
            t[:, l3] = 0x60
            _put16(t, all_rows, l3 + 4, np.full(n, l4len))
            t[:, l3 + 6] = ipproto
            t[:, l3 + 7] = 64  # hop limit
            t[:, l3 + 8 : l3 + 24] = self._src[flows]
            t[:, l3 + 24 : l3 + 40] = self._dst[flows]
            pseudo = _word_sum(t[:, l3 + 8 : l3 + 40]) + np.uint64(
                (l4len >> 16) + (l4len & 0xFFFF) + ipproto
            )
        if lay.protocol == "udp":
            _put16(t, all_rows, l4, self._sport[flows])
            _put16(t, all_rows, l4 + 2, self._dport[flows])
            _put16(t, all_rows, l4 + 4, np.full(n, l4len))
        elif lay.protocol == "tcp":
            _put16(t, all_rows, l4, self._sport[flows])
            _put16(t, all_rows, l4 + 2, self._dport[flows])
            t[:, l4 + 12] = 5 << 4  # data offset: 5 words, no options
            t[:, l4 + 13] = TCP_FLAGS_PSH_ACK
            _put16(t, all_rows, l4 + 14, np.full(n, 0xFFFF))  # window
        else:
            t[:, l4] = ICMP_ECHO_REQUEST[lay.ip_version]
            _put16(t, all_rows, l4 + 4, self._sport[flows])  # echo identifier
            if lay.ip_version == 4:
                pseudo = np.zeros(n, dtype=np.uint64)  # ICMPv4 has no pseudo-header
        t[:, pay + STAMP_LEN :] = self._fill[: length - pay - STAMP_LEN]
        l4sum = _fold(_word_sum(t[:, l4:]) + pseudo)
        csum = ~l4sum & 0xFFFF
        if lay.protocol == "udp":
            csum[csum == 0] = 0xFFFF  # UDP: 0 means "no checksum"
        _put16(t, all_rows, lay.csum, csum)
        self._l4sum[rows] = l4sum
        self._tm[rows, :length] = t

    # --- frames ------------------------------------------------------------------------------

    def _render(
        self, i0: int, n: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``i0 .. i0+n-1`` as rows of a ``(n, Lmax)`` array, and their lengths."""
        n_f, n_s = self.n_flows, len(self.sizes)
        i = np.arange(i0, i0 + n, dtype=np.int64)
        f = i % n_f
        q = i // n_f
        s = (f + q) % n_s
        r = f * n_s + s
        out = np.take(self._tm, r, axis=0, out=out)  # gather: one row copy per frame
        # One's-complement arithmetic in uint32: a template sum (<= 0xFFFF) plus at most eight
        # 16-bit words stays below 2**20, and _fold takes it back to 16 bits.
        q32 = (q & 0xFFFFFFFF).astype(np.uint32)
        f32 = f.astype(np.uint32)
        stamp_sum = (f32 >> 16) + (f32 & 0xFFFF) + (q32 >> 16) + (q32 & 0xFFFF)
        lays = self._lay_of_flow[f]
        single = len(self._layouts) == 1
        for li, lay in enumerate(self._layouts):
            sel: slice | np.ndarray
            if single:
                sel = slice(None)
                rs, qs, fs, ss = r, q32, f, stamp_sum
            else:
                sel = np.nonzero(lays == li)[0]
                if not len(sel):
                    continue
                rs, qs, fs, ss = r[sel], q32[sel], f[sel], stamp_sum[sel]
            l3, l4, pay = lay.l3, lay.l4, lay.payload
            if lay.ip_version == 4:
                ip_id = qs & 0xFFFF
                _put16(out, sel, l3 + 4, ip_id)
                _put16(out, sel, l3 + 10, ~_fold(self._ipsum[rs] + ip_id) & 0xFFFF)
            add = ss
            if lay.protocol == "tcp":
                qq = q if single else q[sel]
                cyc, rem = np.divmod(qq, n_s)
                sent = cyc * self._tcp_prefix[fs, n_s] + self._tcp_prefix[fs, rem]
                seq = ((self._isn[fs] + sent.astype(np.uint64)) & 0xFFFFFFFF).astype(np.uint32)
                _put32(out, sel, l4 + 4, seq)
                add = add + (seq >> 16) + (seq & 0xFFFF)
            elif lay.protocol == "icmp":
                _put16(out, sel, l4 + 6, qs & 0xFFFF)
                add = add + (qs & 0xFFFF)
            _put32(out, sel, pay, fs.astype(np.uint32))
            _put32(out, sel, pay + 4, qs)
            csum = ~_fold(self._l4sum[rs] + add) & 0xFFFF
            if lay.protocol == "udp":
                csum[csum == 0] = 0xFFFF
            _put16(out, sel, lay.csum, csum)
        return out, self._tlen[r]

    def frames(self, n: int, start: int = 0, *, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start .. start+n-1`` as an ``(n, L)`` uint8 array: the benchmark fast path.

        Needs one frame size for all flows; ignores ``count``, ``rate`` and timestamps.
        ``out``: a C-contiguous ``(n, L)`` uint8 array to fill instead of a new one (saves
        the page faults of fresh memory, which can cost as much as the rendering itself).
        """
        if self.uniform_size is None:
            raise ValueError(
                f"frames() needs one frame size; this generator makes sizes "
                f"{sorted({int(x) for x in np.unique(self._tlen)})}: use batches()"
            )
        if n < 0 or start < 0:
            raise ValueError("n and start must be >= 0")
        if out is not None and (
            out.shape != (n, self.uniform_size)
            or out.dtype != np.uint8
            or not out.flags.c_contiguous
        ):
            raise ValueError(
                f"out must be a C-contiguous uint8 array of shape ({n}, {self.uniform_size})"
            )
        out, _ = self._render(start, n, out)
        return out

    def batches(self, batch_size: int = 1024) -> Iterator[PacketBatch]:
        """The stream as batches of ``batch_size`` frames (the last may be shorter).

        Paced when ``rate`` is set (see the module docstring); ends after ``count`` frames.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        t0 = self.clock()
        epoch0 = time.time_ns() if self.start_ns is None else self.start_ns
        period = None if self.rate is None else 1e9 / self.rate
        anchor_t, anchor_i = t0, 0  # frame i is eligible at anchor_t + (i - anchor_i) * period
        i = 0
        while self.count is None or i < self.count:
            k = batch_size if self.count is None else min(batch_size, self.count - i)
            if period is None:
                ts = np.full(k, epoch0 + (self.clock() - t0), dtype=np.int64)
            else:
                now = self.clock()
                burst_ns = self.burst * period
                if anchor_t + (i - anchor_i) * period < now - burst_ns:
                    anchor_t, anchor_i = now - burst_ns, i  # cap the credit: restart schedule
                offs = np.arange(i - anchor_i, i - anchor_i + k, dtype=np.float64) * period
                due = anchor_t + np.floor(offs).astype(np.int64)
                release = int(due[-1])
                while (now := self.clock()) < release:
                    self.sleep((release - now) / 1e9)
                ts = epoch0 + (due - t0)
            out, lens = self._render(i, k)
            width = out.shape[1]
            yield PacketBatch(
                buf=out.reshape(-1),
                start=np.arange(k, dtype=np.int64) * width,
                caplen=lens.astype(np.uint32),
                wire_len=lens.astype(np.uint32),
                ts_ns=ts,
                ifindex=np.full(k, self.ifindex, dtype=np.uint32),
                linktype=np.full(k, LINKTYPE_ETHERNET, dtype=np.uint16),
                rx_queue=np.full(k, self.rx_queue, dtype=np.uint32),
            )
            i += k

    def packets(self) -> Iterator[Packet]:
        """The stream one :class:`Packet` at a time (paced per packet when ``rate`` is set)."""
        for batch in self.batches(1 if self.rate is not None else 256):
            yield from batch


def read_stamp(frame: bytes | bytearray | memoryview | np.ndarray) -> tuple[int, int]:
    """``(flow id, per-flow sequence)`` from a generator frame's bytes (VLAN tags allowed).

    Raises ``ValueError`` for a frame this module did not make.
    """
    b = bytes(frame)
    off = 12
    (et,) = struct.unpack_from("!H", b, off)
    while et in (ETH_P_8021Q, ETH_P_8021AD):
        off += 4
        (et,) = struct.unpack_from("!H", b, off)
    off += 2
    if et == ETH_P_IP:
        proto = b[off + 9]
        off += (b[off] & 0x0F) * 4
    elif et == ETH_P_IPV6:
        proto = b[off + 6]
        off += 40
    else:
        raise ValueError(f"not a generator frame: ethertype {et:#06x}")
    if proto == 6:
        off += (b[off + 12] >> 4) * 4
    elif proto in (17, 1, 58):
        off += 8
    else:
        raise ValueError(f"not a generator frame: IP protocol {proto}")
    if off + STAMP_LEN > len(b):
        raise ValueError("not a generator frame: too short for the stamp")
    flow_id, seq = struct.unpack_from("!II", b, off)
    return flow_id, seq
