"""``cpumap run``: build the map, feed it, and end well however the run ends.

The path of a run, top to bottom (``docs/design.md`` follows it module by module)::

    run(config)                      a checked RunConfig (args.py)
      run_here                       this machine; run_on_ray (cluster.py): a Ray cluster
        open_source                  a capture, an interface, generated frames (build.py)
        CpuMap + start_entries       one pinned worker per CPU, the handler set up in each
        feed_and_drain               the RX side: poll, program, flush; then every frame
                                     read reaches its outcome
        close                        every worker drains, runs finish() and exits
        local_report                 one frozen RunReport (report.py)
      show                           the summary, text or JSON (view.py); the exit status

Ending
------
A run ends when its source does, at ``--duration``, at SIGINT or SIGTERM, or when the
source fails (a damaged capture).  Each way takes the same path: stop reading, let the RX
producer flush its bulk queues (leaving the ``with`` of the producer), wait until every
frame read has an outcome (``wait_idle``), close the map (every worker drains its ring,
runs ``finish()`` and exits: no process, no shared memory is left), and print the summary
with the accounting identity.  The signal handler only sets an event the feed loop checks
after every batch, so no frame is half-received; a second signal raises
``KeyboardInterrupt`` for an operator who will not wait (the map's ``close`` still reaps
every worker).  The exit status says how it ended (``errors.ExitStatus``).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from rich.console import Console
from rich.live import Live

from ..capture import CaptureError
from ..closing import Closing
from ..cpus import pinned
from ..engine import CpuMap, WorkerResult
from ..errors import HandlerSetupError
from ..packets import PacketBatch
from ..sinks import merge_captures
from .build import Source, describe_capture_error, open_source, remote_program, steering_program
from .cluster import run_on_ray
from .config import RunConfig, ViewConfig
from .errors import SetupError, UsageError
from .report import SIGNAL_STATUS, Ending, RunReport, Written, local_report, written_by
from .view import Sample, interval_record, render_live, render_summary

DRAIN_TIMEOUT = 60.0  # seconds for the frames read to reach their outcomes at the end


def run(config: RunConfig, console: Console) -> int:
    """Run ``config`` to its end and show it; the exit status.

    A local run turns SIGINT/SIGTERM into a stop after draining (:class:`SignalStop`); a
    run on a Ray cluster keeps Python's default: the first Ctrl-C ends it at once (Ray
    tears its tasks and actors down with the driver)."""
    if config.ray is not None:
        report = run_on_ray(config)
        show(report, config.view, console)
        return int(report.exit_status)
    with SignalStop(threading.Event()) as signals:
        report = run_here(config, console, signals)
        show(report, config.view, console)
    return int(report.exit_status)


def run_here(config: RunConfig, console: Console, signals: SignalStop) -> RunReport:
    """The run on this machine's CPUs: the map, its workers, the RX side in this process."""
    with open_source(config.source) as source:
        if config.view.mode != "json":
            console.print(banner(config, source), highlight=False)
        cmap = CpuMap(max(config.cpus) + 1, handler=config.handler.handler, batch_size=config.batch)
        with cmap:
            program = steering_program(config.program, cmap, config.cpus)
            serve_metrics(cmap, config.view, console)
            start_entries(cmap, config)
            ending = feed_and_drain(cmap, program, source, config, console, signals)
        facts = source.facts()
    mine = cmap.report()
    return local_report(config, facts, mine, ending, write_outputs(config, mine.results))


def banner(config: RunConfig, source: Source) -> str:
    """The first line: what is read, on which CPUs, how, with which program."""
    how = "lossless" if source.lossless else "drops when a ring is full"
    remote = config.program.remote_action
    return (
        f"cpumap: {source.what} on CPU {config.rx_cpu} -> CPUs "
        f"{','.join(map(str, config.cpus))} ({how}), program {config.program.name}"
        + (f", remote action {remote}" if remote != "disabled" else "")
    )


def serve_metrics(cmap: CpuMap, view: ViewConfig, console: Console) -> None:
    """``--metrics-port``: Prometheus metrics of the map, served for the run's length."""
    if view.metrics_port is None:
        return
    # Imported here: prometheus_client and its HTTP server cost tens of ms to import, and
    # only --metrics-port needs them.
    from ..metrics import serve

    try:
        serve(cmap, view.metrics_port)
    except OSError as e:
        raise UsageError(f"--metrics-port {view.metrics_port}: {e.strerror}") from None
    if view.mode != "json":
        console.print(f"metrics on http://127.0.0.1:{view.metrics_port}/metrics")


def start_entries(cmap: CpuMap, config: RunConfig) -> None:
    """An entry per CPU, each with a ring of ``--qsize`` and the second stage; a handler
    whose ``setup()`` raises ends the run here (exit status 1, no summary)."""
    remote = remote_program(config.program.remote_action)
    try:
        for cpu in config.cpus:
            cmap.update(cpu, config.qsize, program=remote)
    except HandlerSetupError as e:
        raise SetupError(f"--handler {config.handler.name}: {setup_failure(e)}") from None
    except OSError as e:  # ENOMEM: no process could be started
        raise UsageError(f"cannot start the workers: {e}") from None


