"""A solver other than Serbero taking a mediated dispute (Q-6, BEY-18) at store level: the
live session superseded with its summary DMs still waiting abandoned, the report queued
once, and nothing for Serbero's own take, a take naming nobody, or a replay."""

from __future__ import annotations

import apsw
import msgspec

from serbero.protocol.keys import Keys
from serbero.store.disputes import record_detected
from serbero.store.resolution import assign_dispute, resolve_dispute
from serbero.store.summaries import SummaryQueued, begin_summary, record_summary
from tests.store.helpers import (
    SOLVERS,
    T0,
    count,
    event,
    generated_summary,
    one,
    open_classified,
    rows,
)

SERBERO = Keys.generate().public_hex
HUMAN = Keys.generate().public_hex


def _summary_queued(conn: apsw.Connection) -> None:
    """Serbero took d-1; its session's summary DMs wait in the outbox."""
    record_detected(conn, event("d-1"), (), T0)
    assign_dispute(
        conn, event("d-1", "in-progress", event_id="own"), SERBERO, (), T0, serbero_pubkey=SERBERO
    )
    open_classified(conn, confidence=0.8)
    job = begin_summary(conn, "s-1", T0 + 1)
    assert job is not None
    summary = generated_summary(job, "Late fiat.")
    assert isinstance(record_summary(conn, job, summary, SOLVERS, T0 + 2), SummaryQueued)


def test_a_human_take_supersedes_abandons_the_summary_and_reports_once(
    conn: apsw.Connection,
) -> None:
    _summary_queued(conn)
    take = event("d-1", "in-progress", event_id="human")
    result = assign_dispute(
        conn, take, HUMAN, (), T0 + 3, serbero_pubkey=SERBERO, report_recipients=SOLVERS
    )
    assert result.outcome == "noop" and result.superseded_session_id == "s-1"
    assert len(result.report_outbox_ids) == 3
    assert one(conn, "SELECT state FROM mediation_sessions") == "closed"
    assert (
        rows(
            conn,
            "SELECT notif_type, state FROM notification_outbox ORDER BY id",
        )
        == [("mediation_summary", "abandoned")] * 3
        + [("mediation_resolution_report", "pending")] * 3
    )
    [(payload,)] = rows(
        conn, "SELECT payload_json FROM mediation_events WHERE kind = 'superseded_by_human'"
    )
    assert msgspec.json.decode(payload)["reason"] == "dispute_taken_by_human"
    # A replay, and the settlement later: no second report.
    again = assign_dispute(
        conn, take, HUMAN, (), T0 + 4, serbero_pubkey=SERBERO, report_recipients=SOLVERS
    )
    assert again.superseded_session_id is None and again.report_outbox_ids == ()
    settled = resolve_dispute(conn, event("d-1", "settled"), (), SOLVERS, T0 + 5)
    assert settled.resolution.outcome == "resolved" and not settled.reported
    assert count(conn, "notification_outbox", "notif_type = 'mediation_resolution_report'") == 3
    assert count(conn, "mediation_events", "kind = 'resolved_externally_reported'") == 1


def test_serbero_s_own_take_or_a_take_naming_nobody_changes_nothing(
    conn: apsw.Connection,
) -> None:
    _summary_queued(conn)
    for assigned in (SERBERO.upper(), None):
        result = assign_dispute(
            conn,
            event("d-1", "in-progress", event_id=f"take-{assigned}"),
            assigned,
            (),
            T0 + 3,
            serbero_pubkey=SERBERO,
            report_recipients=SOLVERS,
        )
        assert result.superseded_session_id is None
    assert one(conn, "SELECT state FROM mediation_sessions") == "summary_pending"
    assert count(conn, "notification_outbox", "state = 'pending'") == 3
