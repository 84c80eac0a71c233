"""A run's report: one frozen record of what ran, every count, what went wrong and how the
run ended -- the same type for a local run and a run on a Ray cluster.

It is built once, after the map is closed, from public records only: the engine's
:class:`~cpumap.engine.MapReport` (final counters of every entry it ever had, the
workers' results, the supervisor's events, the user-code errors) or a cluster's
:class:`~cpumap.cluster.ClusterResult`, plus what the source says of itself
(:class:`~cpumap.cli.build.SourceFacts`) and how the feeding ended (:class:`Ending`).
Everything after that is a function of the report: the notes, the exit status, the text
summary (``view.py``) and the JSON summary (:meth:`RunReport.as_json`, the schema in
docs/cli.md).

Nothing here reads the clock, a map or a file.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..cpus import format_cpu_list
from ..engine import MapReport, MapStats, WorkerEvent, WorkerResult
from ..programs.user_errors import UserError
from ..sinks import FlowStats, captures_written, merge_flow_tables
from .build import SourceFacts, non_ethernet_note
from .config import RunConfig
from .errors import ExitStatus

SIGNAL_STATUS = {signal.SIGINT: ExitStatus.SIGINT, signal.SIGTERM: ExitStatus.SIGTERM}


@dataclass(frozen=True)
class Ending:
    """How feeding the map ended, as ``run.py`` saw it."""

    elapsed: float  # seconds from the first poll to the drain's end
    signum: int | None = None  # the first SIGINT/SIGTERM
    failure: str | None = None  # the source failed mid-run (a damaged capture)
    stuck: str | None = None  # the drain timed out: a handler that never returns
    producer: int = 0  # the RX producer's slot
    room_waits: int = 0  # polls in which the RX side slept for room in a full ring
    at_once: int | None = None  # a second signal: the workers were killed, not drained
    killed_lost: int = 0  # frames the close counted lost (killed workers held them)
    cut: bool = False  # the second signal cut a receive short (its frames: xdp aborted)


@dataclass(frozen=True)
class Written:
    """What ``--write``/``--merge`` produced."""

    files: tuple[str, ...] = ()
    merged: int | None = None  # packets merged into ``into``
    into: str | None = None  # --merge's file
    error: str | None = None  # the merge failed


@dataclass(frozen=True)
class Placement:
    """Where an entry ran, on a Ray cluster (added to its row of the summary)."""

    place: str  # as --cpus names it: node:cpu
    node: str
    node_id: str
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterFacts:
    """What only a run on a Ray cluster has."""

    ray_address: str
    complete: bool  # False: a source task failed (its books are missing)
    placements: tuple[Placement, ...]  # one per entry, in the order of ``stats.entries``
    nodes: tuple[dict[str, Any], ...]
    sources: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class RunReport:
    """One run, from its configuration to its exit status."""

    source: str
    program: str
    handler: str
    remote_action: str
    cpus: tuple[int | str, ...]  # the entries: CPUs, or node:cpu places on a cluster
    rx_cpu: int | None  # the RX side's CPU (None on a cluster: each source's own)
    lossless: bool
    elapsed: float
    stats: MapStats  # final; ``entries``: every entry the run had
    user_errors: tuple[UserError, ...]
    worker_errors: tuple[tuple[int, str], ...]  # (cpu, text): failed outside user code
    facts: SourceFacts
    written: Written
    notes: tuple[str, ...]
    stopped_by: str | None
    error: str | None  # the source's (or the merge's) failure
    exit_status: ExitStatus
    # The flow tables of every entry, merged (a MergedFlows: each flow described as read).
    flows: Sequence[FlowStats] = ()
    cluster: ClusterFacts | None = None
    stopped_at_once: str | None = None  # the second signal: workers killed, not drained

    @property
    def accounted(self) -> bool:
        """The identity: every frame received has exactly one outcome."""
        return self.stats.rx == sum(self.stats.outcomes().values())

    def as_json(self, top: int | None = None) -> dict[str, Any]:
        """The ``--json`` summary object (docs/cli.md has the schema); ``top``: the flows
        listed (the biggest first; None: every one), as the text summary's ``--top``."""
        counters = self.stats.as_dict()
        entries = counters.pop("entries")
        assert isinstance(entries, list)  # Invariant: as_dict renders entries as a list
        for e in entries:
            e["state"] = str(getattr(e["state"], "value", e["state"]))
        out: dict[str, Any] = {
            "type": "summary",
            "source": self.source,
            "program": self.program,
            "handler": self.handler,
            "remote_action": self.remote_action,
            "cpus": list(self.cpus),
            "rx_cpu": self.rx_cpu,
            "lossless": self.lossless,
            "elapsed_s": round(self.elapsed, 6),
            "rx": self.stats.rx,
            "outcomes": self.stats.outcomes(),
            "in_flight": self.stats.in_flight,
            "accounted": self.accounted,
            "counters": counters,
            "entries": entries,
            "user_errors": [e.as_dict() for e in self.user_errors],
            "worker_errors": [{"cpu": c, "error": t} for c, t in self.worker_errors],
            "source_drops": self.facts.drops,
            "skipped": self.facts.skipped,
            "files": list(self.written.files),
            "merged": self.written.merged,
            "notes": list(self.notes),
            "stopped_by": self.stopped_by,
            "stopped_at_once": self.stopped_at_once,
            "error": self.error,
            "exit_status": int(self.exit_status),
            "flows_total": len(self.flows),
            "flows": [flow_json(f) for f in self.flows[:top]],
        }
        if self.cluster is not None:
            add_cluster_fields(out, self.cluster)
        return out


