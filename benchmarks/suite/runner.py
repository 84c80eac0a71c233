"""``main``: run every side, print the table (and goals), write JSON / a plot."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console

from . import cluster, kernel, live, main_job, ours, python_side, report, rss
from .common import Row, make_frames, per_second, usable_cpus

SECTIONS = ("kernel", "ours", "pipelines", "loops", "main-job", "cluster", "rss", "live")


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
    job_rounds: int
    live_window_s: float  # seconds of offered traffic per live row and round
    live_rounds: int
    cluster_frames: int = 600_000  # the capture of the cluster rows (issue 22's size)
    cluster_rounds: int = 3

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
            self.job_rounds,
            max(self.live_window_s * k, 0.5),
            self.live_rounds,
            s(self.cluster_frames, 50_000),
            self.cluster_rounds,
        )


QUICK = Sizes(400_000, 100_000, 150_000, 40_000, 300_000, 200_000, 1_000_000, 3, 1, 1.5, 2)
FULL = Sizes(
    2_000_000, 400_000, 600_000, 200_000, 1_000_000, 2_000_000, 10_000_000, 5, 1, 4.0, 3, 600_000, 5
)


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
    ap.add_argument(
        "--live-rate",
        type=float,
        default=live.LiveOptions.rate,
        metavar="FPS",
        help="live: frames/s the generator offers every row (0: as fast as it goes; "
        f"default {live.LiveOptions.rate:g})",
    )
    ap.add_argument(
        "--live-qsize",
        type=int,
        default=live.LiveOptions.qsize,
        metavar="N",
        help=f"live: the map's ring per CPU, every row (default {live.LiveOptions.qsize})",
    )
    ap.add_argument(
        "--live-queues",
        default="",
        metavar="LIST",
        help="live: AF_XDP with one RX producer per RX queue, a row per count against one "
        "queue (e.g. 1,2,4; counts this machine lacks CPUs for are skipped with the reason)",
    )
    return ap


def queue_counts(text: str) -> list[int]:
    """``--live-queues``: counts of RX queues, e.g. ``1,2,4`` (ValueError otherwise)."""
    counts = [int(q) for q in text.split(",") if q.strip()]
    if any(n < 1 for n in counts):
        raise ValueError(text)
    return counts


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
        "load_before": round(os.getloadavg()[0], 2),  # other work on the machine: noise
    }


@dataclass
class Spec:
    """One configuration to measure: ``fn`` returns frames/s, or a dict with "fps"."""

    key: str
    section: str
    group: str
    name: str
    fn: Callable[[], float | dict[str, Any]]
    baseline: str | None = None
    skip: str | None = None


class Bench:
    """Runs the sections and keeps the rows.

    Configurations that are compared run in *rounds*: each round runs every one of them
    once, in turn, so that a baseline and what it anchors see the same moment of a shared,
    noisy machine; a row's ratio is then the median of its per-round ratios."""

    def __init__(self, sizes: Sizes, console: Console, quiet: bool, sections: list[str]) -> None:
        self.sizes = sizes
        self.console = console
        self.quiet = quiet
        self.sections = sections
        self.rows: dict[str, Row] = {}
        self.costs: dict[str, Any] = {}
        self.cpus = usable_cpus()
        self._round_group = 0

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def rounds(self, specs: list[Spec], repeat: int | None = None) -> None:
        """Measure ``specs`` (those of a selected section) in ``repeat`` rounds."""
        specs = [sp for sp in specs if sp.section in self.sections]
        if not specs:
            return
        self._round_group += 1
        rows = {}
        extras: dict[str, list[dict[str, Any]]] = {}
        for sp in specs:
            row = Row(sp.key, sp.group, sp.name, baseline=sp.baseline, skipped=sp.skip)
            row.extra["round_group"] = self._round_group
            self.rows[sp.key] = rows[sp.key] = row
            extras[sp.key] = []
            if sp.skip:
                self.say(f"  {sp.name}: skipped ({sp.skip})")
        for _ in range(repeat or self.sizes.repeat):
            for sp in specs:
                row = rows[sp.key]
                if row.skipped:
                    continue
                try:
                    out = sp.fn()
                except Exception as e:
                    row.skipped = f"failed: {type(e).__name__}: {e}"
                    row.runs.clear()
                    self.say(f"  {sp.name}: FAILED\n{traceback.format_exc()}")
                    continue
                if isinstance(out, dict):
                    extras[sp.key].append({k: v for k, v in out.items() if k != "fps"})
                    out = out["fps"]
                row.runs.append(float(out))
        for sp in specs:
            row = rows[sp.key]
            if row.skipped or not row.runs:
                continue
            row.fps = statistics.median(row.runs)
            if extras[sp.key]:
                row.extra.update(_median_extras(extras[sp.key]))
            self.say(f"  {sp.name}: {row.fps / 1e6:.3f} M frames/s  (runs {_runs(row.runs)})")

    # -- sections -----------------------------------------------------------------------
    def per_frame(self) -> None:
        """The single-process loops and our per-frame paths, in rounds."""
        self.say("[b]per frame[/b]: single-process loops and ours, 1 worker (64 B, 4,096 flows)")
        s = self.sizes
        loop_frames = [bytes(r) for r in make_frames(s.loop_frames)]
        small = make_frames(s.frames_per_frame)
        why = self._two_cpus()
        self.rounds(
            [
                Spec(
                    "loop.skb",
                    "loops",
                    "loops",
                    "Skb(frame).dport per frame",
                    lambda: python_side.skb_loop(loop_frames),
                    baseline="loop.skb",
                ),
                Spec(
                    "loop.dpkt",
                    "loops",
                    "loops",
                    "dpkt Ethernet(buf).data.data.dport per frame",
                    lambda: python_side.dpkt_loop(loop_frames),
                    baseline="loop.skb",
                    skip=python_side.dpkt_missing(),
                ),
                Spec(
                    "ours.frame_handler",
                    "ours",
                    "ours",
                    "ours: per-frame handler reading skb.dport, 1 worker",
                    lambda: ours.frame_handler(small),
                    baseline="loop.skb",
                    skip=why,
                ),
                Spec(
                    "ours.frame_program",
                    "ours",
                    "ours",
                    "ours: per-frame program + per-frame handler, 1 worker",
                    lambda: ours.frame_program(small),
                    baseline="loop.skb",
                    skip=why,
                ),
            ]
        )
        if "ours" in self.sections:
            cost = ours.framework_cost(small)
            self.costs["framework_us"] = cost["us_per_frame"]
            self.costs["framework"] = cost
            self.say(
                f"  framework cost: {cost['us_per_frame']:.3f} µs/frame (delivery "
                f"{cost['delivery_us']:.3f} - handler {cost['handler_us']:.3f})"
            )

    def drop(self) -> None:
        """The kernel's cpumap and our second-stage DROP, in rounds."""
        self.say("[b]remote DROP[/b]: the kernel's cpumap and ours (RX CPU 0, entry CPU 1, 64 B)")
        why = kernel.unavailable_reason() or self._two_cpus()
        n = self.sizes.kernel_frames
        frames = make_frames(self.sizes.frames)
        self.rounds(
            [
                Spec(
                    "kernel.xdp_drop",
                    "kernel",
                    "kernel",
                    "kernel: remote XDP_DROP",
                    lambda: kernel.kernel_fps("xdp-drop", n, 1),
                    baseline="kernel.xdp_drop",
                    skip=why,
                ),
                Spec(
                    "kernel.netstack",
                    "kernel",
                    "kernel",
                    "kernel: SKB + netstack",
                    lambda: kernel.kernel_fps("netstack", n, 1),
                    baseline="kernel.netstack",
                    skip=why,
                ),
                Spec(
                    "ours.second_stage_drop",
                    "ours",
                    "ours",
                    "ours: vectorized second-stage DROP (RX CPU 0 -> CPU 1)",
                    lambda: ours.second_stage_drop(frames),
                    baseline="kernel.xdp_drop",
                    skip=self._two_cpus(),
                ),
            ]
        )

    def batch_paths(self) -> None:
        """Our batch handler against the Python pipelines, per frame size, in rounds."""
        for size, n in ((64, self.sizes.frames), (1500, self.sizes.frames_1500)):
            self.say(f"[b]{size} B[/b]: the Python pipelines and ours, consumers on every CPU")
            array = make_frames(n, size=size)
            frames = [bytes(r) for r in array]
            specs = [
                Spec(
                    f"pipe.{kind.replace('.', '_').replace('-', '_').lower()}_{size}",
                    "pipelines",
                    "pipelines",
                    f"{kind}, {size} B",
                    lambda k=kind, f=frames: python_side.run_pipeline(k, f, self.cpus),
                    baseline=f"pipe.mp_queue_{size}",
                    skip=python_side.missing(kind),
                )
                for kind in python_side.PIPELINES
            ]
            specs.append(
                Spec(
                    f"ours.batch_touch_{size}",
                    "ours",
                    "ours",
                    f"ours: batch handler touching every byte, both CPUs, {size} B",
                    lambda a=array: ours.batch_touch(a, self.cpus),
                    baseline=f"pipe.best_{size}",
                )
            )
            self.rounds(specs)

    def main_job(self, capture: str | None, keep: str | None) -> None:
        if "main-job" not in self.sections:
            return
        n = self.sizes.capture_packets
        with tempfile.TemporaryDirectory(prefix="cpumap-bench-") as tmp:
            path = capture or keep or os.path.join(tmp, "mixed.pcap")
            if capture is None:
                self.costs["capture"] = main_job.make_capture(path, n)
            from cpumap.capture import open_capture

            with open_capture(path) as r:
                n = sum(len(b) for b in r.batches(65536))
            self.costs["job_packets"] = n
            self.costs["job_bytecode_compiled"] = main_job.compile_package()
            dpkt_table: dict = {}  # the dpkt row's flow table, for the check after
            size = os.path.getsize(path)
            self.say(f"[b]the main job[/b] ({n:,} packets, {size / 1e9:.2f} GB, mixed sizes)")
            self.rounds(
                [
                    Spec(
                        "job.cpumap_run",
                        "main-job",
                        "main job",
                        "cpumap run FILE (flow table), wall, median of 3",
                        lambda: _job_fps(n, [main_job.cpumap_run(path) for _ in range(3)]),
                        baseline="job.tshark",
                    ),
                    Spec(
                        "job.tshark",
                        "main-job",
                        "main job",
                        "tshark -q -z conv,ipv4 -r FILE",
                        lambda: per_second(n, main_job.tshark_conv(path)),
                        baseline="job.tshark",
                        skip=main_job.tshark_missing(),
                    ),
                    Spec(
                        "job.nfpcapd",
                        "main-job",
                        "main job",
                        "nfpcapd -r FILE -w DIR (nfdump's C flow meter)",
                        lambda: per_second(n, main_job.nfpcapd_flows(path)),
                        baseline="job.tshark",
                        skip=main_job.nfpcapd_missing(),
                    ),
                    Spec(
                        "job.dpkt",
                        "main-job",
                        "main job",
                        "dpkt flow-count script",
                        lambda: per_second(n, main_job.dpkt_flows(path, table=dpkt_table)),
                        baseline="job.tshark",
                        skip=python_side.dpkt_missing(),
                    ),
                ],
                repeat=self.sizes.job_rounds,
            )
            self.check_flow_table(path, dpkt_table)

    def cluster(self) -> None:
        """``cpumap run FILE`` against ``cpumap run --ray local FILE`` on one capture (the
        main job's mix; 600,000 frames by default), each with the CLI's defaults, in
        alternated rounds: each run's own frames/s (the goal: >= 0.7 of the local's)."""
        if "cluster" not in self.sections:
            return
        n = self.sizes.cluster_frames
        with tempfile.TemporaryDirectory(prefix="cpumap-bench-") as tmp:
            path = os.path.join(tmp, "cluster.pcapng")
            missing = cluster.ray_missing()
            if missing is None:
                main_job.make_capture(path, n)
            self.say(f"[b]the cluster map[/b] (one capture, {n:,} frames, the CLI's defaults)")
            self.rounds(
                [
                    Spec(
                        "cluster.local",
                        "cluster",
                        "cluster",
                        "cpumap run FILE (its own frames/s)",
                        lambda: cluster.cli_rate(path),
                        baseline="cluster.local",
                        skip=missing,
                    ),
                    Spec(
                        "cluster.ray",
                        "cluster",
                        "cluster",
                        "cpumap run --ray local FILE (a local Ray instance)",
                        lambda: cluster.cli_rate(path, "--ray", "local"),
                        baseline="cluster.local",
                        skip=missing,
                    ),
                ],
                repeat=self.sizes.cluster_rounds,
            )

    def check_flow_table(self, path: str, dpkt_table: dict) -> None:
        """cpumap's flow table against the dpkt script's (its last timed run's)."""
        if not dpkt_table:
            self.costs["flow_table"] = {"equal": None, "skipped": python_side.dpkt_missing()}
            return
        check = main_job.flow_table_check(main_job.cpumap_table(path), dpkt_table)
        self.costs["flow_table"] = check
        if check["equal"]:
            self.say(
                f"  flow table: cpumap's {check['flows']:,} flows equal the dpkt script's "
                f"(packets and bytes per flow; {check['packets']:,} packets)"
            )
        else:
            self.say(
                f"  flow table: [red]{check['mismatches']} flows differ[/red] from the dpkt "
                f"script's: only ours {check['only_ours']}, only dpkt's "
                f"{check['only_dpkt']}, differ {check['differ']}"
            )

    def rss(self) -> None:
        if "rss" not in self.sections:
            return
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

    def live(
        self, rate: float, qsize: int = live.LiveOptions.qsize, queues: Sequence[int] = ()
    ) -> None:
        """The live path: the same offered load through TPACKET_V3, AF_XDP and the kernel's
        cpumap, in rounds (``suite.live``); and with ``queues``, AF_XDP with one RX producer
        per queue, a row per count, each against one queue of the same round."""
        if "live" not in self.sections:
            return
        opts = live.LiveOptions(rate=rate or None, window_s=self.sizes.live_window_s, qsize=qsize)
        offered = f"{rate / 1e6:.1f} M/s" if rate else "as fast as the generator goes"
        self.say(
            f"[b]live[/b]: veth, 64 B frames offered at {offered} for {opts.window_s:g} s a "
            f"row, rings of {qsize} (CPU {live.RX_CPU}: NAPI and the RX side; "
            f"CPU {live.WIRE_CPU}: the worker, "
            "and the generator)"
        )
        why = live.unavailable_reason()
        self.rounds(
            [
                Spec(
                    "live.tpacket",
                    "live",
                    "live",
                    "live: TPACKET_V3 -> map -> count handler (cpumap run --iface)",
                    lambda: live.tpacket_row(opts),
                    baseline="live.tpacket",
                    skip=why,
                ),
                Spec(
                    "live.af_xdp",
                    "live",
                    "live",
                    "live: AF_XDP -> map -> count handler (cpumap run --iface --af-xdp)",
                    lambda: live.af_xdp_row(opts),
                    baseline="live.tpacket",
                    skip=why or live.af_xdp_unavailable_reason(),
                ),
                Spec(
                    "live.kernel",
                    "live",
                    "live",
                    "live: cpumap run --kernel, the kernel's cpumap, remote XDP_DROP",
                    lambda: live.kernel_row(opts),
                    baseline="live.tpacket",
                    skip=why,
                ),
                *(self._queue_spec(opts, n, why, queues[0]) for n in queues),
            ],
            repeat=self.sizes.live_rounds,
        )

    @staticmethod
    def _queue_spec(opts: live.LiveOptions, n: int, why: str | None, first: int) -> Spec:
        """The AF_XDP row with ``n`` RX queues (``suite.live.af_xdp_queues_row``), against
        the first count's row of the same round."""
        where = live.queue_cpus(n)
        return Spec(
            f"live.af_xdp_q{n}",
            "live",
            "live",
            f"live: AF_XDP, {n} RX queue(s), one RX producer each (--queues all)",
            lambda: live.af_xdp_queues_row(opts, n),
            baseline=f"live.af_xdp_q{first}",
            skip=why
            or live.af_xdp_unavailable_reason()
            or (where if isinstance(where, str) else None),
        )

    def _two_cpus(self) -> str | None:
        if not {0, 1} <= set(self.cpus):
            return f"needs CPUs 0 and 1 (usable: {self.cpus})"
        return None

    def finish_rows(self) -> None:
        # The pipelines' "best" rows: the baselines of ours.batch_touch_*.
        for size in (64, 1500):
            best = report.best_pipeline(self.rows, size)
            for r in self.rows.values():
                if r.baseline == f"pipe.best_{size}":
                    r.baseline = best
        report.set_ratios(self.rows)
        for r in self.rows.values():
            if r.ratio is None and r.skipped is None:
                r.skipped = "no baseline measured in this run"


