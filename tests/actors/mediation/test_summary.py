"""Summary delivery with real parts (§11, MAS-10..12, MED-131, Q-2): a real SQLite file
behind the tracker, the scripted reasoning server over loopback HTTP, the outbox sender
publishing through a real relay, and solvers reading their DMs with nostr-sdk."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from serbero.actors.delivery import PoolCourier
from serbero.actors.mediation.summary import SummaryDelivery
from serbero.actors.relay_pool import open_relay_pool
from serbero.actors.sender import Doorbell, OutboxSender, SenderStats
from serbero.actors.tracker import open_tracker
from serbero.clock import system_wall_clock
from serbero.config import SolverConfig
from serbero.protocol.keys import Keys
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from serbero.store.rationale import rationale_id
from tests.reasoning.helpers import BUNDLE, SUMMARY_ANSWER, scripted_context
from tests.relay.helpers import FAST
from tests.store.helpers import event, open_classified, rows
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import Reply, json_reply, open_scripted_llm, openai_reply
from tests.support.solver_inbox import SolverInbox

WAIT = 10.0
SALT = b"\x07" * 32


def _db(tmp_path: Path, *, assigned: str | None = None) -> tuple[str, str]:
    """A database with one dispute whose session was classified at open (Q-2)."""
    dispute_id, session_id = str(uuid.uuid4()), str(uuid.uuid4())
    path = str(tmp_path / "serbero.db")
    conn, _ = open_database(path)
    now = int(time.time())
    try:
        record_detected(conn, event(dispute_id, ts=now - 60), (), now - 60)
        conn.execute("UPDATE disputes SET assigned_solver = ?", (assigned,))
        open_classified(
            conn,
            session_id,
            dispute_id,
            bundle_id=BUNDLE.bundle_id,
            policy_hash=BUNDLE.policy_hash,
            confidence=0.9,
            now=now - 30,
        )
    finally:
        conn.close()
    return path, session_id


@asynccontextmanager
async def delivery(
    db_path: str, relay_url: str, solvers: list[SolverConfig], *replies: Reply
) -> AsyncIterator[SummaryDelivery]:
    """SummaryDelivery on the scripted model, with the daemon's outbox sender running."""
    serbero = Keys.generate()
    async with (
        open_scripted_llm(openai_reply("ok")) as llm,
        httpx.AsyncClient() as client,
        open_tracker(db_path, wall_clock=system_wall_clock) as tracker,
        open_relay_pool([relay_url], serbero, timing=FAST) as pool,
        trio.open_nursery() as nursery,
    ):
        llm.script(*replies)
        await pool.wait_connected()
        context = scripted_context(llm.url, client, tuple(solver.key for solver in solvers))
        doorbell = Doorbell()
        sender = OutboxSender(
            tracker,
            pool,
            PoolCourier(pool, serbero, salt=SALT),
            solvers,
            doorbell=doorbell,
            stats=SenderStats(),
            wall_clock=system_wall_clock,
        )
        nursery.start_soon(sender.run)
        yield SummaryDelivery(tracker, context, ring_sender=doorbell.ring)
        nursery.cancel_scope.cancel()


def _query(db_path: str, sql: str) -> list[tuple[object, ...]]:
    conn, _ = open_database(db_path)
    try:
        return rows(conn, sql)
    finally:
        conn.close()


async def _wait_state(db_path: str, state: str) -> None:
    with trio.fail_after(WAIT):
        while _query(db_path, "SELECT state FROM mediation_sessions") != [(state,)]:
            await trio.sleep(0.05)


def _solvers(count: int) -> tuple[list[Keys], list[SolverConfig]]:
    keys = [Keys.generate() for _ in range(count)]
    return keys, [SolverConfig.from_text(k.public_hex, "write") for k in keys]


