"""Where a source's polls land, and what becomes of each poll.

:func:`pump` is a source task's reading loop (``cpumap.cluster.source``, ``read_capture``):
poll after poll it takes the frames the poll lands in (:class:`Landing`: a free slot of the
frames it shares with the entries on its machine, ``shared_frames.py``, or a block of its
own), places the capture's records in them (read in place, ``capture/mapped.py``; or the
general reader's batches copied in), runs the steering program over them, counts the
verdicts, groups the redirected frames by entry and hands each group to the source's
:class:`~cpumap.cluster.source.Outbox`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..abi import XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX
from ..capture import CaptureError
from ..capture.mapped import MappedCapture, open_placing
from ..packets import PacketBatch
from ..programs.runner import ProgramRunner
from .frames import BlockLender, FrameBlock, fill
from .shared_frames import SharedFrames

if TYPE_CHECKING:  # the source's own types (it imports this module)
    from .source import Books, KeySpace, Outbox, SourceOptions

LOOK_EVERY = 0.05  # s: a source waiting for a shared slot looks at its answers this often
PING_AFTER = 0.25  # s: ... and asks the entries holding slots if they were restarted
VERDICT_NAMES = (
    (XDP_ABORTED, "xdp_aborted"),
    (XDP_DROP, "xdp_drop"),
    (XDP_PASS, "xdp_pass"),
    (XDP_TX, "xdp_tx"),
)


def pump(
    path: str,
    program: Any,
    keys: KeySpace,
    out: Outbox,
    books: Books,
    options: SourceOptions,
) -> tuple[str | None, float]:
    """Read, steer and send the whole file; the error that stopped it early, if any, and
    the ``time.time()`` of its first poll (0.0: none).

    A regular pcap or pcapng file is read in place, as a local run reads it
    (``capture/mapped.py``): each poll's records are copied from the file's mapping
    straight into the frames the poll lands in (:class:`Landing`), with the skb's flow
    hash riding in their descriptors -- no read into chunks, no second copy, and the
    entry's flow table reads no packet byte.  Anything else (gzip, a FIFO) and the rest of
    a file past a record the fast walk will not judge come from the general reader,
    copied in by :func:`~cpumap.cluster.frames.fill`."""
    land = Landing(program, keys, out, options)
    started = 0.0
    try:
        with open_placing(path, skip_bad=options.skip_bad, batch_size=options.poll_size) as rd:
            if isinstance(rd, MappedCapture):
                land.read_in_place(rd)
            try:
                batches = None if land.reader else rd.batches(options.poll_size)
                while True:
                    base = land.take_frames()
                    try:
                        batch = land.reader.next_batch() if land.reader else next(batches, None)
                    except (CaptureError, OSError):
                        # The walk may have placed records before the damage it handed
                        # on (or the fault): they were read, and are steered and counted.
                        n, cut = land.lender.take()
                        if n:
                            started = started or time.time()
                            _poll(n, cut, base, land, out, books)
                        raise
                    if batch is None:
                        break
                    n, cut = land.landed(batch)
                    if n:
                        started = started or time.time()
                        _poll(n, cut, base, land, out, books)
                    land.poll_done()
            finally:
                land.poll_done()
                land.stop_reading()
    except (CaptureError, OSError) as e:
        return f"{type(e).__name__}: {e}", started
    return None, started


class Landing:
    """Where a source's polls land: a slot of its frames shared with the entries on its
    node (``shared_frames.py``), taken afresh each poll -- or, when none is shared or
    every slot is lost to faults, a block of its own, reused every poll (its frames
    packed, copied, before the next).  Holds the block, the program's runner over it, and
    the lender a capture read in place writes through."""

    def __init__(self, program: Any, keys: KeySpace, out: Outbox, options: SourceOptions) -> None:
        self.program = program
        self.keys = keys
        self.out = out
        self.options = options
        self.frames = out.frames
        self.reader: MappedCapture | None = None
        self.slot: int | None = None
        self._bind()

    def _bind(self) -> None:
        o = self.options
        if self.frames is not None:
            self.block = self.frames.block
        else:
            self.block = FrameBlock.empty(o.poll_size, o.frame_size, o.headroom)
        self.runner = ProgramRunner(self.program, self.block, target=self.keys)
        self.lender = BlockLender(self.block, o.poll_size)
        if self.reader is not None:
            self.reader.detach()
            self.reader.attach(self.lender)

    def read_in_place(self, reader: MappedCapture) -> None:
        self.reader = reader
        reader.attach(self.lender)

    def stop_reading(self) -> None:
        if self.reader is not None:
            self.reader.detach()

    def take_frames(self) -> int:
        """The first frame of the next poll's: of a free slot (waiting for one, as a
        producer waits on a full ring: first offering what is gathered, so that the
        entries can finish theirs; an entry holding a slot past the stall deadline is
        stuck), or 0 of the source's own block."""
        f = self.frames
        if f is None:
            return 0
        slot = f.try_acquire()
        if slot is None:
            slot = self._wait_for_slot(f)
        if slot is None:  # every slot lost: read on into a block of its own
            self.out.stop_sharing()
            self.frames = None
            self._bind()
            return 0
        self.slot = slot
        self.lender.base = slot * f.poll
        return self.lender.base

    def _wait_for_slot(self, f: SharedFrames) -> int | None:
        """Offer what is gathered (the entries must see it to finish any slot), then wait
        for a free slot.  Meanwhile, every ``LOOK_EVERY`` s, take the answers that came,
        and ask the entries holding slots which incarnation they are: an offer that
        failed, or a holder that was restarted (even with every offer of the old one
        answered), makes that entry's slots lost at once, and its later frames go through
        the object store -- not a wait to the stall deadline.  Past the deadline, the
        entries still holding slots are stuck.  None: every slot is lost."""
        self.out.flush_all()
        stall = self.options.stall_timeout
        began = time.monotonic()
        deadline = began + stall
        while not f.exhausted:
            slot = f.acquire(min(deadline, time.monotonic() + LOOK_EVERY))
            if slot is not None:
                return slot
            self.out.take_answers()
            self.out.take_pings()
            if time.monotonic() - began > PING_AFTER:  # not a handler's usual pace
                self.out.ping(f.holders())
            if time.monotonic() < deadline:
                continue
            held = f.holders()
            if not held:
                break
            for key in held:
                self.out.stuck(key, f"no shared slot freed in {stall:g}s: entry treated as dead")
            deadline = time.monotonic() + stall
        return f.try_acquire()

    def landed(self, batch: PacketBatch) -> tuple[int, int]:
        """The poll's frames and how many were cut: placed by the walk (an empty batch),
        or ``batch`` copied in."""
        if not len(batch):
            return self.lender.take()
        if self.frames is not None and self.slot is not None:
            return len(batch), fill(self.frames.slot_block(self.slot), batch)
        return len(batch), fill(self.block, batch)

    def poll_done(self) -> None:
        """The poll is sent: its slot, if no entry got a part of it, is free again."""
        if self.frames is not None and self.slot is not None:
            self.frames.poll_done(self.slot)
        self.slot = None


