"""rtnetlink and generic netlink by hand: the few messages XDP needs, with ``struct``.

Why not pyroute2: we need four messages (read a link, set its ``IFLA_XDP``, look up a
generic-netlink family, read a device's XDP features), each a header and a few
attributes; writing them is shorter than the dependency, and the kernel package stays
free of third-party imports.

Theory of operation
-------------------
A netlink message is ``struct nlmsghdr`` (16 bytes) followed by a family header
(``struct ifinfomsg`` for links, ``struct genlmsghdr`` for generic netlink) and
attributes: ``struct nlattr`` (length, type) and a payload, each padded to 4 bytes;
a nested attribute's payload is attributes again (``NLA_F_NESTED`` set in its type).
We send one request with ``NLM_F_ACK`` and read until the kernel's ``NLMSG_ERROR``
answer for it: error 0 is the acknowledgement (after the reply, for a get), a negative
error the kernel's refusal.  ``NETLINK_EXT_ACK`` asks for the extended ack, whose
``NLMSGERR_ATTR_MSG`` is the kernel's own explanation (``"Peer MTU is too large to set
XDP"``); it goes into the :class:`NetlinkError` message beside the errno, which is kept
unchanged.

Namespaces: a netlink socket talks to the network namespace it was created in, for
life.  :func:`request` opens a socket for one request and closes it, so every call
answers for the namespace of the *calling thread* at that moment -- a thread inside
``cpumap.live.netns.entered(ns)`` sees ``ns``.  A link in another namespace is reached
by its *nsid* as this namespace knows it (``IFLA_TARGET_NETNSID``): how a veth end reads
its peer's name and MTU without entering the peer's namespace.

Struct layouts and numbers are those of ``<linux/netlink.h>``, ``<linux/rtnetlink.h>``,
``<linux/if_link.h>``, ``<linux/genetlink.h>`` and ``<linux/netdev.h>``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final

from ..closing import Closing
from ..errors import Error

NETLINK_ROUTE: Final = 0
NETLINK_GENERIC: Final = 16
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10  # the ack does not echo our request back
NETLINK_EXT_ACK: Final = 11  # the ack carries the kernel's message

NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_ACK_TLVS: Final = 0x200
NLMSG_ERROR: Final = 2
NLMSGERR_ATTR_MSG: Final = 1
NLA_F_NESTED: Final = 0x8000
NLA_TYPE_MASK: Final = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

RTM_GETLINK: Final = 18
RTM_SETLINK: Final = 19
IFF_UP: Final = 0x1
IFF_LOWER_UP: Final = 0x10000  # carrier: for a veth end, its peer is up too

# struct ifinfomsg attributes (enum in <linux/if_link.h>).
IFLA_ADDRESS: Final = 1
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_LINK: Final = 5
IFLA_LINKINFO: Final = 18
IFLA_STATS64: Final = 23
IFLA_NUM_RX_QUEUES: Final = 32
IFLA_LINK_NETNSID: Final = 37
IFLA_XDP: Final = 43
IFLA_TARGET_NETNSID: Final = 46
IFLA_INFO_KIND: Final = 1
# IFLA_XDP's nested attributes.
IFLA_XDP_FD: Final = 1
IFLA_XDP_ATTACHED: Final = 2
IFLA_XDP_FLAGS: Final = 3
IFLA_XDP_PROG_ID: Final = 4
IFLA_XDP_EXPECTED_FD: Final = 8

# Generic netlink: the controller, and the "netdev" family (Linux >= 6.3).
GENL_ID_CTRL: Final = 0x10
CTRL_CMD_GETFAMILY: Final = 3
CTRL_ATTR_FAMILY_ID: Final = 1
CTRL_ATTR_FAMILY_NAME: Final = 2
NETDEV_CMD_DEV_GET: Final = 1
NETDEV_A_DEV_IFINDEX: Final = 1
NETDEV_A_DEV_XDP_FEATURES: Final = 3
NETDEV_XDP_ACT_NDO_XMIT: Final = 1 << 2  # the device takes redirected frames

_NLMSGHDR: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLATTR: Final = struct.Struct("=HH")  # len, type
_IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
_GENLMSGHDR: Final = struct.Struct("=BBH")  # cmd, version, reserved
_ERRNO: Final = struct.Struct("=i")
_RECV_BYTES: Final = 1 << 16
_TIMEOUT_S: Final = 5.0  # the kernel answers at once; a bound, not a wait


class NetlinkError(Error, OSError):
    """The kernel refused a netlink request: its errno, unchanged, and its own words
    (the extended ack) in the message where it gave any."""

    def __init__(self, err: int, what: str, extack: str = "") -> None:
        detail = f" ({extack})" if extack else ""
        super().__init__(err, f"{what}: {os.strerror(err)}{detail}")
        self.extack: Final = extack


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One ``struct nlattr`` and its payload, padded to 4 bytes."""
    head = _NLATTR.pack(_NLATTR.size + len(payload), kind)
    return head + payload + bytes(_align(len(payload)) - len(payload))


