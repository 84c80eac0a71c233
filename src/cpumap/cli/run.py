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
source or its output fails (a damaged capture, stdout on a full disk).  Each way takes
the same path: stop reading, let the RX producer flush its bulk queues (leaving the
``with`` of the producer), wait until every frame read has an outcome (``drain``), close
the map (every worker drains its ring, runs ``finish()`` and exits: no process, no shared
memory is left), and print the summary with the accounting identity.  The signal handler
only sets the stop (:class:`~cpumap.capture.Stop`), which the feed loop checks after
every batch and which also ends a read that waits for bytes (a FIFO, a pipe:
``capture/stop.py``), so no frame is half-received and no silent writer holds the run.
A second signal stops at once: the drain is skipped and the map closed with no time, its
workers killed and what they held counted lost -- the summary still balances and says so
(:class:`SignalStop` argues where the second signal may cut).  The exit status says how
it ended (``errors.ExitStatus``); docs/cli.md has the table of every way out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rich.console import Console

from ..capture import CaptureError, ReadInterrupted, Stop
from ..closing import Closing
from ..cpus import pinned
from ..engine import CpuMap, MapOptions, WorkerResult
from ..errors import HandlerSetupError
from ..packets import PacketBatch
from .build import Source, describe_capture_error, open_source, remote_program, steering_program
from .cluster import run_on_ray
from .config import RunConfig, ViewConfig
from .errors import SetupError, UsageError, os_error_text, start_failure
from .output import Output, claim_write_dir, merge_into
from .report import SIGNAL_STATUS, Ending, RunReport, Written, local_report, written_by
from .view import Sample, interval_record, render_live, render_summary

if TYPE_CHECKING:  # imported where used: a terminal's live view, a --json run
    from rich.live import Live

DRAIN_TIMEOUT = 60.0  # seconds for the frames read to reach their outcomes at the end
DRAIN_SLICE = 0.05  # the drain looks for a second signal this often
CLOSE_TIMEOUT = 60.0  # seconds for the workers to drain, run finish() and exit


def run(config: RunConfig, console: Console) -> int:
    """Run ``config`` to its end and show it; the exit status.

    A local run turns SIGINT/SIGTERM into a stop after draining (:class:`SignalStop`); a
    run on a Ray cluster keeps Python's default: the first Ctrl-C ends it at once (Ray
    tears its tasks and actors down with the driver)."""
    if config.ray is not None:
        report = run_on_ray(config)
        show(report, config.view, console)
        return int(report.exit_status)
    with Stop() as stop, SignalStop(stop) as signals, Output(console, stop) as out:
        if config.duration:  # a capture that gives no byte must not outlast it either
            stop.deadline = time.monotonic() + config.duration
        report = run_here(config, console, signals, out)
        show(report, config.view, console, out)
        status = out.exit_status(report.exit_status)
        if out.error is not None and not isinstance(out.error, BrokenPipeError):
            print(f"cpumap: error: {output_failure(out.error, report)}", file=sys.stderr)
    return int(status)


def run_here(config: RunConfig, console: Console, signals: SignalStop, out: Output) -> RunReport:
    """The run on this machine's CPUs: the map, its workers, the RX side in this process."""
    claim = claim_write_dir(config.write) if config.write is not None else None
    try:
        with open_source(config.source, signals.stop) as source:
            if config.view.mode != "json":
                console.print(banner(config, source), highlight=False)
            cmap = new_map(config, source.producers)
            signals.on_hurry(cmap.hurry_close)  # a second signal cuts a close's wait too
            with cmap:
                ending = start_and_feed(cmap, source, config, console, signals, out)
                ending = close_map(cmap, signals, ending)
            facts = source.facts()
        mine = cmap.report()
        written = write_outputs(config, mine.results, at_once=ending.at_once is not None)
        return local_report(config, facts, mine, ending, written)
    finally:
        if claim is not None:
            os.close(claim)


def new_map(config: RunConfig, producers: int = 1) -> CpuMap:
    """The map (``producers``: RX producer slots, one per AF_XDP queue), or one line
    naming the limit that keeps it from starting."""
    try:
        return CpuMap(
            max(config.cpus) + 1,
            producers=producers,
            handler=config.handler.handler,
            batch_size=config.batch,
            options=MapOptions(setup_timeout=config.handler.setup_timeout),
        )
    except (OSError, MemoryError, RuntimeError) as e:  # EMFILE, ENOMEM, no thread
        raise start_failure(e) from None


