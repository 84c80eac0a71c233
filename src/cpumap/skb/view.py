"""Per-frame skbs at the cost of a batch: :class:`SkbView`, an :class:`Skb` that reads its
fields from the columns of an :class:`SkbBatch` parsed once for the whole batch.

Why
---
A per-frame handler is called once per frame, and Python's cost is per call: parsing each
frame with the per-frame parser costs about 2-4 µs, while :class:`SkbBatch` parses a batch
of 1024 in a few dozen numpy calls (0.1-0.2 µs a frame).  So the worker parses the batch
once and hands the handler, per frame, a view: an object holding only the batch's
:class:`SkbColumns` and its row number.  A field read is a property that indexes a Python
list -- the column turned into Python values with one ``tolist()`` per batch, on the first
read of that field in the batch, so a handler that reads only ``dport`` pays for the ports
and nothing else.  Measured: ~0.2 µs a frame for the view, the loop and the handler call.

What the columns do not hold (``eth_src``, ``eth_dst``, ``pkt_type``, ``vlans``, ``src``,
``dst``, ``frag_offset``, ``tcp_flags``, ``icmp_type``, ``icmp_code``, ``error``) is parsed
per frame, lazily, on the first read of one of them, by the per-frame parser, and cached in
the view's slots like an :class:`Skb`'s.

Equal to an Skb, field for field
--------------------------------
Every column of :class:`SkbBatch` equals the per-frame field for every frame (tests/skb
prove it with hypothesis); a view returns the column's value as the Python type the
per-frame :class:`Skb` has (``int``, ``bool``, :class:`ParseDepth`), and the rest from the
per-frame parser itself.  So ``view.as_dict() == Skb(bytes).as_dict()`` for any bytes
(tests/skb/test_view.py; through a frame pool, with hypothesis: tests/skb/test_build.py).

Validity
--------
As with :class:`Skb`: ``data`` is valid only while the frame is held (during the handler
call).  The columns are computed on the first read in the batch, over every frame of the
batch, so they must be read while the batch is held -- the worker holds every frame of a
batch until its last handler call returns.  A handler that keeps a view should read the
fields it needs before it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from .batch import SkbBatch
from .frame import GIVEN_FIELDS, PARSED_FIELDS, Skb
from .headers import ParseDepth

# Columns of SkbBatch that a view reads, and the Python type the per-frame Skb has.
_BATCH_COLUMNS: Final = (
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
)
# Given per frame (from the descriptors), as SkbBatch's int64 columns.
_GIVEN_COLUMNS: Final = ("wire_len", "linktype", "ifindex", "rx_queue", "ts_ns", "index")
# Parsed per frame, lazily: what no column holds.
_PER_FRAME: Final = tuple(f for f in PARSED_FIELDS if f not in _BATCH_COLUMNS and f != "depth")
_PER_FRAME_SET: Final = frozenset(_PER_FRAME)
_DEPTHS: Final = tuple(ParseDepth)  # indexed by value: 0..3


class SkbColumns(dict[str, list[Any]]):
    """The fields of a batch's frames as Python lists, one per field, each made on its
    first lookup (``columns["dport"]``) from the batch's numpy column.

    ``data``: how to make frame i's bytes (``data(i)``, or a list of them); default: the
    batch's rows (:meth:`SkbBatch.data`).  ``metadata``: a list of each frame's metadata
    bytes, or None (all empty).
    """

    __slots__ = ("_data", "_metadata", "batch")

    def __init__(
        self,
        batch: SkbBatch,
        data: Callable[[], Sequence[Any]] | None = None,
        metadata: Callable[[], Sequence[bytes]] | None = None,
    ) -> None:
        super().__init__()
        self.batch = batch
        self._data = data
        self._metadata = metadata

    def __missing__(self, name: str) -> list[Any]:
        batch = self.batch
        values: list[Any]
        if name == "depth":
            values = [_DEPTHS[d] for d in batch.depth.tolist()]
        elif name == "len":
            values = batch.length.tolist()
        elif name == "data":
            if self._data is not None:
                values = list(self._data())
            else:
                values = [batch.data(i) for i in range(len(batch))]
        elif name == "metadata":
            values = list(self._metadata()) if self._metadata is not None else [b""] * len(batch)
        elif name in _BATCH_COLUMNS or name in _GIVEN_COLUMNS:
            values = getattr(batch, name).tolist()
        else:
            raise KeyError(name)
        self[name] = values
        return values


def _column_field(name: str) -> property:
    def get(self: SkbView) -> Any:
        return self.columns[name][self.row]

    return property(get, doc=f"``Skb.{name}``, from the batch's column")


class SkbView(Skb):
    """Frame ``i`` of a batch as an :class:`Skb`, its fields read from the batch's
    :class:`SkbColumns` (see the module docstring).  Make them with :func:`views`."""

    __slots__ = ("columns", "row")

    columns: SkbColumns  #: the batch's columns
    row: int  #: this frame's row in them

    @classmethod
    def of(cls, columns: SkbColumns, row: int) -> SkbView:
        """The view of frame ``row`` of ``columns``' batch."""
        view = object.__new__(cls)
        view.columns = columns
        view.row = row
        return view

    if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt field is still an error

        def __getattr__(self, name: str) -> Any:
            # Only reached for an empty slot: a field no column holds, on its first read.
            if name in _PER_FRAME_SET:
                parsed = Skb(self.data, linktype=self.linktype)
                for field in _PER_FRAME:
                    setattr(self, field, getattr(parsed, field))
                return object.__getattribute__(self, name)
            raise AttributeError(f"'SkbView' object has no attribute {name!r}")

    def __reduce__(self) -> Any:
        # A copy (pickle, copy.copy) is a plain Skb of copied bytes: the columns and the
        # pool view are the batch's, and valid only while it is held.
        fields = {name: getattr(self, name) for name in GIVEN_FIELDS if name != "len"}
        return _rebuild, (bytes(self.data), fields)


def _rebuild(data: bytes, fields: dict[str, Any]) -> Skb:
    return Skb(data, **fields)


for _name in (*_BATCH_COLUMNS, *_GIVEN_COLUMNS, "depth", "len", "data", "metadata"):
    setattr(SkbView, _name, _column_field(_name))
del _name


def views(columns: SkbColumns) -> Iterator[SkbView]:
    """A view for each frame of ``columns``' batch, in order."""
    new = object.__new__
    cls = SkbView
    for i in range(len(columns.batch)):
        view = new(cls)
        view.columns = columns
        view.row = i
        yield view
