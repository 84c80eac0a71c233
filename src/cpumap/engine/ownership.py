"""Frame ownership: who holds each frame, who may hand it on, and what recovery does when
a holder dies or is interrupted.  The one place the state machine is written down.

Every frame of the pool has a tag (``frame_pool.tag``, one uint32 per frame) naming its
holder.  Invariant 1: only a frame's holder writes its tag or its bytes, and a hand-over
writes the new tag *before* the hand-over is published, so the next holder never sees a
stale tag.  Invariant 2: a frame's outcome is counted exactly once, by the party that
holds it when the outcome is decided, in a record that it publishes with one store
(``counters.SeqRecord``) -- or, when that party died or was interrupted first, by its
recoverer, which can tell from the tags and that record whether the count happened.

The states
----------
===================  ===========================================  ====================
tag                  held by / meaning                            written by
===================  ===========================================  ====================
``FREE``             its partition's allocator: free              the allocator
``RX``               the partition's RX producer, in a poll, no   the allocator; its
                     outcome yet (being filled, run, staged)      recoverer
``DONE``             the RX producer, outcome decided (dropped,   the producer
                     passed, redirect error, ring full), to be
                     released after the poll's commit
``QUEUED + pub``     published into a ring -- or about to be, by  publisher ``pub``: an RX
                     publisher ``pub`` (a registry index), which  producer, or a worker's
                     tags before it stores the ring's tail        second stage
``HAND + slot``      taken by slot ``slot``'s worker, in its      that worker (``Ring.take``)
                     hand buffer
``RETURNED``         released; its allocator takes it back        the last holder
===================  ===========================================  ====================

Transitions: FREE -> RX (alloc) -> DONE (outcome) -> RETURNED (after the commit);
RX -> QUEUED+pub (flush) -> HAND+slot (take) -> RETURNED (after the worker's commit), or
HAND+slot -> QUEUED+pub' (its second stage forwards; then HAND+slot' at the next worker),
or QUEUED+pub -> RX|HAND (a flush that did not fit: the holder takes the rest back);
RETURNED -> FREE (the allocator's reclaim, whole blocks only).

The producer's commit protocol (rx.py)
--------------------------------------
A producer's record (``ProducerCounter``) has a ``PHASE`` word, stored with the counters::

    alloc                  tags RX                        phase CLOSED: RX frames not in rx
    commit OPEN            rx += n, polls, no_frame       phase OPEN:   RX, DONE frames counted
                                                          in rx, no outcome
    run, dispatch, flush   RX -> DONE | QUEUED+p
    commit CLOSED          every outcome of the poll      phase CLOSED: DONE frames' outcomes
                                                          counted
    release                DONE -> RETURNED

So ``rx`` is counted where ownership is taken, and an outcome is never counted before or
after the frame's release with nothing to tell which: the tags and the phase say it.

Recovery, from each state (:func:`recover_partition`, by whoever holds the producer's
registry slot after it: a new producer claiming it, the controller's supervisor finding
its owner dead, or the producer itself after an exception)
------------------------------------------------------------------------------------------
* ``QUEUED + p`` but in no ring's window (:func:`unpublished`): a flush that never stored
  the tail, or the remainder of a lossless wait -- back to RX (no outcome).
* ``RX``: counted ``outcome`` (``LOST``; ``XDP_ABORTED`` for an interrupted poll); in a
  CLOSED phase ``rx`` is counted for them too (they were allocated, not yet counted).
* ``DONE``: in an OPEN phase counted ``outcome`` (the poll's outcomes were not committed);
  in a CLOSED phase only released (they were).
* then one commit (phase CLOSED) and every such frame RETURNED.
* ``QUEUED + p`` inside a ring, ``HAND``, ``RETURNED``, ``FREE``: nothing to do -- the ring's
  worker, that worker's supervisor, the next allocator own them.

A dead worker (supervisor.py, worker.py's commit protocol): frames of its hand still
tagged ``HAND + slot``, and those tagged ``QUEUED + (its second stage)`` in no ring (a
forward cut short), are its own: counted ``lost`` unless its record committed the batch,
then released.  A ring nobody will consume (broken, abandoned): its window is released
and counted ``lost``.

Why no frame ends in two outcomes or none: each state has exactly one party that may
count its outcome (the table's holder) and one that recovers it (its successor); a tag
is changed only by its holder (or, once the holder is dead or is the caller, by its
recoverer, which runs while the holder's registry slot or worker slot is its own), and
every count happens in the same single store that moves the phase or the commit
position the recoverer reads.  Why :func:`unpublished` is exact: its publisher is dead or
is the caller, so no frame gains that tag meanwhile; a frame it finds outside every ring's
window either never was published, or was taken by a consumer before the window was
read -- and a consumer retags a frame ``HAND`` before it advances past it, so the tags,
read after the windows, show it is no longer the publisher's.
"""

