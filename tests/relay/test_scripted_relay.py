"""Protocol behaviour against a scripted relay: CLOSED handling, NIP-42, publish outcomes,
resumed `since`, fetch and unsubscribe (PROTO-15..23, BEY-1, BEY-3, BEY-7, BEY-8).

Most run under `autojump_clock`, so the 7 s / 10 s protocol waits cost no real time.
"""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from serbero.actors.relay import (
    Command,
    InboundEvent,
    InboundItem,
    PublishStatus,
    RelayConnection,
    RelayState,
    RelayTiming,
    SubscribeCommand,
)
from serbero.actors.relay_pool import NoRelayConnectedError
from serbero.protocol.event import decode_event, verify_event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import AUTH_KIND, Filter
from tests.relay.helpers import BASE_TIME, neutral_jitter, note, pool_for, refused_port
from tests.relay.raw_relay import RawConnection, open_raw_relay
from tests.support.clocks import FakeWallClock


async def answer_events(conn: RawConnection, answers: dict[str, list[Any]]) -> None:
    """Answer each EVENT with the next scripted OK for its content (empty list: stay silent)."""
    while True:
        frame = await conn.receive_json()
        if frame[0] != "EVENT":
            continue
        event = frame[1]
        script = answers[event["content"]]
        if script:
            accepted, message = script.pop(0)
            await conn.send_json(["OK", event["id"], accepted, message])


# --- CLOSED -----------------------------------------------------------------------------------


async def test_closed_subscription_is_resent_with_backoff(autojump_clock: Any) -> None:
    """BEY-7: re-sent after a CLOSED with backoff (1 s, then 2 s); EOSE resets it."""
    req_times: list[float] = []

    async def script(conn: RawConnection) -> None:
        for message in ("error: shutting down idle subscription", "rate-limited: slow down"):
            sub_id = (await conn.receive_until("REQ"))[1]
            req_times.append(trio.current_time())
            await conn.send_json(["CLOSED", sub_id, message])
        sub_id = (await conn.receive_until("REQ"))[1]
        req_times.append(trio.current_time())
        await conn.send_json(["EOSE", sub_id])
        await conn.send_json(["CLOSED", sub_id, "error: again"])
        await conn.receive_until("REQ")
        req_times.append(trio.current_time())
        await conn.serve_forever()

    with capture_logs() as logs:
        async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
            await pool.subscribe(Filter(kinds=[38386]), name="disputes")
            with trio.fail_after(30):
                while len(req_times) < 4:
                    await trio.sleep(0.1)
    gaps = [round(b - a, 1) for a, b in pairwise(req_times)]
    assert gaps == [1.0, 2.0, 1.0]
    closed = [r for r in logs if r["event"] == "subscription_closed"]
    assert [r["message"] for r in closed][:2] == [
        "error: shutting down idle subscription",
        "rate-limited: slow down",
    ]
    assert all(r["log_level"] == "warning" and r["subscription"] == "disputes" for r in closed)
    assert len(relay.connections) == 1
    # CORE-19: each REQ is logged with the subscription's name and id.
    sent = [r for r in logs if r["event"] == "subscription_sent"]
    assert len(sent) >= 4
    assert {r["subscription"] for r in sent} == {"disputes"}
    assert len({r["subscription_id"] for r in sent}) == 1
    assert all("sub_id" not in r for r in sent)


# --- NIP-42 -----------------------------------------------------------------------------------


async def test_auth_challenge_is_answered_and_the_closed_req_resent() -> None:
    """PROTO-21..23: kind 22242 with challenge and relay tags, signed by our key; after OK
    true, the REQ that was CLOSED with auth-required: is re-sent and served."""
    keys, author = Keys.generate(), Keys.generate()
    wanted = note(author, "served after auth")
    auth_frames: list[Any] = []

    async def script(conn: RawConnection) -> None:
        sub_id = (await conn.receive_until("REQ"))[1]
        await conn.send_json(["AUTH", "challenge-1"])
        await conn.send_json(["CLOSED", sub_id, "auth-required: show yourself"])
        auth = await conn.receive_until("AUTH")
        auth_frames.append(auth)
        await conn.send_json(["OK", auth[1]["id"], True, ""])
        assert (await conn.receive_until("REQ"))[1] == sub_id
        await conn.send_event(sub_id, wanted)
        await conn.serve_forever()

    async with open_raw_relay(script) as relay, pool_for(relay.url, keys=keys) as pool:
        sub = await pool.subscribe(Filter(kinds=[1]), name="feed")
        with trio.fail_after(5):
            received = await sub.events.receive()
        assert received.event == wanted
        assert pool.relay_states()[relay.url].authenticated

    [(_, raw)] = auth_frames
    auth_event = decode_event(json.dumps(raw))
    verify_event(auth_event)
    assert auth_event.kind == AUTH_KIND
    assert auth_event.pubkey == keys.public_hex
    assert auth_event.content == ""
    assert auth_event.created_at == BASE_TIME
    assert auth_event.tags == [["challenge", "challenge-1"], ["relay", relay.url]]


