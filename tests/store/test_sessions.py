"""Opening a mediation in the store: eligibility (MED-20/21), the start attempt's events
(MED-32/44/45/46), the session commit and bind (MED-47/48), the MED-50 event order and the
dispute-scoped recommend with its fixed handoff field order (MED-122/123)."""

from __future__ import annotations

import uuid

import apsw
import msgspec
import pytest

from serbero.actors.tracker import open_tracker
from serbero.actors.tracker_requests import (
    BeginStartAttempt,
    GetSessionChatKeys,
    ListEligible,
    OpenSession,
    RecommendDisputeEscalation,
)
from serbero.protocol.handoff import decode_handoff_package
from serbero.protocol.texts import dispute_escalation_notice
from serbero.store.chat import (
    OpeningRows,
    OutboundMessage,
    OutboundRound,
    record_outbound_round,
    record_outbound_sent,
    unsent_outbound,
)
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from serbero.store.errors import StoreFailure, UnknownDispute
from serbero.store.escalation import pending_handoffs_page
from serbero.store.rationale import RationaleOccurrence, StoredRationale, store_rationale
from serbero.store.sessions import (
    AlreadyOpen,
    EligibleDispute,
    NewSession,
    Opened,
    TakeOutcome,
    Verdict,
    begin_start_attempt,
    bind_rationale,
    is_eligible,
    list_eligible,
    open_session,
    recommend_dispute_escalation,
    record_policy_escalate,
    record_start_stopped,
    record_take,
    record_verdict,
)
from tests.store.helpers import (
    MED50_EVENTS,
    SOLVERS,
    T0,
    count,
    event,
    new_session,
    one,
    rows,
)
from tests.support.clocks import FakeWallClock

BUNDLE = "phase3-default"
HASH = "f" * 64


def _new(dispute_id: str = "d-1") -> NewSession:
    return new_session(dispute_id, BUNDLE, HASH)


def _bind(
    conn: apsw.Connection,
    session_id: str,
    stored: StoredRationale,
    classification: str,
    confidence: float,
    now: int,
) -> None:
    bind_rationale(
        conn,
        session_id,
        classification=classification,
        confidence=confidence,
        rationale_id=stored.rationale_id,
        occurrence_id=stored.occurrence_id,
        bundle_id=BUNDLE,
        policy_hash=HASH,
        now=now,
    )


def _events(conn: apsw.Connection) -> list[tuple[object, ...]]:
    return rows(
        conn,
        "SELECT kind, session_id, payload_json, prompt_bundle_id, policy_hash, rationale_id"
        " FROM mediation_events ORDER BY id",
    )


def _set_state(conn: apsw.Connection, dispute_id: str, state: str) -> None:
    conn.execute(
        "UPDATE disputes SET lifecycle_state = ? WHERE dispute_id = ?", (state, dispute_id)
    )


@pytest.mark.parametrize(
    ("state", "eligible"),
    [
        ("new", True),
        ("notified", True),
        ("taken", True),
        ("waiting", True),
        ("escalated", False),
        ("resolved", False),
    ],
)
def test_lifecycle_states_that_allow_a_mediation(
    conn: apsw.Connection, state: str, eligible: bool
) -> None:
    record_detected(conn, event("d-1"), (), T0)
    _set_state(conn, "d-1", state)
    assert is_eligible(conn, "d-1") is eligible
    assert (list_eligible(conn) == (EligibleDispute("d-1", "buyer"),)) is eligible


def test_a_missing_dispute_is_not_eligible_and_an_unknown_state_is_an_error(
    conn: apsw.Connection,
) -> None:
    assert is_eligible(conn, "nope") is False
    record_detected(conn, event("d-1"), (), T0)
    _set_state(conn, "d-1", "limbo")
    with pytest.raises(StoreFailure, match="limbo"):
        is_eligible(conn, "d-1")
    assert list_eligible(conn) == ()


