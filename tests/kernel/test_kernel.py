"""The kernel's cpumap through cpumap.kernel: errnos, fds, programs, and real traffic.

Three tiers, each skipping with its reason where the machine cannot do it:
pure Python (assembler, trace-line parsing, argument checks), bpf(2) (needs root or
CAP_BPF), and live traffic (needs BPF_F_TEST_XDP_LIVE_FRAMES, tracefs and two CPUs).
"""

from __future__ import annotations

import errno
import gc
import os
import struct
import time
from collections import Counter

import pytest

from cpumap.kernel import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_NUMA_NODE,
    BPF_NOEXIST,
    CPUMAP_QSIZE_MAX,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    Asm,
    KernelArrayMap,
    KernelCpuMap,
    KernelCpumapRun,
    TraceInstance,
    bpf_unavailable_reason,
    live_frames_unavailable_reason,
    load_xdp,
    nr_cpus,
    possible_cpus,
    redirect_by_byte_program,
    redirect_program,
    redirect_round_robin_program,
    run_pinned,
    sum_enqueue,
    sum_kthread,
    tracefs_root,
    tracing_unavailable_reason,
    udp_frame,
    verdict_program,
)
from cpumap.kernel.asm import R0, R1
from cpumap.kernel.bpf import (
    BPF_F_LOCK,
    BPF_F_TEST_XDP_LIVE_FRAMES,
    MapType,
    map_create,
    syscall_number,
)
from cpumap.kernel.frames import local_ipv4
from cpumap.kernel.tracefs import parse_trace_line

_BPF_REASON = bpf_unavailable_reason()
needs_bpf = pytest.mark.skipif(_BPF_REASON is not None, reason=_BPF_REASON or "")


def _traffic_reason() -> str | None:
    if _BPF_REASON is not None:
        return _BPF_REASON
    if not {0, 1} <= os.sched_getaffinity(0):
        return "live traffic needs CPUs 0 and 1 in this process's affinity"
    return live_frames_unavailable_reason() or tracing_unavailable_reason()


_TRAFFIC_REASON = _traffic_reason()
needs_traffic = pytest.mark.skipif(_TRAFFIC_REASON is not None, reason=_TRAFFIC_REASON or "")


def _need_udp_sink() -> None:
    """The SKB paths aim frames at a UDP socket on a non-loopback address of this host."""
    if local_ipv4() is None:
        pytest.skip("no IPv4 address other than 127/8 here: the netstack path has no target")


def _errno_of(fn, *args, **kwargs) -> int | None:
    try:
        fn(*args, **kwargs)
    except OSError as e:
        return e.errno
    return None


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --- pure Python -------------------------------------------------------------------------


@pytest.mark.parametrize(("machine", "nr"), [("x86_64", 321), ("aarch64", 280)])
def test_syscall_number_per_arch(machine: str, nr: int) -> None:
    assert syscall_number(machine) == nr


def test_syscall_number_unknown_arch_is_enosys() -> None:
    with pytest.raises(OSError, match=r"bpf\(2\) syscall number unknown for vax") as ei:
        syscall_number("vax")
    assert ei.value.errno == errno.ENOSYS


def test_assembler_encodes_struct_bpf_insn() -> None:
    # r0 = 2; exit  ==  b7 00 0000 02000000 | 95 00 0000 00000000
    assert verdict_program(XDP_PASS) == bytes.fromhex("b7000000020000009500000000000000")


def test_assembler_resolves_labels_forward_and_back() -> None:
    code = Asm().label("top").mov_imm(R0, 0).ja("end").ja("top").label("end").exit().assemble()
    offs = [struct.unpack_from("<BBhi", code, i)[2] for i in range(0, len(code), 8)]
    assert offs == [0, 1, -3, 0]


def test_assembler_ld_imm64_takes_two_slots_with_pseudo_map_fd() -> None:
    code = Asm().ld_map_fd(R1, 7).assemble()
    assert code == bytes.fromhex("18110000070000000000000000000000")


