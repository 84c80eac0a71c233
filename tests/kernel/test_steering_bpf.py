"""Our steering programs in eBPF (``cpumap.kernel.steering``) against their Python form.

For every mode, CPU list and option, the same frames go through the Python form
(``cpumap.programs.steering``, per frame, as the engine runs it) and through the BPF program
(``BPF_PROG_TEST_RUN`` on each frame, redirecting into a real kernel cpumap), and every frame
must get the same outcome: the same verdict, and for a redirect the same key.  The key the
program chose is read back from the counter map's ``last`` slot (reset before each frame, so
a stale value cannot pass), and at the end the program's own counters must equal the tally
of the outcomes seen: every frame counted once.

Traffic: crafted frames (VLAN and QinQ, IPv4 options and fragments, IPv6 extension headers,
802.3, ARP, port 9), every truncation of a few of them, the generator's mixed traffic,
every Ethernet frame of the third-party captures, and random frames (hypothesis).

The kernel cpumap has 16 keys, entries only on the possible CPUs; CPU lists name keys with
no entry and keys past the map too.  Where the kernel's helpers make the two forms differ,
``docs/kernel-differences.md`` section 6 says so and a ``test_documented_k*`` test pins it.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpumap import CpuMap
from cpumap.abi import LINKTYPE_ETHERNET, LINKTYPE_RAW
from cpumap.capture import CaptureError, open_capture
from cpumap.generator import Generator
from cpumap.kernel import (
    XDP_ABORTED,
    XDP_PASS,
    XDP_REDIRECT,
    KernelCpuMap,
    KernelProgram,
    bpf_unavailable_reason,
    possible_cpus,
)
from cpumap.kernel.steering import (
    INITVAL,
    STEERING_MODES,
    SteeringCounters,
    SteeringSpec,
    load_steering,
)
from cpumap.programs import xdp_parse
from cpumap.programs.cpu_table import CpuTable
from cpumap.programs.steering import MODES, make_program
from tests.kernel.python_forms import Outcome, PythonForm

_BPF_REASON = bpf_unavailable_reason()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_BPF_REASON is not None, reason=_BPF_REASON or ""),
]

MAX_ENTRIES = 16
QSIZE = 64
LINEAR = 3520  # bytes of a test-run frame the program sees (4096 - 256 headroom - 320 tail)
CAPTURES = Path(
    os.environ.get("CPUMAP_CAPTURES")
    or Path(__file__).resolve().parents[2].parent / "shared" / "captures"
)
POPULATED = sorted(c for c in possible_cpus() if c < MAX_ENTRIES)
MAC = bytes.fromhex("020000000002020000000001")


# -- frames -----------------------------------------------------------------------------------
def eth(ethertype: int, *tpids: int) -> bytes:
    return MAC + b"".join(struct.pack("!HH", t, 7) for t in tpids) + struct.pack("!H", ethertype)


def ipv4(proto: int, l4: bytes, *, src: int = 0x0A000001, ihl: int = 5, frag: int = 0) -> bytes:
    opts = bytes(max(0, ihl * 4 - 20))
    total = 20 + len(opts) + len(l4)
    hdr = struct.pack("!BBHHHBBHII", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0, src, 0x0A000002)
    return hdr + opts + l4


def ipv6(nexthdr: int, l4: bytes, *, src: bytes = bytes(15) + b"\1") -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(l4), nexthdr, 64) + src + bytes(15) + b"\2" + l4


def udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8, 0) + b"payload!"


def tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIHHHH", sport, dport, 1, 0, 0x5010, 1024, 0, 0)


def ext(nexthdr: int, length: int = 8) -> bytes:
    """An IPv6 extension header of ``length`` bytes (hop-by-hop, routing, fragment...)."""
    return bytes([nexthdr, length // 8 - 1]) + bytes(length - 2)


def crafted() -> list[bytes]:
    """Frames for every branch of the parsers."""
    out = []
    for tags in ((), (0x8100,), (0x88A8, 0x8100), (0x8100, 0x8100, 0x8100), (0x9100,)):
        out += [
            eth(0x0800, *tags) + ipv4(17, udp(1000 + len(tags), 9)),
            eth(0x0800, *tags) + ipv4(6, tcp(40000, 443)),
            eth(0x0800, *tags) + ipv4(1, bytes(8)),
            eth(0x86DD, *tags) + ipv6(17, udp(5353, 9)),
            eth(0x86DD, *tags) + ipv6(6, tcp(22, 51000)),
            eth(0x86DD, *tags) + ipv6(58, bytes(8)),
            eth(0x0806, *tags) + bytes(28),
        ]
    for ihl in (0, 4, 5, 6, 15):
        out.append(eth(0x0800) + ipv4(17, udp(77, 9), ihl=ihl))
    for frag in (0x2000, 0x0001, 0x2010, 0x4000, 0x8000):  # MF, offsets, DF, reserved bit
        out.append(eth(0x0800) + ipv4(17, udp(78, 9), frag=frag))
    for hdrs in ((0,), (44,), (43,), (60,), (0, 43, 44), (59,)):
        chain = (*hdrs, 17)
        body = b"".join(ext(chain[i + 1], 16 if h == 43 else 8) for i, h in enumerate(hdrs))
        out.append(eth(0x86DD) + ipv6(hdrs[0], body + udp(4000, 53)))
    out += [
        eth(0x05DC) + bytes(50),  # an 802.3 length
        eth(0x0600) + bytes(50),  # the first EtherType
        eth(0x88CC) + bytes(50),  # LLDP
        eth(0x0800) + ipv4(132, bytes(12)),  # SCTP
        eth(0x0800) + ipv4(17, udp(9, 9), src=0xFFFFFFFF),
    ]
    return out


def truncations() -> list[bytes]:
    """Every cut from 14 bytes on of frames whose headers end at different places."""
    bases = [
        eth(0x0800, 0x88A8, 0x8100) + ipv4(6, tcp(1234, 80), ihl=7),
        eth(0x86DD, 0x8100) + ipv6(17, udp(4444, 9)),
        eth(0x0800) + ipv4(17, udp(53, 9)),
    ]
    return [b[:n] for b in bases for n in range(14, len(b) + 1)]


def generated(count: int = 384) -> list[bytes]:
    gen = Generator(
        flows=48, sizes=(64, 90, 300), vlan=(None, 100), count=count, undersize="clamp", seed=7
    )
    return [bytes(p.data) for p in gen.packets()]


def captured() -> list[bytes]:
    """Every Ethernet frame of the third-party captures that our reader opens (skip_bad)."""
    frames: list[bytes] = []
    skip = ("_oracle_tshark", "_expected_tcpdump")
    for path in sorted(p for p in CAPTURES.rglob("*") if p.is_file()):
        if path.suffix in (".txt", ".md", ".sh") or any(s in path.parts for s in skip):
            continue
        try:
            with open_capture(path, skip_bad=True) as reader:
                batch = reader.read_all()
        except (CaptureError, OSError, ValueError):
            continue  # a file the readers refuse: tests/capture covers those
        frames += [p.data for p in batch if p.linktype == LINKTYPE_ETHERNET and len(p.data) >= 14]
    return frames


# -- the two forms -----------------------------------------------------------------------------
class Forms(PythonForm):
    """A kernel cpumap with entries on the possible CPUs and its counters, beside the Python
    form's map (of the same size), pool and context."""

    def __init__(self) -> None:
        super().__init__(MAX_ENTRIES)
        self.kmap = KernelCpuMap(MAX_ENTRIES)
        for cpu in POPULATED:
            self.kmap.update(cpu, QSIZE)
        self.counters = SteeringCounters(MAX_ENTRIES)
        self.cpu = min(os.sched_getaffinity(0))

    def close(self) -> None:
        super().close()
        self.counters.close()
        self.kmap.close()

    def python(self, mode: str, cpus: Sequence[int], frames: Sequence[bytes], **options: Any):
        return self.decisions(mode, cpus, frames, **options)

    def kernel(self, prog: KernelProgram, frames: Sequence[bytes]) -> list[Outcome]:
        """The BPF form's outcome per frame: the test run's verdict, and the key it tried
        (``last``, reset to a sentinel before each frame)."""
        c = self.counters
        out = []
        for f in frames:
            c.map.update(c.last, 2**64 - 1)
            verdict = prog.test_run(f).retval
            key = c.last_key(self.cpu)
            out.append((verdict, -1 if key == 2**64 - 1 else key))
        return out

    def compare(self, mode: str, cpus: Sequence[int], frames: Sequence[bytes], **options: Any):
        """Both forms on ``frames``: equal outcomes, as K1 translates, and counters that add up."""
        frames = [f[:LINEAR] for f in frames]  # K3: longer frames show the program this much
        expected = [kernel_view(o) for o in self.python(mode, cpus, frames, **options)]
        spec = SteeringSpec.of(mode, cpus, **options)
        self.counters.reset()
        with load_steering(spec, self.kmap, self.counters) as prog, pinned(self.cpu):
            got = self.kernel(prog, frames)
        pairs = enumerate(zip(expected, got, strict=True))
        bad = [(i, frames[i].hex(), e, g) for i, (e, g) in pairs if e != g]
        assert not bad, f"{mode} {list(cpus)} {options}: {len(bad)} differ, first {bad[:3]}"
        counts = self.counters.read()
        tally = Counter(v for v, _ in got)
        assert counts.frames == len(frames)
        assert counts.redirected == dict(Counter(k for v, k in got if v == XDP_REDIRECT))
        assert counts.verdicts == {v: n for v, n in tally.items() if v != XDP_REDIRECT}
        return got


