"""Every multi-statement step is one transaction: a failure injected into a later statement
(a TEMP trigger that RAISEs) leaves the whole database exactly as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw
import pytest

from serbero.store.disputes import (
    enqueue_renotification,
    record_assignment,
    record_detected,
    record_resolution,
)
from serbero.store.escalation import RecipientOutcome, pending_handoffs_page, record_dispatch
from serbero.store.health import RelayHealth, write_health
from serbero.store.lifecycle import apply_transition
from serbero.store.notifications import NotificationRecord, record_notifications
from serbero.store.outbox import claim_due, complete, enqueue_notifications
from tests.store.helpers import SOLVERS, T0, event, messages, tables

A, B, _ = SOLVERS
Step = Callable[[apsw.Connection], object]


def snapshot(conn: apsw.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: sorted((tuple(r) for r in conn.execute(f"SELECT * FROM {table}")), key=repr)
        for table in [*tables(conn), "sqlite_sequence"]
    }


def _detected(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", (A, B)), T0)


def _notified(conn: apsw.Connection) -> None:
    _detected(conn)
    conn.execute("UPDATE disputes SET lifecycle_state = 'notified', last_notified_at = 1")


def _live_session(conn: apsw.Connection) -> None:
    _notified(conn)
    conn.execute(
        "INSERT INTO mediation_sessions (session_id, dispute_id, state, prompt_bundle_id,"
        " policy_hash, started_at, last_transition_at) VALUES ('s', 'd-1', 'classified', 'b',"
        " 'h', 1, 1)"
    )


def _claimed_initial(conn: apsw.Connection) -> None:
    _detected(conn)
    claim_due(conn, T0, 10)


def _claimed_renotification(conn: apsw.Connection) -> None:
    _notified(conn)
    conn.execute("UPDATE notification_outbox SET state = 'sent'")
    enqueue_notifications(
        conn,
        dispute_id="d-1",
        notif_type="re-notification",
        cause="renotification",
        messages=messages("again", (A,)),
        now=T0,
    )
    claim_due(conn, T0, 10)


def _handoff(conn: apsw.Connection) -> None:
    _detected(conn)
    conn.execute(
        "INSERT INTO mediation_events (kind, payload_json, occurred_at)"
        " VALUES ('handoff_prepared', '{}', 1)"
    )


def _dispatch(conn: apsw.Connection) -> None:
    (h,) = pending_handoffs_page(conn)
    record_dispatch(
        conn,
        dispatch_id="x",
        handoff=h,
        dispute_id="d-1",
        outcomes=[RecipientOutcome(A, True)],
        via_fallback=False,
        dispatched_at=T0,
    )


def _last_outbox_id(conn: apsw.Connection) -> int:
    row = conn.execute("SELECT MAX(id) FROM notification_outbox").fetchone()
    assert row is not None
    return int(row[0])


def _raise_on(table: str, when: str = "1", event_: str = "INSERT") -> str:
    return (
        f"CREATE TEMP TRIGGER inject BEFORE {event_} ON {table} WHEN {when}"
        " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )


CASES: list[tuple[str, Step, str, Step]] = [
    (
        "detection: outbox rows after the dispute",
        lambda c: None,
        _raise_on("notification_outbox"),
        _detected,
    ),
    (
        "detection: second outbox row",
        lambda c: None,
        _raise_on("notification_outbox", f"NEW.solver_pubkey = '{B}'"),
        _detected,
    ),
    (
        "transition: audit row after the state update",
        _detected,
        _raise_on("dispute_state_transitions"),
        lambda c: apply_transition(c, "d-1", "notified", "x", T0),
    ),
    (
        "assignment: outbox rows after transition and assignee",
        _notified,
        _raise_on("notification_outbox"),
        lambda c: record_assignment(
            c, event("d-1", "in-progress"), "f" * 64, messages("assignment"), T0
        ),
    ),
    (
        "assignment: assignee update after the transition",
        _notified,
        _raise_on("disputes", "NEW.assigned_solver IS NOT NULL", "UPDATE"),
        lambda c: record_assignment(c, event("d-1", "in-progress"), "f" * 64, (), T0),
    ),
    (
        "late assignment: transition row after the dispute row",
        lambda c: None,
        _raise_on("dispute_state_transitions"),
        lambda c: record_assignment(c, event("late", "in-progress"), None, (), T0),
    ),
    (
        "resolution: session supersede after the transition",
        _live_session,
        _raise_on("mediation_events"),
        lambda c: record_resolution(c, event("d-1", "settled"), messages("closed"), T0),
    ),
    (
        "resolution: session_closed after superseded_by_human",
        _live_session,
        _raise_on("mediation_events", "NEW.kind = 'session_closed'"),
        lambda c: record_resolution(c, event("d-1", "settled"), messages("closed"), T0),
    ),
    (
        "resolution: closing notices last",
        _live_session,
        _raise_on("notification_outbox"),
        lambda c: record_resolution(c, event("d-1", "settled"), messages("closed"), T0),
    ),
    (
        "late resolution: transition row after the dispute row",
        lambda c: None,
        _raise_on("dispute_state_transitions"),
        lambda c: record_resolution(c, event("late", "released"), (), T0),
    ),
    (
        "re-notification: second row",
        _notified,
        _raise_on("notification_outbox", f"NEW.solver_pubkey = '{B}'"),
        lambda c: enqueue_renotification(
            c,
            "d-1",
            cycle_now=T0,
            renotification_seconds=0,
            messages=messages("again", (A, B)),
            now=T0,
        ),
    ),
    (
        "completion: transition after notification row and outbox update",
        _claimed_initial,
        _raise_on("dispute_state_transitions"),
        lambda c: complete(c, 1, ok=True, error=None, retry=True, now=T0),
    ),
    (
        "completion: last_notified_at after the re-notification is marked sent",
        _claimed_renotification,
        _raise_on("disputes", "NEW.last_notified_at IS NOT OLD.last_notified_at", "UPDATE"),
        lambda c: complete(c, _last_outbox_id(c), ok=True, error=None, retry=True, now=T0 + 9),
    ),
    (
        "completion: outbox update after the failed attempt row",
        _claimed_initial,
        _raise_on("notification_outbox", "1", "UPDATE"),
        lambda c: complete(c, 1, ok=False, error="notification error: x", retry=True, now=T0),
    ),
    (
        "claim: second claim after the first and the abandonment sweep",
        _detected,
        _raise_on("notification_outbox", "NEW.claimed_at IS NOT NULL AND OLD.id = 2", "UPDATE"),
        lambda c: claim_due(c, T0, 10),
    ),
    (
        "enqueue: second row",
        _detected,
        _raise_on("notification_outbox", f"NEW.solver_pubkey = '{B}'"),
        lambda c: enqueue_notifications(
            c,
            dispute_id="d-1",
            notif_type="mediation_summary",
            cause="s",
            messages=messages("summary", (A, B)),
            now=T0,
        ),
    ),
    (
        "notification records: second row",
        _detected,
        _raise_on("notifications", f"NEW.solver_pubkey = '{B}'"),
        lambda c: record_notifications(
            c,
            [
                NotificationRecord("d-1", A, T0, "sent", "initial"),
                NotificationRecord("d-1", B, T0, "sent", "initial"),
            ],
        ),
    ),
    (
        "dispatch: audit event after the dispatch row",
        _handoff,
        _raise_on("mediation_events", "NEW.kind = 'escalation_dispatched'"),
        _dispatch,
    ),
    (
        "health: daemon facts after relay rows",
        lambda c: None,
        _raise_on("serbero_daemon_health"),
        lambda c: write_health(
            c,
            relays=[RelayHealth("wss://r", "connected", T0)],
            values={"heartbeat_at": str(T0)},
            now=T0,
        ),
    ),
]


@pytest.mark.parametrize(
    ("setup", "trigger", "step"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_failing_statement_rolls_back_the_whole_step(
    conn: apsw.Connection, setup: Step, trigger: str, step: Step
) -> None:
    setup(conn)
    before = snapshot(conn)
    conn.execute(trigger)
    with pytest.raises(apsw.ConstraintError, match="injected failure"):
        step(conn)
    assert not conn.in_transaction
    assert snapshot(conn) == before
    conn.execute("DROP TRIGGER temp.inject")
    step(conn)
    assert snapshot(conn) != before
