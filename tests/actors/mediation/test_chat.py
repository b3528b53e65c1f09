"""The chat actor on a real relay with parties on real trade keys (MED-80..83, MED-100..102,
MAS-7/8, BEY-16, Q-4, Q-12): what each party receives, what Serbero ingests, what it drops.

Real time against LocalRelay; the parties are nostr-sdk peers in their own threads. The
store is a real SQLite file behind the tracker; the session row is written here the way the
open procedure writes it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import nostr_sdk
import pytest
import trio
from structlog.testing import capture_logs

from serbero.actors.mediation.chat import ChatActor, InboundBatch, NoChatMaterial, RoundDelivery
from serbero.actors.relay_pool import RelayPool, open_relay_pool
from serbero.actors.tracker import Tracker, open_tracker
from serbero.clock import system_wall_clock
from serbero.protocol.chat import ChatMaterial, derive_chat_material
from serbero.protocol.keys import Keys
from serbero.store.chat import Duplicate, Fresh, Stale, record_trade_pubkeys
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from tests.relay.helpers import FAST
from tests.store.helpers import event, rows
from tests.support.chat_party import ChatParty, chat_wrap, signed_note
from tests.support.relay_fixtures import LocalRelayProcess

SESSION = "session-1"
HASH = "e" * 64
WAIT = 10.0


class World(msgspec.Struct):
    serbero: Keys
    buyer_secret: str
    seller_secret: str
    material: ChatMaterial
    db_path: str
    started_at: int


def make_world(tmp_path: Path, started_at: int | None = None) -> World:
    """A dispute and its live session, as the open procedure leaves them after the take."""
    serbero = Keys.generate()
    buyer = nostr_sdk.Keys.generate()
    seller = nostr_sdk.Keys.generate()
    material = derive_chat_material(
        serbero, buyer.public_key().to_hex(), seller.public_key().to_hex()
    )
    db_path = str(tmp_path / "serbero.db")
    start = int(time.time()) - 60 if started_at is None else started_at
    conn, _ = open_database(db_path)
    try:
        record_detected(conn, event("d-1"), (), start)
        conn.execute(
            "INSERT INTO mediation_sessions (session_id, dispute_id, state, prompt_bundle_id,"
            " policy_hash, buyer_shared_pubkey, seller_shared_pubkey, started_at,"
            " last_transition_at) VALUES (?, 'd-1', 'awaiting_response', 'phase3-default',"
            " ?, ?, ?, ?, ?)",
            (
                SESSION,
                HASH,
                material.buyer_shared.public_hex,
                material.seller_shared.public_hex,
                start,
                start,
            ),
        )
        record_trade_pubkeys(conn, SESSION, material.buyer_pubkey, material.seller_pubkey)
    finally:
        conn.close()
    return World(
        serbero,
        buyer.secret_key().to_hex(),
        seller.secret_key().to_hex(),
        material,
        db_path,
        start,
    )


@asynccontextmanager
async def services(world: World, relay_url: str) -> AsyncIterator[tuple[RelayPool, Tracker]]:
    async with (
        open_tracker(world.db_path, wall_clock=system_wall_clock) as tracker,
        open_relay_pool([relay_url], world.serbero, timing=FAST) as pool,
    ):
        await pool.wait_connected()
        yield pool, tracker


def parties(world: World, relay_url: str) -> tuple[ChatParty, ChatParty]:
    pk = world.serbero.public_hex
    return (
        ChatParty(world.buyer_secret, pk, [relay_url]).start(),
        ChatParty(world.seller_secret, pk, [relay_url]).start(),
    )


def query(world: World, sql: str) -> list[tuple[object, ...]]:
    conn, _ = open_database(world.db_path)
    try:
        return rows(conn, sql)
    finally:
        conn.close()


async def test_the_opening_round_reaches_each_party_once_signed_by_serbero(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MED-80..83: each text to its party's shared key only, inner note signed by Serbero;
    two rows and two `outbound_sent` with the session's pinned bundle."""
    world = make_world(tmp_path)
    buyer, seller = parties(world, local_relay.url)
    try:
        async with services(world, local_relay.url) as (pool, tracker):
            actor = ChatActor(pool, tracker, world.serbero)
            with pytest.raises(NoChatMaterial):
                await actor.send_round(SESSION, None, "What happened?", "Did you get paid?")
            actor.remember(SESSION, world.material)
            delivery = await actor.send_round(SESSION, None, "What happened?", "Did you get paid?")
            assert delivery == RoundDelivery(buyer_sent=True, seller_sent=True)
            assert await actor.republish_unsent() == 0
        [to_buyer] = await trio.to_thread.run_sync(buyer.wait_for_count, 1, WAIT)
        [to_seller] = await trio.to_thread.run_sync(seller.wait_for_count, 1, WAIT)
    finally:
        buyer.close()
        seller.close()
    assert (to_buyer.author, to_buyer.content) == (
        world.serbero.public_hex,
        "Buyer: What happened?",
    )
    assert (to_seller.author, to_seller.content) == (
        world.serbero.public_hex,
        "Seller: Did you get paid?",
    )
    assert query(
        world, "SELECT party, direction, content, policy_hash FROM mediation_messages"
    ) == [
        ("buyer", "outbound", "Buyer: What happened?", HASH),
        ("seller", "outbound", "Seller: Did you get paid?", HASH),
    ]
    sent = "SELECT COUNT(*) FROM mediation_events WHERE kind = 'outbound_sent'"
    assert query(world, sent) == [(2,)]


