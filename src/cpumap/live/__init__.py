"""Live interfaces: packets from a real network interface, and the real interfaces to test on.

Rule 1: each kernel socket ABI is declared once, in its own module of constants and ctypes
structures: ``if_packet`` (``<linux/if_packet.h>``) and ``if_xdp`` (``<linux/if_xdp.h>``).
``source`` uses the first and knows nothing of the engine: it yields
:class:`~cpumap.packets.PacketBatch` columns, like every source.
Rule 2: ``netns`` makes throw-away network namespaces and veth pairs (iproute2's ``ip``)
and injects frames into them: the real interfaces the live tests and benchmarks run on.  It
is a test bench, imported by name (``cpumap.live.netns``), not re-exported here.
Both need root (CAP_NET_RAW, CAP_NET_ADMIN); nothing here is imported by the engine.
"""

from .source import Fanout, FanoutMode, LiveSource, LiveStatistics

__all__ = [
    "Fanout",
    "FanoutMode",
    "LiveSource",
    "LiveStatistics",
]
