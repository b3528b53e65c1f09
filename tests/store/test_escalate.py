"""The session-scoped recommend on real SQLite (MED-121, MED-123, MED-126, MED-73, Q-5): the
conditional flip, both events with the fixed handoff order, the routed notice in the same
transaction, the dispatcher's scan finding the handoff (BEY-17), and what is refused."""

from __future__ import annotations

import apsw
import pytest

from serbero.actors.mediation.requests import RecommendSessionEscalation
from serbero.actors.tracker import open_tracker
from serbero.protocol.handoff import decode_handoff_package
from serbero.store.errors import StoreError, StoreFailure, UnknownSession
from serbero.store.escalate import (
    NotEscalatable,
    SessionEscalation,
    recommend_session_escalation,
)
from serbero.store.escalation import pending_handoffs_page
from serbero.store.rounds import PARTY_WAIT_STATES
from tests.store.helpers import SOLVERS, T0, count, one, rows
from tests.store.test_rounds import BUNDLE, HASH, seed_session
from tests.support.clocks import FakeWallClock


def _request(trigger: str = "round_limit", **extra: object) -> SessionEscalation:
    return SessionEscalation(
        session_id="s-1",
        dispute_id="d-1",
        trigger=trigger,
        evidence_refs=("ab" * 32,) if trigger == "round_limit" else (),
        **extra,  # type: ignore[arg-type]
    )


def _events(conn: apsw.Connection) -> list[tuple[object, ...]]:
    return rows(
        conn,
        "SELECT kind, session_id, payload_json, prompt_bundle_id, policy_hash, occurred_at"
        " FROM mediation_events WHERE kind IN ('escalation_recommended', 'handoff_prepared')"
        " ORDER BY id",
    )


def test_a_recommend_flips_writes_both_events_and_queues_the_notice(
    conn: apsw.Connection,
) -> None:
    """MED-121/123: one transaction, same `occurred_at`, the session's pinned bundle, the
    handoff's bytes in the fixed order with `session_id`; MED-126: one notice per routed
    solver (unassigned -> every solver) naming session, dispute and `trigger: round_limit`."""
    seed_session(conn)
    done = recommend_session_escalation(conn, _request(), SOLVERS, T0 + 9)
    assert rows(conn, "SELECT state, last_transition_at FROM mediation_sessions") == [
        ("escalation_recommended", T0 + 9)
    ]
    evidence = "ab" * 32
    assert _events(conn) == [
        (
            "escalation_recommended",
            "s-1",
            f'{{"dispute_id":"d-1","evidence_refs":["{evidence}"],"rationale_refs":[],'
            '"trigger":"round_limit"}',
            BUNDLE,
            HASH,
            T0 + 9,
        ),
        (
            "handoff_prepared",
            "s-1",
            f'{{"dispute_id":"d-1","session_id":"s-1","trigger":"round_limit",'
            f'"evidence_refs":["{evidence}"],"prompt_bundle_id":"{BUNDLE}",'
            f'"policy_hash":"{HASH}","rationale_refs":[],"assembled_at":{T0 + 9}}}',
            BUNDLE,
            HASH,
            T0 + 9,
        ),
    ]
    (pending,) = pending_handoffs_page(conn)
    assert pending.id == done.handoff_event_id
    assert decode_handoff_package(pending.payload_json).session_id == "s-1"
    outbox = rows(
        conn,
        "SELECT id, solver_pubkey, notif_type, body, cause FROM notification_outbox ORDER BY id",
    )
    assert [row[0] for row in outbox] == list(done.outbox_ids)
    assert [row[1] for row in outbox] == list(SOLVERS)
    for _id, _solver, notif_type, body, cause in outbox:
        assert notif_type == "mediation_escalation_recommended"
        assert "s-1" in body and "d-1" in body and "trigger: round_limit" in body
        assert "\n" not in body
        assert cause == f"escalation:{done.escalation_event_id}"
    assert done.notice_skipped is None


def test_an_assigned_configured_solver_alone_gets_the_notice(conn: apsw.Connection) -> None:
    """MED-112 via MED-126."""
    seed_session(conn)
    conn.execute("UPDATE disputes SET assigned_solver = ?", (SOLVERS[1],))
    recommend_session_escalation(conn, _request("party_unresponsive"), SOLVERS, T0 + 9)
    assert rows(conn, "SELECT solver_pubkey FROM notification_outbox") == [(SOLVERS[1],)]


def test_a_second_escalation_is_refused_and_writes_nothing(conn: apsw.Connection) -> None:
    """MED-73: the error names the actual state; no event, no notice, state unchanged."""
    seed_session(conn)
    recommend_session_escalation(conn, _request(), SOLVERS, T0 + 9)
    before = (count(conn, "mediation_events"), count(conn, "notification_outbox"))
    with pytest.raises(NotEscalatable, match="escalation_recommended -> escalation_recommended"):
        recommend_session_escalation(conn, _request("party_unresponsive"), SOLVERS, T0 + 10)
    assert (count(conn, "mediation_events"), count(conn, "notification_outbox")) == before
    assert one(conn, "SELECT last_transition_at FROM mediation_sessions") == T0 + 9


