"""Fixtures of the live tests: a veth pair with two RX queues a side."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cpumap.live.netns import entered, ip, unique_netns_name


def mac_of(netns: str, ifname: str) -> bytes:
    (info,) = json.loads(ip("-n", netns, "-j", "link", "show", "dev", ifname))
    return bytes.fromhex(info["address"].replace(":", ""))


@pytest.fixture
def two_queue_pair() -> Iterator[tuple[str, str, bytes, bytes]]:
    """A veth pair with two RX queues a side: (local ns, peer ns, local MAC, peer MAC);
    the ends are called ``mqa`` (local) and ``mqb``."""
    local, peer = unique_netns_name(), unique_netns_name()
    made = []
    try:
        for ns in (local, peer):
            ip("netns", "add", ns)
            made.append(ns)
            with entered(ns):  # no IPv6: the kernel sends nothing of its own on the links
                for conf in ("all", "default"):
                    with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                        f.write("1")
        queues = ("numtxqueues", "2", "numrxqueues", "2")
        ip("-n", local, "link", "add", "mqa", *queues, "type", "veth",
           "peer", "name", "mqb", *queues, "netns", peer)  # fmt: skip
        ip("-n", local, "link", "set", "mqa", "up")
        ip("-n", peer, "link", "set", "mqb", "up")
        macs = [mac_of(ns, dev) for ns, dev in ((local, "mqa"), (peer, "mqb"))]
        yield local, peer, macs[0], macs[1]
    finally:
        for ns in made:
            ip("netns", "delete", ns)
