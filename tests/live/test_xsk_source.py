"""AF_XDP into the frame pool for real: an :class:`XskSource` on the local end of a veth
pair feeds an RX producer of a :class:`CpuMap`, traffic comes from the peer by the
kernel's live test runs (:class:`TrafficGen`), and the kernel writes every frame into a
pool frame that goes through the map to a worker's handler.

Checked: frames reach the handler byte-identical, in order; under overload every frame
the hook redirected is placed (``rx``) or counted by the sockets (the source's drops),
and ``rx`` is the sum of the outcomes; a worker SIGKILLed holding placed frames costs
them (``lost``) and they go back to the fill ring; the program is detached and the
sockets closed after ``close()``, after an exception, with a child forked while the
source was open still alive, and after a SIGKILL of the controller; what the kernel
refuses is refused by name.  The pool is whole after every close.  Needs root; skips
otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cpumap import CpuMap
from cpumap.abi import LINKTYPE_ETHERNET
from cpumap.cpus import usable_cpus
from cpumap.engine.frame_pool import TAG_HAND
from cpumap.engine.rx import RxProducer
from cpumap.generator import Generator
from cpumap.kernel.trafficgen import GenOptions, GenResult, TrafficGen
from cpumap.kernel.xdp import XdpError, XdpMode
from cpumap.live import Umem, XskError, XskMode, XskSource
from cpumap.live.if_xdp import XDP_PACKET_HEADROOM
from cpumap.live.netns import VethPair, ip
from cpumap.live.xsk_rings import XDP_DESC
from cpumap.programs import vectorized
from tests.helpers import pid_gone, veth_unavailable, wait_for
from tests.live.xsk_helpers import CPU, Queues, to_cpu, xdp_attached, xdp_sockets

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0


def _umem_in_local(pair: VethPair) -> None:
    with pair.in_local(), Umem(mmap.mmap(-1, 4 * 2048)):
        pass


_REASON = veth_unavailable(
    "network namespaces, AF_XDP sockets and XDP programs",
    bpf=True,
    also=_umem_in_local,
)
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)


class Keep:
    """A handler that keeps every frame's bytes and reports them at the end."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def __call__(self, skb) -> bool:
        self.seen.append(skb.bytes())
        return True

    def finish(self) -> list[bytes]:
        return self.seen


class HoldWhile:
    """A handler that holds its batch while ``flag`` exists (a worker with frames in hand).

    A file, polled, rather than a ``multiprocessing.Event``: the test SIGKILLs the worker
    while it waits, and a process killed inside ``Event.wait`` can die holding the event's
    lock -- the test's ``set()`` then blocks forever (seen here)."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __call__(self, skb) -> bool:
        while self.flag.exists():
            time.sleep(0.005)
        return True


def frames_for(pair: VethPair, flows: int, sizes: tuple[int, ...] = (64, 65, 300, 1514)):
    gen = Generator(
        flows=flows,
        sizes=sizes,
        seed=7,
        protocols=("udp",),
        ip_versions=(4,),
        count=flows,
        dst_mac=pair.local.mac_bytes,
        src_mac=pair.peer.mac_bytes,
    )
    return [p.data for b in gen.batches(256) for p in b]


def open_source(pair: VethPair, rx: RxProducer, **kw) -> XskSource:
    with pair.in_local():
        return XskSource(rx, pair.local.ifname, **kw)


def reopened(pair: VethPair, rx: RxProducer, **kw) -> XskSource:
    """A source on a queue whose last socket has just closed: the kernel lets the queue go
    a little after the close (deferred work), and refuses it (EBUSY) until then."""

    def attempt() -> XskSource | None:
        try:
            return open_source(pair, rx, **kw)
        except XskError as e:
            if e.errno != errno.EBUSY:
                raise
            return None

    return wait_for(attempt, DEADLINE_S, "the kernel to let the queue go (EBUSY)")


@contextlib.contextmanager
def sending(pair: VethPair, frames: list[bytes], options: GenOptions) -> Iterator[list[GenResult]]:
    """The generator sending from the peer in a thread while the block runs; its result
    in the list once the block ends (it waits for the generator)."""
    with pair.in_peer():
        gen = TrafficGen(pair.peer.ifname, frames)
    box: list[GenResult] = []
    stop = threading.Event()
    t = threading.Thread(target=lambda: box.append(gen.run(options, stop)))
    t.start()
    try:
        yield box
    finally:
        t.join()
        gen.close()


def receive_until(src: XskSource, done: Callable[[], bool]) -> None:
    """Poll the source until ``done()``, or fail at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, f"not done in time: {src.statistics()}"
        src.poll(0.01)


