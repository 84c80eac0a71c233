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
``KERNEL``           lent by its partition's RX producer to a     the producer (lend,
                     source that places frames itself: in an      poll_placed,
                     AF_XDP socket's fill ring, in the kernel's   return_lent); its
                     hands, or written and in the socket's RX     recoverer
                     ring, not yet read
===================  ===========================================  ====================

Transitions: FREE -> RX (alloc) -> DONE (outcome) -> RETURNED (after the commit);
RX -> QUEUED+pub (flush) -> HAND+slot (take) -> RETURNED (after the worker's commit), or
HAND+slot -> QUEUED+pub' (its second stage forwards; then HAND+slot' at the next worker),
or QUEUED+pub -> RX|HAND (a flush that did not fit: the holder takes the rest back);
RETURNED -> FREE (the allocator's reclaim, whole blocks only).
Placed frames: FREE -> KERNEL (lend) -> RX (poll_placed, then as above), or KERNEL ->
RETURNED (return_lent, once the lender's sockets are closed).

Placed frames: the kernel's part (AF_XDP; live/xsk_source.py)
-------------------------------------------------------------
A source that places frames itself (the kernel writing into a UMEM that *is* the pool's
data array) is lent frames, places packets in them, and hands their indices back with
their bytes and descriptors written; the producer moves indices only.  While a frame is
KERNEL it is in exactly one of the places ``live/xsk.py``'s chunk diagram names, and
each is left by one move of one party::

    lend (producer)        fill.produce (lender)     the kernel takes it for a frame
    FREE -------> KERNEL: in the lender's hands ----> fill ring ----------> kernel
                                                                              |
    RX <------ poll_placed (producer) <-- lender peeks <-- RX ring <-- frame written

* ``lend`` takes frames from the producer's own allocator (FREE, its partition, whole
  blocks from its reclaim) and tags them KERNEL in the same store: no other party
  allocates in the partition, so a lent frame is nobody else's.
* The kernel hands a chunk back only by an RX descriptor (``received``); a frame it
  could not deliver (RX ring full, fill ring empty) is counted by the socket
  (``rx_ring_full``, ``rx_dropped``) and its chunk stays in the kernel's hands -- still
  KERNEL, to be written by the next frame.  So every frame redirected to a socket is read
  from its RX ring once, or counted as a source drop once.
* ``poll_placed`` retags what the lender read off its RX ring RX, before the OPEN commit
  counts them in ``rx``: from there on they are ordinary RX frames.  Each RX descriptor
  is read once (``xsk_rings``: one consumer, acquire/release indices), so a chunk is
  placed once per frame the kernel wrote into it.
* The way back to the fill ring is the allocator's: workers release frames (RETURNED),
  the producer's reclaim finds whole blocks, ``lend`` tags them KERNEL again and the
  lender submits them -- the kernel's ``xdp_return_frame``.  Block reclaim rather than a
  per-poll tag scan: a fill ring is consumed in the order it was filled, so frames come
  back in lending order and a block comes back whole soon after its last frame is
  received; the reclaim is one vectorised scan, run only when a block's worth may be
  back, and its argument (frame_pool.FrameAllocator.reclaim) is unchanged by KERNEL:
  a KERNEL frame is neither FREE nor RETURNED, so its block waits for it.  The price:
  a frame the kernel keeps (its own free list, a zero-copy driver's hardware ring)
  holds back its block's neighbours -- a few frames, against a fill ring that holds the
  rest of the partition.
* Completion ring: nothing is transmitted (no TX ring), so no chunk goes through it.
* ``return_lent`` (KERNEL -> RETURNED) only when the lender's sockets are closed: then no
  descriptor in a fill or RX ring can be used any more, and chunks in the kernel's hands
  are released with the socket (the kernel unbinds it after a grace period), so the
  memory is simply the pool's again.  Frames in the RX ring are read out first when the
  source stops (it detaches its program, waits a grace period, drains), so they are
  counted in ``rx``, not returned unseen.

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
* ``KERNEL`` (``kernel_gone``): when the lender is gone -- the producer's process died
  (its sockets closed with it: the lender keeps no copy of them in any forked child), or
  a new producer claims the slot -- they are simply the partition's again: RETURNED, no
  outcome (no frame was ever placed in them, or it was placed and never read: counted
  by nobody, like a frame a NIC ring holds at a reset).  When the caller is the live
  producer (an exception in a poll, or its ``close()``), they are still lent: the socket
  may write them any moment; they are left KERNEL, and the lender returns them after it
  closes its sockets (``return_lent``).

A dead worker that held placed frames is no different: they are ``HAND + slot``, the
supervisor counts them ``lost`` and releases them (RETURNED), the producer's reclaim and
``lend`` put them back in the fill ring.  Nothing leaks, and after the lender and the
producer close, every frame is FREE or RETURNED: ``audit().whole``.

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
from .frame_pool import TAG_DONE, TAG_KERNEL, TAG_QUEUED, TAG_RETURNED, TAG_RX, FramePool
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
    kernel_gone: bool = True,
) -> tuple[np.ndarray, int]:
    """Give back every frame producer ``p``'s partition holds with no outcome, counting
    it ``outcome``, and commit; returns (the committed record, frames counted).

    ``record``: the record to continue (the producer's own, after an exception); default
    the committed one.  ``kernel_gone``: frames lent to the kernel (``KERNEL``) are the
    partition's again (their lender is gone with its previous holder) -- False when the
    caller is the live producer, whose lender may still be writing them.  Precondition:
    the caller holds ``p``'s registry slot, and its previous holder is dead or is the
    caller."""
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
    if kernel_gone:
        return_lent(pool, p)
    return values, counted


def return_lent(pool: FramePool, p: int) -> int:
    """Frames of partition ``p`` lent to the kernel (``KERNEL``) released (RETURNED);
    returns how many.  Precondition: their lender's sockets are closed (see "Placed
    frames"), and the caller holds ``p``'s registry slot."""
    lo, hi = pool.partition_range(p)
    lent = lo + np.flatnonzero(pool.tag[lo:hi] == TAG_KERNEL)
    pool.tag[lent] = TAG_RETURNED
    return len(lent)
