"""Built-in steering programs: the ``xdp-bench redirect-cpu -p MODE`` programs of xdp-tools.

Each program maps a frame to an *index* into a :class:`~cpumap.programs.cpu_table.CpuTable` (the
sample's ``cpus_available`` / ``cpus_count``) and redirects it to the CPU found there:

=============  ====================================================================
``no-touch``   index 0, without reading the packet
``touch``      index 0; reads the Ethernet type: shorter than 14 bytes ABORTED, an
               802.3 length field (< 0x0600) DROP
``round-robin`` index = a counter per program object (per RX producer), mod count
``l4-proto``   by IP protocol: TCP 0, UDP 1, ICMP/ICMPv6 2, other 0, non-IP 0
``l4-filter``  ``l4-proto``, and UDP to destination port 9 (configurable) is DROPped
``l4-hash``    the sample's default: SuperFastHash of the sum of the address words,
               seeded with 15485863 + the protocol; index = hash % count.  Symmetric:
               both directions of a flow go to one CPU.  Non-IP: index 0.
``l4-sport``   index = TCP/UDP source port % count (0 when there is none)
``l4-dport``   index = destination port % count
=============  ====================================================================

What is the same in every mode (the sample's checks, in its order)
------------------------------------------------------------------
* Parsing follows the sample's ``parse_eth``: Ethernet, then up to two VLAN tags (802.1Q
  or 802.1ad).  A frame shorter than 14 bytes, with an 802.3 length in its type field,
  or cut inside a tag is "just skipped": ``XDP_PASS`` (the ``l4-*`` modes).  Frames of
  another link type than Ethernet are skipped too (XDP only ever sees Ethernet).
* An IPv4 header is read when its 20 bytes are there, an IPv6 header when its 40 are;
  otherwise its protocol (and hash) count as 0.  IPv6 extension headers are not walked:
  the protocol is the fixed header's next-header field.
* The chosen CPU is ``cpus[index]``.  An empty table, an index past the table (only
  ``l4-proto``/``l4-filter`` with ``strict_index``) or a CPU that is not a key of the map
  (>= ``max_entries``) makes the frame ``XDP_ABORTED``, as the sample's sentinel does.
  A CPU in range whose entry is empty is the engine's business: a redirect error.
* The table is read once per frame (per-frame form) or once per batch (vectorized);
  ``last_generation`` says which generation the last frame or batch used.

Where xdp-tools has quirks, docs/steering.md says what we kept, what we fixed and which
options bring the quirk back.

Two forms, one answer
---------------------
Every program is one object with two methods: :meth:`Steering.frame` (per frame, given an
:class:`~cpumap.programs.context.XdpContext`) and :meth:`Steering.batch` (vectorized, given an
:class:`~cpumap.programs.context.XdpBatch`, returning ``(uint8 verdicts, uint32 keys)``).  Calling
the object runs the form chosen by ``vectorized``, the attribute the engine reads.  Both
forms give the same verdict and target for every frame, malformed and truncated ones
included (tests/programs/test_steering.py proves it with hypothesis).

The vectorized form reads a fixed window of every frame (``window(0, 102)``: a view
when the frames are consecutive in the pool) and works on whole columns: a batch costs a
few dozen numpy calls whatever its size, and no Python per frame.  Bytes past a frame's
end are in the window but every use is masked by the frame's length.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..abi import (
    ETH_HLEN,
    ETH_P_802_3_MIN,
    ETH_P_IP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LINKTYPE_ETHERNET,
    XDP_ABORTED,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
)
from .context import NO_KEY, CpuMapLike, XdpBatch, XdpContext
from .cpu_table import CpuTable, TableSnapshot
from .xdp_parse import (
    BE16,
    INITVAL,
    SKIPPED,
    U32,
    Link,
    ip_np,
    ip_pair_hash,
    ip_pair_hash_np,
    ip_proto,
    none_skipped,
    parse_eth,
    parse_eth_np,
    ports,
    ports_np,
    superfasthash4,
)

__all__ = [
    "BUILTIN_PROGRAMS",
    "FLOW_HASH",
    "INITVAL",
    "MODES",
    "FlowHash",
    "L4Dport",
    "L4Filter",
    "L4Hash",
    "L4Proto",
    "L4Sport",
    "NoTouch",
    "RoundRobin",
    "Steering",
    "Touch",
    "make_program",
    "superfasthash4",
]


def _skipped(verdicts: np.ndarray, link: Link) -> None:
    """Mark the frames ``parse_eth`` skipped as PASS (in place)."""
    if link.cls is not None:
        verdicts[link.cls == SKIPPED] = XDP_PASS


# -- the programs ---------------------------------------------------------------------------
class _TwoForms:
    """A built-in program's two forms behind one call: ``frame(ctx)`` per frame, ``batch(batch)``
    vectorized; calling the object runs the one ``vectorized`` (the attribute the engine
    reads) chooses."""

    vectorized: bool
    frame: Callable[[XdpContext], int]  # each subclass's own
    batch: Callable[[XdpBatch], tuple[np.ndarray, np.ndarray]]

    def __call__(self, arg: Any) -> Any:
        if self.vectorized:
            return self.batch(arg)
        return self.frame(arg)


class Steering(_TwoForms, abc.ABC):
    """Base of the built-in programs: a CPU table, a map, and the two forms.

    ``cmap``: the map redirected into (the per-frame form calls ``ctx.redirect_map`` on
    it; both forms abort CPUs >= its ``max_entries``).  ``table``: a :class:`CpuTable`,
    or a sequence of CPUs for a fixed table.  ``vectorized``: which form calling the
    object runs (the attribute the engine reads).

    Concurrency: one object per RX producer (a forked producer has its own copy); the
    table may be set by anyone at any time (cpu_table.py).  The object caches what it
    derived from the table's current generation, so two threads must not share one.
    """

    mode: ClassVar[str] = ""
    # Every frame of a conversation, both directions, gets one index (for a given table).
    symmetric: ClassVar[bool] = True

    def __init__(
        self,
        cmap: CpuMapLike,
        table: CpuTable | Sequence[int],
        *,
        vectorized: bool = True,
    ) -> None:
        if not isinstance(table, CpuTable):
            cpus = list(table)
            table = CpuTable(max(len(cpus), 1), cpus)
        self.cmap = cmap
        self.table = table
        self.vectorized = vectorized
        self.max_entries: int = cmap.max_entries
        self.last_generation = -1
        # Per-generation cache: the table's CPUs and which of them are usable.
        self._snap_gen = -1
        self._valid: np.ndarray | None = None

    def __repr__(self) -> str:
        form = "vectorized" if self.vectorized else "per frame"
        return f"<{type(self).__name__} {self.mode!r} {form} table={self.table.cpus}>"

    # -- the two forms (subclasses) -------------------------------------------------------
    @abc.abstractmethod
    def frame(self, ctx: XdpContext) -> int:
        """The per-frame form: a verdict; ``ctx.redirect_key`` set when it redirects."""

    @abc.abstractmethod
    def batch(self, batch: XdpBatch) -> tuple[np.ndarray, np.ndarray]:
        """The vectorized form: ``(verdicts uint8[n], keys uint32[n])``."""

    # -- shared steps ---------------------------------------------------------------------
    def _read(self) -> TableSnapshot:
        snap = self.table.read()
        self.last_generation = snap.generation
        if snap.generation != self._snap_gen:
            self._snap_gen = snap.generation
            bad = snap.array >= self.max_entries
            self._valid = ~bad if bad.any() else None
        return snap

    def _to_cpu(self, ctx: XdpContext, snap: TableSnapshot, index: int) -> int:
        """Redirect to ``cpus[index]`` (index < count), or ABORTED when it is unusable."""
        cpu = snap.cpus[index]
        if cpu >= self.max_entries:
            return XDP_ABORTED
        return ctx.redirect_map(self.cmap, cpu)

    def _to_cpus(
        self, snap: TableSnapshot, index: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Verdicts and keys for ``cpus[index]`` (every index < count, count > 0)."""
        keys = snap.array[index]
        verdicts = np.full(n, XDP_REDIRECT, dtype=np.uint8)
        if self._valid is not None:
            verdicts[~self._valid[index]] = XDP_ABORTED
        return verdicts, keys


