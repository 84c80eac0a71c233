"""``cpumap run --iface IF --kernel``: the kernel's own cpumap on an interface, run like a
normal run -- attached, watched, ended well however the run ends.

What runs is ``xdp-bench redirect-cpu`` from our parts (:class:`~cpumap.kernel.redirect_cpu.
KernelSteering`): the ``-p`` mode compiled to eBPF on the interface's XDP hook (``-m``
native or skb), a real ``BPF_MAP_TYPE_CPUMAP`` with an entry of ``-q`` frames on each
``-c`` CPU whose second stage counts and does ``--remote-action``, and the two cpumap
tracepoints counted per CPU in the kernel (:mod:`cpumap.kernel.tracepoint_counts`; "n/a"
where the host refuses).  No frame comes to user space: this process only reads counters,
every ``--interval`` for the live view or a JSON line, and once at the end for the summary
(``kernel_view.py`` renders them).

Ending, and why nothing is left attached
----------------------------------------
A run ends at ``--duration``, SIGINT or SIGTERM (the signal only sets the event this loop
waits on: :class:`~cpumap.cli.run.SignalStop`).  Then, in this order: the XDP link is
closed, so no new frame enters; the kthreads are given up to :data:`SETTLE_S` to empty their
rings (until, per CPU, delivered + enqueue drops == redirected); the counters are read for
the summary; the cpumap, the programs and the tracepoint programs are released.  Every one
of these kernel objects is held by a file descriptor of this process and nothing is pinned,
so a crash, a second signal (``KeyboardInterrupt`` unwinds the same ``with`` blocks) or a
SIGKILL (the kernel closes the fds of a dead process) detaches everything too: ``ip link``
shows no ``xdp`` after any of them.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

from rich.console import Console

from ..capture import Stop
from ..kernel.redirect_cpu import KernelSteering
from ..kernel.xdp import XdpError, XdpMode
from .config import KernelConfig, RunConfig, ViewConfig
from .errors import ExitStatus, UsageError
from .kernel_view import (
    KernelReport,
    KernelSample,
    kernel_interval_record,
    render_kernel_live,
    render_kernel_summary,
)
from .report import SIGNAL_STATUS
from .run import SignalStop, View, emit_json

SETTLE_S = 2.0  # seconds the kthreads get to empty their rings after the detach
TICK_S = 0.25  # the longest this loop waits before looking at the clock again


def run_kernel(config: RunConfig, console: Console) -> int:
    """Run ``config`` (a ``--kernel`` run) to its end and show it; the exit status."""
    with SignalStop(Stop()) as signals:
        report = run_steering(config, console, signals)
        show_kernel(report, config.view, console)
    return int(report.exit_status)


def run_steering(config: RunConfig, console: Console, signals: SignalStop) -> KernelReport:
    """Attach, watch until the end, detach, settle, read: the run's report."""
    kernel = _kernel(config)
    with attach_steering(config) as steering:
        if config.view.mode != "json":
            console.print(banner(config), highlight=False)
        t0 = time.monotonic()
        watch = Watch(steering, config.cpus, t0)
        extended = config.view.extended
        with View(
            config.view,
            console,
            watch.sample,
            lambda prev, cur: kernel_interval_record(prev, cur, config.cpus),
            lambda rec: render_kernel_live(rec, extended=extended, title="cpumap --kernel"),
            last=t0,  # the first record after an interval: kernel counts need two reads
        ) as view:
            deadline = t0 + config.duration if config.duration else None
            wait_for_end(signals.stop, view, deadline)
        elapsed = time.monotonic() - t0
        steering.link.close()  # first: no frame enters while the books settle
        settled = settle(watch)
        final = watch.sample(t0 + elapsed)
        refused = steering.tracepoints_refused
    report = KernelReport(
        source=f"interface {config.source.iface} (kernel cpumap, {kernel.xdp_mode} XDP)",
        program=config.program.name,
        remote_action=kernel.remote_action,
        redirect_device=kernel.redirect_device,
        xdp_mode=kernel.xdp_mode,
        cpus=config.cpus,
        qsize=config.qsize,
        final=final,
        settled=settled,
        tracepoints_note=refused,
        stopped_by=None,
        exit_status=ExitStatus.OK,
    )
    return ended(report, signals.signum)


def _kernel(config: RunConfig) -> KernelConfig:
    assert config.kernel is not None  # Invariant: run() dispatches only --kernel runs here
    return config.kernel


