"""The notification outbox: claim order, completion effects, retries, abandonment, crash requeue."""

from __future__ import annotations

import apsw
import pytest

from serbero.protocol.keys import Keys, encode_npub
from serbero.store.connection import open_database
from serbero.store.disputes import get_dispute, record_assignment, record_detected
from serbero.store.errors import InvalidRecord, UnknownOutboxRow
from serbero.store.lifecycle import TransitionResult, apply_transition
from serbero.store.notifications import NotificationRecord, NotifType, record_notifications
from serbero.store.outbox import (
    CLAIM_LEASE_SECONDS,
    FAILED_ROW_INTERVAL_SECONDS,
    FAILED_ROWS_IN_FULL,
    RETRY_MAX_SECONDS,
    OutboxOutcome,
    claim_due,
    claim_new,
    complete,
    complete_many,
    enqueue_notifications,
    requeue_in_flight,
    retry_delay,
)
from serbero.store.transaction import transaction
from tests.store.helpers import SOLVERS, T0, count, event, messages, one, rows

A, B, _ = SOLVERS


def claimed(conn: apsw.Connection, now: int, limit: int = 100) -> list[tuple[str, str, str]]:
    return [
        (r.dispute_id, r.solver_pubkey[:1], r.notif_type) for r in claim_due(conn, now, limit).rows
    ]


