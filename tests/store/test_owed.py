"""Notices owed from before the switch (#12 item 5): found by what has no outbox row behind
it, queued at most once, skipped once no longer owed."""

from __future__ import annotations

import apsw

from serbero.store.outbox import OutboxMessage
from serbero.store.owed import (
    OwedInitial,
    OwedRetry,
    find_owed,
    owed_initial_notices,
    queue_owed,
)
from tests.store.helpers import SOLVERS, T0

A, B, _ = SOLVERS


def add_dispute(conn: apsw.Connection, dispute_id: str, state: str) -> None:
    conn.execute(
        "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
        " dispute_status, event_timestamp, detected_at, lifecycle_state)"
        " VALUES (?, ?, 'm', 'buyer', 'initiated', ?, ?, ?)",
        (dispute_id, f"ev-{dispute_id}", T0, T0, state),
    )


def add_dispatch(conn: apsw.Connection, dispute_id: str, status: str) -> int:
    conn.execute(
        "INSERT INTO mediation_events (kind, payload_json, occurred_at)"
        " VALUES ('handoff_prepared', '{}', ?)",
        (T0,),
    )
    handoff = conn.last_insert_rowid()
    conn.execute(
        "INSERT INTO escalation_dispatches (dispatch_id, dispute_id, handoff_event_id,"
        " target_solver, dispatched_at, created_at, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (f"x-{handoff}", dispute_id, handoff, f"{A},{B}", T0, T0, status),
    )
    return handoff


def test_only_what_the_reference_left_unfinished_is_owed_and_only_once(
    conn: apsw.Connection,
) -> None:
    for dispute_id, state in (("new-1", "new"), ("done", "notified"), ("gone", "resolved")):
        add_dispute(conn, dispute_id, state)
    failed = add_dispatch(conn, "done", "send_failed")
    add_dispatch(conn, "done", "dispatched")
    add_dispatch(conn, "gone", "send_failed")
    owed = find_owed(conn)
    assert [d.dispute_id for d in owed.initial] == ["new-1"]
    ((dispatch),) = owed.dispatches
    assert (dispatch.handoff_event_id, dispatch.recipients) == (failed, (A, B))

    initial = OwedInitial("new-1", (OutboxMessage(A, "hello"),))
    retry = OwedRetry(dispatch, "escalation")
    queued = queue_owed(conn, [initial], [retry], T0 + 5)
    assert (queued.initial, queued.dispatches) == (1, 1)
    assert conn.execute(
        "SELECT dispute_id, solver_pubkey, notif_type, created_at, handoff_event_id"
        " FROM notification_outbox ORDER BY id"
    ).fetchall() == [
        ("new-1", A, "initial", T0 + 5, None),
        ("done", A, "mediation_escalation_recommended", T0, failed),
        ("done", B, "mediation_escalation_recommended", T0, failed),
    ]
    again = queue_owed(conn, [initial], [retry], T0 + 9)
    assert (again.initial, again.dispatches) == (0, 0)
    assert find_owed(conn).initial == () and find_owed(conn).dispatches == ()


def test_a_dispute_taken_before_its_owed_notice_is_queued_is_skipped(
    conn: apsw.Connection,
) -> None:
    add_dispute(conn, "new-1", "new")
    (dispute,) = owed_initial_notices(conn)
    conn.execute("UPDATE disputes SET lifecycle_state = 'taken' WHERE dispute_id = 'new-1'")
    queued = queue_owed(conn, [OwedInitial(dispute.dispute_id, (OutboxMessage(A, "hi"),))], [], T0)
    assert queued.initial == 0
    assert conn.execute("SELECT COUNT(*) FROM notification_outbox").fetchone() == (0,)
