"""XDP attach for real: programs on veth pairs in fresh namespaces, seen by netlink and by
``ip -d link``, detached by close, by a killed owner, and by the netlink fallback; what
the kernel refuses, worded; the XSKMAP; frames reaching an attached program.

Needs root (namespaces, bpf(2)); skips with the reason otherwise.  Nothing waits for
something *not* to happen: a detach is checked at once where close() is synchronous, and
with a deadline where a process has to die first.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from cpumap.abi import BPF_EXIST, BPF_NOEXIST, XDP_DROP
from cpumap.kernel import KernelArrayMap, udp_frame
from cpumap.kernel.netlink import NETLINK_ROUTE, NetlinkSocket, get_link, set_xdp
from cpumap.kernel.xdp import (
    XdpError,
    XdpMode,
    XskMap,
    attach,
    attach_netlink,
    counting_program,
    pass_program,
    xsk_redirect_program,
)
from cpumap.live.netns import VethPair, ip
from tests.helpers import veth_unavailable, wait_for

pytestmark = pytest.mark.root
AF_XDP = 44
DEADLINE_S = 10.0


_REASON = veth_unavailable("network namespaces and bpf(2)", bpf=True)
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)


def attached(pair: VethPair) -> tuple[int, int]:
    """(IFLA_XDP_ATTACHED, program id) of the local end, as netlink reports it."""
    with pair.in_local():
        state = get_link(pair.local.ifname)
    return state.xdp_attached, state.xdp_prog_id


def ip_link(pair: VethPair) -> str:
    return ip("-n", str(pair.local.netns), "-d", "link", "show", "dev", pair.local.ifname)


# --- attach and detach ------------------------------------------------------------------------

IP_SHOWS = {XdpMode.NATIVE: " xdp ", XdpMode.SKB: " xdpgeneric "}  # in the first line
ATTACHED = {XdpMode.NATIVE: 1, XdpMode.SKB: 2}


@pytest.mark.parametrize("mode", list(XdpMode))
@pytest.mark.parametrize("how", [attach, attach_netlink])
def test_attach_shows_the_program_and_close_detaches_it(veth: VethPair, mode, how) -> None:
    with veth.in_local(), pass_program() as prog:
        link = how(veth.local.ifname, prog, mode)
    assert (link.ifindex, link.mode, link.prog_id) == (veth.local.ifindex, mode, prog.prog_id)
    assert link.via == ("link" if how is attach else "netlink")
    assert attached(veth) == (ATTACHED[mode], prog.prog_id)
    shown = ip_link(veth)
    assert IP_SHOWS[mode] in shown.splitlines()[0]
    assert f"prog/xdp id {prog.prog_id} " in shown
    link.close()  # from the root namespace: a link is namespace-free once made
    assert attached(veth) == (0, 0)
    assert "prog/xdp" not in ip_link(veth)
    link.close()  # idempotent
    assert link.closed


def test_the_link_keeps_the_program_after_its_object_is_closed(veth: VethPair) -> None:
    with veth.in_local():
        prog = pass_program()
        with attach(veth.local.ifname, prog) as link:
            prog.close()
            assert attached(veth) == (1, link.prog_id)
    assert attached(veth) == (0, 0)


def test_a_forgotten_link_is_detached_by_its_finalizer(veth: VethPair) -> None:
    with veth.in_local(), pass_program() as prog:
        attach_netlink(veth.local.ifname, prog, XdpMode.SKB)  # dropped at once
    assert attached(veth) == (0, 0)


def test_the_netlink_detach_leaves_someone_elses_program_alone(veth: VethPair) -> None:
    with veth.in_local(), pass_program() as ours, pass_program() as theirs:
        link = attach_netlink(veth.local.ifname, ours)
        with NetlinkSocket(NETLINK_ROUTE) as sock:  # another owner takes the device over
            set_xdp(sock, veth.local.ifindex, -1, 4)
            set_xdp(sock, veth.local.ifindex, theirs.fd, 4)
        link.close()
        assert attached(veth) == (1, theirs.prog_id)
        with NetlinkSocket(NETLINK_ROUTE) as sock:
            set_xdp(sock, veth.local.ifindex, -1, 4)
    assert attached(veth) == (0, 0)


CHILD = textwrap.dedent(
    """
    import sys
    from cpumap.kernel.xdp import attach, pass_program
    from cpumap.live.netns import entered
    with entered(sys.argv[1]):
        link = attach(sys.argv[2], pass_program())
    print(link.prog_id, flush=True)
    sys.stdin.read()  # hold it until killed
    """
)


@pytest.mark.slow
def test_a_killed_owner_leaves_nothing_attached(veth: VethPair) -> None:
    argv = [sys.executable, "-c", CHILD, str(veth.local.netns), veth.local.ifname]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        prog_id = int(proc.stdout.readline())
        assert attached(veth) == (1, prog_id)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(DEADLINE_S)
    wait_for(lambda: attached(veth) == (0, 0), DEADLINE_S)  # the kernel closed its link fd
    assert "prog/xdp" not in ip_link(veth)


# --- refusals -------------------------------------------------------------------------------


def test_an_mtu_too_large_for_native_veth_xdp_is_refused_naming_the_fix() -> None:
    with VethPair(mtu=9000) as pair, pair.in_local(), pass_program() as prog:
        for how in (attach, attach_netlink):
            with pytest.raises(XdpError) as ei:
                how(pair.local.ifname, prog)
            assert ei.value.errno == errno.ERANGE
            peer = pair.peer.ifname
            assert str(ei.value.strerror) == (
                f"MTU 9000 of {peer} (the peer of {pair.local.ifname}, in its namespace) is "
                "too large for native XDP on veth (3500 works, 4000 does not): lower it with "
                f"`ip link set {peer} mtu 3500`, or use -m skb"
            )
        with attach(pair.local.ifname, prog, XdpMode.SKB) as link:  # generic takes any MTU
            assert link.mode == "skb"


def test_an_mtu_of_3500_is_accepted_natively() -> None:
    with VethPair(mtu=3500) as pair, pair.in_local(), pass_program() as prog:
        link = attach(pair.local.ifname, prog)
        assert link.mode == XdpMode.NATIVE
        link.close()


def test_a_device_that_has_a_program_is_busy(veth: VethPair) -> None:
    with veth.in_local(), pass_program() as prog, attach(veth.local.ifname, prog):
        for how, mode, err in [
            (attach, XdpMode.NATIVE, errno.EBUSY),
            (attach_netlink, XdpMode.NATIVE, errno.EBUSY),
            (attach, XdpMode.SKB, errno.EEXIST),  # native and skb exclude each other
        ]:
            with pytest.raises(XdpError) as ei:
                how(veth.local.ifname, prog, mode)
            assert ei.value.errno == err
            assert str(ei.value.strerror).startswith(
                f"{veth.local.ifname} already has an XDP program (native, program id "
                f"{prog.prog_id}): detach it first"
            )
        assert attached(veth) == (1, prog.prog_id)  # the refusals changed nothing


def test_an_interface_of_another_namespace_is_not_found(veth: VethPair) -> None:
    with pass_program() as prog:
        for name in (veth.local.ifname, "no-such-if"):  # from the root namespace
            with pytest.raises(XdpError) as ei:
                attach(name, prog)
            assert ei.value.errno == errno.ENODEV
            assert re.match(
                rf"no interface '{name}' in this thread's network namespace \(attach from "
                r"inside the interface's: `with cpumap\.live\.netns\.entered\(NS\):`",
                str(ei.value.strerror),
            )
        with veth.in_local(), pytest.raises(XdpError, match="no interface 999"):
            attach(999, prog)


def _unprivileged_tries(pair: VethPair, prog_fd_owner) -> list[str]:
    """In this (forked) process without root: what each step raises, as "errno message"."""
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)  # every uid non-zero: every capability gone
    said = []
    for step in (
        pass_program,
        lambda: XskMap(1),
        lambda: attach_netlink(pair.local.ifname, prog_fd_owner),
    ):
        try:
            step()
            said.append("no error")
        except XdpError as e:
            said.append(f"{e.errno} {e.strerror}")
    return said


@pytest.mark.slow
def test_without_privilege_loading_and_netlink_attach_are_refused_as_eperm(veth) -> None:
    read, write = os.pipe()
    with veth.in_local(), pass_program() as prog:
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                os.write(write, "\n".join(_unprivileged_tries(veth, prog)).encode())
            except BaseException as e:  # fails the test in the parent
                os.write(write, repr(e).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        said = f.read().splitlines()
    os.waitpid(pid, 0)
    want = f"{errno.EPERM} XDP needs root (CAP_BPF and CAP_NET_ADMIN): run as root"
    assert said == [want] * 3
    assert attached(veth) == (0, 0)


def test_a_bad_mode_is_a_value_error(veth: VethPair) -> None:
    with veth.in_local(), pass_program() as prog, pytest.raises(ValueError, match="'hw'"):
        attach(veth.local.ifname, prog, "hw")  # type: ignore[arg-type]


def test_a_counter_must_be_per_cpu() -> None:
    with KernelArrayMap(1) as plain, pytest.raises(ValueError, match="per-CPU"):
        counting_program(plain)


# --- the XSKMAP -------------------------------------------------------------------------------


def test_an_xskmap_takes_af_xdp_sockets_by_queue(veth: VethPair) -> None:
    with (
        XskMap(2) as m,
        socket.socket(AF_XDP, socket.SOCK_RAW) as a,
        socket.socket(AF_XDP, socket.SOCK_RAW) as b,
    ):
        m.set(0, a.fileno())
        with pytest.raises(OSError) as ei:  # queue 0 is taken
            m.set(0, b.fileno(), BPF_NOEXIST)
        assert ei.value.errno == errno.EEXIST
        m.set(0, b.fileno(), BPF_EXIST)  # replaced
        m.delete(0)
        with pytest.raises(OSError) as ei:  # queue 0 is empty now
            m.set(0, b.fileno(), BPF_EXIST)
        assert ei.value.errno == errno.ENOENT
        m.set(1, b.fileno(), BPF_NOEXIST)
        with pytest.raises(OSError) as ei:
            m.set(2, a.fileno())
        assert ei.value.errno == errno.E2BIG
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(OSError) as ei:
            m.set(0, udp.fileno())
        assert ei.value.errno == errno.EOPNOTSUPP  # not an AF_XDP socket
        with veth.in_local(), xsk_redirect_program(m) as prog, attach(veth.local.ifname, prog):
            assert attached(veth) == (1, prog.prog_id)


# --- frames -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(XdpMode))
def test_frames_sent_into_the_peer_reach_an_attached_program(veth: VethPair, mode) -> None:
    n = 300
    frame = udp_frame(64, dst_mac=veth.local.mac_bytes)
    counter = KernelArrayMap(1, percpu=True)
    with counting_program(counter, XDP_DROP) as prog, veth.in_local():
        link = attach(veth.local.ifname, prog, mode)
    with counter, link:
        assert counter.lookup(0) == 0
        veth.inject([frame] * n)  # out of the peer end
        wait_for(lambda: counter.lookup(0) >= n, DEADLINE_S)
        assert counter.lookup(0) == n
