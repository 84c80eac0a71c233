"""The CPU table (programs/cpu_table.py): the steering programs' "available CPUs", set by
anyone at any time and read once per frame or batch under a sequence lock.

* set/read, the generation, the read-only snapshot, the errors;
* the seqlock: no torn read against a writer in another process; a writer that died
  mid-update makes reads and sets fail (``BrokenTableError``) instead of hanging;
* the table is shared memory: a forked child reads what the parent set.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest

import cpumap.programs.cpu_table as cpu_table_mod
from cpumap.programs.cpu_table import BrokenTableError, CpuTable


def test_cpu_table_set_read_and_generation() -> None:
    with CpuTable(4) as t:
        assert (t.generation, t.cpus, len(t)) == (0, (), 0)
        assert t.set([3, 1]) == 1
        snap = t.read()
        assert (snap.generation, snap.cpus, snap.array.tolist()) == (1, (3, 1), [3, 1])
        assert t.read() is snap  # unchanged: the cached snapshot, one atomic load
        with pytest.raises(ValueError):
            snap.array[0] = 7  # snapshots are read-only
        assert t.set([]) == 2 and t.cpus == ()
        assert t.set(np.array([0, 0, 1])) == 3 and t.cpus == (0, 0, 1)
        assert "generation=3" in repr(t)


def test_cpu_table_errors() -> None:
    with pytest.raises(ValueError, match=r"^capacity must be an int >= 1, not 0$"):
        CpuTable(0)
    with CpuTable(2, [1]) as t:
        with pytest.raises(ValueError, match=r"^3 CPUs do not fit in a table of capacity 2$"):
            t.set([0, 1, 2])
        with pytest.raises(TypeError, match=r"^a CPU must be an int, not str$"):
            t.set(["0"])
        with pytest.raises(ValueError, match=r"^CPU -1 is not a u32$"):
            t.set([-1])
        assert (t.generation, t.cpus) == (1, (1,))  # unchanged by the failed sets


def _writer(table: CpuTable, stop) -> None:
    g = 0
    while g % 64 or not stop.is_set():
        k = g % table.capacity + 1
        table.set([g % 251] * k)  # every entry says which table this is; k says how many
        g += 1


@pytest.mark.slow
def test_cpu_table_never_torn_under_a_writer_in_another_process() -> None:
    """A forked writer sets tables whose entries all equal ``round % 251`` and whose count
    is a function of the round; the reader must only ever see whole tables.  It reads
    until it has seen 300 different generations."""
    capacity = 16
    with CpuTable(capacity) as table:
        ctx = multiprocessing.get_context("fork")
        stop = ctx.Event()
        writer = ctx.Process(target=_writer, args=(table, stop))
        writer.start()
        seen = set()
        deadline = time.monotonic() + 30
        try:
            while len(seen) < 300:
                assert time.monotonic() < deadline, f"saw only {len(seen)} generations"
                snap = table.read()
                if snap.generation == 0:
                    continue
                g = snap.generation - 1  # the writer's round
                assert snap.cpus == (g % 251,) * (g % capacity + 1), snap
                seen.add(snap.generation)
        finally:
            stop.set()
            writer.join(30)
        assert writer.exitcode == 0
        final = table.read()
        assert final.generation % 64 == 0 and final.generation >= max(seen)


def test_cpu_table_dead_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    from cpumap import _atomics

    monkeypatch.setattr(cpu_table_mod, "READ_TIMEOUT", 0.05)
    with CpuTable(2, [0]) as table:
        _atomics.store_u32(table._seq_addr, 3)  # a writer died between its CAS and its store
        with pytest.raises(BrokenTableError):
            table.read()
        with pytest.raises(BrokenTableError):
            table.set([1])


@pytest.mark.slow
def test_a_forked_process_reads_the_parents_table() -> None:
    """The table is shared memory: a set in the parent is seen by a forked child."""
    with CpuTable(2, [0]) as table:
        go_r, go_w = os.pipe()
        back_r, back_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait for the parent's set, then report what it reads
            try:
                os.read(go_r, 1)
                os.write(back_w, bytes(table.read().cpus))
            finally:
                os._exit(0)
        table.set([1, 1])
        os.write(go_w, b"x")
        assert os.read(back_r, 2) == b"\x01\x01"
        _, status = os.waitpid(pid, 0)
        for fd in (go_r, go_w, back_r, back_w):
            os.close(fd)
        assert status == 0
