"""The mediation engine inside a running daemon (issue 16; MAS-1..5 through the daemon).

Real parts: the daemon in-process over a real SQLite file, a LocalRelay, Mostro simulated on
nostr-sdk answering takes, the parties reading Serbero's messages on their real trade keys,
solver inboxes, and the scripted model API on loopback HTTP answering per dispute.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from structlog.testing import capture_logs

from serbero.actors.health import health_answer
from serbero.config import ChatConfig, MediationConfig, ReasoningConfig, Secret
from serbero.daemon import DaemonContext
from tests.daemon.mediation_support import (
    WAIT,
    Model,
    mediation_events,
    mediation_harness,
    parties,
    refuse_chat_of,
    sessions,
    shared_pubkey,
)
from tests.daemon.support import Harness, eventually, in_thread, query, running_daemon
from tests.store.helpers import MED50_EVENTS
from tests.support.filtering_relay import open_filtering_relay
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import (
    ScriptedLLM,
    open_scripted_llm,
)

# A tick period no test outlives: only the event-driven path can start a mediation.
NO_TICK = 3600
CONFLICT_ANSWER = (
    '{"classification":"conflicting_claims","confidence":0.9,'
    '"suggested_action":"escalate","rationale":"they disagree","flags":["conflicting_claims"]}'
)
# Well under the sender's 30 s idle poll: a notice this quick was rung for.
NOTICE_WAIT = 10.0


@pytest.fixture(autouse=True)
def empty_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def mediated(h: Harness, llm: ScriptedLLM, *, tick: int = NO_TICK, **mediation: Any) -> Any:
    """The harness's config with mediation on against the scripted model."""
    return msgspec.structs.replace(
        h.config,
        mediation=MediationConfig(enabled=True, **mediation),
        reasoning=ReasoningConfig(
            enabled=True,
            provider="openai-compatible",
            model="scripted-model",
            api_base=llm.url,
            api_key=Secret("sk-scripted"),
            request_timeout_seconds=5,
            followup_retry_count=0,
        ),
        chat=ChatConfig(inbound_fetch_interval_seconds=tick),
    )


@asynccontextmanager
async def engine_daemon(config: Any) -> AsyncIterator[DaemonContext]:
    """The daemon, once its mediation engine runs."""
    async with running_daemon(config) as context:
        with trio.fail_after(WAIT):
            assert await context.mediation.wait_settled() is not None
            while not context.engine.status().running:
                await trio.sleep(0.02)
        yield context


async def test_mas1_mas4_a_new_dispute_is_mediated_by_the_daemon(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """MAS-1/MAS-4: the ingest's request alone (no tick) opens one session at
    `awaiting_response` on the independently derived shared keys; each party reads exactly
    one opening message signed by Serbero; the MED-50 order with trigger `detected`; the
    solvers' initial DM is unaffected."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    async with (
        open_scripted_llm(Model()) as llm,
        mediation_harness(local_relay.url, db_path) as h,
    ):
        mostro = h.sim
        serbero_hex = h.serbero.public_hex
        async with (
            parties(mostro, dispute, serbero_hex, local_relay.url) as (buyer, seller),
            engine_daemon(mediated(h, llm)) as context,
        ):
            await in_thread(mostro.open_dispute, dispute, "buyer")
            for (dm,) in await h.wait_dms(1):
                assert f"dispute_id: {dispute}" in dm.content
            [buyer_note] = await in_thread(buyer.wait_for_count, 1, WAIT)
            [seller_note] = await in_thread(seller.wait_for_count, 1, WAIT)
            await eventually(
                lambda: [e[0] for e in mediation_events(db_path, dispute)] == MED50_EVENTS, WAIT
            )
            await trio.sleep(0.5)
            assert len(buyer.notes()) == 1 and len(seller.notes()) == 1
            engine = context.snapshot().mediation_engine
            assert engine.running and engine.sessions_with_keys == engine.sessions_watched == 1
    assert buyer_note.author == seller_note.author == serbero_hex
    assert buyer_note.content == "Buyer: When did you pay?"
    assert seller_note.content == "Seller: Please check again."
    buyer_secret, seller_secret = mostro.trade_keys(dispute)
    [(_, state, buyer_shared, seller_shared)] = sessions(db_path, dispute)
    assert state == "awaiting_response"
    assert buyer_shared == shared_pubkey(buyer_secret, serbero_hex)
    assert seller_shared == shared_pubkey(seller_secret, serbero_hex)
    events = mediation_events(db_path, dispute)
    assert '"trigger":"detected"' in events[0][2]
    assert [e for e in events if "tick_retry" in e[2]] == []
    assert [request.dispute_id for request in mostro.take_requests()] == [dispute]


async def test_without_solvers_the_tick_starts_the_mediation(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """MED-30/31, Q-15: with no solvers configured the ingest asks for no start; the tick
    finds the eligible dispute and opens it (trigger `tick_retry`, once)."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    async with (
        open_scripted_llm(Model()) as llm,
        mediation_harness(local_relay.url, db_path, valid_solvers=0) as h,
        parties(h.sim, dispute, h.serbero.public_hex, local_relay.url) as (buyer, seller),
        engine_daemon(mediated(h, llm, tick=1)) as context,
    ):
        await in_thread(h.sim.open_dispute, dispute, "seller")
        await in_thread(buyer.wait_for_count, 1, WAIT)
        await in_thread(seller.wait_for_count, 1, WAIT)
        ticks = context.engine.status().ticks
        await eventually(lambda: context.engine.status().ticks >= ticks + 2, WAIT)
    events = mediation_events(db_path, dispute)
    assert [e[0] for e in events] == MED50_EVENTS
    assert '"trigger":"tick_retry"' in events[0][2]
    assert [state for _, state, _, _ in sessions(db_path, dispute)] == ["awaiting_response"]