def start_and_feed(
    cmap: CpuMap,
    source: Source,
    config: RunConfig,
    console: Console,
    signals: SignalStop,
    out: Output,
) -> Ending:
    """The entries, then feeding and draining (nothing fed after a second signal)."""
    try:
        program = steering_program(config.program, cmap, config.cpus)
    except OSError as e:  # EMFILE: the CPU table's segment
        raise start_failure(e) from None
    serve_metrics(cmap, config.view, console)
    start_entries(cmap, config)
    if signals.hurry:  # a second signal while the workers started: nothing to feed
        return Ending(0.0, signals.signum, at_once=signals.second)
    return feed_and_drain(cmap, program, source, config, (console, out), signals)


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
    except (OSError, RuntimeError) as e:  # ENOMEM: no process could be started
        raise start_failure(e) from None


def setup_failure(e: HandlerSetupError) -> str:
    """A failing ``setup()`` as one message: the worker, the exception, where it was."""
    text = str(e)
    first, _, tb = text.partition("\n")
    if "Traceback (most recent call last)" not in tb:  # it hung or exited: no exception
        why = tb.strip().replace("MapOptions.setup_timeout", "--setup-timeout")
        return f"{first.rstrip(':')}: {why or 'unknown error'}"
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
    shown: tuple[Console, Output],
    signals: SignalStop,
) -> Ending:
    """The RX side until the source ends, a stop or the deadline; then wait until every
    frame read has its outcome.  A drain that times out (a handler that never returns)
    closes the map at once: its worker is killed and what it held counted lost.  A second
    signal skips the drain (:func:`close_map` kills the workers)."""
    t0 = time.monotonic()
    backpressure = 10.0 if source.lossless else 0.0
    console, out = shown
    sample = lambda now: take_sample(cmap, source, now - t0)  # noqa: E731
    extended = config.view.extended
    with View(
        config.view,
        console,
        sample,
        lambda prev, cur: interval_record(prev, cur, extended=extended),
        lambda rec: render_live(rec, extended=extended, title="cpumap"),
        out=out,
    ) as view:
        # Only this thread is pinned (the supervisor and the view keep their masks): the
        # RX side gets the CPU the targets leave it, as the NIC queue's CPU.
        with (
            cmap.producer(program, poll_size=config.source.poll, backpressure=backpressure) as rx,
            pinned(config.rx_cpu),
            # --af-xdp: frames placed into rx (and, a queue each, into twins of it in
            # processes of their own); stopped before rx closes.
            source.placing(rx, lambda: cmap.producer(program, poll_size=config.source.poll)),
        ):
            # From now, --duration counts reading time, as before the wait for a source.
            signals.stop.deadline = t0 + config.duration if config.duration else None
            cut = False
            try:
                failure = feed(rx.receive, source, view, signals, config.source.skip_bad)
            except KeyboardInterrupt:  # the second signal, inside a receive (SignalStop)
                failure, cut = None, True
            producer, room_waits = rx.index, rx.room_waits
        if signals.signum is not None and not signals.hurry:
            say_draining(signals.signum, cmap.stats().in_flight)
        stuck = None if signals.hurry else drain(cmap, signals)
    elapsed = time.monotonic() - t0
    return Ending(
        elapsed, signals.signum, failure, stuck, producer, room_waits, signals.second, cut=cut
    )


def feed(
    receive: Callable[[PacketBatch], None],
    source: Source,
    view: View,
    signals: SignalStop,
    skip_bad: bool,
) -> str | None:
    """Feed batches until the source ends, the stop is set or its deadline passes; the
    source's failure message, if it failed.  A read that waits for bytes (a FIFO, a pipe)
    ends at the stop or the deadline too (``capture/stop.py``)."""
    stop = signals.stop
    while not stop.is_set():
        try:
            batch = source.next_batch()
        except ReadInterrupted:
            return None
        except CaptureError as e:
            return describe_capture_error(e, skip_bad)
        except OSError as e:
            return f"{source.what}: {e}"
        if batch is None and not source.endless:
            return None
        if batch is not None:
            with signals.interruptible():
                receive(batch)
        now = time.monotonic()
        view.tick(now)
        if stop.expired():
            return None
    return None


