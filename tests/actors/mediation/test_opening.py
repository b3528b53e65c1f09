"""The open procedure with real parts (MED-32, §4, MAS-4, MAS-5, BEY-15, BEY-20): a real
relay, Mostro simulated on nostr-sdk answering the take, parties on their real trade keys,
the scripted reasoning server over loopback HTTP and a real SQLite file behind the tracker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import trio

from serbero.actors.mediation.auth import AuthRetryPolicy, SolverAuth
from serbero.actors.mediation.chat import ChatActor
from serbero.actors.mediation.opening import Opener
from serbero.actors.mediation.start import OpenResult
from serbero.actors.mediation.take import TakeClient
from serbero.actors.relay_pool import open_relay_pool
from serbero.actors.tracker import open_tracker
from serbero.clock import system_wall_clock
from serbero.protocol.handoff import decode_handoff_package
from serbero.protocol.keys import Keys
from serbero.protocol.texts import dispute_escalation_notice
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from tests.reasoning.helpers import ASK_ANSWER, scripted_context
from tests.relay.helpers import FAST
from tests.store.helpers import MED50_EVENTS, SOLVERS, event, rows
from tests.support.chat_party import ChatParty
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import Reply, json_reply, open_scripted_llm, openai_reply

WAIT = 10.0
CONFLICT_ANSWER = (
    '{"classification":"conflicting_claims","confidence":0.9,'
    '"suggested_action":"escalate","rationale":"they disagree","flags":["conflicting_claims"]}'
)


def _db(tmp_path: Path, dispute_id: str) -> str:
    path = str(tmp_path / "serbero.db")
    conn, _ = open_database(path)
    record_detected(conn, event(dispute_id, ts=int(time.time()) - 5), (), int(time.time()))
    conn.close()
    return path


async def _healthy() -> None:
    return None


@asynccontextmanager
async def opener(
    db_path: str,
    relay_url: str,
    serbero: Keys,
    mostro: MostroSim,
    *replies: Reply,
    default: Reply | None = None,
    rings: list[None] | None = None,
) -> AsyncIterator[Opener]:
    async with (
        open_scripted_llm(default or openai_reply("ok")) as llm,
        httpx.AsyncClient() as client,
        open_tracker(db_path, wall_clock=system_wall_clock) as tracker,
        open_relay_pool([relay_url], serbero, timing=FAST) as pool,
        trio.open_nursery() as nursery,
    ):
        llm.script(openai_reply("ok"), *replies)
        await pool.wait_connected()
        context = scripted_context(llm.url, client, SOLVERS)
        auth = SolverAuth(tracker, _healthy, AuthRetryPolicy())
        await nursery.start(auth.run)
        take = TakeClient(pool, serbero, mostro.pubkey_hex, timeout=WAIT)
        await nursery.start(take.run)
        chat = ChatActor(pool, tracker, serbero)
        ring = (lambda: None) if rings is None else (lambda: rings.append(None))
        yield Opener(tracker, context, auth, take, chat, ring_sender=ring)
        nursery.cancel_scope.cancel()


def _events(db_path: str) -> list[tuple[object, ...]]:
    conn, _ = open_database(db_path)
    try:
        return rows(conn, "SELECT kind, session_id, payload_json FROM mediation_events ORDER BY id")
    finally:
        conn.close()


async def test_mas4_an_open_takes_commits_and_writes_to_both_parties(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MAS-4: one session at `awaiting_response`, two outbound rows, the MED-50 order, and
    each party reads exactly one opening message from Serbero."""
    dispute = str(uuid.uuid4())
    db_path = _db(tmp_path, dispute)
    serbero = Keys.generate()
    with MostroSim(Keys.generate().secret.hex(), [local_relay.url], answer_takes=True) as mostro:
        buyer_secret, seller_secret = mostro.trade_keys(dispute)
        buyer = ChatParty(buyer_secret, serbero.public_hex, [local_relay.url]).start()
        seller = ChatParty(seller_secret, serbero.public_hex, [local_relay.url]).start()
        try:
            async with opener(
                db_path, local_relay.url, serbero, mostro, openai_reply(ASK_ANSWER)
            ) as open_:
                result = await open_.attempt(dispute, "buyer", "detected")
            assert result.outcome == "opened" and result.session_id is not None
            [buyer_note] = await trio.to_thread.run_sync(buyer.wait_for_count, 1, WAIT)
            [seller_note] = await trio.to_thread.run_sync(seller.wait_for_count, 1, WAIT)
        finally:
            buyer.close()
            seller.close()
        assert len(mostro.take_requests()) == 1
    assert "When did you pay?" in buyer_note.content
    assert "Please check again." in seller_note.content
    conn, _ = open_database(db_path)
    try:
        assert rows(conn, "SELECT session_id, state, round_count FROM mediation_sessions") == [
            (result.session_id, "awaiting_response", 0)
        ]
        assert rows(
            conn, "SELECT party FROM mediation_messages WHERE direction = 'outbound' ORDER BY id"
        ) == [("buyer",), ("seller",)]
    finally:
        conn.close()
    assert [e[0] for e in _events(db_path)] == MED50_EVENTS


