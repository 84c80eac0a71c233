"""Our steering programs in eBPF: the eight ``xdp-bench redirect-cpu`` modes for the kernel.

``cpumap.programs.steering`` runs the modes in Python over our engine's frames; this module
assembles the same decisions as XDP programs (:mod:`cpumap.kernel.asm`) that redirect into a
real ``BPF_MAP_TYPE_CPUMAP`` with ``bpf_redirect_map``: a program a test can run with
``BPF_PROG_TEST_RUN`` beside the Python form, or attach to an interface's XDP hook.

Theory of operation
-------------------
A :class:`SteeringSpec` carries what the Python form is given: the mode, the CPU list (the
sample's ``cpus_available``), and the ``l4-proto``/``l4-filter`` options, validated with the
Python form's words.  :func:`steering_program` compiles it into one program:

* **The CPU list is compiled in.**  Every index's outcome -- redirect to ``cpus[i]``, or
  ``XDP_ABORTED`` when the list is empty or the CPU is not a key of the map (the sample's
  sentinel) -- is decided at build time, and a frame's index picks it through a chain of
  compares.  No table map, so no torn read of a table being rewritten: a new list is a new
  program, attached anew.
* **Parsing is the Python form's, step for step** (``cpumap.programs.xdp_parse``): Ethernet and
  at most two 802.1Q/802.1ad tags, a frame shorter than 14 bytes, with an 802.3 length, or cut
  inside a tag is skipped (``XDP_PASS``); the IPv4 protocol when its 20 bytes are there, the
  IPv6 next header when its 40 are (extension headers are not walked), else 0; ports only for
  TCP/UDP behind an IPv4 header of IHL >= 5 that is no fragment, or an IPv6 header, when the
  whole transport header (8 / 20 bytes) is there.  Every packet read is preceded by the bounds
  check the verifier needs, which is also the length check the Python form makes.
* **``l4-hash``** is xdp-tools' hash, as the Python form computes it: the u32 sum of the
  address words loaded in host order (little-endian here, as the sample's BPF loads them),
  then SuperFastHash of those 4 bytes seeded with :data:`INITVAL` + protocol, in 32-bit ALU
  instructions (u32 wrap-around, as C's).  Index = hash % count.
* **``round-robin``** keeps its position in a per-CPU slot (the sample's per-CPU array: XDP on
  one CPU never preempts itself, so no atomics); ``>= count`` restarts at 0 as ours does.
* **Counting**: every frame ends as exactly one counted outcome in :class:`SteeringCounters`, a
  per-CPU u64 array: slot ``key`` for a redirect ``bpf_redirect_map`` accepted, slot
  ``max_entries + verdict`` for every other verdict (a refused redirect included: the helper
  returns the fallback verdict, ``fail_action``).  Slot ``LAST`` holds the key of the last
  redirect attempted on that CPU, so a test run can read which CPU a frame was steered to.

Where the kernel's helpers make the two forms differ (a redirect to an empty entry, frames
the kernel never shows a program) is in ``docs/kernel-differences.md``, section 6, pinned by
``tests/kernel/test_steering_bpf.py``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from ..abi import (
    ETH_HLEN,
    ETH_P_802_3_MIN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    XDP_ABORTED,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
)
from ..closing import Closing
from ..cpus import possible_cpus
from .asm import (
    BPF_ADD,
    BPF_AND,
    BPF_B,
    BPF_DW,
    BPF_H,
    BPF_JEQ,
    BPF_JGT,
    BPF_JLT,
    BPF_JNE,
    BPF_LSH,
    BPF_MOD,
    BPF_RSH,
    BPF_W,
    BPF_XOR,
    HELPER_MAP_LOOKUP_ELEM,
    HELPER_REDIRECT_MAP,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
    XDP_MD_DATA,
    XDP_MD_DATA_END,
    Asm,
    load_xdp,
)
from .bpf import Cmd, KernelArrayMap, KernelCpuMap, KernelProgram, MapElemAttr, bpf

__all__ = [
    "INITVAL",
    "MAX_DROP_PORTS",
    "MAX_TABLE",
    "STEERING_MODES",
    "SteeringCounters",
    "SteeringCounts",
    "SteeringSpec",
    "load_steering",
    "percpu_values",
    "steering_program",
]

# The eight modes of ``xdp-bench redirect-cpu -p MODE``, as cpumap.programs.steering.MODES.
STEERING_MODES: Final = (
    "no-touch",
    "touch",
    "round-robin",
    "l4-proto",
    "l4-filter",
    "l4-hash",
    "l4-sport",
    "l4-dport",
)
INITVAL: Final = 15485863  # the sample's hash seed, plus the protocol (== xdp_parse.INITVAL)
# A chain of compares per CPU-list index and per drop port: bounded so that a program stays
# small and quick to verify (the kernel's NR_CPUS here is 256).
MAX_TABLE: Final = 256
MAX_DROP_PORTS: Final = 64

_PROTO_INDEX: Final = {IPPROTO_TCP: 0, IPPROTO_UDP: 1, IPPROTO_ICMP: 2, IPPROTO_ICMPV6: 2}
_PROTO_OPTIONS: Final = ("proto_index", "default_index", "non_ip_index", "strict_index")
_OPTIONS: Final[dict[str, tuple[str, ...]]] = {
    "l4-proto": _PROTO_OPTIONS,
    "l4-filter": (*_PROTO_OPTIONS, "drop_ports", "filter_ipv6"),
}
_MAX_VERDICT: Final = XDP_TX  # bpf_redirect_map's fallback is one of 0..XDP_TX


def _check_index(index: object, what: str) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{what} must be ints >= 0, not {index!r}")
    return index


@dataclass(frozen=True, slots=True)
class SteeringSpec:
    """What a mode is given, as the Python form takes it (make one with :meth:`of`).

    ``cpus``: the CPU list (duplicates weight a CPU; may be empty); the ``l4-proto`` and
    ``l4-filter`` options as ``L4Proto``/``L4Filter`` take them; the other modes take none.
    """

    mode: str
    cpus: tuple[int, ...]
    proto_index: tuple[tuple[int, int], ...] = tuple(sorted(_PROTO_INDEX.items()))
    default_index: int = 0
    non_ip_index: int = 0
    strict_index: bool = False
    drop_ports: frozenset[int] = field(default=frozenset({9}))
    filter_ipv6: bool = True

    @classmethod
    def of(cls, mode: str, cpus: Iterable[int], **options: object) -> SteeringSpec:
        """The spec of ``mode`` over ``cpus``; ``ValueError`` for a bad mode or value (the
        Python form's words), ``TypeError`` for an option the mode does not take."""
        if mode not in STEERING_MODES:
            choices = ", ".join(STEERING_MODES)
            raise ValueError(f"unknown steering mode {mode!r}; choose one of: {choices}")
        unknown = sorted(set(options) - set(_OPTIONS.get(mode, ())))
        if unknown:
            raise TypeError(f"mode {mode!r} takes no option {', '.join(unknown)}")
        table = tuple(int(c) for c in cpus)
        if len(table) > MAX_TABLE:
            raise ValueError(f"a CPU list of {len(table)} is over the BPF form's {MAX_TABLE}")
        if any(c < 0 for c in table):
            raise ValueError(f"CPUs must be >= 0, got {list(table)}")
        kw: dict[str, object] = {}
        if "proto_index" in options and options["proto_index"] is not None:
            kw["proto_index"] = _proto_index(options["proto_index"])  # type: ignore[arg-type]
        for name in ("default_index", "non_ip_index"):
            if name in options:
                kw[name] = _check_index(options[name], name)
        for name in ("strict_index", "filter_ipv6"):
            if name in options:
                kw[name] = bool(options[name])
        if "drop_ports" in options:
            kw["drop_ports"] = _drop_ports(options["drop_ports"])  # type: ignore[arg-type]
        return cls(mode, table, **kw)  # type: ignore[arg-type]


def _proto_index(mapping: Mapping[int, int]) -> tuple[tuple[int, int], ...]:
    for proto, index in mapping.items():
        if not 0 <= proto <= 255:
            raise ValueError(f"IP protocol {proto} is not in 0..255")
        _check_index(index, "proto_index values")
    return tuple(sorted(mapping.items()))


def _drop_ports(ports: Iterable[int]) -> frozenset[int]:
    out = frozenset(int(p) for p in ports)
    for p in out:
        if not 1 <= p <= 0xFFFF:
            raise ValueError(f"drop port {p} is not in 1..65535")
    if len(out) > MAX_DROP_PORTS:
        raise ValueError(f"{len(out)} drop ports are over the BPF form's {MAX_DROP_PORTS}")
    return out


# --- the counters ---------------------------------------------------------------------------


def percpu_values(counters: KernelArrayMap, key: int) -> dict[int, int]:
    """Entry ``key`` of a per-CPU u64 array on every possible CPU: ``{cpu: value}`` (one
    ``bpf(2)`` lookup; the kernel copies one 8-byte value per possible CPU, in CPU order)."""
    if not counters.percpu:
        raise ValueError("percpu_values reads a per-CPU array")
    cpus = sorted(possible_cpus())
    k = ctypes.c_uint32(key)
    vals = (ctypes.c_uint64 * len(cpus))()
    attr = MapElemAttr(map_fd=counters.fd, key=ctypes.addressof(k), value=ctypes.addressof(vals))
    bpf(Cmd.MAP_LOOKUP_ELEM, attr, f"key={key}")
    return dict(zip(cpus, vals, strict=True))


@dataclass(frozen=True, slots=True)
class SteeringCounts:
    """What a steering program counted, summed over the CPUs that ran it."""

    redirected: dict[int, int]
    """Frames ``bpf_redirect_map`` accepted, by cpumap key (keys with none left out)."""
    verdicts: dict[int, int]
    """Frames that ended with another verdict (``XDP_ABORTED``, ``XDP_DROP``, ``XDP_PASS``,
    ``XDP_TX``), by verdict, zeros left out; a refused redirect under its fallback verdict."""

    @property
    def frames(self) -> int:
        """Every frame the program ran on: each ends as exactly one counted outcome."""
        return sum(self.redirected.values()) + sum(self.verdicts.values())


class SteeringCounters(Closing):
    """A steering program's per-CPU u64 counters (a ``BPF_MAP_TYPE_PERCPU_ARRAY``).

    Slots: ``[0, max_entries)`` frames redirected to each key; ``max_entries + v`` frames that
    ended with verdict ``v`` (0..3); :attr:`position` the round-robin position; :attr:`last`
    the key of the last redirect attempted.  Each CPU writes only its own copy, so the
    programs need no atomics; a read sums the copies (or returns them, :meth:`per_cpu`).
    """

    def __init__(self, max_entries: int) -> None:
        if not 1 <= max_entries <= MAX_TABLE:
            raise ValueError(f"max_entries must be in 1..{MAX_TABLE}, got {max_entries}")
        self.max_entries: Final = max_entries
        self.position: Final = max_entries + _MAX_VERDICT + 1
        self.last: Final = self.position + 1
        self.map: Final = KernelArrayMap(self.last + 1, percpu=True, name="steer_counts")

    @property
    def fd(self) -> int:
        return self.map.fd

    def close(self) -> None:
        """Drop our fd (a loaded program keeps the map until it goes too).  Idempotent."""
        self.map.close()

    def per_cpu(self, slot: int) -> dict[int, int]:
        """Slot ``slot`` of every possible CPU: ``{cpu: value}`` (one ``bpf(2)`` lookup)."""
        if not 0 <= slot <= self.last:
            raise ValueError(f"slot must be in 0..{self.last}, got {slot}")
        return percpu_values(self.map, slot)

    def last_key(self, cpu: int) -> int:
        """The key of the last redirect a program attempted on ``cpu``."""
        return self.per_cpu(self.last)[cpu]

    def read(self) -> SteeringCounts:
        """Every outcome counted so far, summed over the CPUs (``max_entries + 4`` lookups)."""
        redirected = {k: sum(self.per_cpu(k).values()) for k in range(self.max_entries)}
        verdicts = {
            v: sum(self.per_cpu(self.max_entries + v).values()) for v in range(_MAX_VERDICT + 1)
        }
        return SteeringCounts(
            {k: n for k, n in redirected.items() if n}, {v: n for v, n in verdicts.items() if n}
        )

    def reset(self) -> None:
        """Zero every slot on every CPU (the round-robin position too)."""
        for slot in range(self.last + 1):
            self.map.update(slot, 0)


# --- the compiler ---------------------------------------------------------------------------

_V_LABEL: Final = {XDP_ABORTED: "v_aborted", XDP_DROP: "v_drop", XDP_PASS: "v_pass"}


class _Emitter:
    """Assembles one spec's program.  Register use: r6 ctx; r7 data, then the protocol, then
    the verdict; r8 data_end; r4 EtherType; r5 the L3 header (a packet pointer); r9 the
    frame's value (port, hash, index), then the key redirected to.

    Labels are only placed where something jumps (the verifier rejects unreachable code), so
    the verdict stubs and the redirect tail are emitted last, for the outcomes in use.
    """

    def __init__(self, spec: SteeringSpec, cpumap: KernelCpuMap, counters: SteeringCounters):
        self.spec = spec
        self.asm = Asm()
        self.cpumap = cpumap
        self.counters = counters
        self.max_entries = cpumap.max_entries
        self.used: set[int] = set()  # verdict stubs jumped to
        self.redirects = False
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    # -- outcomes -----------------------------------------------------------------------------
    def verdict(self, v: int) -> None:
        self.used.add(v)
        self.asm.ja(_V_LABEL[v])

    def cpu_at(self, index: int) -> int | None:
        """``cpus[index]`` (index < count), or None when it is no key of the map."""
        cpu = self.spec.cpus[index]
        return cpu if cpu < self.max_entries else None

    def outcome(self, cpu: int | None) -> None:
        """Redirect to ``cpu``, or ABORTED for None."""
        if cpu is None:
            self.verdict(XDP_ABORTED)
            return
        self.redirects = True
        self.asm.mov_imm(R9, cpu).ja("redirect")

    def finish(self, index: int) -> None:
        """``L4Proto._finish``: an index past the list wraps, unless ``strict_index``."""
        count = len(self.spec.cpus)
        if index >= count:
            if self.spec.strict_index or count == 0:
                self.verdict(XDP_ABORTED)
                return
            index %= count
        self.outcome(self.cpu_at(index))

    def table(self, reg: int) -> None:
        """Redirect to ``cpus[reg]`` for ``reg`` in ``[0, count)``: a chain of compares."""
        count = len(self.spec.cpus)
        if count == 0:
            self.verdict(XDP_ABORTED)
            return
        outcomes = [self.cpu_at(i) for i in range(count)]
        if len(set(outcomes)) == 1:  # one outcome whatever the index: no compare
            self.outcome(outcomes[0])
            return
        for i, cpu in enumerate(outcomes[:-1]):
            nxt = self.fresh("t")
            self.asm.jmp_imm(BPF_JNE, reg, i, to=nxt)
            self.outcome(cpu)
            self.asm.label(nxt)
        self.outcome(outcomes[-1])

    # -- parsing --------------------------------------------------------------------------------
    def load_bounds(self) -> None:
        self.asm.ldx(BPF_W, R7, R6, XDP_MD_DATA).ldx(BPF_W, R8, R6, XDP_MD_DATA_END)

    def need(self, ptr: int, size: int, short: str) -> None:
        """Go to ``short`` unless ``size`` bytes from packet pointer ``ptr`` are there."""
        self.asm.mov_reg(R1, ptr).alu_imm(BPF_ADD, R1, size).jmp_reg(BPF_JGT, R1, R8, to=short)

    def be16(self, dst: int, ptr: int, off: int) -> None:
        self.asm.ldx(BPF_H, dst, ptr, off).to_be(dst, 16)

    def parse_eth(self) -> None:
        """``parse_eth``: r4 = EtherType after at most two tags, r5 = L3; skipped: PASS."""
        asm = self.asm
        self.load_bounds()
        self.used.add(XDP_PASS)
        self.need(R7, ETH_HLEN, "v_pass")
        self.be16(R4, R7, 12)
        asm.jmp_imm(BPF_JLT, R4, ETH_P_802_3_MIN, to="v_pass")
        asm.mov_reg(R5, R7).alu_imm(BPF_ADD, R5, ETH_HLEN)
        for _ in range(2):
            tag, parsed = self.fresh("tag"), "parsed"
            asm.jmp_imm(BPF_JEQ, R4, ETH_P_8021Q, to=tag)
            asm.jmp_imm(BPF_JNE, R4, ETH_P_8021AD, to=parsed)
            asm.label(tag)
            self.need(R5, 4, "v_pass")
            self.be16(R4, R5, 2)
            asm.alu_imm(BPF_ADD, R5, 4)
        asm.label("parsed")

    def ip_proto(self, non_ip: str) -> None:
        """r7 = the IP protocol (0 for a cut header); ``non_ip`` when not IP."""
        asm, v4, v6, done = self.asm, self.fresh("p4_"), self.fresh("p6_"), self.fresh("pd")
        asm.jmp_imm(BPF_JEQ, R4, ETH_P_IP, to=v4).jmp_imm(BPF_JEQ, R4, ETH_P_IPV6, to=v6)
        asm.ja(non_ip)
        for label, size, off in ((v4, 20, 9), (v6, 40, 6)):
            asm.label(label).mov_imm(R7, 0)
            self.need(R5, size, done)
            asm.ldx(BPF_B, R7, R5, off).ja(done)
        asm.label(done)

    def port(self, which: int) -> None:
        """r9 = ``ports(...)[which]``: 0 when there is none.  Clobbers r0-r3."""
        asm, v4, v6, l4 = self.asm, self.fresh("q4_"), self.fresh("q6_"), self.fresh("ql")
        udp, tcp, read, done = (
            self.fresh("qu"),
            self.fresh("qt"),
            self.fresh("qr"),
            self.fresh("qd"),
        )
        asm.mov_imm(R9, 0)
        asm.jmp_imm(BPF_JEQ, R4, ETH_P_IP, to=v4).jmp_imm(BPF_JEQ, R4, ETH_P_IPV6, to=v6)
        asm.ja(done)
        asm.label(v4)
        self.need(R5, 20, done)
        asm.ldx(BPF_B, R1, R5, 0).alu_imm(BPF_AND, R1, 0x0F).alu_imm(BPF_LSH, R1, 2)  # IHL
        asm.jmp_imm(BPF_JLT, R1, 20, to=done)
        # Any fragment (MF set, or an offset) has no ports: every fragment of a datagram alike.
        asm.ldx(BPF_B, R2, R5, 6).alu_imm(BPF_AND, R2, 0x3F).jmp_imm(BPF_JNE, R2, 0, to=done)
        asm.ldx(BPF_B, R2, R5, 7).jmp_imm(BPF_JNE, R2, 0, to=done)
        asm.ldx(BPF_B, R2, R5, 9).ja(l4)
        asm.label(v6)
        self.need(R5, 40, done)
        asm.ldx(BPF_B, R2, R5, 6).mov_imm(R1, 40)
        asm.label(l4).mov_reg(R3, R5).alu_reg(BPF_ADD, R3, R1)  # r3 = L4 (IHL is 20..60)
        asm.jmp_imm(BPF_JEQ, R2, IPPROTO_UDP, to=udp).jmp_imm(BPF_JEQ, R2, IPPROTO_TCP, to=tcp)
        asm.ja(done)
        for label, size in ((udp, 8), (tcp, 20)):  # the whole transport header, as the sample
            asm.label(label)
            asm.mov_reg(R0, R3).alu_imm(BPF_ADD, R0, size).jmp_reg(BPF_JGT, R0, R8, to=done)
            asm.ja(read)
        asm.label(read)
        self.be16(R9, R3, 2 * which)
        asm.label(done)

    def ip_pair_hash(self) -> None:
        """r9 = ``ip_pair_hash``: SuperFastHash of the address words' u32 sum, seeded with
        INITVAL + protocol; 0 for non-IP or a cut header.  Clobbers r1-r3."""
        asm, v4, v6 = self.asm, self.fresh("h4_"), self.fresh("h6_")
        mix, done = self.fresh("hm"), self.fresh("hd")
        asm.mov_imm(R9, 0)
        asm.jmp_imm(BPF_JEQ, R4, ETH_P_IP, to=v4).jmp_imm(BPF_JEQ, R4, ETH_P_IPV6, to=v6)
        asm.ja(done)
        for label, size, first, words, proto in ((v4, 20, 12, 2, 9), (v6, 40, 8, 8, 6)):
            asm.label(label)
            self.need(R5, size, done)
            asm.ldx(BPF_W, R1, R5, first)  # host order, as the sample's BPF loads them
            for i in range(1, words):
                asm.ldx(BPF_W, R2, R5, first + 4 * i).alu32_reg(BPF_ADD, R1, R2)
            asm.ldx(BPF_B, R3, R5, proto).ja(mix)
        asm.label(mix)
        _superfasthash4(asm)
        asm.mov_reg(R9, R3)
        asm.label(done)

    # -- the modes --------------------------------------------------------------------------------
    def by_value(self, value: str) -> None:
        """``_ByValue``: skipped PASS, then ``cpus[value % count]``."""
        self.parse_eth()
        count = len(self.spec.cpus)
        if count == 0:
            self.verdict(XDP_ABORTED)
            return
        if count == 1:  # value % 1 == 0: the value cannot change the CPU
            self.outcome(self.cpu_at(0))
            return
        if value == "hash":
            self.ip_pair_hash()
        else:
            self.port(0 if value == "sport" else 1)
        self.asm.alu_imm(BPF_MOD, R9, count)
        self.table(R9)

    def by_proto(self) -> None:
        """``l4-proto`` and ``l4-filter``."""
        spec, asm = self.spec, self.asm
        self.parse_eth()
        non_ip, classify = self.fresh("nonip"), self.fresh("cls")
        self.ip_proto(non_ip)
        if spec.mode == "l4-filter":
            asm.jmp_imm(BPF_JNE, R7, IPPROTO_UDP, to=classify)
            if not spec.filter_ipv6:
                asm.jmp_imm(BPF_JNE, R4, ETH_P_IP, to=classify)
            self.port(1)
            for p in sorted(spec.drop_ports):
                self.used.add(XDP_DROP)
                asm.jmp_imm(BPF_JEQ, R9, p, to="v_drop")
        asm.label(classify)
        for proto, index in spec.proto_index:
            nxt = self.fresh("pr")
            asm.jmp_imm(BPF_JNE, R7, proto, to=nxt)
            self.finish(index)
            asm.label(nxt)
        self.finish(spec.default_index)
        asm.label(non_ip)
        self.finish(spec.non_ip_index)

    def round_robin(self) -> None:
        count = len(self.spec.cpus)
        if count == 0:
            self.verdict(XDP_ABORTED)
            return
        asm = self.asm
        self.slot_ptr(self.counters.position, missing="v_aborted")
        self.used.add(XDP_ABORTED)
        asm.ldx(BPF_DW, R9, R0, 0).jmp_imm(BPF_JLT, R9, count, to="rr_in").mov_imm(R9, 0)
        asm.label("rr_in").mov_reg(R1, R9).alu_imm(BPF_ADD, R1, 1)
        asm.jmp_imm(BPF_JLT, R1, count, to="rr_store").mov_imm(R1, 0)
        asm.label("rr_store").stx(BPF_DW, R0, R1, 0)
        self.table(R9)

    def touch(self) -> None:
        self.load_bounds()
        self.used.add(XDP_ABORTED)
        self.need(R7, ETH_HLEN, "v_aborted")
        self.be16(R4, R7, 12)
        self.used.add(XDP_DROP)
        self.asm.jmp_imm(BPF_JLT, R4, ETH_P_802_3_MIN, to="v_drop")
        self.outcome(self.cpu_at(0) if self.spec.cpus else None)

    # -- the tail --------------------------------------------------------------------------------
    def slot_ptr(self, slot: int | None, missing: str) -> None:
        """r0 = this CPU's counter ``slot`` (None: the slot number in r1); else ``missing``."""
        asm = self.asm
        if slot is None:
            asm.stx(BPF_W, R10, R1, -4)
        else:
            asm.st_imm(BPF_W, R10, -4, slot)
        asm.ld_map_fd(R1, self.counters.fd).mov_reg(R2, R10).alu_imm(BPF_ADD, R2, -4)
        asm.call(HELPER_MAP_LOOKUP_ELEM).jmp_imm(BPF_JEQ, R0, 0, to=missing)

    def tail(self, fail_action: int) -> None:
        """The redirect (key in r9) and the verdict stubs, each counted, then ``return r7``."""
        asm = self.asm
        if self.redirects:
            asm.label("redirect")
            self.slot_ptr(self.counters.last, missing="do_redirect")
            asm.stx(BPF_DW, R0, R9, 0)
            asm.label("do_redirect").ld_map_fd(R1, self.cpumap.fd).mov_reg(R2, R9)
            asm.mov_imm(R3, fail_action).call(HELPER_REDIRECT_MAP).mov_reg(R7, R0)
            asm.jmp_imm(BPF_JNE, R7, XDP_REDIRECT, to="counted_verdict")
            asm.mov_reg(R1, R9).ja("bump")
        for v in sorted(self.used):
            asm.label(_V_LABEL[v]).mov_imm(R7, v).ja("counted_verdict")
        asm.label("counted_verdict").mov_reg(R1, R7).alu_imm(BPF_ADD, R1, self.max_entries)
        asm.label("bump")
        self.slot_ptr(None, missing="out")
        asm.ldx(BPF_DW, R1, R0, 0).alu_imm(BPF_ADD, R1, 1).stx(BPF_DW, R0, R1, 0)
        asm.label("out").mov_reg(R0, R7).exit()

    def program(self, fail_action: int) -> bytes:
        mode = self.spec.mode
        self.asm.mov_reg(R6, R1)
        if mode == "no-touch":
            self.outcome(self.cpu_at(0) if self.spec.cpus else None)
        elif mode == "touch":
            self.touch()
        elif mode == "round-robin":
            self.round_robin()
        elif mode in ("l4-proto", "l4-filter"):
            self.by_proto()
        else:
            self.by_value(mode.removeprefix("l4-"))
        self.tail(fail_action)
        return self.asm.assemble()


# SuperFastHash after its main step: (shift right and add, or shift left and xor; by how
# much) -- xdp_parse._SFH_TAIL, in u32 arithmetic.
_SFH_TAIL: Final = (
    (False, 11),
    (True, 3),
    (False, 5),
    (True, 4),
    (False, 17),
    (True, 25),
    (False, 6),
)


def _superfasthash4(asm: Asm) -> None:
    """r3 = SuperFastHash(&r1, 4, INITVAL + r3) on a little-endian host: r1 the u32 value,
    r3 the protocol.  Every step in 32-bit ALU instructions (C's u32 wrap-around)."""
    asm.alu32_imm(BPF_ADD, R3, INITVAL)  # h = initval
    asm.mov_reg(R2, R1).alu32_imm(BPF_AND, R2, 0xFFFF).alu32_reg(BPF_ADD, R3, R2)  # h += lo16
    asm.alu32_imm(BPF_RSH, R1, 16).alu32_imm(BPF_LSH, R1, 11).alu32_reg(BPF_XOR, R1, R3)  # tmp
    asm.alu32_imm(BPF_LSH, R3, 16).alu32_reg(BPF_XOR, R3, R1)  # h = (h << 16) ^ tmp
    for left, k in _SFH_TAIL:
        asm.mov_reg(R1, R3).alu32_imm(BPF_LSH if left else BPF_RSH, R1, k)
        asm.alu32_reg(BPF_XOR if left else BPF_ADD, R3, R1)


def steering_program(
    spec: SteeringSpec,
    cpumap: KernelCpuMap,
    counters: SteeringCounters,
    *,
    fail_action: int = XDP_ABORTED,
) -> bytes:
    """The XDP program of ``spec``, redirecting into ``cpumap`` and counting into ``counters``.

    ``fail_action`` is ``bpf_redirect_map``'s flags: the verdict when the chosen entry is
    empty (``XDP_ABORTED``, 0, as the Python form's ``redirect_map`` is called).
    """
    if counters.max_entries != cpumap.max_entries:
        raise ValueError(
            f"counters are for {counters.max_entries} keys, the cpumap has {cpumap.max_entries}"
        )
    if not XDP_ABORTED <= fail_action <= XDP_TX:
        raise ValueError(f"fail_action must be an XDP action 0..3, got {fail_action}")
    return _Emitter(spec, cpumap, counters).program(fail_action)


def load_steering(
    spec: SteeringSpec,
    cpumap: KernelCpuMap,
    counters: SteeringCounters,
    *,
    fail_action: int = XDP_ABORTED,
) -> KernelProgram:
    """:func:`steering_program`, loaded (the verifier's log in the ``OSError`` if refused)."""
    insns = steering_program(spec, cpumap, counters, fail_action=fail_action)
    return load_xdp(insns, name=f"steer_{spec.mode.replace('-', '_')}"[:15])
