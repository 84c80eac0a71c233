"""An entry's life as data: the transition table, driven directly (no process, no ring)."""

from __future__ import annotations

import pytest

from cpumap.engine.entry import TRANSITIONS, Entry, EntryEvent, EntryState, EntryStateError

S, E = EntryState, EntryEvent


def _entry() -> Entry:
    return Entry(key=1, qsize=64, slot=0, generation=1, ring=None, record=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "events",
    [
        [E.UNPUBLISHED, E.GRACE_ELAPSED, E.DRAINED],
        [E.UNPUBLISHED, E.GRACE_ELAPSED, E.ABANDONED],
        [E.UNPUBLISHED, E.ABANDONED],
        [E.BROKE, E.UNPUBLISHED, E.GRACE_ELAPSED, E.DRAINED],
    ],
)
def test_every_life_ends_retired(events: list[EntryEvent]) -> None:
    e = _entry()
    assert e.state == S.ACTIVE and not e.retiring
    for ev in events[:-1]:
        e.fire(ev)
        assert e.retiring or e.state == S.BROKEN
    assert e.fire(events[-1]) == S.RETIRED and not e.retiring


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


def test_states_read_as_strings() -> None:
    assert S.ACTIVE == "active" and f"{S.DRAINING}" == "draining"
    assert {s.value for s in S} == {"active", "broken", "grace", "draining", "retired"}