async def test_mas10_the_tick_delivers_an_open_time_summary_and_closes_the_session(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MAS-10 and Q-2: a session classified at open is summarised by the tick; the assigned
    solver alone reads the DM; the session closes once the DM is out."""
    keys, solvers = _solvers(2)
    db_path, _ = _db(tmp_path, assigned=keys[1].public_hex)
    with (
        SolverInbox(keys[0].secret.hex(), [local_relay.url]) as other,
        SolverInbox(keys[1].secret.hex(), [local_relay.url]) as assigned,
    ):
        async with delivery(db_path, local_relay.url, solvers, openai_reply(SUMMARY_ANSWER)) as d:
            await d.deliver_pending()
            [dm] = await trio.to_thread.run_sync(assigned.wait_for_count, 1, WAIT)
            await _wait_state(db_path, "closed")
            await d.deliver_pending()  # nothing left to do
        assert other.messages() == []
    assert dm.content == "The buyer paid late.\n\nSuggested next step: confirm receipt"
    rid = rationale_id("both agree")
    assert _query(
        db_path,
        "SELECT rationale_id, prompt_bundle_id, policy_hash FROM mediation_summaries",
    ) == [(rid, BUNDLE.bundle_id, BUNDLE.policy_hash)]
    assert _query(
        db_path,
        "SELECT rationale_id, prompt_bundle_id, policy_hash FROM mediation_events"
        " WHERE kind = 'summary_generated'",
    ) == [(rid, BUNDLE.bundle_id, BUNDLE.policy_hash)]
    assert _query(db_path, "SELECT solver_pubkey, status, notif_type FROM notifications") == [
        (keys[1].public_hex, "sent", "mediation_summary")
    ]


async def test_mas11_an_unassigned_dispute_reaches_every_solver(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    keys, solvers = _solvers(2)
    db_path, session_id = _db(tmp_path)
    with (
        SolverInbox(keys[0].secret.hex(), [local_relay.url]) as first,
        SolverInbox(keys[1].secret.hex(), [local_relay.url]) as second,
    ):
        async with delivery(db_path, local_relay.url, solvers, openai_reply(SUMMARY_ANSWER)) as d:
            await d.deliver(session_id, ())
            for inbox in (first, second):
                await trio.to_thread.run_sync(inbox.wait_for_count, 1, WAIT)
            await _wait_state(db_path, "closed")
    assert len(_query(db_path, "SELECT 1 FROM notifications WHERE status = 'sent'")) == 2


async def test_mas12_no_solver_escalates_and_keeps_the_summary(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    db_path, _ = _db(tmp_path)
    async with delivery(db_path, local_relay.url, [], openai_reply(SUMMARY_ANSWER)) as d:
        await d.deliver_pending()
    assert _query(db_path, "SELECT state FROM mediation_sessions") == [("escalation_recommended",)]
    assert len(_query(db_path, "SELECT 1 FROM mediation_summaries")) == 1
    assert _query(db_path, "SELECT COUNT(*) FROM notifications") == [(0,)]
    [(payload,)] = _query(
        db_path, "SELECT payload_json FROM mediation_events WHERE kind = 'escalation_recommended'"
    )
    decoded = msgspec.json.decode(str(payload))
    assert (decoded["trigger"], decoded["reason"]) == (
        "notification_failed",
        "no solver recipients configured",
    )


HOSTILE = [
    pytest.param(
        openai_reply("The buyer paid.\nSUGGESTED_NEXT_STEP:   \nRATIONALE: r"),
        "authority_boundary_attempt",
        "empty summary or suggested next step from reasoning provider",
        id="blank-next-step",
    ),
    pytest.param(
        openai_reply(
            "Both agree.\nSUGGESTED_NEXT_STEP: Release the funds to the buyer.\nRATIONALE: r"
        ),
        "authority_boundary_attempt",
        "authority boundary attempt in summary",
        id="release-the-funds",
    ),
    pytest.param(
        openai_reply("Run AdminSettleDispute now.\nSUGGESTED_NEXT_STEP: wait\nRATIONALE: r"),
        "authority_boundary_attempt",
        "authority boundary attempt in summary",
        id="admin-settle-camel-case",
    ),
    pytest.param(
        openai_reply("RATIONALE: first\nSUGGESTED_NEXT_STEP: then"),
        "reasoning_unavailable",
        "malformed_response",
        id="malformed",
    ),
    pytest.param(
        openai_reply("   "),
        "reasoning_unavailable",
        "malformed_response",
        id="blank",
    ),
    pytest.param(
        json_reply({"error": "down"}, status=503),
        "reasoning_unavailable",
        "unreachable",
        id="provider-down",
    ),
]


@pytest.mark.parametrize(("reply", "trigger", "reason"), HOSTILE)
async def test_hostile_model_output_escalates_and_no_summary_reaches_anyone(
    tmp_path: Path, local_relay: LocalRelayProcess, reply: Reply, trigger: str, reason: str
) -> None:
    """MED-111/131: nothing of the answer is stored or sent; the session escalates through
    the recommend (handoff for the dispatcher, Q-5) and the solver reads the one-line
    escalation notice (MED-126), never the model's text."""
    keys, solvers = _solvers(1)
    db_path, session_id = _db(tmp_path)
    with SolverInbox(keys[0].secret.hex(), [local_relay.url]) as inbox:
        async with delivery(db_path, local_relay.url, solvers, reply, reply) as d:
            await d.deliver_pending()
            [dm] = await trio.to_thread.run_sync(inbox.wait_for_count, 1, WAIT)
    assert f"trigger: {trigger}" in dm.content and session_id in dm.content
    assert "\n" not in dm.content
    assert _query(db_path, "SELECT state FROM mediation_sessions") == [("escalation_recommended",)]
    assert _query(db_path, "SELECT COUNT(*) FROM mediation_summaries") == [(0,)]
    assert _query(
        db_path, "SELECT COUNT(*) FROM reasoning_rationales WHERE rationale_text = 'r'"
    ) == [(0,)]
    [(payload,)] = _query(
        db_path, "SELECT payload_json FROM mediation_events WHERE kind = 'escalation_recommended'"
    )
    decoded = msgspec.json.decode(str(payload))
    assert (decoded["trigger"], decoded["reason"]) == (trigger, reason)
    assert (
        len(_query(db_path, "SELECT 1 FROM mediation_events WHERE kind = 'handoff_prepared'")) == 1
    )


async def test_a_summary_a_crash_interrupted_is_made_again_by_the_tick(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """The daemon died between `summary_pending` and the summary's commit: nothing of the
    summary is stored, so the tick asks the model again and delivers it once."""
    keys, solvers = _solvers(1)
    db_path, _ = _db(tmp_path)
    conn, _ = open_database(db_path)
    try:
        conn.execute("UPDATE mediation_sessions SET state = 'summary_pending'")
    finally:
        conn.close()
    with SolverInbox(keys[0].secret.hex(), [local_relay.url]) as inbox:
        async with delivery(db_path, local_relay.url, solvers, openai_reply(SUMMARY_ANSWER)) as d:
            await d.deliver_pending()
            await trio.to_thread.run_sync(inbox.wait_for_count, 1, WAIT)
            await _wait_state(db_path, "closed")
            await d.deliver_pending()
        assert len(inbox.messages()) == 1
    assert _query(db_path, "SELECT COUNT(*) FROM mediation_summaries") == [(1,)]


async def test_every_summary_dm_failing_for_good_escalates(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MED-113: the only configured solver's key cannot be used, so its DM fails for good;
    the commit recording that failure escalates `notification_failed` with "all recipient
    sends failed", and the summary stays stored."""
    broken = SolverConfig.from_text("npub1-not-a-key", "write")
    db_path, _ = _db(tmp_path)
    async with delivery(db_path, local_relay.url, [broken], openai_reply(SUMMARY_ANSWER)) as d:
        await d.deliver_pending()
        await _wait_state(db_path, "escalation_recommended")
    assert _query(db_path, "SELECT status, notif_type FROM notifications ORDER BY id")[0] == (
        "failed",
        "mediation_summary",
    )
    [(payload,)] = _query(
        db_path, "SELECT payload_json FROM mediation_events WHERE kind = 'escalation_recommended'"
    )
    decoded = msgspec.json.decode(str(payload))
    assert (decoded["trigger"], decoded["reason"]) == (
        "notification_failed",
        "all recipient sends failed",
    )
    assert _query(db_path, "SELECT COUNT(*) FROM mediation_summaries") == [(1,)]
