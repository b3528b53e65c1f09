"""A summary in the store (MED-110..113, MAS-10..12): claiming a classified session, the one
transaction that stores the summary and queues its routed DM, escalation when nobody can be
told, and the session closing (or escalating) as its DMs complete."""

from __future__ import annotations

import apsw
import msgspec
import pytest

from serbero.protocol.handoff import decode_handoff_package
from serbero.protocol.texts import summary_notice
from serbero.store.disputes import record_detected
from serbero.store.mediation import summary_cause
from serbero.store.outbox import OutboxCompletion, OutboxOutcome, claim_due, complete
from serbero.store.rationale import rationale_id
from serbero.store.summaries import (
    ALL_SENDS_FAILED,
    NO_RECIPIENTS,
    SummaryEscalated,
    SummaryGone,
    SummaryJob,
    SummaryQueued,
    begin_summary,
    complete_and_settle,
    escalate_summary,
    record_summary,
    settle_summary_dm,
    summaries_due,
)
from tests.store.helpers import (
    BUNDLE,
    HASH,
    SOLVERS,
    SUMMARY_RATIONALE,
    T0,
    count,
    event,
    generated_summary,
    one,
    open_classified,
    rows,
)


def _classified(conn: apsw.Connection, session_id: str = "s-1", dispute_id: str = "d-1") -> None:
    """A dispute with a session classified `coordination_failure_resolvable` 0.85 at open."""
    record_detected(conn, event(dispute_id), (), T0)
    open_classified(conn, session_id, dispute_id)


def _state(conn: apsw.Connection, session_id: str = "s-1") -> str:
    return str(
        one(conn, "SELECT state FROM mediation_sessions WHERE session_id = ?", (session_id,))
    )


def _begin(conn: apsw.Connection, now: int = T0 + 10) -> SummaryJob:
    job = begin_summary(conn, "s-1", now)
    assert job is not None
    return job


def test_begin_claims_a_classified_session_with_its_classification(conn: apsw.Connection) -> None:
    _classified(conn)
    assert summaries_due(conn) == ("s-1",)
    job = _begin(conn)
    assert job == SummaryJob(
        session_id="s-1",
        dispute_id="d-1",
        prompt_bundle_id=BUNDLE,
        policy_hash=HASH,
        classification="coordination_failure_resolvable",
        confidence=0.85,
    )
    assert _state(conn) == "summary_pending"
    assert one(conn, "SELECT last_transition_at FROM mediation_sessions") == T0 + 10
    # A crash before the summary was stored: still due, the same job again, state unchanged.
    assert summaries_due(conn) == ("s-1",)
    assert begin_summary(conn, "s-1", T0 + 20) == job
    assert one(conn, "SELECT last_transition_at FROM mediation_sessions") == T0 + 10


def test_begin_refuses_sessions_that_are_not_due(conn: apsw.Connection) -> None:
    _classified(conn)
    conn.execute("UPDATE mediation_sessions SET state = 'awaiting_response'")
    assert begin_summary(conn, "s-1", T0) is None
    assert summaries_due(conn) == ()
    assert _state(conn) == "awaiting_response"


def test_mas10_the_summary_its_rationale_event_and_dm_in_one_transaction(
    conn: apsw.Connection,
) -> None:
    """MAS-10: assigned configured solver -> one DM to that solver; the rationale id is the
    SHA-256 of its text; the event names it, never the text; one bundle id/hash on all."""
    _classified(conn)
    conn.execute("UPDATE disputes SET assigned_solver = ?", (SOLVERS[1],))
    job = _begin(conn)
    record = record_summary(conn, job, generated_summary(job), SOLVERS, T0 + 11)
    rid = rationale_id(SUMMARY_RATIONALE)
    assert isinstance(record, SummaryQueued)
    assert (record.rationale_id, record.recipients) == (rid, (SOLVERS[1],))
    assert rows(
        conn,
        "SELECT session_id, dispute_id, classification, confidence, suggested_next_step,"
        " summary_text, prompt_bundle_id, policy_hash, rationale_id, generated_at"
        " FROM mediation_summaries",
    ) == [
        ("s-1", "d-1", "coordination_failure_resolvable", 0.85,
         "Confirm receipt with the seller.", "The fiat arrived late.", BUNDLE, HASH, rid,
         T0 + 11)
    ]  # fmt: skip
    assert rows(
        conn,
        "SELECT session_id, prompt_bundle_id, policy_hash, rationale_text FROM"
        " reasoning_rationales WHERE rationale_id = ?",
        (rid,),
    ) == [("s-1", BUNDLE, HASH, SUMMARY_RATIONALE)]
    [generated] = rows(
        conn,
        "SELECT payload_json, rationale_id, prompt_bundle_id, policy_hash, occurred_at"
        " FROM mediation_events WHERE kind = 'summary_generated'",
    )
    assert generated == (
        '{"classification":"coordination_failure_resolvable","confidence":0.85,'
        f'"rationale_id":"{rid}"}}',
        rid,
        BUNDLE,
        HASH,
        T0 + 11,
    )
    assert rows(conn, "SELECT solver_pubkey, notif_type, body, cause FROM notification_outbox") == [
        (
            SOLVERS[1],
            "mediation_summary",
            summary_notice("The fiat arrived late.", "Confirm receipt with the seller."),
            summary_cause("s-1"),
        )
    ]
    assert _state(conn) == "summary_pending"
    assert summaries_due(conn) == ()


