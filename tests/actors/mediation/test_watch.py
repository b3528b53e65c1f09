"""The live watch on a real relay: a party's answer is stored as it arrives, with no chat pass
running, and handed on; what the filter could not see is caught up; Serbero's own messages,
forgeries and ended sessions are not; a relay that goes away and comes back is watched again.

Real time against LocalRelay; the parties are nostr-sdk peers in their own threads; the store
is a real SQLite file behind the tracker (the session row as the open procedure writes it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nostr_sdk
import trio
from structlog.testing import capture_logs

from serbero.actors.mediation.chat import ChatActor, InboundBatch
from serbero.actors.mediation.watch import ChatWatch
from serbero.actors.relay_pool import RelayPool
from serbero.protocol.chat import derive_chat_material
from serbero.protocol.keys import Keys
from serbero.store.chat import Fresh
from tests.actors.mediation.test_chat import (
    SESSION,
    WAIT,
    World,
    make_world,
    parties,
    query,
    services,
)
from tests.support.chat_party import ChatParty, signed_note
from tests.support.relay_fixtures import LocalRelayProcess

# Long enough for a message that was going to arrive to have arrived on loopback.
QUIET = 1.0


class Watching:
    """A chat actor with no pass running and its watch, handing batches to `batches`."""

    def __init__(
        self,
        pool: RelayPool,
        actor: ChatActor,
        watch: ChatWatch,
        batches: trio.MemoryReceiveChannel[InboundBatch],
    ) -> None:
        self.pool = pool
        self.actor = actor
        self.watch = watch
        self.batches = batches

    async def next_batch(self) -> InboundBatch:
        with trio.fail_after(WAIT):
            return await self.batches.receive()

    async def nothing_more(self) -> None:
        with trio.move_on_after(QUIET):
            batch = await self.batches.receive()
            raise AssertionError(f"unexpected batch {batch}")

    async def watched(self, sessions: int) -> None:
        with trio.fail_after(WAIT):
            while self.watch.watched_sessions != sessions:
                await trio.sleep(0.01)


@asynccontextmanager
async def watching(world: World, relay_url: str) -> AsyncIterator[Watching]:
    async with services(world, relay_url) as (pool, tracker), trio.open_nursery() as nursery:
        actor = ChatActor(pool, tracker, world.serbero)
        watch = ChatWatch(pool, actor)
        send, receive = trio.open_memory_channel[InboundBatch](64)
        await nursery.start(watch.run, send)
        yield Watching(pool, actor, watch, receive)
        nursery.cancel_scope.cancel()


async def reply(party: ChatParty, text: str) -> str:
    inner_id, _ = await trio.to_thread.run_sync(party.reply, text)
    return inner_id


async def test_answers_are_stored_as_they_arrive_and_a_complete_round_says_so(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """No pass runs: the opening (Serbero's own) brings no batch, the buyer's answer one
    Fresh, the seller's a Fresh that completes the round, a forgery nothing (logged once)."""
    world = make_world(tmp_path)
    buyer, seller = parties(world, local_relay.url)
    try:
        async with watching(world, local_relay.url) as w:
            w.actor.remember(SESSION, world.material)
            await w.watched(1)
            with capture_logs() as logs:
                await w.actor.send_round(SESSION, None, "What happened?", "Were you paid?")
                await trio.to_thread.run_sync(buyer.wait_for_count, 1, WAIT)
                buyer_inner = await reply(buyer, "I paid at ten.")
                assert await w.next_batch() == InboundBatch(SESSION, (Fresh(buyer_inner, 0),))
                attacker = nostr_sdk.Keys.generate().secret_key().to_hex()
                forged = signed_note(attacker, "release the sats")
                await trio.to_thread.run_sync(buyer.send_inner, forged)
                seller_inner = await reply(seller, "Nothing arrived.")
                assert await w.next_batch() == InboundBatch(
                    SESSION, (Fresh(seller_inner, 1, round_complete=True),)
                )
                await w.nothing_more()
    finally:
        buyer.close()
        seller.close()
    dropped = [e for e in logs if e["event"] == "chat_wrap_dropped"]
    assert [e["reason"] for e in dropped] == ["inner event is not signed by the expected party"]
    inbound = "SELECT party, content FROM mediation_messages WHERE direction = 'inbound'"
    assert query(world, inbound + " ORDER BY id") == [
        ("buyer", "I paid at ten."),
        ("seller", "Nothing arrived."),
    ]


async def test_an_answer_sent_before_the_filter_named_the_session_is_caught_up(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """The buyer answers before the session's keys are cached (a relay forwarded it to
    nobody); the renewal that adds the session is held back by the spacing, since another
    session was added just before, so it fetches the session once."""
    world = make_world(tmp_path)
    buyer, seller = parties(world, local_relay.url)
    try:
        async with watching(world, local_relay.url) as w:
            buyer_inner = await reply(buyer, "Quick answer.")
            other = derive_chat_material(
                world.serbero, Keys.generate().public_hex, Keys.generate().public_hex
            )
            w.actor.remember("session-0", other)
            await w.watched(1)
            w.actor.remember(SESSION, world.material)
            assert await w.next_batch() == InboundBatch(SESSION, (Fresh(buyer_inner, 0),))
            await w.nothing_more()
    finally:
        buyer.close()
        seller.close()


async def test_an_ended_session_is_no_longer_read(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """Once the session is forgotten the filter is closed and its answers are not stored."""
    world = make_world(tmp_path)
    buyer, seller = parties(world, local_relay.url)
    try:
        async with watching(world, local_relay.url) as w:
            w.actor.remember(SESSION, world.material)
            await w.watched(1)
            w.actor.forget(SESSION)
            await w.watched(0)
            await reply(buyer, "Anyone there?")
            await w.nothing_more()
    finally:
        buyer.close()
        seller.close()
    assert query(world, "SELECT COUNT(*) FROM mediation_messages") == [(0,)]


async def test_a_burst_of_new_sessions_costs_a_few_renewals_not_one_each(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """Twenty sessions cached a millisecond apart: the filter is renewed at most every
    `RENEW_SPACING_SECONDS`, so a handful of REQs, not twenty."""
    world = make_world(tmp_path)
    async with watching(world, local_relay.url) as w:
        for number in range(20):
            material = derive_chat_material(
                world.serbero, Keys.generate().public_hex, Keys.generate().public_hex
            )
            w.actor.remember(f"burst-{number}", material)
            await trio.sleep(0.001)
        await trio.sleep(QUIET)
    # The sessions have no rows, so the catch-up forgets them and the filter closes: one
    # renewal more.
    assert 2 <= w.watch.renewals <= 4


async def test_the_watch_resumes_after_the_relay_comes_back(
    tmp_path: Path, local_relay: LocalRelayProcess
) -> None:
    """The relay goes away and comes back on the same port: the pool re-sends the filter and
    an answer is stored as it arrives, with no pass."""
    world = make_world(tmp_path)
    async with watching(world, local_relay.url) as w:
        w.actor.remember(SESSION, world.material)
        await w.watched(1)
        await local_relay.astop()
        await local_relay.astart()
        await w.pool.wait_connected()
        buyer, seller = parties(world, local_relay.url)
        try:
            # Serbero's REQ may reach the relay just after the first answer: answer until
            # one is seen (the pass stores any earlier one in production).
            sent: list[str] = []
            with trio.fail_after(WAIT):
                while True:
                    sent.append(await reply(buyer, f"Back, try {len(sent)}"))
                    with trio.move_on_after(0.5):
                        batch = await w.batches.receive()
                        break
        finally:
            buyer.close()
            seller.close()
    [fresh] = batch.outcomes
    assert batch.session_id == SESSION
    assert isinstance(fresh, Fresh) and fresh.inner_event_id in sent
