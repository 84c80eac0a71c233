"""Loading programs and handlers by spec (loader.py), and user programs end to end:
exceptions are XDP_ABORTED and counted, metadata written with adjust_meta reaches the
handler's skb."""

from __future__ import annotations

import itertools
import re
import struct
import textwrap
from pathlib import Path

import pytest

from cpumap import XDP_PASS, CpuMap, possible_cpus
from cpumap.programs.loader import LoadError, load_handler, load_object, load_program
from tests.helpers import flow_batch

CPU = sorted(possible_cpus())[0]
_names = itertools.count()


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a module with a fresh name into a directory on sys.path; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source: str) -> str:
        name = f"user_mod_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return make


@pytest.fixture
def make_file(tmp_path: Path):
    """Write a Python file outside sys.path; returns its path."""

    def make(source: str, name: str = "prog.py") -> str:
        path = tmp_path / "elsewhere" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return str(path)

    return make


PROGRAMS = """
    import cpumap

    def steer(ctx):
        return cpumap.XDP_PASS

    @cpumap.vectorized
    def steer_batch(batch):
        return None

    def steer_map(ctx, *, cmap):
        return cpumap.redirect_map(cmap, 0)

    def two_args(a, b):
        return 0

    def no_args():
        return 0

    LIMIT = 3

    class Counter:
        def __init__(self):
            self.n = 0

        def setup(self, info):
            self.n = 0

        def __call__(self, skb):
            self.n += 1

        def finish(self):
            return self.n

        @staticmethod
        def static(ctx):
            return 2

    class NeedsArgs:
        def __init__(self, x):
            self.x = x

        def __call__(self, ctx):
            return 2
"""


# -- what loads -------------------------------------------------------------------------------
def test_module_and_file_specs(make_module, make_file) -> None:
    mod = make_module(PROGRAMS)
    prog = load_program(f"{mod}:steer")
    assert prog.__name__ == "steer" and prog(None) == XDP_PASS
    assert load_program(f"{mod}:steer_batch").vectorized
    assert load_program(f"{mod}:Counter.static")(None) == 2
    handler = load_handler(f"{mod}:Counter")  # a class: instantiated with no arguments
    assert type(handler).__name__ == "Counter" and handler.n == 0
    path = make_file(PROGRAMS)
    from_file = load_program(f"{path}:steer")
    assert from_file(None) == XDP_PASS
    assert load_object(f"{path}:steer") is from_file  # a file is loaded once
    assert load_object(f"{path}:LIMIT") == 3


def test_marking_vectorized_and_batch(make_module) -> None:
    mod = make_module(PROGRAMS)
    prog = load_program(f"{mod}:steer", vectorized=True)
    assert prog.vectorized is True
    bound = load_program(f"{mod}:Counter", vectorized=True)  # an instance: marked in place
    assert bound.vectorized is True
    method = load_handler(f"{mod}:Counter.static", batch=True)  # a staticmethod: a function
    assert method.batch is True
    handler = load_handler(f"{mod}:Counter", batch=True)
    assert handler.batch is True and hasattr(handler, "finish")
    with pytest.raises(LoadError, match=r"is a vectorized program, but a per-frame one"):
        load_program(f"{mod}:steer_batch", vectorized=False)


def test_bound_methods_are_wrapped_when_marked(make_module) -> None:
    import importlib

    mod = make_module(PROGRAMS)
    counter = importlib.import_module(mod).Counter()
    module = importlib.import_module(mod)
    module.counter_call = counter.__call__  # a bound method cannot carry an attribute
    wrapped = load_handler(f"{mod}:counter_call", batch=True)
    assert wrapped.batch is True
    wrapped("skb")
    assert counter.n == 1


def test_cmap_keyword_is_bound(make_module) -> None:
    mod = make_module(PROGRAMS)
    sentinel = object()
    prog = load_program(f"{mod}:steer_map", cmap=sentinel)
    assert prog.keywords == {"cmap": sentinel}
    msg = f"'{mod}:steer_map' takes the map as its 'cmap' keyword: load it with "
    with pytest.raises(LoadError, match="^" + re.escape(msg)):
        load_program(f"{mod}:steer_map")


# -- errors that say what to do ----------------------------------------------------------------
@pytest.mark.parametrize("spec", ["steer", "mod:", ":steer", ""])
def test_malformed_spec(spec: str) -> None:
    msg = f"{spec!r}: expected 'module:function' or 'path/to/file.py:function'"
    with pytest.raises(LoadError, match="^" + re.escape(msg) + "$"):
        load_program(spec)