def nested(kind: int, *attrs: bytes) -> bytes:
    """An attribute whose payload is ``attrs`` (``NLA_F_NESTED`` set, as the kernel checks)."""
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def parse_attrs(data: bytes | memoryview) -> dict[int, bytes]:
    """The attributes in ``data`` by type (flags masked off; a repeated type: the last)."""
    out: dict[int, bytes] = {}
    view, at = memoryview(data), 0
    while at + _NLATTR.size <= len(view):
        length, kind = _NLATTR.unpack_from(view, at)
        if length < _NLATTR.size:
            break  # malformed: stop rather than loop
        out[kind & NLA_TYPE_MASK] = bytes(view[at + _NLATTR.size : at + length])
        at += _align(length)
    return out


def _u32(data: bytes | None, default: int = 0) -> int:
    return struct.unpack("=I", data[:4])[0] if data else default


def _s32(data: bytes | None) -> int | None:
    return struct.unpack("=i", data[:4])[0] if data else None


def _extack(msg: memoryview, flags: int) -> str:
    """The kernel's message in an ``NLMSG_ERROR`` answer (capped: no echoed request)."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    tlvs = parse_attrs(msg[_ERRNO.size + _NLMSGHDR.size :])
    return tlvs.get(NLMSGERR_ATTR_MSG, b"").rstrip(b"\0").decode(errors="replace")


def _answers(sock: socket.socket, seq: int, what: str) -> list[tuple[int, bytes]]:
    """Messages for ``seq`` until the kernel's ack; raise its refusal."""
    replies: list[tuple[int, bytes]] = []
    while True:
        data = memoryview(sock.recv(_RECV_BYTES))
        at = 0
        while at + _NLMSGHDR.size <= len(data):
            length, kind, flags, got_seq, _ = _NLMSGHDR.unpack_from(data, at)
            body = data[at + _NLMSGHDR.size : at + length]
            at += _align(length)
            if got_seq != seq:
                continue  # the answer to an earlier request that timed out
            if kind != NLMSG_ERROR:
                replies.append((kind, bytes(body)))
                continue
            (err,) = _ERRNO.unpack_from(body)
            if err:
                raise NetlinkError(-err, what, _extack(body, flags))
            return replies


class NetlinkSocket(Closing):
    """A netlink socket of ``protocol``, in the namespace of the thread that creates it.

    Keep one open to act on a namespace later from any thread (the netlink fallback of
    an XDP attach detaches through the socket it attached with); for one request,
    :func:`request` opens and closes its own.  Requests on one socket must not overlap:
    its owner makes them one at a time (each is a send and the reads up to its ack).
    """

    def __init__(self, protocol: int) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        try:
            sock.settimeout(_TIMEOUT_S)
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._seq = 0

    def request(self, msg_type: int, payload: bytes, what: str) -> list[tuple[int, bytes]]:
        """Send one request (``NLM_F_ACK``); return the replies before the ack as
        (type, body); raise :class:`NetlinkError` on a refusal (``what`` names it)."""
        self._seq += 1
        size = _NLMSGHDR.size + len(payload)
        header = _NLMSGHDR.pack(size, msg_type, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0)
        self._sock.send(header + payload)
        try:
            return _answers(self._sock, self._seq, what)
        except TimeoutError:
            raise NetlinkError(errno.ETIMEDOUT, what, "no answer from the kernel") from None

    def close(self) -> None:
        """Close the socket.  Idempotent."""
        self._sock.close()


def request(protocol: int, msg_type: int, payload: bytes, what: str) -> list[tuple[int, bytes]]:
    """One request on a socket of its own, in the calling thread's namespace."""
    with NetlinkSocket(protocol) as sock:
        return sock.request(msg_type, payload, what)


# --- links --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkState:
    """A link as ``RTM_GETLINK`` reports it: what XDP and the traffic generator read."""

    ifindex: int
    name: str
    mtu: int
    mac: bytes
    up: bool
    carrier: bool
    kind: str | None
    """``IFLA_INFO_KIND``: ``"veth"`` for a veth end; None for a device without one."""
    num_rx_queues: int
    peer_ifindex: int | None
    """``IFLA_LINK`` where it names another device (a veth's peer), else None."""
    peer_netnsid: int | None
    """The peer's namespace as this one's nsid (``IFLA_LINK_NETNSID``); None: the same."""
    xdp_attached: int
    """``IFLA_XDP_ATTACHED``: 0 none, 1 native, 2 generic (skb), 3 offloaded, 4 several."""
    xdp_prog_id: int
    """The attached program's id (0: none, or several attached)."""
    tx_dropped: int
    rx_packets: int
    tx_packets: int


def _ifinfo(ifindex: int) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)


