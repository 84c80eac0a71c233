"""Handing a frame to the dissectors users already know: scapy and dpkt.

``skb.to_scapy()`` / ``skb.to_dpkt()`` (and ``batch.to_scapy(i)`` for a row of an
``SkbBatch``) build the library's packet object from the frame's captured bytes, choosing
the first layer by the frame's link type as libpcap-based tools do.  Both libraries are
optional extras (``pip install 'cpumap[scapy]'``, ``'cpumap[dpkt]'``): they are imported on
the first call, never by ``import cpumap``, and a missing one raises an ``ImportError``
that names the extra to install.

The bytes are copied (``bytes(data)``): the library's object outlives the frame pool slot a
handler's view points into.  Cost: a scapy dissection is tens of microseconds per packet,
dpkt's a few; fine to look at a frame, not for every frame at line rate.
"""

from __future__ import annotations

from typing import Any

from ..abi import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

__all__ = ["to_dpkt", "to_scapy"]


def _need(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module.split('.')[0]} is not installed: it is an optional extra of cpumap; "
            f"install it with `pip install 'cpumap[{extra}]'`"
        ) from e


def _raw_version(data: bytes) -> int:
    return data[0] >> 4 if data else 0


def to_scapy(data: bytes | memoryview, linktype: int = LINKTYPE_ETHERNET) -> Any:
    """The frame as a scapy packet, its first layer chosen by ``linktype`` (scapy's own
    link-type table, as ``rdpcap`` uses; raw IP by its version nibble; unknown: ``Raw``)."""
    _need("scapy.all", "scapy")
    from scapy.config import conf
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    raw = bytes(data)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        version = _raw_version(raw)
        cls = IP if version == 4 else IPv6 if version == 6 else Raw
    else:
        cls = conf.l2types.num2layer.get(linktype, Raw)
    return cls(raw)


def to_dpkt(data: bytes | memoryview, linktype: int = LINKTYPE_ETHERNET) -> Any:
    """The frame as a dpkt object: ``Ethernet``, ``IP``/``IP6`` (raw IP), ``SLL``,
    ``SLL2``, ``Loopback``.  Another link type raises ``ValueError`` (dpkt has no table)."""
    dpkt = _need("dpkt", "dpkt")
    raw = bytes(data)
    if linktype == LINKTYPE_ETHERNET:
        return dpkt.ethernet.Ethernet(raw)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        version = _raw_version(raw)
        if version == 4:
            return dpkt.ip.IP(raw)
        if version == 6:
            return dpkt.ip6.IP6(raw)
        raise ValueError(f"raw IP frame of IP version {version}: dpkt has no class for it")
    if linktype == LINKTYPE_LINUX_SLL:
        return dpkt.sll.SLL(raw)
    if linktype == LINKTYPE_LINUX_SLL2:
        sll2 = getattr(dpkt, "sll2", None)
        if sll2 is None:
            raise ValueError("this dpkt has no SLL2 (Linux cooked v2): dpkt >= 1.9.8 has")
        return sll2.SLL2(raw)
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return dpkt.loopback.Loopback(raw)
    raise ValueError(f"link type {linktype}: dpkt has no class for it; use to_scapy()")
