"""``xdp-bench redirect-cpu`` with our programs: a steering mode on an interface's XDP hook.

:class:`KernelSteering` is what ``xdp-bench redirect-cpu -p MODE -c CPUS -q QSIZE -r ACTION
DEV`` sets up, built from our parts: a real ``BPF_MAP_TYPE_CPUMAP`` with an entry of
``qsize`` frames on each CPU of the list, each entry carrying a second-stage program that
does the remote action (drop, pass to the netstack, or redirect out of a device); the
steering program of :mod:`cpumap.kernel.steering` attached to the interface (an
:func:`~cpumap.kernel.xdp.attach` link, native by default); and per-CPU counters read
from the kernel.

Counters, and why they add up
-----------------------------
* :meth:`KernelSteering.counts`: the steering program's own per-CPU counters (on the RX
  CPUs): every frame it ran on is one outcome -- redirected to a key, or another verdict.
* :meth:`KernelSteering.delivered`: frames each entry's kthread ran its second stage on,
  counted by the second stage in a per-CPU slot -- so the slot of CPU c is what reached
  CPU c.  Redirected to c minus delivered on c is what the cpumap dropped at enqueue (a
  full ring: the ``xdp_cpumap_enqueue`` tracepoint's ``drops``) or still holds.

Lifecycle: the link is a file descriptor, so the program is detached when :meth:`close`
runs (idempotent; also ``with``) and when the process dies, however it dies; the maps and
programs go with the last reference.  Nothing is pinned, nothing outlives its owner.  The
interface (and ``redirect_to``) is resolved in the calling thread's network namespace, as
:func:`~cpumap.kernel.xdp.attach` says.
"""

from __future__ import annotations

import contextlib
from typing import Final, Literal

from ..abi import XDP_ABORTED, XDP_DROP, XDP_PASS
from ..closing import Closing
from ..cpus import format_cpu_list, possible_cpus
from .asm import (
    BPF_ADD,
    BPF_DW,
    BPF_JEQ,
    BPF_W,
    HELPER_MAP_LOOKUP_ELEM,
    R0,
    R1,
    R2,
    R10,
    Asm,
    load_xdp,
)
from .bpf import KernelArrayMap, KernelCpuMap, KernelProgram
from .steering import SteeringCounters, SteeringCounts, SteeringSpec, load_steering, percpu_values
from .tracepoint_counts import CpumapTracepointCounts
from .xdp import XdpLink, XdpMode, attach, link_state

__all__ = ["HELPER_REDIRECT", "REMOTE_ACTIONS", "KernelSteering", "RemoteAction", "remote_program"]

RemoteAction = Literal["drop", "pass", "redirect"]
REMOTE_ACTIONS: Final = ("drop", "pass", "redirect")
HELPER_REDIRECT: Final = 23  # bpf_redirect(ifindex, flags)
DEFAULT_QSIZE: Final = 2048  # xdp-bench redirect-cpu's default -q


def _check_action(action: str) -> None:
    if action not in REMOTE_ACTIONS:
        raise ValueError(
            f"remote action must be one of {', '.join(REMOTE_ACTIONS)}, not {action!r}"
        )


def remote_program(counter: KernelArrayMap, action: RemoteAction, ifindex: int = 0) -> bytes:
    """A cpumap entry's second stage: count the frame in ``counter[0]`` (a per-CPU u64 array:
    this CPU's slot), then drop it, pass it to the netstack, or ``bpf_redirect`` it out of
    ``ifindex``."""
    if action not in REMOTE_ACTIONS:
        raise ValueError(
            f"remote action must be one of {', '.join(REMOTE_ACTIONS)}, not {action!r}"
        )
    asm = Asm()
    asm.st_imm(BPF_W, R10, -4, 0).ld_map_fd(R1, counter.fd)
    asm.mov_reg(R2, R10).alu_imm(BPF_ADD, R2, -4).call(HELPER_MAP_LOOKUP_ELEM)
    asm.jmp_imm(BPF_JEQ, R0, 0, to="act")
    asm.ldx(BPF_DW, R1, R0, 0).alu_imm(BPF_ADD, R1, 1).stx(BPF_DW, R0, R1, 0)
    asm.label("act")
    if action == "redirect":
        return asm.mov_imm(R1, ifindex).mov_imm(R2, 0).call(HELPER_REDIRECT).exit().assemble()
    return asm.mov_imm(R0, XDP_DROP if action == "drop" else XDP_PASS).exit().assemble()


