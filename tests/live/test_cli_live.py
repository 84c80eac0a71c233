"""``cpumap run --iface``: a live run from the command line, with the socket ring's drops."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpumap.generator import Generator
from cpumap.live.netns import VethPair
from tests.helpers import veth_unavailable

pytestmark = [pytest.mark.slow, pytest.mark.root]
CPUMAP = str(Path(sys.executable).with_name("cpumap"))


_REASON = veth_unavailable("network namespaces and AF_PACKET sockets")


@pytest.mark.skipif(_REASON is not None, reason=str(_REASON))
def test_a_live_run_reports_every_frame_and_the_socket_rings_drops() -> None:
    sent = list(Generator(flows=16, sizes=(128,), count=2000, seed=9).batches(250))
    with VethPair(local_netns=False) as pair:
        argv = ["run", "--iface", pair.local.ifname, "--duration", "4", "--json", "-i", "0.2"]
        proc = subprocess.Popen(
            [CPUMAP, *argv, "--handler", "count"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 60)  # the first interval:
            assert ready  # the socket is open and reading
            first = json.loads(proc.stdout.readline())
            assert first["type"] == "interval" and first["source_drops"] == 0
            t0 = time.monotonic()
            with pair.injector() as inj:
                for b in sent:
                    inj.send(b)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["type"] == "summary" and not summary["lossless"]
    assert isinstance(summary["source_drops"], int)  # counted, not hidden
    # Every frame the kernel gave the socket has an outcome; the rest are its drops.
    assert summary["rx"] + summary["source_drops"] >= sum(len(b) for b in sent)
    assert summary["accounted"] and summary["in_flight"] == 0
    assert any("socket ring drops" in n for n in summary["notes"])