async def test_mas7_replies_are_ingested_in_order_and_a_forgery_is_dropped_once(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """MAS-7: one reply per party plus an attacker's note wrapped to the buyer's shared key:
    two Fresh envelopes, ascending, round 1, verbatim; the forgery and Serbero's own wraps
    are not ingested, the forgery logged once; the next pass reads Duplicate only."""
    world = make_world(tmp_path)
    buyer, seller = parties(world, local_relay.url)
    now = int(time.time())
    try:
        async with services(world, local_relay.url) as (pool, tracker):
            actor = ChatActor(pool, tracker, world.serbero)
            actor.remember(SESSION, world.material)
            await actor.send_round(SESSION, None, "q?", "q?")
            seller_inner, _ = seller.reply("The fiat never arrived.", created_at=now + 1)
            buyer_inner, _ = buyer.reply("  I sent it, proof attached\n", created_at=now)
            attacker = nostr_sdk.Keys.generate().secret_key().to_hex()
            buyer.send_inner(signed_note(attacker, "release the sats", now + 2))
            with capture_logs() as logs:
                first = await actor.ingest_once(SESSION)
                again = await actor.ingest_once(SESSION)
    finally:
        buyer.close()
        seller.close()
    assert first == [Fresh(buyer_inner, 0), Fresh(seller_inner, 1, round_complete=True)]
    assert again == [Duplicate(buyer_inner), Duplicate(seller_inner)]
    dropped = [e for e in logs if e["event"] == "chat_wrap_dropped"]
    assert [(e["party"], e["reason"]) for e in dropped] == [
        ("buyer", "inner event is not signed by the expected party")
    ]
    facts = "SELECT state, round_count, buyer_last_seen_inner_ts, seller_last_seen_inner_ts"
    assert query(world, facts + " FROM mediation_sessions") == [
        ("awaiting_response", 1, now, now + 1)
    ]
    inbound = (
        "SELECT party, content FROM mediation_messages WHERE direction = 'inbound' ORDER BY id"
    )
    assert query(world, inbound) == [
        ("buyer", "  I sent it, proof attached\n"),
        ("seller", "The fiat never arrived."),
    ]


async def test_hostile_wraps_change_nothing(tmp_path: Path, local_relay: LocalRelayProcess) -> None:
    """Undecryptable, not a note, a broken signature, a huge body, and a party's note
    replayed in a new wrap: nothing but the one real message is stored."""
    world = make_world(tmp_path)
    buyer, seller = parties(world, local_relay.url)
    now = int(time.time())
    try:
        async with services(world, local_relay.url) as (pool, tracker):
            actor = ChatActor(pool, tracker, world.serbero)
            actor.remember(SESSION, world.material)
            inner_id, _ = buyer.reply("hello", created_at=now)
            replay = signed_note(world.buyer_secret, "hello", now)
            real = msgspec.json.decode(replay)
            other_kind = msgspec.json.decode(
                nostr_sdk.EventBuilder(nostr_sdk.Kind(7), "+")
                .finalize(nostr_sdk.Keys.parse(world.buyer_secret))
                .as_json()
            )
            broken = dict(real, content="changed after signing")
            garbage = (
                nostr_sdk.EventBuilder(nostr_sdk.Kind(1059), "AAAA" * 10)
                .tags([nostr_sdk.Tag.parse(["p", buyer.shared_pubkey_hex])])
                .finalize(nostr_sdk.Keys.generate())
            )

            def hostile() -> None:
                buyer.send_inner(replay)
                buyer.send_inner(msgspec.json.encode(other_kind).decode())
                buyer.send_inner(msgspec.json.encode(broken).decode())
                buyer.send_inner(signed_note(world.buyer_secret, "x" * 40_000, now + 5)[:-2])
                buyer.publish_wrap(garbage)
                buyer.publish_wrap(
                    chat_wrap(
                        buyer.shared_pubkey_hex, signed_note(world.buyer_secret, "hello", now)
                    )
                )

            await trio.to_thread.run_sync(hostile)
            with capture_logs() as logs:
                outcomes = await actor.ingest_once(SESSION)
                await actor.ingest_once(SESSION)
    finally:
        buyer.close()
        seller.close()
    assert outcomes == [Fresh(inner_id, 0)]
    assert query(world, "SELECT COUNT(*) FROM mediation_messages") == [(1,)]
    dropped = [e for e in logs if e["event"] == "chat_wrap_dropped"]
    assert len(dropped) == 4 and len({e["wrap_id"] for e in dropped}) == 4


async def test_rows_no_relay_took_are_republished_as_the_same_event(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """Q-4 and the 'relay drops every chat event' fault: with the relay gone the round is
    stored and nothing raises; once a relay is back the next pass publishes the stored wraps
    (the same event ids) and each party gets its message exactly once."""
    world = make_world(tmp_path)
    async with services(world, local_relay.url) as (pool, tracker):
        actor = ChatActor(pool, tracker, world.serbero, publish_retry_delays=(0.01, 0.01))
        actor.remember(SESSION, world.material)
        await local_relay.astop()
        with trio.fail_after(5):
            while pool.connected_count():
                await trio.sleep(0.01)
        with capture_logs() as logs:
            delivery = await actor.send_round(SESSION, None, "first", "second")
        assert delivery == RoundDelivery(buyer_sent=False, seller_sent=False)
        assert [e["attempts"] for e in logs if e["event"] == "chat_message_not_sent"] == [3]
        await local_relay.astart()
        await pool.wait_connected()
        buyer, seller = parties(world, local_relay.url)
        try:
            await actor.pass_once()
            assert await actor.republish_unsent() == 0
            [to_buyer] = await trio.to_thread.run_sync(buyer.wait_for_count, 1, WAIT)
            [to_seller] = await trio.to_thread.run_sync(seller.wait_for_count, 1, WAIT)
        finally:
            buyer.close()
            seller.close()
    outer = "SELECT outer_event_id FROM mediation_messages ORDER BY id"
    assert [to_buyer.wrap_id, to_seller.wrap_id] == [row[0] for row in query(world, outer)]
    assert (to_buyer.content, to_seller.content) == ("Buyer: first", "Seller: second")


async def test_a_restart_re_derives_the_keys_and_keeps_deduplicating(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """BEY-16 + MAS-8: a new actor on the reopened database restores the session's keys
    from the stored trade pubkeys and reads the message it ingested before as a Duplicate.
    A session whose stored trade keys do not give its shared keys is not restored."""
    world = make_world(tmp_path)
    buyer, seller = parties(world, local_relay.url)
    try:
        async with services(world, local_relay.url) as (pool, tracker):
            first = ChatActor(pool, tracker, world.serbero)
            first.remember(SESSION, world.material)
            inner_id, _ = buyer.reply("before the crash")
            assert await first.ingest_once(SESSION) == [Fresh(inner_id, 0)]
        conn, _ = open_database(world.db_path)
        try:
            conn.execute(
                "INSERT INTO mediation_sessions (session_id, dispute_id, state,"
                " prompt_bundle_id, policy_hash, buyer_shared_pubkey, seller_shared_pubkey,"
                " started_at, last_transition_at) SELECT 'tampered', dispute_id, state,"
                " prompt_bundle_id, policy_hash, buyer_shared_pubkey, seller_shared_pubkey,"
                " started_at, last_transition_at FROM mediation_sessions"
            )
            record_trade_pubkeys(
                conn, "tampered", world.material.seller_pubkey, world.material.buyer_pubkey
            )
        finally:
            conn.close()
        async with services(world, local_relay.url) as (pool, tracker):
            second = ChatActor(pool, tracker, world.serbero)
            assert await second.restore() == (SESSION,)
            assert second.material(SESSION) == world.material
            assert await second.ingest_once(SESSION) == [Duplicate(inner_id)]
    finally:
        buyer.close()
        seller.close()
    assert query(world, "SELECT COUNT(*) FROM mediation_messages") == [(1,)]


async def test_q12_the_previous_sessions_chat_is_stale(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """Q-12: a note older than the session (a re-opened dispute shares the shared keys)."""
    world = make_world(tmp_path)
    buyer, seller = parties(world, local_relay.url)
    try:
        async with services(world, local_relay.url) as (pool, tracker):
            actor = ChatActor(pool, tracker, world.serbero)
            actor.remember(SESSION, world.material)
            inner_id, _ = buyer.reply("from the last session", created_at=world.started_at - 5)
            assert await actor.ingest_once(SESSION) == [Stale(inner_id)]
    finally:
        buyer.close()
        seller.close()


async def test_the_periodic_pass_hands_news_to_the_engine(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """`run` ingests every `fetch_interval` (BEY-24) and hands outcomes on; a closed session
    is forgotten."""
    world = make_world(tmp_path)
    buyer, seller = parties(world, local_relay.url)
    try:
        async with services(world, local_relay.url) as (pool, tracker):
            actor = ChatActor(pool, tracker, world.serbero, fetch_interval=0.2)
            actor.remember(SESSION, world.material)
            send, recv = trio.open_memory_channel[InboundBatch](4)
            async with trio.open_nursery() as nursery:
                await nursery.start(actor.run, send)
                inner_id, _ = buyer.reply("are you there?")
                with trio.fail_after(WAIT):
                    batch = await recv.receive()
                assert batch == InboundBatch(SESSION, (Fresh(inner_id, 0),))
                conn, _ = open_database(world.db_path)
                conn.execute("UPDATE mediation_sessions SET state = 'closed'")
                conn.close()
                with trio.fail_after(WAIT):
                    while actor.sessions():
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    finally:
        buyer.close()
        seller.close()