def kernel_view(outcome: Outcome) -> Outcome:
    """K1: a redirect to a key with no entry is the helper's fallback (ABORTED) in the kernel,
    the key still the one attempted; ours redirects and the enqueue fails later."""
    verdict, key = outcome
    if verdict == XDP_REDIRECT and key not in POPULATED:
        return XDP_ABORTED, key
    return outcome


@contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Run this thread on ``cpu`` only: a test run runs on the caller's CPU, and the program's
    per-CPU slots (``last``, the round-robin position) are that CPU's."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="module")
def forms() -> Iterator[Forms]:
    f = Forms()
    yield f
    f.close()


# -- the differential --------------------------------------------------------------------------
TABLES: tuple[tuple[int, ...], ...] = (
    (0, 1),
    (1,),
    (),
    (1, 0, 1),
    (0, 1, 2, 3, 5, 15, 16, 40),  # 2..15 have no entry (K1); 16, 40 are past the map
    (*range(MAX_ENTRIES), 1, 0, 7),  # 19 keys: hash % 19 shows in the key tried
)
OPTIONS: dict[str, tuple[dict[str, Any], ...]] = {
    "l4-proto": (
        {"strict_index": True},
        {"non_ip_index": 1, "default_index": 3},
        {"proto_index": {6: 5, 17: 0, 132: 2}},
    ),
    "l4-filter": (
        {"filter_ipv6": False},
        {"drop_ports": (9, 53, 4000, 443)},
        {"drop_ports": (), "strict_index": True},
    ),
}
SPECS = [(m, t, {}) for m in STEERING_MODES for t in TABLES] + [
    (m, TABLES[4], o) for m, opts in OPTIONS.items() for o in opts
]