def test_assembler_rejects_undefined_and_duplicate_labels() -> None:
    with pytest.raises(ValueError, match=r"^undefined label 'nowhere'$"):
        Asm().ja("nowhere").assemble()
    with pytest.raises(ValueError, match=r"^label 'x' defined twice$"):
        Asm().label("x").label("x")


def test_verdict_program_rejects_non_verdicts() -> None:
    with pytest.raises(ValueError, match=r"^verdict must be an XDP action 0\.\.4, got 5$"):
        verdict_program(5)


def test_udp_frame_is_64_bytes_with_valid_ip_checksum() -> None:
    f = udp_frame(64)
    assert len(f) == 64 and f[12:14] == b"\x08\x00"
    ip = f[14:34]
    total = sum(struct.unpack("!10H", ip))
    total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF  # a header that includes its checksum sums to all ones
    with pytest.raises(ValueError, match=r"^size must be in \[42, 1514\], got 41$"):
        udp_frame(41)


def test_parse_trace_line_both_events() -> None:
    kt = parse_trace_line(
        b" cpumap/1/map:7-99  [001] b..1.  12.500000: xdp_cpumap_kthread: kthread cpu=1"
        b" map_id=7 action=REDIRECT processed=8 drops=0 sched=1 xdp_pass=3 xdp_drop=5"
        b" xdp_redirect=0"
    )
    assert kt is not None and kt.name == "xdp_cpumap_kthread" and kt.cpu == 1
    assert kt.ts == 12.5
    assert kt.fields["processed"] == 8 and kt.fields["xdp_drop"] == 5
    assert kt.fields["action"] == "REDIRECT"
    enq = parse_trace_line(
        b"   python 3-1234 [000] ..... 3.000001: xdp_cpumap_enqueue: enqueue cpu=0"
        b" map_id=7 action=REDIRECT processed=8 drops=6 to_cpu=1"
    )
    assert enq is not None and enq.cpu == 0 and enq.fields["to_cpu"] == 1
    assert sum_enqueue([enq]).drops == 6 and sum_kthread([kt]).xdp_pass == 3
    assert parse_trace_line(b"# tracer: nop") is None


# --- bpf(2): the map --------------------------------------------------------------------

# Observed on this kernel (6.x), in the order the kernel checks; see
# docs/kernel-differences.md.  (max_entries, value_size, map_flags) -> errno or None.
CREATE_ERRNOS = [
    pytest.param(0, 8, 0, errno.EINVAL, id="max_entries-0"),
    pytest.param(1, 8, 0, None, id="max_entries-1"),
    pytest.param("NR_CPUS", 8, 0, None, id="max_entries-NR_CPUS"),
    pytest.param("NR_CPUS+1", 8, 0, errno.E2BIG, id="max_entries-NR_CPUS+1"),
    pytest.param(2**32 - 1, 8, 0, errno.E2BIG, id="max_entries-u32max"),
    pytest.param(4, 4, 0, None, id="value_size-4"),
    pytest.param(4, 0, 0, errno.EINVAL, id="value_size-0"),
    pytest.param(4, 5, 0, errno.EINVAL, id="value_size-5"),
    pytest.param(4, 16, 0, errno.EINVAL, id="value_size-16"),
    pytest.param(0, 16, 0, errno.EINVAL, id="max_entries-0-and-bad-value_size"),
    pytest.param(4, 8, BPF_F_NUMA_NODE, None, id="flags-numa"),
    pytest.param(4, 8, 1, errno.EINVAL, id="flags-no_prealloc"),
    pytest.param(4, 8, 1 << 3, errno.EINVAL, id="flags-rdonly"),
    pytest.param("NR_CPUS+1", 8, 1, errno.EINVAL, id="flags-checked-before-size"),
]


@needs_bpf
@pytest.mark.root
@pytest.mark.parametrize(("max_entries", "value_size", "map_flags", "want"), CREATE_ERRNOS)
def test_create_errnos(max_entries: int | str, value_size: int, map_flags: int, want) -> None:
    n = {"NR_CPUS": nr_cpus(), "NR_CPUS+1": nr_cpus() + 1}.get(str(max_entries), max_entries)
    assert isinstance(n, int)
    try:
        m = KernelCpuMap(n, value_size=value_size, map_flags=map_flags)
    except OSError as e:
        assert e.errno == want
        assert e.strerror.startswith("BPF_MAP_CREATE max_entries=")
    else:
        m.close()
        assert want is None