class KernelSteering(Closing):
    """A steering mode on ``interface``'s XDP hook, redirecting into a kernel cpumap.

    ``spec``: the mode and CPU list (:meth:`SteeringSpec.of`; every CPU must be possible
    here, as ``xdp-bench`` checks).  ``qsize``: each entry's ring.  ``remote_action``: what
    each entry's second stage does with a frame -- ``"drop"``, ``"pass"`` (an SKB to the
    netstack), ``"redirect"`` (out of ``redirect_to``, an interface name or index).
    ``mode``: native (the driver) or SKB (generic) XDP.  ``fail_action``: the verdict when
    the chosen entry is gone (``bpf_redirect_map``'s flags).  ``tracepoints``: also count
    the ``xdp_cpumap_enqueue``/``xdp_cpumap_kthread`` tracepoints of this cpumap per CPU, as
    xdp-bench does, from before the attach (:attr:`tracepoints`, a
    :class:`~cpumap.kernel.tracepoint_counts.CpumapTracepointCounts`; None where the host
    refuses, with the reason in :attr:`tracepoints_refused`).

    Refusals: a CPU that is not possible, or a bad ``qsize``, as ``ValueError`` (before any
    map exists); what the kernel refuses at attach as :class:`XdpError` naming the fix.
    """

    def __init__(
        self,
        interface: str | int,
        spec: SteeringSpec,
        *,
        qsize: int = DEFAULT_QSIZE,
        remote_action: RemoteAction = "drop",
        redirect_to: str | int | None = None,
        mode: XdpMode = XdpMode.NATIVE,
        fail_action: int = XDP_ABORTED,
        tracepoints: bool = False,
    ) -> None:
        possible = possible_cpus()
        bad = sorted(set(spec.cpus) - possible)
        if bad:
            raise ValueError(
                f"CPU {format_cpu_list(bad)} is not possible here: choose CPUs among "
                f"{format_cpu_list(possible)}"
            )
        if not 1 <= qsize <= 16384:
            raise ValueError(f"qsize must be in 1..16384 frames, got {qsize}")
        ifindex = self._redirect_ifindex(remote_action, redirect_to)
        self.spec: Final = spec
        self.remote_action: Final = remote_action
        self._stack = contextlib.ExitStack()
        self.tracepoints: CpumapTracepointCounts | None = None
        self.tracepoints_refused: str | None = "not asked for"
        try:
            self._build(spec, qsize, remote_action, ifindex, fail_action)
            if tracepoints:
                self._count_tracepoints()
            self.link: XdpLink = self._stack.enter_context(attach(interface, self.program, mode))
        except BaseException:
            self._stack.close()
            raise

    @staticmethod
    def _redirect_ifindex(action: RemoteAction, redirect_to: str | int | None) -> int:
        _check_action(action)
        if (action == "redirect") != (redirect_to is not None):
            raise ValueError("redirect_to names the device of remote action 'redirect', only")
        return 0 if redirect_to is None else link_state(redirect_to).ifindex

    def _build(
        self, spec: SteeringSpec, qsize: int, action: RemoteAction, ifindex: int, fail: int
    ) -> None:
        """The maps and programs, each released by the stack in reverse order."""
        enter = self._stack.enter_context
        max_entries = max(possible_cpus()) + 1
        self.cpumap: KernelCpuMap = enter(KernelCpuMap(max_entries, name="steer_cpumap"))
        self.counters: SteeringCounters = enter(SteeringCounters(max_entries))
        self._delivered = enter(KernelArrayMap(1, percpu=True, name="steer_remote"))
        remote = enter(
            load_xdp(remote_program(self._delivered, action, ifindex), cpumap_stage=True)
        )
        for cpu in sorted(set(spec.cpus)):
            self.cpumap.update(cpu, qsize, prog_fd=remote.fd)
        self.program: KernelProgram = enter(
            load_steering(spec, self.cpumap, self.counters, fail_action=fail)
        )

    def _count_tracepoints(self) -> None:
        """The cpumap tracepoints counted from before the attach, so that no frame is
        flushed uncounted; where the host refuses, None and the reason."""
        try:
            self.tracepoints = self._stack.enter_context(
                CpumapTracepointCounts(self.cpumap.map_id, self.cpumap.max_entries)
            )
            self.tracepoints_refused = None
        except OSError as e:
            self.tracepoints_refused = f"the kernel refused a program on them: {e.strerror or e}"

    def close(self) -> None:
        """Detach the program, then release the programs and maps.  Idempotent."""
        self._stack.close()

    def counts(self) -> SteeringCounts:
        """What the steering program decided, summed over the RX CPUs."""
        return self.counters.read()

    def rx_cpus(self) -> dict[int, int]:
        """Frames the steering program ran on, by RX CPU (zeros left out)."""
        total: dict[int, int] = {}
        for slot in range(self.counters.position):
            for cpu, n in self.counters.per_cpu(slot).items():
                total[cpu] = total.get(cpu, 0) + n
        return {cpu: n for cpu, n in total.items() if n}

    def delivered(self) -> dict[int, int]:
        """Frames each entry's kthread ran its second stage on, by CPU (zeros left out)."""
        return {cpu: n for cpu, n in percpu_values(self._delivered, 0).items() if n}

    def __repr__(self) -> str:
        state = "closed" if self.link.closed else f"on {self.link.ifname}"
        return f"<KernelSteering {self.spec.mode!r} cpus={list(self.spec.cpus)} {state}>"
