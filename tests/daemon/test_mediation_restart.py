"""Mediation across `kill -9` of the installed `serbero` script (issue 16, §15, BEY-16, Q-4).

The daemon runs as a subprocess against a LocalRelay (through a filtering relay where the test
must hold Serbero's chat wraps back), Mostro simulated on nostr-sdk answering takes, the
parties on their real trade keys and the scripted model on loopback HTTP.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest
import trio

from tests.daemon.mediation_support import (
    WAIT,
    Model,
    mediation_harness,
    opening_received,
    parties,
    refuse_chat_of,
    sessions,
    write_mediation_config,
)
from tests.daemon.process import DaemonProcess
from tests.daemon.support import SHUTDOWN_BUDGET, count_rows, eventually, in_thread, query
from tests.support.filtering_relay import open_filtering_relay
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import open_scripted_llm

# Replies per party while the daemon is down: enough that its first chat pass takes a while.
REPLIES = 100
# The engine ticks every second in these tests; this many ticks show nothing more happens.
QUIET_TICKS = 2.5


@pytest.fixture(autouse=True)
def reasoning_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERBERO_REASONING_API_KEY", "sk-scripted")


def killed(daemon: DaemonProcess) -> None:
    daemon.signal(signal.SIGKILL)
    assert daemon.wait(5) == -signal.SIGKILL


def stopped(daemon: DaemonProcess) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(SHUTDOWN_BUDGET + 1) == 0


async def test_kill_9_between_take_and_opening_message_sends_each_party_one_opening(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """The session is committed with its opening rows but no relay took the wraps when the
    process dies. After a restart the keys are re-derived from the stored trade pubkeys,
    the rows go out as the same events, no second take or start happens, and each party
    has exactly one opening message."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    async with (
        open_scripted_llm(Model()) as llm,
        open_filtering_relay(local_relay.url) as relay,
        mediation_harness(relay.url, db_path, mostro_relay=local_relay.url) as h,
    ):
        mostro, serbero_hex = h.sim, h.serbero.public_hex
        relay.refuse = refuse_chat_of(h, dispute)
        config = write_mediation_config(tmp_path, h, relay_url=relay.url, llm_url=llm.url)
        async with parties(mostro, dispute, serbero_hex, local_relay.url) as (buyer, seller):
            first = DaemonProcess(config, h.serbero)
            try:
                await in_thread(first.wait_for_event, "mediation_engine_started", WAIT)
                await in_thread(mostro.open_dispute, dispute, "buyer")
                await eventually(
                    lambda: (
                        h.rows("mediation_messages", "direction = 'outbound'") == 2
                        and len(relay.refused) > 0
                    ),
                    WAIT,
                )
                killed(first)
            finally:
                first.stop()
            assert h.rows("mediation_events", "kind = 'outbound_sent'") == 0
            assert buyer.notes() == [] and seller.notes() == []

            relay.refuse = lambda event: False
            second = DaemonProcess(config, h.serbero)
            try:
                resumed = await in_thread(second.wait_for_event, "mediation_resumed", WAIT)
                await in_thread(buyer.wait_for_count, 1, WAIT)
                await in_thread(seller.wait_for_count, 1, WAIT)
                await trio.sleep(QUIET_TICKS)
                stopped(second)
            finally:
                second.stop()
            buyer_notes, seller_notes = buyer.notes(), seller.notes()
    assert (resumed["sessions_live"], resumed["sessions_restored"]) == (1, 1)
    assert resumed["republished"] == 2
    assert [note.content for note in buyer_notes] == ["Buyer: When did you pay?"]
    assert [note.content for note in seller_notes] == ["Seller: Please check again."]
    assert [request.dispute_id for request in mostro.take_requests()] == [dispute]
    assert [state for _, state, _, _ in sessions(db_path, dispute)] == ["awaiting_response"]
    assert h.rows("mediation_messages", "direction = 'outbound'") == 2
    assert h.rows("mediation_events", "kind = 'outbound_sent'") == 2
    assert h.rows("mediation_events", "kind = 'start_attempt_started'") == 1


def inbound(db_path: str) -> int:
    return count_rows(db_path, "mediation_messages", "direction = 'inbound'")


async def test_kill_9_mid_ingest_loses_no_inbound_message_and_counts_none_twice(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """Both parties answer many times while the daemon is down; the restarted daemon is
    killed in the middle of its first chat pass; the next one ingests the rest. Every
    message is stored once, none stale, the round count is the pairs answered and each
    party's marker is its newest message (MED-102, restart-safe by the unique index)."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    async with (
        open_scripted_llm(Model()) as llm,
        mediation_harness(local_relay.url, db_path) as h,
    ):
        mostro, serbero_hex = h.sim, h.serbero.public_hex
        # No round limit in reach: this test is about ingest only.
        config = write_mediation_config(
            tmp_path, h, relay_url=local_relay.url, llm_url=llm.url, max_rounds=10 * REPLIES
        )
        async with parties(mostro, dispute, serbero_hex, local_relay.url) as (buyer, seller):
            first = DaemonProcess(config, h.serbero)
            try:
                await opening_received(first, mostro, dispute, buyer, seller)
                stopped(first)
            finally:
                first.stop()
            sent: dict[str, list[str]] = {"buyer": [], "seller": []}
            for index in range(REPLIES):
                sent["buyer"].append((await in_thread(buyer.reply, f"buyer {index}"))[0])
                sent["seller"].append((await in_thread(seller.reply, f"seller {index}"))[0])

            second = DaemonProcess(config, h.serbero)
            try:
                await in_thread(second.wait_for_event, "mediation_engine_started", WAIT)
                await eventually(lambda: inbound(db_path) >= 10, WAIT, interval=0.005)
                killed(second)
            finally:
                second.stop()
            at_kill = inbound(db_path)

            third = DaemonProcess(config, h.serbero)
            try:
                await eventually(lambda: inbound(db_path) == 2 * REPLIES, WAIT)
                await trio.sleep(QUIET_TICKS)
                stopped(third)
            finally:
                third.stop()
    assert 0 < at_kill < 2 * REPLIES, at_kill
    stored = query(
        db_path,
        "SELECT party, inner_event_id, stale FROM mediation_messages WHERE direction = 'inbound'",
    )
    assert len(stored) == 2 * REPLIES
    assert sorted(i for p, i, _ in stored if p == "buyer") == sorted(sent["buyer"])
    assert sorted(i for p, i, _ in stored if p == "seller") == sorted(sent["seller"])
    assert {stale for _, _, stale in stored} == {0}
    [(round_count, buyer_seen, seller_seen)] = query(
        db_path,
        "SELECT round_count, buyer_last_seen_inner_ts, seller_last_seen_inner_ts"
        " FROM mediation_sessions",
    )
    assert round_count == REPLIES
    newest = query(
        db_path,
        "SELECT party, MAX(inner_event_created_at) FROM mediation_messages"
        " WHERE direction = 'inbound' GROUP BY party ORDER BY party",
    )
    assert newest == [("buyer", buyer_seen), ("seller", seller_seen)]