@needs_bpf
@pytest.mark.root
@pytest.mark.parametrize("key_size", [0, 1, 2, 8])
def test_create_key_size_other_than_4_is_einval(key_size: int) -> None:
    with pytest.raises(OSError) as ei:
        os.close(map_create(MapType.CPUMAP, key_size, 8, 4))
    assert ei.value.errno == errno.EINVAL


def _impossible_cpu() -> int:
    cpu = max(possible_cpus()) + 1
    if cpu >= nr_cpus():
        pytest.skip("every CPU below NR_CPUS is possible here")
    return cpu


# (key, qsize, flags) with max_entries = NR_CPUS; "IMPOSSIBLE" is the first impossible CPU.
UPDATE_ERRNOS = [
    pytest.param(1, 10, BPF_ANY, None, id="any"),
    pytest.param(1, 10, BPF_EXIST, None, id="exist-on-empty-succeeds"),
    pytest.param(1, 10, BPF_NOEXIST, errno.EEXIST, id="noexist-always-eexist"),
    pytest.param(1, 10, 3, errno.EINVAL, id="flags-3"),
    pytest.param(1, 10, BPF_F_LOCK, errno.EINVAL, id="flags-lock"),
    pytest.param(1, 10, 2**63, errno.EINVAL, id="flags-huge"),
    pytest.param("MAX", 10, BPF_ANY, errno.E2BIG, id="key-max_entries"),
    pytest.param(2**32 - 1, 10, BPF_ANY, errno.E2BIG, id="key-u32max"),
    pytest.param(1, CPUMAP_QSIZE_MAX, BPF_ANY, None, id="qsize-16384"),
    pytest.param(1, CPUMAP_QSIZE_MAX + 1, BPF_ANY, errno.EOVERFLOW, id="qsize-16385"),
    pytest.param(1, 2**32 - 1, BPF_ANY, errno.EOVERFLOW, id="qsize-u32max"),
    pytest.param(1, 0, BPF_ANY, None, id="qsize-0-deletes"),
    pytest.param("IMPOSSIBLE", 10, BPF_ANY, errno.ENODEV, id="cpu-not-possible"),
    pytest.param("IMPOSSIBLE", 0, BPF_ANY, errno.ENODEV, id="cpu-not-possible-qsize-0"),
    # Order of the checks: flags > EXIST, then key, then NOEXIST, then qsize, then CPU.
    pytest.param("MAX", 10, 3, errno.EINVAL, id="order-flags-before-key"),
    pytest.param("MAX", 10, BPF_NOEXIST, errno.E2BIG, id="order-key-before-noexist"),
    pytest.param(1, 20000, BPF_NOEXIST, errno.EEXIST, id="order-noexist-before-qsize"),
    pytest.param("IMPOSSIBLE", 20000, BPF_ANY, errno.EOVERFLOW, id="order-qsize-before-cpu"),
]


@needs_bpf
@pytest.mark.root
@pytest.mark.parametrize(("key", "qsize", "flags", "want"), UPDATE_ERRNOS)
def test_update_errnos(key: int | str, qsize: int, flags: int, want: int | None) -> None:
    with KernelCpuMap(nr_cpus()) as m:
        k = {"MAX": nr_cpus()}.get(str(key), key)
        if key == "IMPOSSIBLE":
            k = _impossible_cpu()
        assert isinstance(k, int)
        assert _errno_of(m.update, k, qsize, flags) == want
        if want is None and qsize:
            assert m.lookup(k) == qsize
        elif 0 <= k < m.max_entries:
            assert _errno_of(m.lookup, k) == errno.ENOENT  # a failed update changes nothing


@needs_bpf
@pytest.mark.root
def test_failed_update_leaves_entry_unchanged() -> None:
    with KernelCpuMap(4) as m:
        m.update(1, 100)
        for flags, qsize in [(BPF_NOEXIST, 5), (3, 5), (0, 20000)]:
            assert _errno_of(m.update, 1, qsize, flags) is not None
            assert m.lookup(1) == 100


