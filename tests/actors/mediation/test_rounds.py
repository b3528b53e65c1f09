"""The round evaluator with real parts (§9.1, §12, MAS-13..17, MED-103, MED-56, Q-1, BEY-19):
a real relay, Mostro simulated on nostr-sdk answering the take, both parties on their real
trade keys, the scripted reasoning server over loopback HTTP and a real SQLite file behind
the tracker. Every session is opened by the real open procedure first; the parties answer
on the relay, the chat actor ingests, and the evaluator acts on what it ingested.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import httpx
import msgspec
import pytest
import trio

from serbero.actors.mediation.auth import AuthRetryPolicy, SolverAuth
from serbero.actors.mediation.chat import ChatActor, InboundBatch
from serbero.actors.mediation.opening import Opener
from serbero.actors.mediation.rounds import FAILURE_THRESHOLD, RoundEvaluator
from serbero.actors.mediation.take import TakeClient
from serbero.actors.relay_pool import open_relay_pool
from serbero.actors.tracker import open_tracker
from serbero.clock import system_wall_clock
from serbero.config.schema import MediationConfig
from serbero.mediation.bringup import MediationContext
from serbero.protocol.handoff import decode_handoff_package
from serbero.protocol.keys import Keys
from serbero.reasoning.provider import build_provider
from serbero.reasoning.types import TranscriptEntry
from serbero.store.audit import insert_event
from serbero.store.chat import Fresh, IngestOutcome
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from tests.reasoning.helpers import ASK_ANSWER, BUNDLE, no_backoff, reasoning_config
from tests.relay.helpers import FAST
from tests.store.helpers import SOLVERS, event, rows
from tests.support.chat_party import ChatNote, ChatParty
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import ScriptedLLM, json_reply, open_scripted_llm, openai_reply

WAIT = 10.0
MARKER = "RATIONALE-MARKER-7f3a"


def _answer(
    label: str = "coordination_failure_resolvable",
    confidence: float = 0.8,
    action: str = "ask_clarification",
    flags: tuple[str, ...] = (),
    buyer: str = "Which bank did you use?",
    seller: str = "Which account did you check?",
) -> str:
    document: dict[str, Any] = {
        "classification": label,
        "confidence": confidence,
        "suggested_action": action,
        "rationale": f"{MARKER} {label}",
        "flags": list(flags),
    }
    if action == "ask_clarification":
        document["buyer_clarification"] = buyer
        document["seller_clarification"] = seller
    return msgspec.json.encode(document).decode()


SUMMARIZE_ANSWER = _answer(confidence=0.9, action="summarize")


@dataclass
class World:
    dispute_id: str
    session_id: str
    db_path: str
    llm: ScriptedLLM
    context: MediationContext
    chat: ChatActor
    auth: SolverAuth
    evaluator: RoundEvaluator
    buyer: ChatParty
    seller: ChatParty
    delivered: list[tuple[str, tuple[TranscriptEntry, ...]]] = field(default_factory=list)
    rings: list[None] = field(default_factory=list)

    def evaluator_with(self, **mediation: Any) -> RoundEvaluator:
        """Another evaluator on the same parts with other `[mediation]` values."""
        context = msgspec.structs.replace(
            self.context, mediation=msgspec.structs.replace(self.context.mediation, **mediation)
        )
        return RoundEvaluator(
            self.evaluator._tracker,
            context,
            self.chat,
            self.auth,
            deliver=self.evaluator._deliver,
        )

    @contextmanager
    def db(self) -> Iterator[apsw.Connection]:
        conn, _ = open_database(self.db_path)
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.db() as conn:
            return rows(conn, sql, args)

    def session(self) -> tuple[Any, ...]:
        (row,) = self.query(
            "SELECT state, round_count, round_count_last_evaluated, consecutive_eval_failures"
            " FROM mediation_sessions"
        )
        return row

    def kinds(self) -> list[str]:
        return [str(k) for (k,) in self.query("SELECT kind FROM mediation_events ORDER BY id")]

    def handoffs(self) -> list[Any]:
        return [
            decode_handoff_package(str(payload))
            for (payload,) in self.query(
                "SELECT payload_json FROM mediation_events WHERE kind = 'handoff_prepared'"
            )
        ]

    def outbound(self) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT party, content FROM mediation_messages WHERE direction = 'outbound' ORDER BY id"
        )

    def classify_calls(self) -> int:
        """Classification requests the model received after the open's health and verdict."""
        return len(self.llm.requests) - 2

    async def answer(self, buyer_text: str, seller_text: str) -> InboundBatch:
        """Both parties answer on the relay (the seller a second later); the chat actor
        ingests until both answers are stored, as the engine's passes would."""
        now = int(time.time())
        self.buyer.reply(buyer_text, created_at=now)
        self.seller.reply(seller_text, created_at=now + 1)
        outcomes: list[IngestOutcome] = []
        with trio.fail_after(WAIT):
            while sum(isinstance(o, Fresh) for o in outcomes) < 2:
                outcomes += await self.chat.ingest_once(self.session_id)
                await trio.sleep(0.05)
        return InboundBatch(self.session_id, tuple(outcomes))

    def notes(self, party: ChatParty, count: int) -> list[ChatNote]:
        return party.wait_for_count(count, WAIT)