def _aborted(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(n, dtype=np.uint8), np.zeros(n, dtype=np.uint32)


class NoTouch(Steering):
    """``no-touch``: every frame to ``cpus[0]``, without reading it."""

    mode = "no-touch"

    def frame(self, ctx: XdpContext) -> int:
        snap = self._read()
        return self._to_cpu(ctx, snap, 0) if snap.cpus else XDP_ABORTED

    def batch(self, batch: XdpBatch) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch)
        snap = self._read()
        if not snap.cpus:
            return _aborted(n)
        cpu = snap.cpus[0]
        v = XDP_REDIRECT if cpu < self.max_entries else XDP_ABORTED
        return np.full(n, v, dtype=np.uint8), np.full(n, cpu, dtype=np.uint32)


class Touch(Steering):
    """``touch``: like ``no-touch``, but reads the Ethernet type: a frame shorter than 14
    bytes is ABORTED, an 802.3 length field DROPped, a non-Ethernet frame PASSed."""

    mode = "touch"

    def frame(self, ctx: XdpContext) -> int:
        snap = self._read()
        data = ctx.packet
        if ctx.linktype != LINKTYPE_ETHERNET:
            return XDP_PASS
        if len(data) < ETH_HLEN:
            return XDP_ABORTED
        if (data[12] << 8 | data[13]) < ETH_P_802_3_MIN:
            return XDP_DROP
        return self._to_cpu(ctx, snap, 0) if snap.cpus else XDP_ABORTED

    def batch(self, batch: XdpBatch) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch)
        snap = self._read()
        if snap.cpus:
            cpu = snap.cpus[0]
            v = XDP_REDIRECT if cpu < self.max_entries else XDP_ABORTED
            verdicts = np.full(n, v, dtype=np.uint8)
            keys = np.full(n, cpu, dtype=np.uint32)
        else:
            verdicts, keys = _aborted(n)
        if n == 0:
            return verdicts, keys
        length = batch.length
        et = batch.window(12, 2).view(BE16)[:, 0]
        verdicts[et < ETH_P_802_3_MIN] = XDP_DROP
        if int(length.min()) < ETH_HLEN:
            verdicts[length < ETH_HLEN] = XDP_ABORTED
        lt = batch.linktype
        if (lt != LINKTYPE_ETHERNET).any():
            verdicts[lt != LINKTYPE_ETHERNET] = XDP_PASS
        return verdicts, keys


