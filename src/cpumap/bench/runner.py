"""``main``: run every side, print the table (and goals), write JSON / a plot."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from . import kernel, main_job, ours, python_side, report, rss
from .common import Row, make_frames, median_of, per_second, usable_cpus

SECTIONS = ("kernel", "ours", "pipelines", "loops", "main-job", "rss")


@dataclass(frozen=True)
class Sizes:
    """How much each measurement runs (quick: about a minute in all)."""

    frames: int  # 64-byte frames for the engine's batch paths and pipelines
    frames_1500: int
    frames_per_frame: int  # for the per-frame paths (~10x slower)
    loop_frames: int
    kernel_frames: int
    capture_packets: int
    rss_frames: int
    repeat: int

    def scaled(self, k: float) -> Sizes:
        def s(n: int, least: int = 2048) -> int:
            return max(int(n * k), least)

        return Sizes(
            s(self.frames),
            s(self.frames_1500),
            s(self.frames_per_frame),
            s(self.loop_frames),
            s(self.kernel_frames, 10_000),
            s(self.capture_packets),
            s(self.rss_frames, 20_000),
            self.repeat,
        )


QUICK = Sizes(400_000, 100_000, 150_000, 40_000, 300_000, 200_000, 1_000_000, 3)
FULL = Sizes(2_000_000, 400_000, 600_000, 200_000, 1_000_000, 2_000_000, 10_000_000, 5)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cpumap bench",
        description="Measure every side in one run (the kernel's cpumap, ours, the Python "
        "pipelines, single-process loops, the main job) and print a table of ratios.",
    )
    ap.add_argument("--quick", action="store_true", help="about a minute (default: full)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON (- for stdout)")
    ap.add_argument("--plot", metavar="FILE.png", help="draw the table (needs matplotlib)")
    ap.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only these sections (repeat)"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    ap.add_argument("--repeat", type=int, help="runs per configuration (median)")
    ap.add_argument(
        "--capture", metavar="FILE", help="main job: use this pcap, not a generated one"
    )
    ap.add_argument("--keep-capture", metavar="FILE", help="main job: keep the generated pcap here")
    return ap


def machine() -> dict[str, Any]:
    cpus = usable_cpus()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "cpus": len(cpus),
        "cpu_list": cpus,
        "model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


class Bench:
    def __init__(self, sizes: Sizes, console: Console, quiet: bool) -> None:
        self.sizes = sizes
        self.console = console
        self.quiet = quiet
        self.rows: dict[str, Row] = {}
        self.costs: dict[str, Any] = {}
        self.cpus = usable_cpus()

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def add(self, row: Row) -> Row:
        self.rows[row.key] = row
        return row

    def measure(
        self,
        key: str,
        group: str,
        name: str,
        fn: Callable[[], float | dict[str, Any]],
        *,
        baseline: str | None = None,
        skip: str | None = None,
        repeat: int | None = None,
    ) -> Row:
        """Median of ``repeat`` runs of ``fn`` (frames/s, or a dict with "fps" and more)."""
        row = self.add(Row(key, group, name, baseline=baseline, skipped=skip))
        if skip:
            self.say(f"  {name}: skipped ({skip})")
            return row
        extras: list[dict[str, Any]] = []

        def once() -> float:
            out = fn()
            if isinstance(out, dict):
                extras.append({k: v for k, v in out.items() if k != "fps"})
                return float(out["fps"])
            return float(out)

        try:
            row.fps, row.runs = median_of(once, repeat or self.sizes.repeat)
        except Exception as e:
            row.skipped = f"failed: {type(e).__name__}: {e}"
            self.say(f"  {name}: FAILED\n{traceback.format_exc()}")
            return row
        if extras:
            row.extra = _median_extras(extras)
        self.say(f"  {name}: {row.fps / 1e6:.3f} M frames/s  (runs {_runs(row.runs)})")
        return row

    # -- sections -----------------------------------------------------------------------
    def kernel(self) -> None:
        self.say("[b]the kernel's cpumap[/b] (RX on CPU 0, entry on CPU 1, 64 B)")
        why = kernel.unavailable() or self._two_cpus()
        n, r = self.sizes.kernel_frames, self.sizes.repeat
        for path, key, name in (
            ("xdp-drop", "kernel.xdp_drop", "kernel: remote XDP_DROP"),
            ("netstack", "kernel.netstack", "kernel: SKB + netstack"),
        ):
            self.measure(
                key, "kernel", name, lambda p=path: kernel.kernel_fps(p, n, r), skip=why, repeat=1
            )

    def ours(self) -> None:
        self.say("[b]ours[/b] (64 B UDP, 4,096 flows)")
        why = self._two_cpus()
        s = self.sizes
        f64 = make_frames(s.frames)
        small = f64[: s.frames_per_frame]
        self.measure(
            "ours.second_stage_drop",
            "ours",
            "ours: vectorized second-stage DROP (RX CPU 0 -> CPU 1)",
            lambda: ours.second_stage_drop(f64),
            baseline="kernel.xdp_drop",
            skip=why,
        )
        self.measure(
            "ours.batch_touch_64",
            "ours",
            "ours: batch handler touching every byte, both CPUs, 64 B",
            lambda: ours.batch_touch(f64, self.cpus),
            baseline="pipe.best_64",
        )
        f1500 = make_frames(s.frames_1500, size=1500)
        self.measure(
            "ours.batch_touch_1500",
            "ours",
            "ours: batch handler touching every byte, both CPUs, 1500 B",
            lambda: ours.batch_touch(f1500, self.cpus),
            baseline="pipe.best_1500",
        )
        self.measure(
            "ours.frame_handler",
            "ours",
            "ours: per-frame handler reading skb.dport, 1 worker",
            lambda: ours.frame_handler(small),
            baseline="loop.skb",
            skip=why,
        )
        self.measure(
            "ours.frame_program",
            "ours",
            "ours: per-frame program + per-frame handler, 1 worker",
            lambda: ours.frame_program(small),
            baseline="loop.skb",
            skip=why,
        )
        cost = ours.framework_cost(f64)
        self.costs["framework_us"] = cost["us_per_frame"]
        self.costs["framework"] = cost
        self.say(
            f"  framework cost: {cost['us_per_frame']:.3f} µs/frame (delivery "
            f"{cost['delivery_us']:.3f} - handler {cost['handler_us']:.3f})"
        )

    def pipelines(self) -> None:
        self.say("[b]Python pipelines[/b] (consumers on every CPU, touching every byte)")
        for size, n in ((64, self.sizes.frames), (1500, self.sizes.frames_1500)):
            frames = [bytes(r) for r in make_frames(n, size=size)]
            for kind in python_side.PIPELINES:
                key = f"pipe.{kind.replace('.', '_').replace('-', '_').lower()}_{size}"
                self.measure(
                    key,
                    "pipelines",
                    f"{kind}, {size} B",
                    lambda k=kind, f=frames: python_side.run_pipeline(k, f, self.cpus),
                    baseline=f"pipe.mp_queue_{size}",
                    skip=python_side.missing(kind),
                )

    def loops(self) -> None:
        self.say("[b]single-process loops[/b] (64 B)")
        frames = [bytes(r) for r in make_frames(self.sizes.loop_frames)]
        self.measure(
            "loop.skb",
            "loops",
            "Skb(frame).dport per frame",
            lambda: python_side.skb_loop(frames),
            baseline="loop.skb",
        )
        self.measure(
            "loop.dpkt",
            "loops",
            "dpkt Ethernet(buf).data.data.dport per frame",
            lambda: python_side.dpkt_loop(frames),
            baseline="loop.skb",
            skip=python_side.dpkt_missing(),
        )

    def main_job(self, capture: str | None, keep: str | None) -> None:
        n = self.sizes.capture_packets
        with tempfile.TemporaryDirectory(prefix="cpumap-bench-") as tmp:
            path = capture or keep or os.path.join(tmp, "mixed.pcap")
            if capture is None:
                made = main_job.make_capture(path, n)
                self.costs["capture"] = made
            from ..capture import open_capture

            with open_capture(path) as r:
                n = sum(len(b) for b in r.batches(65536))
            size = os.path.getsize(path)
            self.say(f"[b]the main job[/b] ({n:,} packets, {size / 1e9:.2f} GB, mixed sizes)")
            self.measure(
                "job.cpumap_run",
                "main job",
                "cpumap run FILE (flow table), wall",
                lambda: _job_fps(n, main_job.cpumap_run(path)),
                baseline="job.tshark",
            )
            self.measure(
                "job.tshark",
                "main job",
                "tshark -q -z conv,ipv4 -r FILE",
                lambda: per_second(n, main_job.tshark_conv(path)),
                baseline="job.tshark",
                skip=main_job.tshark_missing(),
                repeat=1,
            )
            self.measure(
                "job.dpkt",
                "main job",
                "dpkt flow-count script",
                lambda: per_second(n, main_job.dpkt_flows(path)),
                baseline="job.tshark",
                skip=python_side.dpkt_missing(),
                repeat=1,
            )

    def rss(self) -> None:
        n = self.sizes.rss_frames
        self.say(f"[b]memory[/b] ({n:,} frames, flow table, both CPUs)")
        try:
            out = rss.rss_over(n, self.cpus, per_frame=False)
        except Exception as e:
            self.costs["rss_error"] = repr(e)
            self.say(f"  RSS: FAILED {e!r}")
            return
        self.costs["rss"] = out
        self.costs["rss_max_growth"] = out["max_growth"]
        growth = ", ".join(f"{k} {100 * g:+.1f}%" for k, g in out["growth"].items())
        self.say(f"  RSS growth after warm-up: {growth} ({out['fps'] / 1e6:.2f} M frames/s)")

    def _two_cpus(self) -> str | None:
        if not {0, 1} <= set(self.cpus):
            return f"needs CPUs 0 and 1 (usable: {self.cpus})"
        return None

    def finish_rows(self) -> None:
        # The pipelines' "best" rows: the baselines of ours.batch_touch_*.
        for size in (64, 1500):
            best = report.best_pipeline(self.rows, size)
            if best is not None:
                for r in self.rows.values():
                    if r.baseline == f"pipe.best_{size}":
                        r.baseline = best
        report.set_ratios(self.rows)
        for r in self.rows.values():
            if r.ratio is None and r.skipped is None:
                r.skipped = "no baseline measured in this run"


def _job_fps(n: int, out: dict[str, Any]) -> dict[str, Any]:
    return {
        "fps": per_second(n, out["seconds"]),
        "seconds": out["seconds"],
        "own_fps": out["own_fps"],
    }


def _median_extras(extras: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in extras[0]:
        values = [e[k] for e in extras if isinstance(e.get(k), int | float)]
        if values:
            out[k] = sorted(values)[len(values) // 2]
    return out


def _runs(runs: list[float]) -> str:
    return ", ".join(f"{r / 1e6:.3f}" for r in runs)


def main(argv: Sequence[str] | None = None) -> int:
    """``cpumap bench``: returns 0 (the goals are reported, not enforced), 2 on bad usage."""
    args = build_parser().parse_args(argv)
    if args.scale <= 0:
        build_parser().error("--scale must be > 0")
    sizes = (QUICK if args.quick else FULL).scaled(args.scale)
    if args.repeat:
        sizes = Sizes(*[*list(sizes.__dict__.values())[:-1], max(args.repeat, 1)])
    console = Console()
    if not console.is_terminal:  # a log file: room for the table's columns
        console = Console(width=150)
    quiet = args.json == "-"
    bench = Bench(sizes, console, quiet)
    sections = args.only or list(SECTIONS)
    m = machine()
    t0 = time.perf_counter()
    bench.say(
        f"cpumap bench ({'quick' if args.quick else 'full'}): {m['cpus']} CPUs ({m['model']}), "
        f"kernel {m['kernel']}, Python {m['python']}, {m['date']}"
    )
    # Baselines beside what they anchor: loops and the kernel first, then ours, pipelines.
    if "loops" in sections:
        bench.loops()
    if "kernel" in sections:
        bench.kernel()
    if "ours" in sections:
        bench.ours()
    if "pipelines" in sections:
        bench.pipelines()
    if "main-job" in sections:
        bench.main_job(args.capture, args.keep_capture)
    if "rss" in sections:
        bench.rss()
    bench.finish_rows()
    result = {
        "mode": "quick" if args.quick else "full",
        "machine": m,
        "machine_line": f"{m['cpus']} CPUs, {m['date']}",
        "sizes": sizes.__dict__,
        "seconds": time.perf_counter() - t0,
        "rows": [r.as_dict() for r in bench.rows.values()],
        "costs": bench.costs,
        "goals": report.goals(bench.rows, bench.costs, m),
    }
    if not quiet:
        report.render(result, console)
    if args.json:
        report.write_json(result, args.json)
    if args.plot:
        why = report.plot(result, args.plot)
        if why:
            console.print(f"no plot: {why}")
    return 0