@pytest.mark.parametrize("assigned", [None, "e" * 64])
def test_mas11_unassigned_or_unknown_assignee_goes_to_every_solver(
    conn: apsw.Connection, assigned: str | None
) -> None:
    _classified(conn)
    conn.execute("UPDATE disputes SET assigned_solver = ?", (assigned,))
    job = _begin(conn)
    record = record_summary(conn, job, generated_summary(job), SOLVERS, T0 + 11)
    assert isinstance(record, SummaryQueued) and record.recipients == SOLVERS
    assert count(conn, "notification_outbox", "notif_type = 'mediation_summary'") == 3


def test_mas12_no_recipients_keeps_the_summary_and_escalates(conn: apsw.Connection) -> None:
    _classified(conn)
    job = _begin(conn)
    record = record_summary(conn, job, generated_summary(job), (), T0 + 11)
    assert isinstance(record, SummaryEscalated)
    assert _state(conn) == "escalation_recommended"
    assert count(conn, "mediation_summaries") == 1
    assert count(conn, "notification_outbox") == 0
    assert count(conn, "notifications") == 0
    payload = msgspec.json.decode(
        one(conn, "SELECT payload_json FROM mediation_events WHERE kind = 'escalation_recommended'")
    )
    assert (payload["trigger"], payload["reason"]) == ("notification_failed", NO_RECIPIENTS)
    assert payload["rationale_refs"] == [rationale_id(SUMMARY_RATIONALE)]
    package = decode_handoff_package(
        one(conn, "SELECT payload_json FROM mediation_events WHERE kind = 'handoff_prepared'")
    )
    assert (package.session_id, package.trigger) == ("s-1", "notification_failed")


def test_a_session_that_left_summary_pending_gets_nothing(conn: apsw.Connection) -> None:
    """Superseded by an external resolution while the model was writing (MED-140)."""
    _classified(conn)
    job = _begin(conn)
    conn.execute("UPDATE mediation_sessions SET state = 'closed'")
    assert record_summary(conn, job, generated_summary(job), SOLVERS, T0 + 11) == SummaryGone(
        "closed"
    )
    assert count(conn, "mediation_summaries") == 0
    assert count(conn, "reasoning_rationales") == 0
    assert count(conn, "notification_outbox") == 0


