"""The skb: what a handler is handed -- one frame parsed (:class:`Skb`), or a batch of
frames parsed into numpy columns (:class:`SkbBatch`).

Rule 1: nothing here does I/O, starts a process or maps shared memory: the caller hands
in bytes (a frame's, rows of a frame pool, or the pool itself as :class:`Frames`) and the
metadata the RX side recorded, and everything else is derived from those bytes.
Rule 2: the build never fails.  Like the kernel, which builds the skb whatever the payload,
a frame that cannot be fully parsed still yields every field that could be parsed, and
``depth`` / ``error`` say how far parsing got and why it stopped.  A header is parsed whole
or not at all: a truncated TCP header yields no ports, not half of them.  Lengths inside
the packet are not trusted for finding headers (IPv4 total length, IPv6 payload length:
jumbograms and GSO captures set them to 0), but nothing is ever read past the captured
bytes.
Rule 3: the per-frame and the batch form give the same answer, field for field, for any
bytes (the tests prove it with hypothesis).  What they share -- the header tables, the flow
hash -- is defined once (``headers.py``, ``flow_hash.py``), its two forms side by side.

Modules: ``frame`` (:class:`Skb` and the per-frame parser), ``batch`` (:class:`SkbBatch`:
the general path), ``fast_path`` (the batch parser's fixed-layout path), ``view``
(:class:`SkbView`: a per-frame skb reading its fields from a batch's columns, what the
worker hands a per-frame handler), ``build`` (the skbs of frames in a frame pool:
:func:`skb_batch`, :func:`frame_skbs`), ``rows`` (the bytes a batch parses, gathered from
the pool on first need), ``headers``, ``flow_hash``, ``interop``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the same names as the table below (tests/test_imports.py)
    from ..abi import PACKET_BROADCAST, PACKET_HOST, PACKET_MULTICAST
    from .batch import SkbBatch
    from .build import Frames, consecutive_start, frame_skbs, parsed_skbs, skb_batch, skb_columns
    from .flow_hash import flow_hash, flow_hash_np
    from .frame import Skb
    from .headers import IPV6_MAX_EXT_HEADERS, VLAN_MAX_DEPTH, ParseDepth
    from .view import SkbColumns, SkbView

__all__ = [
    "IPV6_MAX_EXT_HEADERS",
    "PACKET_BROADCAST",
    "PACKET_HOST",
    "PACKET_MULTICAST",
    "VLAN_MAX_DEPTH",
    "Frames",
    "ParseDepth",
    "Skb",
    "SkbBatch",
    "SkbColumns",
    "SkbView",
    "consecutive_start",
    "flow_hash",
    "flow_hash_np",
    "frame_skbs",
    "parsed_skbs",
    "skb_batch",
    "skb_columns",
]

# Each name is imported from its module when first asked for (cpumap/lazy.py).
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "PACKET_BROADCAST": "..abi",
        "PACKET_HOST": "..abi",
        "PACKET_MULTICAST": "..abi",
        "SkbBatch": ".batch",
        "Frames": ".build",
        "consecutive_start": ".build",
        "frame_skbs": ".build",
        "parsed_skbs": ".build",
        "skb_batch": ".build",
        "skb_columns": ".build",
        "flow_hash": ".flow_hash",
        "flow_hash_np": ".flow_hash",
        "Skb": ".frame",
        "IPV6_MAX_EXT_HEADERS": ".headers",
        "VLAN_MAX_DEPTH": ".headers",
        "ParseDepth": ".headers",
        "SkbColumns": ".view",
        "SkbView": ".view",
    },
)
