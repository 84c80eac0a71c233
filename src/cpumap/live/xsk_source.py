"""AF_XDP source: frames land in the frame pool, placed by the kernel, at line rate.

One :class:`XskSource` feeds one :class:`~cpumap.engine.rx.RxProducer` from every RX
queue of one interface (or the queues given): it attaches an XDP program that redirects
each queue into its AF_XDP socket (``kernel.xdp``: an XSKMAP and
``bpf_redirect_map(xskmap, rx_queue_index, XDP_PASS)``), registers the frame pool's data
array as the sockets' UMEM (``Umem(pool.data)``: chunk ``i`` *is* pool frame ``i``), and
stocks each socket's fill ring with frames lent by the producer.  The kernel writes each
frame straight into a pool frame; a poll reads the RX rings' descriptors, writes the pool
descriptors with numpy in one go and hands the producer frame *indices*
(:meth:`RxProducer.poll_placed`): no byte is copied in user space.

Stable API (the benchmark and docs use it)::

    src = XskSource(rx, interface, *, queues=None, mode=XdpMode.NATIVE,
                    bind=XskMode.AUTO, ring_size=None)
    src.poll(timeout: float = 0.0) -> int      # frames placed into rx by this call
    src.statistics() -> XskSourceStatistics    # received, drops (XSK counters), ...
    src.drops -> int                           # rx_dropped + rx_ring_full, all sockets
    src.stop()                                 # detach, drain, close sockets, return frames
    src.close()                                # stop() if not done; idempotent

Theory of operation: where a frame is (nothing lost, nothing doubled)
----------------------------------------------------------------------
The pool's ownership tags say it (``engine/ownership.py``, "Placed frames", has the
state table and the argument)::

    rx.lend -> KERNEL -> fill ring -> the kernel -> RX ring -> rx.poll_placed -> RX -> ...
                                                     workers release -> RETURNED -> rx.lend

Per batch, per socket with descriptors: one ``peek`` of up to 4 polls' worth of descriptors
(as u32 words), their chunk addresses turned into frame indices (``addr // frame_size``)
and headrooms (``addr % frame_size``) -- for a run of consecutive chunks by one
comparison with the expected addresses (a batch across several runs is taken whole,
scattered: one call's fixed cost instead of one per run) -- the descriptors written
(length, wire_len, ts_ns, ifindex, rx_queue, headroom, linktype Ethernet) in a store per
run, the RX ring released, then
``poll_placed`` (told whether the frames are consecutive).  The release comes *before*
``poll_placed``: once ``poll_placed`` has begun the frames are counted in ``rx`` (or
``xdp_aborted`` if it is interrupted); a descriptor still in the ring at that point
would be read again by the next poll -- the same frame placed twice.  The price of that
order: an exception raised in the few bytecodes between the release and
``poll_placed``'s first store (a second Ctrl-C: the CLI's first one only sets an event)
leaves that batch lent and counted by nobody until the source closes and returns it --
never a frame in two places.

Then the fill rings are refilled: each socket is owed the frames it received; once a
block's worth is owed, ``rx.lend`` reclaims released frames and they go back into the
fill ring -- the kernel's ``xdp_return_frame`` (a refill that comes up short, every
frame still in flight in the engine, is tried again by the next poll: one scan of the
partition's tags per poll at most, and no wait while the fill ring runs dry -- a 1 ms
wait here cost 3-9 % of a flood as ``rx_dropped``, bench_xsk_rx).  The kernel's own
counters say what it could not deliver: ``rx_ring_full`` (we fell behind),
``rx_dropped`` (no chunk: every frame in flight in the engine, or the fill ring empty);
their sum is :attr:`XskSource.drops`, the source's drops (as ``tp_drops`` is the
TPACKET_V3 source's).  ``rx_fill_ring_empty_descs`` is reported
too, but not added: in copy mode each such frame is already in ``rx_dropped``.

So, over a source's life: frames the program redirected to the sockets == frames placed
(the producer's ``rx``) + :attr:`XskSource.drops` -- exactly, because :meth:`stop`
detaches the program, waits an RCU grace period (``membarrier(MEMBARRIER_CMD_GLOBAL)``
runs ``synchronize_rcu``: every NAPI poll that ran the old program, and the flush to the
RX ring at its end, is over) and only then reads the RX rings dry.

Copy and zero-copy: sockets bind with :class:`XskMode` ``bind`` (``AUTO``: zero-copy
where the driver offers it, copy otherwise, the fallback in :attr:`XskSource.notes`; veth
has no zero-copy).  Need-wakeup is on: a zero-copy driver that found its fill ring empty
sleeps until kicked, and the refill kicks it (copy mode never asks).

Waiting: what a poll costs is mostly per call (~100 us here: reading the descriptors,
the program, the flush, the commits), so the fewer polls the better, as long as no
frame waits for long.  A poll with nothing ready sleeps in ``poll(2)`` on every socket at
once -- after watching the RX rings' producer indices for ``_SPIN_S`` (no syscall) when
the last poll was busy: under load the next frame usually comes within that, and a
sleep and wake-up saved is ~15 us.  Under load -- the last poll placed a quarter of
``poll_size`` or more -- a poll first waits, for ``_GATHER_S`` at most, until a whole
poll's worth is in the rings, as NAPI's budget and a NIC's interrupt coalescing do:
then one poll's fixed cost is spread over ``poll_size`` frames, not the few hundred that
came since the last one.  What that adds to a frame's latency is bounded by
``_GATHER_S`` (200 us), and it is added only when frames already come at least a
quarter poll per poll: light traffic -- a last poll below that -- is placed at once.
Nor does it wait when a fill ring holds less than two polls' worth of chunks: frames
would be dropped for want of one (``rx_dropped``) while it waits.
Both waits watch the rings with ``sched_yield`` between looks, not a pure spin: on a
machine where the sender (a NIC's interrupt, a generator) shares the RX thread's CPU, a
spin would keep it from sending the very frames awaited.

Theory of operation: nothing outlives its owner
-----------------------------------------------
The program is attached by a ``BPF_LINK_CREATE`` link (a file descriptor): closing it --
:meth:`stop`, or the kernel when the process dies, however it dies -- detaches the
program.  A process forked while the source is open (a worker the supervisor starts or
restarts, a producer process) would inherit the link's and the sockets' descriptors and
their ring mappings, and keep the program attached and the sockets bound after this
process is gone: so a fork hook (``os.register_at_fork(after_in_child=...)``) closes
every open source's descriptors and unmaps its rings in the child, before the child runs
anything else -- without detaching (a netlink attachment's finalizer is disarmed there,
not run).  The child never touches the pool's frames through them: it has no socket.

Refusals: what the kernel refuses -- no such interface, not root, a queue out of range,
an MTU too large for native XDP on veth, zero-copy forced where the driver has none --
comes as the :class:`~cpumap.kernel.xdp.XdpError` or :class:`~cpumap.live.xsk.XskError`
those modules raise, with the kernel's errno and what to change.

Threads and namespaces: a source is used by one thread (its producer's).  Build it
inside the interface's network namespace (``with cpumap.live.netns.entered(ns):``): the
interface, the UMEM's socket and the attachment are resolved there.  The pool's frame
size must be 2048 or 4096 (a UMEM chunk) and its data array page-aligned (it is).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..abi import LINKTYPE_ETHERNET
from ..closing import ClosedWhenCollected
from ..errors import ClosedResourceError
from ..kernel.xdp import XdpLink, XdpMode, XskMap, attach, xsk_redirect_program
from .if_xdp import XDP_PACKET_HEADROOM
from .xsk import Umem, XskError, XskMode, XskSocket, XskStatistics, queue_counts
from .xsk_rings import ConsumerRing

MAX_RING_SIZE = 16384  # RX ring entries per socket, at most, by default
_SPIN_S = 50e-6  # after a busy poll, watch the RX rings this long before poll(2)
_GATHER_S = 200e-6  # under load, wait at most this long for a full poll to gather
_BUSY_FRACTION = 4  # a poll that placed 1/4 of poll_size or more: under load
_GATHER_FILL = 2  # gather only while every fill ring holds 2 polls' worth of chunks
_MAX_RUNS = 16  # a scattered batch of more runs is written by one row scatter
_BUDGET = 4  # polls' worth a poll takes from one socket before it refills and returns
_MEMBARRIER_CMD_GLOBAL = 1  # runs synchronize_rcu() (kernel/sched/membarrier.c)
_MEMBARRIER_BY_MACHINE = {"x86_64": 324, "aarch64": 283}  # syscall numbers

_NO_FRAMES = np.zeros(0, dtype=np.uint32)
_libc = ctypes.CDLL(None, use_errno=True)
_open: weakref.WeakSet[XskSource] = weakref.WeakSet()


# In a forked child: netlink attachments inherited, kept referenced so that their
# finalizer (which detaches the program from the device) never runs there.
_kept_in_child: list[XdpLink] = []


def _forget_in_children() -> None:
    """After fork, in the child: drop every open source's descriptors and mappings."""
    for src in list(_open):
        src.forget()