async def test_mas5_a_negative_verdict_escalates_without_a_take(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """MAS-5 through the daemon: no take, no session; one dispute-scoped verdict,
    recommendation and handoff; the solvers' initial DM still goes out, and the MED-127
    notice follows at once (the engine rings the sender; its idle poll is 30 s)."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    model = Model()
    model.answers[dispute] = CONFLICT_ANSWER
    async with open_scripted_llm(model) as llm, mediation_harness(local_relay.url, db_path) as h:
        mostro = h.sim
        async with engine_daemon(mediated(h, llm)):
            await in_thread(mostro.open_dispute, dispute, "seller")
            await h.wait_dms(1)
            for inbox in h.inboxes:
                [notice] = await in_thread(
                    inbox.wait_for_count, 1, NOTICE_WAIT, "unsuitable for mediation"
                )
                assert dispute in notice.content
                assert "trigger: conflicting_claims" in notice.content
    assert mostro.take_requests() == []
    assert sessions(db_path, dispute) == []
    kinds = [e[0] for e in mediation_events(db_path, dispute)]
    assert kinds == [
        "start_attempt_started",
        "reasoning_verdict",
        "start_attempt_stopped",
        "escalation_recommended",
        "handoff_prepared",
    ]


async def test_mas2_an_unhealthy_provider_stops_the_start_and_spares_the_core(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """MAS-2: healthy at bring-up, failing when the dispute comes: the attempt stops with
    `reasoning_unhealthy` before any classify call, no take, no session, and the solvers'
    DM arrives; the dispute stays eligible (a later tick tries again)."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    model = Model()
    async with open_scripted_llm(model) as llm, mediation_harness(local_relay.url, db_path) as h:
        mostro = h.sim
        async with engine_daemon(mediated(h, llm)):
            model.unhealthy = True
            await in_thread(mostro.open_dispute, dispute, "buyer")
            await h.wait_dms(1)
            await eventually(
                lambda: (
                    [e[0] for e in mediation_events(db_path, dispute)]
                    == ["start_attempt_started", "start_attempt_stopped"]
                ),
                WAIT,
            )
    assert '"stop_reason":"reasoning_unhealthy"' in mediation_events(db_path, dispute)[1][2]
    assert model.classified == [] and mostro.take_requests() == []
    assert sessions(db_path, dispute) == []


async def test_mas3_a_take_refused_not_authorized_pauses_opens_until_recovery(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """MAS-3 / MED-56: Mostro answers `not_authorized`; the next dispute is refused at the
    auth gate ("pending": no provider call, no take); once the retry loop's check passes
    (after `solver_auth_retry_initial_seconds`) and Serbero is a solver again, a new
    dispute is mediated. `/health` shows the pause as `solver_auth`."""
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    db_path = str(tmp_path / "serbero.db")
    model = Model()
    async with (
        open_scripted_llm(model) as llm,
        mediation_harness(local_relay.url, db_path, outsider=True) as h,
    ):
        mostro = h.sim
        config = mediated(h, llm, solver_auth_retry_initial_seconds=5)
        with capture_logs() as logs:
            async with engine_daemon(config) as context:
                assert context.engine.status().solver_auth == "authorized"
                await in_thread(mostro.open_dispute, first, "buyer")
                await in_thread(mostro.wait_for_take_requests, 1, WAIT)
                await eventually(
                    lambda: any(e["event"] == "solver_authorization_lost" for e in logs), WAIT
                )
                paused = health_answer(context.snapshot()).document["mediation"]["engine"]
                assert paused["solver_auth"] == "unauthorized"
                await in_thread(mostro.open_dispute, second, "buyer")
                await eventually(
                    lambda: (
                        "start_attempt_stopped" in [e[0] for e in mediation_events(db_path, second)]
                    ),
                    WAIT,
                )
                mostro.set_solvers(None)
                await eventually(
                    lambda: any(e["event"] == "solver_authorization_recovered" for e in logs),
                    WAIT,
                )
                assert context.engine.status().solver_auth == "authorized"
                await in_thread(mostro.open_dispute, third, "seller")
                await eventually(lambda: len(sessions(db_path, third)) == 1, WAIT)
    assert '"stop_reason":"auth_pending"' in mediation_events(db_path, second)[-1][2]
    assert second not in model.classified
    assert [r.dispute_id for r in mostro.take_requests()] == [first, third]
    assert [r.answer for r in mostro.take_requests()] == ["not_authorized", "took"]
    assert sessions(db_path, first) == [] and sessions(db_path, second) == []


async def test_fifty_disputes_at_once(local_relay: LocalRelayProcess, tmp_path: Path) -> None:
    """Issue 16: 50 disputes in one burst -> 50 sessions, one take and one start per
    dispute (no two starts for one dispute), and every solver gets all 50 initial DMs."""
    disputes = [str(uuid.uuid4()) for _ in range(50)]
    db_path = str(tmp_path / "serbero.db")
    async with open_scripted_llm(Model()) as llm, mediation_harness(local_relay.url, db_path) as h:
        mostro = h.sim
        async with engine_daemon(mediated(h, llm)):
            openings = [mostro.sign_opening(d, "buyer") for d in disputes]
            await in_thread(mostro.publish_signed, openings)
            await h.wait_dms(50)
            await eventually(
                lambda: h.rows("mediation_sessions", "state = 'awaiting_response'") == 50,
                60.0,
            )
            await eventually(lambda: h.rows("mediation_events", "kind = 'outbound_sent'") == 100)
    takes = [request.dispute_id for request in mostro.take_requests()]
    assert sorted(takes) == sorted(disputes)
    starts = query(
        db_path,
        "SELECT json_extract(payload_json, '$.dispute_id'), COUNT(*) FROM mediation_events"
        " WHERE kind = 'start_attempt_started' GROUP BY 1",
    )
    assert sorted(starts) == sorted((d, 1) for d in disputes)
    assert query(
        db_path, "SELECT COUNT(DISTINCT dispute_id), COUNT(*) FROM mediation_sessions"
    ) == [(50, 50)]
    assert h.rows("notifications", "notif_type = 'initial' AND status = 'sent'") == 100
    assert h.rows("mediation_events", "kind = 'outbound_sent'") == 100


async def test_a_relay_dropping_every_chat_event_is_retried_never_a_crash(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """Issue 16: the daemon's only relay refuses every dispute-chat wrap. The session is
    committed with its rows, each tick publishes them again, the engine never crashes and
    the core's DMs go through; once the relay takes them, each party reads exactly one
    opening message. `/health` shows the engine running with its live session."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    async with (
        open_scripted_llm(Model()) as llm,
        open_filtering_relay(local_relay.url) as relay,
        # Mostro and the parties use the real relay; only the daemon goes through the filter.
        mediation_harness(relay.url, db_path, mostro_relay=local_relay.url) as h,
    ):
        mostro = h.sim
        relay.refuse = refuse_chat_of(h, dispute)
        async with (
            parties(mostro, dispute, h.serbero.public_hex, local_relay.url) as (buyer, seller),
            engine_daemon(mediated(h, llm, tick=1)) as context,
        ):
            await in_thread(mostro.open_dispute, dispute, "buyer")
            await h.wait_dms(1)
            # The opening's three attempts, then a whole tick: its republish and its count.
            await eventually(
                lambda: len(relay.refused) >= 9 and context.engine.status().ticks >= 1, WAIT
            )
            assert h.rows("mediation_messages", "direction = 'outbound'") == 2
            assert h.rows("mediation_events", "kind = 'outbound_sent'") == 0
            assert buyer.notes() == [] and seller.notes() == []
            snapshot = context.snapshot()
            engine = health_answer(snapshot).document["mediation"]["engine"]
            assert engine["running"] and engine["sessions_live"] == 1
            assert engine["stage_failures"] == 0
            assert {a.name: a.restarts for a in snapshot.actors}["mediation_engine"] == 0
            relay.refuse = lambda event: False
            await in_thread(buyer.wait_for_count, 1, WAIT)
            await in_thread(seller.wait_for_count, 1, WAIT)
            await eventually(lambda: h.rows("mediation_events", "kind = 'outbound_sent'") == 2)
            await trio.sleep(1.5)
            assert len(buyer.notes()) == 1 and len(seller.notes()) == 1