def in_hand(m: CpuMap) -> int:
    """Frames a worker has taken from its ring (tagged ``HAND + slot``)."""
    return int(np.count_nonzero(m.pool.tag >= TAG_HAND))


def placed_or_dropped(src: XskSource) -> int:
    st = src.statistics()
    return st.received + st.drops


def all_lent_but_a_block(m: CpuMap, rx: RxProducer) -> bool:
    a = m.pool.audit()
    return a.kernel + a.returned == rx.lendable and a.returned < rx.lend_block


def assert_books_balance(m: CpuMap) -> None:
    m.wait_idle(DEADLINE_S)
    s = m.stats()
    assert s.in_flight == 0 and s.rx == sum(s.outcomes().values()), s.outcomes()


# --- delivery ---------------------------------------------------------------------------------


def test_frames_reach_the_handler_byte_identical_and_in_order(veth: VethPair) -> None:
    frames = frames_for(veth, 16)
    n = 2000
    with CpuMap(CPU + 1, handler=Keep(), frames=4096) as m:
        m.update(CPU, 4096)
        # Lossless inside the engine; and room for every frame in the fill and RX rings,
        # so that the kernel delivers all of them however late we read.
        with m.producer(to_cpu, backpressure=10.0) as rx, open_source(veth, rx) as src:
            assert src.queues == (0,) and not src.zero_copy and src.notes  # veth: copy mode
            assert m.pool.audit().kernel == rx.lendable  # the fill ring stocked
            with sending(veth, frames, GenOptions(count=n)) as box:
                receive_until(src, lambda: bool(box) and src.statistics().received >= n)
            src.stop()
            stats = src.statistics()
        assert_books_balance(m)
    got = [f for r in m.results for f in (r.result or [])]
    assert box[0].sent == n and box[0].drops == 0 and stats.drops == 0
    assert stats.received == n
    assert got == [frames[i % len(frames)] for i in range(n)]  # every byte, in order
    assert m.pool.audit().whole, m.pool.audit()


def test_under_overload_every_frame_redirected_is_placed_or_a_source_drop(veth: VethPair) -> None:
    """A small pool and a small RX ring against a flood: the kernel drops (RX ring full,
    no chunk), the engine drops (ring full), and the books still balance."""
    frames = frames_for(veth, 4, sizes=(64,))
    with CpuMap(CPU + 1, frames=512) as m:
        m.update(CPU, 128)
        with m.producer(to_cpu, poll_size=64) as rx, open_source(veth, rx, ring_size=64) as src:
            with sending(veth, frames, GenOptions(count=300_000)) as box:
                receive_until(src, lambda: bool(box))
            src.stop()  # detach, grace period, the RX ring read dry
            stats = src.statistics()
        assert_books_balance(m)
        s = m.stats()
    res = box[0]
    assert stats.drops > 0  # the overload happened
    assert s.rx == stats.received
    # Every frame that reached the interface's program was redirected to the socket.
    assert res.sent - res.drops == s.rx + stats.drops
    assert m.pool.audit().whole, m.pool.audit()


def test_a_worker_killed_holding_placed_frames_costs_them_and_they_go_back_to_the_fill_ring(
    veth: VethPair, tmp_path: Path
) -> None:
    flag = tmp_path / "hold"
    flag.touch()
    frames = frames_for(veth, 8, sizes=(64, 200))
    with CpuMap(CPU + 1, handler=HoldWhile(flag), frames=1024) as m:
        m.update(CPU, 256)
        with m.producer(to_cpu, backpressure=10.0, poll_size=64) as rx:
            with open_source(veth, rx) as src:
                with sending(veth, frames, GenOptions(count=200)) as box:
                    receive_until(src, lambda: bool(box) and src.statistics().received >= 200)
                wait_for(lambda: m.pool.audit().queued == 200, DEADLINE_S)  # in ring and hand
                wait_for(lambda: in_hand(m) > 0, DEADLINE_S)  # its handler holds a batch
                old = m.entry(CPU).life.worker.pid
                os.kill(old, signal.SIGKILL)
                flag.unlink()
                wait_for(lambda: m.stats().lost > 0, DEADLINE_S)
                # Released by the supervisor, reclaimed and lent again: every frame of the
                # partition is back in the fill ring, but those of the block whose rest
                # still waits there (blocks come back whole).
                receive_until(src, lambda: all_lent_but_a_block(m, rx))
                # ... and the run goes on receiving: three times the pool, paced in bursts
                # of 500 (a burst the pool cannot hold would be the fill ring's drops).
                gen = GenOptions(count=3000, rate=5000)
                with sending(veth, frames, gen) as box2:
                    receive_until(src, lambda: bool(box2) and placed_or_dropped(src) >= 3200)
                src.stop()
                stats = src.statistics()
            assert_books_balance(m)
            s = m.stats()
    assert box2[0].drops == 0 and s.rx == stats.received
    assert s.rx + stats.drops == 3200 and s.rx > 200 + len(m.pool.data)
    assert 0 < s.lost <= 200 and s.delivered == s.rx - s.lost
    assert m.pool.audit().whole, m.pool.audit()


