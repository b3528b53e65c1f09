"""The minimal reference notifier on nostr-sdk, the yardstick for `bench/notify.py`.

It does what serbero 0.1.1 does on its hot path and nothing more: subscribe to the Mostro
key's kind 38386 events from now on, and for each dispute id seen `initiated` for the first
time send one NIP-17 DM per solver, one after the other, awaiting each publish. No store, no
retries, no concurrency. nostr-sdk 0.45 dropped `Client.send_private_msg`; what it did is
`nip17_make_private_msg` (rumor, seal, wrap) followed by `send_event` to every relay, which
is what this does (sent to every relay, awaiting each OK).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Final

import nostr_sdk

from tests.support.sdk_thread import DEFAULT_TIMEOUT, PublishError, ThreadedSdkPeer

DISPUTE_KIND: Final = 38386
INITIATORS: Final = frozenset({"buyer", "seller"})
HEADLINE: Final = "New Mostro dispute requires attention."


def initial_notification(dispute_id: str, initiator: str, event_timestamp: int) -> str:
    """The reference's initial DM body (CORE-41 `initial`)."""
    return "\n".join(
        (
            HEADLINE,
            f"dispute_id: {dispute_id}",
            f"initiator: {initiator}",
            f"event_timestamp: {event_timestamp}",
            "status: initiated",
        )
    )


class BaselineNotifier(ThreadedSdkPeer):
    """Notifies every solver of each new dispute, sequentially. Thread-safe counters."""

    def __init__(
        self,
        secret_hex: str,
        mostro_pubkey: str,
        solver_pubkeys: Iterable[str],
        relay_urls: Iterable[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(secret_hex, relay_urls, timeout=timeout)
        self.mostro_pubkey = nostr_sdk.PublicKey.parse(mostro_pubkey)
        self.solver_pubkeys = [nostr_sdk.PublicKey.parse(pk) for pk in solver_pubkeys]
        self._queue: asyncio.Queue[tuple[nostr_sdk.Event, float]] | None = None
        self._seen: set[str] = set()
        self._notified: list[str] = []
        self._detected_at: dict[str, float] = {}
        self._sent = 0
        self._failed = 0

    def notified_disputes(self) -> list[str]:
        """Dispute ids taken up for notification, in the order they were detected."""
        with self._cond:
            return list(self._notified)

    def detections(self) -> dict[str, float]:
        """When each notified dispute's event reached this notifier (`time.monotonic()`, a
        clock every process on the machine shares), by dispute id."""
        with self._cond:
            return dict(self._detected_at)

    def sent_count(self) -> int:
        """DMs at least one relay accepted."""
        with self._cond:
            return self._sent

    def failed_count(self) -> int:
        """DMs no relay accepted (the reference does not retry them)."""
        with self._cond:
            return self._failed

    async def _on_connected(self, client: nostr_sdk.Client) -> None:
        self._queue = asyncio.Queue()
        self._spawn(self._notify_in_order(self._queue))
        disputes_from_now = (
            nostr_sdk.Filter()
            .kind(nostr_sdk.Kind(DISPUTE_KIND))
            .author(self.mostro_pubkey)
            .since(nostr_sdk.Timestamp.now())
        )
        await self._subscribe(disputes_from_now)

    async def _on_event(self, event: nostr_sdk.Event) -> None:
        if self._queue is not None:
            self._queue.put_nowait((event, time.monotonic()))

    async def _notify_in_order(self, queue: asyncio.Queue[tuple[nostr_sdk.Event, float]]) -> None:
        """One event at a time, like the reference's notification loop."""
        while True:
            event, arrived = await queue.get()
            try:
                await self._handle(event, arrived)
            except Exception as exc:
                self._record_error(f"event {event.id().to_hex()}: {exc!r}")

    async def _handle(self, event: nostr_sdk.Event, arrived: float) -> None:
        tags: list[list[str]] = json.loads(event.as_json())["tags"]
        if _first_value(tags, "s") != "initiated":
            return
        dispute_id = _first_value(tags, "d")
        initiator = _first_value(tags, "initiator")
        if not dispute_id or initiator not in INITIATORS or dispute_id in self._seen:
            return
        self._seen.add(dispute_id)
        with self._cond:
            self._notified.append(dispute_id)
            self._detected_at[dispute_id] = arrived
        body = initial_notification(dispute_id, initiator, event.created_at().as_secs())
        for solver in self.solver_pubkeys:
            await self._send_dm(solver, body)

    async def _send_dm(self, solver: nostr_sdk.PublicKey, body: str) -> None:
        wrap = nostr_sdk.nip17_make_private_msg(self.keys, solver, body)
        try:
            await self._publish(wrap)
        except PublishError as exc:
            with self._cond:
                self._failed += 1
                self._errors.append(f"DM to {solver.to_hex()} not accepted: {exc}")
            return
        with self._cond:
            self._sent += 1


def _first_value(tags: list[list[str]], name: str) -> str | None:
    for tag in tags:
        if len(tag) >= 2 and tag[0] == name:
            return tag[1]
    return None
