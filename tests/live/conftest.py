"""Fixtures of the live tests: a veth pair with two RX queues a side."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cpumap.live.netns import VethPair


@pytest.fixture
def two_queue_pair() -> Iterator[VethPair]:
    """A veth pair between two fresh namespaces with two RX and two TX queues a side (no
    IPv6: the kernel sends nothing of its own on the links)."""
    with VethPair(queues=2) as pair:
        yield pair