# --- nothing outlives the source ---------------------------------------------------------------


def test_close_detaches_the_program_and_closes_the_sockets(veth: VethPair) -> None:
    with CpuMap(CPU + 1, frames=1024) as m, m.producer(to_cpu) as rx:
        src = open_source(veth, rx)
        assert xdp_attached(veth) and xdp_sockets(veth) == 1
        src.close()
        assert not xdp_attached(veth) and xdp_sockets(veth) == 0
        src.close()  # idempotent
        assert m.pool.audit().kernel == 0
    assert m.pool.audit().whole


class Descriptors:
    """An RX ring stand-in (what :meth:`XskSource._read` uses of a ``ConsumerRing``)
    holding the descriptors given: read-only word views, as the ring's are."""

    def __init__(self, desc: np.ndarray) -> None:
        self.desc = desc
        self.desc.flags.writeable = False
        self.at = 0

    def peek_words(self, n: int) -> np.ndarray:
        view = self.desc[self.at : self.at + n]
        self.at += len(view)
        return view.view(np.uint32).reshape(len(view), 4)

    def release(self, n: int) -> None:
        pass


def test_descriptors_written_as_words_are_the_fields_the_kernel_gave(veth: VethPair) -> None:
    """The source writes pool descriptors as machine words: each field must be what a
    field-by-field write gives -- consecutive chunks at the default offset (the fast
    path), scattered chunks, other offsets, and the default again after them."""
    with CpuMap(CPU + 1, frames=1024) as m, m.producer(to_cpu, poll_size=64) as rx:
        pool, fs = m.pool, m.pool.frame_size
        src = open_source(veth, rx)
        try:
            run = np.arange(100, 164)
            scattered = np.array([7, 3, 900, 9, 10, 11, 500])
            blocks = np.concatenate([np.arange(300, 330), np.arange(200, 234)])  # two runs
            strided = np.arange(0, 128, 2)  # 64 runs of one: one row scatter
            cases = [
                (run, np.full(64, XDP_PACKET_HEADROOM), True),
                (scattered, np.full(7, XDP_PACKET_HEADROOM), False),
                (blocks, np.full(64, XDP_PACKET_HEADROOM), False),
                (strided, np.full(64, XDP_PACKET_HEADROOM), False),
                (run, XDP_PACKET_HEADROOM + 8 * np.arange(64), False),
                (run + 1, np.full(64, XDP_PACKET_HEADROOM), True),
            ]
            for frames, heads, fast in cases:
                desc = np.zeros(len(frames), dtype=XDP_DESC)
                desc["addr"] = frames.astype(np.uint64) * fs + heads.astype(np.uint64)
                desc["len"] = 60 + np.arange(len(frames)) * 3
                pool.desc[frames] = np.zeros(1, dtype=pool.desc.dtype)  # nothing left over
                idx, consecutive = src._read(0, Descriptors(desc), 64)
                assert idx.dtype == np.uint32 and idx.tolist() == frames.tolist()
                assert consecutive == fast
                d = pool.desc[frames]
                assert (d["length"] == desc["len"]).all() and (d["wire_len"] == desc["len"]).all()
                assert (d["headroom"] == heads).all()
                assert (d["ifindex"] == src.ifindex).all() and (d["rx_queue"] == 0).all()
                assert (d["linktype"] == LINKTYPE_ETHERNET).all()
                assert (d["meta_len"] == 0).all() and (d["hops"] == 0).all()
                assert (d["ts_ns"] > 0).all()
        finally:
            src.close()
    assert m.pool.audit().whole


