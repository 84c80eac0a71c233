"""What a ``--kernel`` run shows: its samples, interval records, report, and their renderings.

A run of the kernel's own cpumap (``cpumap run --iface IF --kernel``, driven by
``kernel_run.py``) has no engine counters: its figures are read from the kernel.  A
:class:`KernelSample` holds them at one moment -- the steering program's own per-CPU counts
(every frame the XDP hook ran it on, under its one outcome), each entry's second-stage
count (``delivered``: frames that reached that CPU), and, where the host lets us count the
tracepoints (:mod:`cpumap.kernel.tracepoint_counts`), the ``xdp_cpumap_enqueue`` and
``xdp_cpumap_kthread`` totals per CPU.  Everything here is a pure function of samples, as
``view.py`` is of the engine's: the live view keeps its table and rows (``xdp-bench
redirect-cpu``'s), a figure the host cannot give shows as ``n/a``.

The books, and why they must balance:

* ``rx == sum(outcomes)``: the program counts each frame once, under the CPU it was
  redirected to or its other verdict (``xdp_aborted`` includes the redirects the helper
  refused: ``docs/kernel-differences.md`` K1).
* per CPU, ``delivered + enqueue drops == redirected`` once no frame is in flight (the
  link is closed first, so nothing new arrives; the run waits for the kthreads): every
  frame redirected is flushed towards the CPU's ring, and either finds it full or is run
  through the second stage.  Without the tracepoints the drops are not known and this
  identity is not checked (the summary says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..kernel.tracepoint_counts import CpuTracepointCounts
from .errors import ExitStatus

VERDICT_NAMES = {0: "xdp_aborted", 1: "xdp_drop", 2: "xdp_pass", 3: "xdp_tx"}
NA = "n/a"


@dataclass(frozen=True)
class KernelSample:
    """The kernel's counters at one moment of a ``--kernel`` run."""

    elapsed: float  # seconds since the program was attached
    rx_cpus: dict[int, int] = field(default_factory=dict)  # frames the hook saw, by RX CPU
    redirected: dict[int, int] = field(default_factory=dict)  # by target CPU
    verdicts: dict[int, int] = field(default_factory=dict)  # other verdicts, by verdict
    delivered: dict[int, int] = field(default_factory=dict)  # second stage ran, by CPU
    tracepoints: dict[int, CpuTracepointCounts] | None = None  # None: n/a here

    @property
    def rx(self) -> int:
        return sum(self.rx_cpus.values())

    def outcomes(self) -> dict[str, int]:
        """Every frame's outcome at the hook: redirected (to any CPU), or another verdict."""
        out = {"redirected": sum(self.redirected.values())}
        out.update({name: self.verdicts.get(v, 0) for v, name in VERDICT_NAMES.items()})
        return out


def _rate(now: int, before: int, dt: float) -> float:
    return (now - before) / dt if dt > 0 else 0.0


def _tp_rates(
    cur: CpuTracepointCounts | None, prev: CpuTracepointCounts | None, dt: float
) -> dict[str, float | None]:
    """The tracepoint figures of one CPU over an interval (None each where n/a)."""
    names = ("enqueue_pps", "enqueue_drop_pps", "bulk_avg", "kthread_drop_pps", "sched_per_s")
    names += ("pass_pps", "drop_pps", "redirect_pps")
    if cur is None:
        return dict.fromkeys(names)
    b = prev or CpuTracepointCounts(cur.cpu)
    flushes = cur.enqueue_flushes - b.enqueue_flushes
    processed = cur.enqueue_processed - b.enqueue_processed
    return {
        "enqueue_pps": _rate(cur.enqueue_processed, b.enqueue_processed, dt),
        "enqueue_drop_pps": _rate(cur.enqueue_drops, b.enqueue_drops, dt),
        "bulk_avg": processed / flushes if flushes else 0.0,
        "kthread_drop_pps": _rate(cur.kthread_drops, b.kthread_drops, dt),
        "sched_per_s": _rate(cur.kthread_sched, b.kthread_sched, dt),
        "pass_pps": _rate(cur.xdp_pass, b.xdp_pass, dt),
        "drop_pps": _rate(cur.xdp_drop, b.xdp_drop, dt),
        "redirect_pps": _rate(cur.xdp_redirect, b.xdp_redirect, dt),
    }


def _kthread_counts(
    tp: CpuTracepointCounts | None,
    tp_prev: CpuTracepointCounts | None,
    delivered: int,
    prev: KernelSample,
    cpu: int,
) -> tuple[int, int]:
    """The kthread's frames now and at ``prev``: the tracepoint's, else the second stage's
    (every frame a kthread takes runs through it: the same count)."""
    if tp is None:
        return delivered, prev.delivered.get(cpu, 0)
    return tp.kthread_processed, tp_prev.kthread_processed if tp_prev else 0