class RoundRobin(Steering):
    """``round-robin``: frame after frame over the table's indices.

    The counter belongs to this object -- one per RX producer, as the sample's is per CPU
    (``BPF_MAP_TYPE_PERCPU_ARRAY``): a forked producer process has its own copy.  When
    the table shrinks below the counter, the counter restarts at 0 (the sample's
    ``== count`` test misses it and aborts frames until its u32 wraps).
    """

    mode = "round-robin"
    symmetric = False

    def __init__(
        self,
        cmap: CpuMapLike,
        table: CpuTable | Sequence[int],
        *,
        vectorized: bool = True,
    ) -> None:
        super().__init__(cmap, table, vectorized=vectorized)
        self.position = 0  # the next frame's index (may be >= count after a shrink)
        self._steps = np.arange(256, dtype=np.int64)

    def frame(self, ctx: XdpContext) -> int:
        snap = self._read()
        count = len(snap.cpus)
        if count == 0:
            self.position = 0
            return XDP_ABORTED
        i = self.position if self.position < count else 0
        self.position = i + 1 if i + 1 < count else 0
        return self._to_cpu(ctx, snap, i)

    def batch(self, batch: XdpBatch) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch)
        snap = self._read()
        count = len(snap.cpus)
        if count == 0:
            self.position = 0
            return _aborted(n)
        start = self.position if self.position < count else 0
        self.position = (start + n) % count
        if n > len(self._steps):
            self._steps = np.arange(n, dtype=np.int64)
        index = self._steps[:n] + start
        index %= count
        return self._to_cpus(snap, index, n)


