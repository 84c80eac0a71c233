"""cpumap: the Linux kernel's XDP cpumap in user space.

A multi-core packet-steering engine with the kernel's semantics: an XDP-style program on
the RX side redirects each frame to a map entry; each entry is a worker process pinned
to a CPU, fed through a bounded ring, running your handler.

    >>> import cpumap
    >>> with cpumap.CpuMap(2, handler=my_handler) as cmap:   # doctest: +SKIP
    ...     cmap.update(0, 256); cmap.update(1, 256)
    ...     stats = cmap.run(batches, cpumap.FlowHash(cmap, [0, 1]))

The tree, from the top down (each package's ``__init__`` states its rules)::

    cli, metrics, sinks, demo     the command line and what it is built from
    engine/                       the map, its entries, workers, producers (processes)
                                  over its rings, frame pool and grace periods (memory)
    programs/                     user code: contexts, the program runner, the built-in
                                  steering programs, the CPU table, the loader
    skb/                          what a handler sees: one frame or a batch, parsed
    capture/, live/, generator    sources and sinks of packets (PacketBatch columns)
    kernel/                       the real kernel cpumap, through bpf(2), to compare with
    packets, abi, cpus, errors,   the leaves everything stands on
    shm, _atomics

Rule: this module only re-exports.  It exports the names a user types in a program, a
handler or a script -- the map, its stats and errors; programs, their contexts and the
built-in ones; skbs; packets, their sources and sinks; the ABI's constants -- and none of
the mechanisms inside (rings, pools, counters, the control segment), which live in their
subpackages.  ``cpumap.kernel`` (root, bpf(2)) and ``cpumap.live.netns`` (a test bench)
are imported by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:  # the same names as the table below (tests/test_imports.py)
    from .abi import (
        BPF_ANY,
        BPF_EXIST,
        BPF_NOEXIST,
        LINKTYPE_ETHERNET,
        XDP_ABORTED,
        XDP_DROP,
        XDP_PASS,
        XDP_REDIRECT,
        XDP_TX,
        Verdict,
    )
    from .capture import CaptureError, CaptureErrorKind, open_capture, open_writer, write_capture
    from .cpus import nr_cpus, parse_cpu_list, possible_cpus
    from .engine import (
        QSIZE_MAX,
        CpuMap,
        EnqueueEvent,
        EnqueueRow,
        EntryState,
        EntryStats,
        KthreadEvent,
        MapOptions,
        MapReport,
        MapStats,
        OutputMap,
        ProducerStats,
        RestartPolicy,
        RxProducer,
        WorkerEvent,
        WorkerResult,
    )
    from .errors import ClosedResourceError, Error, HandlerSetupError
    from .generator import Generator
    from .live import Fanout, FanoutMode, LiveSource
    from .map_errors import MapError
    from .packets import Packet, PacketBatch
    from .programs import (
        BUILTIN_PROGRAMS,
        MODES,
        BrokenTableError,
        CpuTable,
        FlowHash,
        LoadError,
        WorkerInfo,
        XdpBatch,
        XdpContext,
        batch_handler,
        load_handler,
        load_program,
        make_program,
        redirect_map,
        vectorized,
    )
    from .sinks import CaptureSink, Chain, FlowTable
    from .skb import ParseDepth, Skb, SkbBatch

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "BUILTIN_PROGRAMS",
    "LINKTYPE_ETHERNET",
    "MODES",
    "QSIZE_MAX",
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_PASS",
    "XDP_REDIRECT",
    "XDP_TX",
    "BrokenTableError",
    "CaptureError",
    "CaptureErrorKind",
    "CaptureSink",
    "Chain",
    "ClosedResourceError",
    "CpuMap",
    "CpuTable",
    "EnqueueEvent",
    "EnqueueRow",
    "EntryState",
    "EntryStats",
    "Error",
    "Fanout",
    "FanoutMode",
    "FlowHash",
    "FlowTable",
    "Generator",
    "HandlerSetupError",
    "KthreadEvent",
    "LiveSource",
    "LoadError",
    "MapError",
    "MapOptions",
    "MapReport",
    "MapStats",
    "OutputMap",
    "Packet",
    "PacketBatch",
    "ParseDepth",
    "ProducerStats",
    "RestartPolicy",
    "RxProducer",
    "Skb",
    "SkbBatch",
    "Verdict",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerResult",
    "XdpBatch",
    "XdpContext",
    "batch_handler",
    "load_handler",
    "load_program",
    "make_program",
    "nr_cpus",
    "open_capture",
    "open_writer",
    "parse_cpu_list",
    "possible_cpus",
    "redirect_map",
    "vectorized",
    "write_capture",
]

# Each name is imported from its module when first asked for (cpumap/lazy.py).
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "BPF_ANY": ".abi",
        "BPF_EXIST": ".abi",
        "BPF_NOEXIST": ".abi",
        "LINKTYPE_ETHERNET": ".abi",
        "XDP_ABORTED": ".abi",
        "XDP_DROP": ".abi",
        "XDP_PASS": ".abi",
        "XDP_REDIRECT": ".abi",
        "XDP_TX": ".abi",
        "Verdict": ".abi",
        "CaptureError": ".capture",
        "CaptureErrorKind": ".capture",
        "open_capture": ".capture",
        "open_writer": ".capture",
        "write_capture": ".capture",
        "nr_cpus": ".cpus",
        "parse_cpu_list": ".cpus",
        "possible_cpus": ".cpus",
        "QSIZE_MAX": ".engine",
        "CpuMap": ".engine",
        "EnqueueEvent": ".engine",
        "EnqueueRow": ".engine",
        "EntryState": ".engine",
        "EntryStats": ".engine",
        "KthreadEvent": ".engine",
        "MapOptions": ".engine",
        "MapReport": ".engine",
        "MapStats": ".engine",
        "OutputMap": ".engine",
        "ProducerStats": ".engine",
        "RestartPolicy": ".engine",
        "RxProducer": ".engine",
        "WorkerEvent": ".engine",
        "WorkerResult": ".engine",
        "ClosedResourceError": ".errors",
        "Error": ".errors",
        "HandlerSetupError": ".errors",
        "Generator": ".generator",
        "Fanout": ".live",
        "FanoutMode": ".live",
        "LiveSource": ".live",
        "MapError": ".map_errors",
        "Packet": ".packets",
        "PacketBatch": ".packets",
        "BUILTIN_PROGRAMS": ".programs",
        "MODES": ".programs",
        "BrokenTableError": ".programs",
        "CpuTable": ".programs",
        "FlowHash": ".programs",
        "LoadError": ".programs",
        "WorkerInfo": ".programs",
        "XdpBatch": ".programs",
        "XdpContext": ".programs",
        "batch_handler": ".programs",
        "load_handler": ".programs",
        "load_program": ".programs",
        "make_program": ".programs",
        "redirect_map": ".programs",
        "vectorized": ".programs",
        "CaptureSink": ".sinks",
        "Chain": ".sinks",
        "FlowTable": ".sinks",
        "ParseDepth": ".skb",
        "Skb": ".skb",
        "SkbBatch": ".skb",
    },
)

__version__ = "0.1.0"
