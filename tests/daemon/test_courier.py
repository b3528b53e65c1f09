"""`PoolCourier`: the one-DM delivery shared by every sender (CORE-35..37, BEY-1), whose
wraps are derived from the DM's identity (BEY-26)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import cast

import msgspec
import trio

from serbero.actors.delivery import SEND_FAILED_PREFIX, DmIdentity, PoolCourier, _UpcomingKeys
from serbero.actors.relay_pool import PublishResult, RelayPool, open_relay_pool
from serbero.config import SolverConfig
from serbero.protocol.event import Event
from serbero.protocol.keys import Keys
from serbero.protocol.wrap_seed import SeededWrapper
from tests.daemon.support import FAST, open_rejecting_relay
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.solver_inbox import SolverInbox

SALT = b"test-salt"


def dm(number: int, created_at: int | None = None) -> DmIdentity:
    return DmIdentity("outbox", number, int(time.time()) if created_at is None else created_at)


class RecordingPool:
    """The real pool, noting every event published through it."""

    def __init__(self, pool: RelayPool) -> None:
        self._pool = pool
        self.published: list[Event] = []

    async def publish(self, event: Event) -> PublishResult:
        self.published.append(event)
        return await self._pool.publish(event)


class Reached(msgspec.Struct, frozen=True):
    """A connected pool as Serbero, and a solver whose independent inbox is listening."""

    serbero: Keys
    solver: SolverConfig
    inbox: SolverInbox
    pool: RelayPool


@asynccontextmanager
async def reaching_a_solver(relay_url: str) -> AsyncIterator[Reached]:
    serbero, solver_keys = Keys.generate(), Keys.generate()
    solver = SolverConfig.from_text(solver_keys.public_hex)
    inbox = SolverInbox(solver_keys.secret.hex(), [relay_url])
    await trio.to_thread.run_sync(inbox.start)
    try:
        async with open_relay_pool([relay_url], serbero, timing=FAST) as pool:
            await pool.wait_connected()
            yield Reached(serbero, solver, inbox, pool)
    finally:
        await trio.to_thread.run_sync(inbox.close)


async def test_delivered_dm_opens_in_an_independent_inbox(local_relay: LocalRelayProcess) -> None:
    async with reaching_a_solver(local_relay.url) as to:
        identity = dm(1)
        courier = PoolCourier(to.pool, to.serbero, salt=SALT)
        delivery = await courier.deliver(to.solver, "hello\nsolver", identity)
        assert delivery.ok and delivery.error is None
        dms = await trio.to_thread.run_sync(to.inbox.wait_for_count, 1, 10.0)
    assert dms[0].content == "hello\nsolver"
    assert dms[0].sender_hex == to.serbero.public_hex
    assert dms[0].rumor_created_at == identity.created_at


async def test_a_dm_sent_again_is_the_same_event_and_the_solver_sees_it_once(
    local_relay: LocalRelayProcess,
) -> None:
    """BEY-26: a resend by a courier made afresh (a restart), keys prepared or not, is the
    very same event; the relay takes it as a duplicate (still a delivery, BEY-1)."""
    async with reaching_a_solver(local_relay.url) as to:
        recording = RecordingPool(to.pool)
        identity, other = dm(41), dm(42)
        prepared = PoolCourier(
            cast(RelayPool, recording),
            to.serbero,
            salt=SALT,
            spares_for=[to.solver],
            last_outbox_id=40,
        )
        while prepared.prepare_spare():
            pass
        first = await prepared.deliver(to.solver, "notice", identity)
        await prepared.deliver(to.solver, "notice", other)
        restarted = PoolCourier(cast(RelayPool, recording), to.serbero, salt=SALT)
        again = await restarted.deliver(to.solver, "notice", identity)
        await trio.to_thread.run_sync(to.inbox.wait_for_count, 2, 10.0)
        await trio.sleep(0.3)
        dms = to.inbox.messages()
    assert first.ok and again.ok
    sent, sent_other, resent = recording.published
    assert resent == sent, "byte for byte"
    assert sent_other.id != sent.id and sent_other.pubkey != sent.pubkey
    assert sorted(d.wrap_id for d in dms) == sorted([sent.id, sent_other.id])


class SpyWrapper(SeededWrapper):
    """The real wrapper, noting for whom each outbox id's keys were made."""

    def __init__(self) -> None:
        super().__init__(Keys.generate(), SALT)
        self.made: dict[int, tuple[str, ...]] = {}

    def prepare(self, outbox_id: int, receivers: Iterable[str]) -> None:
        self.made[outbox_id] = tuple(receivers)
        super().prepare(outbox_id, self.made[outbox_id])


