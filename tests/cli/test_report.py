"""The report's notes: what the summary's text says balances with its tables."""

from __future__ import annotations

import re
import signal

from cpumap.cli.report import Ending, at_once_note, event_notes
from cpumap.engine import WorkerEvent


def _numbers(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?= frames)", text)]


def test_a_broken_entry_names_the_frames_queued_when_it_broke() -> None:
    """The entry's lost (11,264 in the table) is what its workers held when they died
    (9,216) and what was queued in its ring when it broke (2,048): the text names both."""
    died = [WorkerEvent(i, "died", 1, 1, 1, 100 + i, exitcode=-9, lost=1024) for i in range(9)]
    broken = WorkerEvent(10, "broken", 1, 1, 1, 0, lost=2048)
    notes = event_notes([*died, broken])
    assert sum(n for note in notes for n in _numbers(note)) == 11_264, notes
    assert "2,048 frames queued in its ring are counted lost" in notes[-1]


def test_a_broken_entry_with_an_empty_ring_adds_nothing() -> None:
    notes = event_notes([WorkerEvent(10, "broken", 1, 1, 1, 0, lost=0)])
    assert "queued" not in notes[0]


def test_a_second_signal_is_named_with_what_it_cost() -> None:
    ending = Ending(1.0, signal.SIGINT, at_once=signal.SIGTERM, killed_lost=3072, cut=True)
    (note,) = at_once_note(ending)
    assert "second signal (SIGTERM)" in note and "3,072 frames they held are counted lost" in note
    assert "xdp aborted" in note
    assert at_once_note(Ending(1.0, signal.SIGINT)) == []


def test_a_starved_producer_is_a_line_of_the_summary() -> None:
    ev = WorkerEvent(0, "starved", 0, -1, 0, 1234)
    (line,) = event_notes([ev])
    assert line.startswith("RX producer 0 had no free frame") and "pool partition" in line
