"""The skb's flow hash: its definition, per frame and per batch, side by side.

``hash`` is symmetric (both directions of a flow hash alike) and defined exactly, so the
numpy form matches the per-frame form bit for bit.  Its inputs: ``a, b`` the addresses as
32-bit words (IPv6: the XOR of its four big-endian words), ``p, q`` the ports (both 0 for any
fragment, so every fragment of a datagram hashes alike, and when there are no ports) and ``k``
the IP protocol.  With ``x, y = min(a, b), max(a, b)`` and ``m = min(p, q) << 16 | max(p, q)``,
in arithmetic mod 2**64::

    v = x * 0x9E3779B97F4A7C15 + y * 0xC2B2AE3D27D4EB4F + m * 0x165667B19E3779F9
        + k * 0x27D4EB2F165667C5
    v ^= v >> 29
    v *= 0xBF58476D1CE4E5B9
    hash = (v ^ v >> 32) & 0xFFFFFFFF

Non-IP frames hash to 0.  A linear step, then half of splitmix64's finalizer: one Python
expression per frame, about ten numpy calls per batch (MurmurHash3 over the same four words,
its previous definition, took about 40).  The tests check its spread: ``hash % m`` is
balanced for random and for sequential flows, and flipping any input bit flips each output
bit about half the time.

The multipliers are odd 64-bit constants with well-spread bits (the golden ratio's,
xxHash's and splitmix64's).
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

_M32: Final = 0xFFFFFFFF
_M64: Final = 0xFFFFFFFFFFFFFFFF
_HASH_X: Final = 0x9E3779B97F4A7C15  # min(a, b)
_HASH_Y: Final = 0xC2B2AE3D27D4EB4F  # max(a, b)
_HASH_M: Final = 0x165667B19E3779F9  # min(p, q) << 16 | max(p, q)
_HASH_K: Final = 0x27D4EB2F165667C5  # the IP protocol
_HASH_MIX: Final = 0xBF58476D1CE4E5B9  # splitmix64's first finalizer multiplier

_U32X8 = struct.Struct("!8I")  # two IPv6 addresses as words

# What kind of hash rides with a frame (the frame descriptor's ``hash_type``), as the
# kernel's PKT_HASH_TYPE_*; the engine's frame pool names the same values.
HASH_NONE: Final = 0  # no hash rides: a reader computes it
HASH_L3: Final = 2  # addresses (and protocol) only: not TCP/UDP-like, or a fragment
HASH_L4: Final = 3  # addresses and ports


def flow_hash(
    src: bytes | None, dst: bytes | None, sport: int, dport: int, ip_proto: int, fragment: bool
) -> int:
    """The hash of one frame's parsed fields (``Skb.hash``): addresses of 4 or 16 bytes
    (None: not IP, hash 0), ports, IP protocol, and whether it is a fragment."""
    if src is None or dst is None:
        return 0
    if len(src) == 4:
        a, b = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
    else:  # IPv6: the XOR of each address's four words
        s0, s1, s2, s3, d0, d1, d2, d3 = _U32X8.unpack(src + dst)
        a, b = s0 ^ s1 ^ s2 ^ s3, d0 ^ d1 ^ d2 ^ d3
    if a > b:
        a, b = b, a
    p, q = (0, 0) if fragment else (sport, dport)
    m = (p << 16) | q if p <= q else (q << 16) | p
    v = (a * _HASH_X + b * _HASH_Y + m * _HASH_M + ip_proto * _HASH_K) & _M64
    v ^= v >> 29
    v = (v * _HASH_MIX) & _M64
    return (v ^ (v >> 32)) & _M32


# The multipliers of the rows of flow_hash_np's ``keys``: min(a, b), min(p, q), a, b, p, q, k.
# The linear step x * X + y * Y + m * M + k * K, with x = min(a, b), y = max(a, b) = a + b - x,
# m = min(p, q) << 16 | max(p, q) = 65535 * min(p, q) + p + q, is this product: one minimum
# per pair, no maximum.
_HASH_COEFFICIENTS = np.array(
    [
        (_HASH_X - _HASH_Y) & _M64,
        (_HASH_M * 0xFFFF) & _M64,
        _HASH_Y,
        _HASH_Y,
        _HASH_M,
        _HASH_M,
        _HASH_K,
    ],
    dtype=np.uint64,
)


def flow_hash_np(addresses: np.ndarray, ports: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """:func:`flow_hash` of columns: ``addresses`` is ``[2, n]`` (a, b: the address words,
    IPv6 folded by XOR), ``ports`` ``[2, n]`` (p, q; 0 for fragments), ``proto`` ``[n]``, of
    any integer dtypes, byte orders and strides.  Returns uint32 ``[n]``; the caller zeroes
    the frames that are not IP.

    Nine numpy calls.  The inputs are first copied into rows of one uint64 array: ufuncs run
    several times faster on native, contiguous rows than on big-endian strided views, and
    one row-wise minimum then does both pairs.  The linear step is one matrix product
    (uint64 arithmetic wraps: the mod 2**64 wanted).
    """
    keys = np.empty((7, proto.shape[0]), dtype=np.uint64)
    keys[2:4] = addresses
    keys[4:6] = ports
    np.minimum(keys[2:6:2], keys[3:6:2], out=keys[0:2])
    keys[6] = proto
    v = _HASH_COEFFICIENTS @ keys
    v ^= v >> np.uint64(29)
    v *= np.uint64(_HASH_MIX)
    halves = v.view(np.uint32)  # (low, high) words: their XOR is (v ^ v >> 32) & 0xFFFFFFFF
    return halves[0::2] ^ halves[1::2]
