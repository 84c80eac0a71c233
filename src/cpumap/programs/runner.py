"""Running a program over a batch of frames: one path, for the RX side and the second stage.

:class:`ProgramRunner` calls a program on frames of the pool -- once per frame with an
:class:`~cpumap.programs.context.XdpContext`, or once per batch with an
:class:`~cpumap.programs.context.XdpBatch` when it is vectorized -- and turns whatever it
returned into a :class:`Verdicts`: one verdict and one redirect key per frame, the count of
each verdict, and the batch's redirect target.  The caller (the RX producer, a worker's
second stage) then looks the keys up and counts the outcomes; nothing here touches a ring
or a counter.

The verdict rules, the same for both forms
------------------------------------------
* A verdict is an int (or numpy integer) in 0..4; anything else -- a bool, ``None``, a
  string, 7 -- is ``XDP_ABORTED``.  So is an exception: for that frame (per frame) or for
  the whole batch (vectorized).  A vectorized return value of the wrong shape or dtype
  makes the whole batch ``XDP_ABORTED``.
* A redirect goes to the batch's one *target*: the map the caller feeds (``target=``: the
  RX side redirects only into its own map) or, when the caller leaves it open (a second
  stage, which may also redirect to an ``OutputMap``), the first target a frame names (a
  vectorized program returns it as a third element; a program's ``redirect_target``
  attribute is the default).  A frame that names another target keeps its
  ``XDP_REDIRECT`` verdict but gets the key ``NO_KEY``: its redirect fails, and the caller
  counts it as it counts a redirect to an empty entry (``redirect_err`` on the RX side, a
  drop in a second stage, as ``xdp_do_redirect`` failing is in the kernel's kthread).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..abi import N_VERDICTS, XDP_ABORTED, XDP_REDIRECT, Verdict
from .context import NO_KEY, FramePool, XdpBatch, XdpContext, set_current_context
from .contract import is_vectorized, redirect_target_of
from .user_errors import note_per_frame_return, note_vectorized_return, record

# What a per-frame verdict may be without a closer look: a plain int or an abi.Verdict (an
# IntEnum: XDP_REDIRECT and the others are).  A bool is an int subclass, not listed: ABORTED.
_VERDICT_TYPES = frozenset({int, Verdict})


@dataclass(slots=True)
class Verdicts:
    """What a program decided for a batch of ``n`` frames."""

    verdicts: np.ndarray  # uint8[n]
    keys: np.ndarray  # uint32[n]: the redirect key; NO_KEY where not (validly) redirected
    counts: list[int]  # frames per verdict, [ABORTED, DROP, PASS, TX, REDIRECT]
    target: Any  # the batch's redirect target (None: the caller's own map)


class ProgramRunner:
    """Runs ``program`` over batches of frames of ``pool``.

    ``target``: the one target every redirect must name (the RX side: its map); None lets
    the batch's first redirect choose (a second stage).

    ``contain``: what a program may raise and have its frames ABORTED: ``Exception`` on
    the RX side (Ctrl-C must still interrupt the poll), ``BaseException`` in a worker's
    second stage (nothing the program raises may kill the worker).

    Concurrency: one runner per producer or worker (it reuses one context); not shared.
    """

    def __init__(
        self,
        program: Any,
        pool: FramePool,
        *,
        target: object = None,
        contain: type[BaseException] = Exception,
    ) -> None:
        self.program = program
        self._contain = contain
        self.pool = pool
        self.vectorized = is_vectorized(program)
        self._fixed = target
        self._default = target if target is not None else redirect_target_of(program)
        self._ctx = XdpContext(pool)
        self._scope = getattr(target, "map_id", None)  # whose errors these are (user_errors)

    def run(self, idx: np.ndarray, start: int | None = None) -> Verdicts:
        """The program's verdicts for frames ``idx`` (``start``: they are consecutive,
        ``start, start + 1, ...``: the vectorized form then sees views)."""
        if self.vectorized:
            return self._run_vectorized(idx, start)
        return self._run_per_frame(idx, start)

    def _run_vectorized(self, idx: np.ndarray, start: int | None) -> Verdicts:
        n = len(idx)
        target = self._default
        raised = False
        batch = XdpBatch(self.pool, idx, start)
        try:
            out = self.program(batch)
        except self._contain as e:
            record("program", e, count=n, scope=self._scope)
            out, raised = None, True
        # The frames' riding hashes: kept, computed ones let ride, dropped where the program
        # was handed writable bytes (context.py).  Even when it raised: it may have written.
        batch.settle_hashes()
        returned = out
        if type(out) is tuple and len(out) == 3:
            out, target = out[:2], out[2]
        verdicts, keys, counts = normalize_verdicts(out, n)
        if counts[XDP_ABORTED] and not raised:
            note_vectorized_return(returned, n, "program", self._scope)
        if self._fixed is not None and target is not self._fixed and counts[XDP_REDIRECT]:
            keys = np.where(verdicts == XDP_REDIRECT, NO_KEY, keys).astype(np.uint32)
            target = self._fixed
        return Verdicts(verdicts, keys, counts, target)

    def _run_per_frame(self, idx: np.ndarray, start: int | None) -> Verdicts:
        """The per-frame loop.  Per frame it only moves the context to the next row, calls
        the program and appends what it returned and where it redirected to three lists,
        resetting the redirect fields; the verdicts, keys and the batch's target are
        worked out once for the batch (:meth:`_settle`).  Nothing is looked up per frame
        that can be looked up once: bound ``append``s, the program, the exception class."""
        prog, ctx = self.program, self._ctx
        contain = self._contain
        returned: list[Any] = []
        keys: list[int] = []
        targets: list[Any] = []
        ret, key, tgt = returned.append, keys.append, targets.append
        ctx.begin(idx, start)
        set_current_context(ctx)
        try:
            for row in range(len(idx)):
                ctx.row = row
                try:
                    ret(prog(ctx))
                except contain as e:
                    record("program", e, scope=self._scope)
                    ret(XDP_ABORTED)
                key(ctx.redirect_key)
                tgt(ctx.redirect_target)
                ctx.redirect_key = NO_KEY
                ctx.redirect_target = None
        finally:
            set_current_context(None)
            ctx.end()
        return self._settle(returned, keys, targets)

    def _settle(self, returned: list[Any], keys: list[int], targets: list[Any]) -> Verdicts:
        """Verdicts from a per-frame loop's lists: in a few whole-batch calls when every
        frame returned a valid verdict and every redirect named the batch's target (or
        none), else frame by frame (:meth:`_settle_each`), with the same answers."""
        default = self._default
        named = set(map(id, targets))
        if set(map(type, returned)) <= _VERDICT_TYPES and named <= {id(None), id(default)}:
            try:
                v = np.frombuffer(array("B", returned), dtype=np.uint8)
                k = np.frombuffer(array("I", keys), dtype=np.uint32)
            except OverflowError:  # a verdict > 255 (or < 0), a key not a u32
                pass
            else:
                counts = np.bincount(v, minlength=N_VERDICTS).tolist()
                if len(counts) == N_VERDICTS:  # every verdict 0..4
                    if counts[XDP_REDIRECT] != len(v):
                        k = np.where(v == XDP_REDIRECT, k, NO_KEY).astype(np.uint32)
                    # Every redirect went to ``default`` (named, or None: the default).
                    return Verdicts(v, k, counts, default)
        return self._settle_each(returned, keys, targets)

    def _settle_each(self, returned: list[Any], keys: list[int], targets: list[Any]) -> Verdicts:
        """:meth:`_settle`, frame by frame: any return value, any targets."""
        default = self._default
        chosen = self._fixed  # the batch's target: fixed, or the first one named
        verdicts: list[int] = []
        out: list[int] = []
        counts = [0] * N_VERDICTS
        for r, k, t in zip(returned, keys, targets, strict=True):
            if type(r) in _VERDICT_TYPES and 0 <= r < N_VERDICTS:
                v = int(r)
            else:
                v = as_verdict(r)
                if v == XDP_ABORTED and r is not XDP_ABORTED:
                    note_per_frame_return(r, "program", self._scope)
            counts[v] += 1
            verdicts.append(v)
            if v != XDP_REDIRECT:
                out.append(NO_KEY)
                continue
            if t is None:
                t = default
            if chosen is None:
                chosen = t
            out.append(k if t is chosen else NO_KEY)
        return Verdicts(
            np.array(verdicts, dtype=np.uint8),
            np.array(out, dtype=np.uint32),
            counts,
            chosen if chosen is not None else default,
        )


def as_verdict(value: object) -> int:
    """A per-frame program's return value as a verdict: an int (or numpy integer) in
    0..4; anything else -- a bool included -- is ``XDP_ABORTED``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return XDP_ABORTED
    v = int(value)
    return v if 0 <= v < N_VERDICTS else XDP_ABORTED