class L4Proto(Steering):
    """``l4-proto``: by IP protocol class.

    ``proto_index`` maps IP protocols to table indices (default TCP 0, UDP 1, ICMP and
    ICMPv6 2); ``default_index`` is for other protocols (and a cut IP header: protocol
    0); ``non_ip_index`` for non-IP frames (xdp-tools: 1, UDP's, by a slip; ours 0).  An
    index past the table wraps modulo its count, unless ``strict_index`` (xdp-tools:
    ABORTED -- every ICMP frame on a machine with fewer than 3 CPUs).
    """

    mode = "l4-proto"
    PROTO_INDEX: ClassVar[Mapping[int, int]] = {
        IPPROTO_TCP: 0,
        IPPROTO_UDP: 1,
        IPPROTO_ICMP: 2,
        IPPROTO_ICMPV6: 2,
    }

    def __init__(
        self,
        cmap: CpuMapLike,
        table: CpuTable | Sequence[int],
        *,
        vectorized: bool = True,
        proto_index: Mapping[int, int] | None = None,
        default_index: int = 0,
        non_ip_index: int = 0,
        strict_index: bool = False,
    ) -> None:
        super().__init__(cmap, table, vectorized=vectorized)
        mapping = dict(self.PROTO_INDEX if proto_index is None else proto_index)
        for proto, index in mapping.items():
            if not 0 <= proto <= 255:
                raise ValueError(f"IP protocol {proto} is not in 0..255")
            _check_index(index, "proto_index values")
        _check_index(default_index, "default_index")
        _check_index(non_ip_index, "non_ip_index")
        self.proto_index = mapping
        self.default_index = default_index
        self.non_ip_index = non_ip_index
        self.strict_index = strict_index
        self._index_of = np.full(256, default_index, dtype=np.int64)
        for proto, index in mapping.items():
            self._index_of[proto] = index

    def _index(self, data: memoryview, n: int) -> int:
        """The table index, or -1 for a skipped frame."""
        et, l3 = parse_eth(data, n)
        if et < 0:
            return -1
        proto = ip_proto(data, n, et, l3)
        return self.non_ip_index if proto < 0 else int(self._index_of[proto])

    def _finish(self, ctx: XdpContext, snap: TableSnapshot, index: int) -> int:
        count = len(snap.cpus)
        if index >= count:
            if self.strict_index or count == 0:
                return XDP_ABORTED
            index %= count
        return self._to_cpu(ctx, snap, index)

    def frame(self, ctx: XdpContext) -> int:
        snap = self._read()
        data = ctx.packet
        if ctx.linktype != LINKTYPE_ETHERNET:
            return XDP_PASS
        index = self._index(data, len(data))
        return XDP_PASS if index < 0 else self._finish(ctx, snap, index)

    def _index_np(self, link: Link) -> np.ndarray:
        v4, v6, proto = ip_np(link)
        index = self._index_of[proto]
        return np.where(v4 | v6, index, self.non_ip_index)

    def _finish_np(
        self, snap: TableSnapshot, index: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        count = len(snap.cpus)
        if count == 0:
            return _aborted(n)
        over = index >= count
        if not over.any():
            return self._to_cpus(snap, index, n)
        if not self.strict_index:
            return self._to_cpus(snap, index % count, n)
        verdicts, keys = self._to_cpus(snap, np.where(over, 0, index), n)
        verdicts[over] = XDP_ABORTED
        return verdicts, keys

    def batch(self, batch: XdpBatch) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch)
        snap = self._read()
        if n == 0:
            return _aborted(0)
        link = parse_eth_np(batch)
        verdicts, keys = self._finish_np(snap, self._index_np(link), n)
        _skipped(verdicts, link)
        return verdicts, keys