def test_a_builtin_mode_name_says_where_builtins_are() -> None:
    with pytest.raises(
        LoadError, match=r"'l4-hash' is a built-in steering mode: cpumap\.make_program"
    ):
        load_program("l4-hash")


def test_attribute_must_be_a_name() -> None:
    with pytest.raises(
        LoadError, match=r"^'os:1x': '1x' is not a Python name \(or dotted names\)$"
    ):
        load_program("os:1x")


def test_missing_module() -> None:
    msg = (
        "'no_such_module_zz:f': no module named 'no_such_module_zz' (install it, or put its "
        "directory on PYTHONPATH; for a file, give its path ending in .py)"
    )
    with pytest.raises(LoadError, match="^" + re.escape(msg) + "$"):
        load_program("no_such_module_zz:f")
    with pytest.raises(
        LoadError, match=r"^'no_such_pkg_zz\.sub:f': no module named 'no_such_pkg_zz'"
    ):
        load_program("no_such_pkg_zz.sub:f")


def test_import_failures_are_chained(make_module) -> None:
    dep = make_module("import no_such_dependency_zz\n")
    with pytest.raises(LoadError) as e:
        load_program(f"{dep}:f")
    assert str(e.value) == (
        f"'{dep}:f': importing '{dep}' failed: "
        "ModuleNotFoundError: No module named 'no_such_dependency_zz'"
    )
    assert isinstance(e.value.__cause__, ModuleNotFoundError)
    boom = make_module("raise RuntimeError('boom')\n")
    with pytest.raises(
        LoadError, match=rf"^'{boom}:f': importing '{boom}' failed: RuntimeError: boom$"
    ):
        load_program(f"{boom}:f")


def test_missing_or_broken_file(make_file, tmp_path: Path) -> None:
    gone = str(tmp_path / "gone.py")
    with pytest.raises(
        LoadError, match=rf"^'{re.escape(gone)}:f': '{re.escape(gone)}' does not exist$"
    ):
        load_program(f"{gone}:f")
    d = str(tmp_path)
    with pytest.raises(LoadError, match=r"is a directory, not a file$"):
        load_program(f"{d}/:f")
    bad = make_file("def f(:\n", name="bad.py")
    with pytest.raises(LoadError, match=r"importing '.*bad\.py' failed: SyntaxError"):
        load_program(f"{bad}:f")
    with pytest.raises(LoadError):  # still broken: a failed import is not cached
        load_program(f"{bad}:f")


def test_missing_attribute(make_module) -> None:
    mod = make_module(PROGRAMS)
    with pytest.raises(
        LoadError, match=rf"^'{mod}:stear': '{mod}' has no attribute 'stear'; did you mean 'steer'"
    ):
        load_program(f"{mod}:stear")
    with pytest.raises(
        LoadError, match=rf"^'{mod}:zzz': '{mod}' has no attribute 'zzz'; its callables: "
    ):
        load_program(f"{mod}:zzz")
    with pytest.raises(
        LoadError, match=rf"^'{mod}:Counter.nope': '{mod}:Counter' has no attribute 'nope'"
    ):
        load_program(f"{mod}:Counter.nope")


def test_not_callable_and_wrong_signatures(make_module) -> None:
    mod = make_module(PROGRAMS)
    contract = "a program is called with one argument (an XdpContext, or an XdpBatch if vectorized)"
    with pytest.raises(
        LoadError,
        match="^"
        + re.escape(f"'{mod}:LIMIT' is not callable: it is of type int; {contract}")
        + "$",
    ):
        load_program(f"{mod}:LIMIT")
    with pytest.raises(
        LoadError,
        match="^" + re.escape(f"'{mod}:two_args': {contract}, but its signature is (a, b)") + "$",
    ):
        load_program(f"{mod}:two_args")
    with pytest.raises(LoadError, match=re.escape("but its signature is ()")):
        load_program(f"{mod}:no_args")
    with pytest.raises(LoadError, match=re.escape("a handler is called with one argument (an Skb")):
        load_handler(f"{mod}:two_args")
    with pytest.raises(
        LoadError,
        match=rf"^'{mod}:NeedsArgs': class NeedsArgs is made with no arguments, and that "
        r"failed: TypeError",
    ):
        load_program(f"{mod}:NeedsArgs")
    with pytest.raises(TypeError, match=r"^a spec must be a str, not int$"):
        load_program(3)  # type: ignore[arg-type]


