"""A run as data: what ``cpumap run`` was asked to do, checked and resolved, frozen.

``args.py`` turns a command line into a :class:`RunConfig` after every check that needs no
worker (ranges, CPU lists, paths, the user's modules imported once); ``run.py`` and
``build.py`` read it and nothing else.  So the rest of a run never meets an
``argparse.Namespace`` nor a value that changes type on the way (the captures are always
a tuple), and a test can build a run from a literal.

The records are grouped by who reads them: where frames come from (:class:`SourceConfig`),
what steers them (:class:`ProgramConfig`), what handles them (:class:`HandlerConfig`: the
user's module is loaded here, once), what is shown (:class:`ViewConfig`), and for a
run on a Ray cluster where it goes (:class:`RayConfig`); a run of the kernel's own cpumap
(``--kernel``) adds :class:`KernelConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..cluster.places import Place
    from ..kernel.steering import SteeringSpec

ViewMode = Literal["text", "quiet", "json"]


@dataclass(frozen=True)
class SourceConfig:
    """Where the frames come from: capture files, a live interface, generated traffic, or
    (none of them) the embedded demo capture."""

    captures: tuple[str, ...] = ()  # several only on a Ray cluster
    iface: str | None = None
    generate: int | None = None  # frames to generate
    promiscuous: bool = False  # live: promiscuous mode
    af_xdp: bool = False  # live: through AF_XDP sockets (frames placed in the pool)
    xdp_mode: str = "native"  # --af-xdp: where the redirect program runs (native, skb)
    queues: tuple[int, ...] | None = None  # --af-xdp: RX queues (None: every one)
    skip_bad: bool = False  # captures: skip damaged records instead of failing
    lossless: bool = True  # full rings make the RX side wait (False: drop, as the kernel)
    poll: int = 1024  # frames per RX poll

    @property
    def demo(self) -> bool:
        """No source given: the embedded demo capture."""
        return not self.captures and self.iface is None and self.generate is None


@dataclass(frozen=True)
class ProgramConfig:
    """The steering program on the RX side, and the second stage on each target CPU."""

    name: str = "l4-hash"  # a built-in program or module:function
    vectorized: bool = True  # False: --per-frame
    options: tuple[tuple[str, Any], ...] = ()  # a built-in mode's options, by keyword
    remote_action: str = "disabled"  # xdp-bench's --remote-action

    @property
    def user(self) -> bool:
        """The user's own ``module:function``."""
        return ":" in self.name


@dataclass(frozen=True)
class HandlerConfig:
    """The handler every worker runs, loaded and checked."""

    name: str = "flow-table"  # as given: flow-table, count, or module:function
    # What the workers call: a built-in sink, the user's loaded object, chained with the
    # capture writer for --write.  On a Ray cluster a module:function stays its spec: it
    # is loaded on each entry's node.
    handler: Any = None
    setup_timeout: float = 60.0  # --setup-timeout: MapOptions.setup_timeout


@dataclass(frozen=True)
class ViewConfig:
    """What a run shows while it runs and at the end."""

    mode: ViewMode = "text"  # text: a live view on a terminal, then the summary
    interval: float = 2.0  # seconds between live updates / JSON interval records
    extended: bool = False  # -e: per-producer rows
    top: int = 10  # flows listed by the flow table's summary
    metrics_port: int | None = None  # serve Prometheus metrics here


@dataclass(frozen=True)
class RayConfig:
    """A run whose entries are Ray actors (``--ray``)."""

    address: str  # auto, local, or a cluster's address
    entries: tuple[Place, ...] | None = None  # -c/--cpus's ``node:cpu`` (None: every CPU)
    source_nodes: tuple[tuple[str, str], ...] = ()  # (file, node): read that file there


@dataclass(frozen=True)
class KernelConfig:
    """``--kernel``: the kernel's own cpumap steering ``--iface``, as ``xdp-bench
    redirect-cpu`` sets it up (the mode and CPUs are the run's ``program`` and ``cpus``)."""

    spec: SteeringSpec  # the steering program as the eBPF form takes it, checked
    xdp_mode: str = "native"  # -m: where the steering program runs (native, skb)
    remote_action: str = "pass"  # each entry's second stage: drop, pass, redirect
    redirect_device: str | None = None  # --redirect-device: where "redirect" sends frames


@dataclass(frozen=True)
class RunConfig:
    """Everything ``cpumap run`` was asked to do, checked."""

    source: SourceConfig = field(default_factory=SourceConfig)
    program: ProgramConfig = field(default_factory=ProgramConfig)
    handler: HandlerConfig = field(default_factory=HandlerConfig)
    cpus: tuple[int, ...] = ()  # the entries' CPUs (a local run)
    rx_cpu: int | None = None  # the CPU the RX side is pinned to (a local run)
    qsize: int = 2048  # ring size per entry
    batch: int = 1024  # frames per worker batch
    duration: float | None = None  # stop after this many seconds
    write: Path | None = None  # per-CPU capture files go here
    merge: Path | None = None  # ... and are merged into this one
    view: ViewConfig = field(default_factory=ViewConfig)
    ray: RayConfig | None = None  # set: the entries run on a Ray cluster
    kernel: KernelConfig | None = None  # set: the kernel's cpumap on --iface (--kernel)
