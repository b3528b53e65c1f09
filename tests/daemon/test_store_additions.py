"""The store steps the daemon added: the sender's wake-up time, queue depth, and the CORE-49
step 5 resolution report decided in the resolution's own transaction (MED-142..145, BEY-2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from serbero.actors.tracker import Context, run_batch
from serbero.actors.tracker_requests import ResolveDispute
from serbero.store.connection import open_database
from serbero.store.disputes import DisputeEvent, record_detected
from serbero.store.mediation import resolution_report_facts
from serbero.store.outbox import (
    OutboxMessage,
    claim_due,
    complete,
    count_pending,
    next_due_at,
)
from serbero.store.resolution import ResolutionOutcome

MOSTRO = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
SOLVERS = ("a" * 64, "b" * 64)
T0 = 1_700_000_000


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    connection, _ = open_database(str(tmp_path / "serbero.db"))
    try:
        yield connection
    finally:
        connection.close()


def dispute_event(dispute_id: str, status: str = "initiated") -> DisputeEvent:
    return DisputeEvent(
        dispute_id=dispute_id,
        event_id=f"ev-{dispute_id}-{status}",
        mostro_pubkey=MOSTRO,
        event_timestamp=T0,
        status=status,
        initiator_role="buyer",
    )


def detect(conn: apsw.Connection, dispute_id: str, now: int = T0) -> None:
    messages = tuple(OutboxMessage(s, f"initial {dispute_id}") for s in SOLVERS)
    record_detected(conn, dispute_event(dispute_id), messages, now)


def test_next_due_skips_rows_in_flight_and_rows_held_behind_their_pair(
    conn: apsw.Connection,
) -> None:
    assert next_due_at(conn) is None and count_pending(conn) == 0
    detect(conn, "d-1")
    assert next_due_at(conn) == T0 and count_pending(conn) == 2
    claim = claim_due(conn, T0, 10)
    assert len(claim.rows) == 2
    assert next_due_at(conn) is None, "claimed rows are the sender's; nothing else waits"
    first, second = claim.rows
    complete(conn, first.id, ok=False, error="notification error: x", retry=True, now=T0)
    assert next_due_at(conn) == T0 + 5, "the retry backoff decides the next look"
    complete(conn, second.id, ok=True, error=None, retry=True, now=T0)
    assert count_pending(conn) == 1


def test_next_due_ignores_a_later_row_blocked_by_a_pending_sibling(conn: apsw.Connection) -> None:
    detect(conn, "d-1")
    (row_a, _row_b) = claim_due(conn, T0, 10).rows
    complete(conn, row_a.id, ok=False, error="notification error: x", retry=True, now=T0)
    conn.execute(
        "INSERT INTO notification_outbox (dispute_id, solver_pubkey, notif_type, body, cause,"
        " created_at, next_attempt_at) VALUES ('d-1', ?, 'assignment', 'b', 'c', ?, ?)",
        (SOLVERS[0], T0, T0),
    )
    assert next_due_at(conn) == T0 + 5


def add_session(conn: apsw.Connection, dispute_id: str, session_id: str) -> None:
    conn.execute(
        "INSERT INTO mediation_sessions (session_id, dispute_id, state, prompt_bundle_id,"
        " policy_hash, started_at, last_transition_at) VALUES (?, ?, 'awaiting_response',"
        " 'bundle', 'hash', ?, ?)",
        (session_id, dispute_id, T0, T0),
    )
    conn.execute(
        "INSERT INTO mediation_events (session_id, kind, payload_json, occurred_at)"
        " VALUES (?, 'classification_produced', ?, ?)",
        (session_id, json.dumps({"classification": "coordination_failure", "confidence": 0.8}), T0),
    )
    for index, party in enumerate(("buyer", "seller", "buyer")):
        conn.execute(
            "INSERT INTO mediation_messages (session_id, direction, party, shared_pubkey,"
            " inner_event_id, inner_event_created_at, content, persisted_at)"
            " VALUES (?, 'outbound', ?, 'pk', ?, ?, 'hi', ?)",
            (session_id, party, f"inner-{index}", T0, T0),
        )


def resolve(conn: apsw.Connection, dispute_id: str) -> ResolutionOutcome:
    request = ResolveDispute(
        event=dispute_event(dispute_id, "settled"),
        notices=tuple(OutboxMessage(s, f"closed {dispute_id}") for s in SOLVERS),
        report_recipients=SOLVERS,
    )
    (answer,) = run_batch(conn, [request], Context(now=T0 + 10, rand=bytes))
    assert answer.error is None, answer.error
    assert isinstance(answer.value, ResolutionOutcome)
    return answer.value


def test_resolution_with_a_session_queues_the_report_and_its_audit_event(
    conn: apsw.Connection,
) -> None:
    detect(conn, "d-1")
    add_session(conn, "d-1", "s-1")
    outcome = resolve(conn, "d-1")
    assert outcome.reported is True
    bodies = conn.execute(
        "SELECT solver_pubkey, body FROM notification_outbox"
        " WHERE notif_type = 'mediation_resolution_report' ORDER BY id"
    ).fetchall()
    assert [solver for solver, _ in bodies] == list(SOLVERS)
    lines = bodies[0][1].split("\n")
    assert lines[:6] == [
        "mediation_resolution_report/v1",
        "Dispute: d-1",
        "Session: s-1",
        "Classification: coordination_failure (confidence 0.80)",
        "Outbound party messages: 2",
        "Final dispute status: settled",
    ]
    assert lines[6] == "" and "closed" in lines[7], "the session state is read after closing"
    session_id, payload = conn.execute(
        "SELECT session_id, payload_json FROM mediation_events"
        " WHERE kind = 'resolved_externally_reported'"
    ).fetchone()
    assert session_id == "s-1"
    data = json.loads(payload)
    assert data["final_dispute_status"] == "settled"
    assert data["outbound_party_messages_count"] == 2
    assert data["narrative"] == lines[7]


def test_dispute_scoped_context_without_a_session(conn: apsw.Connection) -> None:
    detect(conn, "d-2")
    conn.execute(
        "INSERT INTO mediation_events (session_id, kind, payload_json, occurred_at)"
        " VALUES (NULL, 'take_dispute_issued', ?, ?)",
        (json.dumps({"dispute_id": "d-2", "outcome": "failure", "reason": "x"}), T0),
    )
    conn.execute(
        "INSERT INTO mediation_events (session_id, kind, payload_json, occurred_at)"
        " VALUES (NULL, 'reasoning_verdict', 'not json', ?)",
        (T0,),
    )
    facts = resolution_report_facts(conn, "d-2")
    assert facts.session is None and facts.no_session_reason == "take_failed"
    resolve(conn, "d-2")
    body = conn.execute(
        "SELECT body FROM notification_outbox WHERE notif_type = 'mediation_resolution_report'"
    ).fetchone()[0]
    assert "Session: <none — dispute-scoped handoff>" in body
    assert "Classification: <none recorded>" in body


def test_no_context_no_report_and_a_second_resolution_reports_nothing(
    conn: apsw.Connection,
) -> None:
    detect(conn, "d-3")
    first = resolve(conn, "d-3")
    assert first.reported is False
    add_session(conn, "d-3", "s-3")
    second = resolve(conn, "d-3")
    assert second.resolution.outcome == "noop"
    assert second.reported is False
    assert (
        conn.execute(
            "SELECT COUNT(*) FROM notification_outbox"
            " WHERE notif_type = 'mediation_resolution_report'"
        ).fetchone()[0]
        == 0
    )
