"""XDP on an interface: attach a program, natively or in generic (skb) mode, and the
XSKMAP that steers an RX queue's frames into its AF_XDP socket.

Theory of operation
-------------------
:func:`attach` makes a ``BPF_LINK_CREATE`` link (attach type ``BPF_XDP``) from a loaded
program (:class:`~cpumap.kernel.bpf.KernelProgram`) to an interface, with
``XDP_FLAGS_DRV_MODE`` for :attr:`XdpMode.NATIVE` (the driver runs it, as ``xdp-bench
-m native``) or ``XDP_FLAGS_SKB_MODE`` for :attr:`XdpMode.SKB` (the stack runs it on
every skb, any driver, any MTU).  The link is a file descriptor: the program stays
attached while the fd is open and is detached when it closes -- by
:meth:`XdpLink.close`, by a finalizer, or by the kernel when the owning process dies,
however it dies.  No bpffs pin is made, so nothing outlives its owner.

Where the kernel has no XDP links (``EINVAL``, before Linux 5.9), :func:`attach` falls
back to netlink (:func:`attach_netlink`: ``RTM_SETLINK`` with ``IFLA_XDP``, by hand in
``cpumap.kernel.netlink``).  Such an attachment belongs to the device, not to a file:
:meth:`XdpLink.close` (or the finalizer) detaches it, but a process that dies first
leaves it attached (``ip link set DEV xdp off`` removes it).  The detach names the
program it expects (``IFLA_XDP_EXPECTED_FD``), so it never removes someone else's.

Namespaces: the kernel resolves an interface's index in the network namespace of the
*calling thread* (for a link as for netlink).  Attach from inside the interface's
namespace: ``with cpumap.live.netns.entered(ns): link = attach(ifname, prog)`` (or run
the whole process under ``ip netns exec NS``).  Once made, a link is namespace-free:
close it from any thread.  An index resolved in another namespace names another device,
so :func:`attach` takes a name where it can and checks an index before using it.

Lifecycle, and why it is safe: every kernel object has one owner and is released once.
A link's fd is closed by a ``weakref.finalize`` that :meth:`XdpLink.close` calls (a
finalizer runs its callback at most once, so close, ``__exit__`` and garbage collection
may all happen, in any order, from any thread).  A forked child inherits the fd (it is
``O_CLOEXEC``: an exec drops it) and keeps the program attached until it too closes it
or exits: fork after attaching only children that should.

Refusals: what the kernel refuses becomes an :class:`XdpError` that keeps the errno and
names what to change -- an MTU too large for native XDP on veth (``ERANGE``), a device
that already has a program (``EBUSY``, ``EEXIST``), no such interface (``ENODEV``), no
privilege (``EPERM``), no native XDP in the driver (``EOPNOTSUPP``).  Privilege is
checked where the kernel checks it: loading a program or creating a map needs CAP_BPF,
a netlink attach CAP_NET_ADMIN; Linux 6.18 makes an XDP *link* from a program fd the
caller holds without checking capabilities (measured: a child that dropped root
attached its parent's program), so this module's program and map constructors are
where an unprivileged caller is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import weakref
from enum import StrEnum
from typing import Final

from ..abi import XDP_PASS
from ..errors import Error
from . import netlink
from .asm import count_program, redirect_by_queue_program, verdict_program
from .bpf import (
    AttachType,
    Cmd,
    FdOwner,
    KernelArrayMap,
    KernelProgram,
    MapElemAttr,
    MapType,
    bpf,
    link_create,
    map_create,
)

XDP_FLAGS_UPDATE_IF_NOEXIST: Final = 1 << 0
XDP_FLAGS_SKB_MODE: Final = 1 << 1
XDP_FLAGS_DRV_MODE: Final = 1 << 2
XDP_FLAGS_REPLACE: Final = 1 << 4

# Native XDP on veth needs the peer's MTU to fit a page with its headroom and
# skb_shared_info (veth_xdp_set): 3500 fits on 4 KiB pages, 4000 does not.
VETH_NATIVE_MTU_OK: Final = 3500


class XdpMode(StrEnum):
    """Where the program runs, as ``xdp-bench -m native|skb`` spells it."""

    NATIVE = "native"  # in the driver (XDP_FLAGS_DRV_MODE)
    SKB = "skb"  # generic XDP, on the skb (XDP_FLAGS_SKB_MODE): any driver, any MTU


_MODE_FLAGS: Final = {XdpMode.NATIVE: XDP_FLAGS_DRV_MODE, XdpMode.SKB: XDP_FLAGS_SKB_MODE}
_ATTACHED_MODES: Final = {1: "native", 2: "skb", 3: "offloaded", 4: "several modes"}


NEEDS_ROOT: Final = "XDP needs root (CAP_BPF and CAP_NET_ADMIN): run as root"


class XdpError(Error, OSError):
    """The kernel refused an XDP operation (or would have, as our check found): the
    kernel's errno, and a message naming what to change."""


