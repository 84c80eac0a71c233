"""The error tree: one root, ``cpumap.Error``, and every error keeps the built-in base that
code caught before the root existed."""

from __future__ import annotations

import errno
import io
import pickle

import pytest

import cpumap
from cpumap.errors import ClosedResourceError, Error, HandlerSetupError
from cpumap.live.netns import NetnsError
from cpumap.map_errors import MapError, map_error
from cpumap.programs import BrokenTableError, LoadError


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (ClosedResourceError, ValueError),
        (HandlerSetupError, RuntimeError),
        (cpumap.CaptureError, ValueError),
        (LoadError, ValueError),
        (BrokenTableError, RuntimeError),
        (NetnsError, RuntimeError),
        (MapError, OSError),
    ],
)
def test_every_error_is_ours_and_keeps_its_base(cls: type, base: type) -> None:
    assert issubclass(cls, Error) and issubclass(cls, base)
    assert cpumap.Error is Error


def test_except_error_catches_a_map_errno_error() -> None:
    with pytest.raises(cpumap.Error) as ei:
        cpumap.CpuMap(0)
    e = ei.value
    assert isinstance(e, cpumap.MapError) and isinstance(e, OSError)
    assert e.errno == errno.EINVAL


def test_except_error_catches_a_capture_error() -> None:
    with pytest.raises(cpumap.Error) as ei:
        cpumap.open_capture(io.BytesIO(b"GIF89a" + bytes(40)))
    assert isinstance(ei.value, cpumap.CaptureError)
    assert ei.value.kind is cpumap.CaptureErrorKind.NOT_A_CAPTURE


def test_except_error_catches_a_load_error() -> None:
    with pytest.raises(cpumap.Error) as ei:
        cpumap.load_program("no_such_module_for_cpumap_tests:steer")
    assert isinstance(ei.value, LoadError)


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EEXIST, errno.EINVAL, errno.ENOMEM])
def test_a_map_error_reads_as_the_oserror_it_replaces(code: int) -> None:
    """errno, strerror and the text are an ``OSError``'s; only the class is ours (a bare
    ``OSError(ENOENT)`` would have become a ``FileNotFoundError``)."""
    e = map_error(code, "what was wrong")
    plain = OSError(code, e.strerror)
    assert (e.errno, e.strerror, str(e), e.args) == (
        plain.errno,
        plain.strerror,
        str(plain),
        plain.args,
    )
    assert str(e).endswith(": what was wrong") and type(e) is MapError
    again = pickle.loads(pickle.dumps(e))  # the cluster sends them between processes
    assert type(again) is MapError and (again.errno, str(again)) == (code, str(e))
