"""Programs and handlers: the code users plug into the engine, and how it is called.

Rule 1: everything about calling user code lives here -- what it is handed (``context``:
the frame's ``xdp_md``, a batch's columns, the skbs of pool frames), what it must be
(``contract``: the program and handler protocols, their marks and hooks), how its return
values and failures become verdicts (``runner``: one path for the RX side and the second
stage), and how it is named on a command line (``loader``).
Rule 2: no process, no ring, no counter: the engine hands in a frame pool and frame
indices, and gets verdicts and keys back.  Redirect targets are anything with
``has_entry(key)`` (``context.RedirectTarget``): a ``CpuMap``, an ``OutputMap``.
Rule 3: the built-in programs are programs like any other: the ``xdp-bench redirect-cpu``
modes and ``FlowHash`` (``steering``), over a CPU table that may change while traffic
flows (``cpu_table``), parsing frames with xdp-tools' helpers (``xdp_parse``) in two forms
that agree frame for frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the same names as the table below (tests/test_imports.py)
    from .context import NO_KEY, RedirectTarget, XdpBatch, XdpContext, redirect_map
    from .contract import WorkerInfo, batch_handler, is_batch_handler, is_vectorized, vectorized
    from .cpu_table import BrokenTableError, CpuTable
    from .loader import LoadError, load_handler, load_object, load_program
    from .runner import ProgramRunner, Verdicts
    from .steering import BUILTIN_PROGRAMS, MODES, FlowHash, Steering, make_program

__all__ = [
    "BUILTIN_PROGRAMS",
    "MODES",
    "NO_KEY",
    "BrokenTableError",
    "CpuTable",
    "FlowHash",
    "LoadError",
    "ProgramRunner",
    "RedirectTarget",
    "Steering",
    "Verdicts",
    "WorkerInfo",
    "XdpBatch",
    "XdpContext",
    "batch_handler",
    "is_batch_handler",
    "is_vectorized",
    "load_handler",
    "load_object",
    "load_program",
    "make_program",
    "redirect_map",
    "vectorized",
]

# Each name is imported from its module when first asked for (cpumap/lazy.py).
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "NO_KEY": ".context",
        "RedirectTarget": ".context",
        "XdpBatch": ".context",
        "XdpContext": ".context",
        "redirect_map": ".context",
        "WorkerInfo": ".contract",
        "batch_handler": ".contract",
        "is_batch_handler": ".contract",
        "is_vectorized": ".contract",
        "vectorized": ".contract",
        "BrokenTableError": ".cpu_table",
        "CpuTable": ".cpu_table",
        "LoadError": ".loader",
        "load_handler": ".loader",
        "load_object": ".loader",
        "load_program": ".loader",
        "ProgramRunner": ".runner",
        "Verdicts": ".runner",
        "BUILTIN_PROGRAMS": ".steering",
        "MODES": ".steering",
        "FlowHash": ".steering",
        "Steering": ".steering",
        "make_program": ".steering",
    },
)