def test_a_batch_across_runs_is_taken_whole(veth: VethPair) -> None:
    """Consecutive chunks, then another block's, then a short run: one batch, every
    descriptor taken (nothing left in the ring), scattered -- one call's fixed cost, not
    one per run."""
    with CpuMap(CPU + 1, frames=1024) as m, m.producer(to_cpu, poll_size=64) as rx:
        fs = m.pool.frame_size
        src = open_source(veth, rx)
        try:
            frames = np.concatenate([np.arange(100, 140), np.arange(500, 520), [7, 8]])
            desc = np.zeros(len(frames), dtype=XDP_DESC)
            desc["addr"] = frames.astype(np.uint64) * fs + XDP_PACKET_HEADROOM
            desc["len"] = 60
            ring = Descriptors(desc)
            idx, run = src._read(0, ring, 256)
            assert idx.tolist() == frames.tolist() and not run and ring.at == len(frames)
            assert m.pool.desc["length"][idx].tolist() == [60] * len(frames)
            assert (m.pool.desc["headroom"][idx] == XDP_PACKET_HEADROOM).all()
        finally:
            src.close()
    assert m.pool.audit().whole


class Boom(BaseException):
    """Not an Exception: the program runner lets it through (a Ctrl-C would do the same)."""


def test_an_exception_in_a_poll_counts_the_frames_aborted_and_close_detaches(
    veth: VethPair,
) -> None:
    @vectorized
    def explodes(batch):
        raise Boom

    frames = frames_for(veth, 2, sizes=(64,))
    with CpuMap(CPU + 1, frames=1024) as m:
        m.update(CPU, 64)
        with m.producer(explodes) as rx:
            with pytest.raises(Boom), open_source(veth, rx) as src:
                with sending(veth, frames, GenOptions(count=50)):
                    pass
                receive_until(src, lambda: False)  # the poll raises Boom
            assert not xdp_attached(veth) and xdp_sockets(veth) == 0
            assert m.pool.audit().kernel == 0
        s = m.stats()
    assert s.xdp_aborted > 0 and s.rx == sum(s.outcomes().values())
    assert m.pool.audit().whole


def test_a_child_forked_while_the_source_is_open_keeps_nothing_attached(veth: VethPair) -> None:
    with CpuMap(CPU + 1, frames=1024) as m, m.producer(to_cpu) as rx:
        src = open_source(veth, rx)
        r, w = os.pipe()
        up_r, up_w = os.pipe()
        child = os.fork()
        if child == 0:  # holds whatever it inherited until the parent writes
            os.close(w)
            os.write(up_w, b"u")  # past the fork: its at-fork hooks have run
            os.read(r, 1)
            os._exit(0)
        os.close(r)
        os.close(up_w)
        try:
            # Until the child runs, it holds every descriptor the fork copied: check the
            # sockets once it is up, as a worker forked during a run would be.
            assert os.read(up_r, 1) == b"u"
            os.close(up_r)
            src.close()
            assert not xdp_attached(veth) and xdp_sockets(veth) == 0  # the child lives on
            assert not pid_gone(child)
        finally:
            os.write(w, b"x")
            os.close(w)
            os.waitpid(child, 0)


