"""Detection, assignment, resolution, late discovery, the timer's query (CORE-30..55, BEY-2..6)."""

from __future__ import annotations

import apsw
import pytest

from serbero.store.disputes import (
    Dispute,
    Since,
    UnattendedDispute,
    compute_since,
    enqueue_renotification,
    get_dispute,
    list_unattended,
    record_assignment,
    record_detected,
    record_resolution,
)
from serbero.store.errors import InvalidRecord
from serbero.store.lifecycle import apply_transition
from serbero.store.outbox import claim_due
from tests.store.helpers import MOSTRO, SOLVERS, T0, count, event, messages, one, rows


def detect(conn: apsw.Connection, dispute_id: str = "d-1", *, now: int = T0) -> None:
    record_detected(conn, event(dispute_id), messages("initial"), now)


def set_state(conn: apsw.Connection, dispute_id: str, state: str, notified: int | None) -> None:
    conn.execute(
        "UPDATE disputes SET lifecycle_state = ?, last_notified_at = ? WHERE dispute_id = ?",
        (state, notified, dispute_id),
    )


def outbox(conn: apsw.Connection, dispute_id: str = "d-1") -> list[tuple[object, ...]]:
    return rows(
        conn,
        "SELECT solver_pubkey, notif_type, body, cause, created_at, next_attempt_at, state,"
        " attempts FROM notification_outbox WHERE dispute_id = ? ORDER BY id",
        (dispute_id,),
    )


# --- detection (CORE-29/30, BEY-2) ---


def test_detection_inserts_the_dispute_and_one_initial_row_per_solver(
    conn: apsw.Connection,
) -> None:
    result = record_detected(conn, event("d-1", ts=T0 - 9), messages("initial"), T0)
    assert result.inserted
    assert len(result.outbox_ids) == 3
    assert get_dispute(conn, "d-1") == Dispute(
        dispute_id="d-1",
        event_id="ev-d-1-initiated",
        mostro_pubkey=MOSTRO,
        initiator_role="buyer",
        dispute_status="initiated",
        event_timestamp=T0 - 9,
        detected_at=T0,
        lifecycle_state="new",
        assigned_solver=None,
        last_notified_at=None,
        last_state_change=None,
    )
    assert outbox(conn) == [
        (s, "initial", f"initial for {s[:4]}", "ev-d-1-initiated", T0, T0, "pending", 0)
        for s in SOLVERS
    ]
    assert count(conn, "dispute_state_transitions") == 0


def test_a_repeated_dispute_id_is_a_duplicate_and_writes_nothing(conn: apsw.Connection) -> None:
    detect(conn)
    before = get_dispute(conn, "d-1")
    again = record_detected(
        conn, event("d-1", event_id="another", initiator="seller"), messages("x"), T0 + 50
    )
    assert not again.inserted
    assert again.outbox_ids == ()
    assert get_dispute(conn, "d-1") == before
    assert count(conn, "notification_outbox") == 3


def test_an_event_id_clash_fails_and_writes_nothing(conn: apsw.Connection) -> None:
    detect(conn)
    with pytest.raises(apsw.ConstraintError):
        record_detected(conn, event("d-2", event_id="ev-d-1-initiated"), messages("i"), T0)
    assert get_dispute(conn, "d-2") is None
    assert count(conn, "notification_outbox", "dispute_id = 'd-2'") == 0


def test_detection_without_solvers_stores_the_dispute_only(conn: apsw.Connection) -> None:
    result = record_detected(conn, event("d-1", initiator="seller"), (), T0)
    assert result.inserted
    assert result.outbox_ids == ()
    assert one(conn, "SELECT initiator_role FROM disputes") == "seller"


def test_detection_accepts_only_initiated_events(conn: apsw.Connection) -> None:
    with pytest.raises(InvalidRecord):
        record_detected(conn, event("d-1", "in-progress"), (), T0)


# --- assignment (CORE-46/47, BEY-4) ---


@pytest.mark.parametrize("start", ["new", "notified"])
def test_assignment_takes_the_dispute_and_queues_assignment_dms(
    conn: apsw.Connection, start: str
) -> None:
    detect(conn)
    set_state(conn, "d-1", start, T0 + 1 if start == "notified" else None)
    take = event("d-1", "in-progress", event_id="take-1")
    result = record_assignment(conn, take, "f" * 64, messages("assignment"), T0 + 10)
    assert (result.outcome, result.from_state, result.state) == ("taken", start, "taken")
    assert len(result.outbox_ids) == 3
    assert result.abandoned == 3
    dispute = get_dispute(conn, "d-1")
    assert dispute is not None
    assert (dispute.lifecycle_state, dispute.assigned_solver) == ("taken", "f" * 64)
    assert dispute.last_notified_at == (T0 + 1 if start == "notified" else None)
    assert dispute.dispute_status == "initiated"
    assert rows(conn, "SELECT from_state, to_state, trigger FROM dispute_state_transitions") == [
        (start, "taken", "take-1")
    ]
    assert [(*r[1:4], r[6]) for r in outbox(conn)] == [
        *[("initial", f"initial for {s[:4]}", "ev-d-1-initiated", "abandoned") for s in SOLVERS],
        *[("assignment", f"assignment for {s[:4]}", "take-1", "pending") for s in SOLVERS],
    ]