def setup_failure(e: HandlerSetupError) -> str:
    """A failing ``setup()`` as one message: the worker, the exception, where it was."""
    text = str(e)
    first, _, tb = text.partition("\n")
    lines = [ln for ln in tb.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "unknown error"
    where = [ln.strip() for ln in lines if ln.strip().startswith("File ")]
    at = f" ({where[-1]})" if where else ""
    return f"{first.rstrip(':')}: setup() raised {last}{at}"


def feed_and_drain(
    cmap: CpuMap,
    program: Any,
    source: Source,
    config: RunConfig,
    console: Console,
    signals: SignalStop,
) -> Ending:
    """The RX side until the source ends, a stop or the deadline; then wait until every
    frame read has its outcome.  A drain that times out (a handler that never returns)
    closes the map at once: its worker is killed and what it held counted lost."""
    t0 = time.monotonic()
    backpressure = 10.0 if source.lossless else 0.0
    with View(config.view, console, lambda now: take_sample(cmap, source, now - t0)) as view:
        # Only this thread is pinned (the supervisor and the view keep their masks): the
        # RX side gets the CPU the targets leave it, as the NIC queue's CPU.
        with (
            cmap.producer(program, poll_size=config.source.poll, backpressure=backpressure) as rx,
            pinned(config.rx_cpu),
            source.placing(rx),  # --af-xdp: frames placed into rx; stopped before it closes
        ):
            deadline = t0 + config.duration if config.duration else None
            failure = feed(rx.receive, source, view, signals.stop, deadline, config.source.skip_bad)
            producer, room_waits = rx.index, rx.room_waits
        stuck = drain(cmap)
    elapsed = time.monotonic() - t0
    if stuck is not None:
        cmap.close(timeout=1.0)  # the stuck worker is killed, its frames counted lost
    return Ending(elapsed, signals.signum, failure, stuck, producer, room_waits)


def feed(
    receive: Callable[[PacketBatch], None],
    source: Source,
    view: View,
    stop: threading.Event,
    deadline: float | None,
    skip_bad: bool,
) -> str | None:
    """Feed batches until the source ends, ``stop`` is set or ``deadline`` passes; the
    source's failure message, if it failed."""
    while not stop.is_set():
        try:
            batch = source.next_batch()
        except CaptureError as e:
            return describe_capture_error(e, skip_bad)
        except OSError as e:
            return f"{source.what}: {e}"
        if batch is None and not source.endless:
            return None
        if batch is not None:
            receive(batch)
        now = time.monotonic()
        view.tick(now)
        if deadline is not None and now >= deadline:
            return None
    return None


def drain(cmap: CpuMap) -> str | None:
    """Wait until no frame is in flight; what went wrong if that never happens."""
    try:
        cmap.wait_idle(DRAIN_TIMEOUT)
    except TimeoutError as e:
        return f"{e}: a handler does not return; its worker is killed"
    return None


def write_outputs(config: RunConfig, results: tuple[WorkerResult, ...]) -> Written:
    """The files ``--write`` made, merged into ``--merge``'s when asked."""
    if config.write is None:
        return Written()
    files = written_by(results)
    if config.merge is None:
        return Written(files)
    into = str(config.merge)
    try:
        return Written(files, merge_captures(list(files), config.merge), into)
    except (OSError, CaptureError) as e:
        return Written(files, into=into, error=f"--merge {into}: {e}")


# -- what the run shows ---------------------------------------------------------------------------


def take_sample(cmap: CpuMap, source: Source, elapsed: float) -> Sample:
    """The view's input at one moment: the map's counters and the source's progress."""
    return Sample(elapsed, cmap.stats(), source.drops, source.progress, _this_cpu())


def _this_cpu() -> int:
    """The CPU this process last ran on (``/proc/self/stat``'s ``processor``; -1: unknown)."""
    try:
        with open("/proc/self/stat") as f:
            return int(f.read().rpartition(")")[2].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


class View(Closing):
    """Where the live view goes: a rich Live on a terminal, JSON lines, or nowhere."""

    def __init__(
        self, config: ViewConfig, console: Console, sample: Callable[[float], Sample]
    ) -> None:
        self.config = config
        self.sample = sample
        self.prev: Sample | None = None
        self.last = 0.0
        self.live: Live | None = None
        if config.mode == "text" and console.is_terminal:
            self.live = Live(console=console, auto_refresh=False, transient=True)
            self.live.start()

    def tick(self, now: float) -> None:
        """Show a new sample if one is due (every ``--interval`` seconds)."""
        wanted = self.live is not None or self.config.mode == "json"
        if not wanted or now - self.last < self.config.interval:
            return
        cur = self.sample(now)
        rec = interval_record(self.prev, cur, extended=self.config.extended)
        self.prev, self.last = cur, now
        if self.config.mode == "json":
            emit_json(rec)
        elif self.live is not None:
            live = render_live(rec, extended=self.config.extended, title="cpumap")
            self.live.update(live, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def show(report: RunReport, view: ViewConfig, console: Console) -> None:
    """The summary (text, or one JSON object), the error on stderr, the exit status."""
    if view.mode == "json":
        emit_json(report.as_json())
    else:
        for part in render_summary(report, view.top):
            console.print(part, highlight=False)
    if report.error:
        print(f"cpumap: error: {report.error}", file=sys.stderr)
    status = report.exit_status
    if status and view.mode != "json":
        console.print(f"exit status {int(status)}: {status.name.lower().replace('_', ' ')}")


def emit_json(rec: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(rec, default=str) + "\n")
    sys.stdout.flush()


class SignalStop(Closing):
    """SIGINT/SIGTERM set ``stop`` (the first); a second one raises KeyboardInterrupt.

    Installed only from the main thread (Python's rule); the old handlers come back at
    :meth:`close`."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_STATUS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.stop.set()

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