def test_a_sigkilled_controller_leaves_nothing_on_the_interface(veth: VethPair) -> None:
    """The controller attaches, then starts a worker (forked after the attach), and dies
    by SIGKILL: the kernel detaches the program and closes the sockets."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from cpumap import CpuMap
        from cpumap.live import XskSource
        from cpumap.live.netns import entered
        from tests.live.test_xsk_source import to_cpu

        m = CpuMap({CPU + 1}, frames=1024)
        rx = m.producer(to_cpu)
        with entered({veth.local.netns!r}):
            src = XskSource(rx, {veth.local.ifname!r})
        m.update({CPU}, 64)  # a worker forked while the source is open
        print(m.entry({CPU}).life.worker.pid, flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        worker = int(proc.stdout.readline())  # type: ignore[union-attr]
        assert xdp_attached(veth) and xdp_sockets(veth) == 1
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: pid_gone(worker), DEADLINE_S)
    wait_for(lambda: not xdp_attached(veth) and xdp_sockets(veth) == 0, DEADLINE_S)
    out = ip("-n", str(veth.local.netns), "-d", "link", "show", "dev", veth.local.ifname)
    assert "xdp" not in out.replace("xdp_", "")  # no prog/xdp line


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "err", "words"),
    [
        ({"queues": [3]}, errno.EINVAL, "queue out of range"),
        ({"bind": XskMode.ZEROCOPY}, errno.EOPNOTSUPP, "no AF_XDP zero-copy"),
    ],
)
def test_what_the_kernel_refuses_is_refused_by_name(
    veth: VethPair, kwargs: dict, err: int, words: str
) -> None:
    with CpuMap(CPU + 1, frames=1024) as m, m.producer(to_cpu) as rx:
        with pytest.raises(XskError, match=words) as e:
            open_source(veth, rx, **kwargs)
        assert e.value.errno == err
        assert not xdp_attached(veth) and m.pool.audit().kernel == 0
    assert m.pool.audit().whole


def test_no_such_interface(veth: VethPair) -> None:
    with CpuMap(CPU + 1, frames=1024) as m, m.producer(to_cpu) as rx:
        with veth.in_local(), pytest.raises(XskError, match="ip link") as e:
            XskSource(rx, "nosuchif0")
        assert e.value.errno == errno.ENODEV and m.pool.audit().kernel == 0


def test_an_mtu_too_large_for_native_xdp_names_the_fix() -> None:
    with VethPair(mtu=9000) as pair, CpuMap(CPU + 1, frames=1024) as m, m.producer(to_cpu) as rx:
        with pytest.raises(XdpError, match="-m skb") as e:
            open_source(pair, rx)
        assert e.value.errno == errno.ERANGE and "mtu 3500" in str(e.value)
        assert m.pool.audit().kernel == 0 and xdp_sockets(pair) == 0
        with reopened(pair, rx, mode=XdpMode.SKB) as src:  # generic XDP takes any MTU
            assert xdp_attached(pair) == 2 and src.mode is XdpMode.SKB
    assert m.pool.audit().whole


# --- several queues -------------------------------------------------------------------------------


def test_every_queue_has_its_socket_and_frames_carry_their_queue(two_queue_pair) -> None:
    pair = two_queue_pair
    gen = Generator(
        flows=4, sizes=(64,), seed=1, protocols=("udp",), ip_versions=(4,), count=4,
        dst_mac=pair.local.mac_bytes, src_mac=pair.peer.mac_bytes,
    )  # fmt: skip
    frames = [p.data for b in gen.batches(64) for p in b]
    cpus = sorted(usable_cpus())[:2]
    with CpuMap(CPU + 1, handler=Queues(), frames=4096) as m:
        m.update(CPU, 4096)
        with m.producer(to_cpu, backpressure=10.0) as rx:
            src = open_source(pair, rx)
            with src:
                assert src.queues == (0, 1) and len(src.sockets) == 2
                with pair.in_peer(), TrafficGen(pair.peer.ifname, frames) as tg:
                    for cpu in cpus:  # a veth frame lands on queue (sending CPU % queues)
                        tg.run(GenOptions(count=500, cpu=cpu))
                want = 500 * len(cpus)
                receive_until(src, lambda: placed_or_dropped(src) >= want)
                src.stop()
                stats = src.statistics()
        assert_books_balance(m)
    by_queue = {q: n for r in m.results for q, n in (r.result or {}).items()}
    assert stats.drops == 0 and sum(by_queue.values()) == stats.received == want
    assert set(by_queue) == {c % 2 for c in cpus}
    assert m.pool.audit().whole


def test_without_root_the_error_says_so(veth: VethPair) -> None:
    """A child that enters the namespace as root, then drops to nobody, is refused with
    the kernel's EPERM and what to do; nothing is left lent."""
    with CpuMap(CPU + 1, frames=1024, producers=2) as m:
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                rx = m.producer(to_cpu, index=1)
                with veth.in_local():
                    os.setgid(65534)
                    os.setuid(65534)
                    try:
                        XskSource(rx, veth.local.ifname)
                    except (XskError, XdpError) as e:
                        lent = m.pool.audit().kernel
                        os.write(w, f"{e.errno} {lent} {e.strerror}".encode())
                        code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r) as f:
            said = f.read()
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, said
    err, lent, text = said.split(" ", 2)
    assert int(err) == errno.EPERM and int(lent) == 0 and "root" in text
