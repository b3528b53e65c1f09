"""The independent nostr-sdk peers (solver inbox, simulated Mostro, baseline notifier)
against a real LocalRelay subprocess: they must be right before they can judge the daemon."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
from typing import Any

import nostr_sdk
import pytest
import trio

from tests.daemon.support import eventually
from tests.support.baseline_notifier import BaselineNotifier, initial_notification
from tests.support.mostro_sim import EXPIRATION_SECONDS, MostroSim
from tests.support.relay_fixtures import LocalRelayFactory, LocalRelayProcess
from tests.support.sdk_thread import PublishError
from tests.support.solver_inbox import ReceivedDm, SolverInbox

WAIT = 5.0
QUICK = 2.0
MOSTRO_SK = "11" * 32
NOTIFIER_SK = "22" * 32
SOLVER_A_SK = "33" * 32
SOLVER_B_SK = "44" * 32
OTHER_SK = "55" * 32


def fetch(relay_url: str, filter_: nostr_sdk.Filter) -> list[dict[str, Any]]:
    """What an unrelated, unauthenticated nostr-sdk client reads back, as JSON objects."""

    async def run() -> list[dict[str, Any]]:
        client = nostr_sdk.ClientBuilder().build()
        await client.add_relay(nostr_sdk.RelayUrl.parse(relay_url))
        await client.connect(and_wait=datetime.timedelta(seconds=QUICK))
        try:
            found = await client.fetch_events(
                nostr_sdk.ReqTarget.auto([filter_]), timeout=datetime.timedelta(seconds=QUICK)
            )
        finally:
            await client.shutdown()
        return [json.loads(event.as_json()) for event in found]

    return asyncio.run(run())


def fetch_disputes(relay_url: str, author_hex: str) -> list[dict[str, Any]]:
    author = nostr_sdk.PublicKey.parse(author_hex)
    return fetch(relay_url, nostr_sdk.Filter().kind(nostr_sdk.Kind(38386)).author(author))


def dm_json(sender_sk: str, receiver_sk: str, text: str) -> str:
    receiver = nostr_sdk.Keys.parse(receiver_sk).public_key()
    wrap = nostr_sdk.nip17_make_private_msg(nostr_sdk.Keys.parse(sender_sk), receiver, text)
    return str(wrap.as_json())


def test_mostro_sim_publishes_dispute_events_with_mostros_tags(
    local_relay: LocalRelayProcess,
) -> None:
    with MostroSim(MOSTRO_SK, [local_relay.url], instance_name="Test") as mostro:
        before = int(time.time())
        opened_id = mostro.open_dispute("dispute-001", initiator="seller")
        [opened] = fetch_disputes(local_relay.url, mostro.pubkey_hex)
        assert opened["id"] == opened_id
        assert opened["content"] == ""
        assert opened["tags"][0] == ["d", "dispute-001"]
        assert opened["tags"][1][0] == "expiration"
        assert int(opened["tags"][1][1]) >= before + EXPIRATION_SECONDS
        assert opened["tags"][2:] == [
            ["s", "initiated"],
            ["initiator", "seller"],
            ["y", "mostro", "Test"],
            ["z", "dispute"],
        ]
        assert mostro.event(opened_id).created_at == opened["created_at"]

        # Same second, same `d`: the relay keeps only a strictly newer status.
        taken_id = mostro.take_dispute("dispute-001", solver_pubkey="0" * 63 + "1")
        [taken] = fetch_disputes(local_relay.url, mostro.pubkey_hex)
        assert taken["id"] == taken_id
        assert taken["created_at"] > opened["created_at"]
        assert ["s", "in-progress"] in taken["tags"]
        assert ["initiator", "seller"] in taken["tags"]
        assert taken["tags"][-1] == ["p", "0" * 63 + "1"]

        settled_id = mostro.resolve("dispute-001", status="seller-refunded")
        [settled] = fetch_disputes(local_relay.url, mostro.pubkey_hex)
        assert settled["id"] == settled_id
        assert settled["created_at"] > taken["created_at"]
        assert ["s", "seller-refunded"] in settled["tags"]
        assert [event.id for event in mostro.events()] == [opened_id, taken_id, settled_id]


def test_mostro_sim_publishes_a_signed_burst_at_once(local_relay: LocalRelayProcess) -> None:
    """`publish_signed`: events signed ahead all reach the relay, in the history as if each
    had been published on its own, and an opening signed ahead records its initiator."""
    with MostroSim(MOSTRO_SK, [local_relay.url]) as mostro:
        dispute_ids = [f"burst-{index:03}" for index in range(40)]
        signed = [mostro.sign_opening(dispute_id, "seller") for dispute_id in dispute_ids]
        assert fetch_disputes(local_relay.url, mostro.pubkey_hex) == []
        ids = mostro.publish_signed(signed)
        assert ids == [event.id().to_hex() for event in signed]
        stored = {
            event["id"]: event for event in fetch_disputes(local_relay.url, mostro.pubkey_hex)
        }
        assert set(stored) == set(ids)
        for dispute_id, event_id in zip(dispute_ids, ids, strict=True):
            assert stored[event_id]["tags"][0] == ["d", dispute_id]
            assert ["initiator", "seller"] in stored[event_id]["tags"]
            assert mostro.event(event_id).accepted_by == [local_relay.url]
        taken_id = mostro.take_dispute(dispute_ids[0])
        assert ["initiator", "seller"] in mostro.event(taken_id).tags


def test_mostro_sim_publishes_hostile_shapes_and_reports_refusals(
    local_relay: LocalRelayProcess,
) -> None:
    hostile = [
        [["d", ""], ["s", "initiated"], ["initiator", "buyer"]],
        [["d", "x" * 129], ["s", "initiated"], ["initiator", "buyer"]],
        [["d", "bad\nid"], ["s", "initiated"], ["initiator", "buyer"]],
        [["d", "upper"], ["S", "initiated"], ["initiator", "buyer"]],
        [["d", "unknown-status"], ["s", "paused"], ["initiator", "buyer"]],
        [["d", "bad-initiator"], ["s", "initiated"], ["initiator", "mallory"]],
    ]
    with MostroSim(MOSTRO_SK, [local_relay.url]) as mostro:
        ids = [mostro.publish_raw_tags(tags) for tags in hostile]
        stored = {
            event["id"]: event["tags"]
            for event in fetch_disputes(local_relay.url, mostro.pubkey_hex)
        }
        assert stored == {event_id: tags for event_id, tags in zip(ids, hostile, strict=True)}

        good = json.loads(mostro.event(ids[0]).json)
        with pytest.raises(PublishError, match="signature"):
            mostro.publish_event_json(json.dumps({**good, "sig": "00" * 64}))
        with pytest.raises(PublishError, match="invalid"):
            mostro.publish_event_json(json.dumps({**good, "content": "tampered"}))

        opened = mostro.open_dispute("dispute-002")
        older = mostro.event(opened).created_at - 1
        with pytest.raises(PublishError):
            mostro.resolve("dispute-002", created_at=older)
        assert mostro.resolve("dispute-002") != opened


async def test_baseline_notifies_every_solver_once_per_dispute(
    local_relay: LocalRelayProcess,
) -> None:
    relays = [local_relay.url]
    mostro = MostroSim(MOSTRO_SK, relays)
    inbox_a = SolverInbox(SOLVER_A_SK, relays)
    inbox_b = SolverInbox(SOLVER_B_SK, relays)
    solvers = [inbox_a.pubkey_hex, inbox_b.pubkey_hex]
    notifier = BaselineNotifier(NOTIFIER_SK, mostro.pubkey_hex, solvers, relays)
    peers = [inbox_a, inbox_b, notifier, mostro]
    try:
        for peer in peers:
            await trio.to_thread.run_sync(peer.start)
        dispute_ids = ["dispute-a", "dispute-b", "dispute-c"]
        started = time.monotonic()
        for dispute_id in dispute_ids:
            await trio.to_thread.run_sync(mostro.open_dispute, dispute_id)
        # Not new: a later `initiated` for a known id, and other statuses.
        await trio.to_thread.run_sync(mostro.open_dispute, "dispute-a")
        await trio.to_thread.run_sync(mostro.take_dispute, "dispute-b")
        await trio.to_thread.run_sync(mostro.open_dispute, "dispute-d")
        expected_ids = [*dispute_ids, "dispute-d"]

        for inbox in (inbox_a, inbox_b):
            dms: list[ReceivedDm] = await trio.to_thread.run_sync(inbox.wait_for_count, 4, WAIT)
            assert [dm.content.splitlines()[1] for dm in dms] == [
                f"dispute_id: {dispute_id}" for dispute_id in expected_ids
            ]
            assert {dm.sender_hex for dm in dms} == {notifier.pubkey_hex}
            first_event = mostro.events()[0]
            assert dms[0].content == initial_notification(
                "dispute-a", "buyer", first_event.created_at
            )
            assert inbox.count_containing("dispute-a") == 1
            assert inbox.errors() == []
        assert notifier.notified_disputes() == expected_ids
        detections = notifier.detections()
        assert sorted(detections) == sorted(expected_ids)
        times = [detections[dispute_id] for dispute_id in expected_ids]
        assert started < times[0] and times == sorted(times) and times[-1] < time.monotonic()
        # The last DM can reach its inbox before the notifier has read the relay's OK.
        await eventually(lambda: notifier.sent_count() + notifier.failed_count() == 8, WAIT)
        assert (notifier.sent_count(), notifier.failed_count()) == (8, 0)
    finally:
        for peer in reversed(peers):
            await trio.to_thread.run_sync(peer.close)


def test_inbox_replays_stored_wraps_and_dedups_across_relays(
    local_relay_factory: LocalRelayFactory,
) -> None:
    relays = [local_relay_factory().url, local_relay_factory().url]
    seen_by_callback: list[ReceivedDm] = []
    with MostroSim(OTHER_SK, relays) as publisher:
        stored = dm_json(NOTIFIER_SK, SOLVER_A_SK, "already waiting")
        publisher.publish_event_json(stored)
        with SolverInbox(SOLVER_A_SK, relays, on_message=seen_by_callback.append) as inbox:
            # The wrap is back-dated and predates the inbox: it is there once start() returns.
            assert [dm.content for dm in inbox.messages()] == ["already waiting"]

            twice = dm_json(NOTIFIER_SK, SOLVER_A_SK, "sent to both relays")
            assert len(publisher.event(publisher.publish_event_json(twice)).accepted_by) == 2
            publisher.publish_event_json(dm_json(NOTIFIER_SK, SOLVER_A_SK, "barrier"))
            inbox.wait_for_count(1, WAIT, containing="barrier")

            dms = inbox.messages()
            assert [dm.content for dm in dms] == [
                "already waiting",
                "sent to both relays",
                "barrier",
            ]
            assert len({dm.wrap_id for dm in dms}) == 3
            assert {dm.sender_hex for dm in dms} == {
                nostr_sdk.Keys.parse(NOTIFIER_SK).public_key().to_hex()
            }
            assert all(dm.rumor_created_at >= int(time.time()) - 60 for dm in dms)
            assert seen_by_callback == dms


def test_inbox_keeps_one_copy_per_wrap_id(local_relay: LocalRelayProcess) -> None:
    # nostr-sdk already reports an id once per client; the inbox must not rely on it.
    wrap = nostr_sdk.Event.from_json(dm_json(NOTIFIER_SK, SOLVER_A_SK, "once"))
    with SolverInbox(SOLVER_A_SK, [local_relay.url]) as inbox:
        for _ in range(2):
            inbox._call(inbox._on_event(wrap), WAIT)
        assert [dm.wrap_id for dm in inbox.messages()] == [wrap.id().to_hex()]


def test_inbox_records_a_wrap_it_cannot_open_and_keeps_going(
    local_relay: LocalRelayProcess,
) -> None:
    with (
        SolverInbox(SOLVER_A_SK, [local_relay.url]) as inbox,
        MostroSim(OTHER_SK, [local_relay.url]) as publisher,
    ):
        junk_id = publisher.publish_raw_tags(
            [["p", inbox.pubkey_hex]], kind=1059, content="not nip44"
        )
        publisher.publish_event_json(dm_json(NOTIFIER_SK, SOLVER_A_SK, "after the junk"))
        assert [dm.content for dm in inbox.wait_for_count(1, WAIT)] == ["after the junk"]
        [error] = inbox.errors()
        assert junk_id in error
        with pytest.raises(TimeoutError, match="after the junk"):
            inbox.wait_for_count(2, 0.2)


def test_peer_start_fails_fast_and_cleanly_without_a_reachable_relay(
    local_relay_factory: LocalRelayFactory,
) -> None:
    relay = local_relay_factory()
    relay.stop()
    threads_before = set(threading.enumerate())
    inbox = SolverInbox(SOLVER_A_SK, [relay.url], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=relay.url):
        inbox.start()
    assert time.monotonic() - started < 3
    assert set(threading.enumerate()) <= threads_before
    inbox.close()
    with pytest.raises(RuntimeError, match="already started"):
        inbox.start()


def test_peers_authenticate_to_a_nip42_relay(local_relay_factory: LocalRelayFactory) -> None:
    relays = [local_relay_factory(nip42="both").url]
    with SolverInbox(SOLVER_A_SK, relays) as inbox, MostroSim(OTHER_SK, relays) as publisher:
        publisher.publish_event_json(dm_json(NOTIFIER_SK, SOLVER_A_SK, "behind auth"))
        assert [dm.content for dm in inbox.wait_for_count(1, WAIT)] == ["behind auth"]
        assert inbox.errors() == []
    # The relay really guards reads: an unauthenticated reader gets nothing.
    wraps = nostr_sdk.Filter().kind(nostr_sdk.Kind(1059))
    assert fetch(relays[0], wraps) == []
