"""The bpf(2) syscall from Python: the kernel's own cpumap, and the few program operations we need.

Theory of operation
-------------------
``bpf(2)`` takes a command number and a pointer to ``union bpf_attr``; each command reads
its own anonymous struct in that union.  We declare only the structs we use, with
``ctypes``, field for field as ``include/uapi/linux/bpf.h`` declares them (the struct
each class copies is named in its docstring).  We pass the size of *our* struct: the
kernel copies that many bytes into a zeroed ``bpf_attr`` and checks that any tail we do
not know about is zero (``bpf_check_uarg_tail_zero``), so a short struct means "every
newer field is 0", which is what we want.

There is no libc wrapper for ``bpf(2)``, so we go through ``syscall(3)`` with the
architecture's number.  ``ctypes.CDLL`` releases the GIL around a foreign call, so a
long ``BPF_PROG_TEST_RUN`` in one thread does not stop the others.

Errors: the kernel's errno is the contract (see ``docs/kernel-differences.md`` for the
errnos this kernel returns), so every failed call raises ``OSError(errno, message)`` with
the errno exactly as the kernel returned it, never translated.  Python-side argument
errors raise before any syscall, because the kernel never sees them: ``TypeError`` for
a non-integer, ``OverflowError`` for an integer that does not fit the u32/u64 the kernel
reads (as the engine's ``CpuMap`` does), ``ValueError`` for anything else (a program fd
on a 4-byte map).

File descriptors: the kernel creates map and program fds with ``O_CLOEXEC``.  Each
object that owns one closes it in ``close()`` (idempotent), in ``__exit__``, and, as a
last resort, in a ``weakref.finalize`` so that a forgotten object does not leak an fd
(and with it a map, its entries and their kthreads) for the life of the process.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import functools
import os
import platform
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from ..closing import Closing
from ..cpus import possible_cpus
from ..errors import ClosedResourceError
from ..map_errors import as_uint, walk_keys

# What the kernel is given a pointer to: a ctypes structure, array or scalar.
CData = ctypes.Structure | ctypes.Array | ctypes.c_uint32 | ctypes.c_uint64 | ctypes.c_char

# --- the syscall ------------------------------------------------------------------------

# bpf(2) has no stable number across architectures (arch/*/include/.../unistd*.h).
_SYSCALL_BPF: Final[dict[str, int]] = {"x86_64": 321, "aarch64": 280, "arm64": 280}

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class Cmd(enum.IntEnum):
    """``enum bpf_cmd`` (linux/bpf.h), the commands we use."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    PROG_TEST_RUN = 10
    OBJ_GET_INFO_BY_FD = 15
    RAW_TRACEPOINT_OPEN = 17
    LINK_CREATE = 28


class MapType(enum.IntEnum):
    """``enum bpf_map_type`` (linux/bpf.h), the types we create."""

    ARRAY = 2
    PERCPU_ARRAY = 6
    CPUMAP = 16
    XSKMAP = 17


class ProgType(enum.IntEnum):
    """``enum bpf_prog_type`` (linux/bpf.h)."""

    XDP = 6
    RAW_TRACEPOINT = 17


class AttachType(enum.IntEnum):
    """``enum bpf_attach_type`` (linux/bpf.h): what an XDP program may be attached to."""

    NONE = 0
    XDP_DEVMAP = 33
    XDP_CPUMAP = 35  # a cpumap entry's second-stage program
    XDP = 37


# Update flags (linux/bpf.h; BPF_ANY, BPF_NOEXIST, BPF_EXIST in cpumap.abi).  The cpumap
# accepts 0..BPF_EXIST and then rejects NOEXIST.
BPF_F_LOCK: Final = 4
# Map flags.
BPF_F_NUMA_NODE: Final = 1 << 2
# BPF_PROG_TEST_RUN flags.
BPF_F_TEST_XDP_LIVE_FRAMES: Final = 1 << 1

BPF_OBJ_NAME_LEN: Final = 16
U32_MAX: Final = 0xFFFF_FFFF


def syscall_number(machine: str | None = None) -> int:
    """The number of ``bpf(2)`` on ``machine`` (default: this one's ``uname -m``)."""
    machine = machine or platform.machine()
    try:
        return _SYSCALL_BPF[machine]
    except KeyError:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown for {machine}") from None


def _ptr(obj: CData | None) -> int:
    """The address of a ctypes object as the ``__aligned_u64`` the kernel expects (0 for NULL)."""
    return 0 if obj is None else ctypes.addressof(obj)


@functools.cache
def _this_syscall_number() -> int:
    return syscall_number()