class L4Filter(L4Proto):
    """``l4-filter``: ``l4-proto``, and UDP datagrams to one of ``drop_ports`` (default
    9, pktgen's discard port) are DROPped, over IPv4 and -- unless ``filter_ipv6`` is
    false -- IPv6 (xdp-tools: IPv4 only).  Ports as :func:`cpumap.programs.xdp_parse.ports` reads
    them."""

    mode = "l4-filter"

    def __init__(
        self,
        cmap: CpuMapLike,
        table: CpuTable | Sequence[int],
        *,
        vectorized: bool = True,
        drop_ports: Iterable[int] = (9,),
        filter_ipv6: bool = True,
        proto_index: Mapping[int, int] | None = None,
        default_index: int = 0,
        non_ip_index: int = 0,
        strict_index: bool = False,
    ) -> None:
        super().__init__(
            cmap,
            table,
            vectorized=vectorized,
            proto_index=proto_index,
            default_index=default_index,
            non_ip_index=non_ip_index,
            strict_index=strict_index,
        )
        ports = frozenset(int(p) for p in drop_ports)
        for p in ports:
            if not 1 <= p <= 0xFFFF:
                raise ValueError(f"drop port {p} is not in 1..65535")
        self.drop_ports = ports
        self.filter_ipv6 = filter_ipv6
        self._drop = np.zeros(0x10000, dtype=bool)
        self._drop[list(ports)] = True

    def frame(self, ctx: XdpContext) -> int:
        snap = self._read()
        data = ctx.packet
        if ctx.linktype != LINKTYPE_ETHERNET:
            return XDP_PASS
        n = len(data)
        et, l3 = parse_eth(data, n)
        if et < 0:
            return XDP_PASS
        proto = ip_proto(data, n, et, l3)
        if proto < 0:
            return self._finish(ctx, snap, self.non_ip_index)
        if proto == IPPROTO_UDP and (et == ETH_P_IP or self.filter_ipv6):
            _, dport = ports(data, n, et, l3)
            if dport in self.drop_ports:
                return XDP_DROP
        return self._finish(ctx, snap, int(self._index_of[proto]))

    def batch(self, batch: XdpBatch) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch)
        snap = self._read()
        if n == 0:
            return _aborted(0)
        link = parse_eth_np(batch)
        v4, v6, proto = ip_np(link)
        index = np.where(v4 | v6, self._index_of[proto], self.non_ip_index)
        verdicts, keys = self._finish_np(snap, index, n)
        udp = (v4 | v6 if self.filter_ipv6 else v4) & (proto == IPPROTO_UDP)
        if udp.any():
            _, dport = ports_np(link)
            verdicts[udp & self._drop[dport]] = XDP_DROP
        _skipped(verdicts, link)
        return verdicts, keys