os.register_at_fork(after_in_child=_forget_in_children)


def grace_period() -> bool:
    """Wait for an RCU grace period (``membarrier(MEMBARRIER_CMD_GLOBAL)``): every
    softirq section begun before this call -- a NAPI poll running an XDP program, and the
    flush of its AF_XDP deliveries -- has ended when it returns.  False where the kernel
    refuses (nohz_full kernels): the caller falls back to a short wait."""
    nr = _MEMBARRIER_BY_MACHINE.get(os.uname().machine)
    return nr is not None and _libc.syscall(nr, _MEMBARRIER_CMD_GLOBAL, 0, 0) == 0


class PlacingProducer(Protocol):
    """What an :class:`XskSource` needs of its producer (an
    :class:`~cpumap.engine.rx.RxProducer`; the engine sits above this package, so it is
    named by what it does): its pool, the size of a poll, and the placed-frames calls."""

    pool: Any  # a FramePool: frame_size, data, desc
    poll_size: int

    @property
    def closed(self) -> bool: ...

    @property
    def lendable(self) -> int: ...

    @property
    def lend_block(self) -> int: ...

    def lend(self, n: int, *, reclaim: bool = True) -> np.ndarray: ...

    def poll_placed(self, idx: np.ndarray) -> None: ...

    def return_lent(self) -> int: ...


