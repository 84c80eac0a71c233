"""A read that waits for a writer ends at a stop or a deadline (capture/stop.py), and a
capture trickling through a pipe is handed out as it comes."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from cpumap.capture import ReadInterrupted, Stop, open_capture
from cpumap.demo import demo_capture_path

DEMO = demo_capture_path().read_bytes()


def whole_packets(data: bytes) -> int:
    with open_capture(io.BytesIO(data), skip_bad=True) as r:
        return len(r.read_all())


def test_opening_a_fifo_with_no_writer_ends_at_the_stop(tmp_path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with Stop() as stop:
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        with pytest.raises(ReadInterrupted) as e:
            open_capture(fifo, stop=stop)
        timer.join()
    assert e.value.why == "stopped" and str(fifo) in str(e.value)


def test_opening_a_fifo_with_no_writer_ends_at_the_deadline(tmp_path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with Stop() as stop:
        stop.deadline = time.monotonic() + 0.1
        with pytest.raises(ReadInterrupted) as e:
            open_capture(fifo, stop=stop)
    assert e.value.why == "deadline"


@pytest.mark.parametrize("cut", [30_000, 100_000, 300_000])
def test_a_stalled_pipe_gives_every_whole_packet_before_the_wait(cut) -> None:
    """The writer sends part of a capture and keeps the pipe open: every packet whole in
    what it sent comes out of batches() before the read waits, then the stop ends it."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    sent = os.write(w, DEMO[:cut])  # what the pipe buffer takes
    with Stop() as stop, os.fdopen(r, "rb", buffering=0) as f:
        stop.deadline = time.monotonic() + 0.3
        got = 0
        with pytest.raises(ReadInterrupted), open_capture(f, stop=stop) as reader:
            for batch in reader.batches(1024):
                got += len(batch)
        os.close(w)
    assert got == whole_packets(DEMO[:sent])


def test_a_pipe_read_to_its_end_gives_the_whole_capture() -> None:
    r, w = os.pipe()

    def write() -> None:
        with os.fdopen(w, "wb") as out:
            for i in range(0, len(DEMO), 7_000):  # in pieces, as a live writer would
                out.write(DEMO[i : i + 7_000])
                out.flush()

    t = threading.Thread(target=write)
    t.start()
    with Stop() as stop, os.fdopen(r, "rb", buffering=0) as f, open_capture(f, stop=stop) as rd:
        n = sum(len(b) for b in rd.batches(1024))
    t.join()
    assert n == whole_packets(DEMO)
