"""The live view and the JSON records are pure functions of stats snapshots: fixed input,
fixed text."""

from __future__ import annotations

import json
import textwrap

from rich.console import Console

from cpumap.cli.view import (
    Sample,
    interval_record,
    progress_bar,
    progress_record,
    render_live,
    state_name,
)
from cpumap.engine import EnqueueRow, EntryStats, MapStats, ProducerStats
from cpumap.engine.entry import EntryState


def entry(cpu: int, k: int, state: object = EntryState.ACTIVE) -> EntryStats:
    return EntryStats(
        key=cpu, cpu=cpu, qsize=2048, generation=cpu + 1, state=state, pid=100 + cpu,  # type: ignore[arg-type]
        queued=3 * k, enqueue_processed=1000 * k, enqueue_drops=10 * k, enqueue_flushes=125 * k,
        kthread_processed=990 * k, kthread_batches=124 * k, kthread_drops=5 * k,
        kthread_sched=2 * k, delivered=980 * k, handler_drop=5 * k, xdp_pass=980 * k,
        xdp_drop=10 * k,
        enqueue_rows=(EnqueueRow(0, 1000 * k, 10 * k, 125 * k),),  # one RX producer
    )  # fmt: skip


def stats(k: int, state: object = EntryState.ACTIVE) -> MapStats:
    return MapStats(
        map_id=1, rx=3100 * k, xdp_drop=100 * k, enqueue_processed=3000 * k,
        delivered=2940 * k, handler_drop=15 * k, second_stage_pass=2940 * k,
        second_stage_drop=30 * k, kthread_processed=2970 * k,
        entries=(entry(0, k, state), entry(1, 2 * k, state)),
        producers=(ProducerStats(producer=0, rx=3100 * k, polls=4 * k),),
    )  # fmt: skip


# The RX process ran on CPU 1 at both samples.
BEFORE = Sample(2.0, stats(1), None, (1_000_000, 4_000_000), 1)
AFTER = Sample(4.0, stats(2), 17, (2_000_000, 4_000_000), 1)

LIVE = """\
    cpumap  every 2.0 s, elapsed 0:04
    [###############...............]  50%  2.0 MB of 4.0 MB  ETA 0:04
                                    pkt/s   drop/s  bulk-avg  sched/s  queued  state
    receive total                   1,550       50
      rx 0 on cpu 1                 1,550
      socket ring drops (total)                 17
    enqueue to cpu 0                  500        5      8.00
      rx 0 -> cpu 0                   500        5      8.00
    enqueue to cpu 1                1,000       10      8.00
      rx 0 -> cpu 1                 1,000       10      8.00
    kthread cpu 0                     495        2                  1       6  active
      xdp-in-kthread             pass 490   drop 5   redir 0
    kthread cpu 1                     990        5                  2      12  active
      xdp-in-kthread             pass 980  drop 10   redir 0
    delivered to handler            1,470        8
"""


def text_of(renderable: object, width: int = 120) -> str:
    c = Console(record=True, width=width, force_terminal=False)
    c.print(renderable)
    return "\n".join(line.rstrip() for line in c.export_text().splitlines()) + "\n"


def test_the_live_view_of_a_fixed_interval() -> None:
    rec = interval_record(BEFORE, AFTER, extended=True)
    assert text_of(render_live(rec, extended=True, title="cpumap")) == textwrap.dedent(LIVE)


def test_without_extended_there_are_no_producer_rows() -> None:
    text = text_of(render_live(interval_record(BEFORE, AFTER)))
    assert "rx 0 -> cpu" not in text and "rx 0 on cpu" not in text
    assert "enqueue to cpu 1" in text


def test_rates_are_per_interval_not_since_the_start() -> None:
    rec = interval_record(BEFORE, AFTER)
    assert rec["rx_pps"] == (6200 - 3100) / 2.0
    first = interval_record(None, BEFORE)  # the first interval: from zero
    assert first["rx_pps"] == 3100 / 2.0
    e0 = rec["entries"][0]
    assert e0["enqueue_pps"] == 500 and e0["bulk_avg"] == 8.0 and e0["sched_per_s"] == 1
    json.dumps(rec)  # a JSON record as it is


def test_a_state_shows_as_its_string_value_whatever_it_is() -> None:
    assert state_name(EntryState.ACTIVE) == "active"
    assert state_name("broken") == "broken"  # a state the engine may add later
    rec = interval_record(None, Sample(1.0, stats(1, "restarting")))
    assert {e["state"] for e in rec["entries"]} == {"restarting"}
    assert "restarting" in text_of(render_live(rec))


def test_progress_bar() -> None:
    empty = progress_bar(progress_record((0, 1000), 0.0))
    assert empty == "[" + "." * 30 + "]   0%  0.0 kB of 1.0 kB"  # no ETA before any progress
    full = progress_bar(progress_record((4_000_000, 4_000_000), 8.0))
    assert full.startswith("[" + "#" * 30 + "] 100%") and "ETA 0:00" in full
    assert progress_bar(progress_record((5_000_000, None), 1.0)) == "read 5.0 MB"
    eta = progress_record((1_000_000, 4_000_000), 10.0)
    assert eta is not None and eta["eta_s"] == 30.0 and eta["fraction"] == 0.25
