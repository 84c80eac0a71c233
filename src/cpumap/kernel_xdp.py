"""Traffic through the kernel's own cpumap: tiny XDP programs, live test runs, tracepoints.

Theory of operation
-------------------
We need the real cpumap to move real frames without a NIC, clang or libbpf:

1. **Programs.**  A dozen eBPF instructions, assembled here (:class:`Asm`): the RX
   program loads the cpumap's fd into r1 with ``BPF_LD_IMM64`` + ``BPF_PSEUDO_MAP_FD``
   (the verifier swaps the fd for the map pointer), puts the key in r2 and flags in r3,
   calls ``bpf_redirect_map`` (helper 51) and returns its result.  Variants pick the key
   from a per-CPU round-robin counter or from a byte of the frame.  A second-stage
   program (``expected_attach_type = BPF_XDP_CPUMAP``) is ``r0 = verdict; exit``; the
   cpumap entry carries its fd and the entry's kthread runs it on every frame.

2. **Frames.**  ``BPF_PROG_TEST_RUN`` with ``BPF_F_TEST_XDP_LIVE_FRAMES`` turns one
   ``data_in`` frame into ``repeat`` real ``xdp_frame``s from a page pool, in batches of
   ``batch_size``, each batch ending with ``xdp_do_flush()`` like a driver's NAPI poll.
   A redirect to the cpumap therefore goes through the real bulk queue, the real
   ``ptr_ring`` and the real kthread on the entry's CPU.  We pin the calling thread to
   the RX CPU first: the bulk queue is per CPU, and the kthread must be on another one.
   The frames enter on the loopback device (no ``ingress_ifindex`` in the context), so
   an SKB built on the target CPU meets the real netstack.  For that path the runner
   aims the frames at a UDP socket of its own, on this host's address (not 127.0.0.1:
   without the dst a loopback transmit would have attached, ``ip_rcv`` drops 127/8 as
   ``IP_LOCALNET``), with the smallest receive buffer: ``ip_rcv`` → ``udp_rcv`` → socket
   lookup → queue full → free, and no ICMP port-unreachable leaves the host.

3. **Observation.**  The ``xdp:xdp_cpumap_enqueue`` (one per bulk-queue flush, on the RX
   CPU) and ``xdp:xdp_cpumap_kthread`` (one per kthread batch, on the target CPU)
   tracepoints, in a tracefs *instance* of our own (``instances/cpumap-<pid>-<n>``) so the
   global buffer and other tracers are untouched, filtered on our map's id, on the
   ``mono`` clock so that timestamps of the two CPUs compare.  The buffer is sized to hold
   a whole run (``overwrite`` off, so an overflow drops new events and the per-CPU
   ``stats`` count them: :attr:`CpumapRunResult.lost_events` says if totals are partial).
   After the test run returns every frame has been enqueued; we drain ``trace_pipe``
   (non-blocking, ``poll`` with a deadline) until the kthread has processed everything
   the enqueue side put in its ring.

What each tracepoint field means on this kernel (6.x) is recorded in
``docs/kernel-differences.md``; the short version: enqueue ``processed`` counts every
frame flushed towards the ring *including* the ``drops`` that found it full; kthread
``processed`` is the batch size (≤ ``CPUMAP_BATCH`` = 8) and ``xdp_pass + xdp_drop +
xdp_redirect`` split it by second-stage verdict; its ``drops`` counts only SKB
allocation failures.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import re
import select
import socket
import statistics
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Literal, NamedTuple, Self, TypeVar

from cpumap.kernel_bpf import (
    BPF_F_TEST_XDP_LIVE_FRAMES,
    AttachType,
    KernelArrayMap,
    KernelCpuMap,
    KernelProgram,
    TestRunResult,
)

# --- a tiny eBPF assembler (include/uapi/linux/bpf_common.h, bpf.h) ---------------------

# Instruction classes.
BPF_LD: Final = 0x00
BPF_LDX: Final = 0x01
BPF_ST: Final = 0x02
BPF_STX: Final = 0x03
BPF_JMP: Final = 0x05
BPF_ALU64: Final = 0x07
# Sizes.
BPF_W: Final = 0x00
BPF_H: Final = 0x08
BPF_B: Final = 0x10
BPF_DW: Final = 0x18
# Modes.
BPF_IMM: Final = 0x00
BPF_MEM: Final = 0x60
# Operand source.
BPF_K: Final = 0x00
BPF_X: Final = 0x08
# ALU operations.
BPF_ADD: Final = 0x00
BPF_AND: Final = 0x50
BPF_MOD: Final = 0x90
BPF_MOV: Final = 0xB0
# Jump operations.
BPF_JA: Final = 0x00
BPF_JEQ: Final = 0x10
BPF_JGT: Final = 0x20
BPF_JNE: Final = 0x50
BPF_CALL: Final = 0x80
BPF_EXIT: Final = 0x90

BPF_PSEUDO_MAP_FD: Final = 1

# Registers: r0 return value, r1-r5 arguments, r6-r9 callee-saved, r10 frame pointer.
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# Helper ids (enum bpf_func_id, linux/bpf.h).
HELPER_MAP_LOOKUP_ELEM: Final = 1
HELPER_REDIRECT_MAP: Final = 51

# XDP verdicts (enum xdp_action).
XDP_ABORTED: Final = 0
XDP_DROP: Final = 1
XDP_PASS: Final = 2
XDP_TX: Final = 3
XDP_REDIRECT: Final = 4

# Offsets in struct xdp_md (linux/bpf.h).
XDP_MD_DATA: Final = 0
XDP_MD_DATA_END: Final = 4

_INSN = struct.Struct("<BBhi")  # struct bpf_insn: code, dst:4|src:4, off, imm


class Asm:
    """An eBPF instruction list with named jump targets.

    Each method appends one instruction (``ld_imm64`` two) and returns ``self``; a jump
    names a label, resolved by :meth:`assemble` (offsets count instructions after the
    jump).  Just enough for our programs, not a general assembler.
    """

    def __init__(self) -> None:
        # (code, dst, src, off, imm, jump label or None), one per 8-byte slot.
        self._slots: list[tuple[int, int, int, int, int, str | None]] = []
        self._labels: dict[str, int] = {}

    def _emit(
        self,
        code: int,
        dst: int = 0,
        src: int = 0,
        off: int = 0,
        imm: int = 0,
        to: str | None = None,
    ) -> Self:
        self._slots.append((code, dst, src, off, imm, to))
        return self

    def label(self, name: str) -> Self:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._slots)
        return self

    def mov_imm(self, dst: int, imm: int) -> Self:
        return self._emit(BPF_ALU64 | BPF_MOV | BPF_K, dst, imm=imm)

    def mov_reg(self, dst: int, src: int) -> Self:
        return self._emit(BPF_ALU64 | BPF_MOV | BPF_X, dst, src)

    def alu_imm(self, op: int, dst: int, imm: int) -> Self:
        return self._emit(BPF_ALU64 | op | BPF_K, dst, imm=imm)

    def ld_map_fd(self, dst: int, fd: int) -> Self:
        """``dst = map`` (``BPF_LD_IMM64`` with ``src = BPF_PSEUDO_MAP_FD``; two slots)."""
        self._emit(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, imm=fd)
        return self._emit(0, imm=0)  # upper 32 bits of the 64-bit immediate

    def ldx(self, size: int, dst: int, src: int, off: int) -> Self:
        return self._emit(BPF_LDX | size | BPF_MEM, dst, src, off)

    def stx(self, size: int, dst: int, src: int, off: int) -> Self:
        return self._emit(BPF_STX | size | BPF_MEM, dst, src, off)

    def st_imm(self, size: int, dst: int, off: int, imm: int) -> Self:
        return self._emit(BPF_ST | size | BPF_MEM, dst, 0, off, imm)

    def jmp_imm(self, op: int, dst: int, imm: int, to: str) -> Self:
        return self._emit(BPF_JMP | op | BPF_K, dst, imm=imm, to=to)

    def jmp_reg(self, op: int, dst: int, src: int, to: str) -> Self:
        return self._emit(BPF_JMP | op | BPF_X, dst, src, to=to)

    def ja(self, to: str) -> Self:
        return self._emit(BPF_JMP | BPF_JA, to=to)

    def call(self, helper: int) -> Self:
        return self._emit(BPF_JMP | BPF_CALL, imm=helper)

    def exit(self) -> Self:
        return self._emit(BPF_JMP | BPF_EXIT)

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (code, dst, src, off, imm, to) in enumerate(self._slots):
            if to is not None:
                if to not in self._labels:
                    raise ValueError(f"undefined label {to!r}")
                off = self._labels[to] - (i + 1)
            out += _INSN.pack(code, (src << 4) | dst, off, imm)
        return bytes(out)


def _key_table(asm: Asm, reg: int, keys: Sequence[int], *, then: str) -> Asm:
    """``reg = keys[reg]`` for ``reg`` in ``[0, len(keys))`` as a chain of compares, then jump.

    A chain, not a lookup in an array map: the key sets are small, and it keeps each
    program to the one map it redirects into.
    """
    last = len(keys) - 1
    for i, key in enumerate(keys[:-1]):
        asm.jmp_imm(BPF_JNE, reg, i, to=f"k{i + 1}")  # not this index: try the next
        asm.mov_imm(reg, key).ja(then)
        asm.label(f"k{i + 1}")
    return asm.mov_imm(reg, keys[last]).ja(then)


def _redirect_tail(asm: Asm, cpumap: KernelCpuMap, fail_action: int) -> Asm:
    """``return bpf_redirect_map(cpumap, r2, fail_action)``: r2 must hold the key."""
    asm.label("redirect")
    asm.ld_map_fd(R1, cpumap.fd)
    # The low bits of flags are the verdict when the entry is missing (XDP_ABORTED = 0
    # is what the engine counts as a redirect error).
    asm.mov_imm(R3, fail_action)
    return asm.call(HELPER_REDIRECT_MAP).exit()


def _check_keys(keys: Sequence[int]) -> None:
    if not keys:
        raise ValueError("keys must not be empty")
    if any(not 0 <= k < 2**31 for k in keys):
        raise ValueError(f"keys must be in [0, 2**31), got {list(keys)}")


def redirect_program(cpumap: KernelCpuMap, key: int, *, fail_action: int = XDP_ABORTED) -> bytes:
    """``return bpf_redirect_map(&cpumap, key, fail_action)``: every frame to one entry."""
    _check_keys([key])
    return _redirect_tail(Asm().mov_imm(R2, key), cpumap, fail_action).assemble()


def redirect_by_byte_program(
    cpumap: KernelCpuMap, keys: Sequence[int], offset: int, *, fail_action: int = XDP_ABORTED
) -> bytes:
    """Redirect to ``keys[frame[offset] % len(keys)]``; a frame too short is dropped.

    The bounds check (``data + offset + 1 > data_end``) is what lets the verifier accept
    the byte load.
    """
    _check_keys(keys)
    if not 0 <= offset < 4096:
        raise ValueError(f"offset must be in [0, 4096), got {offset}")
    asm = Asm()
    asm.ldx(BPF_W, R2, R1, XDP_MD_DATA).ldx(BPF_W, R3, R1, XDP_MD_DATA_END)
    asm.mov_reg(R4, R2).alu_imm(BPF_ADD, R4, offset + 1)
    asm.jmp_reg(BPF_JGT, R4, R3, to="short")
    asm.ldx(BPF_B, R2, R2, offset)
    asm.alu_imm(BPF_MOD, R2, len(keys))
    _key_table(asm, R2, keys, then="redirect")
    asm.label("short").mov_imm(R0, XDP_DROP).exit()
    return _redirect_tail(asm, cpumap, fail_action).assemble()


def redirect_round_robin_program(
    cpumap: KernelCpuMap,
    keys: Sequence[int],
    counter: KernelArrayMap,
    *,
    fail_action: int = XDP_ABORTED,
) -> bytes:
    """Redirect frame n to ``keys[n % len(keys)]``, n counted in ``counter[0]`` (per CPU).

    A per-CPU array needs no atomics: XDP on one CPU is never preempted by itself.
    """
    _check_keys(keys)
    asm = Asm()
    asm.st_imm(BPF_W, R10, -4, 0)  # u32 key = 0 on the stack
    asm.ld_map_fd(R1, counter.fd).mov_reg(R2, R10).alu_imm(BPF_ADD, R2, -4)
    asm.call(HELPER_MAP_LOOKUP_ELEM)
    asm.jmp_imm(BPF_JEQ, R0, 0, to="nocounter")
    asm.ldx(BPF_DW, R2, R0, 0).mov_reg(R3, R2).alu_imm(BPF_ADD, R3, 1).stx(BPF_DW, R0, R3, 0)
    asm.alu_imm(BPF_MOD, R2, len(keys))
    _key_table(asm, R2, keys, then="redirect")
    asm.label("nocounter").mov_imm(R0, XDP_ABORTED).exit()
    return _redirect_tail(asm, cpumap, fail_action).assemble()


def verdict_program(verdict: int) -> bytes:
    """``return verdict``: a second stage (or an RX program) that does nothing else."""
    if verdict not in (XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT):
        raise ValueError(f"verdict must be an XDP action 0..4, got {verdict}")
    return Asm().mov_imm(R0, verdict).exit().assemble()


def load_xdp(insns: bytes, *, cpumap_stage: bool = False, name: str = "") -> KernelProgram:
    """Load an XDP program; ``cpumap_stage`` makes it a cpumap entry's second stage."""
    attach = AttachType.XDP_CPUMAP if cpumap_stage else AttachType.NONE
    return KernelProgram(insns, expected_attach_type=attach, name=name)