def flow_json(f: FlowStats) -> dict[str, Any]:
    """One flow of the merged flow table, as the JSON summary lists it."""
    return {
        "protocol": f.protocol,
        "a": f.a,
        "b": f.b,
        "packets": f.packets,
        "bytes": f.bytes,
        "cpus": sorted(f.cpus),
    }


def add_cluster_fields(out: dict[str, Any], cluster: ClusterFacts) -> None:
    """The cluster-only facts, as fields added to the local schema: where each entry ran
    (in its row), the nodes and the sources."""
    for row, p in zip(out["entries"], cluster.placements, strict=True):
        row.update(place=p.place, node=p.node, node_id=p.node_id, failures=list(p.failures))
    out["ray_address"] = cluster.ray_address
    out["complete"] = cluster.complete
    out["nodes"] = list(cluster.nodes)
    out["sources"] = list(cluster.sources)


# -- a local run ------------------------------------------------------------------------------


def local_report(
    config: RunConfig, facts: SourceFacts, mine: MapReport, ending: Ending, written: Written
) -> RunReport:
    """The report of a run on this machine's map, closed."""
    stats = mine.stats
    failure = ending.failure or written.error
    worker_errors = tuple((r.cpu, r.error) for r in mine.results if r.error)
    user_errors = tuple(sorted(mine.user_errors, key=_user_error_order))
    notes = (
        *unopened_note(facts),
        *at_once_note(ending),
        *(
            [f"the files in {config.write} are incomplete: their workers were killed"]
            if ending.at_once is not None and config.write is not None
            else []
        ),
        *pace_note(ending.room_waits, _polls(stats, ending.producer), config),
        *((ending.stuck,) if ending.stuck else ()),
        *event_notes(mine.events),
        *exit_notes(mine.results),
        *source_notes(config.program.name, facts, stats.xdp_pass),
    )
    status = local_exit_status(ending, failure, mine, facts.lossless)
    return RunReport(
        source=facts.what,
        program=config.program.name,
        handler=config.handler.name,
        remote_action=config.program.remote_action,
        cpus=config.cpus,
        rx_cpu=config.rx_cpu,
        lossless=facts.lossless,
        elapsed=ending.elapsed,
        stats=stats,
        user_errors=user_errors,
        worker_errors=worker_errors,
        facts=facts,
        written=written,
        notes=notes,
        stopped_by=signal.Signals(ending.signum).name if ending.signum is not None else None,
        error=failure,
        exit_status=status,
        flows=_flows(config, mine.results),
        stopped_at_once=(
            signal.Signals(ending.at_once).name if ending.at_once is not None else None
        ),
    )


