"""`cpumap run FILE` reads a regular pcap file in place (capture/mapped.py), and says what
the general reader says of the same packets: the gzip copy of the file, which keeps the
general reader, is the reference -- the same flows, counts, damage and exit status."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from cpumap.capture import PcapWriter
from cpumap.capture.mapped import MappedCapture
from cpumap.packets import Packet
from tests.cli.test_cli import run_cli
from tests.helpers import udp_frame

PACKETS = 3000


def _write(path: Path) -> None:
    sizes = (60, 200, 700, 1500, 2500)  # 2500: above a frame's room, truncated
    with PcapWriter(path) as w:
        for i in range(PACKETS):
            w.write(Packet(udp_frame(i % 40, i, sizes[i % len(sizes)]), ts_ns=10**18 + i))


def _gzip_copy(path: Path) -> Path:
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    return gz


def _spy(monkeypatch) -> list[int]:
    """The records each MappedCapture placed itself, as it closes."""
    placed: list[int] = []
    close = MappedCapture.close

    def closing(self: MappedCapture) -> None:
        if not self.closed:
            placed.append(self.placed)
        close(self)

    monkeypatch.setattr(MappedCapture, "close", closing)
    return placed


def _flows(text: str) -> list[str]:
    """The flow table's rows (without the CPU column's widths)."""
    rows = text.split("flows")[-1].splitlines()
    return [re.sub(r"\s+", " ", r) for r in rows if r.startswith("│")]


@pytest.mark.slow
def test_run_reads_a_pcap_in_place_and_reports_what_the_general_reader_does(
    tmp_path, monkeypatch
) -> None:
    path = tmp_path / "mix.pcap"
    _write(path)
    gz = _gzip_copy(path)
    placed = _spy(monkeypatch)
    rc, text = run_cli("run", str(path))
    assert placed == [PACKETS]  # every record by the fast walk
    rc_gz, text_gz = run_cli("run", str(gz))
    assert placed == [PACKETS]  # the gzip copy: the general reader
    assert rc == rc_gz == 0
    accounted = f"every frame accounted for: received {PACKETS:,}"
    assert accounted in text and accounted in text_gz
    assert _flows(text) == _flows(text_gz) and len(_flows(text)) == 10


@pytest.mark.slow
def test_run_on_a_damaged_pcap_read_in_place_fails_and_skips_as_the_general_reader(
    tmp_path, monkeypatch, capsys
) -> None:
    whole = tmp_path / "whole.pcap"
    _write(whole)
    path = tmp_path / "bad.pcap"
    path.write_bytes(whole.read_bytes()[:-300])  # the last record cut short
    gz = _gzip_copy(path)
    placed = _spy(monkeypatch)
    for extra in ([], ["--skip-bad"]):
        rc, text = run_cli("run", str(path), *extra)
        err = capsys.readouterr().err
        rc_gz, text_gz = run_cli("run", str(gz), *extra)
        err_gz = capsys.readouterr().err
        assert rc == rc_gz == (0 if extra else 4)
        assert err.replace("bad.pcap", "X") == err_gz.replace("bad.pcap.gz", "X")
        if not extra:
            assert "offset" in err and "cut short" in err and "--skip-bad" in err
        assert _flows(text) == _flows(text_gz)
        got = f"received {PACKETS - 1:,}"
        assert got in text and got in text_gz
    assert placed == [PACKETS - 1, PACKETS - 1]  # the fast walk stopped at the cut record