def test_rows_go_out_oldest_first_one_per_pair(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial"), T0)
    record_detected(conn, event("d-2"), messages("initial", (A,)), T0)
    enqueue_notifications(
        conn,
        dispute_id="d-2",
        notif_type="mediation_summary",
        cause="summary",
        messages=messages("summary", (A,)),
        now=T0,
    )
    assert claimed(conn, T0) == [
        ("d-1", "a", "initial"),
        ("d-1", "b", "initial"),
        ("d-1", "c", "initial"),
        ("d-2", "a", "initial"),
    ]
    # Everything left is either in flight or queued behind an in-flight row of its pair.
    assert claimed(conn, T0) == []


def test_a_later_row_waits_for_the_earlier_row_of_its_pair(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", (A, B)), T0)
    enqueue_notifications(
        conn,
        dispute_id="d-1",
        notif_type="mediation_summary",
        cause="summary",
        messages=messages("summary", (A, B)),
        now=T0,
    )
    first = claim_due(conn, T0, 10).rows
    assert [(r.solver_pubkey, r.notif_type) for r in first] == [(A, "initial"), (B, "initial")]
    complete(conn, first[0].id, ok=False, error="notification error: x", retry=True, now=T0)
    complete(conn, first[1].id, ok=True, error=None, retry=True, now=T0)
    # B's summary may go; A's waits until A's initial (in backoff) is done.
    assert [(r.solver_pubkey, r.notif_type) for r in claim_due(conn, T0 + 1, 10).rows] == [
        (B, "mediation_summary")
    ]
    due = T0 + retry_delay(1)
    assert [(r.solver_pubkey, r.notif_type) for r in claim_due(conn, due, 10).rows] == [
        (A, "initial")
    ]


def test_claim_counts_attempts_and_marks_in_flight(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", (A,)), T0)
    (row,) = claim_due(conn, T0 + 2, 10).rows
    assert (row.attempts, row.cause, row.body, row.created_at) == (
        1,
        "ev-d-1-initiated",
        "initial for aaaa",
        T0,
    )
    assert rows(conn, "SELECT claimed_at, attempts FROM notification_outbox") == [(T0 + 2, 1)]


def test_a_stale_claim_is_handed_out_again(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", (A,)), T0)
    assert len(claim_due(conn, T0, 10).rows) == 1
    assert claim_due(conn, T0 + CLAIM_LEASE_SECONDS - 1, 10).rows == ()
    (again,) = claim_due(conn, T0 + CLAIM_LEASE_SECONDS, 10).rows
    assert again.attempts == 2


def test_limit_is_respected_and_clamped(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial"), T0)
    assert len(claim_due(conn, T0, 2).rows) == 2
    assert len(claim_due(conn, T0, 0).rows) == 1


def test_delivered_initial_notifies_the_dispute_once(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", (A, B)), T0)
    first, second = claim_due(conn, T0, 10).rows
    done = complete(conn, first.id, ok=True, error=None, retry=True, now=T0 + 3)
    assert done.state == "sent"
    assert done.transition == TransitionResult("d-1", "new", "notified", "initial_notification")
    assert done.last_notified_at == T0 + 3
    assert rows(
        conn,
        "SELECT dispute_id, solver_pubkey, sent_at, status, error_message, notif_type"
        " FROM notifications",
    ) == [("d-1", A, T0 + 3, "sent", None, "initial")]
    later = complete(conn, second.id, ok=True, error=None, retry=True, now=T0 + 4)
    assert (later.transition, later.last_notified_at) == (None, None)
    dispute = get_dispute(conn, "d-1")
    assert dispute is not None
    assert (dispute.lifecycle_state, dispute.last_notified_at) == ("notified", T0 + 3)
    assert count(conn, "dispute_state_transitions") == 1
    assert rows(conn, "SELECT state, finished_at, claimed_at FROM notification_outbox") == [
        ("sent", T0 + 3, None),
        ("sent", T0 + 4, None),
    ]


def test_a_row_queued_with_another_key_spelling_is_recorded_in_hex(conn: apsw.Connection) -> None:
    """BEY-12: an outbox row an earlier version queued as the config spelled the key."""
    key = Keys.generate().public_hex
    for spelling in (encode_npub(key), key.upper()):
        record_detected(conn, event(f"d-{spelling[:4]}"), messages("initial", (spelling,)), T0)
        (row,) = claim_due(conn, T0, 10).rows
        complete(conn, row.id, ok=False, error="no relay", retry=True, now=T0 + 1)
    assert rows(conn, "SELECT solver_pubkey FROM notifications") == [(key,), (key,)]


def test_a_retryable_failure_backs_off(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", (A,)), T0)
    error = "notification error: gift-wrap send failed: no relay accepted"
    for attempt in range(1, 5):
        (row,) = claim_due(conn, T0 + 10_000 * attempt, 10).rows
        assert row.attempts == attempt
        done = complete(conn, row.id, ok=False, error=error, retry=True, now=T0 + 10_000 * attempt)
        assert done.state == "pending"
        assert done.next_attempt_at == T0 + 10_000 * attempt + retry_delay(attempt)
        assert claim_due(conn, T0 + 10_000 * attempt + retry_delay(attempt) - 1, 10).rows == ()
    assert rows(conn, "SELECT status, error_message FROM notifications") == [("failed", error)] * 4
    assert rows(conn, "SELECT state, last_error, claimed_at FROM notification_outbox") == [
        ("pending", error, None)
    ]
    # Every initial attempt failed: the dispute stays new (CORE-33), but it is still owed (BEY-3).
    assert one(conn, "SELECT lifecycle_state FROM disputes") == "new"
    assert one(conn, "SELECT last_notified_at FROM disputes") is None


def test_a_dm_failing_often_writes_its_first_failures_then_one_an_hour(
    conn: apsw.Connection,
) -> None:
    """The row counts every attempt and keeps the latest error; the audit gets the first
    FAILED_ROWS_IN_FULL failures, then one per FAILED_ROW_INTERVAL_SECONDS, and the
    delivery that finally comes is always recorded."""
    record_detected(conn, event("d-1"), messages("initial", (A,)), T0)
    now, written = T0, []
    for attempt in range(1, 13):
        (row,) = claim_due(conn, now, 10).rows
        done = complete(conn, row.id, ok=False, error=f"try {attempt}", retry=True, now=now)
        assert done.state == "pending"
        written.append(done.notification_id is not None)
        assert rows(conn, "SELECT attempts, last_error FROM notification_outbox") == [
            (attempt, f"try {attempt}")
        ]
        now += 1_000
    # 1-3 in full; then 4-6 fall within the hour of 3's row, 7 does not; 8-10 within 7's.
    assert written == [True] * 3 + [False] * 3 + [True] + [False] * 3 + [True] + [False]
    (row,) = claim_due(conn, now, 10).rows
    assert complete(conn, row.id, ok=True, error=None, retry=True, now=now).notification_id
    assert rows(conn, "SELECT status, COUNT(*) FROM notifications GROUP BY status") == [
        ("failed", FAILED_ROWS_IN_FULL + 2),
        ("sent", 1),
    ]
    assert FAILED_ROW_INTERVAL_SECONDS == 3_600


def test_backoff_doubles_and_caps() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert retry_delay(50) == RETRY_MAX_SECONDS
    assert retry_delay(0) == 5


def test_a_final_failure_ends_the_row(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", ("not-a-key",)), T0)
    (row,) = claim_due(conn, T0, 10).rows
    done = complete(
        conn, row.id, ok=False, error="invalid pubkey: bad hex", retry=False, now=T0 + 1
    )
    assert done.state == "failed"
    assert rows(conn, "SELECT state, finished_at, last_error FROM notification_outbox") == [
        ("failed", T0 + 1, "invalid pubkey: bad hex")
    ]
    assert rows(conn, "SELECT solver_pubkey, status, error_message FROM notifications") == [
        ("not-a-key", "failed", "invalid pubkey: bad hex")
    ]
    assert claim_due(conn, T0 + 10_000, 10).rows == ()


def test_a_failed_row_whose_purpose_is_gone_is_abandoned(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", (A,)), T0)
    (row,) = claim_due(conn, T0, 10).rows
    record_assignment(conn, event("d-1", "in-progress"), None, (), T0 + 1)
    done = complete(conn, row.id, ok=False, error="notification error: x", retry=True, now=T0 + 2)
    assert done.state == "abandoned"


def test_claim_abandons_rows_whose_purpose_is_gone(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial"), T0)
    apply_transition(conn, "d-1", "resolved", "dispute_resolved_externally", T0)
    claim = claim_due(conn, T0, 10)
    assert (claim.rows, claim.abandoned) == ((), 3)
    assert rows(conn, "SELECT DISTINCT state, finished_at FROM notification_outbox") == [
        ("abandoned", T0)
    ]
    assert count(conn, "notifications") == 0


def test_a_summary_dm_goes_out_until_its_dispute_is_resolved(conn: apsw.Connection) -> None:
    """MED-140: a resolution supersedes the session a summary was about; a summary DM not
    handed out yet is abandoned (the solvers get the resolution report instead)."""
    for dispute in ("d-1", "d-2"):
        record_detected(conn, event(dispute), (), T0)
        enqueue_notifications(
            conn,
            dispute_id=dispute,
            notif_type=NotifType.MEDIATION_SUMMARY,
            cause=f"summary:s-{dispute}",
            messages=messages("summary", (A,)),
            now=T0,
        )
    apply_transition(conn, "d-1", "resolved", "dispute_resolved_externally", T0)
    claim = claim_due(conn, T0, 10)
    assert [row.dispute_id for row in claim.rows] == ["d-2"]
    assert claim.abandoned == 1


def test_delivered_renotification_moves_last_notified_at_only_while_notified(
    conn: apsw.Connection,
) -> None:
    record_detected(conn, event("d-1"), (), T0)
    conn.execute("UPDATE disputes SET lifecycle_state = 'notified', last_notified_at = ?", (T0,))
    enqueue_notifications(
        conn,
        dispute_id="d-1",
        notif_type="re-notification",
        cause="renotification",
        messages=messages("again", (A, B)),
        now=T0 + 400,
    )
    first, second = claim_due(conn, T0 + 400, 10).rows
    done = complete(conn, first.id, ok=True, error=None, retry=True, now=T0 + 401)
    assert (done.transition, done.last_notified_at) == (None, T0 + 401)
    assert count(conn, "dispute_state_transitions") == 0
    apply_transition(conn, "d-1", "taken", "take", T0 + 402)
    late = complete(conn, second.id, ok=True, error=None, retry=True, now=T0 + 403)
    assert late.last_notified_at is None
    assert one(conn, "SELECT last_notified_at FROM disputes") == T0 + 401


def test_completing_an_unknown_row_fails(conn: apsw.Connection) -> None:
    with pytest.raises(UnknownOutboxRow):
        complete(conn, 999, ok=True, error=None, retry=True, now=T0)
    assert count(conn, "notifications") == 0


def test_a_late_completion_records_the_attempt_but_keeps_the_state(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", (A,)), T0)
    (row,) = claim_due(conn, T0, 10).rows
    complete(conn, row.id, ok=True, error=None, retry=True, now=T0 + 1)
    again = complete(conn, row.id, ok=True, error=None, retry=True, now=T0 + 2)
    assert again.state == "sent"
    assert count(conn, "notifications") == 2
    assert one(conn, "SELECT finished_at FROM notification_outbox") == T0 + 1


def test_kill_between_claim_and_completion_resends_after_restart(db_path: str) -> None:
    conn, _ = open_database(db_path)
    record_detected(conn, event("d-1"), messages("initial"), T0)
    before = claim_due(conn, T0, 10).rows
    assert len(before) == 3
    conn.close()  # the process dies here: nothing completed

    conn, _ = open_database(db_path)
    assert claim_due(conn, T0 + 1, 10).rows == ()
    assert requeue_in_flight(conn) == 3
    after = claim_due(conn, T0 + 1, 10).rows
    assert [r.id for r in after] == [r.id for r in before]
    assert [r.attempts for r in after] == [2, 2, 2]
    assert requeue_in_flight(conn) == 3
    conn.close()


@pytest.mark.parametrize("notif_type", ["admin_settle", "admin_cancel"])
def test_admin_notif_types_are_never_written(conn: apsw.Connection, notif_type: str) -> None:
    record_detected(conn, event("d-1"), (), T0)
    with pytest.raises(InvalidRecord):
        enqueue_notifications(
            conn, dispute_id="d-1", notif_type=notif_type, cause="x", messages=(), now=T0
        )
    with pytest.raises(InvalidRecord):
        record_notifications(conn, [NotificationRecord("d-1", A, T0, "sent", notif_type)])
    assert count(conn, "notifications") == 0


@pytest.mark.parametrize(
    ("status", "error"), [("sent", "oops"), ("failed", None), ("failed", ""), ("ok", None)]
)
def test_notification_rows_follow_core_37(
    conn: apsw.Connection, status: str, error: str | None
) -> None:
    record_detected(conn, event("d-1"), (), T0)
    with pytest.raises(InvalidRecord):
        record_notifications(conn, [NotificationRecord("d-1", A, T0, status, "initial", error)])


def test_notification_records_are_written_together(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), (), T0)
    ids = record_notifications(
        conn,
        [
            NotificationRecord("d-1", A, T0, "failed", "mediation_escalation_recommended", "x"),
            NotificationRecord("d-1", B, T0, "sent", "mediation_escalation_recommended"),
        ],
    )
    assert len(ids) == 2
    assert rows(conn, "SELECT solver_pubkey, status, error_message FROM notifications") == [
        (A, "failed", "x"),
        (B, "sent", None),
    ]


# --- claimed by the decision itself, completed many at once -----------------------------------


def test_a_decision_claims_its_new_rows_except_behind_an_earlier_row_of_the_pair(
    conn: apsw.Connection,
) -> None:
    """BEY-22 holds for rows claimed in the deciding transaction too."""
    with transaction(conn):
        detected = record_detected(conn, event("d-1"), messages("initial", (A, B)), T0)
        initial = claim_new(conn, detected.outbox_ids, T0, 1)
    assert [(r.solver_pubkey, r.notif_type, r.attempts) for r in initial] == [(A, "initial", 1)]
    assert rows(conn, "SELECT claimed_at, attempts FROM notification_outbox ORDER BY id") == [
        (T0, 1),
        (None, 0),
    ]
    # B's initial was left for the poll; A's assignment waits behind A's initial in flight.
    taken = record_assignment(conn, event("d-1", "in-progress"), None, messages("take", (A, B)), T0)
    assert taken.abandoned == 1  # B's initial, never sent
    assert [(r.solver_pubkey, r.notif_type) for r in claim_new(conn, taken.outbox_ids, T0, 5)] == [
        (B, "assignment")
    ]
    assert claim_due(conn, T0, 10).rows == ()
    done = complete(conn, initial[0].id, ok=True, error=None, retry=True, now=T0 + 1)
    assert done.unblocks
    assert [(r.solver_pubkey, r.notif_type) for r in claim_due(conn, T0 + 1, 10).rows] == [
        (A, "assignment")
    ]


def test_claim_new_leaves_rows_beyond_its_limit_to_the_poll(conn: apsw.Connection) -> None:
    detected = record_detected(conn, event("d-1"), messages("initial"), T0)
    assert claim_new(conn, detected.outbox_ids, T0, 0) == ()
    assert len(claim_new(conn, detected.outbox_ids, T0, 2)) == 2
    (third,) = claim_new(conn, detected.outbox_ids, T0, 5)
    assert third.id == detected.outbox_ids[2]
    assert claim_due(conn, T0, 10).rows == ()
    assert count(conn, "notification_outbox", "claimed_at IS NULL") == 0


def test_complete_many_commits_each_row_and_reports_unknown_rows(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial", (A, B)), T0)
    first, second = claim_due(conn, T0, 10).rows
    done = complete_many(
        conn,
        [
            OutboxOutcome(first.id, ok=True),
            OutboxOutcome(999, ok=True),
            OutboxOutcome(second.id, ok=False, error="notification error: x", retry=True),
        ],
        now=T0 + 1,
    )
    assert [type(result).__name__ for result in done] == [
        "OutboxCompletion",
        "UnknownOutboxRow",
        "OutboxCompletion",
    ]
    assert rows(conn, "SELECT state, next_attempt_at FROM notification_outbox ORDER BY id") == [
        ("sent", T0),
        ("pending", T0 + 1 + retry_delay(1)),
    ]
    assert count(conn, "notifications") == 2
    assert one(conn, "SELECT lifecycle_state FROM disputes") == "notified"
    assert not any(getattr(result, "unblocks", False) for result in done)


def test_a_claim_reads_only_as_many_rows_as_it_hands_out(conn: apsw.Connection) -> None:
    """A long backlog costs a claim its `limit`, not its length; pointless rows met on the
    way are abandoned and the claim still fills up."""
    record_detected(conn, event("d-0"), messages("initial"), T0)
    apply_transition(conn, "d-0", "resolved", "dispute_resolved_externally", T0)
    for n in range(1, 40):
        record_detected(conn, event(f"d-{n}"), messages("initial"), T0)
    claim = claim_due(conn, T0, 4)
    assert claim.abandoned == 3
    assert [(r.dispute_id, r.solver_pubkey[:1]) for r in claim.rows] == [
        ("d-1", "a"),
        ("d-1", "b"),
        ("d-1", "c"),
        ("d-2", "a"),
    ]
    assert count(conn, "notification_outbox", "state = 'abandoned'") == 3
