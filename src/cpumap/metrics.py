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
    from .engine import CpuMap

_MAP_COUNTERS = {
    "rx": "Frames received by RX producers",
    "polls": "RX polls (driver poll calls)",
    "enqueue_processed": "Frames offered to rings at flush (xdp_cpumap_enqueue processed)",
    "kthread_processed": "Frames taken by workers (xdp_cpumap_kthread processed)",
    "kthread_batches": "Worker batches",
}

_ENTRY_COUNTERS = {
    "enqueue_processed": "Frames flushed towards this entry, drops included",
    "enqueue_drops": "Frames dropped at flush: ring full",
    "kthread_processed": "Frames this entry's worker took",
    "kthread_drops": "Kthread drops (build failures + handler drops and errors)",
    "delivered": "Frames the handler accepted",
    "sleeps": "Times the worker slept on an empty ring",
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
        live = [e for e in s.entries if e.state == EntryState.ACTIVE]
        for name, doc in _ENTRY_COUNTERS.items():
            c = CounterMetricFamily(f"cpumap_entry_{name}", doc, labels=["map_id", "cpu"])
            for e in live:
                c.add_metric([mid, str(e.cpu)], getattr(e, name))
            yield c
        queued = GaugeMetricFamily(
            "cpumap_entry_queued", "Frames in the ring now", labels=["map_id", "cpu"]
        )
        for e in live:
            queued.add_metric([mid, str(e.cpu)], e.queued)
        yield queued


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
