"""What a run shows: pure functions of stats snapshots, as rich renderables or JSON records.

The live view follows ``xdp-bench redirect-cpu``: per interval, the receive rate; per
target CPU the enqueue rate, its drops (ring full) and the bulk average (frames per
flush); the worker ("kthread") rate, its drops and how often it slept (``sched``); the
second stage's pass/drop/redirect; and with ``--extended`` one row per RX producer and
CPU.  Every rate is over the last interval (the difference of two snapshots), never an
average since the start.

Everything here is a function of :class:`Sample` values (or of the records made from
them): no clock, no map, no terminal -- so a test renders a fixed input to fixed text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..engine import EnqueueRow, EntryStats, MapStats
from .report import RunReport

# -- samples and interval records ----------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Everything the live view shows, read at one moment."""

    elapsed: float  # seconds since the run started
    stats: MapStats
    source_drops: int | None = None  # live: the socket ring's own drops (tp_drops)
    progress: tuple[int, int | None] | None = None  # capture: (bytes read, file size)
    rx_ran_on: int = -1  # the CPU the RX process last ran on (-1: unknown)


def state_name(state: Any) -> str:
    """An entry state as its string value (new states show up unchanged)."""
    return str(getattr(state, "value", state))


def _rate(now: int, before: int, dt: float) -> float:
    return (now - before) / dt if dt > 0 else 0.0


def _entry_key(e: EntryStats) -> tuple[int, int]:
    return (e.key, e.generation)


def interval_record(prev: Sample | None, cur: Sample, *, extended: bool = False) -> dict[str, Any]:
    """The JSON record of the interval from ``prev`` (None: from the start) to ``cur``
    (``extended``: with a row per RX producer and per producer and CPU)."""
    s = cur.stats
    p = prev.stats if prev is not None else MapStats(map_id=s.map_id)
    dt = cur.elapsed - (prev.elapsed if prev is not None else 0.0)
    before = {_entry_key(e): e for e in p.entries}
    entries = []
    for e in sorted(s.entries, key=_entry_key):
        b = before.get(_entry_key(e)) or EntryStats(e.key, e.cpu, e.qsize, e.generation, e.state)
        flushes = e.enqueue_flushes - b.enqueue_flushes
        entries.append(
            {
                "cpu": e.cpu,
                "key": e.key,
                "generation": e.generation,
                "state": state_name(e.state),
                "pid": e.pid,
                "queued": e.queued,
                "enqueue_pps": _rate(e.enqueue_processed, b.enqueue_processed, dt),
                "enqueue_drop_pps": _rate(e.enqueue_drops, b.enqueue_drops, dt),
                "bulk_avg": (e.enqueue_processed - b.enqueue_processed) / flushes
                if flushes
                else 0.0,
                "kthread_pps": _rate(e.kthread_processed, b.kthread_processed, dt),
                "kthread_drop_pps": _rate(e.kthread_drops, b.kthread_drops, dt),
                "sched_per_s": _rate(e.kthread_sched, b.kthread_sched, dt),
                "delivered_pps": _rate(e.delivered, b.delivered, dt),
                "pass_pps": _rate(e.xdp_pass, b.xdp_pass, dt),
                "drop_pps": _rate(e.xdp_drop, b.xdp_drop, dt),
                "redirect_pps": _rate(e.xdp_redirect, b.xdp_redirect, dt),
                "lost": e.lost,
            }
        )
    producers, receivers = per_producer(prev, cur, dt) if extended else ([], [])
    outcomes = s.outcomes()
    before_out = p.outcomes()
    return {
        "type": "interval",
        "elapsed_s": round(cur.elapsed, 6),
        "interval_s": round(dt, 6),
        "rx": s.rx,
        "rx_pps": _rate(s.rx, p.rx, dt),
        "outcomes": outcomes,
        "outcomes_per_s": {k: _rate(v, before_out[k], dt) for k, v in outcomes.items()},
        "in_flight": s.in_flight,
        "entries": entries,
        "producers": producers,
        "receivers": receivers,
        "source_drops": cur.source_drops,
        "progress": progress_record(cur.progress, cur.elapsed),
    }


