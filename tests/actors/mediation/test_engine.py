"""The engine's tick and restart resume with real parts (MED-70, MED-151, BEY-16): a real
relay, Mostro simulated on nostr-sdk, parties on their trade keys, the scripted reasoning
server and a real SQLite file; the rounds and summary stages are recording stand-ins, since
what they do is theirs to test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import apsw
import httpx
import msgspec
import trio
from structlog.testing import capture_logs

from serbero.actors.mediation.chat import InboundBatch
from serbero.actors.mediation.engine import MediationEngine
from serbero.actors.mediation.handle import MediationHandle
from serbero.actors.relay_pool import open_relay_pool
from serbero.actors.tracker import open_tracker
from serbero.clock import system_wall_clock
from serbero.config import ChatConfig, MediationConfig
from serbero.mediation.bringup import MediationContext
from serbero.protocol.keys import Keys
from serbero.reasoning.provider import build_provider
from serbero.store.chat import Fresh
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from tests.daemon.support import make_config
from tests.reasoning.helpers import ASK_ANSWER, BUNDLE, no_backoff, reasoning_config
from tests.relay.helpers import FAST
from tests.store.helpers import event
from tests.support.chat_party import ChatParty
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import open_scripted_llm, openai_reply

WAIT = 10.0


class Stage:
    """Records every call of the rounds and summary stages; raises for the names in `fail`."""

    def __init__(self, *fail: str) -> None:
        self.fail = set(fail)
        self.calls: list[tuple[str, object]] = []

    def _called(self, name: str, arg: object = None) -> None:
        self.calls.append((name, arg))
        if name in self.fail:
            raise RuntimeError(f"{name} broke")

    async def on_batch(self, batch: InboundBatch) -> None:
        self._called("on_batch", batch)

    async def on_answer(self, batch: InboundBatch) -> None:
        self._called("on_answer", batch)

    async def evaluate_pending(self) -> None:
        self._called("evaluate_pending")

    async def sweep(self, now: int) -> None:
        self._called("sweep", now)

    async def deliver_pending(self) -> None:
        self._called("deliver_pending")


def _db(tmp_path: Path, dispute_id: str) -> str:
    path = str(tmp_path / "serbero.db")
    conn, _ = open_database(path)
    record_detected(conn, event(dispute_id, ts=int(time.time()) - 5), (), int(time.time()))
    conn.close()
    return path


@asynccontextmanager
async def engine(
    db_path: str,
    relay_url: str,
    serbero: Keys,
    mostro: MostroSim,
    handle: MediationHandle | None = None,
) -> AsyncIterator[MediationEngine]:
    """A running engine whose own tick never comes (the test ticks it)."""
    async with (
        open_scripted_llm(openai_reply(ASK_ANSWER)) as llm,
        httpx.AsyncClient() as client,
        open_tracker(db_path, wall_clock=system_wall_clock) as tracker,
        open_relay_pool([relay_url], serbero, timing=FAST) as pool,
        trio.open_nursery() as nursery,
    ):
        await pool.wait_connected()
        reasoning = reasoning_config("openai", llm.url, retries=1)
        config = msgspec.structs.replace(
            make_config(db_path, [relay_url], serbero=serbero, mostro=Keys.generate()),
            mediation=MediationConfig(enabled=True),
            chat=ChatConfig(inbound_fetch_interval_seconds=3600),
        )
        built = MediationEngine(
            config=config,
            context=MediationContext(
                mediation=config.mediation,
                reasoning=reasoning,
                bundle=BUNDLE,
                provider=build_provider(reasoning, client, backoff=no_backoff),
            ),
            tracker=tracker,
            pool=pool,
            identity=serbero,
            mostro_pubkey=mostro.pubkey_hex,
            handle=handle or MediationHandle(),
        )
        await nursery.start(built.run)
        yield built
        nursery.cancel_scope.cancel()


async def test_a_tick_hands_inbound_news_to_rounds_and_runs_every_stage_in_order(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MED-70: the chat pass's batch goes to the rounds stage, then pending evaluations,
    the sweep and the summaries, in that order; a failing stage is logged and counted and
    the stages after it still run."""
    dispute = str(uuid.uuid4())
    db_path = _db(tmp_path, dispute)
    serbero = Keys.generate()
    rounds, summaries = Stage("evaluate_pending"), Stage()
    with MostroSim(Keys.generate().secret.hex(), [local_relay.url], answer_takes=True) as mostro:
        buyer_secret, _ = mostro.trade_keys(dispute)
        buyer = ChatParty(buyer_secret, serbero.public_hex, [local_relay.url]).start()
        try:
            async with engine(db_path, local_relay.url, serbero, mostro) as built:
                built.rounds, built.summaries = rounds, summaries
                opened = await built.opener.attempt(dispute, "buyer", "detected")
                assert opened.outcome == "opened"
                await trio.to_thread.run_sync(buyer.wait_for_count, 1, WAIT)
                inner_id, _ = await trio.to_thread.run_sync(buyer.reply, "I paid at noon")
                with capture_logs() as logs:
                    await built.tick()
                    await built.tick()
                figures = built.figures
        finally:
            buyer.close()
    [(first, batch), *rest] = rounds.calls
    assert first == "on_batch" and isinstance(batch, InboundBatch)
    assert batch.session_id == opened.session_id
    assert batch.outcomes == (Fresh(inner_event_id=inner_id, round_count=0),)
    # The second tick finds nothing new: no batch, the other stages run again.
    assert [name for name, _ in rest] == ["evaluate_pending", "sweep"] * 2
    assert [name for name, _ in summaries.calls] == ["deliver_pending"] * 2
    assert (figures.ticks, figures.stage_failures, figures.sessions_live) == (2, 2, 1)
    failed = [entry for entry in logs if entry["event"] == "mediation_tick_stage_failed"]
    assert [(f["stage"], f["error"]) for f in failed] == [
        ("evaluate", "RuntimeError: evaluate_pending broke")
    ] * 2


