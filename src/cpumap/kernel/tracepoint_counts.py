"""The cpumap's two tracepoints, summed in the kernel by BPF programs on them, per CPU.

``xdp-bench redirect-cpu`` reads its enqueue and kthread rows from BPF programs on the
``xdp:xdp_cpumap_enqueue`` and ``xdp:xdp_cpumap_kthread`` tracepoints that add each event
into per-CPU counters; :class:`CpumapTracepointCounts` does the same with our assembler:
two raw-tracepoint programs (``BPF_RAW_TRACEPOINT_OPEN``: no BTF, no tracefs, no clang).

Why not :class:`~cpumap.kernel.tracefs.TraceInstance`: that one formats every event into a
ring buffer as text for Python to parse -- right for a test that wants each event, but at a
million frames a second (some 250,000 events a second, one per bulk of at most 8 on each
side) the parsing alone would take a CPU of a 2-CPU machine from the run it measures.
Summed in the kernel, an event costs a few map updates and a sample costs a handful of
``bpf(2)`` lookups, whatever the rate.  And a tracefs instance outlives a SIGKILLed owner;
a raw tracepoint is an fd, detached by the kernel when the owner dies, however it dies.

What is counted, by the arguments the kernel passes the tracepoints (``TP_PROTO``, each
widened to u64), filtered on our cpumap's ``map_id``:

* enqueue ``(map_id, processed, drops, to_cpu)``, run on the RX CPU at each bulk-queue
  flush: by ``to_cpu``, ``processed`` (frames flushed, *including* ``drops``), ``drops``
  (the ring full) and ``flushes`` (events: ``processed / flushes`` is xdp-bench's bulk
  average).  Generic (skb-mode) XDP has no bulk queue: one event per SKB, ``processed`` 1
  when it went into the ring and ``drops`` 1 when it did not -- there ``processed``
  *excludes* the drops (measured: ``tests/cli/test_kernel_run.py``'s skb run).
* kthread ``(map_id, processed, drops, sched, xdp_stats)``, run by the entry's kthread on
  its CPU: by that CPU (``bpf_get_smp_processor_id``), ``processed``, ``drops`` (SKB
  allocation failures), ``sched`` (batches after which it slept), ``batches`` (events), and
  the second stage's ``xdp_pass``/``xdp_drop``/``xdp_redirect`` read from ``*xdp_stats``
  (``struct xdp_cpumap_stats {redirect, pass, drop}``, by ``bpf_probe_read_kernel``).

Counters: one ``BPF_MAP_TYPE_PERCPU_ARRAY`` of u64, slot ``field * max_entries + cpu``.
Each CPU adds only into its own copy (a tracepoint program is not preempted by itself on
one CPU), so no atomics; a read sums the copies.  A sample is a consistent view of each
counter, not of all of them at one instant: read after the traffic stops for exact totals.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Final

from ..closing import Closing
from .asm import (
    BPF_ADD,
    BPF_DW,
    BPF_JEQ,
    BPF_JGE,
    BPF_JNE,
    BPF_W,
    HELPER_MAP_LOOKUP_ELEM,
    R0,
    R1,
    R2,
    R3,
    R6,
    R9,
    R10,
    Asm,
)
from .bpf import FdOwner, KernelArrayMap, KernelProgram, ProgType, raw_tracepoint_open

__all__ = ["ENQUEUE_FIELDS", "KTHREAD_FIELDS", "CpuTracepointCounts", "CpumapTracepointCounts"]

HELPER_GET_SMP_PROCESSOR_ID: Final = 8
HELPER_PROBE_READ_KERNEL: Final = 113

ENQUEUE_FIELDS: Final = ("processed", "drops", "flushes")
KTHREAD_FIELDS: Final = (
    "processed",
    "drops",
    "sched",
    "batches",
    "xdp_pass",
    "xdp_drop",
    "xdp_redirect",
)
# Where each field's value comes from: ("ctx", argument) -- the tracepoint's argument, each
# a u64 in the context -- ("one",) -- the event itself -- or ("stats", offset) -- a u32 of
# struct xdp_cpumap_stats {redirect, pass, drop}, copied to the stack at _STATS.
_ENQUEUE_SOURCES: Final = (("ctx", 1), ("ctx", 2), ("one", 0))
_KTHREAD_SOURCES: Final = (
    ("ctx", 1),
    ("ctx", 2),
    ("ctx", 3),
    ("one", 0),
    ("stats", 4),
    ("stats", 8),
    ("stats", 0),
)
_KEY: Final = -4  # the u32 map key on the stack
_STATS: Final = -16  # the 12 bytes of xdp_cpumap_stats on the stack


@dataclass(frozen=True, slots=True)
class CpuTracepointCounts:
    """One target CPU's totals, as xdp-bench's rows for it show them."""

    cpu: int
    enqueue_processed: int = 0
    """Frames flushed towards this CPU's ring, the drops included."""
    enqueue_drops: int = 0
    """Frames of those that found the ring full."""
    enqueue_flushes: int = 0
    kthread_processed: int = 0
    """Frames this CPU's kthread took off its ring."""
    kthread_drops: int = 0
    """Frames the kthread could not make an SKB of."""
    kthread_sched: int = 0
    kthread_batches: int = 0
    xdp_pass: int = 0
    xdp_drop: int = 0
    xdp_redirect: int = 0

    @property
    def bulk_avg(self) -> float:
        """Frames per flush (xdp-bench's bulk-avg); 0 before the first."""
        return self.enqueue_processed / self.enqueue_flushes if self.enqueue_flushes else 0.0


