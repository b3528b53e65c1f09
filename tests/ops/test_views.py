"""The read-only views as data: status, dispute list and timeline (BEY-10, ESC-12)."""

from __future__ import annotations

from pathlib import Path

import apsw
import msgspec
import pytest

from serbero.ops.database import OpsError, open_for_reading
from serbero.ops.disputes import OPEN_FILTER, list_disputes
from serbero.ops.status import PROBLEM_NO_HEALTH_RECORD, PROBLEM_NO_RELAY, read_status
from serbero.ops.timeline import read_timeline
from serbero.store.connection import open_database
from serbero.store.health import KEY_HEARTBEAT_AT, RelayHealth, write_health
from serbero.store.rationale import rationale_id
from serbero.store.schema import SCHEMA_VERSION
from tests.ops.seed import (
    FRESH,
    MEDIATED,
    NOTIFIED,
    RATIONALE_ID,
    RESOLVED,
    SESSION_ID,
    SOLVER_A,
    T0,
    VERDICT_RATIONALE_TEXT,
    seed_reference,
    seed_v6,
)


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    path = tmp_path / "serbero.db"
    seed_v6(path)
    return path


def _schema(path: Path) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(r) for r in conn.execute("SELECT * FROM sqlite_master ORDER BY name")]
    finally:
        conn.close()


def test_status_reports_relays_heartbeat_counts_outbox_and_handoffs(seeded: Path) -> None:
    with open_for_reading(str(seeded)) as db:
        report = read_status(db, T0 + 530)
    assert report.healthy
    assert report.problems == ()
    assert report.schema_version == SCHEMA_VERSION
    assert [(r.url, r.state, r.connected) for r in report.relays or ()] == [
        ("wss://relay.one", "connected", True),
        ("wss://relay.two", "backoff", False),
    ]
    assert report.relays_connected == 1
    assert report.heartbeat is not None
    assert (report.heartbeat.at, report.heartbeat.age, report.heartbeat.stale) == (
        T0 + 500,
        30,
        False,
    )
    assert report.heartbeat.started_at == T0
    assert report.last_dispute_event is not None
    assert report.last_dispute_event.source == "health"
    assert (report.last_dispute_event.at, report.last_dispute_event.age) == (T0 + 390, 140)
    assert report.lifecycle_counts == {
        "new": 1,
        "notified": 1,
        "taken": 1,
        "waiting": 0,
        "escalated": 0,
        "resolved": 1,
    }
    assert report.disputes_total == 4
    assert report.outbox is not None
    assert (report.outbox.pending, report.outbox.in_flight, report.outbox.failed) == (2, 1, 0)
    assert report.outbox.oldest_pending_at == T0 + 200
    # The mediated dispute's handoff was dispatched; the dispute-scoped one for NOTIFIED not.
    assert report.pending_handoffs == 1
    assert report.unavailable == ()


def test_a_stale_heartbeat_makes_the_daemon_unhealthy(seeded: Path) -> None:
    with open_for_reading(str(seeded)) as db:
        at_limit = read_status(db, T0 + 620, stale_after=120)
        past = read_status(db, T0 + 621, stale_after=120)
    assert at_limit.healthy
    assert not past.healthy
    assert past.heartbeat is not None and past.heartbeat.stale
    assert past.problems == ("heartbeat stale: 121s old (limit 120s)",)


def test_no_connected_relay_makes_the_daemon_unhealthy(seeded: Path) -> None:
    conn, _ = open_database(str(seeded))
    write_health(
        conn,
        relays=[RelayHealth("wss://relay.one", "disconnected", T0 + 505)],
        values={KEY_HEARTBEAT_AT: str(T0 + 505)},
        now=T0 + 505,
    )
    conn.close()
    with open_for_reading(str(seeded)) as db:
        report = read_status(db, T0 + 510)
    assert not report.healthy
    assert report.problems == (PROBLEM_NO_RELAY,)
    assert report.relays_connected == 0


def test_a_reference_database_has_no_health_record_but_still_reports(tmp_path: Path) -> None:
    path = tmp_path / "reference.db"
    seed_reference(path)
    before = _schema(path)
    with open_for_reading(str(path)) as db:
        report = read_status(db, T0 + 1000)
        disputes = list_disputes(db)
        timeline = read_timeline(db, NOTIFIED)
    assert report.schema_version == 5
    assert not report.healthy
    assert report.problems == (PROBLEM_NO_HEALTH_RECORD,)
    assert report.relays is None and report.heartbeat is None and report.outbox is None
    assert report.unavailable == (
        "serbero_relay_health",
        "serbero_daemon_health",
        "notification_outbox",
    )
    assert report.last_dispute_event is not None
    assert report.last_dispute_event.source == "disputes"
    assert report.last_dispute_event.event_id == f"ev-{FRESH}"
    assert report.lifecycle_counts["new"] == 1 and report.lifecycle_counts["notified"] == 1
    assert report.pending_handoffs == 1
    assert [d.dispute_id for d in disputes] == [FRESH, NOTIFIED]
    assert timeline is not None
    assert timeline.unavailable == ("notification_outbox", "serbero_rationale_occurrences")
    assert [(e.source, e.kind) for e in timeline.entries] == [
        ("disputes", "dispute_detected"),
        ("notifications", "notification_sent"),
        ("dispute_state_transitions", "state_transition"),
        ("mediation_events", "handoff_prepared"),
    ]
    assert _schema(path) == before


