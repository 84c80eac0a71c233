"""The import discipline that keeps ``cpumap run FILE`` cheap to start.

* ``import cpumap.cli`` and parsing a capture run's arguments import nothing of the live
  interfaces, the kernel's bpf(2) layer, the cluster, the generator, Ray or matplotlib.
* A whole capture run (the demo, ``--quiet``) imports none of them either.
* Every package's re-exports are imported on first use (``cpumap/lazy.py``): each name of
  its ``__all__`` resolves, its lazy table and its ``TYPE_CHECKING`` imports list the same
  names from the same modules, and an unknown name is an ``AttributeError``.

Checked in a fresh interpreter (``sys.modules`` of this one holds whatever other tests
imported).  No timing is asserted: ``benchmarks/bench_startup.py`` measures what it saves.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cpumap

PACKAGE_DIR = Path(cpumap.__file__).resolve().parent
DEMO = PACKAGE_DIR / "data" / "demo.pcapng"

# What a capture run must not pay for.
NOT_FOR_A_CAPTURE_RUN = (
    "cpumap.live",
    "cpumap.kernel",
    "cpumap.cluster",
    "cpumap.generator",
    "ray",
    "matplotlib",
)

LAZY_PACKAGES = (
    "cpumap",
    "cpumap.engine",
    "cpumap.programs",
    "cpumap.skb",
    "cpumap.capture",
    "cpumap.live",
    "cpumap.kernel",
    "cpumap.cluster",
)


def imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def offenders(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules if any(m == p or m.startswith(p + ".") for p in NOT_FOR_A_CAPTURE_RUN)
    )


def test_parsing_a_capture_run_imports_no_live_kernel_cluster_or_generator() -> None:
    modules = imported_after(
        "import cpumap.cli\n"
        "from cpumap.cli.args import build_parser, normalize_argv, run_config\n"
        f"argv = normalize_argv(['run', {str(DEMO)!r}, '--quiet', '-p', 'l4-hash'])\n"
        "config = run_config(build_parser().parse_args(argv))\n"
        "assert config.source.captures, config\n"
    )
    assert "cpumap.cli.args" in modules  # the check can see what was imported
    assert offenders(modules) == []


@pytest.mark.xfail(
    strict=True,
    reason="cli/build.py and demo.py import the generator, live/ and kernel.xdp at module "
    "level; the lazy imports are handed to their owner (remove this mark with them)",
)
def test_a_whole_capture_run_imports_no_live_kernel_cluster_or_generator() -> None:
    modules = imported_after(
        "import contextlib, io, cpumap.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert cpumap.cli.main(['run', {str(DEMO)!r}, '--quiet']) == 0\n"
    )
    assert "cpumap.engine.map" in modules  # it did run
    assert offenders(modules) == []


def test_a_runs_output_loads_no_emoji_table() -> None:
    """The command's console has emoji codes off: its first print loaded rich's table of
    them (and an IPv6 endpoint could read as a code)."""
    modules = imported_after(
        "import cpumap.cli, sys\n"
        f"sys.argv = ['cpumap', 'run', {str(DEMO)!r}, '--quiet']\n"
        "assert cpumap.cli.main() == 0\n"
    )
    assert "rich.console" in modules and "cpumap.engine.map" in modules
    assert "rich._emoji_codes" not in modules


def test_import_cpumap_alone_imports_none_of_its_subpackages() -> None:
    modules = imported_after("import cpumap")
    ours = {m for m in modules if m.startswith("cpumap.")}
    assert ours <= {"cpumap.lazy"}, sorted(ours)


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
    assert set(mod.__all__) <= set(dir(mod))


def test_a_lazy_name_is_looked_up_once_then_is_a_plain_global() -> None:
    modules = imported_after(
        "import cpumap, sys\n"
        "assert 'CpuMap' not in vars(cpumap) and 'cpumap.engine.map' not in sys.modules\n"
        "from cpumap import CpuMap\n"
        "assert vars(cpumap)['CpuMap'] is CpuMap is sys.modules['cpumap.engine.map'].CpuMap\n"
    )
    assert "cpumap.engine.map" in modules


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_an_unknown_name_is_an_attribute_error(package: str) -> None:
    mod = importlib.import_module(package)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = mod.no_such_name
    assert not hasattr(mod, "no_such_name")


def type_checking_imports(tree: ast.Module) -> dict[str, str]:
    """``name -> module`` of the imports under the module's ``if TYPE_CHECKING:``."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.unparse(stmt)
                for alias in stmt.names:
                    found[alias.asname or alias.name] = "." * stmt.level + (stmt.module or "")
    return found


def lazy_table(tree: ast.Module) -> dict[str, str]:
    """The table handed to ``lazy_exports(globals(), {...})``."""
    for node in tree.body:
        call = node.value if isinstance(node, ast.Assign) else None
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "lazy_exports":
            return ast.literal_eval(call.args[1])
    raise AssertionError("no lazy_exports(...) table")


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_the_lazy_table_lists_what_type_checkers_see(package: str) -> None:
    rel = package.split(".")[1:]
    path = PACKAGE_DIR.joinpath(*rel, "__init__.py")
    tree = ast.parse(path.read_text())
    table = lazy_table(tree)
    assert table == type_checking_imports(tree)
    exported = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "__all__"
    )
    assert set(exported) <= set(table)