def _say_raw(text: str) -> None:
    """``text`` on stderr with one write(2): safe inside a signal handler, which may have
    interrupted the main thread inside ``print`` (a buffered stream is not reentrant)."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


def say_draining(signum: int, in_flight: int) -> None:
    """On stderr, at the first signal: the run is not stuck, and how to stop it now."""
    name = signal.Signals(signum).name
    print(
        f"cpumap: {name}: reading stopped; draining the {in_flight:,} frames in flight "
        f"(a second signal stops at once)",
        file=sys.stderr,
        flush=True,
    )


def drain(cmap: CpuMap, signals: SignalStop) -> str | None:
    """Wait until no frame is in flight, or a second signal; what went wrong if neither
    comes within :data:`DRAIN_TIMEOUT`."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while not signals.hurry:
        left = deadline - time.monotonic()
        try:
            cmap.wait_idle(max(0.0, min(DRAIN_SLICE, left)))
            return None
        except TimeoutError:
            if left <= DRAIN_SLICE:
                n = cmap.stats().in_flight
                return (
                    f"{n} frames still in flight after {DRAIN_TIMEOUT:g}s: a handler does "
                    f"not return; its worker is killed"
                )
    return None


def close_map(cmap: CpuMap, signals: SignalStop, ending: Ending) -> Ending:
    """Close the map: every worker drains its ring, runs ``finish()`` and exits -- or,
    after a second signal or a drain that timed out, is killed now and what it held is
    counted lost.  ``ending`` with what that close cost."""
    before = cmap.stats().lost
    if signals.hurry or ending.stuck is not None:
        cmap.close(timeout=0.0 if signals.hurry else 1.0)
    else:
        # The rings are drained: the workers only run finish() and exit.  A signal now
        # does not cut the map's own bookkeeping (a worker nobody reaps): a first one
        # says so, a second one ends the close's wait (on_hurry: CpuMap.hurry_close).
        signals.closing = True
        cmap.close(timeout=CLOSE_TIMEOUT)
    killed = cmap.stats().lost - before
    # A signal that came during the close counts as the run's own (status, summary).
    return dataclasses.replace(
        ending,
        signum=ending.signum if ending.signum is not None else signals.signum,
        at_once=signals.second,
        killed_lost=killed,
    )


def write_outputs(
    config: RunConfig, results: tuple[WorkerResult, ...], *, at_once: bool = False
) -> Written:
    """The files ``--write`` made, merged into ``--merge``'s when asked (not after a
    second signal: the workers were killed before their files were finished)."""
    if config.write is None:
        return Written()
    files = written_by(results)
    if config.merge is None:
        return Written(files)
    into = str(config.merge)
    if at_once:
        return Written(files, into=into, error=f"--merge {into}: not merged (stopped at once)")
    try:
        return Written(files, merge_into(files, config.merge), into)
    except (OSError, CaptureError) as e:
        why = os_error_text(e) if isinstance(e, OSError) else str(e)
        return Written(files, into=into, error=f"--merge {into}: {why}")


def output_failure(error: OSError, report: RunReport) -> str:
    """The one line that ends a run whose stdout failed: what failed, and how the run
    ended (its summary could not be shown)."""
    s = report.stats
    held = "every one accounted for" if report.accounted else "NOT all accounted for"
    return (
        f"stdout: {error.strerror or error}; the summary could not be written: "
        f"{s.rx:,} frames received, {held}"
    )


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


S = TypeVar("S")  # what a View samples: the engine's Sample, the kernel mode's