def prepare_all(upcoming: _UpcomingKeys) -> int:
    count = 0
    while upcoming.prepare_next():
        count += 1
    return count


def test_keys_are_made_ahead_for_the_solvers_in_turn_after_the_last_outbox_row() -> None:
    """Ids after the last row go to the configured solvers in turn (a solver whose key does
    not parse gets no key); the window holds 512 ids per solver."""
    a, b = (SolverConfig.from_text(Keys.generate().public_hex) for _ in range(2))
    broken = SolverConfig.from_text("not-a-key")
    wrapper = SpyWrapper()
    upcoming = _UpcomingKeys(wrapper, [a, broken, b], last_id=100, last_solver=broken.pubkey)
    assert prepare_all(upcoming) == 3 * 512
    assert [wrapper.made.get(n) for n in (101, 102, 103, 104)] == [
        (b.pubkey_hex,),
        (a.pubkey_hex,),
        None,
        (b.pubkey_hex,),
    ]
    assert not upcoming.prepare_next()


def test_a_wrong_guess_is_corrected_from_the_row_that_showed_it() -> None:
    """A row for one solver only (a reminder to a subset, say) shifts the turn: the ids
    after it are prepared again for the right solvers, keeping their one-time keys."""
    a, b = (SolverConfig.from_text(Keys.generate().public_hex) for _ in range(2))
    wrapper = SpyWrapper()
    upcoming = _UpcomingKeys(wrapper, [a, b], last_id=0, last_solver=None)
    for _ in range(6):
        upcoming.prepare_next()
    assert [wrapper.made[n] for n in (1, 2, 3)] == [
        (a.pubkey_hex,),
        (b.pubkey_hex,),
        (a.pubkey_hex,),
    ]
    upcoming.going_out(1, b.pubkey)
    while upcoming.prepare_next():
        pass
    assert [wrapper.made[n] for n in (2, 3, 4)] == [
        (a.pubkey_hex,),
        (b.pubkey_hex,),
        (a.pubkey_hex,),
    ]
    dm_2 = DmIdentity("outbox", 2, int(time.time()))
    fresh = SeededWrapper(wrapper.sender, SALT).private_dm(a.pubkey_hex, "x", dm_2)
    assert wrapper.private_dm(a.pubkey_hex, "x", dm_2) == fresh
    assert 2 not in wrapper.prepared_ids()


async def test_a_courier_without_solvers_prepares_nothing() -> None:
    courier = PoolCourier(cast(RelayPool, None), Keys.generate(), salt=SALT)
    assert courier.prepare_spare() is False


async def test_invalid_pubkey_makes_no_network_attempt(local_relay: LocalRelayProcess) -> None:
    serbero = Keys.generate()
    solver = SolverConfig.from_text("not-a-real-hex-pubkey")
    async with open_relay_pool([local_relay.url], serbero, timing=FAST) as pool:
        delivery = await PoolCourier(pool, serbero, salt=SALT).deliver(solver, "body", dm(1))
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
        delivery = await PoolCourier(pool, serbero, salt=SALT).deliver(solver, "body", dm(1))
    assert not delivery.ok and delivery.retryable
    assert delivery.error is not None
    assert delivery.error.startswith(SEND_FAILED_PREFIX)
    assert "blocked: not today" in delivery.error
    assert json.dumps(relay.url)[1:-1] in delivery.error