def _id(spec: tuple[str, tuple[int, ...], dict[str, Any]]) -> str:
    mode, cpus, opts = spec
    return f"{mode}-{'_'.join(map(str, cpus)) or 'empty'}" + (f"-{sorted(opts)}" if opts else "")


def test_the_modes_are_the_python_forms() -> None:
    assert tuple(MODES) == STEERING_MODES
    assert INITVAL == xdp_parse.INITVAL


@pytest.mark.parametrize("spec", SPECS, ids=[_id(s) for s in SPECS])
def test_crafted_and_truncated_frames(forms: Forms, spec) -> None:
    mode, cpus, options = spec
    forms.compare(mode, cpus, crafted() + truncations(), **options)


@pytest.mark.parametrize("mode", STEERING_MODES)
def test_generator_mixed_traffic(forms: Forms, mode: str) -> None:
    got = forms.compare(mode, TABLES[5], generated())
    if mode in ("l4-hash", "l4-sport", "l4-dport", "round-robin"):
        assert len({k for _, k in got}) > 4  # really spread: the keys tried differ


@pytest.mark.skipif(not (CAPTURES / "MANIFEST.txt").is_file(), reason="no captures here")
@pytest.mark.parametrize("mode", STEERING_MODES)
def test_third_party_captures(forms: Forms, mode: str) -> None:
    frames = captured()
    assert len(frames) > 500
    forms.compare(mode, TABLES[5], frames)


