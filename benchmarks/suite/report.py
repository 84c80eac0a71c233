"""The table of ratios, the goals of the performance issue, JSON and the plot."""

from __future__ import annotations

import json
import statistics
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .common import Row


def set_ratios(rows: dict[str, Row]) -> None:
    """Each measured row's ratio to its baseline (when the baseline was measured)."""
    for row in rows.values():
        base = rows.get(row.baseline) if row.baseline else None
        if row.fps is None:
            continue
        if base is None or base.fps is None:
            if row.skipped is None and row.baseline:
                row.skipped = f"baseline {row.baseline} not measured"
            continue
        row.ratio = paired_ratio(row, base) or row.fps / base.fps


def paired_ratio(row: Row, base: Row) -> float | None:
    """The median of per-round ratios, when both rows ran in the same rounds."""
    group = row.extra.get("round_group")
    if group is None or group != base.extra.get("round_group"):
        return None
    if len(row.runs) != len(base.runs) or not row.runs:
        return None
    return statistics.median(a / b for a, b in zip(row.runs, base.runs, strict=True) if b)


def _ratio(rows: dict[str, Row], a: str, b: str) -> float | None:
    ra, rb = rows.get(a), rows.get(b)
    if ra is None or rb is None or ra.fps is None or rb.fps is None:
        return None
    return paired_ratio(ra, rb) or ra.fps / rb.fps


JOB_GOAL_PACKETS = 2_000_000  # the main-job capture (the full mode's)


def goals(rows: dict[str, Row], costs: dict[str, Any], machine: dict[str, Any]) -> list[dict]:
    """The issue's goals, each with its measured value and whether it is met (None: not
    measured here, with the reason)."""
    out: list[dict[str, Any]] = []

    def goal(name: str, value: float | None, target: float, *, at_most: bool = False) -> None:
        met = None if value is None else (value <= target if at_most else value >= target)
        out.append({"goal": name, "value": value, "target": target, "at_most": at_most, "met": met})

    best = {size: best_pipeline(rows, size) for size in (64, 1500)}
    goal(
        "per-frame handler, 1 worker / dpkt loop",
        _ratio(rows, "ours.frame_handler", "loop.dpkt"),
        10,
    )
    goal(
        "per-frame handler, 1 worker / Skb loop", _ratio(rows, "ours.frame_handler", "loop.skb"), 3
    )
    goal("framework cost per frame (µs)", costs.get("framework_us"), 0.5, at_most=True)
    goal(
        "per-frame program + handler / Skb loop",
        _ratio(rows, "ours.frame_program", "loop.skb"),
        1.5,
    )
    goal(
        "second-stage DROP / kernel remote XDP_DROP",
        _ratio(rows, "ours.second_stage_drop", "kernel.xdp_drop"),
        1.0,
    )
    for size, target in ((64, 4), (1500, 6)):
        value = _ratio(rows, f"ours.batch_touch_{size}", best[size]) if best[size] else None
        goal(f"batch handler, both CPUs / best pipeline, {size} B", value, target)
    job = rows.get("job.cpumap_run")
    packets = costs.get("job_packets")
    job_goals = (
        ("main job frames/s (M)", job.fps / 1e6 if job and job.fps else None, 1.0),
        ("main job / tshark -z conv", _ratio(rows, "job.cpumap_run", "job.tshark"), 25),
        ("main job / nfpcapd, wall (issue 20)", _ratio(rows, "job.cpumap_run", "job.nfpcapd"), 1.5),
    )
    if packets is not None and packets < JOB_GOAL_PACKETS:
        # Start-up (~0.3 s) weighs on a small capture as it does not on the goal's 2 M.
        why = f"the goal is for {JOB_GOAL_PACKETS:,} packets; this capture has {packets:,}"
        for name, _, target in job_goals:
            out.append(
                {"goal": name, "value": None, "target": target, "at_most": False, "met": None,
                 "skipped": why}
            )  # fmt: skip
    else:
        for name, value, target in job_goals:
            goal(name, value, target)
    out.append(flow_table_goal(costs.get("flow_table")))
    goal(
        "cluster map / local map, CLI defaults, one host (issue 22)",
        _ratio(rows, "cluster.ray", "cluster.local"),
        0.7,
    )
    out += live_goals(rows)
    rss = costs.get("rss_max_growth")
    goal("RSS growth over the run (%)", None if rss is None else 100 * rss, 5, at_most=True)
    out.append(
        {
            "goal": "per-frame handlers scale >= 0.8 x W on 16 cores",
            "value": None,
            "target": 0.8,
            "at_most": False,
            "met": None,
            "skipped": f"needs a 16-core machine; this one has {machine.get('cpus')}",
        }
    )
    return out


