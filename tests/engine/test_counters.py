"""The counter tables and the double-buffered kthread record."""

from __future__ import annotations

import numpy as np

from cpumap.engine.counters import (
    KTHREAD_WORDS,
    PRODUCER_WORDS,
    EnqueueCounter,
    KthreadCounter,
    KthreadRecord,
    ProducerCounter,
    add_counters,
)
from cpumap.shm import Layout


def test_every_counter_table_fits_its_record() -> None:
    assert max(ProducerCounter) < PRODUCER_WORDS
    assert max(KthreadCounter) < KTHREAD_WORDS
    assert len(set(ProducerCounter)) == len(ProducerCounter)  # no two names share a word
    assert [int(c) for c in EnqueueCounter] == [0, 1, 2]


def test_kthread_record_read_is_never_torn() -> None:
    layout = Layout("review-krec")
    add_counters(layout, 1, 1, 0)
    seg = layout.create()
    writer = KthreadRecord(seg, 0)
    reader = KthreadRecord(seg, 0)
    writer.reset()
    writer.publish(np.zeros(KTHREAD_WORDS, np.int64))  # seq 1, buffer 1 = all 0

    class Interleave:
        """The reader's view of the buffers: between its first seq load and its copy,
        the writer publishes batch 1 and starts batch 2 (into the reader's buffer)."""

        def __init__(self, real) -> None:
            self.real = real
            self.fired = False

        def __getitem__(self, i):
            if not self.fired:
                self.fired = True
                writer.publish(np.ones(KTHREAD_WORDS, np.int64))  # seq 2, buffer 0
                self.real[1, : KTHREAD_WORDS // 2] = 2  # batch 2 half written into buffer 1
            return self.real[i]

    reader._rec = Interleave(reader._rec)
    out = reader.read()
    assert len(set(out.tolist())) == 1, f"torn record: {out.tolist()}"
