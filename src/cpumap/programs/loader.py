"""Loading user programs and handlers by name: ``module:function`` or ``file.py:function``.

A command line names the code to run (``--program mypkg.steer:by_port``, ``--handler
./count.py:Counter``); this module turns such a *spec* into the object the engine calls,
or into a :class:`LoadError` that says what is wrong and what to do about it.

Spec grammar::

    spec     := target ":" attr
    target   := a dotted module name         (imported with importlib, from sys.path)
              | a path ending in ".py" or containing "/"   (loaded from that file)
    attr     := name ("." name)*             (getattr, one step at a time)

What the engine calls, and what is checked here (once, at load time, not per frame):

* a **program** is called with one argument: an :class:`~cpumap.programs.context.XdpContext`
  (per frame) or an :class:`~cpumap.programs.context.XdpBatch` (vectorized: marked with
  :func:`cpumap.vectorized`, or any object with ``vectorized = True``);
* a **handler** is called with one argument: an :class:`~cpumap.skb.Skb`, or an
  :class:`~cpumap.skb.SkbBatch` when marked with :func:`cpumap.batch_handler` (attribute
  ``batch = True``); it may have ``setup(info)`` and ``finish()``.

A class is instantiated with no arguments (a stateful handler is usually a class; each
worker gets its own copy through fork).  The loaded object must then be callable with
exactly one positional argument; objects whose signature Python cannot inspect (some
builtins) are accepted as they are.

Errors are the user's to fix, so they are ``ValueError`` s (:class:`LoadError`) whose
message starts with the spec and names the fix: no such module (install it, or put its
directory on PYTHONPATH, or give a path to a file), no such file, the import itself
failed (its exception is chained), no such attribute (with the close matches and what the
module does have), not callable, cannot be instantiated, wrong signature.

A file is loaded once per path and registered in ``sys.modules`` under a private name
(dataclasses and pickling look modules up there); its directory is not added to
``sys.path``, so a file that imports its siblings should be loaded as a module instead.
A module is looked for on ``sys.path`` with the working directory in front, as
``python -m`` does: ``-p mymodule:steer`` works from ``mymodule.py``'s directory.

Code that calls ``sys.exit()`` while being imported is a load error too (not an exit of
the program that loads it).

Run as root, loading code that another user could have written is running that user's
code as root.  So, as sudo and ssh do with their files, a file (or module) is refused
when it, or a directory on its path up to its module root, is writable by others (by its
group too, unless that is root's), when the file is owned by someone else, or when a
writable directory lacks the sticky bit that keeps others from replacing its files.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import stat
import sys
from types import ModuleType
from typing import Any

from ..errors import Error
from . import contract
from .steering import BUILTIN_PROGRAMS

__all__ = ["LoadError", "load_handler", "load_object", "load_program"]


class LoadError(Error, ValueError):
    """A spec that cannot be loaded; the message says why and what to do."""


def load_object(spec: str) -> Any:
    """The object ``spec`` names (see the module docstring), without any check on it."""
    target, attr = _split(spec)
    obj: Any = _load_file(spec, target) if _is_path(target) else _import(spec, target)
    where = target
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LoadError(f"{spec!r}: {_no_attribute(obj, where, part)}") from None
        where += (":" if i == 0 else ".") + part
    return obj


def load_program(spec: str, *, vectorized: bool | None = None, cmap: Any = None) -> Any:
    """The program ``spec`` names, checked: callable with one argument.

    ``vectorized``: ``None`` takes the object as it is marked; ``True`` makes it a
    vectorized program (marks it, or wraps what cannot be marked); ``False`` insists on a
    per-frame program (a vectorized one is an error).

    ``cmap``: the map the program redirects into.  A program defined in a file cannot
    name the map object, so one that declares a ``cmap`` keyword parameter (``def
    steer(ctx, *, cmap): return redirect_map(cmap, 1)``) gets it bound here."""
    obj = _instantiate(spec, load_object(spec))
    obj = _bind_cmap(spec, obj, cmap)
    _check_call(
        spec,
        obj,
        "a program is called with one argument (an XdpContext, or an XdpBatch if vectorized)",
    )
    marked = contract.is_vectorized(obj)
    if vectorized is None or vectorized == marked:
        return obj
    if not vectorized:
        raise LoadError(f"{spec!r} is a vectorized program, but a per-frame one was asked for")
    return contract.vectorized(obj)


def load_handler(spec: str, *, batch: bool | None = None) -> Any:
    """The handler ``spec`` names, checked: callable with one argument.

    ``batch``: ``None`` takes the object as it is marked; ``True`` makes it a batch
    handler (marks or wraps it); ``False`` insists on a per-skb handler."""
    obj = _instantiate(spec, load_object(spec))
    _check_call(
        spec,
        obj,
        "a handler is called with one argument (an Skb, or an SkbBatch for a batch handler)",
    )
    marked = contract.is_batch_handler(obj)
    if batch is None or batch == marked:
        return obj
    if not batch:
        raise LoadError(f"{spec!r} is a batch handler, but a per-skb one was asked for")
    return contract.batch_handler(obj)


# -- the steps ---------------------------------------------------------------------------------
def _split(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str):
        raise TypeError(f"a spec must be a str, not {type(spec).__name__}")
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        hint = ""
        if spec in BUILTIN_PROGRAMS:
            hint = (
                f"; {spec!r} is a built-in steering mode: cpumap.make_program({spec!r}, cmap, cpus)"
            )
        raise LoadError(f"{spec!r}: expected 'module:function' or 'path/to/file.py:function'{hint}")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise LoadError(f"{spec!r}: {attr!r} is not a Python name (or dotted names)")
    return target, attr


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import(spec: str, name: str) -> ModuleType:
    _add_working_directory()
    try:
        if os.geteuid() == 0:
            _check_module_files(spec, name)
        return importlib.import_module(name)
    except LoadError:
        raise
    except SystemExit as e:
        raise LoadError(f"{spec!r}: importing {name!r} called sys.exit({e.code!r})") from None
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if name == missing or name.startswith(missing + "."):
            raise LoadError(
                f"{spec!r}: no module named {missing!r} (install it, or put its directory on "
                f"PYTHONPATH; for a file, give its path ending in .py)"
            ) from None
        raise LoadError(f"{spec!r}: importing {name!r} failed: {_describe(e)}") from e
    except Exception as e:
        raise LoadError(f"{spec!r}: importing {name!r} failed: {_describe(e)}") from e


def _load_file(spec: str, path: str) -> ModuleType:
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        what = "is a directory, not a file" if os.path.isdir(full) else "does not exist"
        raise LoadError(f"{spec!r}: {path!r} {what}")
    stem = os.path.splitext(os.path.basename(full))[0]
    ident = "".join(c if c.isalnum() else "_" for c in stem)
    name = f"_cpumap_user_{ident}_{hashlib.sha1(full.encode()).hexdigest()[:8]}"
    module = sys.modules.get(name)
    if module is not None:
        return module
    if os.geteuid() == 0:
        _check_not_writable_by_others(spec, full, os.path.dirname(full))
    loader_spec = importlib.util.spec_from_file_location(name, full)
    if loader_spec is None or loader_spec.loader is None:
        raise LoadError(f"{spec!r}: {path!r} cannot be loaded as Python source")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, SystemExit):
            raise LoadError(f"{spec!r}: importing {path!r} called sys.exit({e.code!r})") from None
        if not isinstance(e, Exception):
            raise
        raise LoadError(f"{spec!r}: importing {path!r} failed: {_describe(e)}") from e
    return module


def _add_working_directory() -> None:
    """Put the working directory first on ``sys.path``, as ``python -m`` does."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _check_module_files(spec: str, name: str) -> None:
    """As root: each of ``name``'s modules (``a``, ``a.b``, ...) must be safe to run."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        found = importlib.util.find_spec(".".join(parts[:depth]))
        origin = getattr(found, "origin", None)
        if found is None or not origin or not os.path.isabs(origin):
            continue  # built-in, frozen or namespace: no file of anyone's
        up = depth + (os.path.basename(origin) == "__init__.py")
        dirs = [os.path.dirname(origin)]
        while len(dirs) < up:
            dirs.append(os.path.dirname(dirs[-1]))
        _check_not_writable_by_others(spec, origin, *dirs)


def _check_not_writable_by_others(spec: str, path: str, *dirs: str) -> None:
    """Raise :class:`LoadError` if ``path`` or one of ``dirs`` lets another user change
    the code that is about to run as root (see the module docstring)."""
    me = os.geteuid()
    for p in (path, *dirs):
        try:
            st = os.stat(p)
        except OSError:
            continue  # not there: the import reports it
        is_dir = stat.S_ISDIR(st.st_mode)
        others = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != 0)
        if others and not (is_dir and st.st_mode & stat.S_ISVTX):
            who = "others" if st.st_mode & stat.S_IWOTH else f"group {st.st_gid}"
            raise LoadError(
                f"{spec!r}: refusing to run {p!r} as root: it is writable by {who} "
                f"(mode {stat.filemode(st.st_mode)}), so anyone could change the code; "
                f"fix with `chmod go-w {p}`"
            )
        if not is_dir and st.st_uid not in (0, me):
            raise LoadError(
                f"{spec!r}: refusing to run {p!r} as root: it is owned by uid {st.st_uid}; "
                f"fix with `chown root {p}`"
            )


def _instantiate(spec: str, obj: Any) -> Any:
    if not isinstance(obj, type):
        return obj
    try:
        return obj()
    except Exception as e:
        raise LoadError(
            f"{spec!r}: class {obj.__name__} is made with no arguments, and that failed: "
            f"{_describe(e)} (name a function or an instance instead)"
        ) from e


def _check_call(spec: str, obj: Any, contract: str) -> None:
    if not callable(obj):
        raise LoadError(f"{spec!r} is not callable: it is of type {type(obj).__name__}; {contract}")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return  # not inspectable (some builtins): let the call tell
    try:
        sig.bind(object())
    except TypeError:
        raise LoadError(f"{spec!r}: {contract}, but its signature is {sig}") from None


def _bind_cmap(spec: str, obj: Any, cmap: Any) -> Any:
    """``functools.partial(obj, cmap=cmap)`` when ``obj`` takes a ``cmap`` keyword."""
    if not callable(obj):
        return obj
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return obj
    p = params.get("cmap")
    if p is None or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
        return obj
    if cmap is None:
        if p.default is p.empty:
            raise LoadError(
                f"{spec!r} takes the map as its 'cmap' keyword: load it with "
                f"load_program({spec!r}, cmap=your_map)"
            )
        return obj
    bound = functools.partial(obj, cmap=cmap)
    if contract.is_vectorized(obj):
        bound.vectorized = True  # type: ignore[attr-defined]
    return bound


def _no_attribute(obj: Any, where: str, name: str) -> str:
    names = [n for n in dir(obj) if not n.startswith("_")]
    callables = [n for n in names if callable(getattr(obj, n, None))]
    msg = f"{where!r} has no attribute {name!r}"
    close = difflib.get_close_matches(name, names, n=3)
    if close:
        msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    elif callables:
        shown = ", ".join(callables[:10]) + (", ..." if len(callables) > 10 else "")
        msg += f"; its callables: {shown}"
    return msg


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