def _job_fps(n: int, outs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = statistics.median(o["seconds"] for o in outs)
    own = [o["own_fps"] for o in outs if o["own_fps"]]
    return {
        "fps": per_second(n, seconds),
        "seconds": seconds,
        "own_fps": statistics.median(own) if own else None,
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
    if args.live_rate < 0:
        build_parser().error("--live-rate must be >= 0 frames/s (0: as fast as it goes)")
    if not 1 <= args.live_qsize <= 16384:
        build_parser().error("--live-qsize must be in 1..16384 (the map's ring per CPU)")
    try:
        queues = queue_counts(args.live_queues)
    except ValueError:
        build_parser().error("--live-queues takes counts of RX queues, e.g. 1,2,4")
    sizes = (QUICK if args.quick else FULL).scaled(args.scale)
    if args.repeat:
        sizes = replace(sizes, repeat=max(args.repeat, 1), live_rounds=max(args.repeat, 1))
    console = Console()
    if not console.is_terminal:  # a log file: room for the table's columns
        console = Console(width=150)
    quiet = args.json == "-"
    sections = args.only or list(SECTIONS)
    bench = Bench(sizes, console, quiet, sections)
    m = machine()
    t0 = time.perf_counter()
    bench.say(
        f"cpumap bench ({'quick' if args.quick else 'full'}): {m['cpus']} CPUs ({m['model']}), "
        f"kernel {m['kernel']}, Python {m['python']}, {m['date']}"
    )
    bench.per_frame()
    bench.drop()
    bench.batch_paths()
    bench.main_job(args.capture, args.keep_capture)
    bench.cluster()
    bench.rss()
    bench.live(args.live_rate, args.live_qsize, queues)
    m["load_after"] = round(os.getloadavg()[0], 2)
    bench.finish_rows()
    result = {
        "mode": "quick" if args.quick else "full",
        "machine": m,
        "machine_line": f"{m['cpus']} CPUs, {m['date']}, load {m['load_before']}-{m['load_after']}",
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
