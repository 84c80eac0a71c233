"""The per-frame runner against a plain reference: whatever a per-frame program returns and
wherever it redirects, :class:`ProgramRunner` gives the verdicts, keys, counts and target
of the simplest loop that applies runner.py's rules frame by frame (the loop it had before
it collected lists and settled them per batch)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cpumap.abi import N_VERDICTS, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, Verdict
from cpumap.engine.frame_pool import FramePool
from cpumap.programs import redirect_map
from cpumap.programs.context import NO_KEY, XdpContext, set_current_context
from cpumap.programs.runner import ProgramRunner, as_verdict


class Target:
    """A redirect target with every entry present."""

    def __init__(self, name: str) -> None:
        self.name = name

    def has_entry(self, key: int) -> bool:
        return True

    def __repr__(self) -> str:
        return self.name


A, B, C = Target("A"), Target("B"), Target("C")
TARGETS = {"A": A, "B": B, "C": C}

RETURNS = [
    0,
    1,
    2,
    3,
    4,
    XDP_PASS,
    XDP_REDIRECT,
    Verdict.DROP,
    True,
    False,
    None,
    "x",
    7,
    -1,
    256,
    2.0,
    np.uint8(4),
    np.int64(2),
]

# What a program does for one frame: redirect first (a target name and a key, or "poke": set
# ctx.redirect_key by hand), raise, and what it returns ("redirect": redirect_map's value).
ACTIONS = st.tuples(
    st.sampled_from([None, "A", "B", "C", "poke"]),
    st.sampled_from([0, 1, 5, 0xFFFFFFFE, -1, 2**32 + 3]),
    st.booleans(),
    st.sampled_from(["redirect", *range(len(RETURNS))]),
)


class Scripted:
    """A per-frame program doing ``script[j]`` for the j-th frame it sees."""

    def __init__(self, script: list[Any], redirect_target: Any = None) -> None:
        self.script = script
        self.j = 0
        if redirect_target is not None:
            self.redirect_target = redirect_target

    def __call__(self, ctx: XdpContext) -> Any:
        where, key, raises, ret = self.script[self.j]
        self.j += 1
        r: Any = None
        if where == "poke":
            ctx.redirect_key = key & 0xFFFFFFFF
        elif where is not None:
            r = redirect_map(TARGETS[where], key)
        if raises:
            raise ValueError("boom")
        return r if ret == "redirect" else RETURNS[ret]


def reference(
    prog: Any, pool: FramePool, idx: np.ndarray, fixed: Any
) -> tuple[list[int], list[int], list[int], Any]:
    """runner.py's rules, frame by frame, on a context of its own."""
    default = fixed if fixed is not None else getattr(prog, "redirect_target", None)
    chosen = fixed
    ctx = XdpContext(pool)
    verdicts, keys, counts = [], [], [0] * N_VERDICTS
    set_current_context(ctx)
    try:
        for i in idx.tolist():
            ctx.load(i, 0, 0, 1)
            try:
                v = as_verdict(prog(ctx))
            except ValueError:
                v = XDP_ABORTED
            counts[v] += 1
            verdicts.append(v)
            if v != XDP_REDIRECT:
                keys.append(NO_KEY)
                continue
            t = ctx.redirect_target if ctx.redirect_target is not None else default
            if chosen is None:
                chosen = t
            keys.append(ctx.redirect_key if t is chosen else NO_KEY)
    finally:
        set_current_context(None)
    return verdicts, keys, counts, chosen if chosen is not None else default


@settings(max_examples=300, deadline=None)
@given(
    script=st.lists(ACTIONS, min_size=1, max_size=40),
    fixed=st.sampled_from([None, "A"]),
    default=st.sampled_from([None, "B"]),
    consecutive=st.booleans(),
)
def test_the_runner_settles_a_batch_as_frame_by_frame(
    script: list[Any], fixed: str | None, default: str | None, consecutive: bool
) -> None:
    pool = FramePool(128, frame_size=256, headroom=64)
    try:
        n = len(script)
        idx = np.arange(3, 3 + n, dtype=np.uint32) if consecutive else np.arange(n)[::-1] * 2
        idx = idx.astype(np.uint32)
        pool.length[idx] = 60
        target = TARGETS[fixed] if fixed else None
        dflt = TARGETS[default] if default else None
        runner = ProgramRunner(Scripted(script, dflt), pool, target=target)
        got = runner.run(idx, 3 if consecutive else None)
        want = reference(Scripted(script, dflt), pool, idx, target)
        assert got.verdicts.dtype == np.uint8 and got.keys.dtype == np.uint32
        assert (got.verdicts.tolist(), got.keys.tolist(), got.counts) == want[:3]
        assert got.target is want[3]
    finally:
        pool.close()


def test_a_redirect_field_does_not_leak_into_the_next_frame() -> None:
    """A frame returning XDP_REDIRECT without naming a key gets NO_KEY, even right after a
    frame that did name one (the context is reused)."""
    pool = FramePool(8, frame_size=256, headroom=64)
    try:
        script = [(("A"), 1, False, "redirect"), (None, 0, False, 4), ("A", 2, False, 1)]
        runner = ProgramRunner(Scripted(script), pool, target=A)
        got = runner.run(np.arange(3, dtype=np.uint32), 0)
        assert got.verdicts.tolist() == [XDP_REDIRECT, XDP_REDIRECT, XDP_DROP]
        assert got.keys.tolist() == [1, NO_KEY, NO_KEY]
        assert got.counts == [0, 1, 0, 0, 2]
    finally:
        pool.close()