async def test_mas5_a_negative_verdict_escalates_before_any_take(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MAS-5: no take, no session; the dispute-scoped recommend with its handoff package
    naming the verdict's rationale, ready for the escalation dispatcher (MED-45, MED-122)."""
    dispute = str(uuid.uuid4())
    db_path = _db(tmp_path, dispute)
    serbero = Keys.generate()
    rings: list[None] = []
    with MostroSim(Keys.generate().secret.hex(), [local_relay.url], answer_takes=True) as mostro:
        async with opener(
            db_path, local_relay.url, serbero, mostro, openai_reply(CONFLICT_ANSWER), rings=rings
        ) as open_:
            result = await open_.attempt(dispute, "seller", "tick_retry")
            again = await open_.attempt(dispute, "seller", "tick_retry")
        assert mostro.take_requests() == []
    assert result == OpenResult(
        outcome="escalated_before_take", dispute_id=dispute, trigger="conflicting_claims"
    )
    assert again.outcome == "ineligible"
    events = _events(db_path)
    assert [e[0] for e in events] == [
        "start_attempt_started",
        "reasoning_verdict",
        "start_attempt_stopped",
        "escalation_recommended",
        "handoff_prepared",
        "start_attempt_stopped",
    ]
    package = decode_handoff_package(str(events[4][2]))
    assert package.session_id is None and package.trigger == "conflicting_claims"
    assert len(package.rationale_refs) == 1
    assert msgspec.json.decode(str(events[5][2]))["stop_reason"] == "ineligible"
    # MED-127: every solver is told once, and the sender was rung once.
    conn, _ = open_database(db_path)
    try:
        assert rows(conn, "SELECT solver_pubkey, notif_type, body FROM notification_outbox") == [
            (
                solver,
                "mediation_escalation_recommended",
                dispute_escalation_notice(dispute, "conflicting_claims"),
            )
            for solver in SOLVERS
        ]
    finally:
        conn.close()
    assert len(rings) == 1


async def test_an_unreachable_provider_leaves_the_dispute_eligible(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """BEY-20 / Q-19: a provider that fails the verdict records `reasoning_call_failed` and
    stops the attempt with `reasoning_provider_error`; no escalation, a retry is due."""
    dispute = str(uuid.uuid4())
    db_path = _db(tmp_path, dispute)
    serbero = Keys.generate()
    with MostroSim(Keys.generate().secret.hex(), [local_relay.url], answer_takes=True) as mostro:
        async with opener(
            db_path,
            local_relay.url,
            serbero,
            mostro,
            default=json_reply({"error": "down"}, status=503),
        ) as open_:
            result = await open_.attempt(dispute, "buyer", "detected")
        assert mostro.take_requests() == []
    assert result.outcome == "failed" and result.retry
    kinds = [e[0] for e in _events(db_path)]
    assert kinds == ["start_attempt_started", "reasoning_call_failed", "start_attempt_stopped"]
    assert "reasoning_provider_error" in str(_events(db_path)[2][2])


async def test_a_refused_take_is_final_and_writes_no_session(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """BEY-15: Mostro's `cant-do` for this dispute: `take_dispute_issued` failure, no session."""
    dispute = str(uuid.uuid4())
    db_path = _db(tmp_path, dispute)
    serbero = Keys.generate()
    with MostroSim(Keys.generate().secret.hex(), [local_relay.url], answer_takes=True) as mostro:
        mostro.refuse_take(dispute, "dispute_not_found")
        async with opener(
            db_path, local_relay.url, serbero, mostro, openai_reply(ASK_ANSWER)
        ) as open_:
            result = await open_.attempt(dispute, "buyer", "detected")
    assert result.outcome == "take_refused" and not result.retry
    events = _events(db_path)
    assert [e[0] for e in events][-1] == "take_dispute_issued"
    assert '"outcome":"failure"' in str(events[-1][2])
    conn, _ = open_database(db_path)
    try:
        assert rows(conn, "SELECT COUNT(*) FROM mediation_sessions") == [(0,)]
    finally:
        conn.close()
