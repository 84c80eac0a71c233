"""Ray itself: joining or starting a cluster, and naming its nodes.

:func:`connect` is what ``--ray auto|ADDRESS`` means:

* ``"auto"``: join the cluster this machine already belongs to (``ray start`` ran here --
  with its own ``--temp-dir`` too -- or ``RAY_ADDRESS`` is set); when there is none, start
  a local instance in this process --
  the embedded default that works on one machine with no set-up.  A local instance gets
  Ray's dashboard when ``ray[default]`` is installed (``cpumap[cluster]``), as usual, and
  listens on 127.0.0.1 only when Ray was not yet imported (no other host needs it).
* ``"local"``: always start a local instance (tests; ``loopback`` makes every one of its
  services listen on 127.0.0.1 only).
* an address (``"10.0.0.5:6379"``, ``"ray://head:10001"``): join that cluster.

:class:`RaySession` shuts down only what it started: joining a cluster leaves it running.

Loopback: Ray replaces ``127.0.0.1`` given as a node address by the host's routable one
(so that other hosts can reach it).  It keeps the loopback address when clusters are
disabled for the platform, the switch ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` it reads
when it is first imported; :func:`use_loopback` sets it, and must run before Ray is
imported (the tests' conftest of ``tests/cluster`` does).

Nodes are named by :func:`resolve_node`, in this order: the value of a node's
``cpumap.node`` label (``ray start --labels='{"cpumap.node": "edge1"}'``), ``head`` (the
head node), a decimal index into :func:`cluster_nodes` (the head first, then by node ID), a
node-ID prefix of 6 hex digits or more, or a node's address when only one node has it.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..closing import Closing

LABEL = "cpumap.node"  # the node label that names a node for cpumap
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def use_loopback() -> None:
    """Make Ray started from this process keep 127.0.0.1 as its nodes' address (see the
    module docstring).  Must be called before ``import ray``."""
    os.environ[_LOOPBACK_SWITCH] = "0"


@dataclass(frozen=True)
class NodeInfo:
    """One alive Ray node, as cpumap names it."""

    node_id: str
    index: int
    address: str
    is_head: bool
    label: str | None
    cpus: float  # Ray's logical CPUs on it
    labels: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """The name reports use: its label, else ``head``, else its index."""
        if self.label:
            return self.label
        return "head" if self.is_head else str(self.index)


def cluster_nodes() -> list[NodeInfo]:
    """The alive nodes of the connected cluster: the head first, then by node ID."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    alive.sort(key=lambda n: ("node:__internal_head__" not in n["Resources"], n["NodeID"]))
    return [
        NodeInfo(
            node_id=n["NodeID"],
            index=i,
            address=n["NodeManagerAddress"],
            is_head="node:__internal_head__" in n["Resources"],
            label=(n.get("Labels") or {}).get(LABEL),
            cpus=float(n["Resources"].get("CPU", 0.0)),
            labels=dict(n.get("Labels") or {}),
        )
        for i, n in enumerate(alive)
    ]


def current_node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def resolve_node(name: str, nodes: list[NodeInfo]) -> NodeInfo:
    """The node ``name`` names (module docstring); ``""`` is the driver's own node.

    Raises ``OSError(ENODEV)`` when no alive node has that name, ``OSError(EINVAL)``
    when it is ambiguous (two nodes with one label or address, a short ID prefix)."""
    if name == "":
        me = current_node_id()
        for n in nodes:
            if n.node_id == me:
                return n
        raise OSError(errno.ENODEV, "the driver's node is not among the alive nodes")
    tiers = (
        [n for n in nodes if n.label == name],
        [n for n in nodes if n.is_head] if name == "head" else [],
        [n for n in nodes if name.isdecimal() and n.index == int(name)],
        [n for n in nodes if re.fullmatch(r"[0-9a-f]{6,}", name) and n.node_id.startswith(name)],
        [n for n in nodes if n.address == name],
    )
    for found in tiers:
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            ids = ", ".join(n.node_id[:8] for n in found)
            raise OSError(errno.EINVAL, f"node name {name!r} is ambiguous: nodes {ids}")
    known = ", ".join(n.name for n in nodes)
    raise OSError(errno.ENODEV, f"no alive Ray node named {name!r} (nodes: {known})")


