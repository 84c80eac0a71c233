"""The Python a user would write without us, doing the same work.

* Pipelines: this process reads the frames, picks a consumer per frame by a hash of its
  addresses in Python, and sends lists of 64 frames to one consumer process per CPU, which
  touches every byte of every frame with numpy -- over ``multiprocessing.Queue``,
  faster-fifo's ``Queue`` or a pyzmq PUSH/PULL socket.  Frames/s from the first frame sent
  to the last one consumed.  The one implementation of these pipelines:
  ``benchmarks/bench_engine.py`` (its baseline, the sending process pinned) and
  ``bench_scaling.py`` (its baseline, ``passes`` over every byte) run it too.
* Single-process loops: ``Skb(frame).dport`` and dpkt's
  ``Ethernet(frame).data.data.dport`` over every frame, in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cpumap.cpus import pinned
from cpumap.skb import Skb

from .common import per_second

CHUNK = 64  # frames per message
PIPELINES = ("mp.Queue", "faster-fifo", "pyzmq")


def missing(kind: str) -> str | None:
    """Why pipeline ``kind`` cannot run here (None: it can)."""
    module = {"faster-fifo": "faster_fifo", "pyzmq": "zmq"}.get(kind)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError as e:
        return f"{module} not installed ({e}); pip install 'cpumap[bench]'"
    return None


def _touch(frames: list[bytes], passes: int) -> int:
    arr = np.frombuffer(b"".join(frames), dtype=np.uint8).reshape(len(frames), -1)
    acc = 0
    for _ in range(passes):
        acc += int(arr.sum(axis=1, dtype=np.uint32)[-1])
    return acc


# -- the three transports: (make channel, send, consumer loop) ---------------------------------
def _consume(
    recv: Callable[[], list[list[bytes]] | None], done: Any, cpu: int, passes: int
) -> None:
    os.sched_setaffinity(0, {cpu})
    done.put(("ready", cpu))
    count = acc = 0
    while True:
        msgs = recv()
        if msgs is None:
            break
        for lst in msgs:
            acc += _touch(lst, passes)
            count += len(lst)
    done.put(("done", count))


def _mp_queue_consumer(q: Any, done: Any, cpu: int, passes: int) -> None:
    def recv() -> list[list[bytes]] | None:
        lst = q.get()
        return None if lst is None else [lst]

    _consume(recv, done, cpu, passes)


def _faster_fifo_consumer(q: Any, done: Any, cpu: int, passes: int) -> None:
    stopped = False

    def recv() -> list[list[bytes]] | None:
        nonlocal stopped
        if stopped:
            return None
        msgs = q.get_many(timeout=60.0)
        if msgs and msgs[-1] is None:
            stopped = True
            msgs = msgs[:-1]
        return msgs

    _consume(recv, done, cpu, passes)


def _zmq_consumer(address: str, done: Any, cpu: int, passes: int) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.connect(address)

    def recv() -> list[list[bytes]] | None:
        parts = sock.recv_multipart()
        return None if parts == [b""] else [parts]

    try:
        _consume(recv, done, cpu, passes)
    finally:
        sock.close(linger=0)


def run_pipeline(
    kind: str,
    frames: list[bytes],
    cpus: list[int],
    *,
    rx_cpu: int | None = None,
    passes: int = 1,
) -> float:
    """Frames/s of pipeline ``kind`` (one of :data:`PIPELINES`) over ``frames``: one
    consumer per CPU of ``cpus``, each summing every byte of every frame ``passes`` times;
    this process sends, on ``rx_cpu`` (None: where it runs)."""
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    senders: list[Callable[[Any], None]] = []
    cleanup: list[Callable[[], None]] = []
    procs = []
    tmp = tempfile.mkdtemp(prefix="cpumap-bench-")
    try:
        for cpu in cpus:
            if kind == "mp.Queue":
                q = ctx.Queue()
                procs.append(ctx.Process(target=_mp_queue_consumer, args=(q, done, cpu, passes)))
                senders.append(q.put)
            elif kind == "faster-fifo":
                from faster_fifo import Queue

                fq = Queue(max_size_bytes=64 << 20)
                procs.append(
                    ctx.Process(target=_faster_fifo_consumer, args=(fq, done, cpu, passes))
                )
                senders.append(lambda lst, fq=fq: fq.put(lst, timeout=60.0))
            else:
                import zmq

                address = f"ipc://{tmp}/c{cpu}"
                sock = zmq.Context.instance().socket(zmq.PUSH)
                sock.bind(address)
                cleanup.append(lambda sock=sock: sock.close(linger=0))
                procs.append(ctx.Process(target=_zmq_consumer, args=(address, done, cpu, passes)))
                senders.append(
                    lambda lst, sock=sock: sock.send_multipart(lst if lst is not None else [b""])
                )
        for p in procs:
            p.daemon = True
            p.start()
        for _ in procs:
            done.get(timeout=60.0)
        with pinned(rx_cpu):
            elapsed, delivered = _produce(frames, senders, done, len(procs))
        for p in procs:
            p.join(30.0)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        for c in cleanup:
            c()
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    if delivered != len(frames):
        raise RuntimeError(f"{kind}: {delivered} of {len(frames)} frames consumed")
    return per_second(delivered, elapsed)


def _produce(
    frames: list[bytes], senders: list[Callable[[Any], None]], done: Any, consumers: int
) -> tuple[float, int]:
    n = len(senders)
    pending: list[list[bytes]] = [[] for _ in senders]
    t0 = time.perf_counter()
    for f in frames:
        a, b = f[26:30], f[30:34]
        i = hash(a + b if a < b else b + a) % n
        lst = pending[i]
        lst.append(f)
        if len(lst) == CHUNK:
            senders[i](lst)
            pending[i] = []
    for i, lst in enumerate(pending):
        if lst:
            senders[i](lst)
        senders[i](None)
    delivered = sum(done.get(timeout=120.0)[1] for _ in range(consumers))
    return time.perf_counter() - t0, delivered


# -- single-process loops ---------------------------------------------------------------
def skb_loop(frames: list[bytes]) -> float:
    acc = 0
    t = time.perf_counter()
    for f in frames:
        acc += Skb(f).dport
    return per_second(len(frames), time.perf_counter() - t)


def dpkt_missing() -> str | None:
    try:
        import dpkt  # noqa: F401
    except ImportError as e:
        return f"dpkt not installed ({e}); pip install 'cpumap[bench]'"
    return None


def dpkt_loop(frames: list[bytes]) -> float:
    import dpkt

    eth = dpkt.ethernet.Ethernet
    acc = 0
    t = time.perf_counter()
    for f in frames:
        acc += eth(f).data.data.dport
    return per_second(len(frames), time.perf_counter() - t)
