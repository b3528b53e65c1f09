"""The take-flow against a simulated Mostro over a real relay (PROTO-53, MED-60..63, MAS-6).

Real time: the relay is rust-nostr's LocalRelay, Mostro a nostr-sdk peer in its own thread.
Timeouts are short constants given to the client, never sleeps.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import trio
from structlog.testing import capture_logs

from serbero.actors.mediation.take import TakeClient, TakeFailed, TakeResult
from serbero.actors.relay_pool import open_relay_pool
from serbero.protocol.chat import shared_keys
from serbero.protocol.keys import Keys
from serbero.protocol.take import TAKE_TIMEOUT_ERROR
from tests.relay.helpers import FAST
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess

# Bounds a failing test only: a take returns as soon as the answer is in.
SHORT_TIMEOUT = 10.0


@pytest.fixture
def serbero() -> Keys:
    return Keys.generate()


@pytest.fixture
def mostro(local_relay: LocalRelayProcess, serbero: Keys) -> Iterator[MostroSim]:
    with MostroSim(Keys.generate().secret.hex(), [local_relay.url], answer_takes=True) as sim:
        yield sim


@asynccontextmanager
async def running_client(
    relay_url: str, serbero: Keys, mostro_pubkey: str, timeout: float = SHORT_TIMEOUT
) -> AsyncIterator[TakeClient]:
    async with open_relay_pool([relay_url], serbero, timing=FAST) as pool:
        await pool.wait_connected()
        client = TakeClient(pool, serbero, mostro_pubkey, timeout=timeout)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            yield client
            nursery.cancel_scope.cancel()


def new_dispute() -> str:
    return str(uuid.uuid4())


async def take_while(
    client: TakeClient, mostro: MostroSim, dispute: str, replies: Callable[[], object]
) -> TakeResult | TakeFailed:
    """Start a take, wait until Mostro read the request, run `replies` (a thread), and
    return how the take ended."""
    ended: list[TakeResult | TakeFailed] = []

    async def take() -> None:
        try:
            ended.append(await client.take(dispute))
        except TakeFailed as exc:
            ended.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.to_thread.run_sync(mostro.wait_for_take_requests, 1, 5.0)
        await trio.to_thread.run_sync(replies)
    return ended[0]


async def test_a_take_returns_the_trade_keys_and_the_chat_material(
    local_relay: LocalRelayProcess, serbero: Keys, mostro: MostroSim
) -> None:
    """PROTO-53 end to end: the material is ECDH(Serbero, trade key) per party (MED-63)."""
    dispute = new_dispute()
    async with running_client(local_relay.url, serbero, mostro.pubkey_hex) as client:
        result = await client.take(dispute)
    buyer, seller = mostro.trade_pubkeys(dispute)
    assert (result.buyer_trade_pubkey, result.seller_trade_pubkey) == (buyer, seller)
    assert result.material.buyer_shared == shared_keys(serbero, buyer)
    assert result.material.seller_shared == shared_keys(serbero, seller)
    [request] = mostro.take_requests()
    assert (request.requester, request.dispute_id) == (serbero.public_hex, dispute)
    assert request.signature_valid and request.answer == "took"
    # Mostro's side effect of a take, published just after its reply: the `in-progress`
    # dispute event (no `p` tag).
    with trio.fail_after(SHORT_TIMEOUT):
        while not mostro.events():
            await trio.sleep(0.02)
    [status] = mostro.events()
    assert [tag for tag in status.tags if tag[0] in ("s", "p")] == [["s", "in-progress"]]


async def test_mas6_a_stale_refusal_for_another_dispute_is_ignored(
    local_relay: LocalRelayProcess, serbero: Keys, mostro: MostroSim
) -> None:
    """MAS-6: a `cant-do` about another dispute is already on the relay (and one arrives
    during the take); the take still returns the real reply's trade keys."""
    dispute, other = new_dispute(), new_dispute()
    await trio.to_thread.run_sync(mostro.send_cant_do, serbero.public_hex, other, "invalid_pubkey")
    mostro.ignore_take(dispute)
    buyer, seller = mostro.trade_pubkeys(dispute)
    me = serbero.public_hex

    def replies() -> None:
        mostro.send_cant_do(me, other, "not_authorized")
        mostro.send_took(me, dispute, buyer, seller)

    async with running_client(local_relay.url, serbero, mostro.pubkey_hex) as client:
        result = await take_while(client, mostro, dispute, replies)
    assert isinstance(result, TakeResult)
    assert (result.buyer_trade_pubkey, result.seller_trade_pubkey) == (buyer, seller)


