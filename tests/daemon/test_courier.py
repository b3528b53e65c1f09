"""`PoolCourier`: the one-DM delivery shared by every sender (CORE-35..37, BEY-1)."""

from __future__ import annotations

import json
import time

import trio

from serbero.actors.delivery import SEND_FAILED_PREFIX, PoolCourier
from serbero.actors.relay_pool import open_relay_pool
from serbero.config import SolverConfig
from serbero.protocol.keys import Keys
from tests.daemon.support import FAST, open_rejecting_relay
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.solver_inbox import SolverInbox


async def test_delivered_dm_opens_in_an_independent_inbox(local_relay: LocalRelayProcess) -> None:
    serbero, solver_keys = Keys.generate(), Keys.generate()
    solver = SolverConfig.from_text(solver_keys.public_hex)
    inbox = SolverInbox(solver_keys.secret.hex(), [local_relay.url])
    await trio.to_thread.run_sync(inbox.start)
    try:
        async with open_relay_pool([local_relay.url], serbero, timing=FAST) as pool:
            await pool.wait_connected()
            now = int(time.time())
            delivery = await PoolCourier(pool, serbero).deliver(solver, "hello\nsolver", now)
        assert delivery.ok and delivery.error is None
        dms = await trio.to_thread.run_sync(inbox.wait_for_count, 1, 10.0)
    finally:
        await trio.to_thread.run_sync(inbox.close)
    assert dms[0].content == "hello\nsolver"
    assert dms[0].sender_hex == serbero.public_hex
    assert dms[0].rumor_created_at == now


async def test_invalid_pubkey_makes_no_network_attempt(local_relay: LocalRelayProcess) -> None:
    serbero = Keys.generate()
    solver = SolverConfig.from_text("not-a-real-hex-pubkey")
    async with open_relay_pool([local_relay.url], serbero, timing=FAST) as pool:
        delivery = await PoolCourier(pool, serbero).deliver(solver, "body", int(time.time()))
    assert not delivery.ok and not delivery.retryable
    assert delivery.error is not None and delivery.error.startswith("invalid pubkey: ")


async def test_no_relay_accepting_is_a_retryable_failure() -> None:
    """BEY-1: a relay that refuses every event means the DM was not sent."""
    serbero, solver_keys = Keys.generate(), Keys.generate()
    solver = SolverConfig.from_text(solver_keys.public_hex)
    async with (
        open_rejecting_relay() as relay,
        open_relay_pool([relay.url], serbero, timing=FAST) as pool,
    ):
        await pool.wait_connected()
        delivery = await PoolCourier(pool, serbero).deliver(solver, "body", int(time.time()))
    assert not delivery.ok and delivery.retryable
    assert delivery.error is not None
    assert delivery.error.startswith(SEND_FAILED_PREFIX)
    assert "blocked: not today" in delivery.error
    assert json.dumps(relay.url)[1:-1] in delivery.error