@dataclass(frozen=True, slots=True)
class XskSourceStatistics:
    """An AF_XDP source's counters since it opened, over all its sockets."""

    received: int
    """Frames read off the RX rings and placed into the producer."""
    polls: int
    """Batches placed (one ``poll_placed`` each)."""
    rx_dropped: int
    """The kernel found no chunk (fill ring empty), or the frame did not fit one."""
    rx_ring_full: int
    """The kernel found the RX ring full: the consumer fell behind."""
    rx_fill_ring_empty_descs: int
    """Times the kernel found a fill ring empty (in copy mode these frames are also in
    ``rx_dropped``: not added to :attr:`drops`)."""
    rx_invalid_descs: int

    @property
    def drops(self) -> int:
        """Frames redirected to the sockets and not delivered: the source's drops."""
        return self.rx_dropped + self.rx_ring_full


class XskSource(ClosedWhenCollected):
    """Every RX queue of ``interface`` (or ``queues``) through AF_XDP into ``rx``.

    ``rx``: the producer whose partition lends the frames (its pool is the UMEM).
    ``mode``: where the redirect program runs (:class:`XdpMode`: native or skb).
    ``bind``: how the sockets bind (:class:`XskMode`; ``AUTO`` falls back to copy mode
    with a note in :attr:`notes`).  ``ring_size``: RX ring entries per socket (a power of
    two; default: the frames the producer can lend, up to 16384).  ``xskmap``: an XSKMAP
    whose program another owns (:class:`~cpumap.live.xsk_queues.XskQueues`: one
    attachment, a source per queue): the sockets go into it, and this source attaches
    and detaches nothing -- detach first, then :meth:`stop` reads the rings dry.
    Build it in the interface's network namespace.  Errors: ``XdpError`` / ``XskError``
    with the kernel's errno and what to change; ``ValueError`` for a pool whose frames
    cannot be UMEM chunks.
    """

    def __init__(
        self,
        rx: PlacingProducer,
        interface: str | int,
        *,
        queues: Sequence[int] | None = None,
        mode: XdpMode = XdpMode.NATIVE,
        bind: XskMode = XskMode.AUTO,
        ring_size: int | None = None,
        xskmap: XskMap | None = None,
    ) -> None:
        pool = rx.pool
        fs = pool.frame_size
        if fs not in (2048, 4096):
            raise ValueError(f"frame_size {fs}: an AF_XDP UMEM chunk is 2048 or 4096 bytes")
        self.rx = rx
        self.pool = pool
        self.mode = XdpMode(mode)
        self._closed = True  # until built: close() undoes what was made
        self._stopped = True
        self._pid = os.getpid()
        self._link: XdpLink | None = None
        self._stack = contextlib.ExitStack()
        self._received = self._polls = 0
        self._final: list[XskStatistics] | None = None
        try:
            self._open(interface, queues, bind, ring_size, xskmap)
        except BaseException:
            self._teardown()
            rx.return_lent()  # what _stock lent: its fill ring is closed
            raise
        self._closed = self._stopped = False
        _open.add(self)

    # -- building ------------------------------------------------------------------------------
    def _open(
        self,
        interface: str | int,
        queues: Sequence[int] | None,
        bind: XskMode,
        ring_size: int | None,
        shared_map: XskMap | None,
    ) -> None:
        pool, stack = self.pool, self._stack
        if ring_size is None:
            ring_size = _ring_size(self.rx.lendable)
        self.umem = stack.enter_context(Umem(pool.data, chunk_size=pool.frame_size))
        first = XskSocket(self.umem, interface, _first(queues), rx_size=ring_size, mode=bind)
        self.ifname, self.ifindex = first.ifname, first.ifindex
        self.queues = tuple(queues) if queues is not None else all_queues(self.ifname)
        self.sockets = [first] + [
            XskSocket(self.umem, self.ifindex, q, rx_size=ring_size) for q in self.queues[1:]
        ]
        self.notes = tuple(dict.fromkeys(s.note for s in self.sockets if s.note))
        """Why a socket is not zero-copy (``AUTO`` fell back to copy mode)."""
        self.zero_copy = first.zero_copy
        if shared_map is None:
            xskmap = stack.enter_context(XskMap(max(self.queues) + 1, name="cpumap_xsks"))
        else:
            xskmap = shared_map
        for s in self.sockets:
            xskmap.set(s.queue, s.fileno())
        self._prepare_poll()
        self._stock()
        if shared_map is not None:
            return  # the map's owner attaches the program (XskQueues), and detaches it
        program = stack.enter_context(xsk_redirect_program(xskmap))
        self._link = attach(self.ifindex, program, self.mode)

    def _stock(self) -> None:
        """Lend each socket its share of the partition and put it in its fill ring."""
        rx, n = self.rx, len(self.sockets)
        share = rx.lendable // n
        if share < 1:
            raise ValueError(f"the producer's partition has fewer frames than {n} sockets")
        self._target = [share] * n  # frames each socket should have lent (fill + kernel)
        self._lent = [0] * n
        # Refill once this many are owed: a block may be back by then (a reclaim scan).
        self._step = max(1, min(rx.lend_block, share // 4))
        for i in range(n):
            self._refill(i)

    def _prepare_poll(self) -> None:
        pool = self.pool
        n = self._budget = _BUDGET * self.rx.poll_size  # the most one batch takes
        self._shift = pool.frame_size.bit_length() - 1
        words = pool.desc.dtype.itemsize // 8  # a descriptor in u64 words
        self._desc_words = pool.desc.view(np.uint64).reshape(len(pool.desc), words)
        self._mask = pool.frame_size - 1
        _check_layout(pool.desc.dtype)
        # Where a frame lands in its chunk when the UMEM has no headroom of its own (both
        # modes), and so every frame's address in a batch of consecutive chunks.
        self._headroom = XDP_PACKET_HEADROOM
        self._all = np.arange(len(pool.desc), dtype=np.uint32)
        self._addrs = (self._all.astype(np.uint64) << self._shift) + np.uint64(self._headroom)
        # Per socket, one poll's pool descriptors as u64 words, the constant words written
        # once: ifindex | rx_queue << 32 (word 2); linktype, the default headroom,
        # meta_len 0, hops 0 (word 3).
        self._records = []
        word3 = LINKTYPE_ETHERNET | self._headroom << 16
        for s in self.sockets:
            rec = np.zeros((n, self._desc_words.shape[1]), dtype=np.uint64)
            rec[:, 2] = self.ifindex | s.queue << 32
            rec[:, 3] = word3
            self._records.append((rec, rec.view(np.uint32)))
        self._poller = select.poll()
        for s in self.sockets:
            self._poller.register(s.fileno(), select.POLLIN)
        self._rings: list[ConsumerRing] = [s.rx for s in self.sockets if s.rx is not None]
        self._busy = False  # the last poll placed frames: the next one spins before sleeping

    # -- receiving -----------------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> int:
        """Place what the RX rings hold into the producer, waiting up to ``timeout``
        seconds for a first frame (0: never sleeps); returns the frames placed.

        Under load (the last poll placed ``_BUSY_FRACTION`` of a poll or more) it first
        lets a poll's worth gather, for at most ``_GATHER_S``: see "Waiting" in the
        module's docstring."""
        self._check_open()
        if self._busy and self._fill_lowest() >= _GATHER_FILL * self.rx.poll_size:
            self._wait_ready(self.rx.poll_size, _GATHER_S)
        got = self._take_all()
        if not got and timeout > 0:
            spun = self._busy and self._wait_ready(1, _SPIN_S)
            if spun or self._poller.poll(max(1, round(timeout * 1000))):
                got = self._take_all()
        self._busy = got * _BUSY_FRACTION >= self.rx.poll_size
        return got

    def _fill_lowest(self) -> int:
        """Chunks in the fill ring that has fewest (one acquire load each): what the
        kernel can still fill while we wait."""
        return min(s.fill.entries - s.fill.free() for s in self.sockets)

    def _wait_ready(self, count: int, seconds: float) -> bool:
        """Until the RX rings hold ``count`` descriptors or ``seconds`` pass: watch their
        producer indices (no wait in the kernel), yielding the CPU between looks
        (``sched_yield``: returns at once when nothing else is runnable here, and lets the
        sender run when it shares this CPU -- a pure spin would keep it from sending the
        very frames we wait for).  Whether they hold ``count``."""
        end = time.perf_counter() + seconds
        rings = self._rings
        while True:
            if sum(r.available() for r in rings) >= count:
                return True
            if time.perf_counter() >= end:
                return False
            os.sched_yield()

    def _take_all(self) -> int:
        """Up to ``_BUDGET`` polls' worth of each socket's RX ring, in one batch, then its
        refill: a poll returns to its caller (a stop, a deadline) however fast frames
        come, as NAPI's budget returns the CPU to the kernel.

        One batch, not ``poll_size`` at a time, and not cut where a run of consecutive
        chunks ends: a batch's cost is mostly per call (``poll_placed`` ~50 us here
        whatever its size, then ~18 ns a frame consecutive, ~25 scattered), so when the
        RX thread comes back to a ring that filled while it waited for its CPU -- a
        median of 4,300 descriptors under a flood (``bench_xsk_rx``), in runs of a block
        (1,024) -- one scattered batch of 4,096 costs ~40 ns a frame where four runs of
        1,024 cost ~56-89 (paired, ``poll_placed`` alone)."""
        got = 0
        for i, ring in enumerate(self._rings):
            got += self._take(i, ring)
            if self._target[i] - self._lent[i] >= self._step:
                self._refill(i)
        return got

    def _take(self, i: int, ring: ConsumerRing) -> int:
        """One batch of socket ``i``'s RX ring, up to the budget, into the producer (its
        two parts when the ring wraps); its size."""
        want = self._budget
        idx, run = self._read(i, ring, want)
        if 0 < len(idx) < want and ring.available():  # the ring wrapped
            more, more_run = self._read(i, ring, want - len(idx))
            if len(more):
                run = run and more_run and int(more[0]) == int(idx[-1]) + 1
                idx = np.concatenate([idx, more])
        n = len(idx)
        if n:
            self._received += n
            self._polls += 1
            self.rx.poll_placed(idx, consecutive=run)
        return n

    def _read(self, i: int, ring: ConsumerRing, want: int) -> tuple[np.ndarray, bool]:
        """Up to ``want`` of socket ``i``'s RX descriptors (one contiguous view of the
        ring): their frames' pool descriptors written, the descriptors released; the
        frames' indices, and whether they are consecutive.  The ring's views live only
        in this call: one left in a traceback would pin the ring's mapping, and with it
        the socket, after close.

        Cost is per numpy call (2-3 us each here, whatever the batch), so the descriptors
        are read as machine words, never field by field: an ``xdp_desc`` is u32 words
        (addr lo, addr hi, len, options) and a pool descriptor u64 words (length |
        wire_len << 32, ts_ns, ifindex | rx_queue << 32, linktype | headroom << 16 |
        meta_len << 32 | hops << 48; ``_check_layout``), whose constant words are written
        once per socket.  A batch of consecutive chunks, each frame at the default
        offset, is recognised by one byte comparison of the addresses with the expected
        ones; then its indices are a slice of a ready ``arange``, and two column stores
        (the lengths, the timestamp) and one row store write its descriptors; and the
        producer runs the batch over views, not copies (``poll_placed(consecutive=)``).
        Any other batch -- runs of chunks from several blocks (the kernel takes chunks in
        fill order, and the fill ring is lent a block at a time, in the order blocks come
        back), a chunk the kernel reused, a frame at another offset -- is taken whole,
        scattered: its indices and headrooms from the addresses, one row scatter."""
        desc = ring.peek_words(want)
        n = len(desc)
        if n == 0:
            return _NO_FRAMES, False
        addrs = desc.view(np.uint64)[:, 0]  # a plain array's view: no field checks
        first = int(addrs[0]) >> self._shift
        run = addrs.tobytes() == self._addrs[first : first + n].tobytes()
        lens = desc[:, 2]
        rec, rec32 = self._records[i]
        rec32[:n, 0] = lens  # length
        rec32[:n, 1] = lens  # wire_len
        rec[:n, 1] = time.time_ns()  # AF_XDP gives no timestamp: the batch's read time
        if run:  # headroom: the default, already in the records
            idx = self._all[first : first + n].copy()
            spans: list[tuple[int, int, int]] | None = [(first, 0, n)]
        else:
            idx = np.empty(n, dtype=np.uint32)
            np.right_shift(addrs, self._shift, out=idx)
            spans = self._runs(idx, addrs)
        words = rec[:n]
        if spans is None:  # anywhere, at any offset (a copy: the records keep the default)
            words = words.copy()
            heads = words.view(np.uint16)[:, 13]
            np.bitwise_and(addrs, self._mask, out=heads, casting="unsafe")
        del desc, addrs, lens
        ring.release(n)  # before poll_placed: a descriptor read twice would count twice
        self._lent[i] -= n
        if spans is None:
            self._desc_words[idx] = words  # a row scatter: ~13 ns a row
        else:
            for start, lo, hi in spans:  # a memcpy per run: ~2 us each
                self._desc_words[start : start + hi - lo] = words[lo:hi]
        return idx, run

    def _runs(self, idx: np.ndarray, addrs: np.ndarray) -> list[tuple[int, int, int]] | None:
        """A scattered batch as its runs of consecutive chunks at the default offset
        (first frame, batch start, batch end), the usual case: blocks lent one after
        another; None when there are more than ``_MAX_RUNS`` or a frame sits elsewhere
        (the kernel reused a chunk) -- then one row scatter writes the batch."""
        ends = np.flatnonzero(np.diff(idx.view(np.int32)) != 1)
        if len(ends) >= _MAX_RUNS:
            return None
        spans = []
        lo = 0
        for hi in [*(ends + 1).tolist(), len(idx)]:
            start = int(idx[lo])
            if addrs[lo:hi].tobytes() != self._addrs[start : start + hi - lo].tobytes():
                return None
            spans.append((start, lo, hi))
            lo = hi
        return spans

    def _refill(self, i: int) -> None:
        """Lend socket ``i`` what it is owed and submit it to its fill ring.

        One call per poll at most (``_take_all``): a refill that comes up short (the
        frames are still in flight in the engine) is tried again by the next poll, and a
        try costs one scan of the partition's tags -- a cost per poll, like the rest.
        The addresses are computed in one call, straight from the indices, and go in with
        one ``produce`` (one release store)."""
        want = self._target[i] - self._lent[i]
        if want <= 0:
            return
        idx = self.rx.lend(want)
        if not len(idx):
            return
        s = self.sockets[i]
        put = s.fill.produce(np.left_shift(idx, self._shift, dtype=np.uint64))
        self._lent[i] += put
        if put < len(idx):  # cannot happen with the default fill size (xsk.py's argument)
            raise XskError(errno.ENOBUFS, f"fill ring of {s!r} took {put} of {len(idx)}")
        s.wake_rx()

    # -- statistics ----------------------------------------------------------------------------
    def statistics(self) -> XskSourceStatistics:
        """The counters so far (the kernel's, read now; the last read after :meth:`stop`)."""
        per = self._final if self._final is not None else self._read_kernel()
        return XskSourceStatistics(
            received=self._received,
            polls=self._polls,
            rx_dropped=sum(s.rx_dropped for s in per),
            rx_ring_full=sum(s.rx_ring_full for s in per),
            rx_fill_ring_empty_descs=sum(s.rx_fill_ring_empty_descs for s in per),
            rx_invalid_descs=sum(s.rx_invalid_descs for s in per),
        )

    @property
    def drops(self) -> int:
        """Frames the kernel could not deliver to the sockets (``rx_dropped +
        rx_ring_full``, all sockets): the source's drops."""
        return self.statistics().drops

    def _read_kernel(self) -> list[XskStatistics]:
        if self._stopped:
            return []
        return [s.statistics() for s in self.sockets]

    # -- ending --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Detach the program, wait a grace period, place what the RX rings still hold,
        close the sockets and return every frame still lent.  Idempotent.  The
        statistics stay readable."""
        if self._stopped or os.getpid() != self._pid:
            return
        try:
            if self._link is not None:
                self._link.close()  # no new frame is redirected to the sockets
            if not grace_period():
                time.sleep(0.05)  # no membarrier: NAPI polls last microseconds
            # Final now: no frame reaches the sockets any more.
            self._final = [s.statistics() for s in self.sockets]
            if not self.rx.closed:
                while self._take_all_final():
                    pass
        finally:
            self._stopped = True
            self._teardown()
            # The sockets are closed: what the kernel held is the partition's again.
            self.rx.return_lent()

    def _take_all_final(self) -> int:
        return sum(self._take(i, ring) for i, ring in enumerate(self._rings))

    def close(self) -> None:
        """:meth:`stop` if not done yet.  Idempotent."""
        if self._closed and self._stopped:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            _open.discard(self)

    def _teardown(self) -> None:
        if self._link is not None:
            self._link.close()
        self._stack.close()  # the program, the map, the UMEM and its sockets

    def forget(self) -> None:
        """In a forked child (the fork hook calls it): close the descriptors and unmap the
        rings, detaching nothing -- a link fd closed here only drops the child's
        reference; a netlink attachment (no link fd) is the parent's to remove, so its
        object is kept alive here and its finalizer never runs."""
        link = self._link
        if link is not None and link.via == "netlink":
            _kept_in_child.append(link)
            self._link = None
        self._stopped = self._closed = True
        with contextlib.suppress(Exception):
            self._teardown()

    def _check_open(self) -> None:
        if self._stopped:
            raise ClosedResourceError("AF_XDP source is closed")

    def __repr__(self) -> str:
        state = "closed" if self._stopped else "open"
        how = "zero-copy" if getattr(self, "zero_copy", False) else "copy"
        return f"<XskSource {getattr(self, 'ifname', '?')} queues={self.queues} {how} {state}>"


def _check_layout(dtype: np.dtype) -> None:
    """The pool descriptor's fields where :meth:`XskSource._read` writes them as words."""
    want = {"length": 0, "wire_len": 4, "ts_ns": 8, "ifindex": 16, "rx_queue": 20}
    want |= {"linktype": 24, "headroom": 26, "meta_len": 28, "hops": 30}
    want |= {"rx_hash": 32, "hash_type": 36, "reserved": 38}  # zero: AF_XDP gives no hash
    got = {name: off for name, (_, off) in dtype.fields.items()}
    if dtype.itemsize != 40 or got != want:
        raise ValueError(f"pool descriptor layout {got} is not the one XskSource writes")


def _ring_size(lendable: int) -> int:
    """The default RX ring: room for every frame lent (a ring cannot hold more), to
    MAX_RING_SIZE.  Larger than libxdp's 2048 on purpose: the ring is the only buffer
    between the kernel and a Python consumer that a scheduler tick can stall for
    milliseconds (TPACKET_V3's 16 MiB of blocks hold 100,000 small frames)."""
    size = 1
    while size * 2 <= min(lendable, MAX_RING_SIZE):
        size *= 2
    return size


def _first(queues: Sequence[int] | None) -> int:
    if queues is None:
        return 0
    if not queues:
        raise XskError(errno.EINVAL, "no queues given: name at least one RX queue")
    return queues[0]


def all_queues(ifname: str) -> tuple[int, ...]:
    """Every RX queue the device has (ethtool's channel counts; one where it does not say)."""
    counts = queue_counts(ifname)
    return tuple(range(counts[0] if counts and counts[0] else 1))