def node_cpus(node: NodeInfo, timeout: float = 60.0) -> frozenset[int]:
    """The CPUs a process on ``node`` may run on (``os.sched_getaffinity`` in a task
    there): what an entry on that node may be pinned to.  Ray's ``CPU`` resource is a
    logical count, not this."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_affinity)
    ref = probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
    ).remote()
    return frozenset(ray.get(ref, timeout=timeout))


def _affinity() -> list[int]:
    return sorted(os.sched_getaffinity(0))


class RaySession(Closing):
    """A connection to Ray for the length of a ``with`` block (see :func:`connect`)."""

    def __init__(self, started: bool, address: str) -> None:
        self.started = started  # this session started the instance: it shuts it down
        self.address = address

    def close(self) -> None:
        """Disconnect; a local instance this session started is shut down with it."""
        import ray

        if ray.is_initialized():
            ray.shutdown()


def connect(
    address: str = "auto",
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    loopback: bool | None = None,
    dashboard: bool | None = None,
    **init_options: Any,
) -> RaySession:
    """Join or start Ray (``address``: ``auto``, ``local`` or a cluster's address; see the
    module docstring).  ``num_cpus`` and ``object_store_memory`` size a local instance;
    ``loopback`` binds it to 127.0.0.1 (None: when Ray is not imported yet, so that the
    switch can still be set; otherwise call :func:`use_loopback` before importing Ray);
    ``dashboard``: whether a local instance starts the dashboard (None: Ray's default).

    Already connected (``ray.is_initialized()``): the session uses that connection and
    leaves it open."""
    if address == "auto" and not _cluster_here():
        address = "local"
    if address == "local" and loopback is None:
        loopback = "ray" not in sys.modules
    if address == "local" and loopback and "ray" not in sys.modules:
        use_loopback()
    import ray

    if ray.is_initialized():
        return _Borrowed(address)
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    options.update(init_options)
    if address not in ("auto", "local"):
        ray.init(address=address, **options)
        return RaySession(False, address)
    if address == "auto":
        try:
            ray.init(address="auto", **options)
            return RaySession(False, "auto")
        except ConnectionError:
            pass  # no cluster here: start one, below
    local: dict[str, Any] = dict(options)
    if num_cpus is not None:
        local["num_cpus"] = num_cpus
    if object_store_memory is not None:
        local["object_store_memory"] = object_store_memory
    if dashboard is not None:
        local["include_dashboard"] = dashboard
    if loopback:
        local["_node_ip_address"] = "127.0.0.1"
    ray.init(address="local", **local)  # a new instance, whatever an address file says
    return RaySession(True, "local")


def _cluster_here() -> bool:
    """Whether ``ray.init(address="auto")`` has a cluster to find: ``RAY_ADDRESS``; the
    address file ``ray start`` leaves in Ray's default temporary directory; or, for a
    cluster started with its own ``--temp-dir`` (whose address file is there instead), a
    raylet of ``ray start`` running on this machine -- what Ray's ``auto`` looks for."""
    if os.environ.get("RAY_ADDRESS"):
        return True
    if _answers(ray_temp_dir() / "ray_current_cluster"):
        return True
    return bool(raylets_here())


def _answers(address_file: Path, timeout: float = 1.0) -> bool:
    """Whether the cluster an address file names is there: its GCS accepts a connection.
    A file a crashed cluster left behind names nothing that listens; Ray's ``auto``
    would wait on it for minutes, where a run should start its own instance."""
    try:
        host, _, port = address_file.read_text().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def ray_temp_dir() -> Path:
    """Ray's default temporary directory, by Ray's rule: ``$RAY_TMPDIR``, else ``$TMPDIR``,
    else ``/tmp``; then ``ray``."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / "ray"


def raylets_here() -> list[int]:
    """The pids of the raylets of started clusters running on this machine (a node each):
    a process whose executable is named ``raylet`` and that was given a ``--gcs-address``
    (as Ray's ``auto`` finds them), whose own ``--temp_dir`` holds the address file that
    ``ray start`` writes there.  A program's own local instance (``ray.init()``) writes
    none: ``auto`` must not join it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdecimal():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        temp_dir = _raylet_temp_dir(argv)
        if temp_dir is not None and (temp_dir / "ray_current_cluster").exists():
            found.append(int(entry.name))
    return found


def _raylet_temp_dir(argv: list[bytes]) -> Path | None:
    """The ``--temp_dir`` of a raylet's command line (None: not a raylet's)."""
    if b"raylet" not in os.path.basename(argv[0]):
        return None
    if not any(b"--gcs-address=" in a or b"--gcs_address=" in a for a in argv):
        return None
    for a in argv:
        if a.startswith(b"--temp_dir="):
            return Path(os.fsdecode(a.partition(b"=")[2]))
    return None


class _Borrowed(RaySession):
    """A connection someone else opened: closing it leaves it open."""

    def __init__(self, address: str) -> None:
        super().__init__(False, address)

    def close(self) -> None:
        return None
