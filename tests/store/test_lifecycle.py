"""The CORE-43 state machine: every one of the 36 pairs, at the store (AS-10)."""

from __future__ import annotations

import itertools

import apsw
import pytest

from serbero.store.disputes import get_dispute, record_detected
from serbero.store.errors import InvalidTransition, UnknownDispute
from serbero.store.lifecycle import (
    ALLOWED_TRANSITIONS,
    LifecycleState,
    TransitionResult,
    apply_transition,
    is_allowed,
)
from tests.store.helpers import T0, count, event, rows

STATES = [s.value for s in LifecycleState]
ALLOWED = {
    ("new", "notified"),
    ("new", "taken"),
    ("new", "resolved"),
    ("notified", "notified"),
    ("notified", "taken"),
    ("notified", "escalated"),
    ("notified", "resolved"),
    ("taken", "waiting"),
    ("taken", "escalated"),
    ("taken", "resolved"),
    ("waiting", "taken"),
    ("waiting", "escalated"),
    ("waiting", "resolved"),
    ("escalated", "resolved"),
}


def test_state_strings_round_trip() -> None:
    assert STATES == ["new", "notified", "taken", "waiting", "escalated", "resolved"]
    for state in STATES:
        assert LifecycleState(state) == state


def test_the_table_is_exactly_core_43() -> None:
    table = {(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets}
    assert table == ALLOWED


@pytest.mark.parametrize(("from_state", "to_state"), list(itertools.product(STATES, STATES)))
def test_transition_pair(conn: apsw.Connection, from_state: str, to_state: str) -> None:
    record_detected(conn, event("d-1"), (), T0)
    conn.execute("UPDATE disputes SET lifecycle_state = ? WHERE dispute_id = 'd-1'", (from_state,))
    before = get_dispute(conn, "d-1")
    assert is_allowed(from_state, to_state) == ((from_state, to_state) in ALLOWED)
    if (from_state, to_state) in ALLOWED:
        result = apply_transition(conn, "d-1", to_state, "why", T0 + 5)
        assert result == TransitionResult("d-1", from_state, to_state, "why")
        after = get_dispute(conn, "d-1")
        assert after is not None
        assert (after.lifecycle_state, after.last_state_change) == (to_state, T0 + 5)
        assert rows(
            conn,
            "SELECT dispute_id, from_state, to_state, transitioned_at, trigger"
            " FROM dispute_state_transitions",
        ) == [("d-1", from_state, to_state, T0 + 5, "why")]
    else:
        with pytest.raises(InvalidTransition) as info:
            apply_transition(conn, "d-1", to_state, "why", T0 + 5)
        assert (info.value.from_state, info.value.to_state) == (from_state, to_state)
        assert get_dispute(conn, "d-1") == before
        assert count(conn, "dispute_state_transitions") == 0


def test_unknown_dispute_is_an_error(conn: apsw.Connection) -> None:
    with pytest.raises(UnknownDispute):
        apply_transition(conn, "missing", "notified", "x", T0)
    assert count(conn, "dispute_state_transitions") == 0


def test_an_unrecognised_stored_state_allows_nothing(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), (), T0)
    conn.execute("UPDATE disputes SET lifecycle_state = 'archived'")
    with pytest.raises(InvalidTransition):
        apply_transition(conn, "d-1", "resolved", "x", T0)
