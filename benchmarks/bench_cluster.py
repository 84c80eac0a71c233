"""The cluster map against the local map, on the same captures, in one run.

What is measured, each beside its baseline in the same run, alternated ``--repeat`` times:
medians, and the median of the rounds' ratios (``paired_ratio``):

* ``local``    -- ``CpuMap`` with one entry per ``--cpus`` CPU, the l4-hash program, a
  ``FlowTable`` handler, every file read in turn by one RX producer (``CpuMap.run``):
  frames/s from its first poll to its drain, and CPU seconds per frame (this process and
  its workers);
* ``cluster``  -- ``run_map`` over a ``ClusterMap`` with the same entries on a local Ray
  instance: one source task per file, reading its file in place into frames it shares
  with the entries on its machine (``cluster/shared_frames.py``), entry actors:
  frames/s from the first poll of any source to the last outcome (``result.seconds``,
  what a local run's elapsed time measures) and CPU seconds per frame (every process of
  the tree: sources, entries, Ray's daemons), of a second run on the map (its source
  workers started, as the local map's workers are before its run); and the frames/s of
  the first, cold run over its whole ``run_map`` (``cluster_whole_run``: Ray starting the
  source tasks' workers included).
  ``ratio_cluster_over_local`` is the price of going through Ray on one machine;
  ``store``: the same with ``shared_bytes=0`` -- every frame packed into a parcel and put
  into the object store, as between hosts (``ratio_store_over_local``).  (The local map
  here reads through the API's general reader, ``reader.batches`` -- what ``CpuMap.run``
  takes -- where the cluster's sources read in place: the ``cli`` rows compare both
  reading in place.);
* ``cli``      -- ``cpumap run FILE --json`` against ``cpumap run --ray auto FILE --json``
  on one file of ``--cli-frames`` frames, each with the CLI's defaults (rates from the
  summaries' ``rx`` / ``elapsed_s``), and ``--ray auto --cpus`` every CPU beside them,
  alternated ``--cli-rounds`` times: medians, and the median of the per-round ratios;
* ``three_nodes`` (``--three-nodes``) -- three Ray nodes on this machine
  (``ray.cluster_utils.Cluster``, loopback), one file read on each, one entry on each,
  beside the local map over the same files -- with shared frames (the nodes share one
  machine's memory, so its entries map every source's frames) and with the object store
  (``three_nodes_store``: what nodes on separate hosts pay).

And the figures ``docs/cluster.md`` rests on: actor calls/s (one at a time, and 1,000 in
flight), the object store (``ray.put``/``ray.get`` of 64 MiB; a get that moves it between
two nodes' stores over loopback), and offers of 1,024 frames of 128 bytes into one
accept-all entry -- with Ray's task events off, as the entries' offers are, and on (Ray's
default): the measurement behind that choice.

    .venv/bin/python benchmarks/bench_cluster.py [--files 3] [--packets 40000]
        [--cpus 0,1] [--repeat 3] [--qsize 8192] [--poll 4096] [--cli-frames 600000]
        [--cli-rounds 5]
        [--three-nodes] [--only-ratios] [--json FILE]

``--only-ratios`` runs the ratios alone -- and so also against an older ``cpumap`` on
``PYTHONPATH``, for a before/after.  Starts and stops its own Ray instances (on loopback,
``--object-store`` MB).  The machines are shared and noisy: trust the ratios printed in
one run, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cpumap.cluster.ray_setup import use_loopback

use_loopback()

from cpumap import CpuMap  # noqa: E402  (after the loopback switch, before Ray)
from cpumap.capture import open_capture, write_capture  # noqa: E402
from cpumap.cluster import ClusterMap, SourceOptions, connect, run_map  # noqa: E402
from cpumap.cluster.actor import EntryActor  # noqa: E402
from cpumap.cluster.frames import FrameBlock, fill, pack  # noqa: E402
from cpumap.generator import Generator  # noqa: E402
from cpumap.programs.contract import WorkerInfo  # noqa: E402
from cpumap.programs.steering import make_program  # noqa: E402
from cpumap.sinks import FlowTable  # noqa: E402
from suite.cluster import cli_rate  # noqa: E402  (benchmarks/suite: cpumap bench's too)


def make_captures(directory: Path, files: int, packets: int) -> list[Path]:
    gen = Generator(
        flows=1024,
        sizes=(64, 128, 256, 600),
        protocols=("udp", "tcp"),
        seed=7,
        count=files * packets,
        undersize="clamp",
    )
    parts: list[list[Any]] = [[] for _ in range(files)]
    for i, b in enumerate(gen.batches(1024)):
        parts[i % files].append(b)
    paths = []
    for k, batches in enumerate(parts):
        p = directory / f"bench{k}.pcapng"
        write_capture(p, batches)
        paths.append(p)
    return paths


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(ray: bool = True) -> dict[int, float]:
    """CPU seconds (user + system) of this process and every descendant, by pid: Ray's
    processes (gcs, raylets, workers) are all descendants of a driver that started Ray;
    ``ray=False`` leaves them out (a local run's figure: they idle beside it)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdecimal():
            continue
        try:
            f = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parent[int(entry.name)] = int(f[1])
        cpu[int(entry.name)] = (int(f[11]) + int(f[12])) / _TICK
    mine, todo = {os.getpid()}, [os.getpid()]
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in mine:
                mine.add(c)
                todo.append(c)
    return {pid: cpu[pid] for pid in mine if pid in cpu and (ray or not _is_ray(pid))}


def _is_ray(pid: int) -> bool:
    try:
        return b"ray" in (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


def cpu_spent(before: dict[int, float], ray: bool = True) -> float:
    """CPU seconds the process tree spent since ``before`` (new processes from zero)."""
    return sum(v - before.get(pid, 0.0) for pid, v in tree_cpu(ray).items())


def run_local(paths: list[Path], cpus: list[int]) -> tuple[float, float]:
    """(frames/s, CPU seconds per frame) of the local map over ``paths``."""
    with CpuMap(max(cpus) + 1, handler=FlowTable()) as cmap:
        for c in cpus:
            cmap.update(c, 2048)
        program = make_program("l4-hash", cmap, cpus)
        cpu0 = tree_cpu(ray=False)
        t0 = time.perf_counter()
        n = 0
        for p in paths:
            with open_capture(p) as reader:
                s = cmap.run(reader.batches(1024), program)
        n = s.rx
        dt = time.perf_counter() - t0
        spent = cpu_spent(cpu0, ray=False)
        program.table.close()
    return n / dt, spent / n


def run_cluster(
    paths: list[Path],
    places: list[str],
    qsize: int,
    poll: int,
    homes: dict[str, str] | None = None,
    shared: bool = True,
) -> dict[str, float]:
    """Seconds to populate the map; frames/s of a first, cold run over the whole
    ``run_map`` (Ray starting the source tasks' workers included); then, of a second run
    on the same map (its workers started), frames/s from the first poll to the last
    outcome and CPU seconds per frame (the whole process tree: sources, entries, Ray's
    daemons).  ``shared``: entries on the source's machine read its frames where they
    lie (the default); False: every frame through the object store, as between hosts."""
    t0 = time.perf_counter()
    options = SourceOptions(poll_size=poll, **({} if shared else {"shared_bytes": 0}))
    with ClusterMap(FlowTable()) as cmap:
        for place in places:
            cmap.update(place, qsize)
        setup = time.perf_counter() - t0
        cold = run_map(cmap, paths, "l4-hash", options=options, source_nodes=homes)
        cpu0 = tree_cpu()
        result = run_map(cmap, paths, "l4-hash", options=options, source_nodes=homes)
        spent = cpu_spent(cpu0)
    assert result.in_flight == 0 and cold.in_flight == 0
    wall = getattr(cold, "wall_seconds", 0.0) or cold.seconds
    n = result.stats.rx
    return {"fps": n / result.seconds, "setup": setup, "whole": n / wall, "cpu": spent / n}


def cli_rates(directory: Path, frames: int, rounds: int) -> dict[str, float]:
    """``cpumap run FILE`` against ``cpumap run --ray auto FILE`` on the same file, each
    with the CLI's defaults, and ``--ray auto --cpus`` every CPU (the cluster's default
    before it left the reading CPU to the source: the measurement behind that default),
    alternated ``rounds`` times: the medians, and the median of the rounds' ratios (each
    ratio from runs a few seconds apart, so the machine's load moves both alike)."""
    (path,) = make_captures(directory, 1, frames)
    every = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    local, cluster, wide = [], [], []
    for _ in range(rounds):
        local.append(cli_rate(str(path)))
        cluster.append(cli_rate(str(path), "--ray", "local"))  # auto, unless a cluster is here
        wide.append(cli_rate(str(path), "--ray", "local", "--cpus", every))
    return {
        "cli_frames": frames,
        "cli_rounds": rounds,
        "cli_local_frames_per_s": median(local),
        "cli_cluster_frames_per_s": median(cluster),
        "cli_cluster_every_cpu_frames_per_s": median(wide),
        "cli_ratio_cluster_over_local": paired_ratio(cluster, local),
        "cli_ratio_every_cpu_over_local": paired_ratio(wide, local),
        "cli_ratios_cluster_over_local": [
            round(c / x, 3) for c, x in zip(cluster, local, strict=True)
        ],
        "cli_local_rounds_M": [round(x / 1e6, 3) for x in local],
    }


def actor_rates() -> dict[str, float]:
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self) -> None:
            return None

    a = Echo.remote()
    ray.get(a.ping.remote())
    n = 300
    t0 = time.perf_counter()
    for _ in range(n):
        ray.get(a.ping.remote())
    serial = n / (time.perf_counter() - t0)
    n = 1000
    t0 = time.perf_counter()
    ray.get([a.ping.remote() for _ in range(n)])
    pipelined = n / (time.perf_counter() - t0)
    ray.kill(a)
    return {"actor_calls_serial_per_s": serial, "actor_calls_pipelined_per_s": pipelined}


def object_store_rates(mib: int = 64) -> dict[str, float]:
    import ray

    arr = np.random.default_rng(0).integers(0, 255, mib << 20, dtype=np.uint8)
    best_put = best_get = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        ref = ray.put(arr)
        put = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = ray.get(ref)
        got = time.perf_counter() - t0
        assert out.nbytes == arr.nbytes
        del out, ref
        best_put = max(best_put, mib / put)
        best_get = max(best_get, mib / got)
    return {"object_store_put_MiB_per_s": best_put, "object_store_get_MiB_per_s": best_get}


def _make_array(mib: int) -> np.ndarray:
    return np.full(mib << 20, 7, dtype=np.uint8)


def three_nodes(
    paths: list[Path], qsize: int, poll: int, repeat: int, object_store: int = 300
) -> dict[str, float]:
    """The cluster map over three Ray nodes on this machine (``ray.cluster_utils.Cluster``,
    loopback): one file read on each node, one entry on each (CPUs 0, 1, 0), beside the
    local map over the same files, alternated ``repeat`` times (medians)."""
    from ray.cluster_utils import Cluster

    args = {"num_cpus": 1, "object_store_memory": object_store << 20}
    names = ("head", "w1", "w2")
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            "labels": {"cpumap.node": "head"},
            **args,
        },
    )
    try:
        for name in names[1:]:
            c.add_node(labels={"cpumap.node": name}, **args)
        session = connect(c.address)
        try:
            c.wait_for_nodes()
            homes = {str(p): names[i % 3] for i, p in enumerate(paths)}
            places = ["head:0", "w1:1", "w2:0"]
            local, cluster, store = [], [], []
            for _ in range(repeat):
                local.append(run_local(paths, [0, 1]))
                cluster.append(run_cluster(paths, places, qsize, poll, homes))
                store.append(run_cluster(paths, places, qsize, poll, homes, shared=False))
        finally:
            session.close()
    finally:
        c.shutdown()
    return {
        "three_nodes_local_frames_per_s": median([r[0] for r in local]),
        "three_nodes_cluster_frames_per_s": median([r["fps"] for r in cluster]),
        "three_nodes_ratio_cluster_over_local": paired_ratio(
            [r["fps"] for r in cluster], [r[0] for r in local]
        ),
        "three_nodes_local_cpu_us_per_frame": median([r[1] for r in local]) * 1e6,
        "three_nodes_cluster_cpu_us_per_frame": median([r["cpu"] for r in cluster]) * 1e6,
        # Every frame through the object store (shared_bytes=0): what separate hosts pay.
        "three_nodes_store_frames_per_s": median([r["fps"] for r in store]),
        "three_nodes_ratio_store_over_local": paired_ratio(
            [r["fps"] for r in store], [r[0] for r in local]
        ),
        "three_nodes_store_cpu_us_per_frame": median([r["cpu"] for r in store]) * 1e6,
    }


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median of the rounds' ratios ``a[i] / b[i]``: each round's two runs a few
    seconds apart, so the machine's load moves both alike."""
    return float(np.median(np.divide(a, b)))


