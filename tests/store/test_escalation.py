"""Escalation reads and writes: the pending scan (ESC-12/14, BEY-14) and the audit writers."""

from __future__ import annotations

import apsw
import pytest

from serbero.store.disputes import record_detected
from serbero.store.errors import InvalidRecord
from serbero.store.escalation import (
    HANDOFF_PAGE_SIZE,
    HandoffRow,
    RecipientOutcome,
    count_pending_handoffs,
    pending_handoffs_page,
    record_dispatch,
    record_parse_failed,
    record_superseded,
    record_unroutable,
)
from serbero.store.outbox import OutboxMessage, claim_due, complete, enqueue_notifications
from tests.store.helpers import T0, count, event, rows

RECONCILIATION = (
    "SELECT d.dispatch_id FROM escalation_dispatches d LEFT JOIN mediation_events e"
    " ON json_extract(e.payload_json,'$.dispatch_id') = d.dispatch_id"
    " AND e.kind = 'escalation_dispatched' WHERE e.id IS NULL UNION ALL"
    " SELECT json_extract(e.payload_json,'$.dispatch_id') FROM mediation_events e"
    " LEFT JOIN escalation_dispatches d ON json_extract(e.payload_json,'$.dispatch_id')"
    " = d.dispatch_id WHERE e.kind = 'escalation_dispatched' AND d.dispatch_id IS NULL"
)


@pytest.fixture
def esc(conn: apsw.Connection) -> apsw.Connection:
    record_detected(conn, event("d-1"), (), T0)
    conn.execute(
        "INSERT INTO mediation_sessions (session_id, dispute_id, state, prompt_bundle_id,"
        " policy_hash, started_at, last_transition_at)"
        " VALUES ('s-1', 'd-1', 'escalation_recommended', 'phase3-default', 'h1', 1, 1)"
    )
    return conn


def add_handoff(
    conn: apsw.Connection, session: str | None = "s-1", kind: str = "handoff_prepared"
) -> int:
    conn.execute(
        "INSERT INTO mediation_events (session_id, kind, payload_json, prompt_bundle_id,"
        ' policy_hash, occurred_at) VALUES (?, ?, \'{"dispute_id":"d-1"}\', ?, ?, ?)',
        (session, kind, "phase3-default" if session else None, "h1" if session else None, T0),
    )
    return int(conn.last_insert_rowid())


def handoff(conn: apsw.Connection, handoff_id: int) -> HandoffRow:
    (row,) = [h for h in pending_handoffs_page(conn, after_id=handoff_id - 1, limit=1)]
    assert row.id == handoff_id
    return row


def audit(conn: apsw.Connection) -> list[tuple[object, ...]]:
    return rows(
        conn,
        "SELECT session_id, kind, payload_json, rationale_id, prompt_bundle_id, policy_hash,"
        " occurred_at FROM mediation_events WHERE kind LIKE 'escalation_%' ORDER BY id",
    )


def test_scan_returns_pending_handoffs_in_order(esc: apsw.Connection) -> None:
    first = add_handoff(esc)
    add_handoff(esc, kind="escalation_recommended")
    second = add_handoff(esc, session=None)
    third = add_handoff(esc)
    fourth = add_handoff(esc)
    record_dispatch(
        esc,
        dispatch_id="x",
        handoff=handoff(esc, second),
        dispute_id="d-1",
        outcomes=[RecipientOutcome("s", ok=False)],
        via_fallback=False,
        dispatched_at=T0,
    )
    record_parse_failed(esc, handoff(esc, third), "d-1", "deserialize_failed", "bad", T0)
    page = pending_handoffs_page(esc)
    assert [h.id for h in page] == [first, fourth]
    assert page[0] == HandoffRow(
        id=first,
        session_id="s-1",
        payload_json='{"dispute_id":"d-1"}',
        prompt_bundle_id="phase3-default",
        policy_hash="h1",
        occurred_at=T0,
    )
    assert [h.id for h in pending_handoffs_page(esc, limit=1)] == [first]
    assert [h.id for h in pending_handoffs_page(esc, after_id=first)] == [fourth]
    # `serbero status` counts the same ESC-12 predicate.
    assert count_pending_handoffs(esc) == 2


def test_a_handoff_with_owed_outbox_dms_is_not_pending(esc: apsw.Connection) -> None:
    handoff_id = add_handoff(esc)
    (row_id,) = enqueue_notifications(
        esc,
        dispute_id="d-1",
        notif_type="mediation_escalation_recommended",
        cause=f"handoff:{handoff_id}",
        messages=[OutboxMessage("A", "escalation_handoff/v1")],
        now=T0,
        handoff_event_id=handoff_id,
    )
    assert pending_handoffs_page(esc) == ()
    # ESC-12 alone (what `serbero status` counts) does not look at our outbox.
    assert count_pending_handoffs(esc) == 1
    (claimed,) = claim_due(esc, T0, 10).rows
    assert (claimed.id, claimed.handoff_event_id) == (row_id, handoff_id)
    complete(esc, row_id, ok=True, error=None, retry=True, now=T0)
    assert [h.id for h in pending_handoffs_page(esc)] == [handoff_id]


@pytest.mark.parametrize("limit", [0, -1, -(2**63)])
def test_scan_limit_is_clamped_to_one(esc: apsw.Connection, limit: int) -> None:
    add_handoff(esc)
    add_handoff(esc)
    assert len(pending_handoffs_page(esc, limit=limit)) == 1