@needs_bpf
@pytest.mark.root
def test_delete_errnos_and_asymmetry_with_update() -> None:
    with KernelCpuMap(4) as m:
        assert _errno_of(m.delete, 4) == errno.EINVAL  # update says E2BIG for the same key
        assert _errno_of(m.update, 4, 10) == errno.E2BIG
        assert _errno_of(m.delete, 2**32 - 1) == errno.EINVAL
        assert _errno_of(m.delete, 1) is None  # deleting an empty entry is fine
        m.update(1, 10)
        m.delete(1)
        assert _errno_of(m.lookup, 1) == errno.ENOENT


@needs_bpf
@pytest.mark.root
def test_delete_of_impossible_cpu_in_range_succeeds() -> None:
    cpu = _impossible_cpu()
    with KernelCpuMap(cpu + 1) as m:
        assert _errno_of(m.delete, cpu) is None  # delete does not ask cpu_possible()


@needs_bpf
@pytest.mark.root
def test_lookup() -> None:
    with KernelCpuMap(4) as m:
        assert _errno_of(m.lookup, 0) == errno.ENOENT
        assert _errno_of(m.lookup, 4) == errno.ENOENT  # out of range: ENOENT, not E2BIG
        assert _errno_of(m.lookup, 2**32 - 1) == errno.ENOENT
        m.update(0, 7)
        m.update(0, 9)  # replace
        assert m.lookup(0) == 9
        assert m.lookup_value(0).prog_id == 0
        m.update(0, 0)
        assert _errno_of(m.lookup, 0) == errno.ENOENT


@needs_bpf
@pytest.mark.root
@pytest.mark.parametrize("max_entries", [1, 2, 5])
def test_get_next_key_walks_indices_populated_or_not(max_entries: int) -> None:
    with KernelCpuMap(max_entries) as m:
        m.update(0, 4)
        assert m.get_next_key(None) == 0
        for k in range(max_entries - 1):
            assert m.get_next_key(k) == k + 1
        assert _errno_of(m.get_next_key, max_entries - 1) == errno.ENOENT
        assert m.get_next_key(max_entries) == 0
        assert m.get_next_key(2**32 - 1) == 0
        assert list(m) == list(m.keys()) == list(range(max_entries))


@needs_bpf
@pytest.mark.root
def test_value_size_4_map() -> None:
    with KernelCpuMap(4, value_size=4) as m:
        m.update(1, 33)
        assert m.lookup_value(1).qsize == 33 and m.lookup_value(1).prog_id == 0
        with pytest.raises(ValueError, match=r"^prog_fd needs value_size 8"):
            m.update(1, 33, prog_fd=5)


@needs_bpf
@pytest.mark.root
def test_map_id_is_the_kernels_and_unique() -> None:
    with KernelCpuMap(2) as a, KernelCpuMap(2) as b:
        assert a.map_id > 0 and b.map_id > 0 and a.map_id != b.map_id
        assert f"id={a.map_id}" in repr(a)


@needs_bpf
@pytest.mark.root
def test_second_stage_program_on_an_entry() -> None:
    with (
        KernelCpuMap(2) as m,
        load_xdp(verdict_program(XDP_DROP), cpumap_stage=True) as stage,
        load_xdp(verdict_program(XDP_DROP)) as plain,
    ):
        m.update(1, 10, prog_fd=stage.fd)
        assert m.lookup_value(1).prog_id == stage.prog_id  # fd in, id out
        # A program of the wrong attach type, or an fd that is no program: the kernel
        # reports the failed entry allocation as ENOMEM, and the entry is unchanged.
        assert _errno_of(m.update, 1, 10, prog_fd=plain.fd) == errno.ENOMEM
        assert _errno_of(m.update, 1, 10, prog_fd=m.fd) == errno.ENOMEM
        assert m.lookup_value(1).prog_id == stage.prog_id
        m.update(1, 11, prog_fd=0)  # fd 0 means "no program" to the kernel
        assert m.lookup_value(1).prog_id == 0


