"""The follow-up rounds in the store, on real SQLite: the transcript (MED-96), the evaluation
snapshot, the mid-session classification (MED-92/93), the failure counter (MED-95), the
`classified` commit with its marker (MED-94), the Q-1 listing and the timeout sweep's
listing (§12.1 #4)."""

from __future__ import annotations

import apsw
import pytest

from serbero.store.chat import (
    InboundEnvelope,
    OutboundMessage,
    OutboundRound,
    ingest_inbound,
    record_outbound_round,
)
from serbero.store.disputes import record_detected
from serbero.store.errors import UnknownSession
from serbero.store.rationale import RationaleOccurrence
from serbero.store.rounds import (
    TRANSCRIPT_CAP,
    EscalatableSession,
    evaluation_snapshot,
    increment_eval_failures,
    mark_classified,
    pending_evaluations,
    record_classification,
    transcript,
    unresponsive_sessions,
    waiting_sessions,
)
from serbero.store.sessions import open_session
from tests.store.helpers import T0, event, new_session, one, rows

BUNDLE = "phase3-default"
HASH = "f" * 64
BUYER = "1" * 64
SELLER = "2" * 64


def seed_session(conn: apsw.Connection, session_id: str = "s-1", dispute_id: str = "d-1") -> str:
    record_detected(conn, event(dispute_id, initiator="seller"), (), T0)
    open_session(conn, session_id, new_session(dispute_id, BUNDLE, HASH), T0)
    return session_id


def seed_reply(
    conn: apsw.Connection,
    party: str,
    inner_id: str,
    created_at: int,
    content: str = "",
    *,
    session_id: str = "s-1",
    shared: str | None = None,
) -> object:
    return ingest_inbound(
        conn,
        session_id,
        InboundEnvelope(
            party="buyer" if party == "buyer" else "seller",
            shared_pubkey=shared or (BUYER if party == "buyer" else SELLER),
            inner_event_id=inner_id,
            inner_created_at=created_at,
            outer_event_id=f"outer-{inner_id}",
            content=content or f"{party} says {inner_id}",
        ),
        created_at,
    )


def _opening(conn: apsw.Connection, at: int) -> None:
    halves = {
        party: OutboundMessage(
            party=party,
            shared_pubkey=BUYER if party == "buyer" else SELLER,
            inner_event_id=f"out-{party}",
            inner_created_at=at,
            outer_event_id=f"outer-{party}",
            content=f"{party.title()}: hello",
            wrap_json="{}",
        )
        for party in ("buyer", "seller")
    }
    record_outbound_round(
        conn, OutboundRound("s-1", buyer=halves["buyer"], seller=halves["seller"]), at
    )


def _occurrence(text: str = "they agree") -> RationaleOccurrence:
    return RationaleOccurrence(
        text=text,
        purpose="classification",
        dispute_id="d-1",
        session_id="s-1",
        provider="openai",
        model="m",
        prompt_bundle_id=BUNDLE,
        policy_hash=HASH,
    )


def test_the_transcript_is_the_latest_fresh_messages_oldest_first(conn: apsw.Connection) -> None:
    """MED-96: stale rows out, Serbero's rows as `serbero`, parties by shared pubkey, an
    inbound row on an unknown pubkey dropped and counted, at most 40, ascending."""
    seed_session(conn)
    _opening(conn, T0 + 1)
    seed_reply(conn, "buyer", "b1", T0 + 10, "I paid")
    seed_reply(conn, "buyer", "b0", T0 + 5, "older, so stale")
    seed_reply(conn, "seller", "s1", T0 + 20, "not received")
    seed_reply(conn, "seller", "x1", T0 + 30, "on a pubkey nobody has", shared="9" * 64)
    entries = transcript(conn, "s-1")
    assert [(e.party, e.content) for e in entries] == [
        ("serbero", "Buyer: hello"),
        ("serbero", "Seller: hello"),
        ("buyer", "I paid"),
        ("seller", "not received"),
    ]
    snapshot = evaluation_snapshot(conn, "s-1")
    assert snapshot is not None and snapshot.transcript == entries
    assert snapshot.dropped == 1
    for n in range(TRANSCRIPT_CAP + 5):
        seed_reply(conn, "buyer", f"many-{n}", T0 + 100 + n)
    capped = transcript(conn, "s-1")
    assert len(capped) == TRANSCRIPT_CAP
    assert [e.inner_created_at for e in capped] == sorted(e.inner_created_at for e in capped)
    assert capped[0].content == "buyer says many-5"
    assert capped[-1].content == f"buyer says many-{TRANSCRIPT_CAP + 4}"
    with pytest.raises(UnknownSession):
        transcript(conn, "nope")


def test_equal_timestamps_keep_the_insert_order(conn: apsw.Connection) -> None:
    """Ties on `inner_event_created_at` are broken by row id (MED-96)."""
    seed_session(conn)
    seed_reply(conn, "buyer", "b1", T0 + 10, "first")
    seed_reply(conn, "seller", "s1", T0 + 10, "second")
    assert [e.content for e in transcript(conn, "s-1")] == ["first", "second"]