from __future__ import annotations

import numpy as np

from .control import MapShared
from .counters import PHASE_CLOSED, PHASE_OPEN, ProducerCounter
from .frame_pool import TAG_DONE, TAG_QUEUED, TAG_RETURNED, TAG_RX, FramePool
from .ring import Ring

_P = ProducerCounter


def queued_tag(publisher: int) -> int:
    """The tag of a frame published (or about to be) by registry index ``publisher``."""
    return TAG_QUEUED + publisher


def published_mask(count: int, rings: list[Ring]) -> np.ndarray:
    """A bool per frame of a pool of ``count``: in some ring's window right now."""
    mask = np.zeros(count, dtype=bool)
    for ring in rings:
        cons, prod = ring.positions()
        if prod > cons:
            mask[ring.contents(cons, prod)] = True
    return mask


def unpublished(
    pool: FramePool, rings: list[Ring], frames: np.ndarray, publisher: int
) -> np.ndarray:
    """Of ``frames``, those tagged as published by ``publisher`` that no ring holds: a
    flush cut short.  Precondition: ``publisher`` is dead or is the caller (see the
    module docstring for why the answer is then exact)."""
    tag = queued_tag(publisher)
    cand = frames[pool.tag[frames] == tag]
    if not len(cand):
        return cand
    cand = cand[~published_mask(pool.count, rings)[cand]]
    return cand[pool.tag[cand] == tag]  # re-read after the windows: not taken meanwhile


def held_without_outcome(pool: FramePool, shared: MapShared, p: int) -> int:
    """Frames producer ``p`` holds now that are counted in ``rx`` and have no outcome (a
    snapshot: exact while it does not run -- stopped, or the caller).  Read-only: for
    reporting what a live producer keeps (``abandoned`` after ``close()``)."""
    values = shared.producer_record(p).read()
    lo, hi = pool.partition_range(p)
    tags = pool.tag[lo:hi]
    part = np.arange(lo, hi, dtype=np.uint32)
    n = len(unpublished(pool, shared.rings(), part, p))
    if values[_P.PHASE] == PHASE_OPEN:
        n += int(np.count_nonzero((tags == TAG_RX) | (tags == TAG_DONE)))
    return n


def recover_partition(
    pool: FramePool,
    shared: MapShared,
    p: int,
    *,
    outcome: int = _P.LOST,
    record: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Give back every frame producer ``p``'s partition holds with no outcome, counting
    it ``outcome``, and commit; returns (the committed record, frames counted).

    ``record``: the record to continue (the producer's own, after an exception); default
    the committed one.  Precondition: the caller holds ``p``'s registry slot, and its
    previous holder is dead or is the caller."""
    rec = shared.producer_record(p)
    values = rec.read() if record is None else record.copy()
    lo, hi = pool.partition_range(p)
    part = np.arange(lo, hi, dtype=np.uint32)
    orphans = unpublished(pool, shared.rings(), part, p)
    pool.tag[orphans] = TAG_RX
    tags = pool.tag[lo:hi]
    held = lo + np.flatnonzero(tags == TAG_RX)
    done = lo + np.flatnonzero(tags == TAG_DONE)
    if values[_P.PHASE] == PHASE_OPEN:
        counted = len(held) + len(done)
    else:
        values[_P.RX] += len(held)
        counted = len(held)
    values[outcome] += counted
    values[_P.PHASE] = PHASE_CLOSED
    rec.publish(values)
    pool.tag[held] = TAG_RETURNED
    pool.tag[done] = TAG_RETURNED
    return values, counted
