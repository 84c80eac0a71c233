"""A tiny eBPF assembler, and the XDP programs the kernel tests and benchmarks need.

We need the real cpumap to move real frames without a NIC, clang or libbpf.  A dozen eBPF
instructions, assembled here (:class:`Asm`), do it: the RX program loads the cpumap's fd into
r1 with ``BPF_LD_IMM64`` + ``BPF_PSEUDO_MAP_FD`` (the verifier swaps the fd for the map
pointer), puts the key in r2 and flags in r3, calls ``bpf_redirect_map`` (helper 51) and
returns its result.  Variants pick the key from a per-CPU round-robin counter or from a byte
of the frame.  A second-stage program (``expected_attach_type = BPF_XDP_CPUMAP``) is ``r0 =
verdict; exit``; the cpumap entry carries its fd and the entry's kthread runs it on every
frame.

Opcodes are those of ``include/uapi/linux/bpf_common.h`` and ``bpf.h``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final, Self

from ..abi import XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX
from .bpf import AttachType, KernelArrayMap, KernelCpuMap, KernelProgram

# Instruction classes.
BPF_LD: Final = 0x00
BPF_LDX: Final = 0x01
BPF_ST: Final = 0x02
BPF_STX: Final = 0x03
BPF_ALU: Final = 0x04  # 32-bit ALU: results zero-extended (u32 arithmetic, as C's)
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
BPF_SUB: Final = 0x10
BPF_AND: Final = 0x50
BPF_LSH: Final = 0x60
BPF_RSH: Final = 0x70
BPF_MOD: Final = 0x90
BPF_XOR: Final = 0xA0
BPF_MOV: Final = 0xB0
BPF_END: Final = 0xD0  # byte swap, with BPF_TO_BE: to big-endian (network order)
BPF_TO_BE: Final = 0x08
# Jump operations.
BPF_JA: Final = 0x00
BPF_JEQ: Final = 0x10
BPF_JGT: Final = 0x20
BPF_JGE: Final = 0x30
BPF_JNE: Final = 0x50
BPF_JLT: Final = 0xA0
BPF_CALL: Final = 0x80
BPF_EXIT: Final = 0x90

BPF_PSEUDO_MAP_FD: Final = 1

# Registers: r0 return value, r1-r5 arguments, r6-r9 callee-saved, r10 frame pointer.
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# Helper ids (enum bpf_func_id, linux/bpf.h).
HELPER_MAP_LOOKUP_ELEM: Final = 1
HELPER_REDIRECT_MAP: Final = 51
HELPER_XDP_ADJUST_TAIL: Final = 65
HELPER_XDP_GET_BUFF_LEN: Final = 188
HELPER_XDP_STORE_BYTES: Final = 190

# Offsets in struct xdp_md (linux/bpf.h).
XDP_MD_DATA: Final = 0
XDP_MD_DATA_END: Final = 4
XDP_MD_INGRESS_IFINDEX: Final = 12
XDP_MD_RX_QUEUE_INDEX: Final = 16
XDP_MD_SIZE: Final = 24  # up to egress_ifindex

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

    def alu_reg(self, op: int, dst: int, src: int) -> Self:
        return self._emit(BPF_ALU64 | op | BPF_X, dst, src)

    def alu32_imm(self, op: int, dst: int, imm: int) -> Self:
        """``(u32) dst op= imm``; the upper half of ``dst`` becomes 0."""
        return self._emit(BPF_ALU | op | BPF_K, dst, imm=imm)

    def alu32_reg(self, op: int, dst: int, src: int) -> Self:
        """``(u32) dst op= (u32) src``; the upper half of ``dst`` becomes 0."""
        return self._emit(BPF_ALU | op | BPF_X, dst, src)

    def to_be(self, dst: int, bits: int) -> Self:
        """``dst = htobe<bits>(dst)``: a network-order field loaded on a little-endian host
        becomes its value (the upper bits are cleared)."""
        if bits not in (16, 32, 64):
            raise ValueError(f"bits must be 16, 32 or 64, got {bits}")
        return self._emit(BPF_ALU | BPF_END | BPF_TO_BE, dst, imm=bits)

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


def redirect_by_queue_program(map_fd: int, *, fail_action: int = XDP_PASS) -> bytes:
    """``return bpf_redirect_map(&map, ctx->rx_queue_index, fail_action)``: libxdp's
    default AF_XDP program, each RX queue's frames to that queue's socket in an XSKMAP."""
    asm = Asm().ldx(BPF_W, R2, R1, XDP_MD_RX_QUEUE_INDEX).ld_map_fd(R1, map_fd)
    return asm.mov_imm(R3, fail_action).call(HELPER_REDIRECT_MAP).exit().assemble()


def _count_into(asm: Asm, counter_fd: int, skip: str) -> Asm:
    """``counter[0] += 1`` on this CPU's slot of a per-CPU u64 array; ``skip`` if no slot.

    Leaves the count before this frame in r1.  A per-CPU array needs no atomics: XDP on
    one CPU is never preempted by itself.  Clobbers r0-r5.
    """
    asm.st_imm(BPF_W, R10, -4, 0)  # u32 key = 0 on the stack
    asm.ld_map_fd(R1, counter_fd).mov_reg(R2, R10).alu_imm(BPF_ADD, R2, -4)
    asm.call(HELPER_MAP_LOOKUP_ELEM).jmp_imm(BPF_JEQ, R0, 0, to=skip)
    asm.ldx(BPF_DW, R1, R0, 0).mov_reg(R2, R1).alu_imm(BPF_ADD, R2, 1)
    return asm.stx(BPF_DW, R0, R2, 0)


def count_program(counter_fd: int, verdict: int = XDP_PASS) -> bytes:
    """Count every frame in ``counter[0]`` (a per-CPU u64 array), then ``return verdict``:
    a receiver whose count a test reads."""
    if verdict not in (XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX):
        raise ValueError(f"verdict must be XDP_ABORTED, DROP, PASS or TX, got {verdict}")
    asm = _count_into(Asm(), counter_fd, skip="out")
    return asm.label("out").mov_imm(R0, verdict).exit().assemble()


def frame_table_program(counter_fd: int, table_fd: int, entries: int, max_len: int) -> bytes:
    """Rewrite each frame into the next of ``entries`` frames of a table, then XDP_TX.

    Frame n (``counter[0]``, per CPU) becomes table entry ``n % entries``: an array map
    whose value is ``u32 length, u32 pad, bytes[max_len]``.  The frame's length is set
    with ``bpf_xdp_adjust_tail`` (to the entry's, from what the frame has now: a live
    test run's page may come back shrunk), then the bytes are written with
    ``bpf_xdp_store_bytes``.  A frame that cannot be rewritten is aborted, never sent
    as something else.  The bounds check on the length is what lets the verifier accept
    a variable-size store.
    """
    if not 1 <= entries < 2**31 or not 1 <= max_len < 2**16:
        raise ValueError(f"entries and max_len out of range: {entries}, {max_len}")
    asm = Asm().mov_reg(R6, R1)  # ctx, kept across calls
    _count_into(asm, counter_fd, skip="abort")
    asm.mov_reg(R7, R1).alu_imm(BPF_MOD, R7, entries)  # this frame's entry
    asm.stx(BPF_W, R10, R7, -8)
    asm.ld_map_fd(R1, table_fd).mov_reg(R2, R10).alu_imm(BPF_ADD, R2, -8)
    asm.call(HELPER_MAP_LOOKUP_ELEM).jmp_imm(BPF_JEQ, R0, 0, to="abort")
    asm.mov_reg(R7, R0).ldx(BPF_W, R8, R7, 0)  # r7 = entry, r8 = its length
    asm.jmp_imm(BPF_JGT, R8, max_len, to="abort").jmp_imm(BPF_JEQ, R8, 0, to="abort")
    asm.mov_reg(R1, R6).call(HELPER_XDP_GET_BUFF_LEN)
    asm.mov_reg(R2, R8).alu_reg(BPF_SUB, R2, R0)  # delta = wanted - current length
    asm.jmp_imm(BPF_JEQ, R2, 0, to="store")
    asm.mov_reg(R1, R6).call(HELPER_XDP_ADJUST_TAIL).jmp_imm(BPF_JNE, R0, 0, to="abort")
    asm.label("store").mov_reg(R1, R6).mov_imm(R2, 0).mov_reg(R3, R7).alu_imm(BPF_ADD, R3, 8)
    asm.mov_reg(R4, R8).call(HELPER_XDP_STORE_BYTES).jmp_imm(BPF_JNE, R0, 0, to="abort")
    asm.mov_imm(R0, XDP_TX).exit()
    return asm.label("abort").mov_imm(R0, XDP_ABORTED).exit().assemble()