@pytest.mark.parametrize(
    ("call", "exc", "msg"),
    [
        (lambda m: m.update(-1, 1), OverflowError, r"^key -1 does not fit in u32$"),
        (lambda m: m.update(2**32, 1), OverflowError, r"^key 4294967296 does not fit in u32$"),
        (lambda m: m.update(0, 2**32), OverflowError, r"^qsize 4294967296 does not fit in u32$"),
        (lambda m: m.update(0, 1, -1), OverflowError, r"^flags -1 does not fit in u64$"),
        (lambda m: m.update(0, "1"), TypeError, r"^qsize must be an int, not str$"),
        (lambda m: m.update(True, 1), TypeError, r"^key must be an int, not bool$"),
        (lambda m: m.lookup(1.0), TypeError, r"^key must be an int, not float$"),
        (lambda m: m.delete(-5), OverflowError, r"^key -5 does not fit in u32$"),
        (lambda m: m.get_next_key(2**32), OverflowError, r"^key 4294967296 does not fit in u32$"),
        (lambda m: m.update(0, 1, prog_fd=-1), ValueError, r"^prog_fd must be a file descriptor"),
    ],
)
@needs_bpf
@pytest.mark.root
def test_bad_arguments_raise_before_the_syscall(call, exc: type, msg: str) -> None:
    with KernelCpuMap(2) as m, pytest.raises(exc, match=msg):
        call(m)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"max_entries": -1}, r"^max_entries -1 does not fit in u32$"),
        ({"max_entries": 4, "name": "x" * 16}, r"^name must be shorter than 16 bytes"),
    ],
)
def test_bad_create_arguments(kwargs: dict, msg: str) -> None:
    with pytest.raises((ValueError, OverflowError), match=msg):
        KernelCpuMap(**kwargs)


@needs_bpf
@pytest.mark.root
def test_closed_map_refuses_use_and_close_is_idempotent() -> None:
    m = KernelCpuMap(2)
    m.close()
    m.close()
    assert m.closed and "closed" in repr(m)
    with pytest.raises(ValueError, match=r"^KernelCpuMap is closed$"):
        m.lookup(0)


@needs_bpf
@pytest.mark.root
def test_no_fd_leaks() -> None:
    gc.collect()  # earlier tests' garbage must not close its fds inside our window
    before = _open_fds()
    for _ in range(20):
        with KernelCpuMap(4) as m:
            m.update(1, 16)
        with pytest.raises(OSError):
            KernelCpuMap(0)
        with pytest.raises(OSError):
            KernelCpuMap(nr_cpus() + 1)
        with pytest.raises(RuntimeError), KernelCpuMap(2):
            raise RuntimeError("body failed")
        with pytest.raises(OSError, match="verifier log"):
            load_xdp(Asm().exit().assemble())  # r0 never set: the verifier refuses
        with load_xdp(verdict_program(XDP_PASS)), KernelArrayMap(1, percpu=True):
            pass
    forgotten = KernelCpuMap(2)
    fd = forgotten.fd
    del forgotten
    gc.collect()
    with pytest.raises(OSError) as ei:  # the finalizer closed it (nothing reused it yet)
        os.fstat(fd)
    assert ei.value.errno == errno.EBADF
    assert _open_fds() == before


@needs_bpf
@pytest.mark.root
def test_verifier_rejection_carries_the_log() -> None:
    with pytest.raises(OSError, match=r"R0 !read_ok") as ei:
        load_xdp(Asm().exit().assemble())
    assert ei.value.errno == errno.EACCES


# --- bpf(2): programs, without traffic -------------------------------------------------


@needs_bpf
@pytest.mark.root
def test_redirect_programs_verify_and_return_redirect() -> None:
    with KernelCpuMap(2) as m, KernelArrayMap(1, percpu=True) as counter:
        m.update(0, 8)
        m.update(1, 8)
        progs = [
            redirect_program(m, 1),
            redirect_by_byte_program(m, [0, 1], offset=20),
            redirect_round_robin_program(m, [0, 1, 1], counter),
        ]
        for insns in progs:
            with load_xdp(insns) as p:
                assert p.test_run(udp_frame(64), data_out_size=128).retval == XDP_REDIRECT
        assert counter.lookup(0) == 1  # the round-robin program counted its one frame


