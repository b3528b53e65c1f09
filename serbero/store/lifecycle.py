"""The dispute lifecycle state machine (CORE-42..45) and its one writer.

States are stored as plain strings; the table below is the only authority on which changes
are allowed. Anything else, self-transitions included (bar `notified -> notified`), is an
`InvalidTransition` and changes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

import apsw
import msgspec

from serbero.store.errors import InvalidTransition, UnknownDispute
from serbero.store.transaction import transaction


class LifecycleState(enum.StrEnum):
    """`disputes.lifecycle_state` values; `waiting` and `escalated` are reserved (CORE-42)."""

    NEW = "new"
    NOTIFIED = "notified"
    TAKEN = "taken"
    WAITING = "waiting"
    ESCALATED = "escalated"
    RESOLVED = "resolved"


ALLOWED_TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    LifecycleState.NEW: frozenset(
        {LifecycleState.NOTIFIED, LifecycleState.TAKEN, LifecycleState.RESOLVED}
    ),
    LifecycleState.NOTIFIED: frozenset(
        {
            LifecycleState.NOTIFIED,
            LifecycleState.TAKEN,
            LifecycleState.ESCALATED,
            LifecycleState.RESOLVED,
        }
    ),
    LifecycleState.TAKEN: frozenset(
        {LifecycleState.WAITING, LifecycleState.ESCALATED, LifecycleState.RESOLVED}
    ),
    LifecycleState.WAITING: frozenset(
        {LifecycleState.TAKEN, LifecycleState.ESCALATED, LifecycleState.RESOLVED}
    ),
    LifecycleState.ESCALATED: frozenset({LifecycleState.RESOLVED}),
    LifecycleState.RESOLVED: frozenset(),
}

TRIGGER_INITIAL_NOTIFICATION: Final = "initial_notification"
TRIGGER_RESOLVED_EXTERNALLY: Final = "dispute_resolved_externally"


class TransitionResult(msgspec.Struct, frozen=True):
    """One committed lifecycle change; `from_state` is None only for late discovery (BEY-4)."""

    dispute_id: str
    from_state: str | None
    to_state: str
    trigger: str | None


def is_allowed(from_state: str, to_state: str) -> bool:
    """Whether CORE-43 allows `from_state -> to_state` (unknown states allow nothing)."""
    return to_state in ALLOWED_TRANSITIONS.get(from_state, frozenset())


def current_state(conn: apsw.Connection, dispute_id: str) -> str | None:
    """The dispute's `lifecycle_state`, or None when there is no such dispute."""
    row = conn.execute(
        "SELECT lifecycle_state FROM disputes WHERE dispute_id = ?", (dispute_id,)
    ).fetchone()
    return None if row is None else str(row[0])


def insert_transition_row(
    conn: apsw.Connection,
    dispute_id: str,
    from_state: str | None,
    to_state: str,
    trigger: str | None,
    now: int,
) -> None:
    """Append the audit row of a lifecycle change (the caller owns the transaction)."""
    conn.execute(
        "INSERT INTO dispute_state_transitions"
        " (dispute_id, from_state, to_state, transitioned_at, trigger) VALUES (?, ?, ?, ?, ?)",
        (dispute_id, from_state, to_state, now, trigger),
    )


def apply_transition(
    conn: apsw.Connection, dispute_id: str, to_state: str, trigger: str | None, now: int
) -> TransitionResult:
    """CORE-44 in one transaction: read, validate, set state and `last_state_change`, audit.

    Raises `UnknownDispute` or `InvalidTransition`; either way nothing is written.
    """
    with transaction(conn):
        from_state = current_state(conn, dispute_id)
        if from_state is None:
            raise UnknownDispute(dispute_id)
        if not is_allowed(from_state, to_state):
            raise InvalidTransition(dispute_id, from_state, to_state)
        conn.execute(
            "UPDATE disputes SET lifecycle_state = ?, last_state_change = ? WHERE dispute_id = ?",
            (str(to_state), now, dispute_id),
        )
        insert_transition_row(conn, dispute_id, from_state, str(to_state), trigger, now)
    return TransitionResult(
        dispute_id=dispute_id, from_state=from_state, to_state=str(to_state), trigger=trigger
    )