async def test_publish_after_auth_required_authenticates_and_resends_once() -> None:
    """PROTO-20 step 3 / BEY-3: auth-required: → AUTH → one resend, whose answer is final."""
    keys = Keys.generate()
    sends: list[str] = []

    async def script(conn: RawConnection) -> None:
        event = (await conn.receive_until("EVENT"))[1]
        sends.append(event["id"])
        await conn.send_json(["OK", event["id"], False, "auth-required: who are you"])
        await conn.send_json(["AUTH", "challenge-2"])
        auth = await conn.receive_until("AUTH")
        await conn.send_json(["OK", auth[1]["id"], True, ""])
        event = (await conn.receive_until("EVENT"))[1]
        sends.append(event["id"])
        await conn.send_json(["OK", event["id"], True, ""])
        await conn.serve_forever()

    async with open_raw_relay(script) as relay, pool_for(relay.url, keys=keys) as pool:
        await pool.wait_connected()
        event = note(keys, "needs auth")
        with trio.fail_after(5):
            result = await pool.publish(event)
    assert result.sent
    assert [o.status for o in result.outcomes] == [PublishStatus.ACCEPTED]
    assert sends == [event.id, event.id]


async def test_auth_required_without_a_challenge_resends_once_after_seven_seconds(
    autojump_clock: Any,
) -> None:
    keys = Keys.generate()
    send_times: list[float] = []

    async def script(conn: RawConnection) -> None:
        while True:
            event = (await conn.receive_until("EVENT"))[1]
            send_times.append(trio.current_time())
            await conn.send_json(["OK", event["id"], False, "auth-required: nope"])

    async with open_raw_relay(script) as relay, pool_for(relay.url, keys=keys) as pool:
        await pool.wait_connected()
        result = await pool.publish(note(keys, "never authorised"))
    assert not result.sent
    [outcome] = result.outcomes
    assert (outcome.status, outcome.message) == (PublishStatus.REJECTED, "auth-required: nope")
    assert len(send_times) == 2
    assert send_times[1] - send_times[0] == pytest.approx(7.0, abs=0.05)


async def test_failed_auth_is_logged_and_the_subscription_retried_with_backoff(
    autojump_clock: Any,
) -> None:
    reqs = 0

    async def script(conn: RawConnection) -> None:
        nonlocal reqs
        while True:
            frame = await conn.receive_json()
            if frame[0] == "REQ":
                reqs += 1
                await conn.send_json(["AUTH", f"challenge-{reqs}"])
                await conn.send_json(["CLOSED", frame[1], "auth-required: please"])
            elif frame[0] == "AUTH":
                await conn.send_json(["OK", frame[1]["id"], False, "restricted: not on the list"])

    with capture_logs() as logs:
        async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
            await pool.subscribe(Filter(kinds=[1]), name="feed")
            with trio.fail_after(10):
                while reqs < 3:
                    await trio.sleep(0.1)
            assert not pool.relay_states()[relay.url].authenticated
    failures = [r for r in logs if r["event"] == "relay_auth_failed"]
    assert failures and failures[0]["reason"] == "restricted: not on the list"
    assert failures[0]["log_level"] == "warning"


# --- publishing -------------------------------------------------------------------------------


