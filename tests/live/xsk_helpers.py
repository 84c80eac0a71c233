"""What the AF_XDP tests share: the program that sends every frame to one entry, a handler
that counts frames by RX queue, and what the local end of a veth pair has attached and open."""

from __future__ import annotations

import numpy as np

from cpumap.abi import XDP_REDIRECT
from cpumap.cpus import usable_cpus
from cpumap.kernel.xdp import link_state
from cpumap.live.netns import VethPair
from cpumap.programs import vectorized

CPU = min(usable_cpus())  # the entry every frame goes to


@vectorized
def to_cpu(batch) -> tuple[np.ndarray, np.ndarray]:
    """Every frame to entry ``CPU``."""
    n = len(batch)
    return np.full(n, XDP_REDIRECT, dtype=np.uint8), np.full(n, CPU, dtype=np.uint32)


class Queues:
    """A handler that counts frames by the RX queue they came in on."""

    def __init__(self) -> None:
        self.by_queue: dict[int, int] = {}

    def __call__(self, skb) -> bool:
        self.by_queue[skb.rx_queue] = self.by_queue.get(skb.rx_queue, 0) + 1
        return True

    def finish(self) -> dict[int, int]:
        return self.by_queue


def xdp_attached(pair: VethPair) -> int:
    """The local end's XDP attach mode (0: nothing attached), read in its namespace."""
    with pair.in_local():
        return link_state(pair.local.ifname).xdp_attached


def xdp_sockets(pair: VethPair) -> int:
    """AF_XDP sockets open in the local namespace, by any process: the ``sockets`` column
    of its ``/proc/net/protocols`` line for XDP (the kernel counts them per namespace)."""
    with pair.in_local(), open("/proc/thread-self/net/protocols") as f:
        for line in f:
            if line.split()[0] == "XDP":
                return int(line.split()[2])
    raise AssertionError("no XDP line in /proc/net/protocols")