def flow_table_goal(check: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 20: cpumap's flow table equals the dpkt script's (packets and bytes per flow);
    the value is the number of flows that differ."""
    name = "main job: flow table = the dpkt script's (flows that differ)"
    if check is None or check.get("equal") is None:
        why = (check or {}).get("skipped") or "the main job did not run"
        return {"goal": name, "value": None, "target": 0, "at_most": True, "met": None,
                "skipped": why}  # fmt: skip
    return {"goal": name, "value": check["mismatches"], "target": 0, "at_most": True,
            "met": check["equal"]}  # fmt: skip


LIVE_GOAL_RATIO = 2.0  # issue 18: AF_XDP >= 2x TPACKET_V3 at the same offered load (stretch 3x)
LIVE_GOAL_RX_US = 0.3  # issue 18: AF_XDP's RX side (kernel + user) per frame


def live_goals(rows: dict[str, Row]) -> list[dict[str, Any]]:
    """Issue 18's goals, from the live rows (``suite.live``)."""
    names = (
        "live: AF_XDP / TPACKET_V3 frames/s, same offered load (stretch 3)",
        "live: AF_XDP RX side, kernel + user, per frame (µs)",
    )
    xsk, tp = rows.get("live.af_xdp"), rows.get("live.tpacket")
    why = next((r.skipped for r in (xsk, tp) if r is not None and r.skipped), None)
    if xsk is None or tp is None or why or xsk.fps is None or tp.fps is None:
        why = why or "the live rows did not run (--only live)"
        return [
            {"goal": n, "value": None, "target": t, "at_most": m, "met": None, "skipped": why}
            for n, t, m in zip(
                names, (LIVE_GOAL_RATIO, LIVE_GOAL_RX_US), (False, True), strict=True
            )
        ]
    ratio = paired_ratio(xsk, tp) or xsk.fps / tp.fps
    rx_ns = [xsk.extra.get("rx_kernel_ns"), xsk.extra.get("rx_user_ns")]
    rx_us = sum(rx_ns) / 1e3 if None not in rx_ns else None
    return [
        {"goal": names[0], "value": ratio, "target": LIVE_GOAL_RATIO, "at_most": False,
         "met": ratio >= LIVE_GOAL_RATIO},
        {"goal": names[1], "value": rx_us, "target": LIVE_GOAL_RX_US, "at_most": True,
         "met": None if rx_us is None else rx_us <= LIVE_GOAL_RX_US},
    ]  # fmt: skip


def live_note(extra: dict[str, Any]) -> str:
    """A live row's note: the load, where frames were dropped, the CPU per frame."""
    sent = extra.get("sent") or 0

    def share(key: str) -> str:
        return f"{(extra.get(key) or 0) / sent:.0%}" if sent else "-"

    def ns(key: str) -> str:
        v = extra.get(key)
        return "-" if v is None else f"{v:.0f}"

    offered, rate = extra.get("offered") or 0, extra.get("rate") or 0
    short = " (the generator fell short: its CPU was busy)" if offered < 0.9 * rate else ""
    return (
        f"offered {offered / 1e6:.2f} M/s{short}; dropped at B's ring "
        f"{share('tx_drops')}, source {share('source_drops')}, map {share('map_drops')}; "
        f"unaccounted {extra.get('unaccounted', '-')}; ns/frame: RX kernel {ns('rx_kernel_ns')}"
        f" + user {ns('rx_user_ns')}, worker {ns('worker_ns')}; one CPU's worth "
        f"{(extra.get('cpu_fps') or 0) / 1e6:.2f} M/s; it had {extra.get('cpu_share', 0):.0%}"
        " of a CPU"
    )


def best_pipeline(rows: dict[str, Row], size: int) -> str | None:
    measured = [
        r for k, r in rows.items() if k.startswith("pipe.") and k.endswith(f"_{size}") and r.fps
    ]
    return max(measured, key=lambda r: r.fps or 0).key if measured else None


def _fps(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.3f} M" if v < 1e6 else f"{v / 1e6:.2f} M"


def render(result: dict[str, Any], console: Console) -> None:
    t = Table(
        title=f"cpumap bench ({result['mode']}) -- {result['machine_line']}", title_justify="left"
    )
    for col in ("group", "path", "frames/s", "vs", "ratio", "note"):
        t.add_column(col, justify="right" if col in ("frames/s", "ratio") else "left")
    rows = result["rows"]
    for r in rows:
        if r["skipped"]:
            note = r["skipped"]
        elif r["group"] == "live":
            note = live_note(r["extra"])
        else:
            note = ", ".join(
                f"{k} {_short(v)}" for k, v in r["extra"].items() if k != "round_group"
            )
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        t.add_row(
            r["group"], Text(r["name"]), _fps(r["fps"]), r["baseline"] or "", ratio, Text(note)
        )
    console.print(t)
    g = Table(title="goals (issue 10; live: issue 18; main job: issue 20)", title_justify="left")
    for col in ("goal", "measured", "target", "met"):
        g.add_column(col, justify="left" if col == "goal" else "right")
    for goal in result["goals"]:
        value = "-" if goal["value"] is None else f"{goal['value']:.2f}"
        target = ("<= " if goal["at_most"] else ">= ") + f"{goal['target']:g}"
        met = {True: "yes", False: "NO", None: goal.get("skipped") or "not measured"}[goal["met"]]
        g.add_row(Text(goal["goal"]), value, target, Text(met))
    console.print(g)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def write_json(result: dict[str, Any], path: str) -> None:
    text = json.dumps(result, indent=2, default=str)
    if path == "-":
        print(text)
        return
    with open(path, "w") as f:
        f.write(text + "\n")


def plot(result: dict[str, Any], path: str) -> str | None:
    """Draw frames/s per path (log scale) to ``path``; returns why not, if it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib not installed ({e}); pip install 'cpumap[plot]'"
    rows = [r for r in result["rows"] if r["fps"]]
    groups = sorted({r["group"] for r in rows})
    colors = {g: f"C{i}" for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
    names = [r["name"] for r in rows][::-1]
    values = [r["fps"] for r in rows][::-1]
    ax.barh(names, values, color=[colors[r["group"]] for r in rows][::-1])
    for y, r in enumerate(rows[::-1]):
        label = f" {r['fps'] / 1e6:.2f} M" + (f"  ({r['ratio']:.2f}x)" if r["ratio"] else "")
        ax.text(r["fps"], y, label, va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(right=4 * max(values))  # room for the labels
    ax.set_xlabel("frames/s (log)")
    ax.set_title(f"cpumap bench ({result['mode']}), {result['machine_line']}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[g]) for g in groups]
    ax.legend(handles, groups, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