def test_assignment_without_p_tag_leaves_assigned_solver_null(conn: apsw.Connection) -> None:
    detect(conn)
    record_assignment(conn, event("d-1", "in-progress"), None, (), T0)
    assert one(conn, "SELECT assigned_solver FROM disputes") is None
    assert one(conn, "SELECT lifecycle_state FROM disputes") == "taken"


def test_assignment_keeps_in_flight_initial_dms(conn: apsw.Connection) -> None:
    detect(conn)
    claimed = claim_due(conn, T0, 1).rows
    result = record_assignment(conn, event("d-1", "in-progress"), None, (), T0 + 1)
    assert result.abandoned == 2
    in_flight = one(conn, "SELECT state FROM notification_outbox WHERE id = ?", (claimed[0].id,))
    assert in_flight == "pending"


@pytest.mark.parametrize("state", ["taken", "waiting", "escalated", "resolved"])
def test_assignment_after_taken_is_a_noop(conn: apsw.Connection, state: str) -> None:
    detect(conn)
    set_state(conn, "d-1", state, None)
    before = get_dispute(conn, "d-1")
    result = record_assignment(
        conn, event("d-1", "in-progress"), "f" * 64, messages("assignment"), T0
    )
    assert (result.outcome, result.state, result.outbox_ids) == ("noop", state, ())
    assert get_dispute(conn, "d-1") == before
    assert count(conn, "notification_outbox", "notif_type = 'assignment'") == 0
    assert count(conn, "dispute_state_transitions") == 0


def test_assignment_of_an_unseen_dispute_discovers_it_taken(conn: apsw.Connection) -> None:
    take = event("late", "in-progress", event_id="take-9", ts=T0 - 100, initiator="seller")
    result = record_assignment(conn, take, "f" * 64, messages("assignment"), T0)
    assert (result.outcome, result.from_state, result.state) == ("discovered", None, "taken")
    assert result.outbox_ids == ()
    assert get_dispute(conn, "late") == Dispute(
        dispute_id="late",
        event_id="take-9",
        mostro_pubkey=MOSTRO,
        initiator_role="seller",
        dispute_status="in-progress",
        event_timestamp=T0 - 100,
        detected_at=T0,
        lifecycle_state="taken",
        assigned_solver="f" * 64,
        last_notified_at=None,
        last_state_change=T0,
    )
    assert rows(
        conn, "SELECT from_state, to_state, transitioned_at, trigger FROM dispute_state_transitions"
    ) == [(None, "taken", T0, "take-9")]
    assert count(conn, "notification_outbox") == 0


# --- resolution (CORE-49, MED-140, BEY-4, BEY-5) ---


def _session(conn: apsw.Connection, session_id: str, state: str, started: int) -> None:
    conn.execute(
        "INSERT INTO mediation_sessions (session_id, dispute_id, state, prompt_bundle_id,"
        " policy_hash, started_at, last_transition_at) VALUES (?, 'd-1', ?, 'bundle', ?, ?, ?)",
        (session_id, state, f"hash-{session_id}", started, started),
    )


@pytest.mark.parametrize("start", ["new", "notified", "taken", "waiting", "escalated"])
def test_resolution_resolves_and_queues_closing_notices(conn: apsw.Connection, start: str) -> None:
    detect(conn)
    set_state(conn, "d-1", start, None)
    settle = event("d-1", "settled", event_id="settle-1")
    result = record_resolution(conn, settle, messages("closed"), T0 + 20)
    assert (result.outcome, result.from_state) == ("resolved", start)
    assert result.superseded_session_id is None
    assert not result.has_mediation_context
    assert len(result.outbox_ids) == 3
    assert rows(
        conn, "SELECT from_state, to_state, transitioned_at, trigger FROM dispute_state_transitions"
    ) == [(start, "resolved", T0 + 20, "dispute_resolved_externally")]
    assert one(conn, "SELECT dispute_status FROM disputes") == "initiated"
    assert (
        count(conn, "notification_outbox", "notif_type = 'resolution' AND cause = 'settle-1'") == 3
    )
    # Initial notices are pointless now; nothing but the closing notices is owed.
    assert count(conn, "notification_outbox", "state = 'pending'") == 3


