"""The Linux kernel's own cpumap, driven from Python: our reference implementation.

Rule: the project models the kernel's ``BPF_MAP_TYPE_CPUMAP`` in user space; this package
is the real thing, reached through ``bpf(2)`` (root, or CAP_BPF + CAP_NET_ADMIN), so that
tests and benchmarks can hold ours against it.  It imports nothing from the engine: only
the shared leaves (``cpumap.abi``, ``cpumap.cpus``, ``cpumap.errors``).

Theory of operation
-------------------
Modules, their public names re-exported here:

* :mod:`cpumap.kernel.bpf`, the syscall layer: ``union bpf_attr`` members as ctypes
  structs, one ``bpf(2)`` call per operation, the kernel's errno raised unchanged as
  ``OSError``.  :class:`KernelCpuMap` is a real cpumap (create / update / delete /
  lookup / get_next_key / iteration / ``map_id``); :class:`KernelProgram` a loaded BPF
  program and its ``BPF_PROG_TEST_RUN``.  Every fd is owned by one object and closed by
  ``close()``, the context manager, or a finalizer.

* :mod:`cpumap.kernel.asm`: a tiny eBPF assembler and the XDP programs we need (redirect
  to a cpumap entry: fixed, round-robin, by a frame byte; a second stage that returns one
  verdict); :mod:`cpumap.kernel.frames`: frames the netstack accepts, and a socket to
  deliver them to.
* :mod:`cpumap.kernel.steering`: our eight steering modes (``cpumap.programs.steering``) as
  eBPF programs of the assembler, redirecting into a kernel cpumap with the Python form's
  decisions (:class:`SteeringSpec`, :func:`load_steering`), every frame counted per CPU in
  :class:`SteeringCounters`.  :mod:`cpumap.kernel.redirect_cpu`: :class:`KernelSteering`,
  ``xdp-bench redirect-cpu`` from these parts -- a mode attached to an interface, a cpumap
  over a CPU list whose entries' second stage drops, passes or redirects, per-CPU counts.
* :mod:`cpumap.kernel.tracefs`: the ``xdp:xdp_cpumap_enqueue`` /
  ``xdp:xdp_cpumap_kthread`` tracepoints read from a tracefs instance of our own.
  :mod:`cpumap.kernel.tracepoint_counts`: the same two summed per CPU in the kernel by
  raw-tracepoint programs (as xdp-bench reads them; ``KernelSteering(tracepoints=True)``).
* :mod:`cpumap.kernel.runner`: :class:`KernelCpumapRun` puts these together as a reusable
  measurement: live-frames test runs pinned to an RX CPU so that frames really cross to the
  entry's kthread.
* :mod:`cpumap.kernel.xdp`: XDP on an interface -- :func:`attach` (a ``BPF_LINK_CREATE``
  link, netlink ``IFLA_XDP`` as the fallback) returning an :class:`XdpLink` that detaches
  on close and when the process dies, native or generic (:class:`XdpMode`); the
  :class:`XskMap` and its redirect program for AF_XDP; refusals as :class:`XdpError`
  naming what to change.  :mod:`cpumap.kernel.netlink` writes the few rtnetlink and
  generic-netlink messages it needs by hand.
* :mod:`cpumap.kernel.trafficgen`: :class:`TrafficGen`, frames out of an interface (on a
  veth: into its peer) at millions a second by live test runs of an XDP_TX program, as
  ``xdp-trafficgen`` sends them (``cpumap gen`` on the command line); it checks for a
  peer that would drop every frame unseen.

Usage::

    from cpumap.kernel import KernelCpuMap, KernelCpumapRun

    with KernelCpuMap(4) as m:
        m.update(1, 192)          # entry for CPU 1: a 192-frame ring and a kthread
        m.lookup(1)               # 192
        m.update(1, 0, flags=1)   # OSError(EEXIST): the cpumap refuses BPF_NOEXIST

    with KernelCpumapRun(192, cpu=1, frames=100_000, second_stage="drop") as run:
        print(run.run().frames_per_s)

    with entered(peer_ns), pass_program() as prog:      # cpumap.live.netns.entered
        link = attach("veth1", prog, XdpMode.NATIVE)    # the peer now has NAPI
    with entered(local_ns):
        gen = TrafficGen("veth0", [frame])              # resolved in veth0's namespace
    with gen, link:
        print(gen.napi_problem())                       # None: every frame can arrive
        print(gen.run(GenOptions(count=10_000_000)).frames_per_s)

    spec = SteeringSpec.of("l4-hash", [0, 1])           # as make_program("l4-hash", ...)
    with entered(peer_ns):                              # xdp-bench redirect-cpu, ours
        steering = KernelSteering("veth1", spec, qsize=2048, remote_action="drop")
    with steering:
        ...                                             # traffic
        print(steering.counts().redirected, steering.delivered())

Where this kernel's behaviour differs from the 2019 ``cpumap.c`` our engine follows, and
where our engine must differ from the kernel, is written down in
``docs/kernel-differences.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the same names as the table below (tests/test_imports.py)
    from ..abi import (
        BPF_ANY,
        BPF_EXIST,
        BPF_NOEXIST,
        CPUMAP_QSIZE_MAX,
        XDP_ABORTED,
        XDP_DROP,
        XDP_PASS,
        XDP_REDIRECT,
        XDP_TX,
    )
    from ..cpus import nr_cpus, possible_cpus
    from .asm import (
        Asm,
        load_xdp,
        redirect_by_byte_program,
        redirect_program,
        redirect_round_robin_program,
        verdict_program,
    )
    from .bpf import (
        BPF_F_NUMA_NODE,
        BPF_F_TEST_XDP_LIVE_FRAMES,
        AttachType,
        CpuMapValue,
        KernelArrayMap,
        KernelCpuMap,
        KernelProgram,
        TestRunResult,
        bpf_unavailable_reason,
    )
    from .frames import UdpSink, local_ipv4, udp_frame
    from .redirect_cpu import REMOTE_ACTIONS, KernelSteering, RemoteAction, remote_program
    from .runner import (
        CpumapRunResult,
        CpumapRunSample,
        KernelCpumapRun,
        live_frames_unavailable_reason,
        run_kernel_cpumap,
        run_pinned,
        rx_drop_ceiling,
    )
    from .steering import (
        STEERING_MODES,
        SteeringCounters,
        SteeringCounts,
        SteeringSpec,
        load_steering,
        percpu_values,
        steering_program,
    )
    from .tracefs import (
        EnqueueTotals,
        KthreadTotals,
        TraceEvent,
        TraceInstance,
        sum_enqueue,
        sum_kthread,
        tracefs_root,
        tracing_unavailable_reason,
    )
    from .trafficgen import GenOptions, GenOptionsError, GenResult, TrafficGen
    from .xdp import (
        XdpError,
        XdpLink,
        XdpMode,
        XskMap,
        attach,
        attach_netlink,
        counting_program,
        pass_program,
        xsk_redirect_program,
    )

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_NUMA_NODE",
    "BPF_F_TEST_XDP_LIVE_FRAMES",
    "BPF_NOEXIST",
    "CPUMAP_QSIZE_MAX",
    "REMOTE_ACTIONS",
    "STEERING_MODES",
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_PASS",
    "XDP_REDIRECT",
    "XDP_TX",
    "Asm",
    "AttachType",
    "CpuMapValue",
    "CpumapRunResult",
    "CpumapRunSample",
    "EnqueueTotals",
    "GenOptions",
    "GenOptionsError",
    "GenResult",
    "KernelArrayMap",
    "KernelCpuMap",
    "KernelCpumapRun",
    "KernelProgram",
    "KernelSteering",
    "KthreadTotals",
    "RemoteAction",
    "SteeringCounters",
    "SteeringCounts",
    "SteeringSpec",
    "TestRunResult",
    "TraceEvent",
    "TraceInstance",
    "TrafficGen",
    "UdpSink",
    "XdpError",
    "XdpLink",
    "XdpMode",
    "XskMap",
    "attach",
    "attach_netlink",
    "bpf_unavailable_reason",
    "counting_program",
    "live_frames_unavailable_reason",
    "load_steering",
    "load_xdp",
    "local_ipv4",
    "nr_cpus",
    "pass_program",
    "percpu_values",
    "possible_cpus",
    "redirect_by_byte_program",
    "redirect_program",
    "redirect_round_robin_program",
    "remote_program",
    "run_kernel_cpumap",
    "run_pinned",
    "rx_drop_ceiling",
    "steering_program",
    "sum_enqueue",
    "sum_kthread",
    "tracefs_root",
    "tracing_unavailable_reason",
    "udp_frame",
    "verdict_program",
    "xsk_redirect_program",
]

# Each name is imported from its module when first asked for (cpumap/lazy.py).
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "BPF_ANY": "..abi",
        "BPF_EXIST": "..abi",
        "BPF_NOEXIST": "..abi",
        "CPUMAP_QSIZE_MAX": "..abi",
        "XDP_ABORTED": "..abi",
        "XDP_DROP": "..abi",
        "XDP_PASS": "..abi",
        "XDP_REDIRECT": "..abi",
        "XDP_TX": "..abi",
        "nr_cpus": "..cpus",
        "possible_cpus": "..cpus",
        "Asm": ".asm",
        "load_xdp": ".asm",
        "redirect_by_byte_program": ".asm",
        "redirect_program": ".asm",
        "redirect_round_robin_program": ".asm",
        "verdict_program": ".asm",
        "BPF_F_NUMA_NODE": ".bpf",
        "BPF_F_TEST_XDP_LIVE_FRAMES": ".bpf",
        "AttachType": ".bpf",
        "CpuMapValue": ".bpf",
        "KernelArrayMap": ".bpf",
        "KernelCpuMap": ".bpf",
        "KernelProgram": ".bpf",
        "TestRunResult": ".bpf",
        "bpf_unavailable_reason": ".bpf",
        "UdpSink": ".frames",
        "local_ipv4": ".frames",
        "udp_frame": ".frames",
        "REMOTE_ACTIONS": ".redirect_cpu",
        "KernelSteering": ".redirect_cpu",
        "RemoteAction": ".redirect_cpu",
        "remote_program": ".redirect_cpu",
        "CpumapRunResult": ".runner",
        "CpumapRunSample": ".runner",
        "KernelCpumapRun": ".runner",
        "live_frames_unavailable_reason": ".runner",
        "run_kernel_cpumap": ".runner",
        "run_pinned": ".runner",
        "rx_drop_ceiling": ".runner",
        "STEERING_MODES": ".steering",
        "SteeringCounters": ".steering",
        "SteeringCounts": ".steering",
        "SteeringSpec": ".steering",
        "load_steering": ".steering",
        "percpu_values": ".steering",
        "steering_program": ".steering",
        "EnqueueTotals": ".tracefs",
        "KthreadTotals": ".tracefs",
        "TraceEvent": ".tracefs",
        "TraceInstance": ".tracefs",
        "sum_enqueue": ".tracefs",
        "sum_kthread": ".tracefs",
        "tracefs_root": ".tracefs",
        "tracing_unavailable_reason": ".tracefs",
        "GenOptions": ".trafficgen",
        "GenOptionsError": ".trafficgen",
        "GenResult": ".trafficgen",
        "TrafficGen": ".trafficgen",
        "XdpError": ".xdp",
        "XdpLink": ".xdp",
        "XdpMode": ".xdp",
        "XskMap": ".xdp",
        "attach": ".xdp",
        "attach_netlink": ".xdp",
        "counting_program": ".xdp",
        "pass_program": ".xdp",
        "xsk_redirect_program": ".xdp",
    },
)