def kernel_interval_record(
    prev: KernelSample | None, cur: KernelSample, cpus: tuple[int, ...]
) -> dict[str, Any]:
    """The JSON record of the interval from ``prev`` (None: from the attach) to ``cur``."""
    p = prev or KernelSample(0.0)
    dt = cur.elapsed - p.elapsed
    entries = []
    for cpu in cpus:
        tp = cur.tracepoints.get(cpu) if cur.tracepoints is not None else None
        tp_prev = p.tracepoints.get(cpu) if p.tracepoints is not None else None
        delivered = cur.delivered.get(cpu, 0)
        entries.append(
            {
                "cpu": cpu,
                "redirected_pps": _rate(cur.redirected.get(cpu, 0), p.redirected.get(cpu, 0), dt),
                "delivered_pps": _rate(delivered, p.delivered.get(cpu, 0), dt),
                "kthread_pps": _rate(*_kthread_counts(tp, tp_prev, delivered, p, cpu), dt),
                **_tp_rates(tp, tp_prev, dt),
            }
        )
    outcomes, before = cur.outcomes(), p.outcomes()
    return {
        "type": "interval",
        "elapsed_s": round(cur.elapsed, 6),
        "interval_s": round(dt, 6),
        "rx": cur.rx,
        "rx_pps": _rate(cur.rx, p.rx, dt),
        "receivers": [
            {"cpu": c, "rx_pps": _rate(n, p.rx_cpus.get(c, 0), dt)}
            for c, n in sorted(cur.rx_cpus.items())
        ],
        "outcomes": outcomes,
        "outcomes_per_s": {k: _rate(v, before[k], dt) for k, v in outcomes.items()},
        "entries": entries,
        "tracepoints": cur.tracepoints is not None,
    }


# -- the live view -------------------------------------------------------------------------------


def _n(x: float | None) -> str:
    return NA if x is None else f"{x:,.0f}"


