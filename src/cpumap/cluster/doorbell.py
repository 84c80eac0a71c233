"""An entry's doorbell: the parts a source on its machine publishes to it, taken with no call.

A source shares its frames with the entries on its machine (``shared_frames.py``); for each
poll it writes an entry's range of the slot and pushes the slot's number into that entry's
doorbell ring in the pool -- the local map's ring (``engine/ring.py``), with its sleep and
wake-up.  :class:`Doorbell` is the thread in the entry (``actor.py``) that sleeps on that
ring and hands what comes to the entry, which queues it as it queues an offer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from ..engine.ring import Ring

DOORBELL_NAP = 0.05  # s: a doorbell's longest sleep (a safety net: wake-ups are not lost)


class Doorbell(threading.Thread):
    """Takes the parts one source publishes to this entry through its doorbell ring and
    hands them to the entry (``took``: ``EntryActor._from_doorbell``), which queues them
    as it queues an offer's (``EntryActor.offer``): what fits; for a ``lossless`` source the
    rest as room appears, else refused.  No Ray call is on the way: the source publishes
    and goes on, and wakes this thread only when it sleeps.

    Why the books stay exact: the entry counts this thread in ``offering`` for the source
    *before* it takes from the ring, and out once the parts are queued or refused, so a
    published part is always in the ring, in this thread's hands, or counted accepted or
    refused -- and the tally's check (``EntryActor._settled``) looks at all three under
    the entry's lock.  Why no part is missed: the ring's sleep and wake-up
    (``engine/ring.py``) lose no wake-up, and a stop is seen by
    :meth:`~cpumap.engine.ring.Ring.wait` (it does not sleep once asked to stop)."""

    def __init__(
        self,
        ring: Ring,
        source: int,
        token: int,
        key: int,
        lossless: bool,
        took: Callable[[Doorbell, int], None],
        wake_room: Callable[[], None],
    ) -> None:
        super().__init__(name=f"cpumap-doorbell-{source}", daemon=True)
        self.ring = ring
        self.source = source
        self.token = token
        self.key = key
        self.lossless = lossless
        self.took = took  # the entry's: count in, take, queue, count out
        self.wake_room = wake_room  # the entry's: wake whoever waits for queue room
        self.hand = np.empty(ring.capacity, dtype=np.uint32)
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            n = self.ring.available()
            if not n:
                self.ring.wait(DOORBELL_NAP)
                continue
            self.took(self, n)

    def take(self, n: int) -> list[int]:
        """The next ``n`` slot numbers of the ring (their places in it freed)."""
        slots = self.ring.take(n, self.hand).tolist()
        self.ring.drop_hand()
        return slots

    def stop(self) -> None:
        """Stop taking (the source's run is over, or the entry ends) and wait for it."""
        self.stopping = True
        self.ring.request_stop()
        self.wake_room()
        self.join(timeout=5.0)