# -- user programs end to end --------------------------------------------------------------------
USER = """
    import struct
    import numpy as np
    import cpumap
    from tests.helpers import payload_ids

    def steer(ctx, *, cmap):
        flow, seq = payload_ids(ctx.data)
        if flow == 1:
            raise ValueError("a bug in the user's program")
        if ctx.adjust_meta(-8) != 0:
            return cpumap.XDP_DROP
        ctx.data_meta[:] = struct.pack("!II", flow, seq)
        return cpumap.redirect_map(cmap, CPU)

    @cpumap.vectorized
    def steer_batch(batch):
        if len(batch) > 5:
            raise RuntimeError("a bug")
        return np.full(len(batch), cpumap.XDP_PASS, dtype=np.uint8)

    class Meta:
        def setup(self, info):
            self.seen = []

        def __call__(self, skb):
            self.seen.append((skb.metadata, payload_ids(skb.data)))

        def finish(self):
            return self.seen
"""


@pytest.mark.slow
def test_user_program_exceptions_are_aborted_and_metadata_reaches_the_handler(make_file) -> None:
    path = make_file(USER.replace("CPU", str(CPU)), name="user.py")
    handler = load_handler(f"{path}:Meta")
    with CpuMap(CPU + 1, handler=handler) as m:
        m.update(CPU, 256)
        prog = load_program(f"{path}:steer", cmap=m)
        s = m.run(flow_batch(3, 20), prog)  # flow 1 raises: 20 ABORTED
        assert (s.rx, s.xdp_aborted, s.xdp_redirect, s.delivered) == (60, 20, 40, 40)
        batch_prog = load_program(f"{path}:steer_batch")
        s = m.run(flow_batch(2, 5), batch_prog, poll_size=4)  # polls of 4, 4, 2
        assert s.xdp_aborted == 20 and s.xdp_pass == 10  # a raising batch is ABORTED whole
        s = m.run(flow_batch(2, 5), batch_prog, poll_size=8)  # polls of 8 (raises), 2
        assert s.xdp_aborted == 28 and s.xdp_pass == 12
        assert s.rx == sum(s.outcomes().values())
        m.close()
        (result,) = [r.result for r in m.results]
    assert len(result) == 40
    for meta, (flow, seq) in result:
        assert flow != 1
        assert meta == struct.pack("!II", flow, seq)
    assert m.pool.audit().whole


# -- the working directory, sys.exit at import, and code others can write (as root) ----------


def test_a_module_in_the_working_directory_is_found_as_with_python_m(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cwd_steer_mod.py").write_text("def steer(ctx):\n    return 2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    prog = load_program("cwd_steer_mod:steer")
    assert prog(None) == 2


@pytest.mark.parametrize("code", ["0", "'bye'", "None"])
def test_sys_exit_while_importing_is_a_load_error(make_file, make_module, code: str) -> None:
    source = f"import sys\nsys.exit({code})\ndef handle(skb): pass\n"
    with pytest.raises(LoadError, match=re.escape(f"called sys.exit({eval(code)!r})")):
        load_handler(f"{make_file(source)}:handle")
    with pytest.raises(LoadError, match=r"called sys\.exit"):
        load_handler(f"{make_module(source)}:handle")


needs_root = pytest.mark.skipif(__import__("os").geteuid() != 0, reason="a check for root only")


@needs_root
@pytest.mark.parametrize(("mode", "gid"), [(0o646, 0), (0o664, 12345)])
def test_root_refuses_a_file_others_can_write(make_file, mode: int, gid: int) -> None:
    """Writable by others, or by a group that is not root's: refused."""
    path = make_file("def handle(skb): pass\n", name=f"w{mode:o}.py")
    __import__("os").chown(path, 0, gid)
    Path(path).chmod(mode)
    with pytest.raises(LoadError, match=re.escape(f"chmod go-w {path}")):
        load_handler(f"{path}:handle")
    Path(path).chmod(0o644)
    assert load_handler(f"{path}:handle") is not None


@needs_root
def test_root_refuses_a_package_whose_directory_others_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    pkg = root / "wpkg_cli"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "steer.py").write_text("def steer(ctx):\n    return 2\n")
    monkeypatch.syspath_prepend(str(root))
    pkg.chmod(0o777)
    with pytest.raises(LoadError, match=re.escape(f"chmod go-w {pkg}")):
        load_program("wpkg_cli.steer:steer")
    pkg.chmod(0o1777)  # sticky: others cannot replace root's files there
    assert load_program("wpkg_cli.steer:steer")(None) == 2


@needs_root
def test_root_refuses_a_file_owned_by_another_user(make_file) -> None:
    path = make_file("def handle(skb): pass\n", name="theirs.py")
    __import__("os").chown(path, 12345, 12345)
    with pytest.raises(LoadError, match="owned by uid 12345"):
        load_handler(f"{path}:handle")
