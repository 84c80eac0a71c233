"""cpumap: the Linux kernel's XDP cpumap in user space.

A multi-core packet-steering engine with the kernel's semantics: an XDP-style program on
the RX side redirects each frame to a map entry; each entry is a worker process pinned
to a CPU, fed through a bounded ring, running your handler.

    >>> import cpumap
    >>> with cpumap.CpuMap(2, handler=my_handler) as cmap:   # doctest: +SKIP
    ...     cmap.update(0, 256); cmap.update(1, 256)
    ...     stats = cmap.run(batches, cpumap.FlowHash(cmap, [0, 1]))
"""

from .cpu_table import BrokenTableError, CpuTable
from .loader import LoadError, load_handler, load_program
from .map import (
    BPF_ANY,
    BPF_EXIST,
    BPF_NOEXIST,
    QSIZE_MAX,
    CpuMap,
    HandlerSetupError,
    WorkerResult,
    nr_cpus,
    possible_cpus,
)
from .packets import Packet, PacketBatch
from .program import (
    XDP_ABORTED,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    FlowHash,
    Verdict,
    XdpBatch,
    XdpContext,
    redirect_map,
    vectorized,
)
from .rx import RxProducer
from .second_stage import OutputMap
from .stats import EnqueueEvent, EntryStats, KthreadEvent, MapStats
from .steering import MODES, make_program
from .worker import WorkerInfo, batch_handler

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "MODES",
    "QSIZE_MAX",
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_PASS",
    "XDP_REDIRECT",
    "XDP_TX",
    "BrokenTableError",
    "CpuMap",
    "CpuTable",
    "EnqueueEvent",
    "EntryStats",
    "FlowHash",
    "HandlerSetupError",
    "KthreadEvent",
    "LoadError",
    "MapStats",
    "OutputMap",
    "Packet",
    "PacketBatch",
    "RxProducer",
    "Verdict",
    "WorkerInfo",
    "WorkerResult",
    "XdpBatch",
    "XdpContext",
    "batch_handler",
    "load_handler",
    "load_program",
    "make_program",
    "nr_cpus",
    "possible_cpus",
    "redirect_map",
    "vectorized",
]

__version__ = "0.1.0"