def bpf(cmd: Cmd, attr: ctypes.Structure, what: str = "") -> int:
    """Call ``bpf(cmd, &attr, sizeof(attr))``; return its result or raise the kernel's errno.

    ``what`` goes into the message after the command's name, for a reader of tracebacks.
    """
    ret = _syscall(
        ctypes.c_long(_this_syscall_number()),
        ctypes.c_int(int(cmd)),
        ctypes.byref(attr),
        ctypes.c_uint(ctypes.sizeof(attr)),
    )
    if ret < 0:
        err = ctypes.get_errno()
        detail = f" {what}" if what else ""
        raise OSError(err, f"BPF_{cmd.name}{detail}: {os.strerror(err)}")
    return int(ret)


# --- union bpf_attr, the members we use (include/uapi/linux/bpf.h) ---------------------


class MapCreateAttr(ctypes.Structure):
    """The ``BPF_MAP_CREATE`` struct of ``union bpf_attr``, up to ``map_extra``."""

    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", ctypes.c_uint32),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    )


class MapElemAttr(ctypes.Structure):
    """The ``BPF_MAP_*_ELEM`` / ``BPF_MAP_GET_NEXT_KEY`` struct (``value`` shares ``next_key``)."""

    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("_pad0", ctypes.c_uint32),  # __aligned_u64 key
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # union { value; next_key; }
        ("flags", ctypes.c_uint64),
    )


class ProgLoadAttr(ctypes.Structure):
    """The ``BPF_PROG_LOAD`` struct of ``union bpf_attr``, up to ``expected_attach_type``."""

    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    )


class TestRunAttr(ctypes.Structure):
    """The ``BPF_PROG_TEST_RUN`` struct (``test``) of ``union bpf_attr``, up to ``batch_size``."""

    __test__ = False  # not a pytest class, whatever its name says
    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad0", ctypes.c_uint32),
    )


class InfoAttr(ctypes.Structure):
    """The ``BPF_OBJ_GET_INFO_BY_FD`` struct (``info``) of ``union bpf_attr``."""

    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


class LinkCreateAttr(ctypes.Structure):
    """The ``BPF_LINK_CREATE`` struct (``link_create``) of ``union bpf_attr``, up to
    ``flags`` (``target_ifindex`` shares its place with ``target_fd``)."""

    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


class RawTracepointAttr(ctypes.Structure):
    """The ``BPF_RAW_TRACEPOINT_OPEN`` struct (``raw_tracepoint``) of ``union bpf_attr``."""

    _fields_ = (
        ("name", ctypes.c_uint64),
        ("prog_fd", ctypes.c_uint32),
        ("_pad0", ctypes.c_uint32),
        ("cookie", ctypes.c_uint64),
    )


class MapInfo(ctypes.Structure):
    """``struct bpf_map_info`` (linux/bpf.h), the leading fields we read."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    )


class ProgInfo(ctypes.Structure):
    """``struct bpf_prog_info`` (linux/bpf.h), the leading fields we read."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
    )


class CpumapVal(ctypes.Structure):
    """``struct bpf_cpumap_val {u32 qsize; union {int fd; u32 id;} bpf_prog;}`` (linux/bpf.h).

    User space writes a program *fd* and reads back the program *id*.  A 4-byte map has
    only ``qsize``: the kernel copies ``value_size`` bytes of this struct.
    """

    _fields_ = (("qsize", ctypes.c_uint32), ("bpf_prog", ctypes.c_int32))


def _check_u32(name: str, value: object) -> int:
    """``value`` as the kernel's u32 argument: an int that fits, never wrapped -- the
    engine's own check (``map_errors.as_uint``), so both maps refuse with the same words."""
    return as_uint(value, 32, name)


def _check_u64(name: str, value: object) -> int:
    return as_uint(value, 64, name)


def _obj_info(fd: int, info: ctypes.Structure) -> None:
    attr = InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=_ptr(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"fd={fd}")