def test_blocking_sessions_and_dispute_scoped_recommends_end_eligibility(
    conn: apsw.Connection,
) -> None:
    """A live session blocks, and so does a finished one (closed, superseded) until a newer
    dispute event (Q-3); so does a dispute-scoped `escalation_recommended` (MED-20 (3), (4))."""
    for dispute_id in ("d-1", "d-2", "d-3"):
        record_detected(conn, event(dispute_id, ts=T0 - ord(dispute_id[-1])), (), T0)
    open_session(conn, "s-1", _new("d-1"), T0)
    assert not is_eligible(conn, "d-1")
    conn.execute("UPDATE mediation_sessions SET state = 'escalation_recommended'")
    assert not is_eligible(conn, "d-1")
    for finished in ("superseded_by_human", "closed"):
        conn.execute("UPDATE mediation_sessions SET state = ?", (finished,))
        assert not is_eligible(conn, "d-1")
    # A dispute event newer than the finished session makes the dispute eligible again.
    conn.execute("UPDATE disputes SET event_timestamp = ? WHERE dispute_id = 'd-1'", (T0 + 5,))
    assert is_eligible(conn, "d-1")
    conn.execute("UPDATE disputes SET event_timestamp = ? WHERE dispute_id = 'd-1'", (T0 - 1,))
    assert "d-1" not in {d.dispute_id for d in list_eligible(conn)}
    conn.execute("UPDATE disputes SET event_timestamp = ? WHERE dispute_id = 'd-1'", (T0 + 5,))
    recommend_dispute_escalation(
        conn,
        "d-2",
        "fraud_indicator",
        rationale_refs=(),
        bundle_id=BUNDLE,
        policy_hash=HASH,
        now=T0,
    )
    assert not is_eligible(conn, "d-2")
    # Oldest dispute event first: d-3 was stamped before d-1's newer event.
    assert list_eligible(conn) == (
        EligibleDispute("d-3", "buyer"),
        EligibleDispute("d-1", "buyer"),
    )


def test_the_batch_skips_invalid_roles(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1", initiator="seller"), (), T0)
    record_detected(conn, event("d-2", ts=T0 + 1), (), T0)
    conn.execute("UPDATE disputes SET initiator_role = 'mostro' WHERE dispute_id = 'd-2'")
    assert list_eligible(conn) == (EligibleDispute("d-1", "seller"),)


def test_start_attempt_writes_started_or_stopped_ineligible(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), (), T0)
    assert begin_start_attempt(conn, "d-1", "detected", T0) is True
    assert begin_start_attempt(conn, "missing", "tick_retry", T0) is False
    record_start_stopped(conn, "d-1", "reasoning_unhealthy", T0)
    assert _events(conn) == [
        (
            "start_attempt_started",
            None,
            '{"dispute_id":"d-1","trigger":"detected"}',
            None,
            None,
            None,
        ),
        (
            "start_attempt_stopped",
            None,
            '{"dispute_id":"missing","stop_reason":"ineligible"}',
            None,
            None,
            None,
        ),
        (
            "start_attempt_stopped",
            None,
            '{"dispute_id":"d-1","stop_reason":"reasoning_unhealthy"}',
            None,
            None,
            None,
        ),
    ]


def test_verdict_payloads_per_decision(conn: apsw.Connection) -> None:
    """MED-44: ask, summarize and escalate each carry their own keys, bundle and hash set."""
    record_verdict(conn, "d-1", Verdict(decision="ask_clarification"), BUNDLE, HASH, T0)
    summarize = Verdict(decision="summarize", classification="unclear", confidence=0.9)
    record_verdict(conn, "d-1", summarize, BUNDLE, HASH, T0)
    escalate = Verdict(decision="escalate", trigger="low_confidence")
    record_verdict(conn, "d-1", escalate, BUNDLE, HASH, T0)
    assert [(e[2], e[3], e[4]) for e in _events(conn)] == [
        ('{"decision":"ask_clarification","dispute_id":"d-1"}', BUNDLE, HASH),
        (
            '{"classification":"unclear","confidence":0.9,"decision":"summarize","dispute_id":"d-1"}',
            BUNDLE,
            HASH,
        ),
        ('{"decision":"escalate","dispute_id":"d-1","trigger":"low_confidence"}', BUNDLE, HASH),
    ]


