"""The pool against real relays: rust-nostr's LocalRelay in a subprocess (tests/support).

Real time, so the pools use the FAST timing; each test takes well under a few seconds.
"""

from __future__ import annotations

import time

import trio
from structlog.testing import capture_logs

from serbero.actors.relay import PublishStatus, RelayTiming
from serbero.actors.relay_pool import ReceivedEvent, RelayPool, Subscription, open_relay_pool
from serbero.protocol.event import Event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import Filter
from tests.relay.helpers import FAST, note
from tests.support.relay_fixtures import LocalRelayFactory, LocalRelayProcess

# The reconnect-after-restart budget from the issue: back and re-subscribed within 3 s.
RESTART_BUDGET = 3.0


def fresh(author: Keys, content: str) -> Event:
    return note(author, content, created_at=int(time.time()))


async def receive(sub: Subscription, timeout: float = 3.0) -> ReceivedEvent:
    with trio.fail_after(timeout):
        return await sub.events.receive()


async def publish_ok(pool: RelayPool, event: Event) -> None:
    result = await pool.publish(event)
    assert result.sent, result


async def test_subscribe_receive_and_publish(local_relay: LocalRelayProcess) -> None:
    author = Keys.generate()
    async with (
        open_relay_pool([local_relay.url], Keys.generate(), timing=FAST) as subscriber,
        open_relay_pool([local_relay.url], author, timing=FAST) as publisher,
    ):
        sub = await subscriber.subscribe(
            Filter(kinds=[1], authors=[author.public_hex]), name="feed"
        )
        await publisher.wait_connected()
        event = fresh(author, "hello relay")
        first = await publisher.publish(event)
        assert [o.status for o in first.outcomes] == [PublishStatus.ACCEPTED]
        assert await receive(sub) == ReceivedEvent(event, local_relay.url, "feed")
        again = await publisher.publish(event)
        assert again.sent
        assert [o.status for o in again.outcomes] == [PublishStatus.DUPLICATE]
        fetched = await publisher.fetch(Filter(authors=[author.public_hex]), timeout=3)
        assert fetched == [event]


async def test_restarted_relay_is_reconnected_and_resubscribed_quickly(
    local_relay: LocalRelayProcess,
) -> None:
    """BEY-7: stop the relay, start it on the same port: back within 3 s of its return."""
    author = Keys.generate()
    flt = Filter(kinds=[1], authors=[author.public_hex])
    async with open_relay_pool([local_relay.url], Keys.generate(), timing=FAST) as subscriber:
        sub = await subscriber.subscribe(flt, name="feed")
        async with open_relay_pool([local_relay.url], author, timing=FAST) as publisher:
            await publisher.wait_connected()
            await publish_ok(publisher, fresh(author, "before"))
        assert (await receive(sub)).event.content == "before"

        await local_relay.astop()
        with trio.fail_after(3):
            while subscriber.connected_count():
                await trio.sleep(0.01)
        await trio.sleep(0.5)
        await local_relay.astart()
        returned = trio.current_time()
        with trio.fail_after(RESTART_BUDGET):
            # The restarted relay is empty: this event reaches us only through the REQ that
            # the pool re-sends after reconnecting.
            async with open_relay_pool([local_relay.url], author, timing=FAST) as publisher:
                await publisher.wait_connected()
                await publish_ok(publisher, fresh(author, "after"))
            assert (await receive(sub)).event.content == "after"
        assert subscriber.connected_count() == 1
        assert trio.current_time() - returned < RESTART_BUDGET


# Production timing scaled down tenfold, so a few real seconds of outage stand for tens:
# the handshake backoff (0.2, 0.4, 0.8, 1.6, 3.2 s ...) would leave a relay that returned
# after 4 s waiting past 6 s; refused connects are retried every 0.2 s instead.
SCALED = RelayTiming(backoff_first=0.2, probe_interval=0.2)
SCALED_OUTAGE = 4.0
# The relay's return to the re-sent REQ serving a new event: one retry interval plus a
# connect and a publish on loopback, with room for a loaded machine.
SCALED_BUDGET = 1.0


async def assert_resubscribed(
    relay: LocalRelayProcess, sub: Subscription, author: Keys, returned: float
) -> float:
    """Publish to the restarted (empty) relay: the event arrives only through the re-sent REQ.
    Returns the seconds from the relay's return to its arrival."""
    with trio.fail_after(5):
        async with open_relay_pool([relay.url], author, timing=FAST) as publisher:
            await publisher.wait_connected()
            await publish_ok(publisher, fresh(author, f"after {relay.port}"))
        while True:
            received = await sub.events.receive()
            if received.relay == relay.url:
                return trio.current_time() - returned


async def test_a_long_outage_does_not_slow_the_return(local_relay: LocalRelayProcess) -> None:
    """Issue 12 item 4 on a real relay: stopped long enough for the backoff to have grown,
    it is resubscribed within one short retry of its return."""
    author = Keys.generate()
    flt = Filter(kinds=[1], authors=[author.public_hex])
    async with open_relay_pool([local_relay.url], Keys.generate(), timing=SCALED) as subscriber:
        sub = await subscriber.subscribe(flt, name="feed")
        await subscriber.wait_connected()
        await local_relay.astop()
        await trio.sleep(SCALED_OUTAGE)
        await local_relay.astart()
        returned = trio.current_time()
        assert await assert_resubscribed(local_relay, sub, author, returned) < SCALED_BUDGET