async def test_publish_outcomes_per_relay(autojump_clock: Any) -> None:
    """BEY-1: per-relay outcomes; sent iff at least one relay accepted (duplicate counts)."""
    keys = Keys.generate()
    answers_a: dict[str, list[Any]] = {
        "ok": [(True, "")],
        "dup": [(False, "duplicate: already have it")],
        "blocked": [(False, "blocked: you are banned")],
        "silent": [],
        "invalid": [(False, "invalid: bad")],
    }
    answers_b: dict[str, list[Any]] = {
        "ok": [(False, "pow: difficulty 30 required")],
        "dup": [(True, "duplicate: have it")],
        "blocked": [(True, "")],
        "silent": [],
        "invalid": [(False, "error: db down")],
    }

    async def relay_a(conn: RawConnection) -> None:
        await answer_events(conn, answers_a)

    async def relay_b(conn: RawConnection) -> None:
        await answer_events(conn, answers_b)

    async with (
        open_raw_relay(relay_a) as a,
        open_raw_relay(relay_b) as b,
        pool_for(a.url, b.url) as pool,
    ):
        await pool.wait_connected(2)
        results = {}
        for content in answers_a:
            start = trio.current_time()
            results[content] = (
                await pool.publish(note(keys, content)),
                trio.current_time() - start,
            )

    def statuses(content: str) -> list[PublishStatus]:
        return [o.status for o in results[content][0].outcomes]

    assert statuses("ok") == [PublishStatus.ACCEPTED, PublishStatus.REJECTED]
    assert statuses("dup") == [PublishStatus.DUPLICATE, PublishStatus.DUPLICATE]
    assert statuses("blocked") == [PublishStatus.REJECTED, PublishStatus.ACCEPTED]
    assert statuses("silent") == [PublishStatus.TIMED_OUT, PublishStatus.TIMED_OUT]
    assert statuses("invalid") == [PublishStatus.REJECTED, PublishStatus.REJECTED]
    assert [results[c][0].sent for c in answers_a] == [True, True, True, False, False]
    assert results["silent"][1] == pytest.approx(10.0, abs=0.05)
    blocked = results["blocked"][0].outcomes[0]
    assert (blocked.relay, blocked.message) == (a.url, "blocked: you are banned")
    assert results["ok"][0].outcomes[1].message == "pow: difficulty 30 required"


async def test_rate_limited_publish_is_retried_after_a_delay(autojump_clock: Any) -> None:
    """BEY-3: rate-limited: → the relay is paused 2 s, then 4 s (neutral jitter), and the
    event re-sent each time until accepted or the one-minute budget is spent."""
    keys = Keys.generate()
    answers: dict[str, list[Any]] = {
        "eventually": [(False, "rate-limited: slow down")] * 2 + [(True, "")],
        "never": [(False, "rate-limited: go away")] * 100,
    }

    async def script(conn: RawConnection) -> None:
        await answer_events(conn, answers)

    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        await pool.wait_connected()
        start = trio.current_time()
        eventually = await pool.publish(note(keys, "eventually"))
        assert trio.current_time() - start == pytest.approx(6.0, abs=0.05)
        start = trio.current_time()
        never = await pool.publish(note(keys, "never"))
        budget = trio.current_time() - start
    assert eventually.sent
    assert not never.sent
    assert never.outcomes[0].status is PublishStatus.RATE_LIMITED
    # Bounded: sent at 0, 2, 6, 14, 30 and 60 s; the next pause would end past the budget.
    assert len(answers["never"]) == 100 - 6
    assert budget == pytest.approx(RelayTiming().rate_limit_budget, abs=0.1)