def test_take_events_and_the_policy_escalate_stop(conn: apsw.Connection) -> None:
    record_take(conn, "d-1", TakeOutcome(True), BUNDLE, HASH, T0)
    record_take(conn, "d-1", TakeOutcome(False, "take timed out"), BUNDLE, HASH, T0)
    record_policy_escalate(conn, "d-1", "conflicting_claims", BUNDLE, HASH, T0)
    assert [(e[0], e[2], e[3]) for e in _events(conn)] == [
        ("take_dispute_issued", '{"dispute_id":"d-1","outcome":"success"}', BUNDLE),
        (
            "take_dispute_issued",
            '{"dispute_id":"d-1","outcome":"failure","reason":"take timed out"}',
            BUNDLE,
        ),
        (
            "start_attempt_stopped",
            '{"dispute_id":"d-1","reason":"policy_escalate","trigger":"conflicting_claims"}',
            BUNDLE,
        ),
    ]


def test_open_session_commits_awaiting_response_with_keys(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), (), T0)
    outcome = open_session(conn, "s-1", _new(), T0 + 5)
    assert isinstance(outcome, Opened) and outcome.session_id == "s-1"
    assert rows(
        conn,
        "SELECT state, round_count, prompt_bundle_id, policy_hash, buyer_shared_pubkey,"
        " seller_shared_pubkey, started_at, last_transition_at FROM mediation_sessions",
    ) == [("awaiting_response", 0, BUNDLE, HASH, "1" * 64, "2" * 64, T0 + 5, T0 + 5)]
    assert rows(conn, "SELECT * FROM serbero_session_trade_keys") == [("s-1", "3" * 64, "4" * 64)]
    assert _events(conn) == [("session_opened", "s-1", "{}", BUNDLE, HASH, None)]


def test_open_session_rechecks_live_under_the_write(conn: apsw.Connection) -> None:
    """A concurrent open that committed first wins; the second writes nothing (Q-18)."""
    record_detected(conn, event("d-1"), (), T0)
    open_session(conn, "s-1", _new(), T0)
    assert open_session(conn, "s-2", _new(), T0) == AlreadyOpen("s-1")
    assert count(conn, "mediation_sessions") == 1
    assert count(conn, "serbero_session_trade_keys") == 1
    assert count(conn, "mediation_events") == 1
    with pytest.raises(UnknownDispute):
        open_session(conn, "s-3", _new("missing"), T0)


def test_open_session_stores_the_opening_round_in_the_same_commit(
    conn: apsw.Connection,
) -> None:
    """A session is never committed without its opening round: the rows and wraps come with
    it, pinned to its bundle, unsent until published (a crash after the commit leaves them
    to the restart, Q-4); a session whose rows cannot be written is not committed either."""
    record_detected(conn, event("d-1"), (), T0)
    opening = OpeningRows(buyer=_outbound("buyer"), seller=_outbound("seller"))
    open_session(conn, "s-1", msgspec.structs.replace(_new(), opening=opening), T0 + 5)
    assert rows(
        conn,
        "SELECT session_id, direction, party, inner_event_id, prompt_bundle_id, policy_hash,"
        " persisted_at FROM mediation_messages ORDER BY id",
    ) == [
        ("s-1", "outbound", "buyer", "b" * 64, BUNDLE, HASH, T0 + 5),
        ("s-1", "outbound", "seller", "s" * 64, BUNDLE, HASH, T0 + 5),
    ]
    assert [row.party for row in unsent_outbound(conn, "s-1")] == ["buyer", "seller"]
    assert _events(conn) == [("session_opened", "s-1", "{}", BUNDLE, HASH, None)]

    record_detected(conn, event("d-2"), (), T0)
    same_ids = OpeningRows(buyer=_outbound("buyer"), seller=_outbound("buyer"))
    with pytest.raises(apsw.ConstraintError):
        open_session(conn, "s-2", msgspec.structs.replace(_new("d-2"), opening=same_ids), T0)
    assert count(conn, "mediation_sessions") == 1
    assert count(conn, "serbero_session_trade_keys") == 1
    assert count(conn, "mediation_messages") == 2


def _outbound(party: str) -> OutboundMessage:
    return OutboundMessage(
        party="buyer" if party == "buyer" else "seller",
        shared_pubkey=("1" if party == "buyer" else "2") * 64,
        inner_event_id=party[0] * 64,
        inner_created_at=T0,
        outer_event_id="outer-" + party,
        content=f"{party}: question",
        wrap_json="{}",
    )


