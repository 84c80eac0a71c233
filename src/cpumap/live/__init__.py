"""Live interfaces: packets from a real network interface, and the real interfaces to test on.

Rule 1: each kernel socket ABI is declared once, in its own module of constants and ctypes
structures: ``if_packet`` (``<linux/if_packet.h>``) and ``if_xdp`` (``<linux/if_xdp.h>``).
``source`` uses the first and knows nothing of the engine: it yields
:class:`~cpumap.packets.PacketBatch` columns, like every source.  ``xsk`` (with its rings in
``xsk_rings``) uses the second: AF_XDP sockets over a UMEM the caller provides; it moves
chunk addresses, and what holds which chunk is its caller's business, not the engine's here.
``xsk_source`` puts the two together for the engine: a UMEM over the frame pool, frames lent
by an RX producer (which it names by a protocol: the engine sits above this package) and
placed by the kernel.
Rule 2: ``netns`` makes throw-away network namespaces and veth pairs (iproute2's ``ip``)
and injects frames into them: the real interfaces the live tests and benchmarks run on.  It
is a test bench, imported by name (``cpumap.live.netns``), not re-exported here.
All need root (CAP_NET_RAW, CAP_NET_ADMIN); nothing here is imported by the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the same names as the table below (tests/test_imports.py)
    from .source import Fanout, FanoutMode, LiveSource, LiveStatistics
    from .xsk import Umem, XskError, XskMode, XskSocket, XskStatistics
    from .xsk_rings import ConsumerRing, ProducerRing
    from .xsk_source import XskSource, XskSourceStatistics

__all__ = [
    "ConsumerRing",
    "Fanout",
    "FanoutMode",
    "LiveSource",
    "LiveStatistics",
    "ProducerRing",
    "Umem",
    "XskError",
    "XskMode",
    "XskSocket",
    "XskSource",
    "XskSourceStatistics",
    "XskStatistics",
]

# Each name is imported from its module when first asked for (cpumap/lazy.py).
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "Fanout": ".source",
        "FanoutMode": ".source",
        "LiveSource": ".source",
        "LiveStatistics": ".source",
        "Umem": ".xsk",
        "XskError": ".xsk",
        "XskMode": ".xsk",
        "XskSocket": ".xsk",
        "XskStatistics": ".xsk",
        "ConsumerRing": ".xsk_rings",
        "ProducerRing": ".xsk_rings",
        "XskSource": ".xsk_source",
        "XskSourceStatistics": ".xsk_source",
    },
)
