"""The live path, end to end: frames offered on a veth at one rate, through each receive
path into a handler, with the CPU each part spent per frame.

The bench
---------
Each row gets a veth pair of its own, in two fresh network namespaces (``VethPair``): the
*wire* end A (``pair.peer``), out of which the kernel traffic generator sends
(:class:`cpumap.kernel.TrafficGen`: live test runs of an XDP_TX program, no Python send
loop), and the *receiving* end B (``pair.local``), where the row's receive path reads.
Every row is offered the same load: 64-byte UDP/IPv4 frames over :data:`FLOWS` flows,
addressed to another host's MAC (a tap's traffic: the stack drops them at ``ip_rcv``,
the cheapest case for a socket path), at :attr:`LiveOptions.rate` frames/s (on average:
the generator sends in bursts at its full speed, see there) for
:attr:`LiveOptions.window_s` seconds.

Rows:

* ``live.tpacket``: ``cpumap run --iface B`` (TPACKET_V3 ``LiveSource`` -> RX producer
  -> worker -> the ``count`` handler, which accepts every frame).  B carries an XDP_PASS
  program: a veth receives frames redirected into it only with NAPI, which XDP gives it
  (``docs/live.md``, the peer pitfall).
* ``live.af_xdp``: ``cpumap run --iface B --af-xdp -m native`` (the AF_XDP socket over the frame
  pool, the RX producer moving indices) -> worker -> ``count``.  Its own redirect
  program is B's XDP program.
* ``live.kernel``: ``cpumap run --iface B --kernel -p l4-hash -c WORKER --remote-action
  drop -m native``: our steering program (the engine rows' default, compiled to eBPF) on
  B's XDP hook redirects each frame into the kernel's own cpumap, one entry on the
  worker's CPU whose second stage counts it and drops it (``xdp-bench redirect-cpu -r
  drop``).  No frame comes to user space; the run reports the kernel's counters.

Where things run (2 CPUs), cpumap's own layout: CPU 1 receives -- B's NAPI, made a
kthread of its own (``/sys/class/net/B/threaded``) and pinned there, as a NIC queue's
interrupt CPU, and our RX producer (``--rx-cpu 1``); for ``--kernel``, our program in B's hook
enqueueing into the cpumap -- and hands the frames to CPU 0: our worker (``--cpus 0``),
or the kernel cpumap's entry kthread.  CPU 0 is also the wire: the generator's thread
(a worker's ~0.25 µs a frame leaves it room for the 3 M/s asked; where it falls short
the row says so).  Frames the receiving side cannot take are dropped where they meet a
full ring -- B's (A's ``tx_drops``), the source's, or our map's.
:attr:`LiveOptions.worker_cpu` = :data:`RX_CPU` puts all the receiving on CPU 1 instead.

What each row reports (``extra``):

* ``offered`` frames/s: frames the generator sent per second of its run; ``sent``;
  ``tx_drops``: frames A could not put into B's ring (B's NAPI fell behind);
  ``source_drops``: frames B's hook passed on that the source's ring had no room for
  (``tp_drops`` for TPACKET_V3; the XSK's ``rx_dropped`` + ``rx_ring_full`` for AF_XDP,
  as ``XskSource.drops`` counts them; none for ``--kernel``: the hook is its source);
  ``map_drops``: frames our RX producer found no room for in the map's ring
  (``queue_full``; ``--kernel``: the cpumap's enqueue drops, from its tracepoint);
  ``unaccounted``: ``sent - tx_drops - rx - source_drops``, 0 when the books balance
  (``--kernel``: ``rx`` is what the hook ran on); ``accounted``: the run's own identities
  (``rx == sum(outcomes)``; ``--kernel`` also, per CPU, delivered + enqueue drops ==
  redirected); ``hook`` (TPACKET_V3): the frames B's XDP program passed, counted by it.
* frames/s (the row's figure): frames delivered to the handler (``--kernel``: counted by
  the entry's second stage) per second of the generator's run.  ``cpu_fps``: 1 s over the CPU
  per frame below (RX kernel + RX user + worker), what one CPU would deliver doing
  nothing else -- less at the mercy of the scheduler and of the machine's other work.
  ``cpu_share``: the CPU-seconds the row's threads used per second of the window (with
  everything on one CPU: the share of it they had).
* CPU per frame, from each thread's scheduler clock (``/proc/.../schedstat``, ns) over
  the window, split into user and kernel by the ticks of ``/proc/.../stat``:
  ``rx_kernel_ns`` = B's NAPI thread (the driver, the XDP program, and the copy into the
  socket's ring, or the skb, the packet socket and the stack) per frame it handled
  (``rx + source_drops``: a frame the source had no room for cost it too, if less) + the
  kernel time of our RX thread (``poll``, wake-ups) per frame it read (``rx``);
  ``rx_user_ns`` = our RX thread's user time per frame it read (``--kernel``: none, the
  hook steers in NAPI).  ``worker_ns``: every process the run forked (the worker), per
  frame delivered; ``--kernel``: the cpumap kthread of the worker CPU's entry.
  ``other_ns``: the run's other threads (``--kernel``: all of them; they only read
  counters).  The generator's own CPU (the test
  runs, the transmit into B's ring) is the wire's and is not counted; NAPI being
  threaded, no receive work hides in the generator's softirq or in ksoftirqd.

Ratios are against ``live.tpacket`` measured in the same round (``cpumap bench`` runs the
rows in turn, each round).  Needs root, bpf(2) and live test runs (Linux >= 5.18); the
AF_XDP row needs ``cpumap run --af-xdp``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

from cpumap.closing import Closing
from cpumap.generator import Generator
from cpumap.kernel import (
    GenOptions,
    KernelArrayMap,
    TrafficGen,
    XdpMode,
    attach,
    bpf_unavailable_reason,
    counting_program,
    live_frames_unavailable_reason,
)
from cpumap.kernel.bpf import MapType
from cpumap.kernel.xdp import link_state
from cpumap.live.netns import VethPair, sweep_stale

WIRE_CPU: Final = 0  # the generator (the wire), and the worker or the kernel's entry
RX_CPU: Final = 1  # B's NAPI and our RX producer: the receiving CPU, as a NIC queue's
FLOWS: Final = 64  # distinct frames the generator sends in turn (each rewrite ~30 ns)
FRAME_SIZE: Final = 64
OTHER_HOST_MAC: Final = "02:00:00:00:00:02"  # frames for another host, as a tap sees them
QSIZE: Final = 2048  # the map's ring per CPU by default: xdp-bench's, and cpumap run's
# without --af-xdp.  Every row runs at the same one (LiveOptions.qsize), for a fair row.
READY_S: Final = 30.0  # for `cpumap run` to start (imports, workers) and say so
QUIET_S: Final = 0.6  # no new frame this long after the generator stopped: drained
DRAIN_S: Final = 10.0
# The run's --interval: how often it reports its counters (each report costs its RX thread
# a read of every counter: at 20 a second, py-spy saw 7 % of the RX process there).
TICK_S: Final = 0.25


@dataclass(frozen=True)
class LiveOptions:
    """The offered load, the same for every row."""

    rate: float | None = 3e6
    """Frames per second the generator offers on average (None: as fast as it goes).  It
    paces between calls, not within one: each call sends a tenth of a second's frames at
    the generator's full speed (~5 M/s here), then it waits for their due time.  So a
    rate well below its speed offers bursts at that speed with gaps, not a steady trickle;
    3 M/s keeps the gaps short while every row still gets the same load."""
    window_s: float = 3.0
    """Seconds it offers them for."""
    qsize: int = QSIZE
    """The map's ring per CPU, every row (``-q``).  An AF_XDP poll hands the map a burst
    of up to a poll's worth of frames at a time; at 2048 a burst that comes while the
    worker is busy overflows the ring (``queue_full``) with the worker's CPU half idle --
    ``cpumap run --af-xdp`` defaults to 8192 for that reason (docs/live.md)."""
    worker_cpu: int = WIRE_CPU
    """The worker's CPU (``--kernel``: the one CPU it steers to).  :data:`WIRE_CPU`, the default, is
    cpumap's layout -- the receiving CPU hands its frames to another -- with the wire on
    that other CPU.  :data:`RX_CPU` puts all the receiving on one CPU and leaves the wire
    alone on the other; our RX producer and worker then take turns on one CPU, and with
    AF_XDP some rounds fall into small batches (~150 frames) and a worker busy-polling
    between them at 3-4 µs a frame (measured: 2 rounds in 5)."""


# --- what can run here -----------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why the live rows cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, XDP, bpf(2))"
    if not {WIRE_CPU, RX_CPU} <= os.sched_getaffinity(0):
        return f"needs CPUs {WIRE_CPU} and {RX_CPU}"
    try:
        reason = bpf_unavailable_reason() or live_frames_unavailable_reason()
    except Exception as e:  # a probe that itself fails: say so, do not crash the bench
        return f"probing bpf(2) failed: {e!r}"
    if reason:
        return reason
    try:
        sweep_stale()
        with VethPair() as pair:
            threaded = _has_threaded_napi(pair)
    except OSError as e:
        return f"cannot make a veth pair in a network namespace: {e}"
    return None if threaded else "no threaded NAPI here (/sys/class/net/IF/threaded, Linux 5.12)"


def _has_threaded_napi(pair: VethPair) -> bool:
    path = f"/sys/class/net/{pair.local.ifname}/threaded"
    cmd = ["ip", "netns", "exec", str(pair.local.netns), "test", "-e", path]
    return subprocess.run(cmd, timeout=30, capture_output=True, check=False).returncode == 0


def af_xdp_unavailable_reason() -> str | None:
    """Why ``cpumap run --af-xdp`` cannot be measured (None: it can)."""
    out = subprocess.run(
        [sys.executable, "-m", "cpumap.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--af-xdp" not in out.stdout:
        return "this cpumap run has no --af-xdp (the AF_XDP source is not in this checkout)"
    return None


# --- CPU clocks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadTime:
    """One thread's CPU time so far: ``total_ns`` from the scheduler (exact), and the
    user/kernel split in ticks (sampled) to divide it by."""

    total_ns: int
    user_ticks: int
    sys_ticks: int


def thread_time(pid: int, tid: int | None = None) -> ThreadTime | None:
    """``pid``'s thread ``tid`` (default: its main thread); None once it is gone."""
    base = f"/proc/{pid}/task/{tid or pid}"
    try:
        with open(f"{base}/schedstat") as f:
            total = int(f.read().split()[0])
        with open(f"{base}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except (OSError, ValueError, IndexError):
        return None
    return ThreadTime(total, int(fields[11]), int(fields[12]))  # utime, stime: fields 14, 15


@dataclass
class CpuSpent:
    """CPU nanoseconds spent between two readings, in user and in kernel mode."""

    user_ns: float = 0.0
    kernel_ns: float = 0.0

    @property
    def total_ns(self) -> float:
        return self.user_ns + self.kernel_ns

    def add(self, before: ThreadTime | None, after: ThreadTime | None) -> None:
        if after is None:
            return
        total = after.total_ns - (before.total_ns if before else 0)
        user = after.user_ticks - (before.user_ticks if before else 0)
        sys_ = after.sys_ticks - (before.sys_ticks if before else 0)
        # No tick fell in the window (a thread that barely ran): call it kernel time.
        share = user / (user + sys_) if user + sys_ > 0 else 0.0
        self.user_ns += total * share
        self.kernel_ns += total * (1 - share)


Watched = dict[str, list[tuple[int, int]]]  # part -> its (pid, tid)s
Reading = dict[tuple[int, int], ThreadTime | None]


def read_clocks(watched: Watched) -> Reading:
    return {pt: thread_time(*pt) for pts in watched.values() for pt in pts}


def spent(watched: Watched, before: Reading, after: Reading) -> dict[str, CpuSpent]:
    out: dict[str, CpuSpent] = {}
    for part, pts in watched.items():
        s = out[part] = CpuSpent()
        for pt in pts:
            s.add(before.get(pt), after.get(pt))
    return out


class CpuWindow:
    """The CPU each part of ``watched`` spends from now until :meth:`end`, and the wall
    time between: how much of the receiving CPU the row had."""

    def __init__(self, watched: Watched) -> None:
        self.watched = watched
        self.before = read_clocks(watched)
        self.t0 = time.monotonic()

    def end(self) -> tuple[dict[str, CpuSpent], float]:
        after = read_clocks(self.watched)
        return spent(self.watched, self.before, after), time.monotonic() - self.t0


def process_tree(pid: int) -> list[int]:
    """``pid``'s descendants (the processes it forked, and theirs)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def threads_of(pid: int) -> list[tuple[int, int]]:
    try:
        return [(pid, int(t)) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


# --- the veth's receive side -----------------------------------------------------------------


def napi_thread(pair: VethPair, cpu: int) -> int:
    """Give B's NAPI a kthread of its own, pinned to ``cpu``; its pid.

    B must have NAPI already (an XDP program).  ``ip netns exec`` mounts the namespace's
    own /sys, where B's ``threaded`` switch is."""
    ifname = pair.local.ifname
    path = f"/sys/class/net/{ifname}/threaded"
    cmd = ["ip", "netns", "exec", str(pair.local.netns), "sh", "-c", f"echo 1 > {path}"]
    subprocess.run(cmd, check=True, timeout=30, capture_output=True)
    prefix = f"napi/{ifname}-"[:15]  # older kernels cut a kthread's comm at 15 characters
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().startswith(prefix):
                    pids.append(int(pid))
        except OSError:
            continue
    if len(pids) != 1:
        raise RuntimeError(f"expected one NAPI thread named {prefix}*, found {pids}")
    os.sched_setaffinity(pids[0], {cpu})
    return pids[0]


def wire_generator(pair: VethPair) -> TrafficGen:
    """The traffic generator on A: :data:`FLOWS` 64-byte UDP frames for another host."""
    with pair.in_peer():
        gen = Generator(
            flows=FLOWS,
            sizes=FRAME_SIZE,
            protocols=("udp",),
            ip_versions=(4,),
            seed=1,
            src_mac=pair.peer.mac,
            dst_mac=OTHER_HOST_MAC,
        )
        return TrafficGen(pair.peer.ifname, [bytes(r) for r in gen.frames(FLOWS)])


def offer(pair: VethPair, opts: LiveOptions) -> dict[str, Any]:
    """Offer the load out of A (the generator pinned to :data:`WIRE_CPU`)."""
    with wire_generator(pair) as gen:
        problem = gen.napi_problem()
        if problem is not None:
            raise RuntimeError(f"B cannot receive: {problem}")
        res = gen.run(GenOptions(duration_s=opts.window_s, rate=opts.rate, cpu=WIRE_CPU))
    return {"sent": res.sent, "seconds": res.seconds, "tx_drops": res.drops, "rate": opts.rate}


# --- `cpumap run --iface B` ------------------------------------------------------------------


class CpumapRun(Closing):
    """``cpumap run --iface B --json`` in B's namespace, its JSON lines read by a thread.

    Stopped by SIGINT (its own clean ending: drain, summary), killed if it will not end;
    :meth:`close` always leaves no process behind.  Its stderr goes to a file, which no
    amount of it can fill (a pipe nobody reads would stop the run)."""

    def __init__(self, pair: VethPair, argv: list[str], qsize: int = QSIZE) -> None:
        self.kernel = "--kernel" in argv
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        cmd = ["ip", "netns", "exec", str(pair.local.netns)]  # exec: the same pid
        cmd += [sys.executable, "-m", "cpumap.cli", "run", "--iface", pair.local.ifname]
        cmd += ["-q", str(qsize), "--json", "--interval", str(TICK_S), *argv]
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 -- closed by close()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        assert self.proc.stdout is not None  # Invariant: stdout=PIPE
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, out: IO[str]) -> None:
        for line in out:
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def next_record(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON object (None: the run ended)."""
        return self.lines.get(timeout=timeout)

    def wait_ready(self) -> dict[str, Any]:
        """Until its feed loop runs; its first interval record."""
        rec = self.next_record(READY_S)
        if rec is None or rec.get("type") != "interval":
            raise RuntimeError(f"cpumap run did not start: {self.stderr_tail()}")
        return rec

    def wait_drained(self) -> None:
        """Until it has read nothing new for :data:`QUIET_S` and has nothing in flight."""
        deadline = time.monotonic() + DRAIN_S
        rx, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            rec = self.next_record(DRAIN_S)
            if rec is None:
                raise RuntimeError(f"cpumap run ended early: {self.stderr_tail()}")
            now = time.monotonic()
            # --kernel records have no in_flight: its ring drains in microseconds once the
            # hook sees no new frame, and stop() settles the books before the summary.
            if rec["rx"] != rx or rec.get("in_flight"):
                rx, since = rec["rx"], now
            elif now - since >= QUIET_S:
                return
        raise TimeoutError("cpumap run did not drain")

    def watched(self, worker_cpu: int) -> Watched:
        """Its threads by part: the main thread reads and steers (the RX side, pinned by
        ``--rx-cpu``), every process it forked is a worker, its other threads the rest.
        With ``--kernel`` the hook steers (in B's NAPI thread) and the worker is the
        kernel's cpumap kthread on ``worker_cpu``; the run's own threads only read
        counters (``other``)."""
        pid = self.proc.pid
        if self.kernel:
            kthread = _cpumap_kthread(pid, worker_cpu)
            return {"worker": [(kthread, kthread)], "other": threads_of(pid)}
        workers = [pt for child in process_tree(pid) for pt in threads_of(child)]
        others = [pt for pt in threads_of(pid) if pt[1] != pid]
        return {"rx": [(pid, pid)], "worker": workers, "other": others}

    def stop(self) -> dict[str, Any]:
        """SIGINT; its summary."""
        self.proc.send_signal(signal.SIGINT)
        while (rec := self.next_record(DRAIN_S)) is not None:
            if rec.get("type") == "summary":
                return rec
        raise RuntimeError(f"cpumap run ended without a summary: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        self._stderr.seek(0)
        return self._stderr.read().strip()[-500:] or f"exit status {self.proc.returncode}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(DRAIN_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def engine_argv(worker_cpu: int, extra: list[str]) -> list[str]:
    """``cpumap run``'s arguments for our engine: the worker on ``worker_cpu``, the RX
    producer on :data:`RX_CPU`, the ``count`` handler."""
    return ["--cpus", str(worker_cpu), "--rx-cpu", str(RX_CPU), "--handler", "count", *extra]


def kernel_argv(worker_cpu: int) -> list[str]:
    """``cpumap run --kernel``'s: the same CPU to steer to, the kernel's remote drop."""
    return ["--kernel", "-p", "l4-hash", "-c", str(worker_cpu), "--remote-action", "drop",
            "-m", "native"]  # fmt: skip


def _engine_row(pair: VethPair, opts: LiveOptions, argv: list[str]) -> dict[str, Any]:
    """Offer the load to a running ``cpumap run``; its figures.  B's NAPI thread is made
    once the run is ready: with ``--af-xdp`` or ``--kernel`` it is the run's program that
    gives B NAPI."""
    with CpumapRun(pair, argv, opts.qsize) as run:
        run.wait_ready()
        napi = napi_thread(pair, RX_CPU)
        watched = run.watched(opts.worker_cpu) | {"napi": [(napi, napi)]}
        window = CpuWindow(watched)
        offered = offer(pair, opts)
        run.wait_drained()
        cpu, wall_s = window.end()
        summary = run.stop()
    if summary.get("kernel"):
        return _kernel_figures(summary, offered, cpu, wall_s)
    out = summary["outcomes"]
    figures = _figures(
        offered,
        rx=summary["rx"],
        delivered=out["delivered"],
        source_drops=summary.get("source_drops") or 0,
        map_drops=out["queue_full"],
        cpu=cpu,
        wall_s=wall_s,
    )
    counters = summary["counters"]
    return figures | {
        "accounted": int(summary["accounted"]),
        # Frames per RX poll and per worker batch: each costs a fixed part (numpy calls,
        # a flush, a wake-up), so smaller ones cost more a frame.
        "per_poll": summary["rx"] / max(counters["polls"], 1),
        "per_batch": counters["kthread_processed"] / max(counters["kthread_batches"], 1),
    }


def _kernel_figures(
    summary: dict[str, Any], offered: dict[str, Any], cpu: dict[str, CpuSpent], wall_s: float
) -> dict[str, Any]:
    """A ``--kernel`` run's figures.  ``rx``: the frames the hook ran on (it sees every
    frame B received: no source ring between); ``map_drops``: the cpumap's enqueue drops
    at a full ring; ``delivered``: the frames the entries' second stage counted."""
    entries = summary["entries"]
    redirected = sum(e["redirected"] for e in entries)
    enqueue_drops = sum(e["enqueue_drops"] or 0 for e in entries)
    figures = _figures(
        offered,
        rx=summary["rx"],
        delivered=sum(e["delivered"] for e in entries),
        source_drops=0,
        map_drops=enqueue_drops,
        cpu=cpu,
        wall_s=wall_s,
    )
    batches = sum(e["kthread_batches"] or 0 for e in entries)
    return figures | {
        # cpumap run's identities: the hook's count == the sum of its outcomes, and per CPU
        # delivered + enqueue drops == redirected (tracepoints counted: we are root).
        "accounted": int(summary["accounted"] and summary["tracepoints"]),
        "redirected": redirected,
        "not_redirected": sum(summary["outcomes"].values()) - redirected,
        "per_batch": sum(e["kthread_processed"] or 0 for e in entries) / max(batches, 1),
    }


def _figures(
    offered: dict[str, Any],
    *,
    rx: int,
    delivered: int,
    source_drops: int,
    map_drops: int,
    cpu: dict[str, CpuSpent],
    wall_s: float,
) -> dict[str, Any]:
    secs = offered["seconds"]
    napi = cpu["napi"]
    rx_cpu = cpu.get("rx", CpuSpent())

    def per(ns: float, n: int) -> float | None:
        return ns / n if n else None

    fig = {
        "fps": delivered / secs,
        "offered": offered["sent"] / secs,
        "rate": offered["rate"] or 0,  # what was asked for (0: as fast as it goes)
        "sent": offered["sent"],
        "tx_drops": offered["tx_drops"],
        "rx": rx,
        "delivered": delivered,
        "source_drops": source_drops,
        "map_drops": map_drops,
        "unaccounted": offered["sent"] - offered["tx_drops"] - rx - source_drops,
        # NAPI works on every frame the hook saw, the dropped ones too (for less): per
        # frame it handled; our RX thread's kernel time per frame it read.
        "rx_kernel_ns": _sum(per(napi.total_ns, rx + source_drops), per(rx_cpu.kernel_ns, rx)),
        "rx_user_ns": per(rx_cpu.user_ns, rx),
        "worker_ns": per(cpu["worker"].total_ns, delivered),
        "other_ns": per(cpu.get("other", CpuSpent()).total_ns, rx),
        # Seconds of CPU each part used over the window: how the receiving CPU was shared.
        **{f"{part}_cpu_s": c.total_ns / 1e9 for part, c in cpu.items()},
        # CPU-seconds the row used per second of the window: with everything on one CPU,
        # the share of it the row had (the machine's other work took the rest).
        "cpu_share": sum(c.total_ns for c in cpu.values()) / 1e9 / wall_s,
    }
    # What one CPU doing nothing else would deliver at these costs: less at the mercy of
    # how the scheduler shared the CPU, and of the machine's other work, than fps.
    cost = _sum(fig["rx_kernel_ns"], fig["rx_user_ns"], fig["worker_ns"])
    fig["cpu_fps"] = 1e9 / cost if cost else None
    return fig


def _sum(*parts: float | None) -> float | None:
    return None if None in parts else sum(p for p in parts if p is not None)


@contextlib.contextmanager
def _pair() -> Iterator[VethPair]:
    with VethPair() as pair:  # deleted on every way out, Ctrl-C included
        yield pair


def tpacket_row(opts: LiveOptions) -> dict[str, Any]:
    """``cpumap run --iface B``: TPACKET_V3 into the map.  B's XDP program passes every
    frame to the stack and counts it (``hook``: the frames the packet socket can see)."""
    counter = KernelArrayMap(1, percpu=True)
    with _pair() as pair, counter, counting_program(counter) as prog:
        with pair.in_local():
            link = attach(pair.local.ifname, prog, XdpMode.NATIVE)  # B's NAPI
        with link:
            row = _engine_row(pair, opts, engine_argv(opts.worker_cpu, []))
            row["hook"] = counter.lookup(0)
    return row


def af_xdp_row(opts: LiveOptions) -> dict[str, Any]:
    """``cpumap run --iface B --af-xdp -m native``: the AF_XDP socket into the map."""
    with _pair() as pair:
        argv = engine_argv(opts.worker_cpu, ["--af-xdp", "-m", "native"])
        return _engine_row(pair, opts, argv)


def kernel_row(opts: LiveOptions) -> dict[str, Any]:
    """``cpumap run --iface B --kernel``: our steering program (``-p l4-hash``, the engine
    rows' default) on B's XDP hook redirecting into the kernel's cpumap, one entry on the
    worker's CPU whose second stage counts and drops (``--remote-action drop``)."""
    with _pair() as pair:
        return _engine_row(pair, opts, kernel_argv(opts.worker_cpu))


def _cpumap_kthread(pid: int, cpu: int) -> int:
    """The kthread of CPU ``cpu``'s entry in the cpumap process ``pid`` holds: the map's id
    from the fd's ``fdinfo`` (other cpumaps on the machine have kthreads of the same
    form), then the kthread by name."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
            info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        if info.get("map_type", "").strip() == str(int(MapType.CPUMAP)):
            ids.add(int(info["map_id"]))
    if len(ids) != 1:
        raise RuntimeError(f"expected one cpumap held by cpumap run, found {sorted(ids)}")
    name = f"cpumap/{cpu}/map:{ids.pop()}"
    for kt in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{kt}/comm") as f:
                if f.read().strip() == name:
                    return int(kt)
        except OSError:
            continue
    raise RuntimeError(f"no kthread {name}")


# --- AF_XDP, one RX producer per queue: frames/s with 1, 2, 4 queues ---------------------------


def queue_cpus(queues: int) -> tuple[list[int], list[int]] | str:
    """The CPUs of ``queues`` RX queues and of their workers, or why this machine cannot
    run them.  RX queue ``q`` lives on CPU ``q``: its sender (veth puts a frame on the RX
    queue of the CPU that sent it, modulo the queues), its NAPI (run in that sender's
    softirq: veth schedules it where the frame was sent) and its RX producer (``cpumap run
    --queues all`` pins queue ``q``'s process to CPU ``q``; queue 0 is the run's own RX
    thread, ``--rx-cpu 0``), as a NIC queue's interrupt, NAPI and RX work share a CPU.  The
    workers, one per queue, take the next CPUs; where there are too few, they share the
    last RX CPU (the row says so: ``shared``)."""
    cpus = sorted(os.sched_getaffinity(0))
    if cpus[:queues] != list(range(queues)):
        return f"{queues} RX queues need CPUs 0..{queues - 1}"
    rest = cpus[queues:]
    return cpus[:queues], rest[:queues] or [queues - 1]


def offer_on(pair: VethPair, opts: LiveOptions, cpus: list[int]) -> dict[str, Any]:
    """Offer the load out of A from each of ``cpus`` at once (a generator each, a share
    of the rate each): one sender per RX queue of B.  A's ``tx_drops`` are read here, over
    all of them (each generator's own figure is the interface's, over its own run)."""
    rate = opts.rate / len(cpus) if opts.rate else None
    results: list[Any] = [None] * len(cpus)

    def send(k: int, cpu: int) -> None:
        with wire_generator(pair) as gen:
            results[k] = gen.run(GenOptions(duration_s=opts.window_s, rate=rate, cpu=cpu))

    with pair.in_peer():
        dropped0 = link_state(pair.peer.ifname).tx_dropped
    senders = [threading.Thread(target=send, args=kc) for kc in enumerate(cpus)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    if any(r is None for r in results):
        raise RuntimeError("a sender failed (see its traceback above)")
    with pair.in_peer():
        drops = link_state(pair.peer.ifname).tx_dropped - dropped0
    return {
        "sent": sum(r.sent for r in results),
        "seconds": max(r.seconds for r in results),
        "tx_drops": drops,
        "rate": opts.rate,
    }


def _queue_watched(run: CpumapRun, first: dict[str, Any]) -> Watched:
    """The run's threads by part: the RX threads -- its own main thread (queue 0) and each
    queue process's -- and the workers (the pids its records name)."""
    pid = run.proc.pid
    workers = {e["pid"] for e in first["entries"] if e.get("pid")}
    queue_procs = [k for k in process_tree(pid) if k not in workers]
    rx = [(pid, pid), *((q, q) for q in queue_procs)]
    others = [pt for p in (pid, *queue_procs) for pt in threads_of(p) if pt[1] != p]
    return {
        "rx": rx,
        "worker": [pt for w in workers for pt in threads_of(w)],
        "other": others,
    }


def af_xdp_queues_row(opts: LiveOptions, queues: int) -> dict[str, Any]:
    """``cpumap run --iface B --af-xdp --queues all`` on a B of ``queues`` RX queues: one RX
    producer per queue (:func:`queue_cpus`), the load offered from as many CPUs.  B's NAPI
    is not a thread of its own here (there is one per queue, and which serves which queue
    is not named): it runs in the senders' softirq, so ``rx_kernel_ns`` is our RX threads'
    own kernel time only, and NAPI's copy into the sockets is the wire's."""
    where = queue_cpus(queues)
    if isinstance(where, str):
        raise RuntimeError(where)
    rx_cpus, workers = where
    argv = ["--cpus", ",".join(map(str, workers)), "--rx-cpu", str(rx_cpus[0])]
    argv += ["--handler", "count", "--af-xdp", "-m", "native", "--queues", "all"]
    with VethPair(queues=queues) as pair, CpumapRun(pair, argv, opts.qsize) as run:
        first = run.wait_ready()
        window = CpuWindow(_queue_watched(run, first))
        offered = offer_on(pair, opts, rx_cpus)
        run.wait_drained()
        cpu, wall_s = window.end()
        summary = run.stop()
    out = summary["outcomes"]
    figures = _figures(
        offered,
        rx=summary["rx"],
        delivered=out["delivered"],
        source_drops=summary.get("source_drops") or 0,
        map_drops=out["queue_full"],
        cpu=cpu | {"napi": CpuSpent()},
        wall_s=wall_s,
    )
    producers = summary["counters"]["producers"]
    return figures | {
        "accounted": int(summary["accounted"]),
        "queues": queues,
        "producers": len(producers),
        "rx_per_producer": [p["rx"] for p in producers],
        "shared": int(bool(set(workers) & set(rx_cpus))),
        "per_poll": summary["rx"] / max(sum(p["polls"] for p in producers), 1),
    }
