"""Prometheus metrics: a map's counters, scraped live.

``MapCollector(cmap)`` is a prometheus_client collector: every scrape reads
``cmap.stats()`` and reports the counters as ``cpumap_*_total`` families, labelled by map
id and, per entry, by CPU.  ``serve(cmap, port)`` starts the standard HTTP exporter in a
thread (``cpumap run --metrics-port PORT`` does this).

The collector only reads; it never changes the map.  A scrape costs one ``stats()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .engine import EntryState

if TYPE_CHECKING:
    from .engine import CpuMap, EntryStats

_MAP_COUNTERS = {
    "rx": "Frames received by RX producers",
    "polls": "RX polls (driver poll calls)",
    "enqueue_processed": "Frames offered to rings at flush (xdp_cpumap_enqueue processed)",
    "kthread_processed": "Frames taken by workers (xdp_cpumap_kthread processed)",
    "kthread_batches": "Worker batches",
    "worker_deaths": "Worker processes that died while their entry needed them",
    "producer_deaths": "RX producer processes found dead (their partition recovered)",
    "hop_limit": "Frames dropped for being redirected between entries too often",
}

_ENTRY_COUNTERS = {
    "enqueue_processed": "Frames flushed towards this entry, drops included",
    "enqueue_drops": "Frames dropped at flush: ring full",
    "kthread_processed": "Frames this entry's worker took",
    "kthread_drops": "Kthread drops (build failures + handler drops and errors)",
    "delivered": "Frames the handler accepted",
    "sleeps": "Times the worker slept on an empty ring",
    "lost": "Frames lost with a dead worker or a broken entry",
    "restarts": "Replacement workers started",
}

# Gauges per entry: its health now.
_ENTRY_GAUGES = {
    "queued": "Frames in the ring now",
    "broken": "1 if the entry is broken (its workers kept dying; redirects to it fail)",
    "stuck": "1 if its worker has work waiting and made no progress for stuck_after",
    "heartbeat_age_seconds": "Seconds since its worker last made progress (-1: none yet)",
}


class MapCollector(Collector):
    """Reports one map's counters on every scrape."""

    def __init__(self, cmap: CpuMap) -> None:
        self.cmap = cmap

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.cmap.stats()
        mid = str(s.map_id)
        for name, doc in _MAP_COUNTERS.items():
            c = CounterMetricFamily(f"cpumap_{name}", doc, labels=["map_id"])
            c.add_metric([mid], getattr(s, name))
            yield c
        outcomes = CounterMetricFamily(
            "cpumap_outcome", "Frames by final outcome", labels=["map_id", "outcome"]
        )
        for outcome, n in s.outcomes().items():
            outcomes.add_metric([mid, outcome], n)
        yield outcomes
        inflight = GaugeMetricFamily(
            "cpumap_in_flight", "Frames with no outcome yet", labels=["map_id"]
        )
        inflight.add_metric([mid], s.in_flight)
        yield inflight
        for name, doc in (
            ("broken_entries", "Entries broken now"),
            ("stuck_workers", "Workers reported stuck now"),
        ):
            g = GaugeMetricFamily(f"cpumap_{name}", doc, labels=["map_id"])
            g.add_metric([mid], getattr(s, name))
            yield g
        live = [e for e in s.entries if e.state.current]
        for name, doc in _ENTRY_COUNTERS.items():
            c = CounterMetricFamily(f"cpumap_entry_{name}", doc, labels=["map_id", "cpu"])
            for e in live:
                c.add_metric([mid, str(e.cpu)], getattr(e, name))
            yield c
        for name, doc in _ENTRY_GAUGES.items():
            g = GaugeMetricFamily(f"cpumap_entry_{name}", doc, labels=["map_id", "cpu"])
            for e in live:
                g.add_metric([mid, str(e.cpu)], _entry_gauge(e, name))
            yield g


def _entry_gauge(e: EntryStats, name: str) -> float:
    if name == "broken":
        return float(e.state == EntryState.BROKEN)  # at its key: a retiring one is not listed
    if name == "stuck":
        return float(e.stuck)
    if name == "heartbeat_age_seconds":
        return e.heartbeat_age
    return float(getattr(e, name))


def registry_for(cmap: CpuMap) -> CollectorRegistry:
    """A fresh registry holding only ``cmap``'s collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MapCollector(cmap))
    return reg


def serve(cmap: CpuMap, port: int, addr: str = "127.0.0.1") -> CollectorRegistry:
    """Expose ``cmap``'s metrics over HTTP on ``addr:port`` (a daemon thread)."""
    from prometheus_client import start_http_server

    reg = registry_for(cmap)
    start_http_server(port, addr=addr, registry=reg)
    return reg