async def test_started_with_every_relay_down(local_relay_factory: LocalRelayFactory) -> None:
    relays = [local_relay_factory(), local_relay_factory()]
    for relay in relays:
        await relay.astop()
    author = Keys.generate()
    flt = Filter(kinds=[1], authors=[author.public_hex])
    urls = [relay.url for relay in relays]
    async with open_relay_pool(urls, Keys.generate(), timing=SCALED) as subscriber:
        sub = await subscriber.subscribe(flt, name="feed")
        await trio.sleep(SCALED_OUTAGE)
        for relay in relays:
            await relay.astart()
            returned = trio.current_time()
            assert await assert_resubscribed(relay, sub, author, returned) < SCALED_BUDGET


async def test_the_same_event_via_two_relays_is_delivered_once(
    local_relay_factory: LocalRelayFactory,
) -> None:
    first, second = local_relay_factory(), local_relay_factory()
    urls = [first.url, second.url]
    author = Keys.generate()
    async with (
        open_relay_pool(urls, Keys.generate(), timing=FAST) as subscriber,
        open_relay_pool(urls, author, timing=FAST) as publisher,
    ):
        await subscriber.wait_connected(2)
        sub = await subscriber.subscribe(
            Filter(kinds=[1], authors=[author.public_hex]), name="feed"
        )
        await publisher.wait_connected(2)
        twice = fresh(author, "via both relays")
        result = await publisher.publish(twice)
        assert [o.status for o in result.outcomes] == [PublishStatus.ACCEPTED] * 2
        assert (await receive(sub)).event == twice
        # Give the second copy time to arrive, then prove it was swallowed.
        await trio.sleep(0.3)
        marker = fresh(author, "next")
        await publish_ok(publisher, marker)
        assert (await receive(sub)).event == marker


async def test_every_publish_to_a_rate_limited_relay_is_eventually_accepted(
    local_relay_factory: LocalRelayFactory,
) -> None:
    """BEY-3: rate-limited: answers are retried until accepted (budget permitting)."""
    # LocalRelay grants a burst of `per_minute`, then refuses until the client has been quiet
    # for a whole second: retrying each event on its own would keep it refusing for ever.
    # Each whole quiet second grants `per_minute / 60` more, so a loaded run that stalls a
    # second mid-burst gets through the burst unrefused: small rounds follow it until the
    # relay has refused one, each no larger than one retry's grant.
    per_minute = 600
    refill_per_second = per_minute // 60
    relay = local_relay_factory(rate_limit=per_minute)
    author = Keys.generate()
    burst = [fresh(author, f"n{i}") for i in range(per_minute)]
    published: list[Event] = []
    results = []
    with capture_logs() as logs:

        def rate_limited() -> bool:
            return any(r["event"] == "publish_rate_limited" for r in logs)

        async with open_relay_pool([relay.url], author, timing=FAST) as publisher:
            await publisher.wait_connected()

            async def publish(event: Event) -> None:
                results.append(await publisher.publish(event))

            async def publish_all(events: list[Event]) -> None:
                published.extend(events)
                async with trio.open_nursery() as nursery:
                    for event in events:
                        nursery.start_soon(publish, event)

            with trio.fail_after(8):
                await publish_all(burst)
                while not rate_limited():
                    more = len(published)
                    await publish_all(
                        [fresh(author, f"n{more + i}") for i in range(refill_per_second)]
                    )
    assert len(results) == len(published)
    assert all(r.outcomes[0].status is PublishStatus.ACCEPTED for r in results)
    assert rate_limited(), "never rate-limited"


async def test_a_nip42_relay_authenticates_and_serves(
    local_relay_factory: LocalRelayFactory,
) -> None:
    """BEY-8: reads and writes both require AUTH; the pool answers and is served."""
    relay = local_relay_factory(nip42="both")
    author = Keys.generate()
    with capture_logs() as logs:
        async with (
            open_relay_pool([relay.url], Keys.generate(), timing=FAST) as subscriber,
            open_relay_pool([relay.url], author, timing=FAST) as publisher,
        ):
            sub = await subscriber.subscribe(
                Filter(kinds=[1], authors=[author.public_hex]), name="feed"
            )
            await publisher.wait_connected()
            event = fresh(author, "behind auth")
            result = await publisher.publish(event)
            assert [o.status for o in result.outcomes] == [PublishStatus.ACCEPTED]
            assert (await receive(sub)).event == event
            assert subscriber.relay_states()[relay.url].authenticated
            assert publisher.relay_states()[relay.url].authenticated
            async with open_relay_pool([relay.url], Keys.generate(), timing=FAST) as reader:
                await reader.wait_connected()
                flt = Filter(authors=[author.public_hex])
                assert await reader.fetch(flt, timeout=3) == [event]
    assert any(r["event"] == "relay_authenticated" for r in logs)