class _ByValue(Steering):
    """Steering by a value of each frame's headers: index = value % count.  Frames of
    another link type or with a cut Ethernet header PASS; an empty table ABORTs.
    Subclasses say what the value is, in both forms."""

    @abc.abstractmethod
    def _value(self, data: Any, n: int, et: int, l3: int) -> int:
        """The frame's value (per-frame form)."""

    @abc.abstractmethod
    def _values_np(self, link: Link) -> np.ndarray:
        """Every frame's value, uint32 (vectorized form)."""

    def frame(self, ctx: XdpContext) -> int:
        snap = self._read()
        data = ctx.packet
        if ctx.linktype != LINKTYPE_ETHERNET:
            return XDP_PASS
        n = len(data)
        et, l3 = parse_eth(data, n)
        if et < 0:
            return XDP_PASS
        count = len(snap.cpus)
        if count == 0:
            return XDP_ABORTED
        return self._to_cpu(ctx, snap, self._value(data, n, et, l3) % count)

    def batch(self, batch: XdpBatch) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch)
        snap = self._read()
        count = len(snap.cpus)
        if n == 0:
            return _aborted(0)
        if count == 1 and none_skipped(batch):
            # Fast path == the general one below with no frame skipped, where value % 1 == 0
            # needs no value: no packet byte read (the RX side's record walk left the headers
            # to the worker); test_by_value_modes_over_one_cpu_skip_the_values.
            return self._to_cpus(snap, np.zeros(n, dtype=np.uint32), n)
        link = parse_eth_np(batch)
        if count == 0:
            verdicts, keys = _aborted(n)
        else:
            if count == 1:  # value % 1 == 0: no frame's value can change its CPU
                # Fast path == the else branch; test_by_value_modes_over_one_cpu_skip_the_values.
                values = np.zeros(n, dtype=np.uint32)
            else:
                values = self._values_np(link)
                values %= U32(count)
            verdicts, keys = self._to_cpus(snap, values, n)
        _skipped(verdicts, link)
        return verdicts, keys


class L4Hash(_ByValue):
    """``l4-hash`` (the sample's default): index = hash % count, where hash is
    SuperFastHash of the sum of the source and destination address words (IPv6: all
    eight), seeded with 15485863 + the IP protocol, exactly as xdp-tools computes it on
    a little-endian host.  Symmetric; ports are not used, so a flow's fragments stay
    together.  Non-IP frames and cut IP headers hash to 0."""

    mode = "l4-hash"

    def _value(self, data: Any, n: int, et: int, l3: int) -> int:
        return ip_pair_hash(data, n, et, l3)

    def _values_np(self, link: Link) -> np.ndarray:
        return ip_pair_hash_np(link)


class _L4Port(_ByValue):
    """``l4-sport`` / ``l4-dport``: index = port % count (port 0 when there is none:
    non-IP, not TCP/UDP, a fragment, a cut header)."""

    symmetric = False
    _which: ClassVar[int] = 0  # 0: source port, 1: destination port

    def _value(self, data: Any, n: int, et: int, l3: int) -> int:
        return ports(data, n, et, l3)[self._which]

    def _values_np(self, link: Link) -> np.ndarray:
        return ports_np(link)[self._which]


class L4Sport(_L4Port):
    """``l4-sport``: index = TCP/UDP source port % count."""

    mode = "l4-sport"
    _which = 0


class L4Dport(_L4Port):
    """``l4-dport``: index = TCP/UDP destination port % count."""

    mode = "l4-dport"
    _which = 1