def test_the_happy_path_audit_order(conn: apsw.Connection) -> None:
    """MED-50: the open's seven events in strictly increasing ids, rationale bound (MED-48)."""
    record_detected(conn, event("d-1"), (), T0)
    assert begin_start_attempt(conn, "d-1", "detected", T0)
    stored = store_rationale(
        conn,
        RationaleOccurrence(
            text="both parties agree the payment was late",
            purpose="classification",
            dispute_id="d-1",
            session_id=None,
            provider="openai",
            model="m",
            prompt_bundle_id=BUNDLE,
            policy_hash=HASH,
        ),
        T0,
    )
    record_verdict(conn, "d-1", Verdict(decision="ask_clarification"), BUNDLE, HASH, T0)
    record_take(conn, "d-1", TakeOutcome(True), BUNDLE, HASH, T0)
    open_session(conn, "s-1", _new(), T0)
    _bind(conn, "s-1", stored, "coordination_failure_resolvable", 0.9, T0)
    record_outbound_round(conn, OutboundRound("s-1", _outbound("buyer"), _outbound("seller")), T0)
    record_outbound_sent(conn, "s-1", "1" * 64, "b" * 64, T0)
    record_outbound_sent(conn, "s-1", "2" * 64, "s" * 64, T0)
    assert [e[0] for e in _events(conn)] == MED50_EVENTS
    produced = _events(conn)[4]
    assert produced[5] == stored.rationale_id
    assert msgspec.json.decode(str(produced[2])) == {
        "classification": "coordination_failure_resolvable",
        "confidence": 0.9,
        "rationale_id": stored.rationale_id,
    }
    assert one(conn, "SELECT session_id FROM reasoning_rationales") == "s-1"
    assert one(conn, "SELECT session_id FROM serbero_rationale_occurrences") == "s-1"
    assert not is_eligible(conn, "d-1")


def test_bind_keeps_a_rationale_already_bound_to_another_session(conn: apsw.Connection) -> None:
    """MED-48: the rationale row's session is set only while it is still NULL."""
    record_detected(conn, event("d-1"), (), T0)
    occurrence = RationaleOccurrence(
        text="same words",
        purpose="classification",
        dispute_id="d-1",
        session_id=None,
        provider="openai",
        model="m",
        prompt_bundle_id=BUNDLE,
        policy_hash=HASH,
    )
    first = store_rationale(conn, occurrence, T0)
    open_session(conn, "s-1", _new(), T0)
    _bind(conn, "s-1", first, "unclear", 0.6, T0)
    conn.execute("UPDATE mediation_sessions SET state = 'closed'")
    second = store_rationale(conn, occurrence, T0 + 1)
    open_session(conn, "s-2", _new(), T0 + 1)
    _bind(conn, "s-2", second, "unclear", 0.6, T0 + 1)
    assert one(conn, "SELECT session_id FROM reasoning_rationales") == "s-1"
    assert rows(conn, "SELECT session_id FROM serbero_rationale_occurrences ORDER BY id") == [
        ("s-1",),
        ("s-2",),
    ]


def test_dispute_scoped_recommend_writes_the_handoff_in_the_fixed_order(
    conn: apsw.Connection,
) -> None:
    """MED-122/123: two events, same `occurred_at`, no session; the handoff's bytes are the
    MED-123 field order with `session_id` omitted, and the dispatcher's scan finds it."""
    record_detected(conn, event("d-1"), (), T0)
    handoff_id = recommend_dispute_escalation(
        conn,
        "d-1",
        "conflicting_claims",
        rationale_refs=("ab" * 32,),
        bundle_id=BUNDLE,
        policy_hash=HASH,
        now=T0 + 7,
    )
    assert handoff_id is not None
    ref = "ab" * 32
    assert rows(
        conn,
        "SELECT kind, session_id, payload_json, prompt_bundle_id, policy_hash, occurred_at"
        " FROM mediation_events ORDER BY id",
    ) == [
        (
            "escalation_recommended",
            None,
            '{"dispute_id":"d-1","evidence_refs":[],"rationale_refs":["' + ref + '"],'
            '"trigger":"conflicting_claims"}',
            BUNDLE,
            HASH,
            T0 + 7,
        ),
        (
            "handoff_prepared",
            None,
            '{"dispute_id":"d-1","trigger":"conflicting_claims","evidence_refs":[],'
            f'"prompt_bundle_id":"{BUNDLE}","policy_hash":"{HASH}",'
            f'"rationale_refs":["{ref}"],"assembled_at":{T0 + 7}}}',
            BUNDLE,
            HASH,
            T0 + 7,
        ),
    ]
    (pending,) = pending_handoffs_page(conn)
    assert pending.id == handoff_id
    package = decode_handoff_package(pending.payload_json)
    assert (package.dispute_id, package.session_id, package.trigger) == (
        "d-1",
        None,
        "conflicting_claims",
    )
    # A second recommend for the dispute writes nothing and still succeeds.
    again = recommend_dispute_escalation(
        conn, "d-1", "low_confidence", rationale_refs=(), bundle_id=BUNDLE, policy_hash=HASH, now=T0
    )
    assert again is None
    assert count(conn, "mediation_events") == 2


