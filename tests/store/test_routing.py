"""Mediation DM routing (MED-112, MAS-11) and queuing a notice with its cause (BEY-2)."""

from __future__ import annotations

import apsw
import pytest
from structlog.testing import capture_logs

from serbero.protocol.keys import encode_npub
from serbero.store.disputes import record_assignment, record_detected
from serbero.store.errors import UnknownDispute
from serbero.store.notifications import NotifType
from serbero.store.routing import queue_notice, solver_recipients
from serbero.store.transaction import transaction
from tests.store.helpers import MOSTRO, SOLVERS, T0, count, event, rows

STRANGER = "e" * 64


def _dispute(conn: apsw.Connection, assigned: str | None = None) -> None:
    record_detected(conn, event("d-1"), (), T0)
    if assigned is not None:
        record_assignment(conn, event("d-1", "in-progress"), assigned, (), T0 + 1)


def test_unassigned_dispute_goes_to_every_solver(conn: apsw.Connection) -> None:
    _dispute(conn)
    assert solver_recipients(conn, "d-1", SOLVERS) == SOLVERS


def test_assigned_configured_solver_alone(conn: apsw.Connection) -> None:
    _dispute(conn, SOLVERS[1])
    assert solver_recipients(conn, "d-1", SOLVERS) == (SOLVERS[1],)


def test_assigned_solver_matches_the_configured_key_in_any_spelling(
    conn: apsw.Connection,
) -> None:
    """The `p` tag and the config may spell one key differently (BEY-12); the configured
    spelling is what the DM is addressed to."""
    _dispute(conn, MOSTRO.upper())
    configured = (SOLVERS[0], encode_npub(MOSTRO))
    assert solver_recipients(conn, "d-1", configured) == (configured[1],)


def test_assigned_unknown_solver_broadcasts_with_a_warning(conn: apsw.Connection) -> None:
    _dispute(conn, STRANGER)
    with capture_logs() as logs:
        assert solver_recipients(conn, "d-1", SOLVERS) == SOLVERS
    assert [(r["event"], r["assigned_solver"]) for r in logs] == [
        ("mediation_assigned_solver_unknown", STRANGER)
    ]


def test_no_configured_solver_means_no_recipient(conn: apsw.Connection) -> None:
    _dispute(conn, STRANGER)
    assert solver_recipients(conn, "d-1", ()) == ()


def test_missing_dispute_row_is_an_error(conn: apsw.Connection) -> None:
    with pytest.raises(UnknownDispute):
        solver_recipients(conn, "d-404", SOLVERS)


def test_queue_notice_queues_one_row_per_recipient(conn: apsw.Connection) -> None:
    _dispute(conn)
    with transaction(conn):
        ids = queue_notice(
            conn,
            dispute_id="d-1",
            notif_type=NotifType.MEDIATION_ESCALATION_RECOMMENDED,
            cause="escalation:7",
            body="notice",
            recipients=SOLVERS[:2],
            now=T0 + 5,
        )
    assert len(ids) == 2
    assert rows(
        conn,
        "SELECT id, solver_pubkey, notif_type, body, cause, next_attempt_at, state"
        " FROM notification_outbox ORDER BY id",
    ) == [
        (ids[0], SOLVERS[0], "mediation_escalation_recommended", "notice", "escalation:7",
         T0 + 5, "pending"),
        (ids[1], SOLVERS[1], "mediation_escalation_recommended", "notice", "escalation:7",
         T0 + 5, "pending"),
    ]  # fmt: skip


def test_queue_notice_rolls_back_with_its_cause(conn: apsw.Connection) -> None:
    """The notice is part of the caller's transaction: no cause, no DM (BEY-2)."""
    _dispute(conn)
    with pytest.raises(RuntimeError), transaction(conn):
        queue_notice(
            conn,
            dispute_id="d-1",
            notif_type=NotifType.MEDIATION_SUMMARY,
            cause="summary:s-1",
            body="summary",
            recipients=SOLVERS,
            now=T0,
        )
        raise RuntimeError("the cause failed")
    assert count(conn, "notification_outbox") == 0