def _poll(n: int, cut: int, base: int, land: Landing, out: Outbox, books: Books) -> None:
    """One poll over frames ``base..base+n-1`` of the landing's block (``cut`` of them
    truncated): steer, count, group by entry, send -- and, when the frames are shared,
    write the redirected frames, grouped by entry, into the slot's index area, where each
    entry's part of them is a range."""
    c = books.counters
    c["rx"] += n
    c["polls"] += 1
    c["truncated"] += cut
    idx = np.arange(base, base + n, dtype=np.uint32)
    v = land.runner.run(idx, base)
    for verdict, name in VERDICT_NAMES:
        c[name] += v.counts[verdict]
    if not v.counts[XDP_REDIRECT]:
        return
    red, rkeys = _redirected(v, out.keys, c)
    if not len(red):
        return
    lo_key, hi_key = int(rkeys.min()), int(rkeys.max())
    if lo_key != hi_key:  # several entries: group by entry, each in arrival order
        order = np.argsort(rkeys, kind="stable")
        red, rkeys = red[order], rkeys[order]
    red = (red + base).astype(np.uint32)
    slot, shared = land.slot, land.frames
    if shared is not None and slot is not None:
        shared.index[base : base + len(red)] = red
    if lo_key == hi_key:  # one entry (one CPU, or a flow-hash poll of one flow): one group
        bounds: list[int] = []
    else:
        bounds = (np.flatnonzero(np.diff(rkeys)) + 1).tolist()
    for lo, hi in zip([0, *bounds], [*bounds, len(red)], strict=True):
        at = None if slot is None else (slot, base + lo)
        out.send(int(rkeys[lo]), land.block, red[lo:hi], at)


def _redirected(v: Any, keys: KeySpace, c: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The frames (poll-relative) redirected to a live entry, and their keys; those
    redirected to no entry (or one found dead) counted ``redirect_err``, the rest
    ``xdp_redirect``."""
    red = np.flatnonzero(v.verdicts == XDP_REDIRECT)
    rkeys = v.keys[red].astype(np.int64)
    if int(rkeys.max()) < keys.max_entries and not keys.dead:  # the usual case: all good
        c["xdp_redirect"] += len(red)
        return red, rkeys
    ok = rkeys < keys.max_entries
    if keys.dead:
        ok &= ~np.isin(rkeys, list(keys.dead))
    n_bad = len(ok) - int(np.count_nonzero(ok))
    c["redirect_err"] += n_bad
    c["xdp_redirect"] += len(red) - n_bad
    return red[ok], rkeys[ok]