# -- the skb's flow hash: not an xdp-bench mode ---------------------------------------------
class FlowHash(_TwoForms):
    """Steer by the skb's symmetric flow hash: both directions of a flow land on one entry.

    ``keys`` are the map keys to spread over (the "available CPUs" table); frame goes to
    ``keys[hash % len(keys)]``.  Non-IP frames hash to 0, so they all go to ``keys[0]``.
    The per-frame and vectorized forms choose the same key for every frame.
    """

    def __init__(self, cmap: CpuMapLike, keys: Sequence[int], *, vectorized: bool = True) -> None:
        if not keys:
            raise ValueError("FlowHash needs at least one key")
        self.cmap = cmap
        self.keys = [int(k) for k in keys]
        self._keys_arr = np.array(self.keys, dtype=np.uint32)
        # hash % n for a power of two n is hash & (n - 1), a third of the cost; with keys
        # 0 .. n-1 that is the key itself (no gather).
        n = len(self.keys)
        self._mask = np.uint32(n - 1) if n & (n - 1) == 0 else None
        self._identity = self.keys == list(range(n))
        # As redirect_map stores them (a negative key names no entry).
        self._redirect_keys = [k & 0xFFFFFFFF if k >= 0 else NO_KEY for k in self.keys]
        self.vectorized = vectorized

    def frame(self, ctx: XdpContext) -> int:
        h = ctx.skb.hash  # the poll's hash column: parsed once for the batch
        # ctx.redirect_map(self.cmap, key) with no flags, inlined (two calls a frame fewer).
        # Fast path == that call; test_flow_hash_fast_paths_equal_the_general_path.
        ctx.redirect_key = self._redirect_keys[h % len(self._redirect_keys)]
        ctx.redirect_target = self.cmap
        return XDP_REDIRECT

    def batch(self, batch: XdpBatch) -> tuple[np.ndarray, np.ndarray]:
        if len(self.keys) == 1:
            # hash % 1 == 0: every frame goes to the one key, so the batch's headers need
            # not be parsed (a fixed redirect, as the kernel's redirect-cpu to one CPU).
            # Fast path == the general take; test_flow_hash_fast_paths_equal_the_general_path.
            return (
                np.full(len(batch), XDP_REDIRECT, dtype=np.uint8),
                np.full(len(batch), self._keys_arr[0], dtype=np.uint32),
            )
        h = batch.skb.hash
        if self._mask is None:  # the general take: keys[hash % len(keys)]
            keys = self._keys_arr.take(h % len(self._keys_arr))
        elif self._identity:  # == general take; test_flow_hash_fast_paths_equal_the_general_path
            keys = (h & self._mask).astype(np.uint32, copy=False)
        else:  # a mask: == the general take; test_flow_hash_fast_paths_equal_the_general_path
            keys = self._keys_arr.take(h & self._mask)
        return np.full(len(batch), XDP_REDIRECT, dtype=np.uint8), keys


def _check_index(index: int, what: str) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{what} must be ints >= 0, not {index!r}")


_PROGRAMS = (NoTouch, Touch, RoundRobin, L4Proto, L4Filter, L4Hash, L4Sport, L4Dport)
# The xdp-bench redirect-cpu modes, by name.
MODES: dict[str, type[Steering]] = {cls.mode: cls for cls in _PROGRAMS}
FLOW_HASH = "flow-hash"  # FlowHash: the skb's symmetric hash, not an xdp-bench mode
# Every built-in program's name: what make_program makes (and the command line's -p takes).
BUILTIN_PROGRAMS: tuple[str, ...] = (*MODES, FLOW_HASH)


def make_program(
    name: str,
    cmap: CpuMapLike,
    cpus: CpuTable | Sequence[int],
    *,
    vectorized: bool = True,
    **options: Any,
) -> Steering | FlowHash:
    """The built-in program ``name`` (one of :data:`BUILTIN_PROGRAMS`) over ``cmap``: an
    ``xdp-bench redirect-cpu -p MODE`` mode (:data:`MODES`) over the CPU table ``cpus`` (a
    :class:`CpuTable`, or a sequence for a fixed one) with the mode's ``options``, or
    ``flow-hash``, a :class:`FlowHash` over the keys ``cpus`` (a sequence; no options)."""
    if name == FLOW_HASH:
        if isinstance(cpus, CpuTable):
            raise TypeError("flow-hash spreads over a fixed sequence of keys, not a CpuTable")
        return FlowHash(cmap, cpus, vectorized=vectorized, **options)
    cls = MODES.get(name)
    if cls is None:
        choices = ", ".join(BUILTIN_PROGRAMS)
        raise ValueError(f"unknown steering mode {name!r}; choose one of: {choices}")
    return cls(cmap, cpus, vectorized=vectorized, **options)
