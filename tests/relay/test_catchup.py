"""Catch-up after a (re)subscription: a relay serves only its newest N stored events per REQ,
so the connection actor pages backwards with `until` until it reaches `since` (CORE-20,
CORE-21, PROTO-16..18, BEY-7).

A scripted relay with a small cap checks the paging itself in virtual time; rust-nostr's
LocalRelay (500 events per REQ) checks the real thing, at start-up and after a reconnect.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
import trio
from structlog.testing import capture_logs

from serbero.actors.relay import CATCHUP_MAX_PAGES
from serbero.actors.relay_pool import RelayPool, Subscription, open_relay_pool
from serbero.protocol.event import Event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import Filter, filter_matches
from tests.relay.helpers import BASE_TIME, FAST, note, pool_for
from tests.relay.proxy import open_proxy
from tests.relay.raw_relay import RawConnection, open_raw_relay
from tests.support.relay_fixtures import LocalRelayProcess

SINCE = BASE_TIME - 1000


class CappedRelay:
    """A relay script that serves its stored events newest first (ties by id), at most `cap`
    per REQ, then EOSE; records every REQ and CLOSE. `ignore_until` plays a relay that does
    not implement `until`."""

    def __init__(self, events: Sequence[Event], cap: int, *, ignore_until: bool = False):
        self.events = list(events)
        self.cap = cap
        self.ignore_until = ignore_until
        self.reqs: list[tuple[int, str, dict[str, Any]]] = []
        self.closes: list[str] = []

    def served(self, raw: dict[str, Any]) -> list[Event]:
        if self.ignore_until:
            raw = {key: value for key, value in raw.items() if key != "until"}
        flt = msgspec.json.decode(json.dumps(raw), type=Filter)
        matching = [event for event in self.events if filter_matches(flt, event)]
        matching.sort(key=lambda event: (-event.created_at, event.id))
        return matching[: self.cap]

    async def serve(self, conn: RawConnection) -> None:
        while True:
            frame = await conn.receive_json()
            if frame[0] == "REQ":
                self.reqs.append((conn.index, frame[1], frame[2]))
                for event in self.served(frame[2]):
                    await conn.send_event(frame[1], event)
                await conn.send_json(["EOSE", frame[1]])
            elif frame[0] == "CLOSE":
                self.closes.append(frame[1])

    def live_reqs(self) -> list[dict[str, Any]]:
        return [raw for _, _, raw in self.reqs if "until" not in raw]

    def pages(self) -> list[tuple[str, dict[str, Any]]]:
        return [(sub_id, raw) for _, sub_id, raw in self.reqs if "until" in raw]


def history(author: Keys, count: int, per_second: int, newest: int = BASE_TIME) -> list[Event]:
    """`count` events, `per_second` of them sharing each second, the last at `newest`."""
    return [
        note(author, f"n{i}", created_at=newest - (count - 1 - i) // per_second)
        for i in range(count)
    ]


async def receive_all(sub: Subscription, count: int, timeout: float = 30) -> list[Event]:
    """Exactly `count` events: the count arrives within the timeout and nothing follows."""
    events = []
    with trio.fail_after(timeout):
        while len(events) < count:
            events.append((await sub.events.receive()).event)
    with trio.move_on_after(1):
        extra = await sub.events.receive()
        raise AssertionError(f"more than {count} events: {extra.event.content}")
    return events


@pytest.mark.parametrize("per_second", [1, 3])
async def test_stored_events_beyond_the_cap_are_paged_until_since(
    autojump_clock: Any, per_second: int
) -> None:
    author = Keys.generate()
    stored = history(author, 23, per_second)
    relay_script = CappedRelay(stored, cap=5)
    flt = Filter(kinds=[1], since=SINCE)
    with capture_logs() as logs:
        async with open_raw_relay(relay_script.serve) as relay, pool_for(relay.url) as pool:
            sub = await pool.subscribe(flt, name="feed")
            received = await receive_all(sub, len(stored))
    assert sorted(e.id for e in received) == sorted(e.id for e in stored)
    [(_, live_id, live)] = [req for req in relay_script.reqs if "until" not in req[2]]
    assert live == {"kinds": [1], "since": SINCE}
    pages = relay_script.pages()
    # Each page: the same filter, `until` = the oldest second received so far, its own id,
    # CLOSEd after its EOSE; the last one brought nothing new.
    oldest = min(e.created_at for e in relay_script.served(live))
    for sub_id, raw in pages:
        assert raw == {"kinds": [1], "since": SINCE, "until": oldest}
        assert sub_id != live_id
        oldest = min(e.created_at for e in relay_script.served(raw))
    assert len({sub_id for sub_id, _ in pages}) == len(pages)
    assert relay_script.closes == [sub_id for sub_id, _ in pages]
    [done] = [r for r in logs if r["event"] == "subscription_caught_up"]
    assert done["pages"] == len(pages)
    assert done["events"] == len(stored)
    assert done["subscription"] == "feed"


async def test_paging_stops_at_since(autojump_clock: Any) -> None:
    """A batch or page whose oldest event is at `since` ends the catch-up: no REQ beyond."""
    author = Keys.generate()
    stored = history(author, 12, 1, newest=SINCE + 11)
    relay_script = CappedRelay(stored, cap=5)
    async with open_raw_relay(relay_script.serve) as relay, pool_for(relay.url) as pool:
        sub = await pool.subscribe(Filter(kinds=[1], since=SINCE), name="feed")
        await receive_all(sub, 12)
    # The batch reaches SINCE+7, the first page SINCE+3, the second SINCE itself: done.
    assert [raw["until"] for _, raw in relay_script.pages()] == [SINCE + 7, SINCE + 3]


@pytest.mark.parametrize(
    ("cap", "ignore_until", "received"),
    [
        # More than `cap` events in one second: every page there brings the same `cap`, so
        # the rest cannot be reached (the documented limit); the catch-up still ends.
        (5, False, 5),
        # A relay that ignores `until` serves the same newest events again: one page, done.
        (5, True, 5),
    ],
)
async def test_a_page_with_nothing_new_ends_the_catch_up(
    autojump_clock: Any, cap: int, ignore_until: bool, received: int
) -> None:
    author = Keys.generate()
    stored = history(author, 8, 8) if not ignore_until else history(author, 20, 1)
    relay_script = CappedRelay(stored, cap=cap, ignore_until=ignore_until)
    async with open_raw_relay(relay_script.serve) as relay, pool_for(relay.url) as pool:
        sub = await pool.subscribe(Filter(kinds=[1], since=SINCE), name="feed")
        await receive_all(sub, received)
    assert len(relay_script.pages()) == 1


async def test_a_link_lost_during_the_catch_up_replays_from_the_old_since(
    autojump_clock: Any,
) -> None:
    """The resume point moves only once the catch-up is over: had it moved to the newest
    event minus the skew, the part not yet paged would never be asked for again."""
    author = Keys.generate()
    stored = history(author, 20, 1)
    relay_script = CappedRelay(stored, cap=5)

    async def script(conn: RawConnection) -> None:
        if conn.index == 0:
            req = await conn.receive_until("REQ")
            relay_script.reqs.append((0, req[1], req[2]))
            for event in relay_script.served(req[2]):
                await conn.send_event(req[1], event)
            await conn.send_json(["EOSE", req[1]])
            await conn.receive_until("REQ")  # the first page: the link dies instead
            await conn.abort()
        else:
            await relay_script.serve(conn)

    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        sub = await pool.subscribe(Filter(kinds=[1], since=SINCE), name="feed")
        received = await receive_all(sub, len(stored))
    assert sorted(e.id for e in received) == sorted(e.id for e in stored)
    assert relay_script.live_reqs() == [{"kinds": [1], "since": SINCE}] * 2


async def test_the_page_cap_bounds_a_catch_up_and_warns(autojump_clock: Any) -> None:
    """A relay whose history never ends gets CATCHUP_MAX_PAGES pages, then a WARN with the
    counts; what was seen then becomes the resume point as usual."""
    author = Keys.generate()
    live_reqs: list[dict[str, Any]] = []
    pages: list[int] = []

    async def script(conn: RawConnection) -> None:
        while True:
            frame = await conn.receive_json()
            if frame[0] != "REQ":
                continue
            until = frame[2].get("until")
            if until is None:
                live_reqs.append(frame[2])
                created_at = BASE_TIME
            else:
                pages.append(until)
                created_at = until - 1
            await conn.send_event(frame[1], note(author, str(created_at), created_at=created_at))
            await conn.send_json(["EOSE", frame[1]])
            if len(pages) == CATCHUP_MAX_PAGES and len(live_reqs) == 1:
                await trio.sleep(1)
                await conn.abort()

    with capture_logs() as logs:
        async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
            sub = await pool.subscribe(Filter(kinds=[1], since=SINCE), name="feed")
            await receive_all(sub, CATCHUP_MAX_PAGES + 1)
            with trio.fail_after(10):
                while len(live_reqs) < 2:
                    await trio.sleep(0.1)
    assert pages[:CATCHUP_MAX_PAGES] == [BASE_TIME - n for n in range(CATCHUP_MAX_PAGES)]
    [warning] = [r for r in logs if r["event"] == "subscription_catchup_truncated"]
    assert warning["log_level"] == "warning"
    assert warning["pages"] == CATCHUP_MAX_PAGES
    assert warning["events"] == CATCHUP_MAX_PAGES + 1
    assert warning["until"] == BASE_TIME - CATCHUP_MAX_PAGES
    assert warning["since"] == SINCE
    assert live_reqs[1]["since"] == BASE_TIME - 60


async def test_a_closed_page_is_asked_for_again_with_backoff(autojump_clock: Any) -> None:
    author = Keys.generate()
    stored = history(author, 9, 1)
    relay_script = CappedRelay(stored, cap=5)
    refused: list[float] = []
    asked: list[float] = []

    async def script(conn: RawConnection) -> None:
        while True:
            frame = await conn.receive_json()
            if frame[0] == "REQ" and "until" in frame[2] and not refused:
                refused.append(trio.current_time())
                await conn.send_json(["CLOSED", frame[1], "rate-limited: slow down"])
                continue
            if frame[0] == "REQ" and "until" in frame[2]:
                asked.append(trio.current_time())
            if frame[0] == "REQ":
                for event in relay_script.served(frame[2]):
                    await conn.send_event(frame[1], event)
                await conn.send_json(["EOSE", frame[1]])

    with capture_logs() as logs:
        async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
            sub = await pool.subscribe(Filter(kinds=[1], since=SINCE), name="feed")
            await receive_all(sub, len(stored))
    assert round(asked[0] - refused[0], 2) == 1.0
    [closed] = [r for r in logs if r["event"] == "subscription_closed"]
    assert closed["message"] == "rate-limited: slow down"


async def test_unsubscribing_during_the_catch_up_closes_its_page(autojump_clock: Any) -> None:
    page_ids: list[str] = []
    closes: list[str] = []
    author = Keys.generate()

    async def script(conn: RawConnection) -> None:
        while True:
            frame = await conn.receive_json()
            if frame[0] == "CLOSE":
                closes.append(frame[1])
            elif frame[0] == "REQ" and "until" in frame[2]:
                page_ids.append(frame[1])  # never answered: the page stays in flight
            elif frame[0] == "REQ":
                await conn.send_event(frame[1], note(author, "x", created_at=BASE_TIME))
                await conn.send_json(["EOSE", frame[1]])

    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        sub = await pool.subscribe(Filter(kinds=[1], since=SINCE), name="feed")
        with trio.fail_after(5):
            await sub.events.receive()
            while not page_ids:
                await trio.sleep(0.1)
        await pool.unsubscribe(sub)
        with trio.fail_after(5):
            while len(closes) < 2:
                await trio.sleep(0.1)
    assert closes == [page_ids[0], sub.id]


# --- against LocalRelay (500 stored events per REQ) --------------------------------------

DISPUTES = 700


def disputes(author: Keys, newest: int) -> list[Event]:
    """700 events, 20 a second, the newest at `newest`: more than one REQ's worth."""
    return [
        note(author, f"dispute {i}", created_at=newest - (DISPUTES - 1 - i) // 20)
        for i in range(DISPUTES)
    ]


async def publish_all(pool: RelayPool, events: Sequence[Event]) -> None:
    async def one(event: Event) -> None:
        assert (await pool.publish(event)).sent

    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(one, event)


async def test_local_relay_start_up_replays_more_than_one_req_worth(
    local_relay: LocalRelayProcess,
) -> None:
    """700 events published before anyone subscribed; a subscription whose `since` lies before
    them gets all 700, exactly once, though LocalRelay serves 500 per REQ."""
    author = Keys.generate()
    now = int(time.time())
    published = disputes(author, now)
    async with open_relay_pool([local_relay.url], author, timing=FAST) as publisher:
        await publisher.wait_connected()
        await publish_all(publisher, published)
    with capture_logs() as logs:
        async with open_relay_pool([local_relay.url], Keys.generate(), timing=FAST) as pool:
            sub = await pool.subscribe(
                Filter(kinds=[1], authors=[author.public_hex], since=now - 3600), name="feed"
            )
            received = await receive_all(sub, DISPUTES, timeout=20)
    assert sorted(e.id for e in received) == sorted(e.id for e in published)
    [done] = [r for r in logs if r["event"] == "subscription_caught_up"]
    assert done["events"] == DISPUTES


async def test_local_relay_reconnect_replays_more_than_one_req_worth(
    local_relay: LocalRelayProcess,
) -> None:
    """The subscriber's link is cut while 700 events are published (the relay keeps them);
    after the reconnect the re-sent REQ (since = newest seen - 60 s) plus its pages bring all
    700, exactly once."""
    author = Keys.generate()
    now = int(time.time())
    before = note(author, "before the cut", created_at=now - 100)
    published = disputes(author, now)
    async with (
        open_proxy(local_relay.port) as proxy,
        open_relay_pool([proxy.url], Keys.generate(), timing=FAST) as subscriber,
        open_relay_pool([local_relay.url], author, timing=FAST) as publisher,
    ):
        sub = await subscriber.subscribe(
            Filter(kinds=[1], authors=[author.public_hex], since=now - 3600), name="feed"
        )
        await publisher.wait_connected()
        await publish_all(publisher, [before])
        assert (await receive_all(sub, 1)) == [before]

        proxy.cut()
        with trio.fail_after(5):
            while subscriber.connected_count():
                await trio.sleep(0.01)
        await publish_all(publisher, published)
        with capture_logs() as logs:
            await proxy.restore()
            received = await receive_all(sub, DISPUTES, timeout=20)
    assert sorted(e.id for e in received) == sorted(e.id for e in published)
    [sent] = [r for r in logs if r["event"] == "subscription_sent"]
    assert sent["since"] == now - 100 - 60
    [done] = [r for r in logs if r["event"] == "subscription_caught_up"]
    assert done["events"] == DISPUTES + 1  # the replay also brought `before` (not delivered)
