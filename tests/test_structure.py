"""The tree's structure, checked on the package's own source (``src/cpumap``, by its AST).

* No import cycle among the package's modules.  Every import counts, one inside a function
  included; an import under ``if TYPE_CHECKING:`` does not (it never runs).
* No reach into another object's privates: no ``obj._name`` where ``obj`` is not ``self``
  or ``cls``, and no ``from module import _name`` (the compiled ``_atomics`` and
  ``_records`` modules are the package's, not a module's privates).
* No module over 800 lines.
* Data flows down: a module imports only from its own layer or the layers below it
  (:data:`LAYERS`, the rules each package's ``__init__`` states).
* No function takes more than :data:`MAX_PARAMETERS` parameters (``self``/``cls`` not
  counted), but the constructors of the classes a user builds (what a module or package
  exports in its ``__all__``: ``Generator``, ``LiveSource``, ``L4Filter``...), whose
  keywords are their options: elsewhere, loose values travel as one record.
* No message between processes is a dict: what goes through ``send`` is a typed record
  (a frozen dataclass), read by its fields, not by string keys.

Each check reports every offence it finds, with file and line, and each is shown to fail
on a small tree of offending modules (``test_*_is_caught``).
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import cpumap

PACKAGE_DIR = Path(cpumap.__file__).resolve().parent
MAX_LINES = 800
MAX_PARAMETERS = 8
ALLOWED_PRIVATE_IMPORTS = frozenset({"_atomics", "_records"})

# Top to bottom: a module may import from its own layer and from any layer below it.  A
# module belongs to the entry naming the longest prefix of its dotted name.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cpumap",),  # the face: re-exports everything
    ("cpumap.cli",),  # the commands: `cpumap run`, `cpumap bench`
    ("cpumap.cluster",),  # the map's entries on a Ray cluster: over the engine and sinks
    ("cpumap.metrics", "cpumap.sinks", "cpumap.demo"),
    # The engine's process layer: the map, its entries, workers and producers.
    (
        "cpumap.engine",
        "cpumap.engine.map",
        "cpumap.engine.entry",
        "cpumap.engine.supervisor",
        "cpumap.engine.watcher",
        "cpumap.engine.worker",
        "cpumap.engine.messages",
        "cpumap.engine.second_stage",
        "cpumap.engine.rx",
        "cpumap.engine.stats",
        "cpumap.engine.report",
    ),
    ("cpumap.programs",),  # user code and how it is called
    # The engine's shared-memory layer: no process, no user code.
    (
        "cpumap.engine.ownership",
        "cpumap.engine.control",
        "cpumap.engine.bulkq",
        "cpumap.engine.ring",
        "cpumap.engine.rcu",
        "cpumap.engine.counters",
        "cpumap.engine.frame_pool",
        "cpumap.engine.pids",
    ),
    ("cpumap.skb", "cpumap.capture", "cpumap.live", "cpumap.generator", "cpumap.kernel"),
    (
        "cpumap.packets",
        "cpumap.abi",
        "cpumap.cpus",
        "cpumap.errors",
        "cpumap.closing",
        "cpumap.map_errors",
        "cpumap.lazy",
        "cpumap.shm",
        "cpumap._atomics",
        "cpumap._records",
    ),
)


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "cpumap.engine.rx"
    path: Path
    is_package: bool  # an __init__.py


def modules(root: Path, package: str) -> dict[str, Module]:
    """Every module under ``root`` (the directory of ``package``): its Python modules, and
    its compiled ones (by their C source: they import nothing of the package)."""
    out = {}
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.c")]):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join([package, *parts])
        out[name] = Module(name, path, is_package)
    return out


def python(known: dict[str, Module]) -> list[Module]:
    return [m for m in known.values() if m.path.suffix == ".py"]


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # a module of the package
    names: tuple[str, ...]  # for "from X import a, b"


def imports(mod: Module, known: dict[str, Module]) -> Iterator[Import]:
    """The package's modules that ``mod`` imports (TYPE_CHECKING imports excepted)."""
    tree = ast.parse(mod.path.read_text(), str(mod.path))
    skip = _type_checking_lines(tree)
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield Import(node.lineno, alias.name, ())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names = tuple(a.name for a in node.names)
            submodules = [f"{source}.{n}" for n in names if f"{source}.{n}" in known]
            if submodules:
                for sub in submodules:
                    yield Import(node.lineno, sub, ())
            if source in known and len(submodules) < len(names):
                yield Import(node.lineno, source, names)