class FdOwner(Closing):
    """Owns one bpf fd: ``close()`` is idempotent, and a finalizer closes a forgotten one.

    Closing the fd drops our reference to the kernel object (a map, a program, a link);
    the kernel frees the object when its last reference goes.
    """

    _fd: int

    def _own(self, fd: int) -> None:
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    @property
    def fd(self) -> int:
        """The file descriptor; ``ValueError`` once closed (a closed fd may be someone else's)."""
        if not self._finalizer.alive:
            raise ClosedResourceError(f"{type(self).__name__} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the fd (the kernel frees the object when its last reference goes).  Idempotent."""
        self._finalizer()


# --- maps -------------------------------------------------------------------------------


def map_create(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    *,
    map_flags: int = 0,
    numa_node: int = 0,
    name: str = "",
) -> int:
    """``BPF_MAP_CREATE``: a new map's fd (the caller owns it), or the kernel's errno."""
    encoded = name.encode()
    if len(encoded) >= BPF_OBJ_NAME_LEN:
        raise ValueError(f"name must be shorter than {BPF_OBJ_NAME_LEN} bytes, got {name!r}")
    attr = MapCreateAttr(
        map_type=map_type,
        key_size=_check_u32("key_size", key_size),
        value_size=_check_u32("value_size", value_size),
        max_entries=_check_u32("max_entries", max_entries),
        map_flags=_check_u32("map_flags", map_flags),
        numa_node=_check_u32("numa_node", numa_node),
        map_name=encoded,
    )
    return bpf(Cmd.MAP_CREATE, attr, f"max_entries={max_entries}")


@dataclass(frozen=True, slots=True)
class CpuMapValue:
    """A cpumap entry as lookup returns it."""

    qsize: int
    """Ring size of the entry (its ``ptr_ring``)."""
    prog_id: int
    """Id of the entry's second-stage XDP program, 0 for none (always 0 on a 4-byte map)."""


class KernelCpuMap(FdOwner):
    """A real ``BPF_MAP_TYPE_CPUMAP``: key = CPU number, value = queue size (+ program).

    Every operation is one ``bpf(2)`` call and raises the kernel's errno as ``OSError``;
    nothing is checked or cached on our side except that arguments fit the C types the
    kernel reads (``TypeError``/``OverflowError``).  ``value_size`` is 8 (``struct
    bpf_cpumap_val``, which can carry a second-stage program) or 4 (``qsize`` only, the
    2017 ABI); any other size is the kernel's ``EINVAL``.

    ``update`` with a non-zero qsize makes the kernel allocate a new entry: a ring and a
    kthread named ``cpumap/<cpu>/map:<id>`` bound to that CPU.  ``close()`` drops our fd;
    the kernel tears the entries down when the last reference (ours, or a loaded
    program's) goes.
    """

    def __init__(
        self,
        max_entries: int,
        *,
        map_flags: int = 0,
        value_size: int = 8,
        numa_node: int = 0,
        name: str = "",
    ) -> None:
        self.max_entries: Final = _check_u32("max_entries", max_entries)
        self.value_size: Final = _check_u32("value_size", value_size)
        self._own(
            map_create(
                MapType.CPUMAP,
                4,
                value_size,
                max_entries,
                map_flags=map_flags,
                numa_node=numa_node,
                name=name,
            )
        )
        try:
            info = MapInfo()
            _obj_info(self._fd, info)
        except BaseException:
            self.close()
            raise
        self.map_id: Final[int] = info.id
        """The kernel's id of this map: what the xdp_cpumap_* tracepoints call ``map_id``."""

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"KernelCpuMap(max_entries={self.max_entries}, id={self.map_id}, {state})"

    def _elem(self, key: ctypes.c_uint32, value: CData | None, flags: int) -> MapElemAttr:
        return MapElemAttr(map_fd=self.fd, key=_ptr(key), value=_ptr(value), flags=flags)

    def update(self, key: int, qsize: int, flags: int = 0, prog_fd: int | None = None) -> None:
        """Set entry ``key`` (a CPU) to a ring of ``qsize`` frames; ``qsize`` 0 deletes it.

        ``prog_fd``: a second-stage XDP program (``expected_attach_type`` ``XDP_CPUMAP``)
        that the entry's kthread runs on every frame; 8-byte maps only.  ``flags`` is
        passed as is (the kernel rejects > ``BPF_EXIST`` and ``BPF_NOEXIST``).
        """
        k = ctypes.c_uint32(_check_u32("key", key))
        val = CpumapVal(qsize=_check_u32("qsize", qsize))
        if prog_fd is not None:
            if self.value_size < ctypes.sizeof(CpumapVal):
                raise ValueError("prog_fd needs value_size 8 (struct bpf_cpumap_val)")
            if not isinstance(prog_fd, int) or not 0 <= prog_fd < 2**31:
                raise ValueError(f"prog_fd must be a file descriptor, got {prog_fd!r}")
            val.bpf_prog = prog_fd
        attr = self._elem(k, val, _check_u64("flags", flags))
        bpf(Cmd.MAP_UPDATE_ELEM, attr, f"key={key} qsize={qsize} flags={flags}")

    def delete(self, key: int) -> None:
        """Empty entry ``key`` (its kthread drains the ring, then exits)."""
        k = ctypes.c_uint32(_check_u32("key", key))
        bpf(Cmd.MAP_DELETE_ELEM, self._elem(k, None, 0), f"key={key}")

    def lookup_value(self, key: int) -> CpuMapValue:
        """The entry at ``key``; ``ENOENT`` if it is empty or ``key`` is out of range."""
        k = ctypes.c_uint32(_check_u32("key", key))
        val = CpumapVal()
        bpf(Cmd.MAP_LOOKUP_ELEM, self._elem(k, val, 0), f"key={key}")
        # A 4-byte map's kernel copies 4 bytes; bpf_prog stays the 0 we zeroed.
        return CpuMapValue(qsize=val.qsize, prog_id=val.bpf_prog & U32_MAX)

    def lookup(self, key: int) -> int:
        """The qsize of entry ``key``; ``ENOENT`` if it is empty or ``key`` is out of range."""
        return self.lookup_value(key).qsize

    def get_next_key(self, key: int | None) -> int:
        """The key after ``key`` (None: the first); ``ENOENT`` past the last.

        The cpumap walks indices, populated or not: None or an out-of-range key gives 0.
        """
        nxt = ctypes.c_uint32()
        if key is None:
            attr = MapElemAttr(map_fd=self.fd, key=0, value=_ptr(nxt))
        else:
            k = ctypes.c_uint32(_check_u32("key", key))
            attr = self._elem(k, nxt, 0)
        bpf(Cmd.MAP_GET_NEXT_KEY, attr, f"key={key}")
        return nxt.value

    def keys(self) -> Iterator[int]:
        """Every key the kernel's get_next_key walk yields, from the first, until ``ENOENT``."""
        return walk_keys(self.get_next_key)

    def __iter__(self) -> Iterator[int]:
        return self.keys()


class KernelArrayMap(FdOwner):
    """A ``BPF_MAP_TYPE_ARRAY`` (or per-CPU array) of u64 counters, for programs to count into."""

    def __init__(self, max_entries: int, *, percpu: bool = False, name: str = "") -> None:
        self.max_entries: Final = _check_u32("max_entries", max_entries)
        self.percpu: Final = percpu
        map_type = MapType.PERCPU_ARRAY if percpu else MapType.ARRAY
        self._own(map_create(map_type, 4, 8, max_entries, name=name))

    def lookup(self, key: int) -> int:
        """The counter at ``key`` (summed over the possible CPUs for a per-CPU map)."""
        k = ctypes.c_uint32(_check_u32("key", key))
        n = len(possible_cpus()) if self.percpu else 1
        vals = (ctypes.c_uint64 * n)()
        attr = MapElemAttr(map_fd=self.fd, key=_ptr(k), value=_ptr(vals))
        bpf(Cmd.MAP_LOOKUP_ELEM, attr, f"key={key}")
        return sum(vals)

    def update(self, key: int, value: int) -> None:
        """Set the counter at ``key`` (on every CPU for a per-CPU map)."""
        k = ctypes.c_uint32(_check_u32("key", key))
        n = len(possible_cpus()) if self.percpu else 1
        vals = (ctypes.c_uint64 * n)(*([_check_u64("value", value)] * n))
        attr = MapElemAttr(map_fd=self.fd, key=_ptr(k), value=_ptr(vals))
        bpf(Cmd.MAP_UPDATE_ELEM, attr, f"key={key}")


# --- programs ---------------------------------------------------------------------------


class KernelProgram(FdOwner):
    """A loaded BPF program (``BPF_PROG_LOAD``).

    ``insns`` is the raw instruction bytes (8 bytes each, see ``cpumap.kernel.asm``).  On a
    verifier rejection the ``OSError`` message carries the verifier's log.
    """

    def __init__(
        self,
        insns: bytes,
        *,
        prog_type: int = ProgType.XDP,
        expected_attach_type: int = AttachType.NONE,
        license: str = "GPL",
        name: str = "",
        log_size: int = 1 << 16,
    ) -> None:
        if len(insns) % 8 or not insns:
            raise ValueError(f"insns must be a non-empty multiple of 8 bytes, got {len(insns)}")
        encoded = name.encode()
        if len(encoded) >= BPF_OBJ_NAME_LEN:
            raise ValueError(f"name must be shorter than {BPF_OBJ_NAME_LEN} bytes, got {name!r}")
        code = ctypes.create_string_buffer(insns, len(insns))
        lic = ctypes.create_string_buffer(license.encode())
        log = ctypes.create_string_buffer(log_size)

        def load(log_level: int) -> int:
            attr = ProgLoadAttr(
                prog_type=prog_type,
                insn_cnt=len(insns) // 8,
                insns=_ptr(code),
                license=_ptr(lic),
                log_level=log_level,
                log_size=log_size if log_level else 0,
                log_buf=_ptr(log) if log_level else 0,
                prog_name=encoded,
                expected_attach_type=expected_attach_type,
            )
            return bpf(Cmd.PROG_LOAD, attr, f"name={name!r}")

        try:
            fd = load(0)
        except OSError as first:
            # Load again with the verifier log on, only to explain the failure.
            try:
                fd = load(1)
            except OSError as e:
                text = log.value.decode(errors="replace").strip()
                raise OSError(e.errno, f"{e.strerror}\nverifier log:\n{text}") from first
        self._own(fd)
        info = ProgInfo()
        try:
            _obj_info(fd, info)
        except BaseException:
            self.close()
            raise
        self.prog_id: Final[int] = info.id
        self.expected_attach_type: Final = expected_attach_type

    def test_run(
        self,
        data: bytes,
        *,
        repeat: int = 1,
        flags: int = 0,
        batch_size: int = 0,
        ctx: bytes | None = None,
        data_out_size: int = 0,
    ) -> TestRunResult:
        """``BPF_PROG_TEST_RUN`` on one frame ``data``, ``repeat`` times.

        With ``flags=BPF_F_TEST_XDP_LIVE_FRAMES`` the kernel builds real xdp_frames in
        batches of ``batch_size`` (0: the kernel's default, 64) and carries out the
        verdicts (a redirect really redirects); then no data may come back out.
        """
        din = ctypes.create_string_buffer(data, len(data))
        dout = ctypes.create_string_buffer(data_out_size) if data_out_size else None
        cin = ctypes.create_string_buffer(ctx, len(ctx)) if ctx is not None else None
        attr = TestRunAttr(
            prog_fd=self.fd,
            data_size_in=len(data),
            data_size_out=data_out_size,
            data_in=_ptr(din),
            data_out=_ptr(dout),
            repeat=_check_u32("repeat", repeat),
            ctx_size_in=len(ctx) if ctx is not None else 0,
            ctx_in=_ptr(cin),
            flags=_check_u32("flags", flags),
            batch_size=_check_u32("batch_size", batch_size),
        )
        bpf(Cmd.PROG_TEST_RUN, attr, f"repeat={repeat} flags={flags}")
        out = dout.raw[: attr.data_size_out] if dout is not None else b""
        return TestRunResult(retval=attr.retval, duration_ns=attr.duration, data_out=out)


@dataclass(frozen=True, slots=True)
class TestRunResult:
    """What ``BPF_PROG_TEST_RUN`` reports back."""

    __test__ = False  # not a pytest class

    retval: int
    """The program's return value (in live-frames mode: of the last run)."""
    duration_ns: int
    """Mean nanoseconds per repetition, as the kernel measured it."""
    data_out: bytes
    """The frame after the program (empty in live-frames mode)."""


def link_create(prog_fd: int, target_ifindex: int, attach_type: int, flags: int = 0) -> int:
    """``BPF_LINK_CREATE``: a new link's fd (the caller owns it), or the kernel's errno.

    The link holds the program attached for as long as the fd (or a dup of it) is open.
    """
    attr = LinkCreateAttr(
        prog_fd=_check_u32("prog_fd", prog_fd),
        target_ifindex=_check_u32("target_ifindex", target_ifindex),
        attach_type=_check_u32("attach_type", attach_type),
        flags=_check_u32("flags", flags),
    )
    return bpf(Cmd.LINK_CREATE, attr, f"ifindex={target_ifindex} flags={flags}")


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    """``BPF_RAW_TRACEPOINT_OPEN``: a raw-tracepoint program on tracepoint ``name`` (e.g.
    ``"xdp_cpumap_enqueue"``); the fd (the caller owns it) holds it attached until closed,
    by the owner or by the kernel when the owner dies."""
    buf = ctypes.create_string_buffer(name.encode())
    attr = RawTracepointAttr(name=_ptr(buf), prog_fd=_check_u32("prog_fd", prog_fd))
    return bpf(Cmd.RAW_TRACEPOINT_OPEN, attr, f"tracepoint={name}")


# --- the machine ------------------------------------------------------------------------


def bpf_unavailable_reason() -> str | None:
    """Why this process cannot create a cpumap (None if it can): for tests to skip on."""
    try:
        syscall_number()
        KernelCpuMap(1).close()
    except OSError as e:
        return f"bpf(2) cannot create a cpumap here: {e}"
    return None
