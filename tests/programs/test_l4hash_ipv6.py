"""What docs/steering.md says of ``l4-hash`` and IPv6 extension headers, shown: the hash is
seeded with the fixed header's next-header field (extension headers are not walked), so
one address pair whose packets carry different extension headers -- a hop-by-hop option
on some, a fragment header on others -- hashes three ways and can be sent to three CPUs,
as in xdp-tools' sample (``programs/xdp_parse.flow_hash`` is what ``l4-hash`` hashes).
``Skb.hash`` (``flow-hash``) walks the extension headers and keeps the pair together."""

from __future__ import annotations

import struct

from cpumap.programs.xdp_parse import flow_hash, parse_eth
from cpumap.skb import Skb

SRC = bytes.fromhex("fd000000000000000000000000000001")
DST = bytes.fromhex("fd000000000000000000000000000002")
UDP = struct.pack("!HHHH", 4000, 53, 8, 0)


def v6(next_header: int, payload: bytes, src: bytes = SRC, dst: bytes = DST) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
    ip = struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64) + src + dst
    return eth + ip + payload


PLAIN = v6(17, UDP)
HOP_BY_HOP = v6(0, bytes([17, 0, 1, 4, 0, 0, 0, 0]) + UDP)
FRAGMENT = v6(44, bytes([17, 0, 0, 0, 0, 0, 0, 1]) + UDP)


def l4_hash(frame: bytes) -> int:
    et, l3 = parse_eth(frame, len(frame))
    return flow_hash(frame, len(frame), et, l3)


def test_extension_headers_give_one_address_pair_several_l4_hashes() -> None:
    hashes = {l4_hash(f) for f in (PLAIN, HOP_BY_HOP, FRAGMENT)}
    assert len(hashes) == 3
    assert len({h % 16 for h in hashes}) > 1  # over 16 CPUs, more than one of them


def test_the_same_headers_l4_hash_alike_in_both_directions() -> None:
    for f, back in (
        (PLAIN, v6(17, UDP, DST, SRC)),
        (HOP_BY_HOP, v6(0, bytes([17, 0, 1, 4, 0, 0, 0, 0]) + UDP, DST, SRC)),
    ):
        assert l4_hash(f) == l4_hash(back)


def test_flow_hash_keeps_a_hop_by_hop_option_with_its_flow() -> None:
    assert Skb(PLAIN).hash == Skb(HOP_BY_HOP).hash