async def test_a_rate_limited_relay_gets_nothing_until_its_pause_ends(autojump_clock: Any) -> None:
    """Knocking on a relay that asked us to slow down only prolongs the penalty: a publish that
    starts during the pause waits for it too, and a burst of refusals escalates it once."""
    keys = Keys.generate()
    arrivals: list[tuple[str, float]] = []
    answers: dict[str, list[Any]] = {
        "first": [(False, "rate-limited: slow down"), (True, "")],
        "second": [(False, "rate-limited: slow down"), (True, "")],
        "third": [(True, "")],
    }

    async def script(conn: RawConnection) -> None:
        while True:
            event = (await conn.receive_until("EVENT"))[1]
            arrivals.append((event["content"], trio.current_time()))
            accepted, message = answers[event["content"]].pop(0)
            await conn.send_json(["OK", event["id"], accepted, message])

    results = []
    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        await pool.wait_connected()
        start = trio.current_time()

        async def publish(content: str, after: float) -> None:
            await trio.sleep(after)
            results.append(await pool.publish(note(keys, content)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish, "first", 0)
            nursery.start_soon(publish, "second", 0)
            nursery.start_soon(publish, "third", 1)
    assert all(r.sent for r in results)
    timeline = sorted((round(t - start, 2), content) for content, t in arrivals)
    # first and second refused together at 0 s: one 2 s pause; third waits for it as well.
    assert timeline == [
        (0.0, "first"),
        (0.0, "second"),
        (2.0, "first"),
        (2.0, "second"),
        (2.0, "third"),
    ]


async def test_publish_to_a_relay_that_is_down_is_not_connected(autojump_clock: Any) -> None:
    with refused_port() as port:
        async with pool_for(f"ws://127.0.0.1:{port}") as pool:
            result = await pool.publish(note(Keys.generate(), "nobody home"))
    assert not result.sent
    assert [o.status for o in result.outcomes] == [PublishStatus.NOT_CONNECTED]


async def test_publishes_are_pipelined(autojump_clock: Any) -> None:
    """Many publishes in flight at once: the relay sees all EVENTs before answering any."""
    keys = Keys.generate()
    count = 50

    async def script(conn: RawConnection) -> None:
        ids = [(await conn.receive_until("EVENT"))[1]["id"] for _ in range(count)]
        for event_id in reversed(ids):
            await conn.send_json(["OK", event_id, True, ""])
        await conn.serve_forever()

    results = []
    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        await pool.wait_connected()

        async def publish(i: int) -> None:
            results.append(await pool.publish(note(keys, f"n{i}")))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(publish, i)
    assert len(results) == count
    assert all(r.sent for r in results)


async def test_each_silent_publish_times_out_on_its_own_clock(autojump_clock: Any) -> None:
    """PROTO-20: `ok_timeout` counts from each publish's own send, not from the first."""
    keys = Keys.generate()

    async def script(conn: RawConnection) -> None:
        await conn.serve_forever()

    waited: dict[str, float] = {}
    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        await pool.wait_connected()

        async def publish(name: str, after: float) -> None:
            await trio.sleep(after)
            start = trio.current_time()
            result = await pool.publish(note(keys, name))
            assert [o.status for o in result.outcomes] == [PublishStatus.TIMED_OUT]
            waited[name] = trio.current_time() - start

        async with trio.open_nursery() as nursery:
            for name, after in (("first", 0.0), ("second", 3.0), ("third", 9.5)):
                nursery.start_soon(publish, name, after)
    assert waited == pytest.approx({"first": 10.0, "second": 10.0, "third": 10.0}, abs=0.05)


async def test_publishes_waiting_for_an_ok_are_answered_when_the_link_drops(
    autojump_clock: Any,
) -> None:
    """A lost connection answers every publish still waiting (one waiting for AUTH too) at
    once, `not_connected`, instead of leaving it to the OK timeout."""
    keys = Keys.generate()
    count = 5

    async def script(conn: RawConnection) -> None:
        first = (await conn.receive_until("EVENT"))[1]
        await conn.send_json(["OK", first["id"], False, "auth-required: who are you"])
        for _ in range(count - 1):
            await conn.receive_until("EVENT")
        await trio.sleep(1)
        await conn.abort()

    results: list[tuple[PublishStatus, str, float]] = []
    timing = RelayTiming(backoff_first=60.0, backoff_cap=60.0)
    async with open_raw_relay(script) as relay, pool_for(relay.url, timing=timing) as pool:
        await pool.wait_connected()
        start = trio.current_time()

        async def publish(i: int) -> None:
            result = await pool.publish(note(keys, f"n{i}"))
            [outcome] = result.outcomes
            results.append((outcome.status, outcome.message, trio.current_time() - start))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(publish, i)
                    await trio.sleep(0.01)
    assert len(results) == count
    for status, message, after in results:
        assert (status, message) == (PublishStatus.NOT_CONNECTED, "connection lost before OK")
        assert after < 2.0


async def test_events_received_before_a_close_are_delivered_after_a_send_fails(
    autojump_clock: Any,
) -> None:
    """A relay sends events and closes; a publish then finds the connection closed before our
    reader (held up by a busy consumer) has read them: they are still delivered, and the
    link ends once they are. A relay that restarts empty would never serve them again."""
    author = Keys.generate()
    sent = [note(author, f"n{i}", created_at=BASE_TIME + i) for i in range(20)]
    closed = trio.Event()

    async def script(conn: RawConnection) -> None:
        sub_id = (await conn.receive_until("REQ"))[1]
        for event in sent:
            await conn.send_event(sub_id, event)
        await conn.close()
        closed.set()

    commands_send, commands_recv = trio.open_memory_channel[Command](10)
    inbound_send, inbound_recv = trio.open_memory_channel[InboundItem](0)
    states_send, _states_recv = trio.open_memory_channel[RelayState](100)
    async with open_raw_relay(script) as relay, trio.open_nursery() as nursery:
        connection = RelayConnection(
            relay.url,
            Keys.generate(),
            commands=commands_recv,
            inbound=inbound_send,
            states=states_send,
            wall_clock=FakeWallClock(BASE_TIME),
            timing=RelayTiming(backoff_first=60.0, backoff_cap=60.0),
            rand=neutral_jitter,
        )
        nursery.start_soon(connection.run)
        await commands_send.send(SubscribeCommand("feed-id", "feed", Filter(kinds=[1])))
        with trio.fail_after(5):
            await closed.wait()
            await trio.testing.wait_all_tasks_blocked()
            outcomes = []

            async def publish_late() -> None:
                outcomes.append(await connection.publish(note(author, "late")))

            nursery.start_soon(publish_late)
            received = []
            while len(received) < len(sent):
                item = await inbound_recv.receive()
                assert isinstance(item, InboundEvent)
                received.append(item.event)
            while not outcomes:
                await trio.sleep(0.01)
        assert received == sent
        assert [outcome.status for outcome in outcomes] == [PublishStatus.NOT_CONNECTED]
        nursery.cancel_scope.cancel()


async def test_own_published_events_are_not_delivered_back(autojump_clock: Any) -> None:
    """PROTO-10: events we publish are marked as seen."""
    keys = Keys.generate()
    ours, theirs = note(keys, "ours"), note(Keys.generate(), "theirs")

    async def script(conn: RawConnection) -> None:
        sub_id = (await conn.receive_until("REQ"))[1]
        event = (await conn.receive_until("EVENT"))[1]
        await conn.send_json(["OK", event["id"], True, ""])
        await conn.send_event(sub_id, ours)
        await conn.send_event(sub_id, theirs)
        await conn.serve_forever()

    async with open_raw_relay(script) as relay, pool_for(relay.url, keys=keys) as pool:
        sub = await pool.subscribe(Filter(kinds=[1]), name="feed")
        await pool.wait_connected()
        assert (await pool.publish(ours)).sent
        assert (await sub.events.receive()).event == theirs


# --- resumed since ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resume_skew", "newest_offset", "expected_since"),
    [
        (60, -100, BASE_TIME - 100 - 60),  # newest seen minus the skew
        (60, +5000, BASE_TIME - 60),  # a future-dated event cannot push since past now
        (None, -100, BASE_TIME - 7 * 86400),  # gift-wrap filters are re-sent unchanged
    ],
)
async def test_resubscription_moves_since_to_the_newest_event_minus_the_skew(
    autojump_clock: Any, resume_skew: int | None, newest_offset: int, expected_since: int
) -> None:
    author = Keys.generate()
    filters: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []

    async def script(conn: RawConnection) -> None:
        req = await conn.receive_until("REQ")
        filters.append(req[2])
        if conn.index == 0:
            for offset in (-3000, newest_offset, -2000):
                await conn.send_event(
                    req[1], note(author, str(offset), created_at=BASE_TIME + offset)
                )
            await conn.send_json(["EOSE", req[1]])
            # The catch-up asks for what is older than the batch: nothing, it is complete.
            page = await conn.receive_until("REQ")
            pages.append(page[2])
            await conn.send_json(["EOSE", page[1]])
            await trio.sleep(1)
            await conn.abort()
        else:
            await conn.serve_forever()

    start_since = BASE_TIME - 7 * 86400
    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        sub = await pool.subscribe(
            Filter(kinds=[1], since=start_since), name="feed", resume_skew=resume_skew
        )
        with trio.fail_after(10):
            for _ in range(3):
                await sub.events.receive()
            while len(filters) < 2:
                await trio.sleep(0.1)
    assert filters[0] == {"kinds": [1], "since": start_since}
    assert pages == [{"kinds": [1], "since": start_since, "until": BASE_TIME - 3000}]
    assert filters[1] == {"kinds": [1], "since": expected_since}