async def _healthy() -> None:
    return None


@asynccontextmanager
async def world(
    tmp_path: Path,
    relay: LocalRelayProcess,
    *,
    max_rounds: int = 3,
    timeout: int = 3600,
    retries: int = 1,
) -> AsyncIterator[World]:
    """A session opened for real (health, verdict ask, take, opening round read by both
    parties), and an evaluator over the same parts."""
    dispute_id = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    conn, _ = open_database(db_path)
    record_detected(conn, event(dispute_id, ts=int(time.time()) - 5), (), int(time.time()))
    conn.close()
    serbero = Keys.generate()
    with MostroSim(Keys.generate().secret.hex(), [relay.url], answer_takes=True) as mostro:
        buyer_secret, seller_secret = mostro.trade_keys(dispute_id)
        buyer = ChatParty(buyer_secret, serbero.public_hex, [relay.url]).start()
        seller = ChatParty(seller_secret, serbero.public_hex, [relay.url]).start()
        try:
            async with (
                open_scripted_llm() as llm,
                httpx.AsyncClient() as client,
                open_tracker(db_path, wall_clock=system_wall_clock) as tracker,
                open_relay_pool([relay.url], serbero, timing=FAST) as pool,
                trio.open_nursery() as nursery,
            ):
                llm.script(openai_reply("ok"), openai_reply(ASK_ANSWER))
                await pool.wait_connected()
                config = reasoning_config("openai", llm.url, retries=retries)
                context = MediationContext(
                    mediation=MediationConfig(
                        enabled=True, max_rounds=max_rounds, party_response_timeout_seconds=timeout
                    ),
                    reasoning=config,
                    bundle=BUNDLE,
                    provider=build_provider(config, client, backoff=no_backoff),
                    solvers=SOLVERS,
                )
                auth = SolverAuth(tracker, _healthy, AuthRetryPolicy())
                await nursery.start(auth.run)
                take = TakeClient(pool, serbero, mostro.pubkey_hex, timeout=WAIT)
                await nursery.start(take.run)
                chat = ChatActor(pool, tracker, serbero)
                opened = await Opener(tracker, context, auth, take, chat).attempt(
                    dispute_id, "buyer", "detected"
                )
                assert opened.outcome == "opened" and opened.session_id is not None
                delivered: list[tuple[str, tuple[TranscriptEntry, ...]]] = []
                rings: list[None] = []

                async def deliver(session_id: str, transcript: tuple[TranscriptEntry, ...]) -> None:
                    delivered.append((session_id, transcript))

                evaluator = RoundEvaluator(
                    tracker,
                    context,
                    chat,
                    auth,
                    deliver=deliver,
                    ring_sender=lambda: rings.append(None),
                )
                w = World(
                    dispute_id=dispute_id,
                    session_id=opened.session_id,
                    db_path=db_path,
                    llm=llm,
                    context=context,
                    chat=chat,
                    auth=auth,
                    evaluator=evaluator,
                    buyer=buyer,
                    seller=seller,
                    delivered=delivered,
                    rings=rings,
                )
                await trio.to_thread.run_sync(w.notes, buyer, 1)
                await trio.to_thread.run_sync(w.notes, seller, 1)
                yield w
                nursery.cancel_scope.cancel()
        finally:
            buyer.close()
            seller.close()


