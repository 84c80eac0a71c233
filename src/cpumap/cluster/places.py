"""Where an entry lives: a (node, CPU) place, and how places are written on a command line.

A cluster map's keys are places: ``Place("w1", 3)`` is CPU 3 of the node named ``w1``.
A node is named as :func:`cpumap.cluster.ray_setup.resolve_node` accepts it (a
``cpumap.node`` label, ``head``, an index, a node-ID prefix, an address); the empty name
is the driver's own node.

:func:`parse_entries` reads the ``--cpus`` syntax::

    head:0-1,w1:0,2     -> (head, 0) (head, 1) (w1, 0) (w1, 2)
    0,1                 -> ("", 0) ("", 1)          the driver's node
    head:0 w1:1         -> spaces separate like commas

Each item is ``NODE:CPUS`` or ``CPUS``; ``CPUS`` is a kernel CPU list item (``3`` or
``0-3``).  An item without a node belongs to the node named last (none yet: the driver's
node), so ``w1:0,2`` reads as the kernel's list ``0,2`` on ``w1``.  The order is kept and
duplicates are an error (a place is one key).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..cpus import parse_cpu_list

LOCAL_NODE = ""  # the driver's node

_ITEM = re.compile(r"^(?:(?P<node>[^:\s,]+):)?(?P<cpus>[0-9]+(?:-[0-9]+)?)$")


class Place(NamedTuple):
    """CPU ``cpu`` of node ``node`` (``""``: the driver's node)."""

    node: str
    cpu: int

    def __str__(self) -> str:
        return f"{self.node}:{self.cpu}" if self.node else str(self.cpu)


def parse_entries(text: str) -> list[Place]:
    """The places named by ``text`` (the ``--cpus`` syntax above), in order.

    Raises ``ValueError`` naming the offending item for anything else (an empty list, a
    malformed item, a reversed range, a place named twice)."""
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not items:
        raise ValueError(f"no entries in {text!r}: expected e.g. 'head:0-1,w1:0'")
    node = LOCAL_NODE
    out: list[Place] = []
    seen: set[Place] = set()
    for item in items:
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"bad entry {item!r} in {text!r}: expected NODE:CPU or CPU")
        if m["node"] is not None:
            node = m["node"]
        try:
            cpus = sorted(parse_cpu_list(m["cpus"]))
        except ValueError as e:
            raise ValueError(f"bad entry {item!r} in {text!r}: {e}") from None
        for cpu in cpus:
            place = Place(node, cpu)
            if place in seen:
                raise ValueError(f"entry {place} named twice in {text!r}")
            seen.add(place)
            out.append(place)
    return out


PlaceLike = Place | tuple[str, int] | str


def as_place(value: PlaceLike) -> Place:
    """A place from a ``Place``, a ``(node, cpu)`` pair, or one ``"node:cpu"`` string."""
    if isinstance(value, str):
        places = parse_entries(value)
        if len(places) != 1:
            raise ValueError(f"{value!r} names {len(places)} places, not one")
        return places[0]
    if isinstance(value, tuple) and len(value) == 2:
        node, cpu = value
        if not isinstance(node, str):
            raise TypeError(f"a place's node must be a str, not {type(node).__name__}")
        if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 0:
            raise ValueError(f"a place's CPU must be an int >= 0, not {cpu!r}")
        return Place(node, int(cpu))
    raise TypeError(f"a place is (node, cpu) or 'node:cpu', not {type(value).__name__}")