def _user_error_order(e: UserError) -> tuple[bool, int, str]:
    return (e.cpu is not None, e.cpu if e.cpu is not None else -1, e.where)


def _polls(stats: MapStats, producer: int) -> int:
    return next((p.polls for p in stats.producers if p.producer == producer), 0)


def _flows(config: RunConfig, results: Iterable[Any]) -> Sequence[FlowStats]:
    # Lazy: the summary formats only the flows it shows (its top N), not every flow.
    return merge_flow_tables(results) if config.handler.name == "flow-table" else ()


def local_exit_status(
    ending: Ending, failure: str | None, mine: MapReport, lossless: bool
) -> ExitStatus:
    """``ExitStatus``'s order: a signal, a failed source, lost frames, user-code errors."""
    if ending.signum is not None:
        return SIGNAL_STATUS[signal.Signals(ending.signum)]
    if failure is not None:
        return ExitStatus.SOURCE
    s = mine.stats
    # A drained worker whose finish() failed (it exited without its report) lost nothing:
    # that is the user's code failing, named in the notes, not a death.
    died = any(r.exitcode not in (0, None) and not r.finish_error for r in mine.results) or any(
        e.exitcode not in (0, None) and not e.finish_error for e in s.entries
    )
    deaths = any(ev.kind == "died" for ev in mine.events)
    dead = deaths or s.worker_deaths or s.broken_entries or s.abandoned
    if s.lost or died or dead or (lossless and s.queue_full):
        return ExitStatus.LOST
    if (
        mine.user_errors
        or s.handler_error
        or s.finish_failures
        or any(r.error for r in mine.results)
    ):
        return ExitStatus.USER_ERROR
    return ExitStatus.OK


def unopened_note(facts: SourceFacts) -> list[str]:
    """A capture (a FIFO, a pipe) whose header never came before the stop."""
    if facts.unopened is None:
        return []
    why = "--duration passed" if facts.unopened == "deadline" else "the run was stopped"
    return [f"{facts.what}: {why} before a capture header came; nothing was read"]


def at_once_note(ending: Ending) -> list[str]:
    """What a second signal cost: the workers killed, the frames they held (queued in
    their rings or in their hands) counted lost, the batch being received counted
    aborted.  Said here so that the summary's text balances with its table."""
    if ending.at_once is None:
        return []
    name = signal.Signals(ending.at_once).name
    aborted = "; the batch it cut short is counted xdp aborted" if ending.cut else ""
    return [
        f"stopped at once by a second signal ({name}): the workers were killed without "
        f"draining or finish(); {ending.killed_lost:,} frames they held are counted "
        f"lost{aborted}"
    ]


