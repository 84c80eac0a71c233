"""Worker -> supervisor messages: typed records end to end, and the reports they become."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from cpumap import CpuMap, possible_cpus, redirect_map
from cpumap.engine.messages import Exited, Ready, SetupFailed
from cpumap.programs.user_errors import UserError
from tests.helpers import flow_batch

CPU = min(possible_cpus())


def test_messages_pickle_as_they_are_and_are_frozen() -> None:
    err = UserError("handler", "KeyError", "Traceback ...", 3, cpu=CPU)
    for msg in (
        Ready(True),
        SetupFailed("Traceback ..."),
        Exited(False, {"n": 1}, None, (1,), (err,)),
    ):
        assert pickle.loads(pickle.dumps(msg)) == msg
        with pytest.raises(dataclasses.FrozenInstanceError):
            msg.pinned = False  # type: ignore[misc,union-attr]


@pytest.mark.slow
def test_a_worker_report_arrives_as_a_frozen_result_with_typed_user_errors() -> None:
    class Failing:
        def __call__(self, skb):
            raise KeyError("nope")

        def finish(self):
            return ["done"]

    with CpuMap(CPU + 1, handler=Failing()) as m:
        m.update(CPU, 64)
        m.run(flow_batch(1, 5), lambda ctx: redirect_map(m, CPU))
    (r,) = m.results
    assert r.result == ["done"] and r.error is None and r.exitcode == 0 and r.outputs == ()
    (e,) = r.user_errors
    assert isinstance(e, UserError) and (e.where, e.what, e.count, e.cpu) == (
        "handler",
        "KeyError",
        5,
        CPU,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.error = "x"  # type: ignore[misc]


@pytest.mark.slow
def test_an_unpicklable_finish_result_still_reports() -> None:
    class Unpicklable:
        def __call__(self, skb):
            raise ValueError("bad frame")

        def finish(self):
            return lambda: None  # a lambda does not pickle

    with CpuMap(CPU + 1, handler=Unpicklable()) as m:
        m.update(CPU, 64)
        m.run(flow_batch(1, 2), lambda ctx: redirect_map(m, CPU))
    (r,) = m.results
    assert r.result is None and r.exitcode == 0
    assert r.error is not None and r.error.startswith("finish() failed: its result cannot be sent:")
    assert r.finish_error == r.error and m.stats().finish_failures == 1
    # The user errors are ours (strings and ints): they survive the fallback.
    assert [(e.where, e.what, e.count) for e in r.user_errors] == [("handler", "ValueError", 2)]