def _load(insns: bytes, name: str) -> KernelProgram:
    """Load an XDP program; no privilege is an :class:`XdpError` (``EPERM``) saying so."""
    try:
        return KernelProgram(insns, name=name)
    except PermissionError as e:
        raise XdpError(e.errno, NEEDS_ROOT) from None


# --- interfaces ----------------------------------------------------------------------------


def _where() -> str:
    return (
        "in this thread's network namespace (attach from inside the interface's: "
        "`with cpumap.live.netns.entered(NS):`, or `ip netns exec NS ...`)"
    )


def link_state(interface: str | int) -> netlink.LinkState:
    """The interface as the calling thread's namespace sees it; :class:`XdpError`
    (``ENODEV``, ``EPERM``) naming it if there is none or we may not ask."""
    try:
        return netlink.get_link(interface)
    except netlink.NetlinkError as e:
        if e.errno in (errno.ENODEV, errno.EINVAL):
            raise XdpError(errno.ENODEV, f"no interface {interface!r} {_where()}") from None
        raise XdpError(e.errno, f"cannot read interface {interface!r}: {e.strerror}") from None


def veth_peer(state: netlink.LinkState) -> netlink.LinkState | None:
    """A veth end's peer (read across namespaces by nsid), or None where it cannot be read."""
    if state.kind != "veth" or state.peer_ifindex is None:
        return None
    try:
        return netlink.get_link(state.peer_ifindex, netnsid=state.peer_netnsid)
    except netlink.NetlinkError:
        return None


def _mtu_message(state: netlink.LinkState) -> str:
    # veth_xdp_set checks the peer's MTU: name the end whose MTU must change.
    peer = veth_peer(state)
    if peer is None:
        dev, whose = state, ""
    else:
        there = ", in its namespace" if state.peer_netnsid is not None else ""
        dev, whose = peer, f" (the peer of {state.name}{there})"
    return (
        f"MTU {dev.mtu} of {dev.name}{whose} is too large for native XDP on veth "
        f"({VETH_NATIVE_MTU_OK} works, 4000 does not): lower it with `ip link set "
        f"{dev.name} mtu {VETH_NATIVE_MTU_OK}`, or use -m skb"
    )


def _busy_message(state: netlink.LinkState) -> str:
    now = link_state(state.ifindex)  # what holds it now, not when we last looked
    held = _ATTACHED_MODES.get(now.xdp_attached, "some mode")
    prog = f", program id {now.xdp_prog_id}" if now.xdp_prog_id else ""
    return (
        f"{state.name} already has an XDP program ({held}{prog}): detach it first (close "
        f"the link that holds it, or `ip link set {state.name} xdp off` if netlink attached "
        "it); a device takes one, native and skb mode exclude each other"
    )


