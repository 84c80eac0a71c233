"""A source's shared frames (``cpumap.cluster.shared_frames``) without Ray: a reader in
another process sees what the source wrote and refuses what is not that pool; a slot is
written again only once every entry holding it said DONE; faults quarantine exactly the
slots a faulty entry holds; the entry's counting rule (``cpumap.cluster.actor``) stores
DONE exactly when the last frame of the slot has its outcome; nothing is left behind."""

from __future__ import annotations

import dataclasses
import gc
import mmap
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpumap import _atomics
from cpumap.cluster.actor import EntryActor, _Part, _SlotFlag, _slots_done
from cpumap.cluster.shared_frames import (
    DONE,
    SharedFrames,
    SharedFramesReader,
    SharedHandle,
    SharedPart,
    mark_done,
    read_totals,
    write_totals,
)

NAME = "cpumap-shared-frames"  # the memfd's name (its link: "/memfd:<NAME> (deleted)")
POLL = 8
FRAME = 256
HEADROOM = 64


# -- what a process holds of shared frames ------------------------------------------------------
def memfd_fds(pid: int | str = "self") -> list[str]:
    """The fds of process ``pid`` that are a shared-frames memfd."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own fd)
            continue
        if link.startswith(f"/memfd:{NAME} "):
            out.append(link)
    return out


def memfd_maps(pid: int | str = "self") -> int:
    """How many mappings of a shared-frames memfd process ``pid`` has."""
    return sum(
        f"/memfd:{NAME} " in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
    )


def held(pid: int | str = "self") -> tuple[int, int]:
    """(fds, mappings) of shared-frames memfds in process ``pid``.  Python's ``mmap`` keeps
    a duplicate of the fd it mapped (until the mapping is closed): a reader that mapped a
    pool holds one fd of it, the source two (its own and the mapping's)."""
    return len(memfd_fds(pid)), memfd_maps(pid)


def plus(base: tuple[int, int], fds: int, maps: int) -> tuple[int, int]:
    """``base`` and that many more (the test process's own counts are taken relative to
    what it held before: a failed test's traceback may pin another's mapping)."""
    return base[0] + fds, base[1] + maps


# -- a reader in another process ----------------------------------------------------------------
def serve() -> None:
    """The body of a reader process (an entry's side, no Ray): answers the commands
    pickled to its stdin, one at a time, on its stdout, until ``exit``."""
    import pickle
    import sys

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    reader = SharedFramesReader()
    while True:
        cmd, *args = pickle.load(inp)
        answer: Any = None
        if cmd == "exit":
            answer = held()
        elif cmd == "attach":
            answer = (reader.attach(args[0]), *held())
        elif cmd == "read":
            block, idx, _flag = reader.frames(args[0])
            answer = (
                block.data[idx].tobytes(),
                block.desc[idx].tobytes(),
                idx.tolist(),
                block.data.flags.writeable or block.desc.flags.writeable or idx.flags.writeable,
            )
            del block, idx  # views of the mapping: forget() unmaps once they are gone
        elif cmd == "done":
            mark_done(reader.frames(args[0])[2])
            answer = True
        elif cmd == "bell":  # an entry's doorbell: sleep until parts come, take them
            token, key, timeout = args
            ring = reader.doorbell(token, key)
            rc = ring.wait(timeout) if not ring.available() else None
            n = ring.available()
            slots = ring.take(n, np.empty(n, dtype=np.uint32)).tolist()
            ring.drop_hand()
            posted = [reader.posted(token, s, key) for s in slots]
            answer = (rc, [(p.slot, p.lo, p.hi, p.total) for p in posted])
            answer += ([reader.frames(p)[1].tolist() for p in posted],)
        elif cmd == "forget":
            reader.forget(args[0])
            gc.collect()
            answer = held()
        pickle.dump(answer, out)
        out.flush()
        if cmd == "exit":
            return


class ReaderProcess:
    """A reader in a separate process: a fresh interpreter (it inherits none of our fds
    or mappings, as an entry's process on the node), driven through its stdin/stdout.
    Not multiprocessing's spawn: that leaves its resource tracker running."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parents[2]  # the repository: ``tests`` imports
        code = "from tests.cluster.test_shared_frames import serve; serve()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root
        )

    def ask(self, *cmd: Any) -> Any:
        self.send(*cmd)
        return self.answer(cmd[0])

    def send(self, *cmd: Any) -> None:
        """Send ``cmd`` without waiting for its answer (:meth:`answer`)."""
        assert self.proc.stdin is not None
        pickle.dump(cmd, self.proc.stdin)
        self.proc.stdin.flush()

    def answer(self, what: str) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert ready, f"the reader did not answer {what}"
        return pickle.load(self.proc.stdout)

    def close(self) -> tuple[int, int]:
        """Stop it; what it held of shared frames just before it exited."""
        left = self.ask("exit")
        assert self.proc.wait(30) == 0
        return left


@contextmanager
def reader_process() -> Iterator[ReaderProcess]:
    r = ReaderProcess()
    try:
        yield r
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
        r.proc.wait(30)
        for f in (r.proc.stdin, r.proc.stdout):
            if f is not None:
                f.close()


@contextmanager
def shared_frames(slots: int = 4, keys: int = 2) -> Iterator[SharedFrames]:
    sf = SharedFrames(slots, POLL, FRAME, HEADROOM, keys)
    try:
        yield sf
    finally:
        sf.close()


def write_poll(sf: SharedFrames, slot: int, seed: int) -> None:
    """Fill slot ``slot``'s frames and descriptors with something recognisable."""
    rng = np.random.default_rng(seed)
    block = sf.slot_block(slot)
    block.data[:] = rng.integers(0, 256, block.data.shape, dtype=np.uint8)
    block.desc["length"] = rng.integers(60, FRAME - HEADROOM, POLL)
    block.desc["wire_len"] = block.desc["length"] + 4
    block.desc["ts_ns"] = rng.integers(1, 1 << 60, POLL)
    block.desc["rx_hash"] = rng.integers(0, 1 << 32, POLL, dtype=np.uint32)


def place(sf: SharedFrames, slot: int, at: int, frames: list[int]) -> tuple[int, int]:
    """Write the indices of ``frames`` (of the slot) at ``at`` of its index area, as a
    poll writes an entry's frames; their range in the index area."""
    base = slot * POLL
    sf.index[base + at : base + at + len(frames)] = [base + f for f in frames]
    return base + at, base + at + len(frames)


# -- attach: the pool, and only the pool ---------------------------------------------------------
@pytest.mark.slow  # a reader process (tests/conftest.py: multi-process is slow)
def test_a_reader_in_another_process_sees_the_frames_the_source_wrote() -> None:
    with shared_frames() as sf, reader_process() as r:
        slot = sf.try_acquire()
        assert slot is not None
        write_poll(sf, slot, seed=1)
        lo0, hi0 = place(sf, slot, 0, [6, 1, 3])  # entry 0's frames, in arrival order
        lo1, hi1 = place(sf, slot, 3, [0, 7, 2, 4])  # entry 1's
        parts = [sf.part(slot, 0, lo0, hi0, 3), sf.part(slot, 1, lo1, hi1, 4)]
        sf.poll_done(slot)
        assert r.ask("attach", sf.handle) == (True, 1, 1)  # mapped (the mapping's fd)
        for p in parts:
            rows, desc, idx, writable = r.ask("read", p)
            want = sf.index[p.lo : p.hi]
            assert idx == want.tolist()
            assert rows == sf.block.data[want].tobytes()
            assert desc == sf.block.desc[want].tobytes()
            assert not writable  # the handler gets read-only frames
        # A part of one entry's frames split at any point reads the same frames.
        head = SharedPart(sf.handle, slot, 1, lo1, lo1 + 1, 4)
        assert r.ask("read", head)[2] == [slot * POLL + 0]
        # Their DONE, stored in the other process, frees the slot here.
        for p in parts:
            r.ask("done", p)
        assert [sf.try_acquire() for _ in range(4)] == [0, 1, 2, 3]  # the lowest first
        assert r.close() == (1, 1)  # it still maps the pool: nothing told it to forget


@pytest.mark.slow  # a reader process
def test_a_published_part_wakes_the_entrys_doorbell_in_another_process() -> None:
    """The doorbell (``SharedFrames.publish``): the reader sleeps on entry 1's ring; the
    source publishes a poll's parts for both entries; the reader is woken -- not by its
    safety-net timeout -- and takes exactly entry 1's part, its range and frames as
    written, while entry 0's waits in its own ring.  Their DONE frees the slot."""
    from cpumap.engine.ring import WAIT_TIMEOUT

    with shared_frames() as sf, reader_process() as r:
        assert r.ask("attach", sf.handle)[0]
        token = sf.handle.token
        r.send("bell", token, 1, 30.0)  # sleeps: nothing published yet (or woken at once)
        slot = sf.try_acquire()
        assert slot is not None
        write_poll(sf, slot, seed=3)
        lo0, hi0 = place(sf, slot, 0, [5, 2])
        lo1, hi1 = place(sf, slot, 2, [7, 0, 3])
        parts = [sf.part(slot, 0, lo0, hi0, 2), sf.part(slot, 1, lo1, hi1, 3)]
        assert all(sf.publish(p) for p in parts)
        sf.poll_done(slot)
        rc, posted, frames = r.answer("bell")
        assert rc != WAIT_TIMEOUT  # a wake-up reached it (or it saw the part first)
        assert posted == [(slot, lo1, hi1, 3)]
        assert frames == [[slot * POLL + f for f in (7, 0, 3)]]
        rc, posted, frames = r.ask("bell", token, 0, 30.0)
        assert posted == [(slot, lo0, hi0, 2)] and frames == [[slot * POLL + f for f in (5, 2)]]
        assert r.ask("bell", token, 0, 0.0)[1] == []  # taken once: the ring is empty
        # The slot is held until both entries said DONE with it.
        assert [sf.try_acquire() for _ in range(3)] == [s for s in range(4) if s != slot]
        assert sf.try_acquire() is None
        for p in parts:
            r.ask("done", p)
        assert sf.try_acquire() == slot
        r.close()


def test_a_totals_board_is_read_whole_or_not_at_all() -> None:
    """``write_totals`` / ``read_totals`` (the entry's totals in the source's pool): a
    reader racing a writer that rewrites every count to the same new value never sees
    two values in one read (a sequence lock), and sees the writer's last write at the
    end; an unwritten board reads as None, as one whose writer died mid-write (odd)."""
    with shared_frames(keys=2) as sf:
        assert sf.totals(0) is None  # nothing written
        board = sf.board_of(1)
        seen: list[tuple[int, ...]] = []
        done = threading.Event()

        def write() -> None:
            for i in range(1, 3001):
                write_totals(board, 77, 5, np.full(6, i, dtype=np.int64))
            done.set()

        w = threading.Thread(target=write)
        w.start()
        while not done.is_set():
            got = sf.totals(1)
            if got is not None:
                seen.append(got[2][:6])
        w.join()
        assert all(len(set(c)) == 1 for c in seen), [c for c in seen if len(set(c)) > 1][:3]
        assert sf.totals(1) == (77, 5, (3000,) * 6 + (0,) * 7)
        assert sf.totals(0) is None  # another entry's board is untouched
        _atomics.store_u64(board.ctypes.data, int(board[0]) + 1)  # a writer died mid-write
        assert read_totals(board, tries=50) is None


def _refused(sf: SharedFrames, other: SharedFrames, tmp_path: Path) -> Iterator[SharedHandle]:
    h = sf.handle
    yield dataclasses.replace(h, token=h.token ^ 1)
    yield dataclasses.replace(h, boot_id="0" * 36)
    with open(tmp_path / "regular", "wb") as f:  # a regular file of ours, of the same size
        f.truncate(h.size)
        f.flush()
        yield dataclasses.replace(h, fd=f.fileno())
    stranger = os.memfd_create("not-cpumap-frames", os.MFD_CLOEXEC)  # a memfd, another name
    try:
        os.ftruncate(stranger, h.size)
        yield dataclasses.replace(h, fd=stranger)
    finally:
        os.close(stranger)
    yield dataclasses.replace(h, size=h.size + mmap.PAGESIZE)
    yield dataclasses.replace(h, size=h.size - mmap.PAGESIZE)
    # Another pool of the same layout: its name and size pass, its token does not.
    yield dataclasses.replace(h, fd=other.handle.fd)
    closed = os.dup(h.fd)
    os.close(closed)
    yield dataclasses.replace(h, fd=closed)  # no such fd
    yield dataclasses.replace(h, pid=_a_dead_pid())


def _a_dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait(30)
    return p.pid


@pytest.mark.slow  # a reader process (tests/conftest.py: multi-process is slow)
def test_attach_refuses_what_is_not_the_pool_and_opens_nothing(tmp_path: Path) -> None:
    with shared_frames() as sf, shared_frames() as other, reader_process() as r:
        assert other.handle.size == sf.handle.size
        for bad in _refused(sf, other, tmp_path):
            assert r.ask("attach", bad) == (False, 0, 0), bad
        assert r.ask("attach", sf.handle) == (True, 1, 1)  # the right one still maps
        assert r.ask("attach", sf.handle) == (True, 1, 1)  # once
        assert r.ask("forget", sf.handle.token) == (0, 0)
        assert r.close() == (0, 0)


@pytest.mark.slow  # a reader process (tests/conftest.py: multi-process is slow)
def test_the_same_process_refuses_a_wrong_token_too(tmp_path: Path) -> None:
    """Attach in the source's own process (as a reader on the node would, through /proc):
    the refused ones leave neither an fd nor a mapping beyond the source's own."""
    gc.collect()  # what a failed test before may pin goes first
    before = held()
    with shared_frames() as sf, shared_frames() as other:
        reader = SharedFramesReader()
        mine = held()
        assert mine == plus(before, 4, 2)  # the two pools' own fds and mappings
        for bad in _refused(sf, other, tmp_path):
            assert not reader.attach(bad), bad
            assert held() == mine, bad
        assert reader.attach(sf.handle) and held() == plus(mine, 1, 1)
        reader.forget(sf.handle.token)
        assert held() == mine
    assert held() == before


# -- slots -------------------------------------------------------------------------------------
@contextmanager
def pool_and_reader(slots: int, keys: int = 2) -> Iterator[tuple[SharedFrames, SharedFramesReader]]:
    with shared_frames(slots, keys) as sf:
        reader = SharedFramesReader()
        assert reader.attach(sf.handle)
        try:
            yield sf, reader
        finally:
            reader.forget(sf.handle.token)


def take_part(sf: SharedFrames, slot: int, key: int) -> SharedPart:
    """A part of one frame of ``slot`` for entry ``key`` (the slot's only one for it)."""
    lo, hi = place(sf, slot, key, [key])
    return sf.part(slot, key, lo, hi, 1)


def done(reader: SharedFramesReader, part: SharedPart) -> None:
    mark_done(reader.frames(part)[2])


def test_a_slot_comes_back_only_when_every_entry_holding_it_is_done() -> None:
    with pool_and_reader(slots=2) as (sf, reader):
        s = sf.try_acquire()
        assert s == 0
        p0, p1 = take_part(sf, s, 0), take_part(sf, s, 1)
        sf.poll_done(s)  # parts came from it: it stays held
        assert sf.try_acquire() == 1
        sf.poll_done(1)  # no part came from slot 1: free again
        assert sf.try_acquire() == 1
        assert sf.try_acquire() is None  # 0 held by the entries, 1 by this poll
        done(reader, p0)
        assert sf.try_acquire() is None  # entry 1 still holds slot 0
        assert 1 in sf.holders()
        done(reader, p1)
        assert sf.holders() == set()
        assert sf.try_acquire() == 0
        # Taken again, its flags start over: one entry's DONE of the last use is gone.
        q1 = take_part(sf, 0, 1)
        sf.poll_done(0)
        sf.poll_done(1)
        assert sf.try_acquire() == 1
        assert sf.try_acquire() is None
        done(reader, q1)
        assert sf.try_acquire() == 0


def test_holders_are_only_the_entries_not_yet_done() -> None:
    """An entry DONE with a slot another entry still holds does not hold it: it is not
    the one the source waits for (and must not be treated as stuck)."""
    with pool_and_reader(slots=2) as (sf, reader):
        s = sf.try_acquire()
        assert s is not None
        p0, _p1 = take_part(sf, s, 0), take_part(sf, s, 1)
        sf.poll_done(s)
        assert sf.holders() == {0, 1}
        done(reader, p0)
        assert sf.holders() == {1}


def test_acquire_gives_up_at_its_deadline() -> None:
    with pool_and_reader(slots=1) as (sf, _reader):
        assert sf.try_acquire() == 0
        take_part(sf, 0, 0)
        sf.poll_done(0)
        assert sf.acquire(time.monotonic()) is None  # already due: one try, no wait
        assert sf.acquire(time.monotonic() + 0.01) is None
        assert not sf.exhausted


@pytest.mark.slow  # a reader process (tests/conftest.py: multi-process is slow)
def test_acquire_waits_for_a_done_from_another_process() -> None:
    with shared_frames(slots=1) as sf, reader_process() as r:
        assert sf.try_acquire() == 0
        p = take_part(sf, 0, 1)
        sf.poll_done(0)
        assert r.ask("attach", sf.handle)[0]
        r.ask("done", p)
        assert sf.acquire(time.monotonic() + 60) == 0
        r.close()


def test_lose_quarantines_only_the_slots_that_entry_still_holds() -> None:
    with pool_and_reader(slots=4) as (sf, reader):
        a, b, c, d = (sf.try_acquire() for _ in range(4))
        pa = take_part(sf, a, 0)  # entry 0 holds a
        pb = take_part(sf, b, 1)  # entry 1 holds b
        pc = take_part(sf, c, 0)  # entry 0 held c, but is done with it
        pd0, pd1 = take_part(sf, d, 0), take_part(sf, d, 1)  # both hold d
        for s in (a, b, c, d):
            sf.poll_done(s)
        done(reader, pc)
        done(reader, pd0)
        assert sf.holders() == {0, 1}
        sf.lose(0)  # a only: entry 0 is DONE with c and d (entry 1 still holds d)
        assert sf.holders() == {1}  # b and d: a lost slot holds nobody
        assert not sf.exhausted
        for p in (pa, pb, pd1):  # even DONE, a lost slot is never written again
            done(reader, p)
        got = {sf.try_acquire() for _ in range(3)}
        assert got == {b, c, d}
        assert sf.try_acquire() is None
        for s in (b, c, d):
            sf.poll_done(s)
        assert {sf.try_acquire() for _ in range(3)} == {b, c, d}
        sf.lose(1)  # holds nothing now: nothing more is lost
        sf.poll_done(b)
        assert sf.try_acquire() == b


def test_exhausted_when_every_slot_is_lost() -> None:
    with pool_and_reader(slots=3) as (sf, reader):
        slots = [sf.try_acquire() for _ in range(3)]
        parts = [take_part(sf, s, s % 2) for s in slots]  # entries 0, 1, 0
        for s in slots:
            sf.poll_done(s)
        sf.lose(0)
        assert not sf.exhausted and sf.holders() == {1}
        sf.lose(1)
        assert sf.exhausted and sf.holders() == set()
        for p in parts:
            done(reader, p)
        assert sf.try_acquire() is None
        assert sf.acquire(time.monotonic() + 60) is None  # no wait: nothing can come free


# -- the entry's counting rule (actor._parts / _slots_done) -------------------------------------
def entry_side(reader: SharedFramesReader) -> SimpleNamespace:
    """What :meth:`EntryActor._parts` uses of an entry: its reader, lock, counts and the
    pools it mapped per source."""
    return SimpleNamespace(shared=reader, lock=threading.Condition(), slot_left={}, shared_of={})


def flag_of(reader: SharedFramesReader, part: SharedPart) -> int:
    return _atomics.load_u32(reader.frames(part)[2])


@st.composite
def uses_of_a_slot(draw: st.DrawFn, keys: int) -> list[list[int]]:
    """Per entry, how a slot's frames for it are cut into the parts the source sends (a
    list of part sizes; an entry with none has no frames in the slot)."""
    out = []
    room = POLL
    for _ in range(keys):
        total = draw(st.integers(0, room))
        room -= total
        sizes = []
        while total:
            n = draw(st.integers(1, total))
            sizes.append(n)
            total -= n
        out.append(sizes)
    return out


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_done_is_stored_exactly_when_the_last_frame_has_its_outcome(data: st.DataObject) -> None:
    """A slot's frames for each of 3 entries, in parts of any size, each part split by the
    queue anywhere, received and given outcomes (handled or refused) in any order: each
    (slot, entry) flag says DONE right after the outcome of that entry's last frame, never
    before; the source takes the slot again only then; for two uses of the slot by the
    same entries (nothing of the first use's counts is left to confuse the second)."""
    keys = 3
    with pool_and_reader(slots=1, keys=keys) as (sf, reader):
        entry = entry_side(reader)
        for _use in range(2):
            assert sf.try_acquire() == 0
            cut = data.draw(uses_of_a_slot(keys), label="parts per entry")
            offers: list[tuple[int, SharedPart]] = []
            at = 0
            for key, sizes in enumerate(cut):
                total = sum(sizes)
                for n in sizes:
                    lo, hi = place(sf, 0, at, list(range(at, at + n)))
                    offers.append((key, sf.part(0, key, lo, hi, total)))
                    at += n
            sf.poll_done(0)
            if not offers:
                continue  # no part came from the slot: free already
            _drive(data, sf, entry, cut, offers)
            assert sf.try_acquire() == 0
            sf.poll_done(0)


def _drive(
    data: st.DataObject,
    sf: SharedFrames,
    entry: SimpleNamespace,
    cut: list[list[int]],
    offers: list[tuple[int, SharedPart]],
) -> None:
    reader = entry.shared
    left = {key: sum(sizes) for key, sizes in enumerate(cut)}  # frames with no outcome
    by_key = {key: part for key, part in offers}
    waiting = list(range(len(offers)))  # offers not yet received
    queued: list[_Part] = []  # received, no outcome yet
    while waiting or queued:
        if waiting and (not queued or data.draw(st.booleans(), label="receive")):
            key, part = offers[waiting.pop(data.draw(st.integers(0, len(waiting) - 1)))]
            (got,) = EntryActor._parts(entry, 7, [part])  # type: ignore[arg-type]
            assert (got.total, len(got)) == (part.total, len(part))
            while len(got) > 1 and data.draw(st.booleans(), label="split"):
                head, got = got.split(data.draw(st.integers(1, len(got) - 1)))
                queued.append(head)
            queued.append(got)
            continue
        p = queued.pop(data.draw(st.integers(0, len(queued) - 1), label="outcome"))
        key = next(k for k, q in by_key.items() if reader.frames(q)[2] == p.flag.addr)
        with entry.lock:
            _slots_done(entry.slot_left, [p])
        left[key] -= len(p)
        for k, q in by_key.items():  # every entry's flag: DONE iff its frames are all done
            assert (flag_of(reader, q) == DONE) == (left[k] == 0), (k, left)
        if any(left.values()):
            assert sf.try_acquire() is None
    assert entry.slot_left == {}


@contextmanager
def pool_mapped_at(
    reader: SharedFramesReader, flag: int, candidates: list[SharedFrames]
) -> Iterator[SharedFrames]:
    """Of ``candidates`` (pools made while the forgotten one was still mapped, so that
    their own mappings are elsewhere), the first that ``reader`` maps with its flag at
    address ``flag``, where the forgotten pool's was; those mapped elsewhere stay mapped
    meanwhile, so that the next lands in another hole (skip if none lands there)."""
    try:
        for sf in candidates:
            assert reader.attach(sf.handle)
            if reader.frames(SharedPart(sf.handle, 0, 0, 0, 0, 0))[2] == flag:
                yield sf
                return
        pytest.skip("no pool was mapped where the forgotten one was: nothing to confuse")
    finally:
        for sf in candidates:
            reader.forget(sf.handle.token)
            sf.close()


@pytest.mark.parametrize("stale, total", [(2, 1), (1, 3)], ids=["never-done", "done-early"])
def test_a_slot_left_unfinished_does_not_confuse_the_next_pool(stale: int, total: int) -> None:
    """An entry got 2 of a slot's ``2 + stale`` frames (the rest went another way), then
    forgot the pool; the next pool, mapped where it was, has ``total`` frames of a slot
    for it: DONE comes with the last of those, not before, not never."""
    reader = SharedFramesReader()
    entry = entry_side(reader)
    with shared_frames(slots=1, keys=1) as a:
        assert reader.attach(a.handle) and a.try_acquire() == 0
        lo, hi = place(a, 0, 0, [0, 1])
        (p,) = EntryActor._parts(entry, 1, [a.part(0, 0, lo, hi, 2 + stale)])  # type: ignore[arg-type]
        with entry.lock:
            _slots_done(entry.slot_left, [p])
        old = p.flag.addr
        del p
        candidates = [SharedFrames(1, POLL, FRAME, HEADROOM, 1) for _ in range(16)]
        reader.forget(a.handle.token)
    gc.collect()
    with pool_mapped_at(reader, old, candidates) as b:
        assert b.try_acquire() == 0
        lo, hi = place(b, 0, 0, list(range(total)))
        (q,) = EntryActor._parts(entry, 2, [b.part(0, 0, lo, hi, total)])  # type: ignore[arg-type]
        assert q.flag.addr == old  # the same address, another pool (its own token)
        b.poll_done(0)
        done_after: list[object] = []  # after each frame's outcome: is the flag DONE
        for i in range(total):
            try:
                with entry.lock:
                    one = _Part(2, q.block, q.idx[i : i + 1], q.flag, total)
                    _slots_done(entry.slot_left, [one])
            except KeyError:  # counted past DONE: in the actor, its worker thread dies
                done_after.append("KeyError")
                break
            done_after.append(_atomics.load_u32(q.flag.addr) == DONE)
        back = b.try_acquire()
        del q
        reader.forget(b.handle.token)
    # Checked with both pools gone (a failure must not pin them for the next test).
    assert done_after == [False] * (total - 1) + [True]
    assert back == 0


def test_slots_done_counts_refused_and_handled_alike() -> None:
    """``_slots_done`` over parts of two flags at once (an offer's refused rest): each flag
    is DONE when its own count reaches 0; parcels (no flag) are ignored."""
    flags = np.zeros(2, dtype=np.uint32)
    a, b = _SlotFlag(7, flags.ctypes.data), _SlotFlag(7, flags.ctypes.data + 4)
    block: Any = None
    idx = np.arange(10, dtype=np.uint32)
    left = {a: 6, b: 4}
    _slots_done(
        left,
        [_Part(0, block, idx[:4], a, 6), _Part(0, block, idx[:3]), _Part(0, block, idx[:3], b, 4)],
    )
    assert flags.tolist() == [0, 0] and left == {a: 2, b: 1}
    _slots_done(left, [_Part(0, block, idx[:1], b, 4)])
    assert flags.tolist() == [0, DONE] and left == {a: 2}
    _slots_done(left, [*_Part(0, block, idx[:2], a, 6).split(1)])
    assert flags.tolist() == [DONE, DONE] and left == {}


# -- nothing left behind ------------------------------------------------------------------------
@pytest.mark.slow  # a reader process (tests/conftest.py: multi-process is slow)
def test_nothing_is_left_once_both_sides_closed() -> None:
    shm_before = set(os.listdir("/dev/shm"))
    gc.collect()  # what a failed test before may pin goes first
    before = held()
    with reader_process() as r:
        sf = SharedFrames(3, POLL, FRAME, HEADROOM, 2)
        try:
            assert held() == plus(before, 2, 1)
            assert r.ask("attach", sf.handle) == (True, 1, 1)
            s = sf.try_acquire()
            assert s is not None
            p = take_part(sf, s, 0)
            r.ask("read", p)
            # An entry keeps its mapping while a view of it lives; forget() lets it go.
            local = SharedFramesReader()
            assert local.attach(sf.handle)
            view = local.frames(p)[0]
            local.forget(sf.handle.token)
            assert held() == plus(before, 3, 2)  # the view keeps it mapped here
            del view
            gc.collect()
            assert held() == plus(before, 2, 1)
        finally:
            sf.close()
            sf.close()  # idempotent
        assert held() == before  # neither an fd nor a mapping of the source's
        assert r.ask("forget", sf.handle.token) == (0, 0)
        assert r.close() == (0, 0)
    new = set(os.listdir("/dev/shm")) - shm_before
    assert not [n for n in new if "cpumap" in n or "frames" in n], new


@pytest.mark.slow  # a reader process (tests/conftest.py: multi-process is slow)
def test_a_source_closed_first_leaves_the_reader_its_frames() -> None:
    """The source ends (closes its memfd) while an entry still maps the pool: the entry
    reads on what it holds (the memory lives while a process maps it); once it forgets
    the pool, the memory is gone from both."""
    gc.collect()  # what a failed test before may pin goes first
    before = held()
    with reader_process() as r:
        sf = SharedFrames(2, POLL, FRAME, HEADROOM, 1)
        s = sf.try_acquire()
        assert s is not None
        write_poll(sf, s, seed=3)
        p = take_part(sf, s, 0)
        want = sf.block.data[sf.index[p.lo : p.hi]].tobytes()
        assert r.ask("attach", sf.handle)[0]
        sf.close()
        assert held() == before
        assert r.ask("read", p)[0] == want
        assert r.ask("forget", sf.handle.token) == (0, 0)
        assert r.close() == (0, 0)


@pytest.mark.parametrize("keys", [1, 3])
def test_a_pool_of_any_entries_is_whole_at_the_end(keys: int) -> None:
    """Every slot through a full cycle with every entry done: all come back."""
    with pool_and_reader(slots=3, keys=keys) as (sf, reader):
        for _round in range(2):
            slots = [sf.try_acquire() for _ in range(3)]
            assert sorted(slots) == [0, 1, 2]  # type: ignore[type-var]
            parts = [take_part(sf, s, k) for s in slots for k in range(keys)]  # type: ignore[arg-type]
            for s in slots:
                sf.poll_done(s)  # type: ignore[arg-type]
            assert sf.try_acquire() is None and sf.holders() == set(range(keys))
            for p in parts:
                done(reader, p)
            assert sf.holders() == set()
