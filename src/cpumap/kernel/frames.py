"""Frames for the kernel's receive path: a valid Ethernet/IPv4/UDP frame, and a UDP socket
for the netstack to deliver such frames to without answering anyone.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Final

from ..closing import Closing


def _csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    size: int = 64,
    *,
    src: str = "127.0.0.1",
    dst: str = "127.0.0.1",
    sport: int = 4242,
    dport: int = 9,
    dst_mac: bytes = b"\0" * 6,
    src_mac: bytes = b"\x02\0\0\0\0\x01",
) -> bytes:
    """An Ethernet/IPv4/UDP frame of ``size`` bytes (no FCS), valid enough for ``ip_rcv``.

    The destination MAC defaults to the loopback device's all-zero address, which the
    test run's frames arrive on, so that ``eth_type_trans`` says PACKET_HOST.  For a frame
    that the netstack delivers, see :class:`UdpSink`.
    """
    if not 42 <= size <= 1514:
        raise ValueError(f"size must be in [42, 1514], got {size}")
    payload = bytes(size - 42)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # csum 0: none
    saddr = bytes(int(x) for x in src.split("."))
    daddr = bytes(int(x) for x in dst.split("."))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, saddr, daddr)
    ip = hdr[:10] + struct.pack("!H", _csum16(hdr)) + hdr[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def local_ipv4() -> str | None:
    """An IPv4 address of this host other than 127/8 (the one it would send from), or None.

    A UDP ``connect`` sends nothing; it only makes the kernel pick the route and source.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.18.0.1", 9))  # RFC 2544 benchmarking range: never a real peer
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else str(addr)


class UdpSink(Closing):
    """A UDP socket with the smallest receive buffer, and a frame addressed to it.

    Frames that the netstack delivers here are queued until the buffer is full, then
    dropped by ``udp_queue_rcv_skb`` (``RcvbufErrors``): the whole receive path runs, and
    no reply (ICMP port-unreachable to a closed port) is sent anywhere.  Nobody reads it.
    """

    def __init__(self, size: int = 64) -> None:
        addr = local_ipv4()
        if addr is None:
            raise OSError(errno.EADDRNOTAVAIL, "no IPv4 address other than 127/8 on this host")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
            self.sock.bind((addr, 0))
        except BaseException:
            self.sock.close()
            raise
        self.addr: Final = addr
        self.port: Final[int] = self.sock.getsockname()[1]
        # From the benchmarking range (not a local address: ip_rcv drops those as
        # IP_LOCAL_SOURCE when they arrive from outside, which lo is here).
        self.frame: Final = udp_frame(size, src="198.18.0.1", dst=addr, dport=self.port)

    def close(self) -> None:
        self.sock.close()