class View(Closing, Generic[S]):
    """Where the live view goes: a rich Live on a terminal, JSON lines, or nowhere.

    What it shows is the caller's: ``sample`` reads the counters, ``record`` makes an
    interval record of two samples (the JSON line), ``render`` the rich view of one --
    the engine's run and the kernel mode (kernel_run.py) each bring their own.  ``last``:
    when the last record was shown (0: the first tick shows one at once)."""

    def __init__(
        self,
        config: ViewConfig,
        console: Console,
        sample: Callable[[float], S],
        record: Callable[[S | None, S], dict[str, Any]],
        render: Callable[[dict[str, Any]], Any],
        *,
        out: Output | None = None,
        last: float = 0.0,
    ) -> None:
        self.config = config
        self.out = out
        self.sample = sample
        self.record = record
        self.render = render
        self.prev: S | None = None
        self.last = last
        self.live: Live | None = None
        if config.mode == "text" and console.is_terminal:
            from rich.live import Live

            self.live = Live(console=console, auto_refresh=False, transient=True)
            self.live.start()

    def tick(self, now: float) -> None:
        """Show a new sample if one is due (every ``--interval`` seconds)."""
        wanted = self.live is not None or self.config.mode == "json"
        if not wanted or now - self.last < self.config.interval:
            return
        cur = self.sample(now)
        rec = self.record(self.prev, cur)
        self.prev, self.last = cur, now
        if self.config.mode == "json":
            emit_json(rec, self.out)
        elif self.live is not None:
            self.live.update(self.render(rec), refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def show(report: RunReport, view: ViewConfig, console: Console, out: Output | None = None) -> None:
    """The summary (text, or one JSON object), the error on stderr, the exit status."""
    if view.mode == "json":
        emit_json(report.as_json(top=view.top), out)
    else:
        for part in render_summary(report, view.top):
            console.print(part, highlight=False)
    if report.error:
        print(f"cpumap: error: {report.error}", file=sys.stderr)
    status = out.exit_status(report.exit_status) if out is not None else report.exit_status
    if status and view.mode != "json":
        console.print(f"exit status {int(status)}: {status.name.lower().replace('_', ' ')}")


def emit_json(rec: dict[str, Any], out: Output | None = None) -> None:
    import json  # here: a text run has no use for it

    stream: Any = out.json if out is not None else sys.stdout
    stream.write(json.dumps(rec, default=str) + "\n")
    stream.flush()


class SignalStop(Closing):
    """SIGINT/SIGTERM: the first sets ``stop`` -- reading ends (a read waiting for bytes
    too: ``capture/stop.py``), every frame read is drained, the summary printed.  Every
    later one hurries: the run stops at once, its workers are killed and what they held
    is counted lost, and the summary is still printed (the exit status is the first
    signal's).

    Why the second signal raises ``KeyboardInterrupt`` only inside :meth:`interruptible`:
    a handler's exception lands at whatever bytecode the main thread is at -- inside a map
    operation that forks a worker, inside ``close()`` between taking an entry out and
    retiring it -- and what it cuts may be left half done (a worker that nobody reaps).
    The RX producer's ``receive`` is made to be cut (rx.py: an interrupted poll counts
    what it held ``xdp_aborted``); everywhere else the second signal only sets
    :attr:`hurry`, which the drain looks at every :data:`DRAIN_SLICE` and which makes
    the close kill the workers at once.  The flag is cleared before raising, so a third
    signal cannot cut the poll's own clean-up.

    Installed only from the main thread (Python's rule); the old handlers come back at
    :meth:`close`."""

    def __init__(self, stop: Stop) -> None:
        self.stop = stop
        self.signum: int | None = None  # the first
        self.second: int | None = None  # the first of the later ones
        self._cut = False  # inside interruptible(): a later signal raises
        self._hurried: list[Callable[[], None]] = []  # on_hurry()
        self.closing = False  # the map is closing: a first signal says what a second does
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_STATUS:
                self._old[sig] = signal.signal(sig, self._handle)

    @property
    def hurry(self) -> bool:
        """A second signal came: stop at once."""
        return self.second is not None

    def on_hurry(self, call: Callable[[], None]) -> None:
        """Call ``call`` (from the signal handler: it must only set flags) at the second
        signal -- or now, if it already came."""
        self._hurried.append(call)
        if self.hurry:
            call()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A second signal inside this block raises ``KeyboardInterrupt``."""
        self._cut = True
        try:
            if self.hurry:  # it came between the check and here
                raise KeyboardInterrupt
            yield
        finally:
            self._cut = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            self.stop.set()
            if self.closing:  # nothing else will tell the user the run heard it
                _say_raw(
                    f"cpumap: {signal.Signals(signum).name}: the workers are finishing "
                    "(a second signal stops them at once)\n"
                )
            return
        if self.second is None:
            self.second = signum
            for call in self._hurried:
                call()
        if self._cut:
            self._cut = False
            raise KeyboardInterrupt

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