async def test_resume_restores_keys_and_names_the_sessions_it_cannot(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """BEY-16 / MED-151: after a restart the engine re-derives a session's keys from its
    stored trade pubkeys; a session whose trade pubkeys are gone gets no chat pass and is
    named once (`policy_changed` says whether its pinned policy is the loaded one)."""
    kept, lost = str(uuid.uuid4()), str(uuid.uuid4())
    db_path = _db(tmp_path, kept)
    conn, _ = open_database(db_path)
    record_detected(conn, event(lost, ts=int(time.time()) - 5), (), int(time.time()))
    conn.close()
    serbero = Keys.generate()
    with MostroSim(Keys.generate().secret.hex(), [local_relay.url], answer_takes=True) as mostro:
        async with engine(db_path, local_relay.url, serbero, mostro) as built:
            for dispute in (kept, lost):
                opened = await built.opener.attempt(dispute, "buyer", "detected")
                assert opened.outcome == "opened"
        lost_session = _forget_trade_keys(db_path, lost)
        handle = MediationHandle()
        with capture_logs() as logs:
            async with engine(db_path, local_relay.url, serbero, mostro, handle):
                status = handle.status()
    assert status.running
    assert (status.sessions_live, status.sessions_with_keys) == (2, 1)
    [resumed] = [entry for entry in logs if entry["event"] == "mediation_resumed"]
    assert (resumed["sessions_live"], resumed["sessions_restored"]) == (2, 1)
    [named] = [entry for entry in logs if entry["event"] == "mediation_session_keys_lost"]
    assert (named["session_id"], named["policy_changed"]) == (lost_session, False)


def _forget_trade_keys(db_path: str, dispute_id: str) -> str:
    """A session as the reference would leave it: shared pubkeys but no trade pubkeys."""
    conn = apsw.Connection(db_path)
    try:
        [(session_id,)] = conn.execute(
            "SELECT session_id FROM mediation_sessions WHERE dispute_id = ?", (dispute_id,)
        ).fetchall()
        conn.execute("DELETE FROM serbero_session_trade_keys WHERE session_id = ?", (session_id,))
        return str(session_id)
    finally:
        conn.close()


async def test_resume_escalates_a_keyless_session_pinned_to_another_policy(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MED-151/125 through the recommend (Q-5, BEY-17): a live session whose keys cannot be
    rebuilt and whose pinned policy is not the loaded one is escalated
    `policy_bundle_missing` at start, with both hashes and a handoff for the dispatcher."""
    dispute = str(uuid.uuid4())
    db_path = _db(tmp_path, dispute)
    serbero = Keys.generate()
    old_hash = "0" * 64
    with MostroSim(Keys.generate().secret.hex(), [local_relay.url], answer_takes=True) as mostro:
        async with engine(db_path, local_relay.url, serbero, mostro) as built:
            assert (await built.opener.attempt(dispute, "buyer", "detected")).outcome == "opened"
        session_id = _forget_trade_keys(db_path, dispute)
        conn = apsw.Connection(db_path)
        conn.execute("UPDATE mediation_sessions SET policy_hash = ?", (old_hash,))
        conn.close()
        async with engine(db_path, local_relay.url, serbero, mostro):
            pass
    conn = apsw.Connection(db_path)
    try:
        [(state,)] = conn.execute("SELECT state FROM mediation_sessions").fetchall()
        events = conn.execute(
            "SELECT kind, payload_json FROM mediation_events WHERE session_id = ?"
            " AND kind IN ('escalation_recommended', 'handoff_prepared') ORDER BY id",
            (session_id,),
        ).fetchall()
    finally:
        conn.close()
    assert state == "escalation_recommended"
    [(_, recommended), (_, handoff)] = events
    payload = msgspec.json.decode(recommended)
    assert payload["trigger"] == "policy_bundle_missing"
    assert (payload["pinned_hash"], payload["loaded_hash"]) == (old_hash, BUNDLE.policy_hash)
    assert msgspec.json.decode(handoff)["trigger"] == "policy_bundle_missing"