def pace_note(room_waits: int, polls: int, config: RunConfig) -> list[str]:
    """A hint when the workers, not the RX side, set the pace of a lossless run that keeps
    the RX CPU to itself: a costly handler may gain from a worker there too."""
    rx, cpus = config.rx_cpu, list(config.cpus)
    if rx is None or rx in cpus or polls == 0 or room_waits < max(polls // 4, 8):
        return []
    return [
        f"the RX side on CPU {rx} waited for room in a full ring {room_waits:,} times in "
        f"{polls:,} polls: the workers set the pace.  A handler this costly may run faster "
        f"with a worker on the RX CPU too: --cpus {format_cpu_list([*cpus, rx])}"
    ]


def event_notes(events: Sequence[WorkerEvent]) -> list[str]:
    """One line per CPU whose worker died, and per broken entry, stuck worker and dead
    RX producer (the supervisor's events)."""
    lines = []
    deaths: dict[int, list[WorkerEvent]] = {}
    for ev in events:
        if ev.kind == "died":
            deaths.setdefault(ev.cpu, []).append(ev)
    for cpu, died in sorted(deaths.items()):
        how = ", ".join(f"pid {d.pid} {exit_text(d.exitcode)}" for d in died)
        lost = sum(d.lost for d in died)
        lines.append(
            f"the worker for CPU {cpu} died {len(died)} time(s) ({how}); "
            f"{lost:,} frames it held are counted lost"
        )
    for ev in events:
        if ev.kind == "broken":
            queued = (
                f"; the {ev.lost:,} frames queued in its ring are counted lost" if (ev.lost) else ""
            )
            lines.append(
                f"CPU {ev.cpu} is broken: its worker kept dying and was not restarted; "
                f"frames redirected to it count as redirect errors{queued}"
            )
        elif ev.kind == "stuck":
            lines.append(f"the worker for CPU {ev.cpu} (pid {ev.pid}) made no progress")
        elif ev.kind == "starved":
            lines.append(
                f"RX producer {ev.key} had no free frame for the stuck threshold: every "
                "frame of its pool partition was held elsewhere (a handler keeping frames, "
                "or a handler's child process consuming them)"
            )
        elif ev.kind == "producer_died":
            lines.append(f"RX producer {ev.key} (pid {ev.pid}) died; its frames are counted")
    return lines


def exit_text(code: int | None) -> str:
    """``killed by SIGKILL`` / ``exited with status 5``."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def exit_notes(results: Sequence[WorkerResult]) -> list[str]:
    return [
        f"a worker for CPU {r.cpu} exited with status {r.exitcode}"
        for r in results
        if r.exitcode not in (0, None)
    ]


def source_notes(program: str, facts: SourceFacts, xdp_pass: int) -> list[str]:
    """What the source adds to the summary: link types the program cannot parse, damaged
    records skipped, times past int64 ns, a live socket's own drops."""
    notes = []
    note = non_ethernet_note(program, facts.linktypes, xdp_pass)
    if note:
        notes.append(note)
    if facts.skipped:
        notes.append(f"skipped {facts.skipped} damaged records")
    if facts.wide_times:
        notes.append(
            f"{facts.wide_times:,} packets have timestamps past what int64 ns can hold (kept "
            f"exactly by the reader; shown saturated)"
        )
    if facts.drops is not None:
        notes.append(f"{facts.drops_what}: {facts.drops:,}")
    return notes


def written_by(results: Sequence[WorkerResult]) -> tuple[str, ...]:
    """The capture files this run's workers wrote (``--write``)."""
    return tuple(sorted(captures_written(r.result for r in results)))


# -- a run on a Ray cluster ---------------------------------------------------------------------


def cluster_report(config: RunConfig, result: Any, elapsed: float) -> RunReport:
    """The report of a run whose entries were Ray actors (``result``: a ClusterResult)."""
    stats: MapStats = result.stats
    failed = [f"{s.path} on {s.node}: {s.error}" for s in result.sources if s.error]
    cluster = ClusterFacts(
        ray_address=result.ray_address,
        complete=result.complete,
        placements=tuple(
            Placement(e.place, e.node, e.node_id, tuple(e.failures)) for e in result.entries
        ),
        nodes=tuple(asdict(n) for n in result.nodes),
        sources=tuple(asdict(s) for s in result.sources),
    )
    facts = SourceFacts(", ".join(s.path for s in result.sources), config.source.lossless)
    return RunReport(
        source=facts.what,
        program=config.program.name,
        handler=config.handler.name,
        remote_action=config.program.remote_action,
        cpus=tuple(e.place for e in result.entries),
        rx_cpu=None,
        lossless=facts.lossless,
        elapsed=elapsed,
        stats=stats,
        user_errors=tuple(sorted(result.user_errors, key=_user_error_order)),
        worker_errors=(),
        facts=facts,
        written=Written(),
        notes=tuple(failed),
        stopped_by=None,
        error=failed[0] if failed else None,
        exit_status=cluster_exit_status(result),
        flows=_flows(config, result.results),
        cluster=cluster,
    )


def cluster_exit_status(result: Any) -> ExitStatus:
    """The exit statuses of a local run (``docs/cli.md``), from a cluster's result."""
    s: MapStats = result.stats
    # A source task that failed, or one that stopped at a damaged capture: as a local run
    # that stops at one (its books still balance, and the summary says where).
    if not result.complete or any(src.error for src in result.sources):
        return ExitStatus.SOURCE
    if s.lost or s.in_flight or any(e.restarts for e in result.entries):
        return ExitStatus.LOST
    if s.handler_error or s.xdp_aborted:
        return ExitStatus.USER_ERROR
    return ExitStatus.OK
