"""Frames through the kernel's own cpumap, measured: :class:`KernelCpumapRun`.

``BPF_PROG_TEST_RUN`` with ``BPF_F_TEST_XDP_LIVE_FRAMES`` turns one ``data_in`` frame into
``repeat`` real ``xdp_frame``s from a page pool, in batches of ``batch_size``, each batch
ending with ``xdp_do_flush()`` like a driver's NAPI poll.  A redirect to the cpumap
therefore goes through the real bulk queue, the real ``ptr_ring`` and the real kthread on
the entry's CPU.  We pin the calling thread to the RX CPU first: the bulk queue is per CPU,
and the kthread must be on another one.  The frames enter on the loopback device (no
``ingress_ifindex`` in the context), so an SKB built on the target CPU meets the real
netstack.  For that path the runner aims the frames at a UDP socket of its own
(``frames.UdpSink``), on this host's address (not 127.0.0.1: without the dst a loopback
transmit would have attached, ``ip_rcv`` drops 127/8 as ``IP_LOCALNET``), with the smallest
receive buffer: ``ip_rcv`` -> ``udp_rcv`` -> socket lookup -> queue full -> free, and no
ICMP port-unreachable leaves the host.

After the test run returns every frame has been enqueued; the tracepoints
(``tracefs.py``) are drained (non-blocking, ``poll`` with a deadline) until the kthread has
processed everything the enqueue side put in its ring.
:attr:`CpumapRunSample.lost_events` says if the totals are partial.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

from ..abi import XDP_DROP, XDP_PASS
from ..closing import Closing
from .asm import load_xdp, redirect_program, verdict_program
from .bpf import BPF_F_TEST_XDP_LIVE_FRAMES, KernelCpuMap, TestRunResult
from .frames import UdpSink, udp_frame
from .tracefs import (
    EnqueueTotals,
    KthreadTotals,
    TraceEvent,
    TraceInstance,
    sum_enqueue,
    sum_kthread,
)

SecondStage = Literal["drop", "pass"] | None
_SECOND_STAGE_VERDICT: Final[dict[str, int]] = {"drop": XDP_DROP, "pass": XDP_PASS}

# Bytes one event may take in the per-CPU ring buffer, generously (the kthread event is
# 44 bytes of payload plus a 4-byte header, rounded; page headers add a little).
_EVENT_BYTES: Final = 64
_BUFFER_KB_MAX: Final = 512 * 1024


@dataclass(frozen=True, slots=True)
class CpumapRunSample:
    """One live test run: what went in, what the tracepoints saw, how long it took."""

    frames: int
    """Frames the RX program ran on (the test run's repeat count)."""
    enqueue: EnqueueTotals
    kthread: KthreadTotals
    lost_events: int
    """Tracepoint events the buffer could not hold: if > 0 the totals are partial."""
    complete: bool
    """Whether the kthread had processed every frame that entered its ring by the deadline."""
    wall_s: float
    """Wall-clock seconds of the ``BPF_PROG_TEST_RUN`` call (the RX side)."""
    elapsed_s: float
    """Seconds from the first enqueue to the last kthread batch (trace clock)."""
    test_run: TestRunResult
    kthread_cpu_s: float | None = None
    """CPU time the entry's kthread used during the run (``/proc/<pid>/schedstat``), or
    None where it cannot be read.  Unlike :attr:`elapsed_s` it does not grow when other
    work shares the target CPU."""

    @property
    def frames_per_s(self) -> float:
        """Frames the target CPU processed per second of :attr:`elapsed_s`."""
        return self.kthread.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ns_per_frame(self) -> float | None:
        """Kthread CPU nanoseconds per frame processed: the cost of one frame on the target."""
        if self.kthread_cpu_s is None or not self.kthread.processed:
            return None
        return self.kthread_cpu_s * 1e9 / self.kthread.processed

    @property
    def rx_frames_per_s(self) -> float:
        """Frames the RX program ran on per second of :attr:`wall_s`."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class CpumapRunResult:
    """``repeat`` samples of one configuration, and their medians."""

    qsize: int
    cpu: int
    rx_cpu: int
    second_stage: SecondStage
    frame_len: int
    samples: tuple[CpumapRunSample, ...] = field(repr=False)

    @property
    def frames_per_s(self) -> float:
        """Median over samples of frames/s processed on the target CPU."""
        return statistics.median(s.frames_per_s for s in self.samples)

    @property
    def ns_per_frame(self) -> float | None:
        """Median over samples of kthread CPU ns per frame (None if not measured)."""
        vals = [v for s in self.samples if (v := s.ns_per_frame) is not None]
        return statistics.median(vals) if vals else None

    @property
    def drop_ratio(self) -> float:
        """Queue-full drops / frames enqueued, over all samples."""
        proc = sum(s.enqueue.processed for s in self.samples)
        return sum(s.enqueue.drops for s in self.samples) / proc if proc else 0.0

    @property
    def enqueue(self) -> EnqueueTotals:
        """The first sample's enqueue totals (the common case: repeat == 1)."""
        return self.samples[0].enqueue

    @property
    def kthread(self) -> KthreadTotals:
        """The first sample's kthread totals."""
        return self.samples[0].kthread


_T = TypeVar("_T")


def run_pinned(cpu: int, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a fresh thread pinned to ``cpu``; return its result or raise its error.

    A thread of its own so that the caller's affinity is never changed (Linux applies
    ``sched_setaffinity(0, ...)`` to the calling thread only).
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            os.sched_setaffinity(0, {cpu})
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, name=f"bpf-test-run-cpu{cpu}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class KernelCpumapRun(Closing):
    """Frames through the kernel's cpumap, from ``rx_cpu`` to the entry for ``cpu``.

    Sets up a cpumap (max_entries = ``cpu + 1``) whose entry ``cpu`` has a ring of
    ``qsize`` and, with ``second_stage``, an XDP program returning DROP or PASS (None:
    no program, every frame becomes an SKB for the netstack); an RX program redirecting
    every frame to that entry; for the SKB paths (``"pass"``, None) a :class:`UdpSink`
    the frames are addressed to.  :meth:`run` then does ``repeat`` live test runs of
    ``frames`` frames each, each observed through a tracefs instance of its own.  Use as
    a context manager (or call :meth:`close`): every kernel object is released, also on
    error::

        with KernelCpumapRun(192, 1, frames=100_000, second_stage="drop") as run:
            fps = run.run().frames_per_s
    """

    def __init__(
        self,
        qsize: int,
        cpu: int,
        *,
        frames: int = 100_000,
        repeat: int = 1,
        second_stage: SecondStage = "drop",
        rx_cpu: int = 0,
        batch_size: int = 64,
        frame: bytes | None = None,
        deadline_s: float = 10.0,
    ) -> None:
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        if second_stage is not None and second_stage not in _SECOND_STAGE_VERDICT:
            raise ValueError(f"second_stage must be 'drop', 'pass' or None, got {second_stage!r}")
        if cpu == rx_cpu:
            raise ValueError(f"cpu and rx_cpu must differ, both are {cpu}")
        self.qsize: Final = qsize
        self.cpu: Final = cpu
        self.rx_cpu: Final = rx_cpu
        self.frames: Final = frames
        self.repeat: Final = repeat
        self.second_stage: Final = second_stage
        self.batch_size: Final = batch_size
        self.deadline_s: Final = deadline_s
        self._kthread_pid: int | None = None
        self._stack = contextlib.ExitStack()
        try:
            if frame is None:
                # The netstack path needs a frame it delivers; the XDP-drop path does not
                # look at the bytes, and gets the same 64-byte UDP frame to a closed port.
                if second_stage == "drop":
                    frame = udp_frame(64)
                else:
                    frame = self._stack.enter_context(UdpSink(64)).frame
            self.frame: Final = frame
            self.cpumap = self._stack.enter_context(KernelCpuMap(cpu + 1, name="cpumap_run"))
            stage_fd = None
            if second_stage is not None:
                verdict = _SECOND_STAGE_VERDICT[second_stage]
                stage = load_xdp(verdict_program(verdict), cpumap_stage=True, name="cpumap_stage")
                self.stage = self._stack.enter_context(stage)
                stage_fd = self.stage.fd
            self.cpumap.update(cpu, qsize, prog_fd=stage_fd)
            rx = load_xdp(redirect_program(self.cpumap, cpu), name="cpumap_rx")
            self.rx = self._stack.enter_context(rx)
        except BaseException:
            self._stack.close()
            raise

    def _kthread_cpu_ns(self) -> int | None:
        """The entry kthread's total CPU time, or None if it cannot be found or read.

        The kthread is named ``cpumap/<cpu>/map:<id>``; this kernel shows kthread names in
        full in ``comm`` (older ones cut them at 15 characters: then we find none).
        """
        name = f"cpumap/{self.cpu}/map:{self.cpumap.map_id}"
        if self._kthread_pid is None:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        if f.read().strip() == name:
                            self._kthread_pid = int(pid)
                            break
                except OSError:
                    continue
            else:
                return None
        try:
            with open(f"/proc/{self._kthread_pid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _buffer_kb(self) -> int:
        # Worst case one kthread event per frame (a kthread that keeps up takes one frame
        # at a time); the buffer is per CPU.
        return min(_BUFFER_KB_MAX, 1024 + self.frames * _EVENT_BYTES // 1024)

    def run_once(self) -> CpumapRunSample:
        """One live test run of :attr:`frames` frames; waits for the kthread to finish."""
        events: list[TraceEvent] = []
        with TraceInstance(
            filter=f"map_id == {self.cpumap.map_id}", buffer_kb=self._buffer_kb()
        ) as tr:

            def go() -> tuple[TestRunResult, float]:
                t0 = time.perf_counter()
                res = self.rx.test_run(
                    self.frame,
                    repeat=self.frames,
                    flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                    batch_size=self.batch_size,
                )
                return res, time.perf_counter() - t0

            cpu0 = self._kthread_cpu_ns()
            res, wall = run_pinned(self.rx_cpu, go)
            # Every frame is enqueued once the call returns (each batch ends in a flush);
            # the kthread still has up to qsize frames to go.
            deadline = time.monotonic() + self.deadline_s
            complete = False
            while True:
                events += tr.drain()
                enq, kt = sum_enqueue(events), sum_kthread(events)
                if kt.processed >= enq.processed - enq.drops and enq.processed >= self.frames:
                    complete = True
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                tr.wait_readable(min(left, 0.05))
            cpu1 = self._kthread_cpu_ns()
            lost = tr.lost_events()
        cpu_s = (cpu1 - cpu0) / 1e9 if cpu0 is not None and cpu1 is not None else None
        enq_ts = [e.ts for e in events if e.name == "xdp_cpumap_enqueue"]
        kt_ts = [e.ts for e in events if e.name == "xdp_cpumap_kthread"]
        elapsed = max(kt_ts) - min(enq_ts) if enq_ts and kt_ts else 0.0
        return CpumapRunSample(
            frames=self.frames,
            enqueue=enq,
            kthread=kt,
            lost_events=lost,
            complete=complete,
            wall_s=wall,
            elapsed_s=elapsed,
            test_run=res,
            kthread_cpu_s=cpu_s,
        )

    def run(self) -> CpumapRunResult:
        """:attr:`repeat` samples of :meth:`run_once`."""
        samples = tuple(self.run_once() for _ in range(self.repeat))
        return CpumapRunResult(
            qsize=self.qsize,
            cpu=self.cpu,
            rx_cpu=self.rx_cpu,
            second_stage=self.second_stage,
            frame_len=len(self.frame),
            samples=samples,
        )

    def close(self) -> None:
        """Close the programs and the map (the kernel stops the entry's kthread).  Idempotent."""
        self._stack.close()


def run_kernel_cpumap(qsize: int, cpu: int, **kwargs: object) -> CpumapRunResult:
    """Set up, run and tear down a :class:`KernelCpumapRun` (``kwargs`` as its own)."""
    with KernelCpumapRun(qsize, cpu, **kwargs) as run:  # type: ignore[arg-type]
        return run.run()


def rx_drop_ceiling(
    frames: int = 1_000_000, *, rx_cpu: int = 0, batch_size: int = 64, frame: bytes | None = None
) -> float:
    """Frames/s of a live test run whose RX program just drops: what the sender can do."""
    with load_xdp(verdict_program(XDP_DROP), name="cpumap_rxdrop") as prog:
        data = frame if frame is not None else udp_frame(64)

        def go() -> float:
            t0 = time.perf_counter()
            prog.test_run(
                data, repeat=frames, flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=batch_size
            )
            return time.perf_counter() - t0

        return frames / run_pinned(rx_cpu, go)


def live_frames_unavailable_reason() -> str | None:
    """Why a live-frames test run cannot redirect here (None if it can)."""
    try:
        with load_xdp(verdict_program(XDP_DROP), name="cpumap_probe") as prog:
            prog.test_run(udp_frame(64), repeat=1, flags=BPF_F_TEST_XDP_LIVE_FRAMES)
    except OSError as e:
        return f"BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES fails here: {e}"
    return None