@st.composite
def random_frame(draw: st.DrawFn) -> bytes:
    """A frame built from random headers (or random bytes), cut anywhere from 14 bytes on."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=14, max_size=120))
    tpids = draw(st.lists(st.sampled_from([0x8100, 0x88A8, 0x9100]), max_size=3))
    proto = draw(st.sampled_from([6, 17, 1, 58, 0, 44, 43, 132, draw(st.integers(0, 255))]))
    ports = (draw(st.sampled_from([9, 53, draw(st.integers(0, 65535))])), draw(st.integers(0, 9)))
    l4 = tcp(*ports) if proto == 6 else udp(*ports)
    if draw(st.booleans()):
        ihl = draw(st.sampled_from([5, 5, 6, 15, draw(st.integers(0, 15))]))
        frag = draw(st.sampled_from([0, 0, 0x2000, 0x4000, draw(st.integers(0, 0xFFFF))]))
        src = draw(st.integers(0, 2**32 - 1))
        frame = eth(0x0800, *tpids) + ipv4(proto, l4, src=src, ihl=ihl, frag=frag)
    else:
        frame = eth(0x86DD, *tpids) + ipv6(proto, l4, src=draw(st.binary(min_size=16, max_size=16)))
    return frame[: draw(st.integers(14, len(frame)))]


@st.composite
def mode_options(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A mode, and for ``l4-proto``/``l4-filter`` random options of the Python form."""
    mode = draw(st.sampled_from(STEERING_MODES))
    if mode not in OPTIONS:
        return mode, {}
    index = st.integers(0, 7)
    options: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "proto_index": st.dictionaries(st.sampled_from([0, 1, 6, 17, 44, 58]), index),
                "default_index": index,
                "non_ip_index": index,
                "strict_index": st.booleans(),
            },
        )
    )
    if mode == "l4-filter":
        ports = st.lists(st.sampled_from([9, 53, 443, 4000, 65535]) | st.integers(1, 9), max_size=4)
        options.update(draw(st.fixed_dictionaries({}, optional={"drop_ports": ports})))
        options.update(draw(st.fixed_dictionaries({}, optional={"filter_ipv6": st.booleans()})))
    return mode, options


@settings(max_examples=60, deadline=None)
@given(
    mode_options(),
    st.lists(st.integers(0, 20), max_size=6),
    st.lists(random_frame(), min_size=1, max_size=16),
)
def test_random_frames(forms: Forms, mode_options, cpus: list[int], frames: list[bytes]) -> None:
    mode, options = mode_options
    forms.compare(mode, cpus, frames, **options)


# -- where the kernel makes a difference (docs/kernel-differences.md, section 6) ----------------
def test_documented_k1_a_redirect_to_an_empty_entry_is_refused_at_the_helper(forms: Forms):
    frame = eth(0x0800) + ipv4(17, udp(1, 2))
    empty = max(POPULATED) + 1
    assert forms.python("no-touch", [empty], [frame]) == [(XDP_REDIRECT, empty)]
    assert forms.compare("no-touch", [empty], [frame]) == [(XDP_ABORTED, empty)]
    counts = forms.counters.read()
    assert counts.redirected == {} and counts.verdicts == {XDP_ABORTED: 1}
    # With another fallback in bpf_redirect_map's flags, that verdict instead.
    spec = SteeringSpec.of("no-touch", [empty])
    with load_steering(spec, forms.kmap, forms.counters, fail_action=XDP_PASS) as prog:
        assert prog.test_run(frame).retval == XDP_PASS


@pytest.mark.parametrize("size", [0, 1, 13])
def test_documented_k2_no_frame_shorter_than_ethernet_reaches_the_program(forms: Forms, size):
    frame = bytes(range(size))
    assert forms.python("touch", [0], [frame]) == [(XDP_ABORTED, -1)]
    assert forms.python("l4-hash", [0], [frame]) == [(XDP_PASS, -1)]
    spec = SteeringSpec.of("touch", [0])
    with load_steering(spec, forms.kmap, forms.counters) as prog, pytest.raises(OSError) as e:
        prog.test_run(frame)
    assert e.value.errno == 22  # EINVAL: the kernel refuses to run it


