"""Throw-away network namespaces and veth pairs, for tests and demos.

Charter: this module builds and tears down test plumbing.  Nothing in the engine imports it; the
live source (:mod:`cpumap.live`) does not know about namespaces.  Sockets belong to the network
namespace of the *thread* that created them, for life, so "open a live source on an interface
in namespace X" is ``with entered(X): src = LiveSource(ifname)`` and the source can then be used
from anywhere in the process.

Theory of operation
-------------------
:class:`VethPair` creates, by default, two fresh namespaces and one veth pair between them::

    [ local_ns: local_if ]  <== veth ==>  [ peer_ns: peer_if ]
        (the live source reads here)          (traffic is injected here)

Nothing is created in the namespace the caller runs in, so interface names cannot collide with
the host's or with a parallel test run, and host daemons never see the links.  (With
``local_netns=False`` the local end lives in the caller's namespace instead; its name is still
random.)  In each new namespace IPv6 is disabled before the links exist (with
``local_netns=False``, on the local link only, before it comes up), so the kernel sends nothing
on its own (no router solicitations, DAD probes or MLD reports): what a test receives is what
it sent.  IPv4 addresses are assigned, so that the pair carries IP traffic; IPv4 alone is
silent.

Namespaces are named ``cpumap-<pid>-<n>-<random>``.  Teardown deletes the namespaces (which
destroys the veth pair with them) and runs even when setup fails half way (every step records
what it created before the next one runs).  A test process that is SIGKILLed cannot clean up;
:func:`sweep_stale` removes namespaces whose creating pid is dead.

Commands go through iproute2's ``ip`` (one short subprocess each, ~2 ms): its behaviour is what
administrators know, and namespace creation (unshare + bind mount under /run/netns) is exactly
what ``ip netns add`` does.  Entering a namespace is ``setns(2)`` on the calling thread only.

Frames go in with :class:`Injector` / :func:`inject`: an AF_PACKET socket created inside the
peer namespace and bound to the peer interface, which transmits whole Ethernet frames as given
(VLAN tags included: the kernel parses the Ethernet header of a raw frame to set the protocol).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import os
import re
import secrets
import select
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from ..closing import Closing
from ..errors import Error
from ..packets import Packet, PacketBatch
from .if_packet import PACKET_QDISC_BYPASS, SOL_PACKET

NETNS_RUN_DIR = "/run/netns"  # where `ip netns add` bind-mounts namespaces (iproute2)
NETNS_PREFIX = "cpumap-"
CLONE_NEWNET = 0x40000000  # <linux/sched.h>

_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()
_NS_NAME = re.compile(r"^cpumap-(\d+)-\d+-[0-9a-f]+$")


class NetnsError(Error, RuntimeError):
    """An ``ip`` command or a namespace operation failed; the message says which and why."""


def _ip_binary() -> str:
    path = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise NetnsError("iproute2's `ip` command was not found: install iproute2")
    return path


def ip(*args: str) -> str:
    """Run ``ip ARGS`` and return its stdout; raise :class:`NetnsError` with its stderr."""
    cmd = [_ip_binary(), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {res.stderr.strip() or res.returncode}")
    return res.stdout


def unique_netns_name() -> str:
    """A namespace name no other process or earlier call of this one uses."""
    return f"{NETNS_PREFIX}{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside network namespace ``netns``.

    ``None`` means "stay where you are".  Only the calling thread moves (setns(2) is per
    thread); it comes back on exit, exception or not.  Sockets created inside stay in
    ``netns`` after the block ends.
    """
    if netns is None:
        yield
        return
    try:
        target = os.open(os.path.join(NETNS_RUN_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"no network namespace named {netns!r} (see `ip netns list`)") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def _disable_ipv6_here(*confs: str) -> None:
    """Disable IPv6 for ``confs`` ("all", "default" or an interface) in this thread's namespace.

    /proc/sys/net resolves against the opening thread's namespace, so this must run inside
    :func:`entered`.  Without the ipv6 module there is nothing to disable.
    """
    for conf in confs:
        path = f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"
        with contextlib.suppress(FileNotFoundError), open(path, "w") as f:
            f.write("1")


def sweep_stale() -> list[str]:
    """Delete ``cpumap-*`` namespaces whose creating process is dead; return their names."""
    removed: list[str] = []
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return removed
    for name in names:
        m = _NS_NAME.match(name)
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # alive (or a reused pid: leave it, never delete a live run's namespace)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(NetnsError):
            ip("netns", "delete", name)
            removed.append(name)
    return removed


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One end of the pair as the kernel reports it."""

    netns: str | None  # None: the namespace of the process that created the pair
    ifname: str
    ifindex: int
    mac: str  # "aa:bb:cc:dd:ee:ff"
    address: str | None  # "10.x.y.z/30", or None without addresses

    @property
    def mac_bytes(self) -> bytes:
        return bytes.fromhex(self.mac.replace(":", ""))


def _ns_args(netns: str | None) -> list[str]:
    return ["-n", netns] if netns is not None else []


def _link_info(netns: str | None, ifname: str, address: str | None) -> LinkInfo:
    (info,) = json.loads(ip(*_ns_args(netns), "-j", "link", "show", "dev", ifname))
    return LinkInfo(netns, ifname, int(info["ifindex"]), str(info["address"]), address)


@dataclass
class VethPair:
    """A veth pair between a fresh "peer" namespace and a fresh (or the current) "local" one.

    Use as a context manager; :meth:`destroy` (also run by ``__exit__``) always cleans up.
    After entry, :attr:`local` and :attr:`peer` describe the two ends.

    ``mtu`` sets both ends' MTU; ``addresses`` assigns 10.<a>.<b>.1/30 (local) and .2/30
    (peer) from a random /30; ``queues``: RX and TX queues of each end (veth puts a frame
    sent into it by XDP on the RX queue of the sending CPU modulo the receiver's RX
    queues: ``veth_xdp_xmit``'s ``veth_select_rxq``).
    """

    local_netns: bool = True
    addresses: bool = True
    mtu: int | None = None
    queues: int = 1
    # Filled by create():
    local: LinkInfo = field(init=False)
    peer: LinkInfo = field(init=False)
    _namespaces: list[str] = field(init=False, default_factory=list)
    _root_link: str | None = field(init=False, default=None)
    _closed: bool = field(init=False, default=False)

    def __enter__(self) -> VethPair:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy(raise_errors=exc is None)

    def create(self) -> None:
        """Create the namespaces, the pair, addresses; bring everything up."""
        tag = secrets.token_hex(3)
        local_if, peer_if = f"cpm{tag}l", f"cpm{tag}p"
        try:
            peer_ns = unique_netns_name()
            ip("netns", "add", peer_ns)
            self._namespaces.append(peer_ns)
            local_ns: str | None = None
            if self.local_netns:
                local_ns = unique_netns_name()
                ip("netns", "add", local_ns)
                self._namespaces.append(local_ns)
            for ns in self._namespaces:
                with entered(ns):
                    _disable_ipv6_here("all", "default")
            many = ("numrxqueues", str(self.queues), "numtxqueues", str(self.queues))
            many = many if self.queues > 1 else ()
            veth = ("type", "veth", "peer", "name", peer_if, *many, "netns", peer_ns)
            ip(*_ns_args(local_ns), "link", "add", local_if, *many, *veth)
            if local_ns is None:
                self._root_link = local_if
                _disable_ipv6_here(local_if)  # this end only: the caller's namespace is theirs
            local_addr = peer_addr = None
            if self.addresses:
                net = f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(256)}"
                base = 4 * secrets.randbelow(64)
                local_addr, peer_addr = f"{net}.{base + 1}/30", f"{net}.{base + 2}/30"
            ends = ((local_ns, local_if, local_addr), (peer_ns, peer_if, peer_addr))
            for ns, ifname, addr in ends:
                if self.mtu is not None:
                    ip(*_ns_args(ns), "link", "set", "dev", ifname, "mtu", str(self.mtu))
                if addr is not None:
                    ip(*_ns_args(ns), "addr", "add", addr, "dev", ifname)
                ip(*_ns_args(ns), "link", "set", "dev", ifname, "up")
                if ns is not None:
                    ip("-n", ns, "link", "set", "dev", "lo", "up")
            self.local = _link_info(local_ns, local_if, local_addr)
            self.peer = _link_info(peer_ns, peer_if, peer_addr)
        except BaseException:
            self.destroy(raise_errors=False)
            raise

    def destroy(self, *, raise_errors: bool = True) -> None:
        """Delete everything :meth:`create` made.  Idempotent.

        Deleting a namespace destroys the links in it, and a veth end takes its peer with it.
        """
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        if self._root_link is not None:
            try:
                ip("link", "delete", "dev", self._root_link)
            except NetnsError as e:
                if "Cannot find device" not in str(e):
                    errors.append(str(e))
        for ns in reversed(self._namespaces):
            try:
                ip("netns", "delete", ns)
            except NetnsError as e:
                errors.append(str(e))
        self._namespaces.clear()
        if errors and raise_errors:
            raise NetnsError("; ".join(errors))

    def in_local(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: the calling thread inside the local end's namespace."""
        return entered(self.local.netns)

    def in_peer(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: the calling thread inside the peer end's namespace."""
        return entered(self.peer.netns)

    def injector(self) -> Injector:
        """An :class:`Injector` that transmits on the peer end (frames arrive at local)."""
        return Injector(self.peer.ifname, netns=self.peer.netns)

    def inject(self, packets: Frames) -> int:
        """Transmit ``packets`` on the peer end; they arrive on the local end.  Returns count."""
        with self.injector() as inj:
            return inj.send(packets)


Frames = PacketBatch | np.ndarray | Iterable[bytes | bytearray | memoryview | Packet]
"""What :meth:`Injector.send` takes: a batch, a 2-D uint8 array (one frame per row), or
an iterable of frames (``bytes``-like or :class:`~cpumap.packets.Packet`)."""


class Injector(Closing):
    """An AF_PACKET socket that transmits whole Ethernet frames out of one interface.

    The socket is created in ``netns`` (by name; ``None`` = the caller's) and stays there.
    It is opened with protocol 0, so it receives nothing.  ``qdisc_bypass`` sends straight to
    the driver (PACKET_QDISC_BYPASS): a little faster, but packet sockets on the sending
    interface then do not see the frames leave.  Frames go out exactly as given;
    on a veth they arrive at the other end as sent (the receiving stack may strip a VLAN tag
    into metadata; :class:`~cpumap.live.LiveSource` puts it back).
    """

    def __init__(
        self, ifname: str, *, netns: str | None = None, qdisc_bypass: bool = False
    ) -> None:
        self.ifname = ifname
        self.netns = netns
        with entered(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                sock.bind((ifname, 0))
            except OSError as e:
                sock.close()
                if e.errno == errno.ENODEV:
                    raise OSError(
                        errno.ENODEV, f"no interface named {ifname!r} in namespace {netns!r}"
                    ) from None
                raise
        if qdisc_bypass:  # faster, but such frames skip the taps: egress captures miss them
            with contextlib.suppress(OSError):  # an optimisation only (Linux >= 3.14)
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        self._sock: socket.socket | None = sock

    def close(self) -> None:
        """Close the socket.  Idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send_one(self, frame: bytes | memoryview | np.ndarray) -> None:
        assert self._sock is not None
        while True:
            try:
                self._sock.send(frame)
                return
            except OSError as e:
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                # Transmit queue momentarily full: wait until writable (bounded) and retry.
                select.select([], [self._sock], [], 0.01)

    def send(self, packets: Frames) -> int:
        """Transmit every frame in ``packets``, in order; return how many were sent."""
        if self._sock is None:
            raise ValueError("Injector is closed")
        n = 0
        if isinstance(packets, PacketBatch):
            mv = memoryview(np.ascontiguousarray(packets.buf))
            for s, c in zip(packets.start.tolist(), packets.caplen.tolist(), strict=True):
                self._send_one(mv[s : s + c])
                n += 1
        elif isinstance(packets, np.ndarray):
            if packets.ndim != 2 or packets.dtype != np.uint8:
                raise ValueError("frames must be a 2-D uint8 array")
            rows = np.ascontiguousarray(packets)
            mv = memoryview(rows.reshape(-1))
            width = rows.shape[1]
            for i in range(rows.shape[0]):
                self._send_one(mv[i * width : (i + 1) * width])
                n += 1
        else:
            for p in packets:
                self._send_one(p.data if isinstance(p, Packet) else p)
                n += 1
        return n


def inject(ifname: str, packets: Frames, *, netns: str | None = None) -> int:
    """Transmit ``packets`` out of interface ``ifname`` in namespace ``netns``; return count.

    One socket for the whole call.  For many calls, keep an :class:`Injector` open.
    """
    with Injector(ifname, netns=netns) as inj:
        return inj.send(packets)
