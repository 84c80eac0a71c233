"""A batch's skb: :class:`SkbBatch`, the skb fields of many frames as numpy columns.

:class:`SkbBatch` answers the questions :class:`~cpumap.skb.Skb` answers, for a whole batch of
frames sitting in a frame pool, one numpy column per field.  Python's cost here is per call,
not per frame (one numpy call costs about as much as parsing a third of a frame in Python), so
the design counts calls.

Columns are lazy, and declared as data: at the end of the class, each column names the
stage that computes it (with its siblings).  A column is a non-data descriptor: its first
read runs the stage, which stores every column it makes as an instance attribute, so every
later read is a plain attribute read that never reaches the descriptor again.  (A
``__getattr__`` would do the same with less code, but Python reaches it only through an
``AttributeError`` raised and caught inside the lookup: about a microsecond per column,
measured, a third of a fast batch.)  The arguments the caller gave (``offset``, ``length``,
``wire_len`` ...) are kept as given and made int64 columns the same way, on first read:
the fast path reads none of them.

*The fast path* (``fast_path.py``): a batch whose every frame but a few has one common layout
gets each column from a fixed offset in a call or two, and the few others from the per-frame
parser.

*The general path* handles any batch: each stage (link layer, IP, transport, hash) is a fixed
sequence of whole-batch numpy operations over all frames, with masks instead of branches.  The
common cases (Ethernet with up to ``_BATCH_VLAN_TAGS`` tags, IPv4 with options, IPv6 with up
to ``_BATCH_IPV6_EXT_HEADERS`` extension headers, every supported link type) are done in
numpy, and the rare frames that need more (deep tag stacks, long extension chains) are handed
to the per-frame parser and their columns patched in.  Later stages read the patched columns,
so they stay exact.  (Running the general path on just the frames off the fast layout would
not pay: its cost is its number of calls, nearly the same for 10 frames as for 256.)

Either way every column equals the per-frame field for every frame, malformed and truncated
ones included; the tests check it on random batches built around the fast path's edges.

*The hash that rides* (``rx_hash`` / ``hash_type``): the RX side may have computed a frame's
``hash`` already (a capture's record walk, a steering program), as a NIC hands the driver
its RSS hash; the frame's descriptor then carries it.  The ``hash`` column takes it where
``hash_type`` is not ``HASH_NONE`` and computes only the other frames: a batch whose every
hash rides reads no packet byte for it (and, with :class:`PoolRows`, gathers no row), a
mixed one parses only the frames without one (a batch of those rows) unless they are most
of it.  The riding hash equals the computed one by contract (every writer computes
``flow_hash.py``'s definition; tests/skb/test_riding_hash.py holds them equal over every
frame of the shared captures and generated ones); the general path it replaces is the
computation of the column with no hash riding (``rx_hash=None``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numpy as np

from ..abi import (
    AF_INET,
    AF_INET6_VALUES,
    ETH_P_802_2,
    ETH_P_802_3,
    ETH_P_802_3_MIN,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_FRAGMENT,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from . import fast_path, interop
from .flow_hash import HASH_L3, HASH_L4, HASH_NONE, flow_hash_np
from .frame import Skb
from .headers import IPV6_EXT_UNIT, L4_HEADERS, VLAN_TPIDS, ParseDepth
from .rows import FrameReader, PoolRows

_NONE, _L2, _L3, _L4 = ParseDepth.NONE, ParseDepth.L2, ParseDepth.L3, ParseDepth.L4

# How much of the tag stack / extension chain numpy walks; frames needing more go per frame.
_BATCH_VLAN_TAGS: Final = 2
_BATCH_IPV6_EXT_HEADERS: Final = 4
# The first bytes of a frame that the hash's fast paths read (IPv6's hash window ends at 60).
_HASH_BYTES: Final = 64
assert fast_path.MIXED_MIN_WIDTH <= _HASH_BYTES and fast_path.FAST_IPV6.proto_at + 40 <= _HASH_BYTES
# At most this many frames of a batch without a riding hash are hashed one by one.
_FEW_WITHOUT_HASH: Final = fast_path.PATCH_LIMIT

# Link types as small "kinds", so per-kind facts are tables indexed by kind.
_KIND_OTHER, _KIND_ETH, _KIND_SLL, _KIND_SLL2, _KIND_NULL, _KIND_LOOP = 0, 1, 2, 3, 4, 5
_KIND_RAW, _KIND_IPV4, _KIND_IPV6, _KIND_COUNT = 6, 7, 8, 9
_LINKTYPE_KINDS: Final = {
    LINKTYPE_ETHERNET: _KIND_ETH,
    LINKTYPE_LINUX_SLL: _KIND_SLL,
    LINKTYPE_LINUX_SLL2: _KIND_SLL2,
    LINKTYPE_NULL: _KIND_NULL,
    LINKTYPE_LOOP: _KIND_LOOP,
    LINKTYPE_RAW: _KIND_RAW,
    LINKTYPE_IPV4: _KIND_IPV4,
    LINKTYPE_IPV6: _KIND_IPV6,
}
_LINKTYPE_TABLE_SIZE: Final = 512  # linktypes at or above this (or negative) are "other"
_KIND_OF_LINKTYPE = np.zeros(_LINKTYPE_TABLE_SIZE + 1, dtype=np.int64)  # [512], [-1]: "other"
for _lt, _kind in _LINKTYPE_KINDS.items():
    _KIND_OF_LINKTYPE[_lt] = _kind
#                         other ETH SLL SLL2 NULL LOOP RAW IPV4 IPV6
_NEVER: Final = 1 << 40  # more bytes than any frame has
_LINK_HDR_LEN = np.array([_NEVER, 14, 16, 20, 4, 4, 1, 0, 0], dtype=np.int64)  # bytes needed
_LINK_PAYLOAD = np.array([0, 14, 16, 20, 4, 4, 0, 0, 0], dtype=np.int64)  # L3 offset
_LINK_TYPE_POS = np.array([0, 12, 14, 0, 0, 0, 0, 0, 0], dtype=np.int64)  # u16 type field
_LINK_FIXED_PROTO = np.array([0, 0, 0, 0, 0, 0, 0, ETH_P_IP, ETH_P_IPV6], dtype=np.int64)
_HAS_TYPE_FIELD = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)

_IS_TPID = np.zeros(0x10000, dtype=bool)
_IS_TPID[list(VLAN_TPIDS)] = True
_FAMILY_PROTO = np.zeros(32, dtype=np.int64)  # index: address family (clamped to 31)
_FAMILY_PROTO[AF_INET] = ETH_P_IP
_FAMILY_PROTO[list(AF_INET6_VALUES)] = ETH_P_IPV6
_RAW_VERSION_PROTO = np.zeros(16, dtype=np.int64)
_RAW_VERSION_PROTO[4], _RAW_VERSION_PROTO[6] = ETH_P_IP, ETH_P_IPV6

_IS_EXT = np.zeros(256, dtype=bool)
_EXT_UNIT = np.zeros(256, dtype=np.int64)
for _proto, _unit in IPV6_EXT_UNIT.items():
    _IS_EXT[_proto], _EXT_UNIT[_proto] = True, _unit

# Indexed by ip_proto + 1, so that -1 (no IP) is row 0.
_L4_SIZE = np.zeros(257, dtype=np.int64)
_L4_HAS_PORTS = np.zeros(257, dtype=bool)
for _proto, (_, _size, _ports) in L4_HEADERS.items():
    _L4_SIZE[_proto + 1], _L4_HAS_PORTS[_proto + 1] = _size, _ports

# The u32 words of an IPv6 header's addresses: src at 8..20, dst at 24..36.
_ADDRESS_WORDS = np.arange(8, 40, 4, dtype=np.int64)


def _hash_kind(skb: Skb) -> int:
    """The kind of ``skb.hash`` (``SkbBatch.hash_types``), from the per-frame fields."""
    if not skb.ip_version:
        return HASH_NONE
    ported = not skb.is_fragment and skb.depth == _L4 and _L4_HAS_PORTS[skb.ip_proto + 1]
    return HASH_L4 if ported else HASH_L3


def _column(values: np.ndarray | int, n: int, dtype: Any) -> np.ndarray:
    """``values`` (shape ``[n]``, or a scalar, which broadcasts) as an ``[n]`` ``dtype`` array."""
    array = np.asarray(values)
    if array.ndim == 0:
        return np.full(n, array, dtype=dtype)
    return array.astype(dtype, copy=False)


class _Column:
    """A column computed by a stage of :class:`SkbBatch`, with its siblings, on first read."""

    def __init__(self, stage: Callable[[SkbBatch], None], doc: str = "") -> None:
        self.stage = stage
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, batch: SkbBatch | None, owner: type | None = None) -> Any:
        if batch is None:
            return self
        self.stage(batch)  # stores the column in batch.__dict__: this is not called again
        return batch.__dict__[self.name]


class _Given:
    """A per-frame argument of :class:`SkbBatch` as an int64 ``[n]`` column, made on first
    read by ``make(batch, name)`` (which stores it in the instance)."""

    def __init__(self, make: Callable[[SkbBatch, str], np.ndarray]) -> None:
        self.make = make

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, batch: SkbBatch | None, owner: type | None = None) -> Any:
        if batch is None:
            return self
        return self.make(batch, self.name)


class SkbBatch:
    """The skb fields of a batch of frames, one numpy column per field.

    ``rows`` is ``[n, frame_size]`` uint8, one frame pool slot per row (e.g. ``pool[idx]``);
    frame i is ``rows[i, offset[i] : offset[i] + length[i]]``.  Bytes of a row outside that
    range are never read.  The per-frame metadata arrays may be scalars, which broadcast.

    Columns are computed on first read and cached; each equals, for every frame, the field
    of the same name of ``self.skb(i)``, malformed frames included:

    ====================  ======  ===================================================
    ``protocol``          uint16  ``Skb.protocol``
    ``l3_protocol``       uint16  ``Skb.l3_protocol``
    ``vlan_count``        uint8   ``len(Skb.vlans)``
    ``network_offset``    int32   ``Skb.network_offset`` (-1: none)
    ``ip_version``        uint8   ``Skb.ip_version`` (0, 4 or 6)
    ``ip_proto``          int16   ``Skb.ip_proto`` (-1: not IP)
    ``is_fragment``       bool    ``Skb.is_fragment``
    ``transport_offset``  int32   ``Skb.transport_offset`` (-1: none)
    ``sport``, ``dport``  uint16  ``Skb.sport``, ``Skb.dport``
    ``depth``             uint8   ``Skb.depth``, a ParseDepth value
    ``hash``              uint32  ``Skb.hash``
    ====================  ======  ===================================================

    The given arguments are attributes too (``offset``, ``length``, ``wire_len``,
    ``linktype``, ``ifindex``, ``rx_queue``, ``ts_ns``, ``index``), as int64 ``[n]``
    columns made on first read.

    ``rows`` may also be a :class:`PoolRows`, gathered on the first read of ``rows`` (a
    column that needs packet bytes).  ``rx_hash`` and ``hash_type`` (``[n]`` each, or
    neither): the hash that rides with each frame where ``hash_type != HASH_NONE``; the
    ``hash`` column takes it there (see the module docstring).  :meth:`hash_types` says
    which kind of hash each frame's is, for a writer that lets it ride.
    """

    COLUMNS: Final = (
        "protocol",
        "l3_protocol",
        "vlan_count",
        "network_offset",
        "ip_version",
        "ip_proto",
        "is_fragment",
        "transport_offset",
        "sport",
        "dport",
        "hash",
        "depth",
    )

    def __init__(
        self,
        rows: np.ndarray | PoolRows,
        offset: np.ndarray,
        length: np.ndarray,
        *,
        wire_len: np.ndarray | int | None = None,
        linktype: np.ndarray | int = LINKTYPE_ETHERNET,
        ifindex: np.ndarray | int = 0,
        rx_queue: np.ndarray | int = 0,
        ts_ns: np.ndarray | int = 0,
        index: np.ndarray | int = -1,
        rx_hash: np.ndarray | None = None,
        hash_type: np.ndarray | None = None,
    ) -> None:
        self._row_source: PoolRows | None = None
        if isinstance(rows, PoolRows):
            self._row_source = rows
            if rows.data.ndim != 2 or rows.data.dtype != np.uint8:
                raise ValueError("rows must be a 2-D uint8 array")
        elif not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.dtype != np.uint8:
            raise ValueError("rows must be a 2-D uint8 array")
        else:
            self.rows = rows
        n, frame_size = rows.shape
        self._n = n
        # The hash that rides with the frames (module docstring): both or neither.
        if (rx_hash is None) != (hash_type is None):
            raise ValueError("rx_hash and hash_type go together")
        if hash_type is not None and (np.shape(hash_type) != (n,) or np.shape(rx_hash) != (n,)):
            raise ValueError(f"rx_hash and hash_type must have shape ({n},)")
        self._rx_hash = rx_hash
        self._hash_type = hash_type
        # What the caller gave, as given; only the shapes are checked now.
        given: dict[str, Any] = {
            "offset": np.asarray(offset),
            "length": np.asarray(length),
            "wire_len": wire_len,
            "linktype": linktype,
            "ifindex": ifindex,
            "rx_queue": rx_queue,
            "ts_ns": ts_ns,
            "index": index,
        }
        for name, value in given.items():
            if type(value) is not np.ndarray:
                if value is None or type(value) is int:
                    continue
                given[name] = value = np.asarray(value)
            if value.ndim and value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), not {value.shape}")
        self._given = given
        self._skbs: dict[int, Skb] = {}
        self._reader: FrameReader | None = None
        self._classified = False  # whether _layout is decided
        self._layout: fast_path.Layout | None = None
        self._odd: list[int] = []  # with a fast layout: the frames off it, patched per frame
        # Checking offset + length <= frame size costs a numpy call or two whatever the
        # batch; the same reductions tell the fast path whether the offset is uniform (the
        # engine's rows start at the packets: offset 0).
        self._uniform_offset: int | None = None
        self._ethernet: bool | None = None  # every frame's link type is Ethernet
        if n:
            self._check_bounds(given["offset"], given["length"], frame_size)

    def _given_column(self, name: str) -> np.ndarray:
        """Make (and keep) the int64 column of the given argument ``name``."""
        given = self._given[name]
        # wire_len not given: the captured length
        column = self.length if given is None else _column(given, self._n, np.int64)
        self.__dict__[name] = column
        return column

    def _set(self, columns: dict[str, np.ndarray]) -> None:
        """Store a stage's columns (as attributes: later reads are plain reads)."""
        self.__dict__.update(columns)

    def _check_bounds(self, offset: np.ndarray, length: np.ndarray, frame_size: int) -> None:
        # np.count_nonzero and ufunc.reduce: a.any() and a.max() add a Python wrapper each.
        if offset.dtype.kind not in "iu" or length.dtype.kind not in "iu":
            offset, length = self.offset, self.length  # as int64: floats, bools, objects
        if offset.ndim == 0:
            low = high = int(offset)
        elif not np.count_nonzero(offset):  # the engine's rows start at the packets
            low = high = 0
        else:
            low, high = int(np.minimum.reduce(offset)), int(np.maximum.reduce(offset))
        if low < 0 or (length.dtype.kind == "i" and np.minimum.reduce(length, axis=None) < 0):
            raise ValueError("offset and length must be >= 0")
        if low == high:
            end = low + int(np.maximum.reduce(length, axis=None))
            self._uniform_offset = low
        else:
            end = int(np.maximum.reduce(self.offset + self.length))
        if end > frame_size:
            raise ValueError(f"offset + length must be <= frame size {frame_size}")

    def __len__(self) -> int:
        return self._n

    def data(self, i: int) -> memoryview:
        """The captured bytes of frame ``i`` (a view into ``rows``)."""
        start = self._given_at("offset", i)
        end = start + self._given_at("length", i)
        source = self._row_source
        if source is not None and "rows" not in self.__dict__:  # no gather for one frame
            return source.row(i)[start:end].data
        return self.rows[i, start:end].data

    def skb(self, i: int) -> Skb:
        """Frame ``i`` as an :class:`Skb` (its ``data`` is a view into ``rows``)."""
        at = self._given_at
        return Skb(
            self.data(i),
            wire_len=at("wire_len", i),
            linktype=at("linktype", i),
            ifindex=at("ifindex", i),
            rx_queue=at("rx_queue", i),
            ts_ns=at("ts_ns", i),
            index=at("index", i),
        )

    def _given_at(self, name: str, i: int) -> int:
        """``int(getattr(self, name)[i])`` without making the column."""
        given = self._given[name]
        if given is None:
            given = self._given["length"]  # wire_len
        if not isinstance(given, np.ndarray) or given.ndim == 0:
            return int(given)
        return int(given[i])

    def _read(self) -> FrameReader:
        if self._reader is None:
            self._reader = FrameReader(self.rows, self.offset, self.length, self._uniform_offset)
        return self._reader

    def _patch(self, frames: list[int], names: tuple[str, ...]) -> None:
        """Overwrite columns ``names`` of ``frames`` with the per-frame parser's fields."""
        columns = self.__dict__
        for i in frames:
            skb = self._parsed(i)
            for name in names:
                columns[name][i] = getattr(skb, name)

    def _parsed(self, i: int) -> Skb:
        """Frame ``i`` parsed by the per-frame parser (kept: the parsed fields depend on the
        bytes and link type only)."""
        skb = self._skbs.get(i)
        if skb is None:
            linktype = self._given_at("linktype", i)
            skb = self._skbs[i] = Skb(self.data(i), linktype=linktype)
        return skb

    # --- the fast path (fast_path.py) -------------------------------------------------------

    def _fast_layout(self, rows: np.ndarray | None = None) -> fast_path.Layout | None:
        """The layout every frame but ``self._odd`` has, or None for the general path.

        The first call decides (from ``rows``: the batch's, or their first bytes, which
        decide alike -- see :meth:`_hash_rows`); later calls return the decision."""
        if not self._classified:
            self._classified = True
            c = fast_path.classify(
                self.rows if rows is None else rows,
                self._uniform_offset,
                self._given["length"],
                self._given["linktype"],
            )
            self._layout = c.layout
            self._odd = c.odd
            if c.ethernet is not None:
                self._ethernet = c.ethernet
        return self._layout

    def _fast_offset(self) -> int:
        o = self._uniform_offset
        assert o is not None  # Invariant: the fast path only runs with a uniform offset
        return o

    # --- the general path: each stage mirrors a per-frame parser stage, on every frame -------
    #
    # Work for a link type, header or tag depth that no frame of the batch has is skipped: the
    # cost is per numpy call, and most batches hold one link type and few tags.

    def _link_stage(self) -> None:
        """protocol, l3_protocol, vlan_count, network_offset (and the private _link_ok)."""
        layout = self._fast_layout()
        if layout is not None:
            self._set(fast_path.link_columns(self._n, layout))
            self._patch(self._odd, ("protocol", "l3_protocol", "vlan_count", "network_offset"))
            return
        rd = self._read()
        if self._all_ethernet():  # most batches: a dozen numpy calls fewer
            link_ok = rd.has(0, 14)
            proto = rd.u16(12)
            length_field = proto < ETH_P_802_3_MIN
            if length_field.any():
                proto = np.where(length_field, self._llc_protocol(14), proto)
            self._link_finish(proto, 14, link_ok)
            return
        kind = self._link_kind()
        present = np.bincount(kind, minlength=_KIND_COUNT).tolist()
        link_ok = rd.has(0, _LINK_HDR_LEN[kind])
        proto = _LINK_FIXED_PROTO[kind]
        if present[_KIND_ETH] or present[_KIND_SLL] or present[_KIND_SLL2]:
            type16 = rd.u16(_LINK_TYPE_POS[kind])
            proto = np.where(_HAS_TYPE_FIELD[kind], type16, proto)
            length_field = (kind == _KIND_ETH) & (type16 < ETH_P_802_3_MIN)
            if length_field.any():
                proto = np.where(length_field, self._llc_protocol(14), proto)
        if present[_KIND_NULL] or present[_KIND_LOOP]:
            family, family_le = rd.u32(0), rd.u32le(0)
            family = np.where((kind == _KIND_NULL) & (family_le <= 0xFFFF), family_le, family)
            is_family = (kind == _KIND_NULL) | (kind == _KIND_LOOP)
            proto = np.where(is_family, _FAMILY_PROTO[np.minimum(family, 31)], proto)
        if present[_KIND_RAW]:
            proto = np.where(kind == _KIND_RAW, _RAW_VERSION_PROTO[rd.u8(0) >> 4], proto)
        self._link_finish(proto, _LINK_PAYLOAD[kind], link_ok)

    def _link_finish(self, proto: np.ndarray, payload: Any, link_ok: np.ndarray) -> None:
        """The VLAN walk and the link stage's columns, from each frame's link protocol and
        payload offset (meaningless where not ``link_ok``)."""
        proto = np.where(link_ok, proto, 0)
        l3, off, tags, bad_tags, slow = self._walk_vlans(proto, payload, link_ok)
        self._set(
            dict(
                protocol=proto.astype(np.uint16),
                l3_protocol=l3.astype(np.uint16),
                vlan_count=tags.astype(np.uint8),
                network_offset=np.where(link_ok & ~bad_tags, off, -1).astype(np.int32),
                _link_ok=link_ok,
            )
        )
        self._patch(np.flatnonzero(slow).tolist(), ("l3_protocol", "vlan_count", "network_offset"))

    def _all_ethernet(self) -> bool:
        """Whether every frame's link type is Ethernet (_classify may have found out)."""
        if self._ethernet is None:
            linktype = self._given["linktype"]
            if np.ndim(linktype) == 0:
                self._ethernet = bool(linktype == LINKTYPE_ETHERNET)
            else:
                self._ethernet = not np.count_nonzero(linktype != LINKTYPE_ETHERNET)
        return self._ethernet

    def _link_kind(self) -> np.ndarray:
        """Each frame's link type as a _KIND_*."""
        linktype = self._given["linktype"]
        if np.ndim(linktype) == 0:
            known = 0 <= linktype < _LINKTYPE_TABLE_SIZE
            return np.full(self._n, _KIND_OF_LINKTYPE[int(linktype) if known else -1])
        if linktype.dtype.kind == "u":  # the engine's: one call fewer (a uint8 holds no 512)
            return _KIND_OF_LINKTYPE[np.minimum(linktype, np.uint32(_LINKTYPE_TABLE_SIZE))]
        lt = self.linktype
        return _KIND_OF_LINKTYPE[np.where((lt >= 0) & (lt < _LINKTYPE_TABLE_SIZE), lt, -1)]

    def _llc_protocol(self, pos: np.ndarray | int) -> np.ndarray:
        rd = self._read()
        raw = rd.has(pos, 2) & (rd.u16(pos) == 0xFFFF)
        return np.where(raw, ETH_P_802_3, ETH_P_802_2)

    def _walk_vlans(
        self, proto: np.ndarray, off: np.ndarray, link_ok: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Up to _BATCH_VLAN_TAGS tags; returns l3, offset, tag count, truncated, needs-more."""
        tagged = link_ok & _IS_TPID[proto]
        if not tagged.any():
            return proto, off, np.zeros(len(self), np.int64), tagged, tagged
        rd = self._read()
        l3, tags, truncated = proto, np.zeros(len(self), dtype=np.int64), tagged & False
        for _ in range(_BATCH_VLAN_TAGS):
            fits = tagged & rd.has(off, 4)
            truncated |= tagged & ~fits
            l3 = np.where(fits, rd.u16(off + 2), l3)
            off = np.where(fits, off + 4, off)
            tags += fits
            tagged = fits & _IS_TPID[l3]
            if not tagged.any():
                break
        inner_llc = (tags > 0) & ~tagged & (l3 < ETH_P_802_3_MIN)
        if inner_llc.any():
            l3 = np.where(inner_llc, self._llc_protocol(off), l3)
        return l3, off, tags, truncated, tagged

    def _ip_stage(self) -> None:
        """ip_version, ip_proto, is_fragment, transport_offset."""
        layout = self._fast_layout()
        if layout is not None:
            self._set(fast_path.ip_columns(self.rows, self._fast_offset(), layout))
            self._patch(self._odd, ("ip_version", "ip_proto", "is_fragment", "transport_offset"))
            return
        rd = self._read()
        off = self.network_offset.astype(np.int64)
        l3 = self.l3_protocol
        first = rd.u8(off)
        version, ihl = first >> 4, first & 0x0F
        v4 = (l3 == ETH_P_IP) & (off >= 0) & rd.has(off, 20) & (version == 4) & (ihl >= 5)
        v6 = (l3 == ETH_P_IPV6) & (off >= 0) & rd.has(off, 40) & (version == 6)
        # Bytes 6..9: IPv4 flags/fragment offset, TTL, protocol; IPv6 next header is byte 6.
        word = rd.u32(off + 6)
        frag, proto4, nexthdr = word >> 16, word & 0xFF, word >> 24

        later4 = (frag & 0x1FFF) != 0
        fragment = v4 & (later4 | ((frag & 0x2000) != 0))
        thoff4 = off + 4 * ihl
        transport = np.where(v4 & rd.has(thoff4, 0) & ~later4, thoff4, -1)
        proto = np.where(v4, proto4, -1)

        slow = None
        if v6.any():
            proto6, thoff6, fragment6, slow = self._walk_ipv6_ext(nexthdr, off + 40, v6)
            proto = np.where(v6, proto6, proto)
            transport = np.where(v6, thoff6, transport)
            fragment |= fragment6
        self._set(
            dict(
                ip_version=(4 * v4 + 6 * v6).astype(np.uint8),
                ip_proto=proto.astype(np.int16),
                is_fragment=fragment,
                transport_offset=transport.astype(np.int32),
            )
        )
        if slow is not None:
            frames = np.flatnonzero(slow).tolist()
            self._patch(frames, ("ip_proto", "is_fragment", "transport_offset"))

    def _walk_ipv6_ext(
        self, nexthdr: np.ndarray, pos: np.ndarray, v6: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Up to _BATCH_IPV6_EXT_HEADERS headers; returns protocol, transport offset (-1 where
        the walk stopped early), fragment, needs-more."""
        rd = self._read()
        walking = v6 & _IS_EXT[nexthdr]
        fragment = stopped = walking & False
        for _ in range(_BATCH_IPV6_EXT_HEADERS):
            if not walking.any():
                break
            word = rd.u32(pos)  # next header, length, and the fragment header's offset word
            size = _EXT_UNIT[nexthdr] * ((word >> 16) & 0xFF) + 8
            fits = walking & rd.has(pos, size)
            frag = fits & (nexthdr == IPPROTO_FRAGMENT)
            later = frag & ((word & 0xFFF8) != 0)
            fragment = fragment | frag
            stopped = stopped | (walking & ~fits) | later
            nexthdr = np.where(fits, word >> 24, nexthdr)
            advance = fits & ~later
            pos = np.where(advance, pos + size, pos)
            walking = advance & _IS_EXT[nexthdr]
        return nexthdr, np.where(stopped, -1, pos), fragment, walking

    def _transport_stage(self) -> None:
        """sport, dport, depth."""
        layout = self._fast_layout()
        if layout is not None:
            self._set(fast_path.transport_columns(self.rows, self._fast_offset(), layout))
            self._patch(self._odd, ("sport", "dport", "depth"))
            return
        rd = self._read()
        thoff = self.transport_offset.astype(np.int64)
        row = self.ip_proto.astype(np.int64) + 1
        size = _L4_SIZE[row]
        parsed = (size > 0) & (thoff >= 0) & rd.has(thoff, size)
        with_ports = parsed & _L4_HAS_PORTS[row]
        ports = np.where(with_ports, rd.u32(thoff), 0)
        depth = np.where(self._link_ok, _L2, _NONE)
        depth = np.where(self.ip_version > 0, _L3, depth)
        self._set(
            dict(
                sport=(ports >> 16).astype(np.uint16),
                dport=(ports & 0xFFFF).astype(np.uint16),
                depth=np.where(parsed, _L4, depth).astype(np.uint8),
            )
        )

    def _hash_stage(self) -> None:
        """hash (and _hash_kinds): the riding hash where a frame has one, computed for the
        others."""
        ht = self._hash_type
        if ht is not None:
            riding = ht != HASH_NONE
            count = int(np.count_nonzero(riding))
            if count == self._n:  # every hash rides: no packet byte is read
                self._set(
                    {
                        "hash": np.array(self._rx_hash, dtype=np.uint32),
                        "_hash_kinds": np.array(ht, dtype=np.uint16),
                    }
                )
                return
            # Some frames without one: parse just those -- each on its own when they are a
            # few (a per-frame parse costs ~5 µs, a batch's some 100 µs whatever its size),
            # else as a batch of their rows.  Most of the batch without one: a batch of the
            # rest costs about what all of it does, so compute every frame's (equal where
            # one rides).
            if count and 2 * count >= self._n:
                missing = np.flatnonzero(~riding)
                hashes = np.array(self._rx_hash, dtype=np.uint32)
                kinds = np.array(ht, dtype=np.uint16)
                self._set({"hash": hashes, "_hash_kinds": kinds})
                if len(missing) <= _FEW_WITHOUT_HASH:
                    self._patch_hash(missing.tolist())
                else:
                    rest = self._subset(missing)
                    hashes[missing] = rest.hash
                    kinds[missing] = rest.hash_types()
                return
        self._computed_hash()

    def hash_types(self) -> np.ndarray:
        """uint16 ``[n]``: the kind of each frame's ``hash`` as the kernel's PKT_HASH_TYPE_*
        (what a writer that lets the hash ride stores beside it): ``HASH_L4`` where ports
        went into it, ``HASH_L3`` for other IP frames, ``HASH_NONE`` for frames that are not
        IP (their hash, 0, is not worth a ride); a riding hash's as it rides.  Made with
        the hash, at the cost of a call or two."""
        kinds: np.ndarray = self._hash_kinds
        return kinds

    def _patch_hash(self, frames: list[int]) -> None:
        """Overwrite the hash and its kind of ``frames`` with the per-frame parser's."""
        hashes, kinds = self.__dict__["hash"], self.__dict__["_hash_kinds"]
        for i in frames:
            skb = self._parsed(i)
            hashes[i] = skb.hash
            kinds[i] = _hash_kind(skb)

    def _gather_rows(self) -> None:
        """rows, of a batch made from a :class:`PoolRows`: gathered on their first read (a
        batch given an array stores it at once, and never comes here)."""
        source = self._row_source
        assert source is not None  # Invariant: an array given is stored in the instance
        self.__dict__["rows"] = source.gather()

    def _hash_rows(self) -> np.ndarray:
        """The rows the hash's fast paths read: the batch's, or -- when they are not gathered
        yet (:class:`PoolRows`) and every frame starts at one offset -- only the first
        :data:`_HASH_BYTES` bytes of each frame: a gather some 20 times smaller than the
        rows' for full-size frames.  Every fast-path read lies in those bytes, and the
        fast paths decide alike on them (they find a batch too narrow only when the rows
        themselves are: the window is the rows where those are narrower); the frames they
        leave to the per-frame parser read the pool, and the general path the whole rows."""
        source, o = self._row_source, self._uniform_offset
        if source is None or o is None or "rows" in self.__dict__:
            return self.rows
        hi = min(source.hi, source.lo + o + _HASH_BYTES)
        return PoolRows(source.data, source.index, source.lo, hi).gather()

    def _subset(self, frames: np.ndarray) -> SkbBatch:
        """A batch of frames ``frames`` of this one (their rows, gathered or to gather), no
        hash riding."""
        given = self._given
        rows: np.ndarray | PoolRows
        source = self._row_source
        if source is not None and "rows" not in self.__dict__:  # still lazy: its hash gathers
            rows = PoolRows(source.data, source.index[frames], source.lo, source.hi)
        else:
            rows = self.rows[frames]

        def pick(value: Any) -> Any:
            return value[frames] if isinstance(value, np.ndarray) and value.ndim else value

        return SkbBatch(
            rows,
            pick(given["offset"]),
            pick(given["length"]),
            linktype=pick(given["linktype"]),
        )

    def _computed_hash(self) -> None:
        """hash and _hash_kinds, computed from the bytes; see flow_hash.py for the hash."""
        rows = self._hash_rows()
        layout = self._fast_layout(rows)
        if layout is not None:  # every frame on the layout has its ports
            hashes = fast_path.hash_column(rows, self._fast_offset(), layout)
            self._set({"hash": hashes, "_hash_kinds": np.full(self._n, HASH_L4, np.uint16)})
            self._patch_hash(self._odd)
            return
        given = self._given
        mixed = fast_path.mixed_hash(rows, self._uniform_offset, given["length"], given["linktype"])
        if mixed is not None:  # IPv4 and IPv6 frames: two fixed layouts
            kinds = np.where(mixed.ported, HASH_L4, HASH_L3).astype(np.uint16)
            self._set({"hash": mixed.hash, "_hash_kinds": kinds})
            self._patch_hash(mixed.odd)
            return
        rd = self._read()
        version = self.ip_version
        words = rd.u32_words(self.network_offset.astype(np.int64), _ADDRESS_WORDS)
        pairs = words[:, 0::2] ^ words[:, 1::2]  # IPv6: (s0^s1, s2^s3, d0^d1, d2^d3)
        v6_words = pairs[:, 0::2] ^ pairs[:, 1::2]
        # (a, b): IPv6 the words' XORs; IPv4 src is at +12, dst at +16: words 1 and 2.
        addresses = np.where(version == 6, v6_words.T, words[:, 1:3].T)
        ports = np.stack([self.sport, self.dport])
        fragment = self.is_fragment
        if fragment.any():
            ports[:, fragment] = 0
        hashes = flow_hash_np(addresses, ports, self.ip_proto)
        ported = ~fragment & (self.depth == _L4)
        ported &= _L4_HAS_PORTS[self.ip_proto.astype(np.int64) + 1]
        kinds = np.where(version > 0, np.where(ported, HASH_L4, HASH_L3), HASH_NONE)
        self._set(
            {
                "hash": np.where(version > 0, hashes, 0).astype(np.uint32),
                "_hash_kinds": kinds.astype(np.uint16),
            }
        )

    # --- the columns: which stage makes each (see the module docstring) ----------------------
    protocol = _Column(_link_stage, "uint16: Skb.protocol")
    l3_protocol = _Column(_link_stage, "uint16: Skb.l3_protocol")
    vlan_count = _Column(_link_stage, "uint8: len(Skb.vlans)")
    network_offset = _Column(_link_stage, "int32: Skb.network_offset (-1: none)")
    _link_ok = _Column(_link_stage, "bool: the link-layer header was captured whole")
    ip_version = _Column(_ip_stage, "uint8: Skb.ip_version (0, 4 or 6)")
    ip_proto = _Column(_ip_stage, "int16: Skb.ip_proto (-1: not IP)")
    is_fragment = _Column(_ip_stage, "bool: Skb.is_fragment")
    transport_offset = _Column(_ip_stage, "int32: Skb.transport_offset (-1: none)")
    sport = _Column(_transport_stage, "uint16: Skb.sport")
    dport = _Column(_transport_stage, "uint16: Skb.dport")
    depth = _Column(_transport_stage, "uint8: Skb.depth, a ParseDepth value")
    hash = _Column(_hash_stage, "uint32: Skb.hash")
    _hash_kinds = _Column(_hash_stage, "uint16: the kind of each hash (hash_types)")
    rows = _Column(_gather_rows, "uint8 [n, width]: the frames' rows (a PoolRows gathered)")

    offset = _Given(_given_column)
    length = _Given(_given_column)
    wire_len = _Given(_given_column)
    linktype = _Given(_given_column)
    ifindex = _Given(_given_column)
    rx_queue = _Given(_given_column)
    ts_ns = _Given(_given_column)
    index = _Given(_given_column)

    def to_scapy(self, i: int) -> Any:
        """Frame ``i`` as a scapy packet (the ``scapy`` extra; see ``interop.py``)."""
        return interop.to_scapy(self.data(i), self._given_at("linktype", i))

    def to_dpkt(self, i: int) -> Any:
        """Frame ``i`` as a dpkt object (the ``dpkt`` extra; see ``interop.py``)."""
        return interop.to_dpkt(self.data(i), self._given_at("linktype", i))
