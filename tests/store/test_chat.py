"""Dispute-chat rows: outbound rounds and `outbound_sent` (MED-82/83, Q-4), inbound ingest
with the MED-102 rules and Q-12 (MAS-7..9 at the store level), trade pubkeys (BEY-16)."""

from __future__ import annotations

import apsw
import pytest

from serbero.actors.tracker import open_tracker
from serbero.actors.tracker_requests import (
    IngestInbound,
    ListLiveSessionChatKeys,
    RecordTradePubkeys,
)
from serbero.store.chat import (
    Duplicate,
    Fresh,
    InboundEnvelope,
    OutboundMessage,
    OutboundRound,
    Stale,
    ingest_inbound,
    live_session_chat_keys,
    record_outbound_round,
    record_outbound_sent,
    record_trade_pubkeys,
    session_chat_keys,
    unsent_outbound,
)
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from serbero.store.errors import UnknownSession
from tests.store.helpers import T0, count, event, one, rows
from tests.support.clocks import FakeWallClock

HASH = "f" * 64
BUYER_SHARED = "1" * 64
SELLER_SHARED = "2" * 64


def _session(
    conn: apsw.Connection,
    session_id: str = "s-1",
    state: str = "awaiting_response",
    started_at: int = 500,
) -> None:
    conn.execute(
        "INSERT INTO mediation_sessions (session_id, dispute_id, state, prompt_bundle_id,"
        " policy_hash, buyer_shared_pubkey, seller_shared_pubkey, started_at,"
        " last_transition_at) VALUES (?, 'd-1', ?, 'phase3-default', ?, ?, ?, ?, ?)",
        (session_id, state, HASH, BUYER_SHARED, SELLER_SHARED, started_at, started_at),
    )


@pytest.fixture
def session(conn: apsw.Connection) -> apsw.Connection:
    record_detected(conn, event("d-1"), (), T0)
    _session(conn)
    return conn


def _inbound(party: str, inner_id: str, created: int, content: str = "hi") -> InboundEnvelope:
    shared = BUYER_SHARED if party == "buyer" else SELLER_SHARED
    return InboundEnvelope(
        party="buyer" if party == "buyer" else "seller",
        shared_pubkey=shared,
        inner_event_id=inner_id,
        inner_created_at=created,
        outer_event_id="o" + inner_id,
        content=content,
    )


def _outbound(party: str, inner_id: str) -> OutboundMessage:
    return OutboundMessage(
        party="buyer" if party == "buyer" else "seller",
        shared_pubkey=BUYER_SHARED if party == "buyer" else SELLER_SHARED,
        inner_event_id=inner_id,
        inner_created_at=T0,
        outer_event_id="outer-" + inner_id,
        content=f"{party.title()}: question",
        wrap_json='{"id":"outer-' + inner_id + '"}',
    )


def test_mas7_one_reply_each_makes_a_round_and_moves_the_markers(
    session: apsw.Connection,
) -> None:
    """MAS-7: both Fresh, round_count 1, verbatim content, state unchanged; again: Duplicate."""
    first = ingest_inbound(session, "s-1", _inbound("buyer", "b1", 1000, "  I paid\n"), T0)
    second = ingest_inbound(session, "s-1", _inbound("seller", "s1", 1001, "No"), T0)
    assert first == Fresh(inner_event_id="b1", round_count=0)
    assert second == Fresh(inner_event_id="s1", round_count=1, round_complete=True)
    assert ingest_inbound(session, "s-1", _inbound("buyer", "b1", 1000), T0) == Duplicate("b1")
    state = "SELECT state, round_count, buyer_last_seen_inner_ts, seller_last_seen_inner_ts"
    assert rows(session, state + " FROM mediation_sessions") == [
        ("awaiting_response", 1, 1000, 1001)
    ]
    contents = "SELECT content FROM mediation_messages WHERE party = 'buyer'"
    assert rows(session, contents) == [("  I paid\n",)]


def test_mas8_dedup_survives_a_reopen(db_path: str, session: apsw.Connection) -> None:
    """MAS-8: Fresh(0), Duplicate, and Duplicate again after the database is reopened."""
    envelope = _inbound("buyer", "b1", 1000)
    assert ingest_inbound(session, "s-1", envelope, T0) == Fresh("b1", 0)
    assert ingest_inbound(session, "s-1", envelope, T0) == Duplicate("b1")
    session.close()
    conn, _ = open_database(db_path)
    try:
        assert ingest_inbound(conn, "s-1", envelope, T0) == Duplicate("b1")
        assert count(conn, "mediation_messages") == 1
        assert one(conn, "SELECT buyer_last_seen_inner_ts FROM mediation_sessions") == 1000
    finally:
        conn.close()


def test_mas9_an_older_message_is_stale_and_kept(session: apsw.Connection) -> None:
    """MAS-9: Fresh at 1000, then 500 -> Stale; two rows, one stale; marker 1000; round 0.
    A message at exactly the marker is fresh."""
    assert ingest_inbound(session, "s-1", _inbound("buyer", "b1", 1000), T0) == Fresh("b1", 0)
    assert ingest_inbound(session, "s-1", _inbound("buyer", "b0", 600), T0) == Stale("b0")
    assert rows(session, "SELECT inner_event_id, stale FROM mediation_messages ORDER BY id") == [
        ("b1", 0),
        ("b0", 1),
    ]
    assert rows(
        session, "SELECT buyer_last_seen_inner_ts, round_count FROM mediation_sessions"
    ) == [(1000, 0)]
    assert ingest_inbound(session, "s-1", _inbound("buyer", "b2", 1000), T0) == Fresh("b2", 0)


