"""A network interface named or numbered, as the calling thread's network namespace sees it.

Both live sources (TPACKET_V3 in ``source.py``, AF_XDP in ``xsk.py``) take an interface as
a name or an ifindex and need the other; both must resolve it in the namespace of the
thread that will own the socket (a socket belongs to that namespace for life), so this is
one function, called there.
"""

from __future__ import annotations

import errno
import socket

from ..errors import Error


class NoSuchInterface(Error, OSError):
    """No interface of that name or index in this thread's network namespace (ENODEV)."""


def resolve_interface(interface: str | int) -> tuple[str, int]:
    """``(name, ifindex)`` of ``interface`` (a name or an ifindex) in the calling thread's
    network namespace; :class:`NoSuchInterface` if it has none."""
    if isinstance(interface, bool) or not isinstance(interface, str | int):
        raise TypeError(f"interface must be a name or an ifindex, got {interface!r}")
    try:
        if isinstance(interface, int):
            return socket.if_indextoname(interface), interface
        return interface, socket.if_nametoindex(interface)
    except OSError:
        raise NoSuchInterface(
            errno.ENODEV,
            f"no network interface {interface!r} in this network namespace "
            "(list them with `ip link`)",
        ) from None