def test_documented_k3_a_long_frame_shows_the_program_its_linear_part(forms: Forms) -> None:
    frames = [eth(0x0800) + ipv4(17, udp(p, 53) + bytes(8950)) for p in range(40)]
    full = forms.python("l4-sport", TABLES[5], frames)
    assert full == forms.python("l4-sport", TABLES[5], [f[:LINEAR] for f in frames])
    spec = SteeringSpec.of("l4-sport", TABLES[5])
    with load_steering(spec, forms.kmap, forms.counters) as p, pinned(forms.cpu):
        assert forms.kernel(p, frames) == [kernel_view(o) for o in full]


def test_documented_k4_the_kernel_sees_every_frame_as_ethernet(forms: Forms) -> None:
    raw = ipv4(17, udp(1, 2))  # a LINKTYPE_RAW packet: its bytes 12-13 are the source address
    with CpuTable(1, [0]) as table:
        prog = make_program("l4-hash", forms.cmap, table, vectorized=False)
        forms.load([raw], LINKTYPE_RAW)
        forms.ctx.load(0, 0, 0, LINKTYPE_RAW)
        assert prog.frame(forms.ctx) == XDP_PASS  # ours skips a frame that is not Ethernet
    # The program reads 0x0a00 as an 802.3 length... and the bytes as Ethernet all the same.
    assert forms.compare("l4-hash", [0], [raw]) == forms.python("l4-hash", [0], [raw])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to run on")
def test_documented_k5_the_round_robin_position_is_per_cpu(forms: Forms) -> None:
    frame = eth(0x0800) + ipv4(17, udp(1, 2))
    a, b = sorted(os.sched_getaffinity(0))[:2]
    assert forms.python("round-robin", [0, 1], [frame, frame]) == [(XDP_REDIRECT, 0), (4, 1)]
    forms.counters.reset()
    spec = SteeringSpec.of("round-robin", [0, 1])
    with load_steering(spec, forms.kmap, forms.counters) as prog:
        with pinned(a):
            first = prog.test_run(frame).retval, forms.counters.last_key(a)
        with pinned(b):
            second = prog.test_run(frame).retval, forms.counters.last_key(b)
    assert first == second == (XDP_REDIRECT, 0)  # each CPU starts its own turn


# -- the spec's refusals ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "options", "error", "words"),
    [
        ("l4-bogus", {}, ValueError, "unknown steering mode 'l4-bogus'; choose one of"),
        ("l4-hash", {"drop_ports": (9,)}, TypeError, "takes no option drop_ports"),
        ("l4-filter", {"drop_ports": (0,)}, ValueError, "drop port 0 is not in 1..65535"),
        ("l4-proto", {"proto_index": {256: 0}}, ValueError, "IP protocol 256 is not in 0..255"),
        ("l4-proto", {"default_index": -1}, ValueError, "default_index must be ints >= 0"),
        ("l4-filter", {"drop_ports": range(1, 100)}, ValueError, "over the BPF form's 64"),
    ],
)
def test_spec_refusals(mode: str, options: dict[str, Any], error: type, words: str) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(")):
        SteeringSpec.of(mode, [0], **options)


def test_a_spec_refuses_what_the_python_form_refuses() -> None:
    for options in ({"drop_ports": (0,)}, {"proto_index": {300: 1}}, {"non_ip_index": True}):
        with pytest.raises(ValueError) as ours:
            SteeringSpec.of("l4-filter", [0], **options)
        with CpuMap(4) as cmap, pytest.raises(ValueError) as theirs:
            make_program("l4-filter", cmap, [0], **options)
        assert str(ours.value) == str(theirs.value)


def test_counters_and_map_must_agree(forms: Forms) -> None:
    with SteeringCounters(4) as small, pytest.raises(ValueError, match="counters are for 4 keys"):
        load_steering(SteeringSpec.of("touch", [0]), forms.kmap, small)