def test_q12_a_message_older_than_the_session_is_stale(session: apsw.Connection) -> None:
    """Q-12: a re-opened session sees the previous session's chat; it is stale, not a round."""
    assert ingest_inbound(session, "s-1", _inbound("buyer", "old", 499), T0) == Stale("old")
    assert ingest_inbound(session, "s-1", _inbound("seller", "old2", 499), T0) == Stale("old2")
    assert one(session, "SELECT round_count FROM mediation_sessions") == 0
    assert one(session, "SELECT buyer_last_seen_inner_ts FROM mediation_sessions") is None


def test_ingest_for_an_unknown_session_writes_nothing(session: apsw.Connection) -> None:
    with pytest.raises(UnknownSession):
        ingest_inbound(session, "nope", _inbound("buyer", "b1", 1000), T0)
    assert count(session, "mediation_messages") == 0


def test_outbound_round_rows_then_sent_then_nothing_unsent(session: apsw.Connection) -> None:
    """MED-82/83, Q-4: rows with pinned bundle and wraps; unsent until `outbound_sent`."""
    outbound = OutboundRound("s-1", _outbound("buyer", "ib"), _outbound("seller", "is"))
    buyer_id, seller_id = record_outbound_round(session, outbound, T0 + 1)
    pinned = "SELECT party, prompt_bundle_id, policy_hash, stale FROM mediation_messages"
    assert rows(session, pinned + " ORDER BY id") == [
        ("buyer", "phase3-default", HASH, 0),
        ("seller", "phase3-default", HASH, 0),
    ]
    assert [u.message_id for u in unsent_outbound(session)] == [buyer_id, seller_id]
    assert unsent_outbound(session)[0].wrap_json == '{"id":"outer-ib"}'
    assert record_outbound_sent(session, "s-1", BUYER_SHARED, "ib", T0 + 2) is not None
    assert record_outbound_sent(session, "s-1", BUYER_SHARED, "ib", T0 + 3) is None
    assert [u.inner_event_id for u in unsent_outbound(session, "s-1")] == ["is"]
    sent = "SELECT payload_json, prompt_bundle_id, policy_hash FROM mediation_events"
    assert rows(session, sent + " WHERE kind = 'outbound_sent'") == [
        ('{"inner_event_id":"ib","shared_pubkey":"' + BUYER_SHARED + '"}', "phase3-default", HASH)
    ]
    record_outbound_sent(session, "s-1", SELLER_SHARED, "is", T0 + 2)
    assert unsent_outbound(session) == ()


def test_unsent_rows_of_a_closed_session_are_not_republished(session: apsw.Connection) -> None:
    record_outbound_round(
        session, OutboundRound("s-1", _outbound("buyer", "ib"), _outbound("seller", "is")), T0
    )
    session.execute("UPDATE mediation_sessions SET state = 'closed'")
    assert unsent_outbound(session) == ()


def test_a_follow_up_round_sets_the_marker_and_resets_failures(session: apsw.Connection) -> None:
    session.execute("UPDATE mediation_sessions SET consecutive_eval_failures = 2")
    outbound = OutboundRound(
        "s-1", _outbound("buyer", "ib"), _outbound("seller", "is"), follow_up=True, marker=3
    )
    record_outbound_round(session, outbound, T0 + 9)
    facts = "SELECT round_count_last_evaluated, consecutive_eval_failures, last_transition_at"
    assert rows(session, facts + " FROM mediation_sessions") == [(3, 0, T0 + 9)]


def test_an_opening_round_moves_opening_to_awaiting_response(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), (), T0)
    _session(conn, state="opening")
    record_outbound_round(
        conn, OutboundRound("s-1", _outbound("buyer", "ib"), _outbound("seller", "is")), T0 + 4
    )
    assert rows(conn, "SELECT state, last_transition_at FROM mediation_sessions") == [
        ("awaiting_response", T0 + 4)
    ]


def test_a_failed_round_leaves_no_row(session: apsw.Connection) -> None:
    """One transaction: a clash on the second row rolls back the first (MED-81/82)."""
    clash = OutboundRound("s-1", _outbound("buyer", "same"), _outbound("seller", "same"))
    with pytest.raises(apsw.ConstraintError):
        record_outbound_round(session, clash, T0)
    assert count(session, "mediation_messages") == 0
    assert count(session, "serbero_outbound_wraps") == 0


def test_trade_pubkeys_are_kept_for_live_sessions(session: apsw.Connection) -> None:
    """BEY-16: persisted on the row; the Live list carries them, closed sessions are left out."""
    record_trade_pubkeys(session, "s-1", "b" * 64, "c" * 64)
    _session(session, "s-2", state="closed")
    keys = session_chat_keys(session, "s-1")
    assert keys is not None
    assert (keys.buyer_trade_pubkey, keys.seller_trade_pubkey) == ("b" * 64, "c" * 64)
    assert [k.session_id for k in live_session_chat_keys(session)] == ["s-1"]
    with pytest.raises(UnknownSession):
        record_trade_pubkeys(session, "s-9", "b" * 64, "c" * 64)


async def test_the_same_steps_through_the_tracker(db_path: str) -> None:
    conn, _ = open_database(db_path)
    record_detected(conn, event("d-1"), (), T0)
    _session(conn)
    conn.close()
    async with open_tracker(db_path, wall_clock=FakeWallClock(T0 + 7)) as tracker:
        await tracker.ask(RecordTradePubkeys("s-1", "b" * 64, "c" * 64))
        outcome = await tracker.ask(IngestInbound("s-1", _inbound("buyer", "b1", 1000)))
        live = await tracker.ask(ListLiveSessionChatKeys())
    assert outcome == Fresh("b1", 0)
    assert live[0].buyer_trade_pubkey == "b" * 64