async def test_a_second_take_is_refused_as_mostro_does_after_a_take(
    local_relay: LocalRelayProcess, serbero: Keys, mostro: MostroSim
) -> None:
    """A dispute already taken: `cant-do invalid_pubkey`, a correlated refusal (BEY-15)."""
    dispute = new_dispute()
    async with running_client(local_relay.url, serbero, mostro.pubkey_hex) as client:
        await client.take(dispute)
        with pytest.raises(TakeFailed) as failed:
            await client.take(dispute)
    assert failed.value.refused and failed.value.cant_do == "invalid_pubkey"
    assert failed.value.reason == (
        f"Mostro refused AdminTakeDispute for dispute {dispute}: invalid_pubkey"
    )


async def test_not_a_solver_is_a_refusal_that_says_so(
    local_relay: LocalRelayProcess, serbero: Keys, mostro: MostroSim
) -> None:
    """PROTO-55: `cant-do not_authorized` is how Mostro says Serbero is not its solver."""
    mostro.set_solvers(["0" * 63 + "1"])
    async with running_client(local_relay.url, serbero, mostro.pubkey_hex) as client:
        with pytest.raises(TakeFailed) as failed:
            await client.take(new_dispute())
    assert failed.value.refused and failed.value.not_a_solver
    assert failed.value.cant_do == "not_authorized"


async def test_no_answer_times_out_with_the_reference_text(
    local_relay: LocalRelayProcess, serbero: Keys, mostro: MostroSim
) -> None:
    dispute = new_dispute()
    mostro.ignore_take(dispute)
    async with running_client(local_relay.url, serbero, mostro.pubkey_hex, timeout=1.0) as client:
        with pytest.raises(TakeFailed) as failed:
            await client.take(dispute)
    assert failed.value.reason == TAKE_TIMEOUT_ERROR and not failed.value.refused


async def test_hostile_replies_are_dropped_and_the_real_one_wins(
    local_relay: LocalRelayProcess, serbero: Keys, mostro: MostroSim
) -> None:
    """Malformed JSON, a stranger signing a `took` with its own keys for this dispute, a
    `took` without dispute info: each dropped (logged once), none ends the take."""
    dispute = new_dispute()
    mostro.ignore_take(dispute)
    stranger = Keys.generate()
    evil_buyer, evil_seller = Keys.generate().public_hex, Keys.generate().public_hex
    me = serbero.public_hex

    def hostile() -> None:
        mostro.send_rumor(me, "[{not json")
        mostro.send_took(me, dispute, evil_buyer, evil_seller, signer_secret=stranger.secret.hex())
        mostro.send_reply(
            me,
            '{"dispute":{"version":1,"id":"' + dispute + '",'
            '"action":"admin-took-dispute","payload":null}}',
        )
        buyer, seller = mostro.trade_pubkeys(dispute)
        mostro.send_took(me, dispute, buyer, seller)

    with capture_logs() as logs:
        async with running_client(local_relay.url, serbero, mostro.pubkey_hex) as client:
            result = await take_while(client, mostro, dispute, hostile)
    assert isinstance(result, TakeResult)
    assert result.buyer_trade_pubkey == mostro.trade_pubkeys(dispute)[0]
    dropped = [e for e in logs if e["event"] == "take_reply_dropped"]
    assert [e["reason"] for e in dropped if "rumor content" in e["reason"]] != []
    assert [e["reason"] for e in dropped].count("not from the Mostro node") == 1


async def test_trade_keys_that_are_the_same_fail_the_take(
    local_relay: LocalRelayProcess, serbero: Keys, mostro: MostroSim
) -> None:
    """MED-63: equal trade keys give no usable chat material: the take fails (not refused)."""
    dispute = new_dispute()
    mostro.ignore_take(dispute)
    same = Keys.generate().public_hex
    me = serbero.public_hex
    async with running_client(local_relay.url, serbero, mostro.pubkey_hex) as client:
        failure = await take_while(
            client, mostro, dispute, lambda: mostro.send_took(me, dispute, same, same)
        )
    assert isinstance(failure, TakeFailed)
    assert not failure.refused and "same" in failure.reason


async def test_a_dispute_id_that_is_not_a_uuid_is_not_sent(
    local_relay: LocalRelayProcess, serbero: Keys, mostro: MostroSim
) -> None:
    async with running_client(local_relay.url, serbero, mostro.pubkey_hex) as client:
        with pytest.raises(TakeFailed, match="not a UUID"):
            await client.take("dispute-001")
    assert mostro.take_requests() == []


async def test_a_take_before_the_reply_subscription_opens_times_out(
    local_relay: LocalRelayProcess, serbero: Keys, mostro: MostroSim
) -> None:
    # The client's `run` never started, so its reply subscription never opens: the take still
    # ends within its timeout, with nothing sent to Mostro.
    async with open_relay_pool([local_relay.url], serbero, timing=FAST) as pool:
        client = TakeClient(pool, serbero, mostro.pubkey_hex, timeout=0.2)
        with trio.fail_after(SHORT_TIMEOUT), pytest.raises(TakeFailed) as failure:
            await client.take(new_dispute())
    assert failure.value.reason == TAKE_TIMEOUT_ERROR
    assert mostro.take_requests() == []