def render_kernel_live(rec: dict[str, Any], *, extended: bool = False, title: str = "") -> Group:
    """The live view of one interval record: ``view.render_live``'s table and rows."""
    head = Text(f"{title}  every {rec['interval_s']:.1f} s, elapsed {rec['elapsed_s']:.0f} s")
    t = Table(box=None, pad_edge=False, show_edge=False)
    for col, just in (("", "left"), ("pkt/s", "right"), ("drop/s", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for col in ("bulk-avg", "sched/s"):
        t.add_column(col, justify="right")
    per_s = rec["outcomes_per_s"]
    t.add_row("receive total", _n(rec["rx_pps"]), _n(per_s["xdp_drop"] + per_s["xdp_aborted"]))
    if extended:
        for r in rec["receivers"]:
            t.add_row(f"  rx on cpu {r['cpu']}", _n(r["rx_pps"]), "", "", "")
    for e in rec["entries"]:
        bulk = NA if e["bulk_avg"] is None else f"{e['bulk_avg']:.2f}"
        t.add_row(
            f"enqueue to cpu {e['cpu']}", _n(e["enqueue_pps"]), _n(e["enqueue_drop_pps"]), bulk
        )
    for e in rec["entries"]:
        t.add_row(
            f"kthread cpu {e['cpu']}",
            _n(e["kthread_pps"]),
            _n(e["kthread_drop_pps"]),
            "",
            _n(e["sched_per_s"]),
        )
        t.add_row(
            "  xdp-in-kthread",
            f"pass {_n(e['pass_pps'])}",
            f"drop {_n(e['drop_pps'])}",
            f"redir {_n(e['redirect_pps'])}",
            "",
        )
    parts: list[Any] = [head, t]
    if not rec["tracepoints"]:
        parts.append(Text("n/a: the cpumap tracepoints cannot be counted here", style="dim"))
    return Group(*parts)


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelReport:
    """One ``--kernel`` run, from its configuration to its exit status."""

    source: str  # "interface IF (kernel cpumap, native XDP)"
    program: str
    remote_action: str
    redirect_device: str | None
    xdp_mode: str
    cpus: tuple[int, ...]
    qsize: int
    final: KernelSample  # read after the detach, once the kthreads had settled
    settled: bool  # the kthreads had emptied their rings within the deadline
    tracepoints_note: str | None  # why the tracepoint figures are n/a (None: they are not)
    stopped_by: str | None  # "SIGINT", "SIGTERM"
    exit_status: ExitStatus

    def cpu_rows(self) -> list[dict[str, Any]]:
        """Per target CPU: what was redirected there and what became of it."""
        f, rows = self.final, []
        for cpu in self.cpus:
            tp = f.tracepoints.get(cpu) if f.tracepoints is not None else None
            redirected, delivered = f.redirected.get(cpu, 0), f.delivered.get(cpu, 0)
            row: dict[str, Any] = {"cpu": cpu, "redirected": redirected, "delivered": delivered}
            fields = (
                "enqueue_processed", "enqueue_drops", "enqueue_flushes", "kthread_processed",
                "kthread_drops", "kthread_sched", "kthread_batches", "xdp_pass", "xdp_drop",
                "xdp_redirect",
            )  # fmt: skip
            row.update({k: getattr(tp, k) if tp else None for k in fields})
            row["bulk_avg"] = tp.bulk_avg if tp else None
            row["unaccounted"] = redirected - delivered - tp.enqueue_drops if tp else None
            rows.append(row)
        return rows

    @property
    def accounted(self) -> bool:
        """Both identities: every frame at the hook has one outcome; every frame redirected
        to a CPU reached it or was dropped at its full ring (where the drops are known)."""
        rows = self.cpu_rows()
        per_cpu = all(r["unaccounted"] in (0, None) for r in rows)
        return self.final.rx == sum(self.final.outcomes().values()) and per_cpu

    def notes(self) -> list[str]:
        notes = []
        if self.tracepoints_note:
            notes.append(
                f"enqueue and kthread figures n/a: {self.tracepoints_note}; the per-CPU "
                "identity (delivered + enqueue drops = redirected) is not checked"
            )
        if not self.settled:
            notes.append("the kthreads had not emptied their rings when the figures were read")
        for r in self.cpu_rows():
            if r["unaccounted"]:
                notes.append(
                    f"CPU {r['cpu']}: {r['unaccounted']:,} frames redirected there neither "
                    "reached it nor were dropped at its ring"
                )
        return notes

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` summary object of a ``--kernel`` run (docs/cli.md)."""
        f = self.final
        return {
            "type": "summary",
            "kernel": True,
            "source": self.source,
            "xdp_mode": self.xdp_mode,
            "program": self.program,
            "remote_action": self.remote_action,
            "redirect_device": self.redirect_device,
            "cpus": list(self.cpus),
            "qsize": self.qsize,
            "elapsed_s": round(f.elapsed, 6),
            "rx": f.rx,
            "rx_cpus": [{"cpu": c, "rx": n} for c, n in sorted(f.rx_cpus.items())],
            "outcomes": f.outcomes(),
            "accounted": self.accounted,
            "entries": self.cpu_rows(),
            "tracepoints": self.tracepoints_note is None,
            "notes": self.notes(),
            "stopped_by": self.stopped_by,
            "error": None,
            "exit_status": int(self.exit_status),
        }


def _c(x: int | float | None) -> str:
    return NA if x is None else f"{x:,}" if isinstance(x, int) else f"{x:.2f}"


def render_kernel_summary(report: KernelReport) -> list[Any]:
    """The text summary: per CPU, every outcome with the identities, the notes."""
    t = Table(title="per CPU (the kernel's counters)", title_justify="left")
    cols = ("cpu", "redirected", "enqueued", "full", "bulk-avg", "kthread", "sched")
    for col in (*cols, "pass", "drop", "redir", "delivered"):
        t.add_column(col, justify="right")
    for r in report.cpu_rows():
        t.add_row(
            str(r["cpu"]), _c(r["redirected"]), _c(r["enqueue_processed"]),
            _c(r["enqueue_drops"]), _c(r["bulk_avg"]), _c(r["kthread_processed"]),
            _c(r["kthread_sched"]), _c(r["xdp_pass"]), _c(r["xdp_drop"]),
            _c(r["xdp_redirect"]), _c(r["delivered"]),
        )  # fmt: skip
    legend = Text(
        "redirected: by the steering program; full: dropped at flush, ring full; "
        "kthread: frames the CPU's kthread took; delivered: its second stage ran on them",
        style="dim",
    )
    return [Group(t, legend), _render_outcomes(report), *(Text(n) for n in report.notes())]


def _render_outcomes(report: KernelReport) -> Group:
    f = report.final
    t = Table(title="every frame's outcome at the XDP hook", title_justify="left")
    t.add_column("outcome")
    t.add_column("frames", justify="right")
    t.add_column("share", justify="right")
    rx = f.rx or 1
    t.add_row("received", f"{f.rx:,}", "")
    for cpu, n in sorted(f.redirected.items()):
        t.add_row(f"redirected to cpu {cpu}", f"{n:,}", f"{n / rx:.1%}")
    for name, n in f.outcomes().items():
        if n and name != "redirected":
            t.add_row(name.replace("_", " "), f"{n:,}", f"{n / rx:.1%}")
    ok = report.accounted
    line = ("every frame accounted for" if ok else "NOT every frame accounted for") + (
        f": received {f.rx:,} = the sum of the outcomes above" * ok
    )
    if ok and report.tracepoints_note is None:
        line += "; per CPU, delivered + dropped at a full ring = redirected"
    if f.elapsed:
        line += f"; {f.rx / f.elapsed:,.0f} frames/s over {f.elapsed:.2f} s"
    parts: list[Any] = [t, Text(line)]
    if report.stopped_by:
        parts.append(Text(f"stopped by {report.stopped_by}: detached, the rings drained"))
    return Group(*parts)