@pytest.mark.parametrize("state", ["closed", "summary_delivered", "superseded_by_human"])
def test_ended_sessions_cannot_be_escalated(conn: apsw.Connection, state: str) -> None:
    seed_session(conn)
    conn.execute("UPDATE mediation_sessions SET state = ?", (state,))
    with pytest.raises(NotEscalatable, match=state):
        recommend_session_escalation(conn, _request(), SOLVERS, T0 + 9)
    assert count(conn, "mediation_events", "kind = 'handoff_prepared'") == 0


def test_a_caller_limits_the_states_it_may_end(conn: apsw.Connection) -> None:
    """A stage waiting on the parties never ends a session the summaries stage holds."""
    seed_session(conn)
    conn.execute("UPDATE mediation_sessions SET state = 'summary_pending'")
    with pytest.raises(NotEscalatable, match="summary_pending"):
        recommend_session_escalation(conn, _request(from_states=PARTY_WAIT_STATES), SOLVERS, T0 + 9)
    done = recommend_session_escalation(
        conn, _request("notification_failed", from_states=("summary_pending",)), (), T0 + 9
    )
    assert done.outbox_ids == () and done.notice_skipped == "no solver recipients configured"
    assert one(conn, "SELECT state FROM mediation_sessions") == "escalation_recommended"


def test_summary_and_bundle_paths_go_through_recommend_with_their_details(
    conn: apsw.Connection,
) -> None:
    """Q-5/BEY-17: MED-124 keeps its `reason`, MED-125 its pinned and loaded hashes, in the
    `escalation_recommended` payload; both get a handoff, whose package carries neither."""
    seed_session(conn, "s-1", "d-1")
    seed_session(conn, "s-2", "d-2")
    recommend_session_escalation(
        conn,
        _request("reasoning_unavailable", reason="malformed_response"),
        SOLVERS,
        T0 + 9,
    )
    recommend_session_escalation(
        conn,
        SessionEscalation(
            session_id="s-2",
            dispute_id="d-2",
            trigger="policy_bundle_missing",
            loaded_hash="e" * 64,
        ),
        SOLVERS,
        T0 + 9,
    )
    payloads = [str(e[2]) for e in _events(conn)]
    assert '"reason":"malformed_response"' in payloads[0]
    assert f'"loaded_hash":"{"e" * 64}","pinned_hash":"{HASH}"' in payloads[2]
    for handoff in (payloads[1], payloads[3]):
        assert '"reason"' not in handoff and "loaded_hash" not in handoff
    assert len(pending_handoffs_page(conn)) == 2


def test_unknown_or_mismatched_sessions_are_errors(conn: apsw.Connection) -> None:
    seed_session(conn)
    with pytest.raises(UnknownSession):
        recommend_session_escalation(
            conn, SessionEscalation(session_id="x", dispute_id="d-1", trigger="round_limit"), (), T0
        )
    with pytest.raises(StoreFailure, match="belongs to dispute d-1"):
        recommend_session_escalation(
            conn,
            SessionEscalation(session_id="s-1", dispute_id="d-9", trigger="round_limit"),
            (),
            T0,
        )
    assert one(conn, "SELECT state FROM mediation_sessions") == "awaiting_response"


def test_a_notice_that_cannot_be_queued_undoes_the_escalation(conn: apsw.Connection) -> None:
    """BEY-2: the notice is part of the decision; if the outbox refuses it, the flip and
    both events roll back with it."""
    seed_session(conn)
    conn.execute(
        "CREATE TEMP TRIGGER outbox_down BEFORE INSERT ON notification_outbox"
        " BEGIN SELECT RAISE(ABORT, 'outbox down'); END"
    )
    with pytest.raises(apsw.ConstraintError, match="outbox down"):
        recommend_session_escalation(conn, _request(), SOLVERS, T0 + 9)
    assert one(conn, "SELECT state FROM mediation_sessions") == "awaiting_response"
    assert _events(conn) == []


async def test_the_tracker_runs_the_recommend(db_path: str, conn: apsw.Connection) -> None:
    seed_session(conn)
    async with open_tracker(db_path, wall_clock=FakeWallClock(T0 + 30)) as tracker:
        done = await tracker.ask(RecommendSessionEscalation(_request(), SOLVERS[:1]))
        with pytest.raises(StoreError, match="invalid session transition"):
            await tracker.ask(RecommendSessionEscalation(_request(), SOLVERS[:1]))
    assert len(done.outbox_ids) == 1
    assert one(
        conn, "SELECT occurred_at FROM mediation_events WHERE kind = 'handoff_prepared'"
    ) == (T0 + 30)