def test_resolution_of_a_resolved_dispute_is_a_noop(conn: apsw.Connection) -> None:
    detect(conn)
    record_resolution(conn, event("d-1", "settled"), (), T0)
    before = get_dispute(conn, "d-1")
    again = record_resolution(conn, event("d-1", "released"), messages("closed"), T0 + 1)
    assert (again.outcome, again.outbox_ids) == ("noop", ())
    assert get_dispute(conn, "d-1") == before
    assert count(conn, "dispute_state_transitions") == 1


def test_resolution_supersedes_only_the_latest_live_session(conn: apsw.Connection) -> None:
    detect(conn)
    _session(conn, "s-old", "awaiting_response", T0 + 1)
    _session(conn, "s-new", "classified", T0 + 2)
    _session(conn, "s-done", "summary_delivered", T0 + 3)
    result = record_resolution(conn, event("d-1", "seller-refunded", event_id="ev-r"), (), T0 + 30)
    assert result.superseded_session_id == "s-new"
    assert result.has_mediation_context
    assert rows(
        conn, "SELECT session_id, state, last_transition_at FROM mediation_sessions ORDER BY 1"
    ) == [
        ("s-done", "summary_delivered", T0 + 3),
        ("s-new", "closed", T0 + 30),
        ("s-old", "awaiting_response", T0 + 1),
    ]
    assert rows(
        conn,
        "SELECT session_id, kind, payload_json, rationale_id, prompt_bundle_id, policy_hash,"
        " occurred_at FROM mediation_events ORDER BY id",
    ) == [
        (
            "s-new",
            "superseded_by_human",
            '{"dispute_id":"d-1","event_id":"ev-r","reason":"dispute_resolved_externally",'
            '"resolution_status":"seller-refunded"}',
            None,
            "bundle",
            "hash-s-new",
            T0 + 30,
        ),
        (
            "s-new",
            "session_closed",
            '{"dispute_id":"d-1","reason":"dispute_resolved_externally"}',
            None,
            "bundle",
            "hash-s-new",
            T0 + 30,
        ),
    ]


def test_dispute_scoped_events_are_mediation_context(conn: apsw.Connection) -> None:
    detect(conn)
    detect(conn, "d-2")
    conn.execute(
        "INSERT INTO mediation_events (session_id, kind, payload_json, occurred_at)"
        " VALUES (NULL, 'start_attempt_started', '{\"dispute_id\":\"d-1\"}', 1),"
        " (NULL, 'weird', 'not json', 1)"
    )
    assert record_resolution(conn, event("d-1", "settled"), (), T0).has_mediation_context
    assert not record_resolution(conn, event("d-2", "settled"), (), T0).has_mediation_context


def test_resolution_of_an_unseen_dispute_discovers_it_resolved(conn: apsw.Connection) -> None:
    late = event("late", "settled", event_id="settle-9", initiator="unknown")
    result = record_resolution(conn, late, messages("closed"), T0)
    assert (result.outcome, result.from_state, result.outbox_ids) == ("discovered", None, ())
    dispute = get_dispute(conn, "late")
    assert dispute is not None
    assert (dispute.lifecycle_state, dispute.dispute_status, dispute.initiator_role) == (
        "resolved",
        "settled",
        "unknown",
    )
    assert rows(conn, "SELECT from_state, to_state, trigger FROM dispute_state_transitions") == [
        (None, "resolved", "dispute_resolved_externally")
    ]
    assert count(conn, "notification_outbox") == 0


def test_resolution_accepts_only_terminal_statuses(conn: apsw.Connection) -> None:
    with pytest.raises(InvalidRecord):
        record_resolution(conn, event("d-1", "in-progress"), (), T0)


# --- the timer (CORE-52..55, BEY-6) ---


def test_unattended_query_returns_only_due_notified_disputes(conn: apsw.Connection) -> None:
    for dispute_id, state, notified in [
        ("due-old", "notified", T0 - 1000),
        ("due", "notified", T0 - 301),
        ("boundary", "notified", T0 - 300),
        ("recent", "notified", T0 - 10),
        ("never", "notified", None),
        ("new", "new", T0 - 1000),
        ("taken", "taken", T0 - 1000),
        ("resolved", "resolved", T0 - 1000),
        ("waiting", "waiting", T0 - 1000),
        ("escalated", "escalated", T0 - 1000),
    ]:
        detect(conn, dispute_id)
        set_state(conn, dispute_id, state, notified)
    assert list_unattended(conn, T0, 300) == (
        UnattendedDispute("due-old", T0, T0 - 1000),
        UnattendedDispute("due", T0, T0 - 301),
    )
    assert [d.dispute_id for d in list_unattended(conn, T0, 0)] == [
        "due-old",
        "due",
        "boundary",
        "recent",
    ]