def refusal(e: OSError, state: netlink.LinkState, mode: XdpMode) -> XdpError:
    """``e``, the kernel's refusal to attach to ``state``'s device, as an :class:`XdpError`
    that keeps its errno and says what to change."""
    err = e.errno or errno.EINVAL
    if err == errno.ERANGE and mode is XdpMode.NATIVE and state.kind == "veth":
        text = _mtu_message(state)
    elif err in (errno.EBUSY, errno.EEXIST):
        text = _busy_message(state)
    elif err in (errno.EPERM, errno.EACCES):
        text = NEEDS_ROOT
    elif err == errno.EOPNOTSUPP and mode is XdpMode.NATIVE:
        text = f"{state.name}'s driver has no native XDP: use -m skb"
    elif err == errno.ENODEV:
        text = f"no interface {state.name!r} {_where()}"
    else:
        text = f"the kernel refused to attach XDP to {state.name} in {mode} mode: {e.strerror}"
    return XdpError(err, text)


# --- the attachment -------------------------------------------------------------------------


def _netlink_detach(sock: netlink.NetlinkSocket, ifindex: int, flags: int, prog_fd: int) -> None:
    """Detach our program (``prog_fd``, held by us) if it is still the one attached."""
    try:
        netlink.set_xdp(sock, ifindex, -1, flags | XDP_FLAGS_REPLACE, expected_fd=prog_fd)
    except OSError:
        pass  # gone with the device, or replaced by its new owner: not ours to remove
    finally:
        sock.close()
        os.close(prog_fd)