def _add_field(asm: Asm, counters: KernelArrayMap, slot_base: int, source: tuple[str, int]) -> None:
    """``counters[slot_base + r9] += value``, on this CPU's copy; to ``out`` if no slot.
    r6 is the context, r9 the CPU; clobbers r0-r5."""
    asm.mov_reg(R1, R9).alu_imm(BPF_ADD, R1, slot_base).stx(BPF_W, R10, R1, _KEY)
    asm.ld_map_fd(R1, counters.fd).mov_reg(R2, R10).alu_imm(BPF_ADD, R2, _KEY)
    asm.call(HELPER_MAP_LOOKUP_ELEM).jmp_imm(BPF_JEQ, R0, 0, to="out")
    kind, where = source
    if kind == "ctx":
        asm.ldx(BPF_DW, R1, R6, 8 * where)
    elif kind == "stats":
        asm.ldx(BPF_W, R1, R10, _STATS + where)
    else:
        asm.mov_imm(R1, 1)
    asm.ldx(BPF_DW, R2, R0, 0).alu_reg(BPF_ADD, R2, R1).stx(BPF_DW, R0, R2, 0)


def _prologue(asm: Asm, map_id: int) -> None:
    """r6 = the context; to ``out`` unless argument 0 (``map_id``) is ours."""
    asm.mov_reg(R6, R1).ldx(BPF_DW, R1, R6, 0).jmp_imm(BPF_JNE, R1, map_id, to="out")


def enqueue_program(counters: KernelArrayMap, map_id: int, max_entries: int) -> bytes:
    """The ``xdp_cpumap_enqueue`` counter: by ``to_cpu``, :data:`ENQUEUE_FIELDS`."""
    asm = Asm()
    _prologue(asm, map_id)
    # to_cpu, an int widened with its sign: a negative one is a huge u64, out of range.
    asm.ldx(BPF_DW, R9, R6, 24).jmp_imm(BPF_JGE, R9, max_entries, to="out")
    for i, source in enumerate(_ENQUEUE_SOURCES):
        _add_field(asm, counters, i * max_entries, source)
    return asm.label("out").mov_imm(R0, 0).exit().assemble()


def kthread_program(counters: KernelArrayMap, map_id: int, max_entries: int, base: int) -> bytes:
    """The ``xdp_cpumap_kthread`` counter: by the CPU it runs on, :data:`KTHREAD_FIELDS`
    from slot ``base`` on."""
    asm = Asm()
    _prologue(asm, map_id)
    asm.call(HELPER_GET_SMP_PROCESSOR_ID).mov_reg(R9, R0)
    asm.jmp_imm(BPF_JGE, R9, max_entries, to="out")
    # *xdp_stats onto the stack (a failed read leaves zeros there: the helper clears it).
    asm.mov_reg(R1, R10).alu_imm(BPF_ADD, R1, _STATS).mov_imm(R2, 12)
    asm.ldx(BPF_DW, R3, R6, 32).call(HELPER_PROBE_READ_KERNEL)
    for i, source in enumerate(_KTHREAD_SOURCES):
        _add_field(asm, counters, base + i * max_entries, source)
    return asm.label("out").mov_imm(R0, 0).exit().assemble()


class _RawTracepoint(FdOwner):
    """A program on a raw tracepoint, detached when closed (or when the owner dies)."""

    def __init__(self, name: str, program: KernelProgram) -> None:
        self._own(raw_tracepoint_open(name, program.fd))


class CpumapTracepointCounts(Closing):
    """Both cpumap tracepoints of the cpumap ``map_id`` (keys ``0..max_entries-1``), summed
    per CPU in the kernel from now on, until :meth:`close` (idempotent; also ``with``).

    Raises ``OSError`` with the kernel's errno where the tracepoints cannot be counted
    (no privilege, a kernel without them or without raw tracepoints): callers show "n/a".
    """

    def __init__(self, map_id: int, max_entries: int) -> None:
        self.map_id: Final = map_id
        self.max_entries: Final = max_entries
        self._fields = len(ENQUEUE_FIELDS) + len(KTHREAD_FIELDS)
        self._stack = contextlib.ExitStack()
        try:
            self._open()
        except BaseException:
            self._stack.close()
            raise

    def _open(self) -> None:
        enter, n = self._stack.enter_context, self.max_entries
        self.counters: KernelArrayMap = enter(
            KernelArrayMap(self._fields * n, percpu=True, name="cpumap_tp")
        )
        progs = (
            ("xdp_cpumap_enqueue", enqueue_program(self.counters, self.map_id, n)),
            (
                "xdp_cpumap_kthread",
                kthread_program(self.counters, self.map_id, n, len(ENQUEUE_FIELDS) * n),
            ),
        )
        for tracepoint, insns in progs:
            prog = enter(
                KernelProgram(insns, prog_type=ProgType.RAW_TRACEPOINT, name=tracepoint[4:19])
            )
            enter(_RawTracepoint(tracepoint, prog))

    def close(self) -> None:
        """Detach both programs and free the counters.  Idempotent."""
        self._stack.close()

    def read(self, cpus: list[int] | tuple[int, ...]) -> dict[int, CpuTracepointCounts]:
        """The totals so far of each CPU in ``cpus`` (each counter summed over the CPUs
        that added into it; ``len(cpus) * 10`` lookups)."""
        names = (
            *(f"enqueue_{f}" for f in ENQUEUE_FIELDS),
            *(f if f.startswith("xdp_") else f"kthread_{f}" for f in KTHREAD_FIELDS),
        )
        out = {}
        for cpu in cpus:
            if not 0 <= cpu < self.max_entries:
                raise ValueError(
                    f"CPU {cpu} is not a key of the cpumap (0..{self.max_entries - 1})"
                )
            values = {
                name: self.counters.lookup(i * self.max_entries + cpu)
                for i, name in enumerate(names)
            }
            out[cpu] = CpuTracepointCounts(cpu, **values)
        return out