# --- fetch and unsubscribe --------------------------------------------------------------------


async def test_fetch_collects_until_eose_or_timeout_then_closes(autojump_clock: Any) -> None:
    """PROTO-19: union of both relays, de-duplicated; CLOSE after EOSE and after the timeout."""
    author = Keys.generate()
    shared, only_a = note(author, "shared"), note(author, "only a")
    closes: dict[str, float] = {}

    async def relay_a(conn: RawConnection) -> None:
        sub_id = (await conn.receive_until("REQ"))[1]
        await conn.send_event(sub_id, shared)
        await conn.send_event(sub_id, only_a)
        await conn.send_json(["EOSE", sub_id])
        await conn.receive_until("CLOSE")
        closes["a"] = trio.current_time()
        await conn.serve_forever()

    async def relay_b(conn: RawConnection) -> None:
        sub_id = (await conn.receive_until("REQ"))[1]
        await conn.send_event(sub_id, shared)
        await conn.receive_until("CLOSE")
        closes["b"] = trio.current_time()
        await conn.serve_forever()

    async with (
        open_raw_relay(relay_a) as a,
        open_raw_relay(relay_b) as b,
        pool_for(a.url, b.url) as pool,
    ):
        await pool.wait_connected(2)
        start = trio.current_time()
        events = await pool.fetch(Filter(kinds=[1]), timeout=5)
        elapsed = trio.current_time() - start
        await trio.sleep(1)
    assert sorted(e.content for e in events) == ["only a", "shared"]
    assert elapsed == pytest.approx(5.0, abs=0.05)
    assert closes["a"] - start < 0.1
    assert closes["b"] - start == pytest.approx(5.0, abs=0.1)


