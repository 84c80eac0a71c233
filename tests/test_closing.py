"""The one ``with`` form of everything that must be closed (``cpumap.closing.Closing``)."""

from __future__ import annotations

import io

import pytest

from cpumap.capture import PcapngWriter, PcapWriter, open_capture, write_capture
from cpumap.closing import Closing
from cpumap.packets import Packet
from cpumap.programs import CpuTable


class _Held(Closing):
    def __init__(self) -> None:
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


def test_with_gives_the_object_and_closes_it_however_the_block_ends() -> None:
    with _Held() as held:
        assert isinstance(held, _Held)
    assert held.closes == 1
    with pytest.raises(KeyError), _Held() as held:
        raise KeyError("boom")
    assert held.closes == 1  # and the error goes on: __exit__ does not swallow it


def test_the_package_context_managers_are_closing() -> None:
    buf = io.BytesIO()
    write_capture(buf, [Packet(b"\x00" * 60)])
    with open_capture(io.BytesIO(buf.getvalue())) as reader:
        assert isinstance(reader, Closing) and reader.format == "pcapng"
    with pytest.raises(ValueError, match="closed"):
        list(reader)
    for cls in (PcapWriter, PcapngWriter):
        with cls(io.BytesIO()) as w:
            assert type(w) is cls
    with CpuTable(2, [0]) as table:
        assert type(table) is CpuTable
