"""A simulated Mostro node on nostr-sdk: publishes kind 38386 dispute events (PROTO-36/37)
for acceptance tests, the demo and the notify benchmark.

    with MostroSim(mostro_secret_hex, [relay.url]) as mostro:
        event_id = mostro.open_dispute("dispute-001", initiator="buyer")
        created_at = mostro.event(event_id).created_at
        mostro.take_dispute("dispute-001", solver_pubkey="0" * 63 + "1")
        mostro.resolve("dispute-001", status="settled")
        mostro.publish_raw_tags([["d", ""], ["s", "initiated"]])     # hostile shapes
        burst = [mostro.sign_opening(f"dispute-{i}") for i in range(300)]
        mostro.publish_signed(burst)                                 # all at once

Every publish blocks until at least one relay answered OK true and raises `PublishError`
with each relay's message otherwise. Dispute events are addressable (kind, author, `d`): a
relay keeps only the newest, and refuses a later status that is not strictly newer. So the
default `created_at` is now, bumped past the last one used for the same `d`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec
import nostr_sdk

from tests.support.sdk_thread import DEFAULT_TIMEOUT, ThreadedSdkPeer

DISPUTE_KIND: Final = 38386
DEFAULT_INSTANCE_NAME: Final = "Serbero test Mostro"
# NIP-40 lifetime Mostro stamps on each event (now + the node's expiration days). Any future
# time serves; relays drop an event whose expiration has passed.
EXPIRATION_SECONDS: Final = 15 * 24 * 3600
# What Mostro puts in `initiator` when a later status is published for a dispute this
# simulator did not open.
DEFAULT_INITIATOR: Final = "buyer"

Tags = Sequence[Sequence[str]]


class PublishedEvent(msgspec.Struct, frozen=True):
    """An event the simulator published; `accepted_by` lists the relays that said OK."""

    id: str
    created_at: int
    kind: int
    tags: list[list[str]]
    json: str
    accepted_by: list[str]


class MostroSim(ThreadedSdkPeer):
    """Signs and publishes dispute events with the Mostro key. Thread-safe."""

    def __init__(
        self,
        secret_hex: str,
        relay_urls: Iterable[str],
        *,
        instance_name: str = DEFAULT_INSTANCE_NAME,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(secret_hex, relay_urls, timeout=timeout)
        self.instance_name = instance_name
        self._lock = threading.Lock()
        self._last_created_at: dict[str, int] = {}
        self._initiators: dict[str, str] = {}
        self._events: list[PublishedEvent] = []

    # -- dispute lifecycle ---------------------------------------------------------------

    def open_dispute(
        self,
        dispute_id: str,
        initiator: str = "buyer",
        created_at: int | None = None,
        extra_tags: Tags = (),
    ) -> str:
        """Publish `s=initiated`; returns the event id (hex)."""
        return self._publish_event(
            self.sign_opening(dispute_id, initiator, created_at=created_at, extra_tags=extra_tags)
        )

    def sign_opening(
        self,
        dispute_id: str,
        initiator: str = "buyer",
        created_at: int | None = None,
        extra_tags: Tags = (),
    ) -> nostr_sdk.Event:
        """The `s=initiated` event `open_dispute` would publish, signed but not sent (for
        `publish_signed`)."""
        with self._lock:
            self._initiators[dispute_id] = initiator
        return self.sign_status(
            dispute_id,
            "initiated",
            initiator=initiator,
            created_at=created_at,
            extra_tags=extra_tags,
        )

    def publish_signed(self, events: Sequence[nostr_sdk.Event]) -> list[str]:
        """Publish events signed ahead, all at once: one call into the SDK's loop and every
        publish in flight together, so a burst costs the relay's work, not the signing or a
        thread hop per event. Returns their ids; raises `PublishError` as `_publish` does."""

        async def publish_all() -> list[list[str]]:
            return await asyncio.gather(*(self._publish(event) for event in events))

        accepted = self._call(publish_all(), self.timeout * 2 + len(events) * 0.01)
        return [self._record(event, by) for event, by in zip(events, accepted, strict=True)]

    def take_dispute(
        self,
        dispute_id: str,
        solver_pubkey: str | None = None,
        created_at: int | None = None,
        extra_tags: Tags = (),
    ) -> str:
        """Publish `s=in-progress`, with `["p", solver_pubkey]` when given (Mostro itself
        never sets it; the daemon reads it if present)."""
        return self._publish_event(
            self.sign_status(
                dispute_id,
                "in-progress",
                solver_pubkey=solver_pubkey,
                created_at=created_at,
                extra_tags=extra_tags,
            )
        )

    def resolve(
        self,
        dispute_id: str,
        status: str = "settled",
        created_at: int | None = None,
        extra_tags: Tags = (),
    ) -> str:
        """Publish a resolution status (`settled`, `seller-refunded`, `released`). The
        status is not checked, so a test can send one Mostro never would."""
        return self._publish_event(
            self.sign_status(dispute_id, status, created_at=created_at, extra_tags=extra_tags)
        )

    def sign_status(
        self,
        dispute_id: str,
        status: str,
        *,
        initiator: str | None = None,
        solver_pubkey: str | None = None,
        created_at: int | None = None,
        extra_tags: Tags = (),
    ) -> nostr_sdk.Event:
        """A signed dispute event with Mostro's tags, in Mostro's order: d, expiration, s,
        initiator, y, z; then p when given; then `extra_tags`. `initiator` defaults to the
        one this dispute was opened with."""
        if initiator is None:
            with self._lock:
                initiator = self._initiators.get(dispute_id, DEFAULT_INITIATOR)
        when = self._reserve_created_at(dispute_id, created_at)
        tags: list[list[str]] = [
            ["d", dispute_id],
            ["expiration", str(max(when, int(time.time())) + EXPIRATION_SECONDS)],
            ["s", status],
            ["initiator", initiator],
            ["y", "mostro", self.instance_name],
            ["z", "dispute"],
        ]
        if solver_pubkey is not None:
            tags.append(["p", solver_pubkey])
        tags.extend(list(tag) for tag in extra_tags)
        return self._sign(DISPUTE_KIND, tags, when)

    # -- arbitrary events ----------------------------------------------------------------

    def publish_raw_tags(
        self,
        tags: Tags,
        kind: int = DISPUTE_KIND,
        created_at: int | None = None,
        content: str = "",
    ) -> str:
        """Sign exactly `tags` with the Mostro key (for hostile shapes: empty or oversized
        `d`, control characters, uppercase `S`, unknown status, bad initiator...)."""
        tag_list = [list(tag) for tag in tags]
        address = _first_d(tag_list) if nostr_sdk.Kind(kind).is_addressable() else None
        when = self._reserve_created_at(address, created_at)
        return self._publish_event(self._sign(kind, tag_list, when, content))

    def publish_event_json(self, json_text: str) -> str:
        """Push a pre-built event as is, e.g. one with a bad signature or id: the relay, not
        nostr-sdk, judges it, and its refusal comes back as `PublishError`."""
        event = nostr_sdk.Event.from_json(json_text)
        return self._publish_event(event)

    # -- history -------------------------------------------------------------------------

    def events(self) -> list[PublishedEvent]:
        """Everything published so far, oldest first."""
        with self._lock:
            return list(self._events)

    def event(self, event_id: str) -> PublishedEvent:
        """A published event by id (`KeyError` if this simulator did not publish it)."""
        with self._lock:
            for published in self._events:
                if published.id == event_id:
                    return published
        raise KeyError(event_id)

    # -- internals -----------------------------------------------------------------------

    def _reserve_created_at(self, address: str | None, created_at: int | None) -> int:
        """An explicit `created_at` is used verbatim (a test may want a stale event);
        otherwise now, or one past the last time used for the same `d`."""
        with self._lock:
            last = self._last_created_at.get(address) if address is not None else None
            if created_at is None:
                created_at = int(time.time())
                if last is not None and created_at <= last:
                    created_at = last + 1
            if address is not None:
                self._last_created_at[address] = (
                    created_at if last is None else max(created_at, last)
                )
            return created_at

    def _sign(
        self, kind: int, tags: list[list[str]], created_at: int, content: str = ""
    ) -> nostr_sdk.Event:
        return (
            nostr_sdk.EventBuilder(nostr_sdk.Kind(kind), content)
            .tags([nostr_sdk.Tag.parse(tag) for tag in tags])
            .custom_created_at(nostr_sdk.Timestamp.from_secs(created_at))
            .finalize(self.keys)
        )

    def _publish_event(self, event: nostr_sdk.Event) -> str:
        return self._record(event, self._call(self._publish(event), self.timeout * 2))

    def _record(self, event: nostr_sdk.Event, accepted: list[str]) -> str:
        """Note a published event in the history; its id."""
        event_json = event.as_json()
        published = PublishedEvent(
            id=event.id().to_hex(),
            created_at=event.created_at().as_secs(),
            kind=event.kind().as_u16(),
            tags=json.loads(event_json)["tags"],
            json=event_json,
            accepted_by=accepted,
        )
        with self._lock:
            self._events.append(published)
        return published.id


def _first_d(tags: list[list[str]]) -> str | None:
    for tag in tags:
        if len(tag) >= 2 and tag[0] == "d":
            return tag[1]
    return None
