"""Follow-up rounds through the daemon (§9.1, MED-103, MAS-15/16): the parties answer on the
relay, the engine's tick evaluates, and what the model decides reaches the parties or the
solvers.

Real parts: the daemon in-process over a real SQLite file, a LocalRelay, Mostro simulated on
nostr-sdk answering the take, both parties on their real trade keys, solver inboxes, and the
scripted model API on loopback HTTP.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import msgspec

from tests.daemon.mediation_support import (
    SUMMARIZE_VERDICT,
    WAIT,
    mediation_events,
    mediation_harness,
    opening_read,
    parties,
    summary_read_and_closed,
)
from tests.daemon.support import eventually, in_thread, query
from tests.daemon.test_mediation_engine import empty_working_directory, engine_daemon, mediated
from tests.reasoning.helpers import ASK_ANSWER, SUMMARY_ANSWER
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import RecordedRequest, Reply, open_scripted_llm, openai_reply

__all__ = ["empty_working_directory"]

BUYER_ANSWER = "I paid at 10:00 from my bank."
SELLER_ANSWER = "It just arrived, sorry for the delay."


def answer(request: RecordedRequest) -> Reply:
    """Health check; the open's verdict asks; once both answers are in the transcript the
    reading is Summarize; then the summary itself."""
    prompt = json.dumps(request.json()["messages"])
    if "dispute_id" not in prompt:
        return openai_reply("pong")
    if "SUGGESTED_NEXT_STEP:" in prompt:
        return openai_reply(SUMMARY_ANSWER)
    if SELLER_ANSWER in prompt:
        return openai_reply(SUMMARIZE_VERDICT)
    return openai_reply(ASK_ANSWER)


async def test_the_parties_answers_lead_to_a_summary_for_the_solvers(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """MAS-16 through the daemon: both parties answer the opening, the next tick's reading
    is Summarize, the solvers read the summary and the session closes; no more party
    messages."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    async with (
        open_scripted_llm(answer) as llm,
        mediation_harness(local_relay.url, db_path) as h,
        parties(h.sim, dispute, h.serbero.public_hex, local_relay.url) as (buyer, seller),
        engine_daemon(mediated(h, llm, tick=1)),
    ):
        await opening_read(h.sim, dispute, buyer, seller)
        await in_thread(buyer.reply, BUYER_ANSWER)
        await in_thread(seller.reply, SELLER_ANSWER)
        await summary_read_and_closed(h, db_path)
    assert len(buyer.notes()) == 1 and len(seller.notes()) == 1
    kinds = [kind for kind, _, _ in mediation_events(db_path, dispute)]
    assert kinds.count("classification_produced") == 2
    assert kinds.count("summary_generated") == 1
    assert "escalation_recommended" not in kinds
    assert query(db_path, "SELECT round_count_last_evaluated FROM mediation_sessions") == [(2,)]


async def test_answers_reach_the_model_as_they_arrive_with_no_tick(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """BEY-30 through the daemon, its tick an hour away: the buyer's answer alone waits (no
    `Round 1.`); the seller's completes the round, so the live watch stores it and the
    engine evaluates at once: the solvers read the summary and the session closes."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    async with (
        open_scripted_llm(answer) as llm,
        mediation_harness(local_relay.url, db_path) as h,
        parties(h.sim, dispute, h.serbero.public_hex, local_relay.url) as (buyer, seller),
        engine_daemon(mediated(h, llm)),
    ):
        await opening_read(h.sim, dispute, buyer, seller)
        await in_thread(buyer.reply, BUYER_ANSWER)
        inbound = "SELECT COUNT(*) FROM mediation_messages WHERE direction = 'inbound'"
        await eventually(lambda: query(db_path, inbound) == [(1,)], WAIT)
        await in_thread(seller.reply, SELLER_ANSWER)
        await summary_read_and_closed(h, db_path)
    assert len(buyer.notes()) == 1 and len(seller.notes()) == 1
    kinds = [kind for kind, _, _ in mediation_events(db_path, dispute)]
    assert kinds.count("classification_produced") == 2


async def test_a_follow_up_round_then_the_round_limit_hands_the_dispute_over(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """MAS-15 and MED-103 through the daemon (`max_rounds = 2`): the first answers get a
    `Round 1.` question each; the second answers reach the limit, so they are never
    classified: the session escalates `round_limit` and the solvers read the notice."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")

    def always_ask(request: RecordedRequest) -> Reply:
        prompt = json.dumps(request.json()["messages"])
        return openai_reply("pong" if "dispute_id" not in prompt else ASK_ANSWER)

    async with (
        open_scripted_llm(always_ask) as llm,
        mediation_harness(local_relay.url, db_path) as h,
        parties(h.sim, dispute, h.serbero.public_hex, local_relay.url) as (buyer, seller),
        engine_daemon(mediated(h, llm, tick=1, max_rounds=2)),
    ):
        await opening_read(h.sim, dispute, buyer, seller)
        await in_thread(buyer.reply, BUYER_ANSWER)
        await in_thread(seller.reply, SELLER_ANSWER)
        [_, buyer_round] = await in_thread(buyer.wait_for_count, 2, WAIT)
        [_, seller_round] = await in_thread(seller.wait_for_count, 2, WAIT)
        classify_calls = len(llm.requests)
        await in_thread(buyer.reply, "Still the same answer.")
        await in_thread(seller.reply, "Nothing more to add.")
        for dms in await h.wait_dms(1, "trigger: round_limit"):
            assert dispute in dms[0].content
        assert len(llm.requests) == classify_calls
    assert buyer_round.content == "Round 1. Buyer: When did you pay?"
    assert seller_round.content == "Round 1. Seller: Please check again."
    assert query(db_path, "SELECT state, round_count FROM mediation_sessions") == [
        ("escalation_recommended", 2)
    ]
    [handoff] = [
        msgspec.json.decode(payload)
        for kind, _, payload in mediation_events(db_path, dispute)
        if kind == "handoff_prepared"
    ]
    assert handoff["trigger"] == "round_limit" and len(handoff["evidence_refs"]) == 1
