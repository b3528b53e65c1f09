"""The pool's intake: verify once, NIP-40 expiry, dedup across relays (PROTO-9, PROTO-10,
PROTO-19, CORE-24)."""

from __future__ import annotations

import msgspec
import pytest
import trio
from structlog.testing import capture_logs

import serbero.actors.relay_pool as relay_pool
from serbero.actors.relay import InboundEnd, InboundEvent
from serbero.actors.relay_pool import EventIntake, ReceivedEvent
from serbero.protocol.event import Event, verify_event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import Filter
from tests.relay.helpers import BASE_TIME, note
from tests.support.clocks import FakeWallClock

RELAY_A = "ws://127.0.0.1:1"
RELAY_B = "ws://127.0.0.1:2"


@pytest.fixture
def author() -> Keys:
    return Keys.generate()


@pytest.fixture
def intake() -> EventIntake:
    return EventIntake(wall_clock=FakeWallClock(BASE_TIME))


def drain(channel: trio.MemoryReceiveChannel[ReceivedEvent]) -> list[ReceivedEvent]:
    items = []
    while True:
        try:
            items.append(channel.receive_nowait())
        except trio.WouldBlock:
            return items


async def test_first_copy_is_delivered_and_later_copies_are_not_reverified(
    intake: EventIntake, author: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[str] = []

    def counting_verify(event: Event) -> None:
        verified.append(event.id)
        verify_event(event)

    monkeypatch.setattr(relay_pool, "verify_event", counting_verify)
    feed = intake.open_live("s1", "feed", Filter(kinds=[1]))
    event = note(author, "hello")
    for relay in (RELAY_A, RELAY_B, RELAY_A):
        await intake.handle(InboundEvent(relay, "s1", event))
    assert drain(feed) == [ReceivedEvent(event, RELAY_A, "feed")]
    assert verified == [event.id]


async def test_invalid_signature_is_discarded_with_a_warning_and_not_remembered(
    intake: EventIntake, author: Keys
) -> None:
    feed = intake.open_live("s1", "feed", Filter(kinds=[1]))
    event = note(author, "hello")
    forged = msgspec.structs.replace(event, sig="00" * 64)
    with capture_logs() as logs:
        await intake.handle(InboundEvent(RELAY_A, "s1", forged))
    assert drain(feed) == []
    [record] = [r for r in logs if r["event"] == "invalid_event_discarded"]
    assert record["log_level"] == "warning"
    assert record["relay"] == RELAY_A
    assert record["event_id"] == event.id
    assert "signature" in record["reason"]
    # The forgery must not shadow the genuine event arriving later from another relay.
    await intake.handle(InboundEvent(RELAY_B, "s1", event))
    assert [r.event for r in drain(feed)] == [event]


async def test_content_not_matching_the_id_is_discarded(intake: EventIntake, author: Keys) -> None:
    feed = intake.open_live("s1", "feed", Filter(kinds=[1]))
    tampered = msgspec.structs.replace(note(author, "hello"), content="HELLO")
    with capture_logs() as logs:
        await intake.handle(InboundEvent(RELAY_A, "s1", tampered))
    assert drain(feed) == []
    assert [r["reason"] for r in logs if r["event"] == "invalid_event_discarded"] == [
        "id does not match the event contents"
    ]


async def test_expired_events_are_dropped_and_expiring_now_is_kept(
    intake: EventIntake, author: Keys
) -> None:
    """PROTO-10 / NIP-40: drop when the expiration is less than now."""
    feed = intake.open_live("s1", "feed", Filter(kinds=[1]))
    expired = note(author, "old", tags=[["expiration", str(BASE_TIME - 1)]])
    expiring_now = note(author, "now", tags=[["expiration", str(BASE_TIME)]])
    await intake.handle(InboundEvent(RELAY_A, "s1", expired))
    await intake.handle(InboundEvent(RELAY_A, "s1", expiring_now))
    assert [r.event for r in drain(feed)] == [expiring_now]


async def test_events_outside_the_subscription_filter_are_discarded_with_a_warning(
    intake: EventIntake, author: Keys
) -> None:
    """CORE-24: a lying relay's event from another author is an invalid event, not noise."""
    other = Keys.generate()
    feed = intake.open_live("s1", "feed", Filter(kinds=[1], authors=[author.public_hex]))
    stranger = note(other, "not asked for")
    with capture_logs() as logs:
        await intake.handle(InboundEvent(RELAY_A, "s1", stranger))
    wanted = note(author, "asked for")
    await intake.handle(InboundEvent(RELAY_A, "s1", wanted))
    assert [r.event for r in drain(feed)] == [wanted]
    [record] = [r for r in logs if r["event"] == "invalid_event_discarded"]
    assert record["log_level"] == "warning"
    assert record["relay"] == RELAY_A
    assert record["event_id"] == stranger.id
    assert record["reason"] == relay_pool.OUTSIDE_FILTER_REASON
    assert not [r for r in logs if r["event"] == "event_outside_filter"]


async def test_an_event_matching_two_subscriptions_reaches_both(
    intake: EventIntake, author: Keys
) -> None:
    first = intake.open_live("s1", "first", Filter(kinds=[1]))
    second = intake.open_live("s2", "second", Filter(authors=[author.public_hex]))
    event = note(author, "for both")
    await intake.handle(InboundEvent(RELAY_A, "s1", event))
    await intake.handle(InboundEvent(RELAY_B, "s2", event))
    await intake.handle(InboundEvent(RELAY_A, "s2", event))
    assert drain(first) == [ReceivedEvent(event, RELAY_A, "first")]
    assert drain(second) == [ReceivedEvent(event, RELAY_B, "second")]


async def test_own_events_are_suppressed_live_but_returned_by_a_fetch(
    intake: EventIntake, author: Keys
) -> None:
    """PROTO-10: our own events count as seen; PROTO-19: a fetch returns seen events."""
    feed = intake.open_live("s1", "feed", Filter(kinds=[1]))
    fetch = intake.open_fetch("f1", Filter(kinds=[1]))
    event = note(author, "ours")
    intake.seen.mark_own(event.id)
    await intake.handle(InboundEvent(RELAY_A, "s1", event))
    await intake.handle(InboundEvent(RELAY_A, "f1", event))
    await intake.handle(InboundEvent(RELAY_B, "f1", event))
    await intake.handle(InboundEnd(RELAY_A, "f1", "eose"))
    assert drain(feed) == []
    assert [fetch.receive_nowait(), fetch.receive_nowait()] == [
        ReceivedEvent(event, RELAY_A, "fetch"),
        InboundEnd(RELAY_A, "f1", "eose"),
    ]
    with pytest.raises(trio.WouldBlock):
        fetch.receive_nowait()


async def test_unknown_and_closed_routes_are_ignored(intake: EventIntake, author: Keys) -> None:
    feed = intake.open_live("s1", "feed", Filter(kinds=[1]))
    intake.close("s1")
    await intake.handle(InboundEvent(RELAY_A, "s1", note(author, "late")))
    await intake.handle(InboundEvent(RELAY_A, "nobody", note(author, "stray")))
    await intake.handle(InboundEnd(RELAY_A, "nobody", "eose"))
    with pytest.raises(trio.EndOfChannel):
        feed.receive_nowait()


async def test_a_consumer_that_went_away_does_not_break_the_intake(
    intake: EventIntake, author: Keys
) -> None:
    feed = intake.open_live("s1", "feed", Filter(kinds=[1]))
    feed.close()
    await intake.handle(InboundEvent(RELAY_A, "s1", note(author, "nobody listens")))
    other = intake.open_live("s2", "other", Filter(kinds=[1]))
    await intake.handle(InboundEvent(RELAY_A, "s2", note(author, "someone listens")))
    assert len(drain(other)) == 1