class XdpLink(FdOwner):
    """A program attached to an interface; :meth:`close` detaches it (idempotent).

    Made by :func:`attach` and :func:`attach_netlink`.  :attr:`via` says how it holds
    the program: ``"link"`` (a ``BPF_LINK_CREATE`` fd, :attr:`fd`: detached also when
    this process dies) or ``"netlink"`` (the fallback, :attr:`fd` -1: detached by
    :meth:`close` or the finalizer only).
    """

    def __init__(
        self,
        interface: str | int,
        program: KernelProgram,
        mode: XdpMode = XdpMode.NATIVE,
        *,
        via: str = "link",
    ) -> None:
        if via not in ("link", "netlink"):
            raise ValueError(f"via must be 'link' or 'netlink', got {via!r}")
        self.mode: Final = XdpMode(mode)
        state = link_state(interface)
        self.ifindex: Final = state.ifindex
        self.ifname: Final = state.name
        self.prog_id: Final = program.prog_id
        self.via = via
        if via == "link":
            try:
                fd = link_create(program.fd, state.ifindex, AttachType.XDP, _MODE_FLAGS[self.mode])
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise refusal(e, state, self.mode) from None
                self.via = "netlink"  # no XDP links here (Linux < 5.9): the old way
            else:
                self._own(fd)
                return
        self._attach_netlink(state, program)

    def _attach_netlink(self, state: netlink.LinkState, program: KernelProgram) -> None:
        """``RTM_SETLINK``/``IFLA_XDP`` with ``XDP_FLAGS_UPDATE_IF_NOEXIST`` (never
        replacing a program already there); the socket stays open for the detach, in the
        device's namespace whichever thread closes us."""
        sock = netlink.NetlinkSocket(netlink.NETLINK_ROUTE)
        prog_fd = os.dup(program.fd)  # ours, for the detach to name (the caller may close theirs)
        flags = _MODE_FLAGS[self.mode]
        try:
            netlink.set_xdp(sock, state.ifindex, prog_fd, flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
        except BaseException as e:
            sock.close()
            os.close(prog_fd)
            if isinstance(e, OSError):
                raise refusal(e, state, self.mode) from None
            raise
        self._fd = -1
        args = (sock, state.ifindex, flags, prog_fd)
        self._finalizer = weakref.finalize(self, _netlink_detach, *args)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "attached"
        return f"XdpLink({self.ifname}, ifindex={self.ifindex}, {self.mode}, {self.via}, {state})"


def attach(interface: str | int, program: KernelProgram, mode: XdpMode = XdpMode.NATIVE) -> XdpLink:
    """Attach ``program`` to ``interface`` in ``mode``: a ``BPF_LINK_CREATE`` link, or
    netlink where the kernel makes no XDP links.  :class:`XdpError` for every refusal.

    ``interface`` (a name or an index) is resolved in the calling thread's network
    namespace: for an interface in namespace ``ns``, call it inside
    ``cpumap.live.netns.entered(ns)``; the link can then be closed from anywhere.
    """
    return XdpLink(interface, program, mode)


def attach_netlink(
    interface: str | int, program: KernelProgram, mode: XdpMode = XdpMode.NATIVE
) -> XdpLink:
    """Attach with ``RTM_SETLINK``/``IFLA_XDP``: the fallback of :func:`attach`, public so
    that it can be used and tested on kernels that have links."""
    return XdpLink(interface, program, mode, via="netlink")


# --- AF_XDP: the XSKMAP and its program -----------------------------------------------------


class XskMap(FdOwner):
    """A ``BPF_MAP_TYPE_XSKMAP``: key = RX queue, value = the AF_XDP socket for it.

    A program redirects into it (:func:`xsk_redirect_program`); the kernel holds a
    reference to each socket set here until :meth:`delete` or the map goes.  User space
    cannot read an entry back (the kernel has no lookup for it).
    """

    def __init__(self, max_entries: int, *, name: str = "") -> None:
        self.max_entries: Final = max_entries
        try:
            self._own(map_create(MapType.XSKMAP, 4, 4, max_entries, name=name))
        except PermissionError as e:
            raise XdpError(e.errno, NEEDS_ROOT) from None

    def _elem(self, key: ctypes.c_uint32, value: ctypes.c_uint32 | None, flags: int) -> MapElemAttr:
        vptr = 0 if value is None else ctypes.addressof(value)
        return MapElemAttr(map_fd=self.fd, key=ctypes.addressof(key), value=vptr, flags=flags)

    def set(self, queue: int, socket_fd: int, flags: int = 0) -> None:
        """Steer RX queue ``queue`` to the AF_XDP socket ``socket_fd`` (``flags``: BPF_ANY,
        BPF_NOEXIST, BPF_EXIST); the kernel's errno as ``OSError`` (``EOPNOTSUPP``: not an
        AF_XDP socket)."""
        key, value = ctypes.c_uint32(queue), ctypes.c_uint32(socket_fd)
        bpf(Cmd.MAP_UPDATE_ELEM, self._elem(key, value, flags), f"xskmap queue={queue}")

    def delete(self, queue: int) -> None:
        """Stop steering ``queue`` (no error if nothing was set there)."""
        key = ctypes.c_uint32(queue)
        bpf(Cmd.MAP_DELETE_ELEM, self._elem(key, None, 0), f"xskmap queue={queue}")


def xsk_redirect_program(xskmap: XskMap) -> KernelProgram:
    """``return bpf_redirect_map(&xskmap, ctx->rx_queue_index, XDP_PASS)``: each queue's
    frames to its socket; a queue with no socket passes its frames to the stack."""
    return _load(redirect_by_queue_program(xskmap.fd), "cpumap_xsk")


def pass_program() -> KernelProgram:
    """``return XDP_PASS``: attached to a veth end it gives that end NAPI (so that frames
    redirected into it are received) and changes nothing else."""
    return _load(verdict_program(XDP_PASS), "cpumap_pass")


def counting_program(counter: KernelArrayMap, verdict: int = XDP_PASS) -> KernelProgram:
    """Count each frame in ``counter[0]`` (a per-CPU array), then ``return verdict``."""
    if not counter.percpu:
        raise ValueError("counter must be a per-CPU array (KernelArrayMap(1, percpu=True))")
    return _load(count_program(counter.fd, verdict), "cpumap_count")