def test_the_snapshot_counts_fresh_inbound_and_reads_the_initiator(
    conn: apsw.Connection,
) -> None:
    seed_session(conn)
    assert evaluation_snapshot(conn, "nope") is None
    seed_reply(conn, "buyer", "b1", T0 + 10)
    seed_reply(conn, "buyer", "b0", T0 + 5)
    seed_reply(conn, "seller", "s1", T0 + 20)
    snapshot = evaluation_snapshot(conn, "s-1")
    assert snapshot is not None
    assert (snapshot.state, snapshot.round_count, snapshot.marker, snapshot.failures) == (
        "awaiting_response",
        1,
        0,
        0,
    )
    assert (snapshot.fresh_inbound, snapshot.latest_fresh_inbound) == (2, "s1")
    assert snapshot.initiator_role == "seller" and snapshot.dispute_id == "d-1"
    conn.execute("UPDATE disputes SET initiator_role = 'mallory'")
    snapshot = evaluation_snapshot(conn, "s-1")
    assert snapshot is not None and snapshot.initiator_role is None


def test_a_classification_is_stored_with_its_rationale_and_counted(
    conn: apsw.Connection,
) -> None:
    """MED-93 step 6: n counts the session's earlier `classification_produced` events; the
    rationale is session-scoped and only its id leaves the rationale table."""
    seed_session(conn)
    first = record_classification(
        conn, "s-1", _occurrence(), classification="unclear", confidence=0.4, now=T0 + 1
    )
    second = record_classification(
        conn,
        "s-1",
        _occurrence("secret reasoning"),
        classification="coordination_failure_resolvable",
        confidence=0.9,
        now=T0 + 2,
    )
    assert (first.n, second.n) == (0, 1)
    assert rows(
        conn,
        "SELECT kind, session_id, payload_json, rationale_id, prompt_bundle_id, policy_hash"
        " FROM mediation_events WHERE kind = 'classification_produced' ORDER BY id",
    )[1] == (
        "classification_produced",
        "s-1",
        '{"classification":"coordination_failure_resolvable","confidence":0.9,'
        f'"rationale_id":"{second.rationale_id}"}}',
        second.rationale_id,
        BUNDLE,
        HASH,
    )
    assert (
        one(
            conn,
            "SELECT session_id FROM reasoning_rationales WHERE rationale_id = ?",
            (second.rationale_id,),
        )
        == "s-1"
    )
    assert "secret reasoning" not in str(rows(conn, "SELECT payload_json FROM mediation_events"))
    with pytest.raises(UnknownSession):
        record_classification(
            conn, "nope", _occurrence(), classification="unclear", confidence=0.1, now=T0
        )


def test_failures_count_up_and_a_summarize_commit_resets_them_with_the_marker(
    conn: apsw.Connection,
) -> None:
    """MED-95 counter; MED-93/94: `classified` with marker = F and failures 0 in one commit,
    only from `awaiting_response`."""
    seed_session(conn)
    assert [increment_eval_failures(conn, "s-1") for _ in range(3)] == [1, 2, 3]
    with pytest.raises(UnknownSession):
        increment_eval_failures(conn, "nope")
    assert mark_classified(conn, "s-1", 2, T0 + 50) is True
    assert rows(
        conn,
        "SELECT state, round_count_last_evaluated, consecutive_eval_failures, last_transition_at"
        " FROM mediation_sessions",
    ) == [("classified", 2, 0, T0 + 50)]
    assert mark_classified(conn, "s-1", 4, T0 + 60) is False
    assert one(conn, "SELECT round_count_last_evaluated FROM mediation_sessions") == 2


def test_pending_evaluations_are_awaiting_sessions_with_unevaluated_fresh_messages(
    conn: apsw.Connection,
) -> None:
    """Q-1: fresh inbound count above the marker; stale rows and other states do not count."""
    seed_session(conn, "s-1", "d-1")
    seed_session(conn, "s-2", "d-2")
    assert pending_evaluations(conn) == ()
    seed_reply(conn, "buyer", "b1", T0 + 10)
    seed_reply(conn, "buyer", "b2", T0 + 20, session_id="s-2")
    seed_reply(conn, "buyer", "b0", T0 + 15, session_id="s-2")  # stale
    assert pending_evaluations(conn) == ("s-1", "s-2")
    conn.execute("UPDATE mediation_sessions SET round_count_last_evaluated = 1")
    assert pending_evaluations(conn) == ()
    seed_reply(conn, "seller", "s1", T0 + 30)
    assert pending_evaluations(conn) == ("s-1",)
    conn.execute("UPDATE mediation_sessions SET state = 'classified' WHERE session_id = 's-1'")
    assert pending_evaluations(conn) == ()


def test_the_sweep_lists_sessions_silent_past_the_timeout(conn: apsw.Connection) -> None:
    """§12.1 #4 (MAS-14): `now > max(started_at, last seen) + timeout`; 0 turns it off; only
    sessions waiting on the parties."""
    seed_session(conn, "s-1", "d-1")
    seed_session(conn, "s-2", "d-2")
    seed_reply(conn, "buyer", "b1", T0 + 1000, session_id="s-2")
    assert unresponsive_sessions(conn, T0 + 3600, 3600) == ()
    assert unresponsive_sessions(conn, T0 + 3601, 3600) == (EscalatableSession("s-1", "d-1"),)
    assert unresponsive_sessions(conn, T0 + 4601, 3600) == (
        EscalatableSession("s-1", "d-1"),
        EscalatableSession("s-2", "d-2"),
    )
    assert unresponsive_sessions(conn, T0 + 10**6, 0) == ()
    conn.execute("UPDATE mediation_sessions SET state = 'summary_pending' WHERE session_id = 's-1'")
    assert unresponsive_sessions(conn, T0 + 4601, 3600) == (EscalatableSession("s-2", "d-2"),)
    assert waiting_sessions(conn) == (EscalatableSession("s-2", "d-2"),)