def import_graph(known: dict[str, Module]) -> dict[str, set[str]]:
    return {m.name: {i.target for i in imports(m, known)} - {m.name} for m in python(known)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_reaches(mod: Module) -> Iterator[str]:
    """``obj._name`` with ``obj`` not ``self``/``cls``, and imports of private names."""
    tree = ast.parse(mod.path.read_text(), str(mod.path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Name) and owner.id == "os" and name == "_exit":
                continue  # os._exit is the documented exit-without-cleanup
            yield f"{mod.path}:{node.lineno}: {ast.unparse(node)}"
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and alias.name not in ALLOWED_PRIVATE_IMPORTS:
                    yield f"{mod.path}:{node.lineno}: from {node.module} import {alias.name}"


def long_modules(known: dict[str, Module], limit: int = MAX_LINES) -> list[str]:
    out = []
    for m in python(known):
        n = len(m.path.read_text().splitlines())
        if n > limit:
            out.append(f"{m.path}: {n} lines (limit {limit})")
    return out


def exported_names(known: dict[str, Module]) -> frozenset[str]:
    """Every name some module or package of the tree exports (its ``__all__``)."""
    names: set[str] = set()
    for m in python(known):
        for node in ast.parse(m.path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                names.update(ast.literal_eval(node.value))
    return frozenset(names)


def parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return sum(1 for n in names if n not in ("self", "cls"))


def long_signatures(mod: Module, exported: frozenset[str]) -> Iterator[str]:
    """Functions of more than MAX_PARAMETERS parameters, but user-facing constructors."""
    tree = ast.parse(mod.path.read_text(), str(mod.path))
    allowed = {
        id(fn)
        for cls in ast.walk(tree)
        if isinstance(cls, ast.ClassDef) and cls.name in exported
        for fn in cls.body
        if isinstance(fn, ast.FunctionDef) and fn.name == "__init__"
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and id(node) not in allowed:
            n = parameter_count(node)
            if n > MAX_PARAMETERS:
                yield f"{mod.path}:{node.lineno}: {node.name} takes {n} parameters"


def dict_messages(mod: Module) -> Iterator[str]:
    """``x.send(...)`` of a dict display or a ``dict(...)`` call."""
    tree = ast.parse(mod.path.read_text(), str(mod.path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "send"
            and node.args
        ):
            arg = node.args[0]
            is_dict_call = (
                isinstance(arg, ast.Call)
                and isinstance(arg.func, ast.Name)
                and arg.func.id == "dict"
            )
            if isinstance(arg, ast.Dict | ast.DictComp) or is_dict_call:
                yield f"{mod.path}:{node.lineno}: sends a dict: {ast.unparse(node)[:60]}"


def layer_of(name: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int:
    best, depth = -1, -1
    for i, prefixes in enumerate(layers):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    assert best >= 0, f"{name} is in no layer: add it to LAYERS"
    return best


def upward_imports(known: dict[str, Module], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    out = []
    for m in python(known):
        name = m.name
        here = layer_of(name, layers)
        for imp in imports(m, known):
            if layer_of(imp.target, layers) < here:
                out.append(f"{m.path}:{imp.line}: {name} imports {imp.target}, a layer above it")
    return out


# -- the checks on the package ------------------------------------------------------------
KNOWN = modules(PACKAGE_DIR, "cpumap")


def test_the_package_has_its_subpackages() -> None:
    for sub in ("engine", "programs", "skb", "capture", "live", "kernel"):
        assert KNOWN[f"cpumap.{sub}"].is_package, sub


def test_no_import_cycle() -> None:
    assert cycles(import_graph(KNOWN)) == []


def test_no_reach_into_another_objects_privates() -> None:
    found = [r for m in python(KNOWN) for r in private_reaches(m)]
    assert found == []


def test_no_module_is_over_800_lines() -> None:
    assert long_modules(KNOWN) == []


def test_data_flows_down_the_layers() -> None:
    assert upward_imports(KNOWN, LAYERS) == []


def test_no_function_takes_more_than_8_parameters() -> None:
    exported = exported_names(KNOWN)
    found = [r for m in python(KNOWN) for r in long_signatures(m, exported)]
    assert found == []


def test_no_message_between_processes_is_a_dict() -> None:
    found = [r for m in python(KNOWN) for r in dict_messages(m)]
    assert found == []


def test_every_package_states_its_rules() -> None:
    for m in python(KNOWN):
        if m.is_package:
            doc = ast.get_docstring(ast.parse(m.path.read_text())) or ""
            assert "Rule" in doc, f"{m.path}: the package's __init__ states no rule"


# -- each check fails on a tree that breaks it ------------------------------------------------
@pytest.fixture
def bad_tree(tmp_path: Path) -> dict[str, Module]:
    files = {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from . import d  # not a cycle: never runs
            def later():
                from .c import thing  # a cycle all the same
            """,
        "c.py": "from .a import x\nthing = 1\n",
        "d.py": "from . import b\n",
        "e.py": """
            from .c import _hidden
            def f(other):
                self_ok = self._fine if False else None
                return other._secret
            """,
        "big.py": "x = 1\n" * 801,
        "wide.py": """
            __all__ = []
            def loose(a, b, c, d, e, f, g, h, i): ...
            def fine(self, a, b, c, d, e, f, g, h): ...
            class Options:
                def __init__(self, a, b, c, d, e, f, g, h, i): ...
            class Hidden:
                def __init__(self, a, b, c, d, e, f, g, h, i): ...
            def send_all(conn):
                conn.send({"ready": True})
                conn.send(dict(error="x"))
                conn.send(Ready(pinned=True))
            """,
        "low/__init__.py": "__all__ = ['Options']\n",
        "low/leaf.py": "from ..a import b\n",
    }
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return modules(tmp_path / "pkg", "pkg")


def test_a_cycle_through_a_function_level_import_is_caught(bad_tree: dict[str, Module]) -> None:
    assert cycles(import_graph(bad_tree)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_a_reach_into_privates_is_caught(bad_tree: dict[str, Module]) -> None:
    found = list(private_reaches(bad_tree["pkg.e"]))
    assert [f.split(": ", 1)[1] for f in found] == ["from c import _hidden", "other._secret"]


def test_a_long_module_is_caught(bad_tree: dict[str, Module]) -> None:
    assert [f.split(": ", 1)[1] for f in long_modules(bad_tree)] == ["801 lines (limit 800)"]


def test_an_upward_import_is_caught(bad_tree: dict[str, Module]) -> None:
    layers = (("pkg",), ("pkg.low",))
    found = upward_imports(bad_tree, layers)
    assert [f.split(": ", 1)[1] for f in found] == ["pkg.low.leaf imports pkg.a, a layer above it"]


def test_a_long_signature_is_caught(bad_tree: dict[str, Module]) -> None:
    found = list(long_signatures(bad_tree["pkg.wide"], exported_names(bad_tree)))
    assert [f.split(": ", 1)[1] for f in found] == [
        "loose takes 9 parameters",
        "__init__ takes 9 parameters",  # Hidden's: no package exports it
    ]


def test_a_dict_message_is_caught(bad_tree: dict[str, Module]) -> None:
    found = [f.split(": ", 1)[1] for f in dict_messages(bad_tree["pkg.wide"])]
    assert found == [
        "sends a dict: conn.send({'ready': True})",
        "sends a dict: conn.send(dict(error='x'))",
    ]