@needs_bpf
@pytest.mark.root
def test_by_byte_program_drops_a_frame_too_short_for_its_byte() -> None:
    with KernelCpuMap(2) as m, load_xdp(redirect_by_byte_program(m, [1], offset=100)) as p:
        assert p.test_run(udp_frame(64), data_out_size=128).retval == XDP_DROP


# --- live traffic through the real cpumap -----------------------------------------------


def _live(prog, frame: bytes, frames: int) -> None:
    run_pinned(0, lambda: prog.test_run(frame, repeat=frames, flags=BPF_F_TEST_XDP_LIVE_FRAMES))


def _drain_until(tr: TraceInstance, want_kthread: int, deadline_s: float = 10.0) -> list:
    events: list = []
    end = time.monotonic() + deadline_s
    while True:
        events += tr.drain()
        if sum_kthread(events).processed >= want_kthread or time.monotonic() > end:
            return events
        tr.wait_readable(0.05)


@needs_traffic
@pytest.mark.root
@pytest.mark.parametrize("second_stage", ["drop", "pass", None])
def test_live_run_accounting(second_stage) -> None:
    if second_stage != "drop":
        _need_udp_sink()
    frames = 20_000
    with KernelCpumapRun(192, 1, frames=frames, second_stage=second_stage) as run:
        s = run.run().samples[0]
    assert s.lost_events == 0 and s.complete
    # Every frame the RX program ran on was redirected and flushed, in bulks of <= 8.
    assert s.enqueue.processed == frames
    assert s.enqueue.max_batch <= 8 and s.enqueue.to_cpus == {1}
    # enqueue processed includes its drops; the kthread processes exactly the rest.
    assert 0 <= s.enqueue.drops <= s.enqueue.processed
    assert s.kthread.processed == s.enqueue.processed - s.enqueue.drops
    # Kthread batches are at most CPUMAP_BATCH = 8, on the entry's CPU.
    assert s.kthread.max_batch <= 8 and s.kthread.cpus == {1}
    assert sum(n * c for n, c in s.kthread.batch_sizes.items()) == s.kthread.processed
    # The kthread's processed includes what its second stage dropped.
    assert s.kthread.drops <= s.kthread.processed
    split = s.kthread.xdp_pass + s.kthread.xdp_drop + s.kthread.xdp_redirect
    if second_stage == "drop":
        assert s.kthread.xdp_drop == s.kthread.processed and s.kthread.xdp_pass == 0
    elif second_stage == "pass":
        assert s.kthread.xdp_pass == s.kthread.processed and s.kthread.xdp_drop == 0
    else:
        assert split == 0  # no program: no verdicts, every frame goes to the netstack
    assert s.elapsed_s > 0 and s.frames_per_s > 0
    assert s.ns_per_frame is not None and s.ns_per_frame > 0  # schedstat of the kthread


def _snmp() -> dict[str, int]:
    """/proc/net/snmp as {"Ip.InDelivers": n, "Udp.RcvbufErrors": n, ...}."""
    with open("/proc/net/snmp") as f:
        lines = [ln.split() for ln in f]
    out: dict[str, int] = {}
    for head, vals in zip(lines[::2], lines[1::2], strict=True):
        proto = head[0].rstrip(":")
        out.update({f"{proto}.{k}": int(v) for k, v in zip(head[1:], vals[1:], strict=True)})
    return out


@needs_traffic
@pytest.mark.root
def test_netstack_path_delivers_to_udp() -> None:
    _need_udp_sink()
    before = _snmp()
    with KernelCpumapRun(256, 1, frames=5_000, second_stage=None) as run:
        s = run.run().samples[0]
    after = _snmp()
    assert s.kthread.processed > 0
    # Each SKB went through ip_rcv to the transport layer; the socket's tiny buffer
    # then dropped all but the first few.  (>=: other traffic on this host may count.)
    assert after["Ip.InDelivers"] - before["Ip.InDelivers"] >= s.kthread.processed
    assert after["Udp.RcvbufErrors"] > before["Udp.RcvbufErrors"]