async def test_fetch_waits_for_auth_and_resends_its_req(autojump_clock: Any) -> None:
    """PROTO-23 for a fetch: CLOSED auth-required: → AUTH → REQ again → served."""
    author = Keys.generate()
    stored = note(author, "behind auth")
    reqs = 0

    async def script(conn: RawConnection) -> None:
        nonlocal reqs
        while True:
            frame = await conn.receive_json()
            if frame[0] == "REQ":
                reqs += 1
                if reqs == 1:
                    await conn.send_json(["AUTH", "challenge-f"])
                    await conn.send_json(["CLOSED", frame[1], "auth-required: who?"])
                else:
                    await conn.send_event(frame[1], stored)
                    await conn.send_json(["EOSE", frame[1]])
            elif frame[0] == "AUTH":
                await conn.send_json(["OK", frame[1]["id"], True, ""])

    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        await pool.wait_connected()
        start = trio.current_time()
        events = await pool.fetch(Filter(kinds=[1]), timeout=5)
        assert trio.current_time() - start < 0.1
    assert events == [stored]
    assert reqs == 2


async def test_fetch_with_no_relay_connected_fails(autojump_clock: Any) -> None:
    with refused_port() as port:
        async with pool_for(f"ws://127.0.0.1:{port}") as pool:
            with pytest.raises(NoRelayConnectedError):
                await pool.fetch(Filter(kinds=[1]), timeout=5)


async def test_unsubscribe_sends_close_and_ends_the_stream(autojump_clock: Any) -> None:
    closed: list[str] = []

    async def script(conn: RawConnection) -> None:
        sub_id = (await conn.receive_until("REQ"))[1]
        closed.append((await conn.receive_until("CLOSE"))[1])
        assert sub_id == closed[0]
        await conn.serve_forever()

    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        sub = await pool.subscribe(Filter(kinds=[1]), name="feed")
        await pool.wait_connected()
        await pool.unsubscribe(sub)
        assert [item async for item in sub] == []
        with trio.fail_after(5):
            while not closed:
                await trio.sleep(0.1)
    assert closed == [sub.id]


async def test_duplicate_urls_share_one_connection(autojump_clock: Any) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.serve_forever()

    async with open_raw_relay(script) as relay:
        spellings = [relay.url, relay.url + "/", "WS://" + relay.url.removeprefix("ws://")]
        async with pool_for(*spellings) as pool:
            await pool.wait_connected()
            await trio.sleep(1)
            assert pool.urls == (relay.url,)
            assert len(relay.connections) == 1