def test_dispute_recommend_queues_the_med127_notice_to_every_solver_once(
    conn: apsw.Connection,
) -> None:
    """MED-127: broadcast (assignment ignored), in the recommend's transaction, caused by the
    handoff; a second recommend writes no second notice."""
    record_detected(conn, event("d-1"), (), T0)
    conn.execute("UPDATE disputes SET assigned_solver = ? WHERE dispute_id = 'd-1'", (SOLVERS[0],))
    handoff_id = recommend_dispute_escalation(
        conn,
        "d-1",
        "fraud_indicator",
        rationale_refs=(),
        bundle_id=BUNDLE,
        policy_hash=HASH,
        now=T0 + 3,
        notify=SOLVERS,
    )
    recommend_dispute_escalation(
        conn,
        "d-1",
        "low_confidence",
        rationale_refs=(),
        bundle_id=BUNDLE,
        policy_hash=HASH,
        now=T0 + 4,
        notify=SOLVERS,
    )
    body = dispute_escalation_notice("d-1", "fraud_indicator")
    assert rows(
        conn,
        "SELECT solver_pubkey, notif_type, body, cause, created_at FROM notification_outbox"
        " ORDER BY id",
    ) == [
        (solver, "mediation_escalation_recommended", body, f"handoff_prepared:{handoff_id}", T0 + 3)
        for solver in SOLVERS
    ]


def test_a_failed_dispute_recommend_queues_no_notice(conn: apsw.Connection) -> None:
    """The notice lives and dies with the events (BEY-2): a write that fails after them
    leaves neither events nor outbox rows."""
    record_detected(conn, event("d-1"), (), T0)
    conn.execute(
        "CREATE TEMP TRIGGER refuse AFTER INSERT ON notification_outbox"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(apsw.ConstraintError):
        recommend_dispute_escalation(
            conn,
            "d-1",
            "fraud_indicator",
            rationale_refs=(),
            bundle_id=BUNDLE,
            policy_hash=HASH,
            now=T0,
            notify=SOLVERS,
        )
    assert count(conn, "mediation_events") == 0
    assert count(conn, "notification_outbox") == 0


async def test_the_tracker_runs_the_open_steps(db_path: str) -> None:
    """Through the tracker: the session id is a UUIDv4 from the injected randomness, the
    keys land with it, and the batch listing and the start attempt agree (MED-21)."""
    conn, _ = open_database(db_path)
    record_detected(conn, event("d-1"), (), T0)
    conn.close()
    async with open_tracker(
        db_path, wall_clock=FakeWallClock(T0 + 3), rand=lambda n: bytes(range(n))
    ) as tracker:
        assert await tracker.ask(ListEligible()) == (EligibleDispute("d-1", "buyer"),)
        assert await tracker.ask(BeginStartAttempt("d-1", "tick_retry")) is True
        opened = await tracker.ask(OpenSession(_new()))
        assert opened == Opened(str(uuid.UUID(bytes=bytes(range(16)), version=4)), 2)
        keys = await tracker.ask(GetSessionChatKeys(opened.session_id))
        assert keys is not None and keys.buyer_trade_pubkey == "3" * 64
        assert keys.started_at == T0 + 3
        assert await tracker.ask(ListEligible()) == ()
        assert await tracker.ask(BeginStartAttempt("d-1", "detected")) is False
        handoff = await tracker.ask(
            RecommendDisputeEscalation(
                dispute_id="d-1",
                trigger="round_limit",
                rationale_refs=(),
                bundle_id=BUNDLE,
                policy_hash=HASH,
            )
        )
        assert handoff is not None
