"""User code's failures kept as text: the first of each kind, counts of the rest, per
worker and for the RX program, through ``CpuMap.user_errors()``."""

from __future__ import annotations

import numpy as np
import pytest

from cpumap import CpuMap, batch_handler, possible_cpus, redirect_map, vectorized
from cpumap.programs import user_errors
from cpumap.programs.user_errors import MAX_KINDS, UserErrorLog

from ..helpers import assert_balanced, flow_batch


def test_the_first_of_each_kind_keeps_its_text_and_the_rest_count() -> None:
    log = UserErrorLog()
    for i in range(5):
        try:
            raise ValueError(f"bad {i}")
        except ValueError as e:
            log.record("handler", e)
    log.record("program", what="invalid verdict", detail="got 'x'", count=3)
    (v, iv) = log.report()
    assert (v.where, v.what, v.count) == ("handler", "ValueError", 5)
    assert "ValueError: bad 0" in v.first and "bad 1" not in v.first
    assert (iv.what, iv.count, iv.first) == ("invalid verdict", 3, "got 'x'")


def test_kinds_past_the_limit_count_without_text() -> None:
    log = UserErrorLog()
    for i in range(MAX_KINDS + 5):
        log.record("handler", what=f"kind {i}", detail="text")
    report = log.report()
    assert len(report) == MAX_KINDS + 5
    assert [r.first for r in report[MAX_KINDS:]] == [""] * 5


def test_scopes_keep_maps_apart() -> None:
    log = UserErrorLog()
    log.record("program", what="x", detail="a", scope=1)
    log.record("program", what="x", detail="b", scope=2)
    assert [r.first for r in log.report(scope=2)] == ["b"]


@pytest.mark.slow
def test_worker_and_rx_errors_reach_the_map() -> None:
    """A handler raising on some frames in the worker, a program returning an invalid
    verdict on others at RX: both shown once, with counts equal to the counters."""
    cpu = sorted(possible_cpus())[0]

    def handler(skb):
        if skb.sport % 3 == 0:
            raise ZeroDivisionError("every third port")
        return True

    with CpuMap(cpu + 1, handler=handler) as cmap:
        cmap.update(cpu, 256)

        def prog(ctx):
            return "nope" if ctx.data[35] % 5 == 0 else redirect_map(cmap, cpu)  # sport

        cmap.run(flow_batch(64, 4), prog)
        s = assert_balanced(cmap)
    errors = {(e.where, e.what): e for e in cmap.user_errors()}
    assert set(errors) == {("handler", "ZeroDivisionError"), ("program", "invalid verdict")}
    h, p = errors["handler", "ZeroDivisionError"], errors["program", "invalid verdict"]
    assert h.count == s.handler_error > 0 and h.cpu == cpu
    assert "every third port" in h.first and "in handler" in h.first
    assert p.count == s.xdp_aborted > 0 and p.cpu is None and "got 'nope'" in p.first


@pytest.mark.slow
def test_batch_handler_shape_and_vectorized_program_errors() -> None:
    cpu = sorted(possible_cpus())[0]

    @batch_handler
    def wrong(batch):
        return np.ones(len(batch) + 1, dtype=bool)

    @vectorized
    def raising(batch):
        raise KeyError("table")

    with CpuMap(cpu + 1, handler=wrong) as cmap:
        cmap.update(cpu, 256)
        cmap.run(flow_batch(8, 8), raising)  # every frame aborted at RX
        cmap.run(flow_batch(8, 8), lambda ctx: redirect_map(cmap, cpu))
        s = assert_balanced(cmap)
    errors = {(e.where, e.what): e for e in cmap.user_errors()}
    assert errors["program", "KeyError"].count == s.xdp_aborted == 64
    assert errors["handler", "bad return value"].count == s.handler_error == 64
    assert "bool array of" in errors["handler", "bad return value"].first


def test_a_forked_child_starts_with_an_empty_log() -> None:
    user_errors.record("handler", what="parent's", detail="x")
    try:
        assert any(e.what == "parent's" for e in user_errors.LOG.report())
        user_errors._reset_in_child()  # what os.register_at_fork runs in a child
        assert user_errors.LOG.report() == []
    finally:
        user_errors.LOG.clear()