# --- frames ------------------------------------------------------------------------------


def _csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    size: int = 64,
    *,
    src: str = "127.0.0.1",
    dst: str = "127.0.0.1",
    sport: int = 4242,
    dport: int = 9,
    dst_mac: bytes = b"\0" * 6,
    src_mac: bytes = b"\x02\0\0\0\0\x01",
) -> bytes:
    """An Ethernet/IPv4/UDP frame of ``size`` bytes (no FCS), valid enough for ``ip_rcv``.

    The destination MAC defaults to the loopback device's all-zero address, which the
    test run's frames arrive on, so that ``eth_type_trans`` says PACKET_HOST.  For a frame
    that the netstack delivers, see :class:`UdpSink`.
    """
    if not 42 <= size <= 1514:
        raise ValueError(f"size must be in [42, 1514], got {size}")
    payload = bytes(size - 42)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # csum 0: none
    saddr = bytes(int(x) for x in src.split("."))
    daddr = bytes(int(x) for x in dst.split("."))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, saddr, daddr)
    ip = hdr[:10] + struct.pack("!H", _csum16(hdr)) + hdr[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def local_ipv4() -> str | None:
    """An IPv4 address of this host other than 127/8 (the one it would send from), or None.

    A UDP ``connect`` sends nothing; it only makes the kernel pick the route and source.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.18.0.1", 9))  # RFC 2544 benchmarking range: never a real peer
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else str(addr)


class UdpSink:
    """A UDP socket with the smallest receive buffer, and a frame addressed to it.

    Frames that the netstack delivers here are queued until the buffer is full, then
    dropped by ``udp_queue_rcv_skb`` (``RcvbufErrors``): the whole receive path runs, and
    no reply (ICMP port-unreachable to a closed port) is sent anywhere.  Nobody reads it.
    """

    def __init__(self, size: int = 64) -> None:
        addr = local_ipv4()
        if addr is None:
            raise OSError(errno.EADDRNOTAVAIL, "no IPv4 address other than 127/8 on this host")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
            self.sock.bind((addr, 0))
        except BaseException:
            self.sock.close()
            raise
        self.addr: Final = addr
        self.port: Final[int] = self.sock.getsockname()[1]
        # From the benchmarking range (not a local address: ip_rcv drops those as
        # IP_LOCAL_SOURCE when they arrive from outside, which lo is here).
        self.frame: Final = udp_frame(size, src="198.18.0.1", dst=addr, dport=self.port)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- tracefs ------------------------------------------------------------------------------

CPUMAP_EVENTS: Final = ("xdp/xdp_cpumap_enqueue", "xdp/xdp_cpumap_kthread")
_TRACEFS_CANDIDATES: Final = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_instance_ids = itertools.count()


def tracefs_root(*, mount: bool = True) -> str:
    """Where tracefs is mounted, mounting it at /sys/kernel/tracing if it is not (root only).

    Raises ``OSError`` if it is neither mounted nor mountable.  A mount we make stays: it
    is the kernel's standard place, and another process may be using it by the time we
    would unmount it.
    """
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs":
                return parts[1]
    for cand in _TRACEFS_CANDIDATES:
        if os.path.exists(os.path.join(cand, "instances")):
            return cand
    if mount and os.path.isdir(_TRACEFS_CANDIDATES[0]):
        # mount(2) itself, not the mount(8) binary a minimal image may lack.
        libc = ctypes.CDLL(None, use_errno=True)
        target = _TRACEFS_CANDIDATES[0].encode()
        if libc.mount(b"nodev", target, b"tracefs", ctypes.c_ulong(0), None) == 0:
            return _TRACEFS_CANDIDATES[0]
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount tracefs on {target.decode()}: {os.strerror(err)}")
    raise OSError(errno.ENODEV, "tracefs is not mounted and cannot be mounted here")


class TraceEvent(NamedTuple):
    """One tracepoint hit, parsed from a ``trace_pipe`` line."""

    name: str
    """``xdp_cpumap_enqueue`` or ``xdp_cpumap_kthread``."""
    cpu: int
    """The CPU that recorded it (the RX CPU for enqueue, the target CPU for kthread)."""
    ts: float
    """Seconds on the instance's trace clock (``mono``: comparable across CPUs)."""
    fields: dict[str, int | str]
    """The event's ``key=value`` fields, integers where they parse as integers."""


# "<task>-<pid> [001] d..1. 123.456789: xdp_cpumap_kthread: kthread cpu=1 map_id=7 ..."
# The task name may contain spaces and the irq-info flags column may be absent, so the
# match is anchored on "[cpu]" and the timestamp instead of splitting on whitespace.
_LINE = re.compile(rb"\[(\d+)\]\s+(?:\S+\s+)?(\d+\.\d+): (\w+): \w+ (.*)$")


def parse_trace_line(line: bytes) -> TraceEvent | None:
    """Parse one ``trace``/``trace_pipe`` line; None for headers and lines of other shapes."""
    m = _LINE.search(line)
    if m is None:
        return None
    fields: dict[str, int | str] = {}
    for tok in m.group(4).split():
        k, sep, v = tok.partition(b"=")
        if not sep:
            continue
        try:
            fields[k.decode()] = int(v)
        except ValueError:
            fields[k.decode()] = v.decode(errors="replace")
    return TraceEvent(m.group(3).decode(), int(m.group(1)), float(m.group(2)), fields)


class TraceInstance:
    """A tracefs instance of our own with some events enabled, read through ``trace_pipe``.

    ``with TraceInstance(filter="map_id == 7") as tr: ...; events = tr.drain()``.  The
    instance directory is removed on ``close()`` (idempotent), also when the body raised.
    """

    def __init__(
        self,
        events: Iterable[str] = CPUMAP_EVENTS,
        *,
        filter: str | None = None,
        buffer_kb: int = 4096,
        clock: str = "mono",
        root: str | None = None,
    ) -> None:
        self.root: Final = root or tracefs_root()
        self.name: Final = f"cpumap-{os.getpid()}-{next(_instance_ids)}"
        self.path: Final = os.path.join(self.root, "instances", self.name)
        self.events: Final = tuple(events)
        self._pipe: int | None = None
        self._partial = b""
        os.mkdir(self.path)
        try:
            self._write("tracing_on", "0")
            self._write("buffer_size_kb", str(buffer_kb))
            self._write("trace_clock", clock)
            # Overwrite off: a full buffer drops the newest events and counts them, rather
            # than silently eating the oldest (which would skew every total the same way).
            self._write("options/overwrite", "0")
            for ev in self.events:
                if filter is not None:
                    self._write(f"events/{ev}/filter", filter)
                self._write(f"events/{ev}/enable", "1")
            self._pipe = os.open(os.path.join(self.path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
            self._write("tracing_on", "1")
        except BaseException:
            self.close()
            raise

    def _write(self, rel: str, value: str) -> None:
        with open(os.path.join(self.path, rel), "w") as f:
            f.write(value)

    def drain(self) -> list[TraceEvent]:
        """Every event recorded since the last drain (consumed: a second drain won't repeat it)."""
        if self._pipe is None:
            raise ValueError("TraceInstance is closed")
        chunks = [self._partial]
        while True:
            try:
                chunk = os.read(self._pipe, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        events = []
        for line in data[:cut].splitlines():
            ev = parse_trace_line(line)
            if ev is not None:
                events.append(ev)
        return events

    def wait_readable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``trace_pipe`` to have data."""
        if self._pipe is None:
            raise ValueError("TraceInstance is closed")
        poller = select.poll()
        poller.register(self._pipe, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def lost_events(self) -> int:
        """Events the buffer could not hold (``overrun`` + ``dropped events``, all CPUs)."""
        lost = 0
        per_cpu = os.path.join(self.path, "per_cpu")
        for cpu_dir in os.listdir(per_cpu):
            with open(os.path.join(per_cpu, cpu_dir, "stats")) as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k.strip() in ("overrun", "dropped events"):
                        lost += int(v)
        return lost

    def close(self) -> None:
        """Disable our events and remove the instance directory.  Idempotent."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if not os.path.isdir(self.path):
            return
        with contextlib.suppress(OSError):
            self._write("tracing_on", "0")
        for ev in self.events:
            with contextlib.suppress(OSError):
                self._write(f"events/{ev}/enable", "0")
        # rmdir fails with EBUSY while a file of the instance is open (not ours: closed above).
        os.rmdir(self.path)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def tracing_unavailable_reason() -> str | None:
    """Why the cpumap tracepoints cannot be read here (None if they can)."""
    try:
        root = tracefs_root()
    except OSError as e:
        return str(e)
    for ev in CPUMAP_EVENTS:
        if not os.path.isdir(os.path.join(root, "events", ev)):
            return f"tracepoint {ev} not in {root}/events"
    try:
        TraceInstance(root=root, buffer_kb=64).close()
    except OSError as e:
        return f"cannot create a tracefs instance: {e}"
    return None


# --- totals ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnqueueTotals:
    """Sum of ``xdp_cpumap_enqueue`` events: the RX side's bulk-queue flushes."""

    events: int
    processed: int
    """Frames flushed towards the ring, *including* ``drops``."""
    drops: int
    """Frames that found the ring full (returned to the page pool)."""
    max_batch: int
    """Largest ``processed`` of one flush (≤ CPU_MAP_BULK_SIZE = 8)."""
    to_cpus: frozenset[int]


@dataclass(frozen=True, slots=True)
class KthreadTotals:
    """Sum of ``xdp_cpumap_kthread`` events: the target CPU's batches."""

    events: int
    processed: int
    """Frames taken off the ring (all of them: passed, dropped by the second stage, …)."""
    drops: int
    """Frames the kthread could not turn into an SKB (allocation failure)."""
    xdp_pass: int
    xdp_drop: int
    xdp_redirect: int
    sched: int
    """Batches after which the kthread slept or yielded."""
    batch_sizes: dict[int, int]
    """``processed`` of one event → how many events had it."""
    cpus: frozenset[int]

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes, default=0)


def sum_enqueue(events: Iterable[TraceEvent]) -> EnqueueTotals:
    evs = [e.fields for e in events if e.name == "xdp_cpumap_enqueue"]
    return EnqueueTotals(
        events=len(evs),
        processed=sum(int(f["processed"]) for f in evs),
        drops=sum(int(f["drops"]) for f in evs),
        max_batch=max((int(f["processed"]) for f in evs), default=0),
        to_cpus=frozenset(int(f["to_cpu"]) for f in evs),
    )


def sum_kthread(events: Iterable[TraceEvent]) -> KthreadTotals:
    evs = [e for e in events if e.name == "xdp_cpumap_kthread"]
    fs = [e.fields for e in evs]
    return KthreadTotals(
        events=len(fs),
        processed=sum(int(f["processed"]) for f in fs),
        drops=sum(int(f["drops"]) for f in fs),
        xdp_pass=sum(int(f.get("xdp_pass", 0)) for f in fs),
        xdp_drop=sum(int(f.get("xdp_drop", 0)) for f in fs),
        xdp_redirect=sum(int(f.get("xdp_redirect", 0)) for f in fs),
        sched=sum(1 for f in fs if int(f["sched"])),
        batch_sizes=dict(Counter(int(f["processed"]) for f in fs)),
        cpus=frozenset(e.cpu for e in evs),
    )


# --- the runner ----------------------------------------------------------------------------

SecondStage = Literal["drop", "pass"] | None
_SECOND_STAGE_VERDICT: Final[dict[str, int]] = {"drop": XDP_DROP, "pass": XDP_PASS}

# Bytes one event may take in the per-CPU ring buffer, generously (the kthread event is
# 44 bytes of payload plus a 4-byte header, rounded; page headers add a little).
_EVENT_BYTES: Final = 64
_BUFFER_KB_MAX: Final = 512 * 1024


@dataclass(frozen=True, slots=True)
class CpumapRunSample:
    """One live test run: what went in, what the tracepoints saw, how long it took."""

    frames: int
    """Frames the RX program ran on (the test run's repeat count)."""
    enqueue: EnqueueTotals
    kthread: KthreadTotals
    lost_events: int
    """Tracepoint events the buffer could not hold: if > 0 the totals are partial."""
    complete: bool
    """Whether the kthread had processed every frame that entered its ring by the deadline."""
    wall_s: float
    """Wall-clock seconds of the ``BPF_PROG_TEST_RUN`` call (the RX side)."""
    elapsed_s: float
    """Seconds from the first enqueue to the last kthread batch (trace clock)."""
    test_run: TestRunResult
    kthread_cpu_s: float | None = None
    """CPU time the entry's kthread used during the run (``/proc/<pid>/schedstat``), or
    None where it cannot be read.  Unlike :attr:`elapsed_s` it does not grow when other
    work shares the target CPU."""

    @property
    def frames_per_s(self) -> float:
        """Frames the target CPU processed per second of :attr:`elapsed_s`."""
        return self.kthread.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ns_per_frame(self) -> float | None:
        """Kthread CPU nanoseconds per frame processed: the cost of one frame on the target."""
        if self.kthread_cpu_s is None or not self.kthread.processed:
            return None
        return self.kthread_cpu_s * 1e9 / self.kthread.processed

    @property
    def rx_frames_per_s(self) -> float:
        """Frames the RX program ran on per second of :attr:`wall_s`."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class CpumapRunResult:
    """``repeat`` samples of one configuration, and their medians."""

    qsize: int
    cpu: int
    rx_cpu: int
    second_stage: SecondStage
    frame_len: int
    samples: tuple[CpumapRunSample, ...] = field(repr=False)

    @property
    def frames_per_s(self) -> float:
        """Median over samples of frames/s processed on the target CPU."""
        return statistics.median(s.frames_per_s for s in self.samples)

    @property
    def ns_per_frame(self) -> float | None:
        """Median over samples of kthread CPU ns per frame (None if not measured)."""
        vals = [v for s in self.samples if (v := s.ns_per_frame) is not None]
        return statistics.median(vals) if vals else None

    @property
    def drop_ratio(self) -> float:
        """Queue-full drops / frames enqueued, over all samples."""
        proc = sum(s.enqueue.processed for s in self.samples)
        return sum(s.enqueue.drops for s in self.samples) / proc if proc else 0.0

    @property
    def enqueue(self) -> EnqueueTotals:
        """The first sample's enqueue totals (the common case: repeat == 1)."""
        return self.samples[0].enqueue

    @property
    def kthread(self) -> KthreadTotals:
        """The first sample's kthread totals."""
        return self.samples[0].kthread


_T = TypeVar("_T")


def run_pinned(cpu: int, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a fresh thread pinned to ``cpu``; return its result or raise its error.

    A thread of its own so that the caller's affinity is never changed (Linux applies
    ``sched_setaffinity(0, ...)`` to the calling thread only).
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            os.sched_setaffinity(0, {cpu})
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, name=f"bpf-test-run-cpu{cpu}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class KernelCpumapRun:
    """Frames through the kernel's cpumap, from ``rx_cpu`` to the entry for ``cpu``.

    Sets up a cpumap (max_entries = ``cpu + 1``) whose entry ``cpu`` has a ring of
    ``qsize`` and, with ``second_stage``, an XDP program returning DROP or PASS (None:
    no program, every frame becomes an SKB for the netstack); an RX program redirecting
    every frame to that entry; for the SKB paths (``"pass"``, None) a :class:`UdpSink`
    the frames are addressed to.  :meth:`run` then does ``repeat`` live test runs of
    ``frames`` frames each, each observed through a tracefs instance of its own.  Use as
    a context manager (or call :meth:`close`): every kernel object is released, also on
    error::

        with KernelCpumapRun(192, 1, frames=100_000, second_stage="drop") as run:
            fps = run.run().frames_per_s
    """

    def __init__(
        self,
        qsize: int,
        cpu: int,
        *,
        frames: int = 100_000,
        repeat: int = 1,
        second_stage: SecondStage = "drop",
        rx_cpu: int = 0,
        batch_size: int = 64,
        frame: bytes | None = None,
        deadline_s: float = 10.0,
    ) -> None:
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        if second_stage is not None and second_stage not in _SECOND_STAGE_VERDICT:
            raise ValueError(f"second_stage must be 'drop', 'pass' or None, got {second_stage!r}")
        if cpu == rx_cpu:
            raise ValueError(f"cpu and rx_cpu must differ, both are {cpu}")
        self.qsize: Final = qsize
        self.cpu: Final = cpu
        self.rx_cpu: Final = rx_cpu
        self.frames: Final = frames
        self.repeat: Final = repeat
        self.second_stage: Final = second_stage
        self.batch_size: Final = batch_size
        self.deadline_s: Final = deadline_s
        self._kthread_pid: int | None = None
        self._stack = contextlib.ExitStack()
        try:
            if frame is None:
                # The netstack path needs a frame it delivers; the XDP-drop path does not
                # look at the bytes, and gets the same 64-byte UDP frame to a closed port.
                if second_stage == "drop":
                    frame = udp_frame(64)
                else:
                    frame = self._stack.enter_context(UdpSink(64)).frame
            self.frame: Final = frame
            self.cpumap = self._stack.enter_context(KernelCpuMap(cpu + 1, name="cpumap_run"))
            stage_fd = None
            if second_stage is not None:
                verdict = _SECOND_STAGE_VERDICT[second_stage]
                stage = load_xdp(verdict_program(verdict), cpumap_stage=True, name="cpumap_stage")
                self.stage = self._stack.enter_context(stage)
                stage_fd = self.stage.fd
            self.cpumap.update(cpu, qsize, prog_fd=stage_fd)
            rx = load_xdp(redirect_program(self.cpumap, cpu), name="cpumap_rx")
            self.rx = self._stack.enter_context(rx)
        except BaseException:
            self._stack.close()
            raise

    def _kthread_cpu_ns(self) -> int | None:
        """The entry kthread's total CPU time, or None if it cannot be found or read.

        The kthread is named ``cpumap/<cpu>/map:<id>``; this kernel shows kthread names in
        full in ``comm`` (older ones cut them at 15 characters: then we find none).
        """
        name = f"cpumap/{self.cpu}/map:{self.cpumap.map_id}"
        if self._kthread_pid is None:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        if f.read().strip() == name:
                            self._kthread_pid = int(pid)
                            break
                except OSError:
                    continue
            else:
                return None
        try:
            with open(f"/proc/{self._kthread_pid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _buffer_kb(self) -> int:
        # Worst case one kthread event per frame (a kthread that keeps up takes one frame
        # at a time); the buffer is per CPU.
        return min(_BUFFER_KB_MAX, 1024 + self.frames * _EVENT_BYTES // 1024)

    def run_once(self) -> CpumapRunSample:
        """One live test run of :attr:`frames` frames; waits for the kthread to finish."""
        events: list[TraceEvent] = []
        with TraceInstance(
            filter=f"map_id == {self.cpumap.map_id}", buffer_kb=self._buffer_kb()
        ) as tr:

            def go() -> tuple[TestRunResult, float]:
                t0 = time.perf_counter()
                res = self.rx.test_run(
                    self.frame,
                    repeat=self.frames,
                    flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                    batch_size=self.batch_size,
                )
                return res, time.perf_counter() - t0

            cpu0 = self._kthread_cpu_ns()
            res, wall = run_pinned(self.rx_cpu, go)
            # Every frame is enqueued once the call returns (each batch ends in a flush);
            # the kthread still has up to qsize frames to go.
            deadline = time.monotonic() + self.deadline_s
            complete = False
            while True:
                events += tr.drain()
                enq, kt = sum_enqueue(events), sum_kthread(events)
                if kt.processed >= enq.processed - enq.drops and enq.processed >= self.frames:
                    complete = True
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                tr.wait_readable(min(left, 0.05))
            cpu1 = self._kthread_cpu_ns()
            lost = tr.lost_events()
        cpu_s = (cpu1 - cpu0) / 1e9 if cpu0 is not None and cpu1 is not None else None
        enq_ts = [e.ts for e in events if e.name == "xdp_cpumap_enqueue"]
        kt_ts = [e.ts for e in events if e.name == "xdp_cpumap_kthread"]
        elapsed = max(kt_ts) - min(enq_ts) if enq_ts and kt_ts else 0.0
        return CpumapRunSample(
            frames=self.frames,
            enqueue=enq,
            kthread=kt,
            lost_events=lost,
            complete=complete,
            wall_s=wall,
            elapsed_s=elapsed,
            test_run=res,
            kthread_cpu_s=cpu_s,
        )

    def run(self) -> CpumapRunResult:
        """:attr:`repeat` samples of :meth:`run_once`."""
        samples = tuple(self.run_once() for _ in range(self.repeat))
        return CpumapRunResult(
            qsize=self.qsize,
            cpu=self.cpu,
            rx_cpu=self.rx_cpu,
            second_stage=self.second_stage,
            frame_len=len(self.frame),
            samples=samples,
        )

    def close(self) -> None:
        """Close the programs and the map (the kernel stops the entry's kthread).  Idempotent."""
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run_kernel_cpumap(qsize: int, cpu: int, **kwargs: object) -> CpumapRunResult:
    """Set up, run and tear down a :class:`KernelCpumapRun` (``kwargs`` as its own)."""
    with KernelCpumapRun(qsize, cpu, **kwargs) as run:  # type: ignore[arg-type]
        return run.run()


def rx_drop_ceiling(
    frames: int = 1_000_000, *, rx_cpu: int = 0, batch_size: int = 64, frame: bytes | None = None
) -> float:
    """Frames/s of a live test run whose RX program just drops: what the sender can do."""
    with load_xdp(verdict_program(XDP_DROP), name="cpumap_rxdrop") as prog:
        data = frame if frame is not None else udp_frame(64)

        def go() -> float:
            t0 = time.perf_counter()
            prog.test_run(
                data, repeat=frames, flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=batch_size
            )
            return time.perf_counter() - t0

        return frames / run_pinned(rx_cpu, go)


def live_frames_unavailable_reason() -> str | None:
    """Why a live-frames test run cannot redirect here (None if it can)."""
    try:
        with load_xdp(verdict_program(XDP_DROP), name="cpumap_probe") as prog:
            prog.test_run(udp_frame(64), repeat=1, flags=BPF_F_TEST_XDP_LIVE_FRAMES)
    except OSError as e:
        return f"BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES fails here: {e}"
    return None


__all__ = [
    "CPUMAP_EVENTS",
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_PASS",
    "XDP_REDIRECT",
    "XDP_TX",
    "Asm",
    "CpumapRunResult",
    "CpumapRunSample",
    "EnqueueTotals",
    "KernelCpumapRun",
    "KthreadTotals",
    "TraceEvent",
    "TraceInstance",
    "UdpSink",
    "live_frames_unavailable_reason",
    "load_xdp",
    "local_ipv4",
    "parse_trace_line",
    "redirect_by_byte_program",
    "redirect_program",
    "redirect_round_robin_program",
    "run_kernel_cpumap",
    "run_pinned",
    "rx_drop_ceiling",
    "sum_enqueue",
    "sum_kthread",
    "tracefs_root",
    "tracing_unavailable_reason",
    "udp_frame",
    "verdict_program",
]