def test_hand_edited_states_are_counted_too(seeded: Path) -> None:
    conn = apsw.Connection(str(seeded))
    conn.execute("UPDATE disputes SET lifecycle_state = 'frozen' WHERE dispute_id = ?", (FRESH,))
    conn.close()
    with open_for_reading(str(seeded)) as db:
        report = read_status(db, T0 + 510)
    assert report.lifecycle_counts["frozen"] == 1
    assert report.lifecycle_counts["new"] == 0
    assert report.disputes_total == 4


def test_disputes_newest_first_by_state_and_limit(seeded: Path) -> None:
    with open_for_reading(str(seeded)) as db:
        everything = list_disputes(db)
        open_ones = list_disputes(db, state=OPEN_FILTER)
        taken = list_disputes(db, state="taken")
        two = list_disputes(db, limit=2)
    assert [d.dispute_id for d in everything] == [RESOLVED, FRESH, NOTIFIED, MEDIATED]
    assert [d.dispute_id for d in open_ones] == [FRESH, NOTIFIED, MEDIATED]
    assert [(d.dispute_id, d.assigned_solver) for d in taken] == [(MEDIATED, SOLVER_A)]
    assert [d.dispute_id for d in two] == [RESOLVED, FRESH]


def test_timeline_is_time_ordered_across_every_audit_table(seeded: Path) -> None:
    with open_for_reading(str(seeded)) as db:
        timeline = read_timeline(db, MEDIATED)
    assert timeline is not None
    assert timeline.sessions == (SESSION_ID,)
    times = [entry.at for entry in timeline.entries]
    assert times == sorted(times)
    sources = {entry.source for entry in timeline.entries}
    assert sources == {
        "disputes",
        "notification_outbox",
        "notifications",
        "dispute_state_transitions",
        "mediation_sessions",
        "mediation_messages",
        "reasoning_rationales",
        "serbero_rationale_occurrences",
        "mediation_events",
        "mediation_summaries",
        "escalation_dispatches",
    }
    kinds = [entry.kind for entry in timeline.entries if entry.source == "mediation_events"]
    # Dispute-scoped (reasoning_verdict) and session-scoped events; not NOTIFIED's handoff.
    assert kinds == [
        "reasoning_verdict",
        "classification_produced",
        "handoff_prepared",
        "escalation_dispatched",
    ]
    rationale = [e for e in timeline.entries if e.source == "reasoning_rationales"]
    verdict_rationale = rationale_id(VERDICT_RATIONALE_TEXT)
    # The dispute-scoped verdict's rationale is found through its occurrence row.
    assert [e.ref for e in rationale] == [verdict_rationale, RATIONALE_ID]
    uses = [e for e in timeline.entries if e.source == "serbero_rationale_occurrences"]
    assert [(e.kind, e.ref, e.details["session_id"]) for e in uses] == [
        ("rationale_classification", verdict_rationale, None)
    ]
    transitions = [
        (e.details["from"], e.details["to"])
        for e in timeline.entries
        if e.source == "dispute_state_transitions"
    ]
    assert transitions == [("new", "notified"), ("notified", "taken")]


def test_timeline_of_an_unknown_dispute_is_none(seeded: Path) -> None:
    with open_for_reading(str(seeded)) as db:
        assert read_timeline(db, "no-such-dispute") is None


def test_the_timeline_of_a_dispute_without_mediation_has_only_core_rows(seeded: Path) -> None:
    with open_for_reading(str(seeded)) as db:
        timeline = read_timeline(db, RESOLVED)
    assert timeline is not None
    assert timeline.sessions == ()
    assert {e.source for e in timeline.entries} == {
        "disputes",
        "notification_outbox",
        "notifications",
        "dispute_state_transitions",
    }
    data = msgspec.to_builtins(timeline)
    assert data["dispute"]["lifecycle_state"] == "resolved"


def test_missing_database_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(OpsError, match="database not found"), open_for_reading(str(path)):
        pass
    assert not path.exists()


def test_a_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(OpsError, match="not a serbero database"), open_for_reading(str(path)):
        pass


def test_views_read_while_the_daemon_holds_a_write_connection(seeded: Path) -> None:
    writer, _ = open_database(str(seeded))
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "UPDATE disputes SET lifecycle_state = 'taken' WHERE dispute_id = ?", (FRESH,)
        )
        with open_for_reading(str(seeded)) as db:
            report = read_status(db, T0 + 510)
        # The reader sees the last committed state, not the open transaction.
        assert report.lifecycle_counts["new"] == 1
        writer.execute("COMMIT")
    finally:
        writer.close()