def _link_state(body: bytes) -> LinkState:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(body)
    a = parse_attrs(body[_IFINFOMSG.size :])
    xdp = parse_attrs(a.get(IFLA_XDP, b""))
    info = parse_attrs(a.get(IFLA_LINKINFO, b""))
    stats = struct.unpack_from("=8Q", a[IFLA_STATS64]) if IFLA_STATS64 in a else (0,) * 8
    link = _u32(a.get(IFLA_LINK), index)
    netnsid = _s32(a.get(IFLA_LINK_NETNSID))
    kind = info.get(IFLA_INFO_KIND)
    return LinkState(
        ifindex=index,
        name=a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
        mtu=_u32(a.get(IFLA_MTU)),
        mac=a.get(IFLA_ADDRESS, b""),
        up=bool(flags & IFF_UP),
        carrier=bool(flags & IFF_LOWER_UP),
        kind=kind.rstrip(b"\0").decode() if kind else None,
        num_rx_queues=_u32(a.get(IFLA_NUM_RX_QUEUES), 1),
        # A peer in another namespace may have our own index there.
        peer_ifindex=link if link != index or netnsid is not None else None,
        peer_netnsid=netnsid,
        xdp_attached=xdp.get(IFLA_XDP_ATTACHED, b"\0")[0],
        xdp_prog_id=_u32(xdp.get(IFLA_XDP_PROG_ID)),
        tx_dropped=stats[7],  # struct rtnl_link_stats64: rx/tx packets, bytes, errors, dropped
        rx_packets=stats[0],
        tx_packets=stats[1],
    )


def get_link(interface: int | str, *, netnsid: int | None = None) -> LinkState:
    """``RTM_GETLINK`` of an interface (by index or name) in the calling thread's
    namespace, or in the namespace this one calls ``netnsid``; ``ENODEV`` if none."""
    attrs = b""
    index = interface if isinstance(interface, int) else 0
    if isinstance(interface, str):
        attrs += attr(IFLA_IFNAME, interface.encode() + b"\0")
    if netnsid is not None:
        attrs += attr(IFLA_TARGET_NETNSID, struct.pack("=i", netnsid))
    replies = request(
        NETLINK_ROUTE, RTM_GETLINK, _ifinfo(index) + attrs, f"RTM_GETLINK {interface!r}"
    )
    if not replies:
        raise NetlinkError(errno.ENODEV, f"RTM_GETLINK {interface!r}", "no reply")
    return _link_state(replies[0][1])


def set_xdp(
    sock: NetlinkSocket, ifindex: int, prog_fd: int, flags: int, expected_fd: int | None = None
) -> None:
    """``RTM_SETLINK`` with ``IFLA_XDP`` on ``sock`` (a ``NETLINK_ROUTE`` socket in the
    device's namespace): attach ``prog_fd`` (-1: detach) with XDP_FLAGS ``flags``; with
    ``expected_fd`` (and ``XDP_FLAGS_REPLACE`` in ``flags``) only if that program is the
    one attached."""
    xdp = [
        attr(IFLA_XDP_FD, struct.pack("=i", prog_fd)),
        attr(IFLA_XDP_FLAGS, struct.pack("=I", flags)),
    ]
    if expected_fd is not None:
        xdp.append(attr(IFLA_XDP_EXPECTED_FD, struct.pack("=i", expected_fd)))
    payload = _ifinfo(ifindex) + nested(IFLA_XDP, *xdp)
    sock.request(RTM_SETLINK, payload, f"RTM_SETLINK IFLA_XDP ifindex {ifindex}")


# --- generic netlink ------------------------------------------------------------------------


def genl_family(name: str) -> int | None:
    """The id of generic-netlink family ``name`` here, or None if the kernel has none."""
    payload = _GENLMSGHDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr(
        CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"
    )
    try:
        replies = request(NETLINK_GENERIC, GENL_ID_CTRL, payload, f"CTRL_CMD_GETFAMILY {name}")
    except NetlinkError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    a = parse_attrs(replies[0][1][_GENLMSGHDR.size :])
    return struct.unpack("=H", a[CTRL_ATTR_FAMILY_ID][:2])[0]


def xdp_features(ifindex: int) -> int | None:
    """The device's XDP features (``NETDEV_XDP_ACT_*`` bits) from the ``netdev`` family,
    or None where the kernel has no such family (before Linux 6.3)."""
    family = genl_family("netdev")
    if family is None:
        return None
    payload = _GENLMSGHDR.pack(NETDEV_CMD_DEV_GET, 1, 0) + attr(
        NETDEV_A_DEV_IFINDEX, struct.pack("=I", ifindex)
    )
    replies = request(NETLINK_GENERIC, family, payload, f"NETDEV_CMD_DEV_GET ifindex {ifindex}")
    a = parse_attrs(replies[0][1][_GENLMSGHDR.size :])
    return struct.unpack("=Q", a[NETDEV_A_DEV_XDP_FEATURES][:8])[0]