def _assert_escalated(w: World, trigger: str, *, evidence: tuple[str, ...] = ()) -> None:
    """MED-121/123/126: state, the session-scoped events, one handoff for the dispatcher and
    the notice queued to every solver (the dispute is unassigned)."""
    assert w.session()[0] == "escalation_recommended"
    (handoff,) = w.handoffs()
    assert (handoff.session_id, handoff.dispute_id, handoff.trigger) == (
        w.session_id,
        w.dispute_id,
        trigger,
    )
    assert handoff.evidence_refs == evidence
    (payload,) = w.query(
        "SELECT payload_json FROM mediation_events"
        " WHERE kind = 'escalation_recommended' AND session_id = ?",
        (w.session_id,),
    )
    assert msgspec.json.decode(payload[0])["trigger"] == trigger
    notices = w.query("SELECT solver_pubkey, notif_type, body FROM notification_outbox")
    assert [n[0] for n in notices] == list(SOLVERS)
    for _solver, notif_type, body in notices:
        assert notif_type == "mediation_escalation_recommended"
        assert w.session_id in body and w.dispute_id in body and f"trigger: {trigger}" in body
    assert w.rings
    assert MARKER not in str(w.query("SELECT payload_json FROM mediation_events"))
    assert MARKER not in str(notices)