@needs_traffic
@pytest.mark.root
def test_full_ring_drops_at_enqueue() -> None:
    frames = 20_000
    with KernelCpumapRun(1, 1, frames=frames, second_stage="drop") as run:
        s = run.run().samples[0]
    assert s.complete and s.lost_events == 0
    assert s.enqueue.drops > 0  # a ring of 1 cannot take a bulk of 8
    assert s.enqueue.processed == frames  # the dropped frames are in processed
    assert s.kthread.processed == frames - s.enqueue.drops


@needs_traffic
@pytest.mark.root
@pytest.mark.parametrize(("byte", "want_cpu"), [(0, 0), (1, 1), (7, 1)])
def test_by_byte_program_steers_live_frames(byte: int, want_cpu: int) -> None:
    frame = bytearray(udp_frame(64))
    frame[60] = byte
    with KernelCpuMap(2) as m:
        m.update(0, 64)
        m.update(1, 64)
        with (
            TraceInstance(filter=f"map_id == {m.map_id}") as tr,
            load_xdp(redirect_by_byte_program(m, [0, 1], offset=60)) as p,
        ):
            _live(p, bytes(frame), 800)
            enq = sum_enqueue(_drain_until(tr, 0, 0))
    assert enq.processed == 800 and enq.to_cpus == {want_cpu}


@needs_traffic
@pytest.mark.root
def test_round_robin_program_spreads_live_frames() -> None:
    with KernelCpuMap(2) as m, KernelArrayMap(1, percpu=True) as counter:
        m.update(0, 256)
        m.update(1, 256)
        with (
            TraceInstance(filter=f"map_id == {m.map_id}") as tr,
            load_xdp(redirect_round_robin_program(m, [0, 1], counter)) as p,
        ):
            _live(p, udp_frame(64), 1000)
            events = _drain_until(tr, 0, 0)
        assert counter.lookup(0) == 1000
    per_cpu: Counter[int] = Counter()
    for e in events:
        if e.name == "xdp_cpumap_enqueue":
            per_cpu[int(e.fields["to_cpu"])] += int(e.fields["processed"])
    assert per_cpu == {0: 500, 1: 500}


@needs_traffic
@pytest.mark.root
def test_trace_instance_is_removed_even_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError), TraceInstance() as tr:
        path = tr.path
        assert os.path.isdir(path)
        raise RuntimeError("body failed")
    assert not os.path.exists(path)


def _our_instances() -> set[str]:
    root = tracefs_root()
    return {d for d in os.listdir(f"{root}/instances") if d.startswith(f"cpumap-{os.getpid()}-")}


@needs_traffic
@pytest.mark.root
def test_runner_releases_every_kernel_object() -> None:
    _need_udp_sink()
    before_fds, before_inst = _open_fds(), _our_instances()
    with pytest.raises(OSError) as ei:
        KernelCpumapRun(CPUMAP_QSIZE_MAX + 1, 1)  # the update fails after the loads
    assert ei.value.errno == errno.EOVERFLOW
    with KernelCpumapRun(8, 1, frames=100, second_stage=None) as run:
        run.run()
    run.close()  # idempotent
    with pytest.raises(RuntimeError), KernelCpumapRun(8, 1, frames=100) as run:
        raise RuntimeError("body failed")
    assert _open_fds() == before_fds
    assert _our_instances() == before_inst


def test_runner_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"^cpu and rx_cpu must differ, both are 0$"):
        KernelCpumapRun(8, 0)
    with pytest.raises(ValueError, match=r"^frames must be >= 1, got 0$"):
        KernelCpumapRun(8, 1, frames=0)
    with pytest.raises(ValueError, match=r"^second_stage must be 'drop', 'pass' or None"):
        KernelCpumapRun(8, 1, second_stage="tx")  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges in a child")
def test_skip_reason_when_bpf_is_not_permitted() -> None:
    import subprocess
    import sys

    code = (
        f"import os, sys; sys.path[:0] = {sys.path!r}\n"
        "from cpumap.kernel import bpf_unavailable_reason\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "print(bpf_unavailable_reason())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.startswith("bpf(2) cannot create a cpumap here: [Errno 1]")
