"""An entry's life as data: the transition table, driven directly (no process, no ring)."""

from __future__ import annotations

import pytest

from cpumap.engine.entry import TRANSITIONS, Entry, EntryEvent, EntryState, EntryStateError
from cpumap.errors import Error

S, E = EntryState, EntryEvent


def _entry() -> Entry:
    return Entry(key=1, qsize=64, slot=0, generation=1, ring=None, record=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "events",
    [
        [E.UNPUBLISHED, E.GRACE_ELAPSED, E.DRAINED],
        [E.UNPUBLISHED, E.GRACE_ELAPSED, E.ABANDONED],
        [E.UNPUBLISHED, E.ABANDONED],
        [E.BROKE, E.UNPUBLISHED, E.GRACE_ELAPSED],  # broken, then deleted
        [E.BROKE, E.UNPUBLISHED, E.ABANDONED],
        [E.UNPUBLISHED, E.BROKE, E.GRACE_ELAPSED],  # broken in its grace period
        [E.UNPUBLISHED, E.GRACE_ELAPSED, E.BROKE, E.GRACE_ELAPSED],  # broken while draining
        [E.UNPUBLISHED, E.GRACE_ELAPSED, E.BROKE, E.ABANDONED],
    ],
)
def test_every_life_ends_retired(events: list[EntryEvent]) -> None:
    e = _entry()
    assert e.state == S.ACTIVE
    for ev in events[:-1]:
        e.fire(ev)
        assert e.state not in (S.ACTIVE, S.RETIRED)
    assert e.fire(events[-1]) == S.RETIRED


@pytest.mark.parametrize(
    ("events", "states"),
    [
        ([E.BROKE, E.UNPUBLISHED], [S.BROKEN, S.BROKEN_RETIRING]),
        ([E.UNPUBLISHED, E.BROKE], [S.GRACE, S.BROKEN_RETIRING]),
        ([E.UNPUBLISHED, E.GRACE_ELAPSED, E.BROKE], [S.GRACE, S.DRAINING, S.BROKEN_RETIRING]),
    ],
)
def test_an_entry_broken_while_retiring_is_broken_retiring(
    events: list[EntryEvent], states: list[EntryState]
) -> None:
    e = _entry()
    assert [e.fire(ev) for ev in events] == states
    assert e.state.broken and e.state == "broken-retiring"
    # No worker to stop or drain: it retires when the grace period ends (or is abandoned).
    with pytest.raises(EntryStateError):
        e.fire(E.DRAINED)
    assert e.fire(E.GRACE_ELAPSED) == S.RETIRED


def test_broken_and_current_are_properties_of_two_states_each() -> None:
    assert {s for s in S if s.broken} == {S.BROKEN, S.BROKEN_RETIRING}
    # Current: not yet unpublished by an update or a delete.
    assert {s for s in S if s.current} == {s for s in S if E.UNPUBLISHED in TRANSITIONS[s]}
    assert {s for s in S if s.current} == {S.ACTIVE, S.BROKEN}


@pytest.mark.parametrize(
    ("state", "event"),
    [(s, ev) for s in S for ev in E if ev not in TRANSITIONS[s]],
)
def test_an_event_the_state_does_not_allow_is_refused(state: EntryState, event: EntryEvent) -> None:
    e = _entry()
    e.state = state
    with pytest.raises(EntryStateError, match=rf"cannot handle {event.value!r} in state"):
        e.fire(event)
    assert e.state == state


def test_a_refused_event_is_a_cpumap_error_and_a_runtime_error() -> None:
    e = _entry()
    e.fire(E.BROKE)
    with pytest.raises(Error) as info:
        e.fire(E.BROKE)  # broken twice: the table lists no such event
    assert isinstance(info.value, RuntimeError) and e.state == S.BROKEN


def test_every_state_has_a_row_and_only_retired_is_final() -> None:
    assert set(TRANSITIONS) == set(S)
    assert [s for s in S if not TRANSITIONS[s]] == [S.RETIRED]


def test_states_read_as_strings() -> None:
    assert S.ACTIVE == "active" and f"{S.DRAINING}" == "draining"
    assert {s.value for s in S} == {
        "active",
        "broken",
        "grace",
        "draining",
        "broken-retiring",
        "retired",
    }