def test_renotification_is_queued_when_still_due(conn: apsw.Connection) -> None:
    detect(conn)
    set_state(conn, "d-1", "notified", T0 - 400)
    result = enqueue_renotification(
        conn,
        "d-1",
        cycle_now=T0,
        renotification_seconds=300,
        messages=messages("again"),
        now=T0 + 1,
    )
    assert result.outcome == "enqueued"
    assert (
        rows(
            conn,
            "SELECT notif_type, cause, created_at FROM notification_outbox WHERE id IN (?, ?, ?)",
            result.outbox_ids,
        )
        == [("re-notification", "renotification", T0 + 1)] * 3
    )
    # The timer does not touch last_notified_at; the delivery does (CORE-54).
    assert one(conn, "SELECT last_notified_at FROM disputes") == T0 - 400


def test_renotification_rechecks_the_state_inside_its_transaction(conn: apsw.Connection) -> None:
    detect(conn)
    set_state(conn, "d-1", "notified", T0 - 400)
    due = list_unattended(conn, T0, 300)
    assert [d.dispute_id for d in due] == ["d-1"]
    apply_transition(conn, "d-1", "taken", "take", T0)  # a take lands between query and send
    result = enqueue_renotification(
        conn, "d-1", cycle_now=T0, renotification_seconds=300, messages=messages("x"), now=T0
    )
    assert (result.outcome, result.outbox_ids) == ("not_due", ())
    assert count(conn, "notification_outbox", "notif_type = 're-notification'") == 0


def test_renotification_is_not_stacked_while_one_is_owed(conn: apsw.Connection) -> None:
    detect(conn)
    set_state(conn, "d-1", "notified", T0 - 400)
    for now, expected in [(T0, "enqueued"), (T0 + 60, "already_pending")]:
        result = enqueue_renotification(
            conn, "d-1", cycle_now=now, renotification_seconds=300, messages=messages("x"), now=now
        )
        assert result.outcome == expected
    assert count(conn, "notification_outbox", "notif_type = 're-notification'") == 3


def test_a_solver_still_owed_a_reminder_holds_back_only_its_own(conn: apsw.Connection) -> None:
    """Solver a's reminder is stuck (every relay refuses it); b and c got theirs, so the
    dispute is due again: b and c get another, a none stacked on the one it is owed."""
    detect(conn)
    set_state(conn, "d-1", "notified", T0 - 400)
    first = enqueue_renotification(
        conn, "d-1", cycle_now=T0, renotification_seconds=300, messages=messages("x"), now=T0
    )
    assert (first.outcome, len(first.outbox_ids), first.held_back) == ("enqueued", 3, 0)
    conn.execute(
        "UPDATE notification_outbox SET state = 'sent' WHERE notif_type = 're-notification'"
        " AND solver_pubkey != ?",
        (SOLVERS[0],),
    )
    set_state(conn, "d-1", "notified", T0)
    later = T0 + 400
    second = enqueue_renotification(
        conn, "d-1", cycle_now=later, renotification_seconds=300, messages=messages("y"), now=later
    )
    assert (second.outcome, len(second.outbox_ids), second.held_back) == ("enqueued", 2, 1)
    owed = rows(
        conn,
        "SELECT solver_pubkey, body FROM notification_outbox"
        " WHERE notif_type = 're-notification' AND state = 'pending' ORDER BY id",
    )
    assert owed == [(SOLVERS[0], f"x for {SOLVERS[0][:4]}")] + [
        (solver, f"y for {solver[:4]}") for solver in SOLVERS[1:]
    ]


def test_renotification_of_an_unknown_dispute_is_not_due(conn: apsw.Connection) -> None:
    result = enqueue_renotification(
        conn, "nope", cycle_now=T0, renotification_seconds=0, messages=(), now=T0
    )
    assert result.outcome == "not_due"


# --- since (CORE-20/21) ---


def test_since_cold_start_is_now(conn: apsw.Connection) -> None:
    assert compute_since(conn, T0) == Since(since=T0, last_seen_event_ts=None)


def test_since_warm_start_is_latest_event_minus_skew(conn: apsw.Connection) -> None:
    record_detected(conn, event("a", ts=T0 - 500), (), T0)
    record_detected(conn, event("b", ts=T0 - 100), (), T0)
    assert compute_since(conn, T0) == Since(since=T0 - 160, last_seen_event_ts=T0 - 100)


def test_since_is_floored_at_zero(conn: apsw.Connection) -> None:
    record_detected(conn, event("a", ts=30), (), T0)
    assert compute_since(conn, T0) == Since(since=0, last_seen_event_ts=30)
