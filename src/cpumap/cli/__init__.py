"""The ``cpumap`` command: steer a capture, a live interface or generated traffic over CPUs.

    cpumap run                         # the embedded demo capture, over every CPU
    cpumap trace.pcapng -c 1 -c 2 --program l4-hash --write out/
    cpumap run --iface eth0 --duration 10 --lossy -e
    cpumap run --generate 1000000 --handler mymod:handle --json
    cpumap bench --quick                # every side in one run: a table of ratios
    cpumap gen --iface veth0 --count 10000000   # frames out of an interface (root)

Modules, in the order a run meets them: ``args`` (the grammar, and every check that needs
no worker, ending in a frozen ``config.RunConfig``), ``build`` (engine objects and the
source from the configuration), ``run`` (feeding, ending well), ``cluster`` (the same run
on a Ray cluster), ``report`` (the run's one frozen ``RunReport``: the notes, the exit
status, the JSON summary), ``view`` (pure renderers: the live view and the summary),
``errors`` (the exit statuses and the errors that end a run early), ``output`` (stdout
guarded, the ``--write`` directory claimed, the merge written whole); ``gen`` is ``cpumap
gen``, grammar and all (a traffic generator, beside the run).  ``docs/cli.md``
documents the exit statuses, the ``--json`` schema and the live view's fields.

Rule 1: the only package that knows about argparse and rich; the engine never prints.
Rule 2: every argument is checked before a worker, a segment or a file exists (a bad one
is a :class:`UsageError`: one line on stderr, exit status 2, no traceback); nothing after
``args`` sees the ``argparse.Namespace``.
Rule 3: what is shown is a pure function of records (``view`` of samples and of the
``RunReport``), so a test renders a fixed input to fixed text; only ``run`` reads the
clock and the map.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from .args import build_parser, normalize_argv, parse_cpus, run_config
from .errors import EXIT_TABLE, ExitStatus, SetupError, UsageError, os_error_text
from .output import claimed_by_another, reopen_closed_std_fds, taken

__all__ = [
    "EXIT_TABLE",
    "ExitStatus",
    "UsageError",
    "build_parser",
    "main",
    "parse_cpus",
]

PLAIN_WIDTH = 1000  # columns when stdout is not a terminal: a log or a pipe cuts nothing


def default_console() -> Console:
    """A console for stdout: the terminal's width there, full-width plain text elsewhere.

    No emoji codes: nothing we print is one, an IPv6 endpoint could read as one, and the
    first print would load rich's table of them (~10 ms of a run's start)."""
    c = Console(emoji=False)
    return c if c.is_terminal else Console(width=PLAIN_WIDTH, no_color=True, emoji=False)


def stdout_or_stderr() -> None:
    """``cpumap run >&-``: with stdout closed, the run's output (the summary, the JSON
    lines) goes to stderr, so that how it ended is still said somewhere."""
    if reopen_closed_std_fds():
        sys.stdout = sys.stderr
        print("cpumap: stdout is closed: the output goes to stderr", file=sys.stderr)


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """The ``cpumap`` command: its exit status.  ``argv`` None: the command itself (its
    arguments from ``sys.argv``; the process ends when this returns)."""
    if argv is None:
        stdout_or_stderr()
        status = command(normalize_argv(sys.argv[1:]), console)
        sys.stdout.flush()
        leave_the_heap_alone()
        return status
    return command(normalize_argv(argv), console)


def leave_the_heap_alone() -> None:
    """Spare the interpreter's teardown its garbage collections: the process is ending.

    Why it is safe: the command has released what it holds by now -- the map closed (its
    workers reaped, their results in), the source and every output file closed, stdout
    flushed.  What is left is Python's own finalization, whose collections walk every
    object of every module: ~50 ms of a 0.3 s run (``benchmarks/bench_startup.py``,
    "exit").  ``gc.freeze()`` moves them out of the collector's sight; atexit handlers
    still run, every module is still torn down and every object that is not in a
    reference cycle still finalized.  Only cyclic garbage still alive at exit is left
    uncollected -- Python does not promise its finalizers at exit either -- and the kernel
    takes back the memory, a map's shared memory with it (a memfd: no name to unlink)."""
    gc.freeze()


def command(argv: list[str], console: Console | None) -> int:
    """``cpumap`` with ``argv`` (normalized): the subcommand's exit status."""
    if argv[0] == "bench":  # the checkout's benchmarks/ suite, with its own grammar
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv[0] == "gen":  # the traffic generator, with its own grammar
        from .gen import main as gen_main

        return gen_main(argv[1:])
    console = console or default_console()
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        try:
            config = run_config(args)
        except OSError as e:  # a path that cannot even be looked at: too long, no access
            raise UsageError(os_error_text(e)) from None
        except UsageError:
            write = getattr(args, "write", None)
            if write and claimed_by_another(Path(write)):  # its files are not "earlier"
                raise taken(Path(write)) from None
            raise
        if config.kernel is not None:  # the kernel's own cpumap: its eBPF side loads only then
            from .kernel_run import run_kernel

            return run_kernel(config, console)
        # Imported here: what a run needs (the engine, the source) is not what `--help`,
        # a usage error or the other subcommands need (tests/test_imports.py).
        from .run import run as run_command

        return run_command(config, console)
    except UsageError as e:
        ap.exit(ExitStatus.USAGE, f"cpumap: error: {e}\n")
    except SetupError as e:  # a handler's setup() raised: nothing ran
        print(f"cpumap: error: {e}", file=sys.stderr)
        return ExitStatus.USER_ERROR
    except KeyboardInterrupt:  # Ctrl-C where Python's own handler is in place (--ray)
        print("cpumap: interrupted: stopped at once, no summary", file=sys.stderr)
        return ExitStatus.SIGINT


if __name__ == "__main__":
    sys.exit(main())