def test_paging_reaches_every_pending_handoff(esc: apsw.Connection) -> None:
    # BEY-14 / ESC-AS-24: 130 superseded handoffs never hide a newer one.
    stale = [add_handoff(esc) for _ in range(130)]
    for handoff_id in stale:
        record_superseded(esc, handoff(esc, handoff_id), "d-1", T0)
    fresh = add_handoff(esc)
    seen: list[int] = []
    after = 0
    while True:
        page = pending_handoffs_page(esc, after_id=after)
        seen.extend(h.id for h in page)
        if len(page) < HANDOFF_PAGE_SIZE:
            break
        after = page[-1].id
    assert seen == [*stale, fresh]


@pytest.mark.parametrize(
    ("oks", "status"),
    [((True, True), "dispatched"), ((False, True), "dispatched"), ((False, False), "send_failed")],
)
def test_dispatch_row_and_its_audit_event(
    esc: apsw.Connection, oks: tuple[bool, bool], status: str
) -> None:
    h = handoff(esc, add_handoff(esc))
    record = record_dispatch(
        esc,
        dispatch_id="0b7e1c9a-1111-4222-8333-444455556666",
        handoff=h,
        dispute_id="d-1",
        outcomes=[RecipientOutcome("A", oks[0]), RecipientOutcome("B", oks[1])],
        via_fallback=True,
        dispatched_at=T0 - 5,
    )
    assert (record.status, record.target_solver) == (status, "A,B")
    assert rows(esc, "SELECT * FROM escalation_dispatches") == [
        (
            "0b7e1c9a-1111-4222-8333-444455556666",
            "d-1",
            "s-1",
            h.id,
            "A,B",
            T0 - 5,
            T0 - 5,
            status,
            1,
        )
    ]
    assert audit(esc) == [
        (
            "s-1",
            "escalation_dispatched",
            '{"dispatch_id":"0b7e1c9a-1111-4222-8333-444455556666","dispute_id":"d-1",'
            f'"fallback_broadcast":true,"handoff_event_id":{h.id},"status":"{status}",'
            '"target_solver":"A,B"}',
            None,
            "phase3-default",
            "h1",
            T0 - 5,
        )
    ]
    assert rows(esc, RECONCILIATION) == []
    assert pending_handoffs_page(esc) == ()


def test_a_second_dispatch_for_a_handoff_writes_nothing(esc: apsw.Connection) -> None:
    h = handoff(esc, add_handoff(esc, session=None))

    def dispatch(dispatch_id: str) -> object:
        return record_dispatch(
            esc,
            dispatch_id=dispatch_id,
            handoff=h,
            dispute_id="d-1",
            outcomes=[RecipientOutcome("A", True)],
            via_fallback=False,
            dispatched_at=T0,
        )

    dispatch("one")
    with pytest.raises(apsw.ConstraintError):
        dispatch("two")
    assert count(esc, "escalation_dispatches") == 1
    assert count(esc, "mediation_events", "kind = 'escalation_dispatched'") == 1
    (row,) = audit(esc)
    assert row[0] is None and row[4] is None and row[5] is None
    assert '"fallback_broadcast":false' in str(row[2])


def test_a_dispatch_needs_recipients(esc: apsw.Connection) -> None:
    with pytest.raises(InvalidRecord):
        record_dispatch(
            esc,
            dispatch_id="x",
            handoff=handoff(esc, add_handoff(esc)),
            dispute_id="d-1",
            outcomes=[],
            via_fallback=False,
            dispatched_at=T0,
        )


def test_superseded_is_written_once_per_handoff_and_does_not_consume(
    esc: apsw.Connection,
) -> None:
    one_id, two_id = add_handoff(esc), add_handoff(esc)
    one, two = handoff(esc, one_id), handoff(esc, two_id)
    assert record_superseded(esc, one, "d-1", T0)
    assert not record_superseded(esc, one, "d-1", T0 + 30)
    assert record_superseded(esc, two, "d-1", T0 + 30)
    assert audit(esc) == [
        (
            "s-1",
            "escalation_superseded",
            f'{{"dispute_id":"d-1","handoff_event_id":{one_id},'
            '"reason":"dispute_already_resolved"}',
            None,
            "phase3-default",
            "h1",
            T0,
        ),
        (
            "s-1",
            "escalation_superseded",
            f'{{"dispute_id":"d-1","handoff_event_id":{two_id},'
            '"reason":"dispute_already_resolved"}',
            None,
            "phase3-default",
            "h1",
            T0 + 30,
        ),
    ]
    assert [h.id for h in pending_handoffs_page(esc)] == [one_id, two_id]


def test_unroutable_is_written_once_and_does_not_consume(esc: apsw.Connection) -> None:
    h = handoff(esc, add_handoff(esc, session=None))
    assert record_unroutable(esc, h, "d-1", 2, T0)
    assert not record_unroutable(esc, h, "d-1", 3, T0 + 30)
    assert audit(esc) == [
        (
            None,
            "escalation_dispatch_unroutable",
            '{"configured_solver_count":2,"dispute_id":"d-1","fallback_to_all_solvers":false,'
            f'"handoff_event_id":{h.id}}}',
            None,
            None,
            None,
            T0,
        )
    ]
    assert [p.id for p in pending_handoffs_page(esc)] == [h.id]


def test_parse_failed_consumes_the_handoff(esc: apsw.Connection) -> None:
    h = handoff(esc, add_handoff(esc))
    assert record_parse_failed(esc, h, "unknown", "deserialize_failed", 'line 1: "x"\n', T0)
    assert not record_parse_failed(esc, h, "unknown", "deserialize_failed", "again", T0)
    assert audit(esc) == [
        (
            "s-1",
            "escalation_dispatch_parse_failed",
            '{"detail":"line 1: \\"x\\"\\n","dispute_id":"unknown",'
            f'"handoff_event_id":{h.id},"reason":"deserialize_failed"}}',
            None,
            "phase3-default",
            "h1",
            T0,
        )
    ]
    assert pending_handoffs_page(esc) == ()