def per_producer(
    prev: Sample | None, cur: Sample, dt: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``-e``'s rows: per RX producer and target CPU the enqueue rate, drops and bulk
    average; per RX producer its receive rate and the CPU it ran on."""
    before = {
        (r.producer, *_entry_key(e)): r
        for e in (prev.stats.entries if prev else ())
        for r in e.enqueue_rows
    }
    producers = []
    current = (e for e in cur.stats.entries if e.state.current)  # the entries at their keys
    for e in sorted(current, key=_entry_key):
        for r in e.enqueue_rows:
            b = before.get((r.producer, *_entry_key(e))) or EnqueueRow(r.producer, 0, 0, 0)
            flushes = r.flushes - b.flushes
            producers.append(
                {
                    "producer": r.producer,
                    "cpu": e.cpu,
                    "enqueue_pps": _rate(r.processed, b.processed, dt),
                    "drop_pps": _rate(r.drops, b.drops, dt),
                    "bulk_avg": (r.processed - b.processed) / flushes if flushes else 0.0,
                }
            )
    rx_before = {p.producer: p.rx for p in (prev.stats.producers if prev else ())}
    receivers = [
        {
            "producer": p.producer,
            "cpu": cur.rx_ran_on,
            "rx_pps": _rate(p.rx, rx_before.get(p.producer, 0), dt),
        }
        for p in cur.stats.producers
    ]
    return producers, receivers


def progress_record(progress: tuple[int, int | None] | None, elapsed: float) -> dict | None:
    if progress is None:
        return None
    done, total = progress
    frac = min(done / total, 1.0) if total else None
    eta = elapsed * (1 - frac) / frac if frac else None
    return {"bytes": done, "total": total, "fraction": frac, "eta_s": eta}


# -- the live view -------------------------------------------------------------------------------


def _n(x: float) -> str:
    return f"{x:,.0f}"


def render_live(rec: dict[str, Any], *, extended: bool = False, title: str = "") -> Group:
    """The live view of one interval record (see the module docstring)."""
    head = Text(
        f"{title}  every {rec['interval_s']:.1f} s, elapsed {_clock(rec['elapsed_s'])}".strip()
    )
    parts: list[Any] = [head]
    prog = rec.get("progress")
    if prog is not None:
        parts.append(Text(progress_bar(prog)))
    t = Table(box=None, pad_edge=False, show_edge=False)
    for col, just in (
        ("", "left"),
        ("pkt/s", "right"),
        ("drop/s", "right"),
        ("bulk-avg", "right"),
        ("sched/s", "right"),
        ("queued", "right"),
        ("state", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    per_s = rec["outcomes_per_s"]
    rx_drop = per_s["xdp_drop"] + per_s["xdp_aborted"] + per_s["redirect_err"]
    t.add_row("receive total", _n(rec["rx_pps"]), _n(rx_drop), "", "", "", "")
    if extended:
        for r in rec.get("receivers", ()):
            t.add_row(
                f"  rx {r['producer']} on cpu {r['cpu']}", _n(r["rx_pps"]), "", "", "", "", ""
            )
    if rec.get("source_drops") is not None:
        t.add_row("  socket ring drops (total)", "", f"{rec['source_drops']:,}", "", "", "", "")
    for e in rec["entries"]:
        cpu = e["cpu"]
        t.add_row(
            f"enqueue to cpu {cpu}",
            _n(e["enqueue_pps"]),
            _n(e["enqueue_drop_pps"]),
            f"{e['bulk_avg']:.2f}",
            "",
            "",
            "",
        )
        if extended:
            for r in rec["producers"]:
                if r["cpu"] == cpu:
                    t.add_row(
                        f"  rx {r['producer']} -> cpu {cpu}",
                        _n(r["enqueue_pps"]),
                        _n(r["drop_pps"]),
                        f"{r['bulk_avg']:.2f}",
                        "",
                        "",
                        "",
                    )
    for e in rec["entries"]:
        t.add_row(
            f"kthread cpu {e['cpu']}",
            _n(e["kthread_pps"]),
            _n(e["kthread_drop_pps"]),
            "",
            _n(e["sched_per_s"]),
            f"{e['queued']:,}",
            e["state"] + (f" (lost {e['lost']:,})" if e["lost"] else ""),
        )
        if e["pass_pps"] or e["drop_pps"] or e["redirect_pps"]:
            t.add_row(
                "  xdp-in-kthread",
                f"pass {_n(e['pass_pps'])}",
                f"drop {_n(e['drop_pps'])}",
                f"redir {_n(e['redirect_pps'])}",
                "",
                "",
                "",
            )
    t.add_row(
        "delivered to handler",
        _n(per_s["delivered"]),
        _n(per_s["handler_drop"] + per_s["handler_error"]),
        "",
        "",
        "",
        "",
    )
    parts.append(t)
    return Group(*parts)


def progress_bar(prog: dict[str, Any], width: int = 30) -> str:
    """``[#########.....]  61%  12.1 of 19.8 MB  ETA 0:07`` (bytes read of the file)."""
    done, total, frac, eta = prog["bytes"], prog["total"], prog["fraction"], prog["eta_s"]
    if frac is None:
        return f"read {_mb(done)}"
    filled = int(frac * width)
    bar = "#" * filled + "." * (width - filled)
    left = f"  ETA {_clock(eta)}" if eta is not None else ""
    return f"[{bar}] {frac:4.0%}  {_mb(done)} of {_mb(total)}{left}"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


# -- the summary ---------------------------------------------------------------------------------


def render_entries(s: MapStats) -> Group:
    t = Table(title="per CPU", title_justify="left")
    for col in (
        "cpu",
        "qsize",
        "state",
        "enqueued",
        "full",
        "batches",
        "avg",
        "delivered",
        "dropped",
        "errors",
        "sleeps",
        "lost",
    ):
        t.add_column(col, justify="right")
    for e in sorted(s.entries, key=_entry_key):
        avg = e.kthread_processed / e.kthread_batches if e.kthread_batches else 0.0
        t.add_row(
            str(e.cpu),
            str(e.qsize),
            state_name(e.state),
            f"{e.enqueue_processed:,}",
            f"{e.enqueue_drops:,}",
            f"{e.kthread_batches:,}",
            f"{avg:.1f}",
            f"{e.delivered:,}",
            f"{e.handler_drop:,}",
            f"{e.handler_error:,}",
            f"{e.sleeps:,}",
            f"{e.lost:,}",
        )
    legend = Text(
        "full: dropped at flush, ring full; avg: frames per worker batch; "
        "dropped/errors: by the handler; lost: with a killed worker",
        style="dim",
    )
    return Group(t, legend)


def render_outcomes(s: MapStats, elapsed: float | None = None) -> Group:
    t = Table(title="every frame's outcome", title_justify="left")
    t.add_column("outcome")
    t.add_column("frames", justify="right")
    t.add_column("share", justify="right")
    rx = s.rx or 1
    t.add_row("received", f"{s.rx:,}", "")
    for name, n in s.outcomes().items():
        if n:
            t.add_row(name.replace("_", " "), f"{n:,}", f"{n / rx:.1%}")
    if s.in_flight:
        t.add_row("in flight", f"{s.in_flight:,}", f"{s.in_flight / rx:.1%}")
    balanced = s.rx == sum(s.outcomes().values())
    line = (
        "every frame accounted for" if balanced else "NOT every frame accounted for"
    ) + f": received {s.rx:,} = the sum of the outcomes above" * balanced
    if elapsed:
        line += f"; {s.rx / elapsed:,.0f} frames/s over {elapsed:.2f} s"
    return Group(t, Text(line))


def render_flows(flows: Sequence[Any], top: int) -> Table:
    t = Table(title=f"top {min(top, len(flows))} of {len(flows)} flows", title_justify="left")
    for col in ("protocol", "endpoint", "endpoint", "packets", "bytes", "cpu"):
        t.add_column(col, justify="right" if col in ("packets", "bytes") else "left")
    for f in flows[:top]:
        # Text, not markup: an IPv6 endpoint "[fd00::1]:53" would read as a style tag.
        t.add_row(
            Text(f.protocol),
            Text(f.a),
            Text(f.b),
            f"{f.packets:,}",
            f"{f.bytes:,}",
            ",".join(str(c) for c in sorted(f.cpus)),
        )
    return t


def render_user_errors(errors: Sequence[Any]) -> Group:
    """The first traceback of each kind of user-code failure, with the count of each."""
    parts: list[Any] = []
    for e in errors:
        where = f"{e.where} on CPU {e.cpu}" if e.cpu is not None else f"{e.where} (RX side)"
        n = f"{e.count:,} frame{'s' if e.count != 1 else ''}"
        parts.append(Text(f"{where}: {e.what} ({n}); the first:", "red"))
        parts.append(Text(e.first.rstrip() or "(no text kept: too many kinds)"))
    return Group(*parts)


def render_placement(report: RunReport) -> Table:
    """Per entry of a run on a Ray cluster: where it ran and what it did."""
    assert report.cluster is not None  # Invariant: only cluster runs have placements
    t = Table(title=f"entries on Ray ({report.cluster.ray_address})", title_justify="left")
    for col in ("entry", "node", "state", "pid", "restarts", "sent", "delivered", "lost"):
        t.add_column(col, justify="left" if col in ("entry", "node", "state") else "right")
    for p, e in zip(report.cluster.placements, report.stats.entries, strict=True):
        sent = e.enqueue_processed - e.enqueue_drops
        t.add_row(
            p.place, p.node, state_name(e.state), str(e.pid), str(e.restarts), f"{sent:,}",
            f"{e.delivered:,}", f"{e.lost:,}",
        )  # fmt: skip
    return t


def render_summary(report: RunReport, top: int) -> list[Any]:
    """The text summary, part by part: per entry, every outcome, the busiest flows, what
    failed in user code, the notes and what was written."""
    s = report.stats
    parts: list[Any] = [
        render_placement(report) if report.cluster is not None else render_entries(s),
        render_outcomes(s, report.elapsed),
    ]
    if report.handler == "flow-table":
        parts.append(render_flows(report.flows, top))
    if report.user_errors:
        parts.append(render_user_errors(report.user_errors))
    for cpu, error in report.worker_errors:
        parts.append(Text(f"worker for CPU {cpu} reported an error:\n{error}", "red"))
    parts.extend(Text(n) for n in report.notes)
    written = report.written
    if written.files:
        parts.append(Text(f"wrote {', '.join(written.files)}"))
    if written.merged is not None:
        parts.append(Text(f"merged {written.merged:,} packets into {written.into}"))
    if report.stopped_at_once:
        stopped = (
            f"stopped by {report.stopped_by}, then at once by {report.stopped_at_once}: "
            f"the workers were killed, what they held is counted lost"
        )
        parts.append(Text(stopped))
    elif report.stopped_by:
        stopped = f"stopped by {report.stopped_by}: the frames read were drained and counted"
        parts.append(Text(stopped))
    return parts
