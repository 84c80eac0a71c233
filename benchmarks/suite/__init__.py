"""``cpumap bench``: every side measured in one run, printed as a table of ratios.

One command runs, on the same frames and in the same process: the kernel's cpumap (where
root and bpf(2) allow), our engine in its four shapes, the Python pipelines a user would
write without us (``multiprocessing.Queue``, faster-fifo, pyzmq), single-process loops
(Skb, dpkt), the main job (``cpumap run`` on a generated capture) against tshark and a
dpkt script, and the live path (as root: one offered load on a veth through TPACKET_V3,
AF_XDP and the kernel's cpumap).  Every figure is a median of several runs within the
run, and every ratio is against a baseline measured in the same run: the machines are
shared and noisy, so only ratios mean something.  A side that cannot run here (no root, a
package that did not install, no tshark) is a row with a reason, not a failure.

Rules: this package lives outside ``cpumap`` (in ``benchmarks/``, beside the other
benchmark scripts, which import from it), and uses the package only through its
importable modules, as a user's script would: it drives the engine, the kernel runner and
``cpumap run`` as a subprocess, and nothing in ``cpumap`` imports it (``cpumap bench``
runs ``benchmarks/bench_all.py`` from a source checkout: ``cpumap/cli/bench.py``).
Nothing here is asserted: the goals are printed as met or not met, with the numbers.

Run it as ``python benchmarks/bench_all.py [--quick]`` or ``cpumap bench [--quick]``; a
script in ``benchmarks/`` imports it as ``suite`` (its own directory is on ``sys.path``).

Modules: ``common`` (frames, timing, the result rows), ``ours`` (the engine), ``python_side``
(pipelines and single-process loops), ``kernel`` (the kernel's cpumap), ``main_job`` (the
capture, ``cpumap run``, tshark, dpkt), ``rss`` (memory over many frames), ``live`` (the
live path, from the kernel traffic generator to a handler), ``report`` (the table, the
goals, JSON, the plot), ``runner`` (:func:`main`).
"""

from .runner import main

__all__ = ["main"]
