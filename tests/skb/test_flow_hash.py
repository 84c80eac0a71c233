"""Tests for cpumap.skb.flow_hash: the hash against an independent reimplementation of its
definition, pinned values, symmetry, fragments, and its spread (balanced buckets for random
and sequential flows, one input bit flipping half the output bits); per frame and per
batch."""

from __future__ import annotations

import struct

import numpy as np

from cpumap.skb import Skb, SkbBatch
from tests.skb.helpers import (
    FRAGMENT,
    MAC_A,
    MAC_B,
    TCP,
    UDP,
    V4_A,
    V4_B,
    V6_A,
    V6_B,
    eth,
    frag_ext,
    ipv4,
    ipv6,
    tcp,
    udp,
    v4_tcp_frame,
)


def reference_flow_hash(a: int, b: int, p: int, q: int, proto: int) -> int:
    """The flow hash, written straight from its definition in the module docstring."""
    x, y = sorted((a, b))
    low, high = sorted((p, q))
    m = low * 65536 + high
    v = x * 0x9E3779B97F4A7C15 + y * 0xC2B2AE3D27D4EB4F + m * 0x165667B19E3779F9
    v = (v + proto * 0x27D4EB2F165667C5) % 2**64
    v = v ^ (v // 2**29)
    v = v * 0xBF58476D1CE4E5B9 % 2**64
    return (v ^ (v // 2**32)) % 2**32


def xor_words(address: bytes) -> int:
    w = struct.unpack("!4I", address)
    return w[0] ^ w[1] ^ w[2] ^ w[3]


def test_hash_of_fixed_ipv4_tcp_frame() -> None:
    a, b = 0xC0A8010A, 0x0A000001  # 192.168.1.10, 10.0.0.1
    expected = reference_flow_hash(a, b, 34567, 443, TCP)
    assert Skb(v4_tcp_frame()).hash == expected
    assert expected == 1739805065  # pinned, so a change to the definition shows


def test_hash_of_fixed_ipv6_udp_frame() -> None:
    expected = reference_flow_hash(xor_words(V6_A), xor_words(V6_B), 5353, 53, UDP)
    assert Skb(eth(0x86DD) + ipv6(UDP, udp())).hash == expected
    assert expected == 1925735338


def test_hash_is_symmetric() -> None:
    forward = Skb(eth(0x0800) + ipv4(TCP, tcp(1234, 80), V4_A, V4_B))
    reverse = Skb(eth(0x0800, MAC_A, MAC_B) + ipv4(TCP, tcp(80, 1234), V4_B, V4_A))
    assert forward.hash == reverse.hash != 0
    forward6 = Skb(eth(0x86DD) + ipv6(UDP, udp(1, 2), V6_A, V6_B))
    reverse6 = Skb(eth(0x86DD) + ipv6(UDP, udp(2, 1), V6_B, V6_A))
    assert forward6.hash == reverse6.hash != forward.hash


def test_hash_separates_flows() -> None:
    hashes = {Skb(v4_tcp_frame(sport=port)).hash for port in range(1000, 1100)}
    assert len(hashes) == 100


def test_fragments_of_one_datagram_hash_alike() -> None:
    first = Skb(eth(0x0800) + ipv4(UDP, udp(1, 2, b"x" * 24), mf=True))
    middle = Skb(eth(0x0800) + ipv4(UDP, b"y" * 32, mf=True, frag_offset=32))
    last = Skb(eth(0x0800) + ipv4(UDP, b"z" * 8, frag_offset=64))
    assert first.sport == 1 and first.hash == middle.hash == last.hash
    assert first.hash == reference_flow_hash(0xC0A8010A, 0x0A000001, 0, 0, UDP)
    first6 = Skb(eth(0x86DD) + ipv6(FRAGMENT, frag_ext(UDP, more=True) + udp(1, 2)))
    later6 = Skb(eth(0x86DD) + ipv6(FRAGMENT, frag_ext(UDP, offset=16) + bytes(8)))
    assert first6.hash == later6.hash


def v4_flows_hash(a: np.ndarray, b: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``SkbBatch(...).hash`` of Ethernet/IPv4/TCP frames with these addresses and ports."""
    n = len(a)
    rows = np.tile(np.frombuffer(v4_tcp_frame(), dtype=np.uint8), (n, 1))
    for at, values, dtype in [(26, a, ">u4"), (30, b, ">u4"), (34, p, ">u2"), (36, q, ">u2")]:
        width = np.dtype(dtype).itemsize
        rows[:, at : at + width] = values.astype(dtype).view(np.uint8).reshape(n, width)
    return SkbBatch(rows, 0, rows.shape[1]).hash


def assert_balanced(hashes: np.ndarray, moduli: tuple[int, ...] = (2, 3, 16, 64)) -> None:
    """``hash % m`` fills every bucket within 5 standard deviations of a uniform draw."""
    n = len(hashes)
    for m in moduli:
        counts = np.bincount(hashes % m, minlength=m)
        sigma = (n * (1 / m) * (1 - 1 / m)) ** 0.5
        worst = np.abs(counts - n / m).max()
        assert worst < 5 * sigma, f"% {m}: {counts.tolist()}"


RNG_SEED = 20261127


def test_hash_balances_random_and_sequential_flows() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n = 1 << 15
    words = rng.integers(0, 1 << 32, (2, n), dtype=np.uint64)
    ports = rng.integers(0, 1 << 16, (2, n), dtype=np.uint64)
    assert_balanced(v4_flows_hash(words[0], words[1], ports[0], ports[1]))
    seq = np.arange(n, dtype=np.uint64)
    one = np.ones(n, dtype=np.uint64)
    host, server = 0x0A000001 * one, 0xC0A80001 * one
    assert_balanced(v4_flows_hash(host, server, 1024 + seq, 80 * one))  # source ports
    assert_balanced(v4_flows_hash(0x0A000000 + seq, server, 5000 * one, 53 * one))  # hosts
    assert_balanced(v4_flows_hash(host, server, 1024 + seq % 128, 2000 + seq // 128))


def test_hash_one_bit_of_input_flips_half_the_output_bits() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n = 4096
    flow = [
        rng.integers(0, 1 << 32, n, dtype=np.uint64),
        rng.integers(0, 1 << 32, n, dtype=np.uint64),
        rng.integers(0, 1 << 16, n, dtype=np.uint64),
        rng.integers(0, 1 << 16, n, dtype=np.uint64),
    ]
    base = v4_flows_hash(*flow)
    for field, bits in enumerate([32, 32, 16, 16]):
        flipped = list(flow)
        flipped[field] = flow[field] ^ (np.uint64(1) << rng.integers(0, bits, n, dtype=np.uint64))
        changed = base ^ v4_flows_hash(*flipped)
        per_bit = ((changed[:, None] >> np.arange(32, dtype=np.uint32)) & 1).mean(axis=0)
        assert per_bit.min() > 0.42 and per_bit.max() < 0.58, (field, per_bit)


def test_batch_hash_equals_reference_on_random_flows() -> None:
    rng = np.random.default_rng(RNG_SEED)
    a, b = rng.integers(0, 1 << 32, (2, 300), dtype=np.uint64)
    p, q = rng.integers(0, 1 << 16, (2, 300), dtype=np.uint64)
    got = v4_flows_hash(a, b, p, q).tolist()
    flows = zip(a.tolist(), b.tolist(), p.tolist(), q.tolist(), strict=True)
    assert got == [reference_flow_hash(*flow, TCP) for flow in flows]