def ended(report: KernelReport, signum: int | None) -> KernelReport:
    """The report with how the run ended: a signal, books that do not balance, or clean."""
    if signum is not None:
        status = SIGNAL_STATUS[signal.Signals(signum)]
        name: str | None = signal.Signals(signum).name
    else:
        status = ExitStatus.OK if report.accounted else ExitStatus.LOST
        name = None
    return dataclasses.replace(report, stopped_by=name, exit_status=status)


def attach_steering(config: RunConfig) -> KernelSteering:
    """The steering program on ``--iface``, its cpumap and tracepoint counters; what the
    kernel or the host refuses is a usage error naming what to change."""
    kernel, iface = _kernel(config), config.source.iface
    assert iface is not None  # Invariant: args.py refuses --kernel without --iface
    if os.geteuid() != 0:
        raise UsageError(f"--iface {iface} --kernel: XDP and the kernel's cpumap need root")
    try:
        return KernelSteering(
            iface,
            kernel.spec,
            qsize=config.qsize,
            remote_action=kernel.remote_action,  # type: ignore[arg-type]
            redirect_to=kernel.redirect_device,
            mode=XdpMode(kernel.xdp_mode),
            tracepoints=True,
        )
    except XdpError as e:
        hint = "; see `ip link`" if "no interface" in (e.strerror or "") else ""
        raise UsageError(f"--iface {iface} --kernel: {e.strerror}{hint}") from None
    except ValueError as e:  # a CPU that is not possible, a qsize
        raise UsageError(f"--kernel: {e}") from None


def banner(config: RunConfig) -> str:
    kernel = _kernel(config)
    to = f" out of {kernel.redirect_device}" if kernel.redirect_device else ""
    return (
        f"cpumap: interface {config.source.iface} -> the kernel's cpumap on CPUs "
        f"{','.join(map(str, config.cpus))} ({kernel.xdp_mode} XDP, qsize {config.qsize}), "
        f"program {config.program.name}, remote action {kernel.remote_action}{to}"
    )


class Watch:
    """Reads the kernel's counters of one run into :class:`KernelSample` values."""

    def __init__(self, steering: KernelSteering, cpus: tuple[int, ...], t0: float) -> None:
        self.steering = steering
        self.cpus = cpus
        self.t0 = t0

    def sample(self, now: float) -> KernelSample:
        s = self.steering
        counts = s.counts()
        return KernelSample(
            elapsed=now - self.t0,
            rx_cpus=s.rx_cpus(),
            redirected=counts.redirected,
            verdicts=counts.verdicts,
            delivered=s.delivered(),
            tracepoints=s.tracepoints.read(self.cpus) if s.tracepoints is not None else None,
        )

    def in_flight(self) -> int | None:
        """Frames redirected that have not reached their CPU nor been dropped at its ring
        (None where the drops are not known)."""
        s = self.steering
        if s.tracepoints is None:
            return None
        tp = s.tracepoints.read(self.cpus)
        delivered = s.delivered()
        redirected = s.counts().redirected
        return sum(
            redirected.get(c, 0) - delivered.get(c, 0) - tp[c].enqueue_drops for c in self.cpus
        )


def settle(watch: Watch, timeout: float = SETTLE_S) -> bool:
    """Wait, after the detach, until the kthreads have emptied their rings (or, without the
    tracepoints, until what they delivered stops changing); False at the deadline."""
    deadline = time.monotonic() + timeout
    last, still = None, 0
    while time.monotonic() < deadline:
        left = watch.in_flight()
        if left == 0:
            return True
        if left is None:  # no drop counts: settled when three reads 10 ms apart agree
            now = watch.steering.delivered()
            still = still + 1 if now == last else 0
            last = now
            if still >= 3:
                return True
        time.sleep(0.01)  # the kthreads run on their own: a poll, bounded by the deadline
    return False


def wait_for_end(stop: Stop, view: View[KernelSample], deadline: float | None) -> None:
    """Until ``stop`` (a signal) or ``deadline``, showing the view every interval."""
    while not stop.is_set():
        now = time.monotonic()
        view.tick(now)
        if deadline is not None and now >= deadline:
            return
        stop.wait(TICK_S if deadline is None else min(TICK_S, max(deadline - now, 0.0)))


def show_kernel(report: KernelReport, view: ViewConfig, console: Console) -> None:
    """The summary (text, or one JSON object) and the exit status line."""
    if view.mode == "json":
        emit_json(report.as_json())
    else:
        for part in render_kernel_summary(report):
            console.print(part, highlight=False)
    status = report.exit_status
    if status and view.mode != "json":
        console.print(f"exit status {int(status)}: {status.name.lower().replace('_', ' ')}")
    sys.stdout.flush()
