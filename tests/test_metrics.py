"""Prometheus metrics reflect the map's counters."""

from __future__ import annotations

import re

import pytest
from prometheus_client import generate_latest

from cpumap import CpuMap, FlowHash, possible_cpus
from cpumap.metrics import registry_for
from tests.helpers import flow_batch

pytestmark = pytest.mark.slow

CPU = min(possible_cpus())


def _value(text: str, pattern: str) -> float:
    m = re.search(rf"^{pattern} (\S+)$", text, re.M)
    assert m, pattern
    return float(m.group(1))


def test_scrape_reports_outcomes_and_entries() -> None:
    with CpuMap(CPU + 1) as m:
        m.update(CPU, 256)
        m.run(flow_batch(4, 25), FlowHash(m, [CPU]))
        text = generate_latest(registry_for(m)).decode()
        mid = m.map_id
    assert _value(text, rf'cpumap_rx_total\{{map_id="{mid}"\}}') == 100
    assert _value(text, rf'cpumap_outcome_total\{{map_id="{mid}",outcome="delivered"\}}') == 100
    assert _value(text, rf'cpumap_in_flight\{{map_id="{mid}"\}}') == 0
    assert _value(text, rf'cpumap_entry_delivered_total\{{cpu="{CPU}",map_id="{mid}"\}}') == 100


def test_cli_serves_metrics() -> None:
    import socket
    import urllib.request

    from rich.console import Console

    from cpumap.cli import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    console = Console(record=True, width=200)
    assert main(["run", "--metrics-port", str(port), "--quiet"], console=console) == 0
    # The exporter thread outlives the run in this process: scrape the finished map.
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert re.search(r'^cpumap_rx_total\{map_id="\d+"\} 2000\.0$', body, re.M)