def transfer_rate(mib: int = 64, object_store: int = 300) -> dict[str, float]:
    """MiB/s of a get that moves an object between two Ray nodes' stores (two nodes on
    this machine: the transfer goes over loopback TCP, the object manager's path)."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    args = {"num_cpus": 1, "object_store_memory": object_store << 20}
    c = Cluster(
        initialize_head=True,
        head_node_args={"node_ip_address": "127.0.0.1", "include_dashboard": False, **args},
    )
    try:
        c.add_node(**args)
        session = connect(c.address)
        try:
            c.wait_for_nodes()
            me = ray.get_runtime_context().get_node_id()
            other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != me)
            make = ray.remote(num_cpus=0)(_make_array).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False)
            )
            best = 0.0
            for _ in range(3):
                ref = make.remote(mib)
                ray.wait([ref], fetch_local=False)
                t0 = time.perf_counter()
                arr = ray.get(ref)
                best = max(best, mib / (time.perf_counter() - t0))
                del arr, ref
        finally:
            session.close()
    finally:
        c.shutdown()
    return {"object_transfer_between_nodes_MiB_per_s": best}


class EventfulEntry(EntryActor):
    """The entry with Ray's task events on for its offers (Ray's default)."""

    async def offer(self, source: int, parts: list[Any], lossless: bool) -> Any:
        return await super().offer(source, parts, lossless)


def parcel_rates(frames: int = 1024, size: int = 128, calls: int = 200) -> dict[str, float]:
    """Offers into an accept-all entry, with Ray's task events off (what the entries do)
    and on (Ray's default), alternated, best of three each."""
    off, on = [], []
    for _ in range(3):
        off.append(parcel_rate(EntryActor, frames, size, calls)["parcel_frames_per_s"])
        on.append(parcel_rate(EventfulEntry, frames, size, calls)["parcel_frames_per_s"])
    return {
        "parcel_frames_per_s": max(off),
        "parcels_per_s": max(off) / frames,
        "parcel_frames_per_s_task_events_on": max(on),
        "ratio_task_events_off_over_on": max(off) / max(on),
    }


def parcel_rate(
    cls: type, frames: int = 1024, size: int = 128, calls: int = 200
) -> dict[str, float]:
    import ray

    gen = Generator(flows=64, sizes=size, protocols=("udp",), seed=3, count=frames)
    block = FrameBlock.empty(frames)
    fill(block, next(gen.batches(frames)))
    parcel = pack(block, np.arange(frames, dtype=np.uint32))
    info = WorkerInfo(0, 0, 0, 2048, 0, 0, False)
    actor = ray.remote(cls).options(num_cpus=0).remote(None, info, False)
    ray.get(actor.ready.remote())
    t0 = time.perf_counter()
    refs = [actor.offer.remote(0, [parcel], True) for _ in range(calls)]
    ray.get(refs)
    report = ray.get(actor.tally.remote(0, 60.0))
    dt = time.perf_counter() - t0
    assert report.counts[2] == calls * frames, report
    ray.kill(actor)
    return {"parcel_frames_per_s": calls * frames / dt, "parcels_per_s": calls / dt}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--packets", type=int, default=40_000, help="per file")
    ap.add_argument("--cpus", default="0,1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--qsize", type=int, default=8192, help="cluster entries' qsize")
    ap.add_argument("--poll", type=int, default=4096, help="cluster sources' poll size")
    ap.add_argument("--object-store", type=int, default=300, help="MB for the local Ray")
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--cli-frames", type=int, default=600_000, help="frames of the CLI comparison (0: skip)"
    )
    ap.add_argument(
        "--cli-rounds", type=int, default=5, help="alternated rounds of the CLI comparison"
    )
    ap.add_argument("--only-ratios", action="store_true", help="skip the Ray cost figures")
    ap.add_argument(
        "--three-nodes", action="store_true", help="also three Ray nodes on this machine"
    )
    args = ap.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",")]
    out: dict[str, Any] = {
        "files": args.files,
        "packets_per_file": args.packets,
        "cpus": cpus,
        "cluster_qsize": args.qsize,
        "cluster_poll": args.poll,
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_captures(Path(tmp), args.files, args.packets)
        session = connect(
            "local",
            loopback=True,
            num_cpus=len(cpus),
            object_store_memory=args.object_store << 20,
            dashboard=False,
        )
        try:
            local, cluster, store = [], [], []
            places = [str(c) for c in cpus]
            for _ in range(args.repeat):
                local.append(run_local(paths, cpus))
                cluster.append(run_cluster(paths, places, args.qsize, args.poll))
                store.append(run_cluster(paths, places, args.qsize, args.poll, shared=False))
            out.update(
                local_frames_per_s=median([r[0] for r in local]),
                cluster_frames_per_s=median([r["fps"] for r in cluster]),
                ratio_cluster_over_local=paired_ratio(
                    [r["fps"] for r in cluster], [r[0] for r in local]
                ),
                local_cpu_us_per_frame=median([r[1] for r in local]) * 1e6,
                cluster_cpu_us_per_frame=median([r["cpu"] for r in cluster]) * 1e6,
                cluster_map_setup_s=median([r["setup"] for r in cluster]),
                cluster_whole_run_frames_per_s=median([r["whole"] for r in cluster]),
                # Every frame through the object store (shared_bytes=0), as between hosts.
                store_frames_per_s=median([r["fps"] for r in store]),
                ratio_store_over_local=paired_ratio(
                    [r["fps"] for r in store], [r[0] for r in local]
                ),
                store_cpu_us_per_frame=median([r["cpu"] for r in store]) * 1e6,
            )
            print(f"ratio_cluster_over_local {out['ratio_cluster_over_local']:.3f}", flush=True)
            if not args.only_ratios:
                out.update(actor_rates())
                out.update(object_store_rates())
                out.update(parcel_rates())
        finally:
            session.close()
        if args.cli_frames:
            out.update(cli_rates(Path(tmp), args.cli_frames, args.cli_rounds))
            print(f"cli_ratio_cluster_over_local {out['cli_ratio_cluster_over_local']:.3f}")
        if args.three_nodes:
            out.update(three_nodes(paths, args.qsize, args.poll, args.repeat))
    if not args.only_ratios:
        out.update(transfer_rate(object_store=args.object_store))
    for k, v in out.items():
        print(f"{k:32} {v:,.2f}" if isinstance(v, float) else f"{k:32} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
