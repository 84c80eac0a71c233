"""``cpumap run``: build the map, feed it, show it, and end well however the run ends.

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

import argparse
import dataclasses
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
from ..cpus import format_cpu_list, pinned
from ..engine import CpuMap, HandlerSetupError, MapStats, WorkerEvent
from ..engine.counters import ProducerCounter
from ..packets import PacketBatch
from ..programs import LoadError, load_object
from ..sinks import Count, FlowTable, merge_captures, merge_flow_tables
from .args import check_run, chosen_cpus, rx_cpu, split_captures
from .build import (
    Source,
    describe_capture_error,
    make_handler,
    make_program,
    non_ethernet_note,
    open_source,
    remote_program,
)
from .cluster import run_on_ray
from .errors import ExitStatus, UsageError
from .view import (
    ProducerRow,
    ReceiveRow,
    Sample,
    interval_record,
    render_entries,
    render_flows,
    render_live,
    render_outcomes,
    render_user_errors,
    state_name,
)

DRAIN_TIMEOUT = 60.0  # seconds for the frames read to reach their outcomes at the end
SIGNAL_STATUS = {signal.SIGINT: ExitStatus.SIGINT, signal.SIGTERM: ExitStatus.SIGTERM}


class SignalStop:
    """SIGINT/SIGTERM set ``stop`` (the first); a second one raises KeyboardInterrupt.

    Installed only from the main thread (Python's rule); restored by :meth:`restore`."""

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

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class View:
    """Where the live view goes: a rich Live on a terminal, JSON lines, or nowhere."""

    def __init__(self, args: argparse.Namespace, console: Console, title: str) -> None:
        self.args = args
        self.console = console
        self.title = title
        self.prev: Sample | None = None
        self.last = 0.0
        self.live: Live | None = None
        if not (args.json or args.quiet) and console.is_terminal:
            self.live = Live(console=console, auto_refresh=False, transient=True)
            self.live.start()

    @property
    def wanted(self) -> bool:
        return self.live is not None or self.args.json

    def due(self, now: float) -> bool:
        return self.wanted and now - self.last >= self.args.interval

    def show(self, sample: Sample, now: float) -> None:
        rec = interval_record(self.prev, sample)
        self.prev, self.last = sample, now
        if self.args.json:
            emit_json(rec)
        elif self.live is not None:
            self.live.update(
                render_live(rec, extended=self.args.extended, title=self.title), refresh=True
            )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class WorkerWatch:
    """What happened to the workers, from the map's own supervision events
    (``CpuMap.worker_events()``: deaths, restarts, broken entries, stuck workers) -- the
    supervisor thread records each as it happens, so nothing between two looks is missed.
    ``notes`` holds what else went wrong (a drain that timed out)."""

    def __init__(self) -> None:
        self.events: list[WorkerEvent] = []
        self.notes: list[str] = []

    def observe(self, cmap: CpuMap) -> None:
        self.events = cmap.worker_events()

    def deaths(self) -> dict[int, list[WorkerEvent]]:
        """CPU -> its workers' deaths, oldest first."""
        out: dict[int, list[WorkerEvent]] = {}
        for ev in self.events:
            if ev.kind == "died":
                out.setdefault(ev.cpu, []).append(ev)
        return out

    def describe(self) -> list[str]:
        """One line per CPU whose worker died, and per broken or stuck entry."""
        lines = []
        for cpu, deaths in sorted(self.deaths().items()):
            how = ", ".join(f"pid {d.pid} {_exit_text(d.exitcode)}" for d in deaths)
            lost = sum(d.lost for d in deaths)
            lines.append(
                f"the worker for CPU {cpu} died {len(deaths)} time(s) ({how}); "
                f"{lost:,} frames it held are counted lost"
            )
        for ev in self.events:
            if ev.kind == "broken":
                lines.append(
                    f"CPU {ev.cpu} is broken: its worker kept dying and was not restarted; "
                    f"frames redirected to it count as redirect errors"
                )
            elif ev.kind == "stuck":
                lines.append(f"the worker for CPU {ev.cpu} (pid {ev.pid}) made no progress")
            elif ev.kind == "producer_died":
                lines.append(f"RX producer {ev.key} (pid {ev.pid}) died; its frames are counted")
        return lines


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def emit_json(rec: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


def take_sample(cmap: CpuMap, source: Source, elapsed: float, extended: bool) -> Sample:
    stats = cmap.stats()
    producers: tuple[ProducerRow, ...] = ()
    receivers: tuple[ReceiveRow, ...] = ()
    if extended:
        # The one RX producer runs in this process: the CPU it last ran on is ours.
        receivers = tuple(
            ReceiveRow(
                p, _this_cpu(), int(cmap.shared.producer_record(p).read()[ProducerCounter.RX])
            )
            for p in range(cmap.producers)
        )
        rows = []
        for p in range(cmap.producers):
            enq = cmap.shared.enqueue_counters(p)
            for key, _ in list(cmap.items()):  # populated keys (keys() walks them all)
                slot = cmap.entry(key).slot
                processed, drops, flushes = (int(x) for x in enq[slot][:3])
                rows.append(ProducerRow(p, key, processed, drops, flushes))
        producers = tuple(rows)
    drops = source.live.drops if source.live is not None else None
    progress = source.reader.progress if source.reader is not None else None
    return Sample(elapsed, stats, producers, drops, progress, receivers)


def _this_cpu() -> int:
    """The CPU this process last ran on (``/proc/self/stat``'s ``processor``; -1: unknown)."""
    try:
        with open("/proc/self/stat") as f:
            return int(f.read().rpartition(")")[2].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


def _err(console: Console, text: str) -> None:
    print(f"cpumap: error: {text}", file=sys.stderr)


def setup_failure(e: HandlerSetupError) -> str:
    """A failing ``setup()`` as one message: the worker, the exception, where it was."""
    text = str(e)
    first, _, tb = text.partition("\n")
    lines = [ln for ln in tb.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "unknown error"
    where = [ln.strip() for ln in lines if ln.strip().startswith("File ")]
    at = f" ({where[-1]})" if where else ""
    return f"{first.rstrip(':')}: setup() raised {last}{at}"


def run(args: argparse.Namespace, console: Console) -> int:
    split_captures(args)
    if args.ray:
        return run_on_ray(args, console, ray_handler(args.handler))
    cpus = chosen_cpus(args)
    rx = rx_cpu(args, cpus)
    check_run(args, cpus)
    if ":" in args.program:  # import it now: a bad module is a usage error, not a crash
        try:
            load_object(args.program)
        except LoadError as e:
            raise UsageError(f"--program: {e}") from None
    handler = make_handler(args.handler, args.write)
    stop = threading.Event()
    signals = SignalStop(stop)
    try:
        source = open_source(args, stop)
        try:
            return _run(args, console, cpus, rx, handler, source, signals)
        finally:
            source.close()
    finally:
        signals.restore()


def ray_handler(name: str) -> Any:
    """The handler of a ``--ray`` run: built on each entry's node, so a module's is
    passed as its spec (loaded there) rather than as an object loaded here."""
    if name == "flow-table":
        return FlowTable()
    if name == "count":
        return Count()
    if ":" not in name:
        raise UsageError(f"--handler {name!r}: use flow-table, count, or module:function")
    return name


def _run(
    args: argparse.Namespace,
    console: Console,
    cpus: list[int],
    rx: int,
    handler: Any,
    source: Source,
    signals: SignalStop,
) -> int:
    lossless = source.lossless
    banner = (
        f"cpumap: {source.what} on CPU {rx} -> CPUs {','.join(map(str, cpus))} "
        f"({'lossless' if lossless else 'drops when a ring is full'}), program {args.program}"
        + (f", remote action {args.remote_action}" if args.remote_action != "disabled" else "")
    )
    if not args.json:
        console.print(banner, highlight=False)
    failure: str | None = None
    stuck: str | None = None
    cmap = CpuMap(max(cpus) + 1, handler=handler, batch_size=args.batch)
    with cmap:
        program = make_program(args, cmap, cpus, None)
        if args.metrics_port is not None:
            # Imported here: prometheus_client and its HTTP server cost tens of ms to
            # import, and only --metrics-port needs them.
            from ..metrics import serve

            try:
                serve(cmap, args.metrics_port)
            except OSError as e:
                raise UsageError(f"--metrics-port {args.metrics_port}: {e.strerror}") from None
            if not args.json:
                console.print(f"metrics on http://127.0.0.1:{args.metrics_port}/metrics")
        remote = remote_program(args.remote_action)
        try:
            for c in cpus:
                cmap.update(c, args.qsize, program=remote)
        except HandlerSetupError as e:
            _err(console, f"--handler {args.handler}: {setup_failure(e)}")
            return ExitStatus.USER_ERROR
        except OSError as e:  # ENOMEM: no process could be started
            raise UsageError(f"cannot start the workers: {e}") from None
        t0 = time.monotonic()
        view = View(args, console, "cpumap")
        watch = WorkerWatch()
        try:
            # Only this thread is pinned (the supervisor and the view keep their masks):
            # the RX side gets the CPU the targets leave it, as the NIC queue's CPU.
            with (
                cmap.producer(
                    program, poll_size=args.poll, backpressure=10.0 if lossless else 0.0
                ) as producer,
                pinned(rx),
            ):
                failure = _feed(producer.receive, source, cmap, view, watch, signals.stop, args, t0)
                record = cmap.shared.producer_record(producer.index).read()
                polls = int(record[ProducerCounter.POLLS])
                watch.notes.extend(pace_note(producer.room_waits, polls, rx, cpus))
            try:
                cmap.wait_idle(DRAIN_TIMEOUT)
            except TimeoutError as e:
                # A handler that never returns: closing the map kills its worker, and
                # the frames it held are counted lost (exit status 3).
                stuck = f"{e}: a handler does not return; its worker is killed"
            watch.observe(cmap)
        finally:
            view.close()
        elapsed = time.monotonic() - t0
        if stuck is not None:
            cmap.close(timeout=1.0)  # the stuck worker is killed, its frames counted lost
    # After close every entry is retired: the map's history holds their final counters
    # (and their workers' exit codes).
    entries = sorted(cmap.history, key=lambda e: (e.key, e.generation))
    final = dataclasses.replace(cmap.stats(), entries=tuple(entries))
    if stuck is not None:
        watch.notes.append(stuck)
    return summarize(
        args, console, cpus, rx, cmap, final, source, elapsed, signals.signum, failure, watch
    )


def pace_note(room_waits: int, polls: int, rx: int, cpus: list[int]) -> list[str]:
    """A hint when the workers, not the RX side, set the pace of a lossless run that keeps
    the RX CPU to itself: a costly handler may gain from a worker there too."""
    if rx in cpus or polls == 0 or room_waits < max(polls // 4, 8):
        return []
    return [
        f"the RX side on CPU {rx} waited for room in a full ring {room_waits:,} times in "
        f"{polls:,} polls: the workers set the pace.  A handler this costly may run faster "
        f"with a worker on the RX CPU too: --cpus {format_cpu_list([*cpus, rx])}"
    ]


def _feed(
    receive: Callable[[PacketBatch], None],
    source: Source,
    cmap: CpuMap,
    view: View,
    watch: WorkerWatch,
    stop: threading.Event,
    args: argparse.Namespace,
    t0: float,
) -> str | None:
    """Feed batches until the source ends, ``stop`` is set or ``--duration`` passes; the
    source's failure message, if it failed."""
    deadline = t0 + args.duration if args.duration else None
    batches = iter(source.batches)
    last_look = t0
    live = source.live
    while not stop.is_set():
        try:
            batch = live.poll_batch(0.1) if live is not None else next(batches, None)
        except CaptureError as e:
            return describe_capture_error(e, args.skip_bad)
        except OSError as e:
            return f"{source.what}: {e}"
        if batch is None and live is None:
            return None
        if batch is not None:
            receive(batch)
        now = time.monotonic()
        if view.due(now):
            sample = take_sample(cmap, source, now - t0, args.extended)
            view.show(sample, now)
            watch.observe(cmap)
            last_look = now
        elif now - last_look >= args.interval:  # no view: still watch the workers
            watch.observe(cmap)
            last_look = now
        if deadline is not None and now >= deadline:
            return None
    return None


def _captures_written(results: list[Any]) -> list[str]:
    """The capture files this run's workers wrote (CaptureSink's finish reports)."""
    out: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict) and x.get("capture"):
            out.append(str(x["capture"]))
        elif isinstance(x, list | tuple):
            for y in x:
                walk(y)

    for r in results:
        walk(r.result)
    return sorted(out)


def exit_status(
    signum: int | None,
    failure: str | None,
    final: MapStats,
    cmap: CpuMap,
    lossless: bool,
    user_errors: list[Any],
    restarts: dict[int, list[WorkerEvent]],
) -> ExitStatus:
    if signum is not None:
        return SIGNAL_STATUS[signal.Signals(signum)]
    if failure is not None:
        return ExitStatus.SOURCE
    died = any(r.exitcode not in (0, None) for r in cmap.results) or any(
        e.exitcode not in (0, None) for e in final.entries
    )
    dead = restarts or final.worker_deaths or final.broken_entries or final.abandoned
    if final.lost or died or dead or (lossless and final.queue_full):
        return ExitStatus.LOST
    if user_errors or final.handler_error or any(r.error for r in cmap.results):
        return ExitStatus.USER_ERROR
    return ExitStatus.OK


def summarize(
    args: argparse.Namespace,
    console: Console,
    cpus: list[int],
    rx: int,
    cmap: CpuMap,
    final: MapStats,
    source: Source,
    elapsed: float,
    signum: int | None,
    failure: str | None,
    watch: WorkerWatch,
) -> int:
    user_errors = sorted(cmap.user_errors(), key=lambda e: (e.cpu is not None, e.cpu, e.where))
    worker_errors = [(r.cpu, r.error) for r in cmap.results if r.error]
    notes = list(watch.notes)
    restarts = watch.deaths()
    notes.extend(watch.describe())
    for r in cmap.results:
        if r.exitcode not in (0, None):
            notes.append(f"a worker for CPU {r.cpu} exited with status {r.exitcode}")
    if source.reader is not None:
        note = non_ethernet_note(args.program, source.reader.linktypes, final.xdp_pass)
        if note:
            notes.append(note)
        if source.reader.skipped:
            notes.append(f"skipped {source.reader.skipped} damaged records")
        wide = len(getattr(source.reader, "wide_times", ()))
        if wide:
            notes.append(
                f"{wide:,} packets have timestamps past what int64 ns can hold (kept exactly "
                f"by the reader; shown saturated)"
            )
    if source.live is not None:
        notes.append(f"socket ring drops (kernel, tp_drops): {source.live.drops:,}")
    files: list[str] = []
    merged: int | None = None
    merge_error: str | None = None
    if args.write:
        files = _captures_written(cmap.results)
        if args.merge:
            try:
                merged = merge_captures(files, args.merge)
            except (OSError, CaptureError) as e:
                merge_error = f"--merge {args.merge}: {e}"
    status = exit_status(
        signum, failure or merge_error, final, cmap, source.lossless, user_errors, restarts
    )
    stopped = signal.Signals(signum).name if signum is not None else None
    if args.json:
        emit_json(
            summary_record(
                args, source, cpus, rx, final, elapsed, user_errors, worker_errors, notes, files,
                merged, stopped, failure or merge_error, status,
            )
        )  # fmt: skip
    else:
        console.print(render_entries(final))
        console.print(render_outcomes(final, elapsed))
        if args.handler == "flow-table":
            console.print(render_flows(merge_flow_tables(cmap.results), args.top))
        if user_errors:
            console.print(render_user_errors(user_errors))
        for cpu, error in worker_errors:
            console.print(f"[red]worker for CPU {cpu} reported an error:[/red]\n{error}")
        for n in notes:
            console.print(n, highlight=False)
        if files:
            console.print(f"wrote {', '.join(files)}", highlight=False)
        if merged is not None:
            console.print(f"merged {merged:,} packets into {args.merge}", highlight=False)
        if stopped:
            console.print(f"stopped by {stopped}: the frames read were drained and counted")
    if failure or merge_error:
        _err(console, failure or merge_error or "")
    if status and not args.json:
        console.print(f"exit status {int(status)}: {status.name.lower().replace('_', ' ')}")
    return int(status)


def summary_record(
    args: argparse.Namespace,
    source: Source,
    cpus: list[int],
    rx: int,
    final: MapStats,
    elapsed: float,
    user_errors: list[Any],
    worker_errors: list[tuple[int, str]],
    notes: list[str],
    files: list[str],
    merged: int | None,
    stopped: str | None,
    failure: str | None,
    status: ExitStatus,
) -> dict[str, Any]:
    """The final JSON object (docs/cli.md has the schema)."""
    counters = final.as_dict()
    entries = counters.pop("entries")
    for e in entries:  # type: ignore[union-attr]
        e["state"] = state_name(e["state"])
    outcomes = final.outcomes()
    return {
        "type": "summary",
        "source": source.what,
        "program": args.program,
        "handler": args.handler,
        "remote_action": args.remote_action,
        "cpus": cpus,
        "rx_cpu": rx,
        "lossless": source.lossless,
        "elapsed_s": round(elapsed, 6),
        "rx": final.rx,
        "outcomes": outcomes,
        "in_flight": final.in_flight,
        "accounted": final.rx == sum(outcomes.values()),
        "counters": counters,
        "entries": entries,
        "user_errors": [e.as_dict() for e in user_errors],
        "worker_errors": [{"cpu": c, "error": t} for c, t in worker_errors],
        "source_drops": source.live.drops if source.live is not None else None,
        "skipped": source.reader.skipped if source.reader is not None else 0,
        "files": files,
        "merged": merged,
        "notes": notes,
        "stopped_by": stopped,
        "error": failure,
        "exit_status": int(status),
    }