def test_a_failed_write_leaves_the_session_due(conn: apsw.Connection) -> None:
    """One transaction: a write failing after the summary row leaves no row, no event, no
    DM, and the tick asks again."""
    _classified(conn)
    job = _begin(conn)
    conn.execute(
        "CREATE TEMP TRIGGER refuse AFTER INSERT ON notification_outbox"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(apsw.ConstraintError):
        record_summary(conn, job, generated_summary(job), SOLVERS, T0 + 11)
    assert count(conn, "mediation_summaries") == 0
    assert count(conn, "mediation_events", "kind = 'summary_generated'") == 0
    assert summaries_due(conn) == ("s-1",)


def _queued(conn: apsw.Connection, solvers: tuple[str, ...] = SOLVERS) -> tuple[int, ...]:
    _classified(conn)
    job = _begin(conn)
    record = record_summary(conn, job, generated_summary(job), solvers, T0 + 11)
    assert isinstance(record, SummaryQueued)
    claim_due(conn, T0 + 12, 10)
    return record.outbox_ids


def test_the_first_dm_sent_closes_the_session(conn: apsw.Connection) -> None:
    """MED-113: `summary_pending -> summary_delivered -> closed` at the DM's completion."""
    first, second, third = _queued(conn)
    failed = complete(conn, first, ok=False, error="invalid pubkey: x", retry=False, now=T0 + 13)
    assert settle_summary_dm(conn, failed, T0 + 13) is None
    sent = complete(conn, second, ok=True, error=None, retry=True, now=T0 + 14)
    settled = settle_summary_dm(conn, sent, T0 + 14)
    assert settled is not None and settled.closed
    assert _state(conn) == "closed"
    assert one(conn, "SELECT last_transition_at FROM mediation_sessions") == T0 + 14
    # Later outcomes change nothing.
    last = complete(conn, third, ok=True, error=None, retry=True, now=T0 + 15)
    assert settle_summary_dm(conn, last, T0 + 15) is None
    assert count(conn, "mediation_events", "kind = 'escalation_recommended'") == 0


def test_every_dm_failing_for_good_escalates_once(conn: apsw.Connection) -> None:
    """MED-113: none sent -> `notification_failed`, "all recipient sends failed"; the
    notice goes to the summary's own recipients."""
    ids = _queued(conn, SOLVERS[:2])
    first = complete(conn, ids[0], ok=False, error="invalid pubkey: a", retry=False, now=T0 + 13)
    assert settle_summary_dm(conn, first, T0 + 13) is None
    assert _state(conn) == "summary_pending"
    second = complete(conn, ids[1], ok=False, error="invalid pubkey: b", retry=False, now=T0 + 14)
    settled = settle_summary_dm(conn, second, T0 + 14)
    assert settled is not None and settled.escalation is not None
    assert _state(conn) == "escalation_recommended"
    payload = msgspec.json.decode(
        one(conn, "SELECT payload_json FROM mediation_events WHERE kind = 'escalation_recommended'")
    )
    assert (payload["trigger"], payload["reason"]) == ("notification_failed", ALL_SENDS_FAILED)
    assert [r[0] for r in rows(
        conn,
        "SELECT solver_pubkey FROM notification_outbox"
        " WHERE notif_type = 'mediation_escalation_recommended' ORDER BY id",
    )] == list(SOLVERS[:2])  # fmt: skip


def test_a_retried_failure_settles_nothing(conn: apsw.Connection) -> None:
    (only,) = _queued(conn, SOLVERS[:1])
    again = complete(conn, only, ok=False, error="send failed: no relay", retry=True, now=T0 + 13)
    assert again.state == "pending"
    assert settle_summary_dm(conn, again, T0 + 13) is None
    assert _state(conn) == "summary_pending"


def test_escalate_summary_through_the_recommend(conn: apsw.Connection) -> None:
    """MED-111 with Q-5: state, reason, handoff and the routed notice; a second call finds
    the session ended and writes nothing."""
    _classified(conn)
    _begin(conn)
    escalated = escalate_summary(
        conn,
        "s-1",
        "d-1",
        trigger="authority_boundary_attempt",
        reason="authority boundary attempt in summary",
        solvers=SOLVERS,
        now=T0 + 12,
    )
    assert escalated is not None and len(escalated.outbox_ids) == 3
    assert _state(conn) == "escalation_recommended"
    assert count(conn, "mediation_summaries") == 0
    again = escalate_summary(
        conn, "s-1", "d-1", trigger="reasoning_unavailable", reason="timeout", solvers=SOLVERS,
        now=T0 + 13,
    )  # fmt: skip
    assert again is None
    assert count(conn, "mediation_events", "kind = 'handoff_prepared'") == 1


def test_a_batch_names_the_notice_its_failures_queued(conn: apsw.Connection) -> None:
    """The sender's commit (`complete_and_settle`) tells it which rows the escalation
    queued, so it sends them at once: named once, by the completion that escalated."""
    ids = _queued(conn, SOLVERS[:2])
    outcomes = [OutboxOutcome(i, ok=False, error="invalid pubkey: x", retry=False) for i in ids]
    completions = complete_and_settle(conn, outcomes, T0 + 13)
    notices = tuple(r[0] for r in rows(
        conn,
        "SELECT id FROM notification_outbox"
        " WHERE notif_type = 'mediation_escalation_recommended' ORDER BY id",
    ))  # fmt: skip
    assert len(notices) == 2
    queued = [c.queued for c in completions if isinstance(c, OutboxCompletion) and c.queued]
    assert queued == [notices]


def test_a_settling_that_fails_keeps_the_dm_outcome_and_the_session(
    conn: apsw.Connection,
) -> None:
    """A session that cannot be settled (here it no longer belongs to the DM's dispute, so
    its escalation is refused) is logged; the DM's failure stays recorded in the same
    commit and the session stays `summary_pending` with nothing of the escalation written."""
    [only] = _queued(conn, SOLVERS[:1])
    record_detected(conn, event("d-2"), (), T0)
    conn.execute("UPDATE mediation_sessions SET dispute_id = 'd-2'")
    outcome = OutboxOutcome(only, ok=False, error="invalid pubkey: x", retry=False)
    [completion] = complete_and_settle(conn, [outcome], T0 + 13)
    assert isinstance(completion, OutboxCompletion) and completion.queued == ()
    assert one(conn, "SELECT state FROM notification_outbox WHERE id = ?", (only,)) == "failed"
    assert _state(conn) == "summary_pending"
    assert count(conn, "mediation_events", "kind = 'escalation_recommended'") == 0