def _all_aborted(n: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A whole batch ``XDP_ABORTED`` (built only when needed: two arrays a poll)."""
    return np.zeros(n, np.uint8), np.full(n, NO_KEY, np.uint32), [n, 0, 0, 0, 0]


def normalize_verdicts(out: Any, n: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Turn a vectorized program's return value into (verdicts uint8[n], keys uint32[n],
    count of each verdict).  Invalid verdicts become ABORTED; a malformed return value
    (or ``None``: the program raised) makes the whole batch ABORTED.

    The fast path -- a uint8 verdict array and a uint32 key array -- costs one numpy call.
    """
    keys: Any = None
    if type(out) is tuple and len(out) == 2:
        out, keys = out
    try:
        v = out if isinstance(out, np.ndarray) else np.asarray(out)
        if v.shape == ():
            v = np.full(n, int(v), dtype=np.int64)
        if v.shape != (n,) or v.dtype.kind not in "iub":
            return _all_aborted(n)
        if v.dtype != np.uint8:
            ok = (v >= 0) & (v < N_VERDICTS)
            v = np.where(ok, v, XDP_ABORTED).astype(np.uint8)
        counts = np.bincount(v, minlength=N_VERDICTS).tolist()
        if len(counts) > N_VERDICTS:  # invalid verdicts: ABORTED
            v = np.where(v < N_VERDICTS, v, XDP_ABORTED).astype(np.uint8)
            counts[0] += sum(counts[N_VERDICTS:])
            del counts[N_VERDICTS:]
        if keys is None:
            k = np.full(n, NO_KEY, dtype=np.uint32)
        elif isinstance(keys, np.ndarray) and keys.dtype == np.uint32 and keys.shape == (n,):
            k = keys
        else:
            k = np.asarray(keys)
            if k.shape == ():
                k = np.full(n, int(k), dtype=np.int64)
            if k.shape != (n,) or k.dtype.kind not in "iu":
                return _all_aborted(n)
            k = np.where(k < 0, NO_KEY, k).astype(np.uint32)
    except (TypeError, ValueError, OverflowError):
        return _all_aborted(n)
    return v, k, counts