async def test_mas15_a_follow_up_question_goes_to_each_party_as_round_1(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MAS-15: the model asks again -> a `Round 1.` pair, one per party on the relay, state
    unchanged, marker 2 (the fresh answers evaluated); running again adds nothing."""
    async with world(tmp_path, local_relay) as w:
        batch = await w.answer("I paid at 10:00.", "Nothing arrived yet.")
        w.llm.script(openai_reply(_answer()))
        await w.evaluator.on_batch(batch)
        [_, buyer_note] = await trio.to_thread.run_sync(w.notes, w.buyer, 2)
        [_, seller_note] = await trio.to_thread.run_sync(w.notes, w.seller, 2)
        await w.evaluator.on_batch(batch)
        await w.evaluator.evaluate_pending()
        await w.evaluator.evaluate_pending()
        assert w.classify_calls() == 1
    assert buyer_note.content == "Round 1. Buyer: Which bank did you use?"
    assert seller_note.content == "Round 1. Seller: Which account did you check?"
    assert w.session() == ("awaiting_response", 1, 2, 0)
    assert len(w.outbound()) == 4
    assert w.kinds().count("classification_produced") == 2
    assert w.kinds()[-3:] == ["classification_produced", "outbound_sent", "outbound_sent"]
    # The model saw the whole chat: Serbero's opening and both answers, oldest first.
    prompt = str(w.llm.requests[-1].json()["messages"])
    assert prompt.index("I paid at 10:00.") < prompt.index("Nothing arrived yet.")


async def test_mas16_a_follow_up_summary_classifies_and_hands_the_transcript_over(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MAS-16 (the rounds' part): Summarize -> `classified` with marker 2 and the failures
    reset in the same commit, then the summaries stage gets this transcript; no party
    message; running again adds nothing."""
    async with world(tmp_path, local_relay) as w:
        batch = await w.answer("I paid at 10:00.", "It arrived, all good.")
        w.llm.script(openai_reply(SUMMARIZE_ANSWER))
        await w.evaluator.on_batch(batch)
        await w.evaluator.on_batch(batch)
        await w.evaluator.evaluate_pending()
        assert w.classify_calls() == 1
    assert w.session() == ("classified", 1, 2, 0)
    [(session_id, transcript)] = w.delivered
    assert session_id == w.session_id
    assert [(e.party, e.content) for e in transcript][2:] == [
        ("buyer", "I paid at 10:00."),
        ("seller", "It arrived, all good."),
    ]
    assert [e.party for e in transcript][:2] == ["serbero", "serbero"]
    assert len(w.outbound()) == 2
    assert w.kinds().count("classification_produced") == 2


async def test_a_live_answer_is_evaluated_once_it_completes_the_round(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """BEY-30: the buyer's answer alone waits for the tick; the seller's, completing the
    round, is evaluated at once, with both answers in the transcript."""
    async with world(tmp_path, local_relay) as w:
        batch = await w.answer("I paid at 10:00.", "It arrived, all good.")
        buyer_only, seller_completes = batch.outcomes
        await w.evaluator.on_answer(InboundBatch(w.session_id, (buyer_only,)))
        assert w.classify_calls() == 0
        w.llm.script(openai_reply(SUMMARIZE_ANSWER))
        await w.evaluator.on_answer(InboundBatch(w.session_id, (seller_completes,)))
        assert w.classify_calls() == 1
    assert w.session() == ("classified", 1, 2, 0)
    [(_, transcript)] = w.delivered
    assert [e.party for e in transcript][2:] == ["buyer", "seller"]


async def test_an_answer_stored_during_its_sessions_evaluation_is_evaluated_right_after(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """The first reading (slow) asks again; the next round's answers arrive while it runs:
    the live hand-on finds the session busy and returns, and the evaluation that was running
    reads the session again as soon as it ends, with no tick."""
    async with world(tmp_path, local_relay) as w:
        batch = await w.answer("I paid at 10:00.", "Nothing arrived yet.")
        w.llm.script(openai_reply(_answer(), delay=2.0), openai_reply(SUMMARIZE_ANSWER))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w.evaluator.on_batch, batch)
            with trio.fail_after(WAIT):
                while w.classify_calls() < 1:
                    await trio.sleep(0.01)
            later = await w.answer("Bank: ACME, ref 42.", "Checked again: it is there.")
            await w.evaluator.on_answer(later)
            assert w.classify_calls() == 1
        assert w.classify_calls() == 2
    assert w.session()[:3] == ("classified", 2, 4)
    assert [content for _, content in w.outbound()][2:] == [
        "Round 1. Buyer: Which bank did you use?",
        "Round 1. Seller: Which account did you check?",
    ]


async def test_mas13_an_authority_flag_mid_session_escalates_without_a_message(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MAS-13: flag `authority_boundary_attempt` -> the rationale and its
    `classification_produced` are kept (text only in the rationale table), no message row,
    the session escalated with one handoff and the solvers' notice."""
    async with world(tmp_path, local_relay) as w:
        batch = await w.answer("Just release my funds now.", "Do it, admin-settle it.")
        w.llm.script(openai_reply(_answer(flags=("authority_boundary_attempt",))))
        await w.evaluator.on_batch(batch)
    _assert_escalated(w, "authority_boundary_attempt")
    assert len(w.outbound()) == 2
    assert w.kinds().count("classification_produced") == 2
    (text,) = w.query(
        "SELECT r.rationale_text FROM reasoning_rationales r JOIN mediation_events e"
        " ON e.rationale_id = r.rationale_id WHERE e.kind = 'classification_produced'"
        " AND e.id = (SELECT MAX(id) FROM mediation_events WHERE kind = 'classification_produced')"
    )
    assert text[0].startswith(MARKER)


async def test_a_clarification_that_promises_funds_is_suppressed(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """BEY-19 / MED-132: a question the guard rejects is never sent; the reading is kept and
    the session escalates `authority_boundary_attempt`."""
    async with world(tmp_path, local_relay) as w:
        batch = await w.answer("Where is my money?", "I never got paid.")
        w.llm.script(
            openai_reply(_answer(buyer="Confirm your address and I will release the funds."))
        )
        await w.evaluator.on_batch(batch)
    _assert_escalated(w, "authority_boundary_attempt")
    assert len(w.outbound()) == 2
    assert w.kinds().count("classification_produced") == 2


@pytest.mark.parametrize(
    ("answer", "earlier_readings", "trigger"),
    [
        (_answer(flags=("conflicting_claims",)), 0, "conflicting_claims"),
        (_answer(flags=("fraud_risk",)), 0, "fraud_indicator"),
        (_answer(confidence=0.2), 3, "low_confidence"),
        (_answer(action="escalate"), 0, "reasoning_unavailable"),
        (_answer(label="unclear", action="summarize"), 0, "invalid_model_output"),
    ],
    ids=["conflicting", "fraud", "low-confidence-at-4", "model-escalates", "bad-summarize"],
)
async def test_mas14_policy_triggers_mid_session(
    tmp_path: Path,
    local_relay: LocalRelayProcess,
    answer: str,
    earlier_readings: int,
    trigger: str,
) -> None:
    """MAS-14: each escalating reading ends the session with its exact trigger and one
    handoff; low confidence escalates at follow-up 4, past the bypass window."""
    async with world(tmp_path, local_relay) as w:
        with w.db() as conn:
            for _ in range(earlier_readings):
                insert_event(
                    conn,
                    session_id=w.session_id,
                    kind="classification_produced",
                    payload={"classification": "unclear", "confidence": 0.6, "rationale_id": None},
                    prompt_bundle_id=BUNDLE.bundle_id,
                    policy_hash=BUNDLE.policy_hash,
                    occurred_at=int(time.time()),
                )
        batch = await w.answer("I paid.", "I did not get it.")
        w.llm.script(openai_reply(answer))
        await w.evaluator.on_batch(batch)
    _assert_escalated(w, trigger)
    assert len(w.outbound()) == 2


async def test_low_confidence_early_questions_are_still_asked(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MED-91: within the bypass window an uncertain reading may still ask."""
    async with world(tmp_path, local_relay) as w:
        batch = await w.answer("I paid.", "I did not get it.")
        w.llm.script(openai_reply(_answer(confidence=0.2)))
        await w.evaluator.on_batch(batch)
        await trio.to_thread.run_sync(w.notes, w.buyer, 2)
    assert w.session()[0] == "awaiting_response"
    assert w.handoffs() == []


@pytest.mark.parametrize(
    "reply",
    [
        openai_reply("not json {"),
        openai_reply(_answer(buyer="   ", seller="\n")),
        openai_reply('["an", "array"]'),
        openai_reply(None),
        json_reply({"error": "upstream down"}, status=503),
    ],
    ids=["malformed-json", "blank-questions", "not-an-object", "empty-choice", "http-503"],
)
async def test_hostile_or_failed_answers_count_a_failure_and_change_nothing_else(
    tmp_path: Path, local_relay: LocalRelayProcess, reply: Any
) -> None:
    """MED-95: an answer that is not a valid reading is a failed evaluation: the counter
    moves, state, marker, messages and readings do not."""
    async with world(tmp_path, local_relay, retries=0) as w:
        batch = await w.answer("I paid.", "I did not get it.")
        w.llm.script(reply)
        await w.evaluator.on_batch(batch)
    assert w.session() == ("awaiting_response", 1, 0, 1)
    assert w.kinds().count("classification_produced") == 1
    assert len(w.outbound()) == 2
    assert w.handoffs() == []


async def test_mas17_three_failed_evaluations_escalate_reasoning_unavailable(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MAS-17 with Q-1: an unreachable model fails the evaluation on the reply's tick and
    again on each next tick (not only on a new message): counter 1, 2 with state and marker
    unchanged, then `reasoning_unavailable`; exactly 3 calls; one evaluation per tick."""
    async with world(tmp_path, local_relay, retries=0) as w:
        batch = await w.answer("I paid.", "I did not get it.")
        w.llm.set_default(json_reply({"error": "down"}, status=503))
        await w.evaluator.on_batch(batch)
        await w.evaluator.evaluate_pending()  # same tick: already evaluated
        assert w.session() == ("awaiting_response", 1, 0, 1)
        await w.evaluator.evaluate_pending()
        assert w.session() == ("awaiting_response", 1, 0, 2)
        await w.evaluator.evaluate_pending()
        await w.evaluator.evaluate_pending()
        assert w.classify_calls() == FAILURE_THRESHOLD
    _assert_escalated(w, "reasoning_unavailable")
    assert w.session()[2:] == (0, 3)


async def test_the_round_limit_escalates_before_any_classification(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MED-103: the reply that completes round `max_rounds` ends the session `round_limit`
    with its inner id as evidence; the model is not asked."""
    async with world(tmp_path, local_relay, max_rounds=1) as w:
        batch = await w.answer("I paid.", "I did not get it.")
        fresh = [o for o in batch.outcomes if isinstance(o, Fresh)]
        await w.evaluator.on_batch(batch)
        await w.evaluator.evaluate_pending()
        assert w.classify_calls() == 0
    assert [o.round_count for o in fresh] == [0, 1]
    _assert_escalated(w, "round_limit", evidence=(fresh[1].inner_event_id,))


async def test_the_sweep_ends_a_silent_session_once_and_0_turns_it_off(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MAS-14 sweep: timeout 3600, nothing heard for 3610 s -> `party_unresponsive`; the
    next sweep is a no-op; timeout 0 never fires."""
    async with world(tmp_path, local_relay, timeout=3600) as w:
        [(started_at,)] = w.query("SELECT started_at FROM mediation_sessions")
        await w.evaluator_with(party_response_timeout_seconds=0).sweep(started_at + 10**6)
        await w.evaluator.sweep(started_at + 3600)
        assert w.session()[0] == "awaiting_response"
        await w.evaluator.sweep(started_at + 3610)
        await w.evaluator.sweep(started_at + 7220)
        assert w.chat.material(w.session_id) is None
    _assert_escalated(w, "party_unresponsive")


@pytest.mark.parametrize("path", ["handler", "noticed-by-sweep"])
async def test_authorization_lost_ends_the_waiting_sessions(
    tmp_path: Path, local_relay: LocalRelayProcess, path: str
) -> None:
    """MED-56 / MAS-14: the handle goes unauthorized and the live session escalates
    `authorization_lost` with one handoff, whether the evaluator is told or the open
    procedure reported it and the next sweep notices."""
    async with world(tmp_path, local_relay) as w:
        [(started_at,)] = w.query("SELECT started_at FROM mediation_sessions")
        if path == "handler":
            await w.evaluator.authorization_lost("take refused: not_authorized")
        else:
            w.auth.report_lost("take refused: not_authorized")
            await w.evaluator.sweep(started_at + 1)
        await w.evaluator.sweep(started_at + 2)
        assert not w.auth.authorized
    _assert_escalated(w, "authorization_lost")
