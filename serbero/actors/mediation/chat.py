"""The dispute chat: per-session keys, outbound rounds, inbound ingest (MED-80..83, 100..102).

The actor keeps each live session's chat material in memory (the secrets are never stored)
and re-derives it after a restart from the trade pubkeys kept beside the session (BEY-16),
checked against the stored shared pubkeys. A round's two wraps are built first and stored
with their rows in one transaction before anything is published (MED-81/82); a row that
never got its `outbound_sent` is published again, as the same event, at the next pass
(Q-4). Inbound messages are fetched per party, opened, ordered and ingested one
transaction each (MED-100..102, Q-12); the database's unique index makes it idempotent.

`run()` does both every `[chat].inbound_fetch_interval_seconds` (BEY-24) and, when given a
channel, hands each session's ingest outcomes to its consumer (the round engine). Between
passes, `ingest_wrap` takes a single wrap the live watch (`watch.py`) saw arrive, through the
same checks and the same store write, so an answer need not wait for the next pass.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Final

import msgspec
import trio

from serbero.actors.mediation.take import LOOK_BACK_SECONDS
from serbero.actors.relay_pool import NoRelayConnectedError, RelayPool
from serbero.actors.tracker import Tracker
from serbero.actors.tracker_requests import (
    GetSessionChatKeys,
    IngestInbound,
    ListLiveSessionChatKeys,
    ListUnsentOutbound,
    RecordOutboundRound,
    RecordOutboundSent,
)
from serbero.clock import WallClock, system_wall_clock
from serbero.log import get_logger
from serbero.protocol.chat import (
    CHAT_WRAP_KIND,
    ChatError,
    ChatMaterial,
    ChatMessage,
    ChatWrap,
    Party,
    build_party_wraps,
    derive_chat_material,
    order_inbound,
    unwrap_chat,
)
from serbero.protocol.event import Event, EventError, decode_event, encode_event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import Filter
from serbero.store.chat import (
    Duplicate,
    InboundEnvelope,
    IngestOutcome,
    OpeningRows,
    OutboundMessage,
    OutboundRound,
    SessionChatKeys,
)
from serbero.store.errors import StoreError
from serbero.store.mediation import NOT_LIVE_SESSION_STATES

__all__ = [
    "FETCH_TIMEOUT_SECONDS",
    "PUBLISH_RETRY_DELAYS",
    "ChatActor",
    "InboundBatch",
    "NoChatMaterial",
    "PreparedRound",
    "RoundDelivery",
    "ingest_and_hand_on",
    "round_texts",
]

log = get_logger("serbero.mediation")

# MED-5: each party's inbound fetch waits at most this long for the relays.
FETCH_TIMEOUT_SECONDS: Final = 5.0
# MED-5: a publish is tried three times, 100 ms and 200 ms apart.
PUBLISH_RETRY_DELAYS: Final = (0.1, 0.2)
DEFAULT_FETCH_INTERVAL_SECONDS: Final = 10.0
# Sessions fetched at once in a pass: each holds two subscriptions on every relay, and relays
# cap the subscriptions of one connection (commonly at 20), which the daemon's own dispute and
# take-reply subscriptions share.
INGEST_CONCURRENCY: Final = 4


class NoChatMaterial(Exception):
    """The session has no chat keys in memory (never taken here, or not restorable)."""


class RoundDelivery(msgspec.Struct, frozen=True):
    """What a round's publish achieved; an unsent half is republished later (Q-4)."""

    buyer_sent: bool
    seller_sent: bool


class PreparedRound(msgspec.Struct, frozen=True):
    """A round built and wrapped but not stored: its rows (`opening()` for a session
    commit) and the wraps to publish once they are."""

    buyer: OutboundMessage
    seller: OutboundMessage
    buyer_wrap: Event
    seller_wrap: Event

    def opening(self) -> OpeningRows:
        return OpeningRows(buyer=self.buyer, seller=self.seller)


class InboundBatch(msgspec.Struct, frozen=True):
    """One session's ingest outcomes of one pass, in ingest order."""

    session_id: str
    outcomes: tuple[IngestOutcome, ...]


def round_texts(round_number: int | None, buyer_text: str, seller_text: str) -> tuple[str, str]:
    """MED-80: `Buyer: …` / `Seller: …` for the opening, `Round N. Buyer: …` after."""
    prefix = "" if round_number is None else f"Round {round_number}. "
    return f"{prefix}Buyer: {buyer_text}", f"{prefix}Seller: {seller_text}"


def _outbound(party: Party, shared: Keys, wrap: ChatWrap, content: str) -> OutboundMessage:
    return OutboundMessage(
        party=party,
        shared_pubkey=shared.public_hex,
        inner_event_id=wrap.inner_id,
        inner_created_at=wrap.inner_created_at,
        outer_event_id=wrap.outer.id,
        content=content,
        wrap_json=encode_event(wrap.outer).decode(),
    )


def _matches(material: ChatMaterial, row: SessionChatKeys) -> bool:
    """MED-100/151: the cached keys are the ones the session row names."""
    return (
        row.buyer_shared_pubkey == material.buyer_shared.public_hex
        and row.seller_shared_pubkey == material.seller_shared.public_hex
    )


async def ingest_and_hand_on(
    stage: str,
    session_id: str,
    ingest: Callable[[], Awaitable[list[IngestOutcome]]],
    inbound: trio.MemorySendChannel[InboundBatch] | None,
) -> None:
    """Run one of the chat actor's ingests and hand its outcomes to `inbound` when one is
    new; a store failure is logged and leaves the messages on the relays for the next pass."""
    try:
        outcomes = await ingest()
    except StoreError as exc:
        log.warning("chat_pass_failed", stage=stage, session_id=session_id, error=str(exc))
        return
    if inbound is not None and any(not isinstance(o, Duplicate) for o in outcomes):
        await inbound.send(InboundBatch(session_id, tuple(outcomes)))


class ChatActor:
    """Owns the chat keys; start with `await nursery.start(actor.run, inbound_send)`."""

    def __init__(
        self,
        pool: RelayPool,
        tracker: Tracker,
        keys: Keys,
        *,
        wall_clock: WallClock = system_wall_clock,
        fetch_interval: float = DEFAULT_FETCH_INTERVAL_SECONDS,
        fetch_timeout: float = FETCH_TIMEOUT_SECONDS,
        publish_retry_delays: Sequence[float] = PUBLISH_RETRY_DELAYS,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._pool = pool
        self._tracker = tracker
        self._keys = keys
        self._wall_clock = wall_clock
        self._fetch_interval = fetch_interval
        self._fetch_timeout = fetch_timeout
        self._retry_delays = tuple(publish_retry_delays)
        self._rand = rand
        self._materials: dict[str, ChatMaterial] = {}
        # Per session: inner ids known stored, and wrap ids that are no party message (a bad
        # wrap, judged once and logged once, or one of Serbero's own), so a message still on
        # the relays costs no store write and a bad wrap one log line.
        self._stored: dict[str, set[str]] = {}
        self._ignored: dict[str, set[str]] = {}
        # Set when a session gains or loses its keys; the live watch renews its filter then.
        self._sessions_changed = trio.Event()

    # --- key cache -------------------------------------------------------------------------

    def remember(self, session_id: str, material: ChatMaterial) -> None:
        """Cache a session's material (right after the take, before anything is sent)."""
        self._materials[session_id] = material
        self._sessions_changed.set()

    def material(self, session_id: str) -> ChatMaterial | None:
        return self._materials.get(session_id)

    def forget(self, session_id: str) -> None:
        """Drop a session that is no longer live."""
        if self._materials.pop(session_id, None) is not None:
            self._sessions_changed.set()
        self._stored.pop(session_id, None)
        self._ignored.pop(session_id, None)

    def sessions(self) -> tuple[str, ...]:
        return tuple(self._materials)

    def shared_keys(self) -> dict[str, tuple[str, Party]]:
        """Every cached session's two shared pubkeys, each with its session and party: what
        a party's message is addressed to."""
        keys: dict[str, tuple[str, Party]] = {}
        for session_id, material in self._materials.items():
            keys[material.buyer_shared.public_hex] = (session_id, "buyer")
            keys[material.seller_shared.public_hex] = (session_id, "seller")
        return keys

    async def sessions_changed(self) -> None:
        """Wait until a session gained or lost its keys since the last call returned."""
        await self._sessions_changed.wait()
        self._sessions_changed = trio.Event()

    async def restore(self) -> tuple[str, ...]:
        """BEY-16 / MED-151: re-derive every Live session's material from its stored trade
        pubkeys, kept only when it gives the stored shared pubkeys. Returns the restored ids."""
        restored: list[str] = []
        for row in await self._tracker.ask(ListLiveSessionChatKeys()):
            if row.buyer_shared_pubkey is None or row.seller_shared_pubkey is None:
                log.warning(
                    "chat_keys_not_restored", session_id=row.session_id, reason="no shared pubkeys"
                )
                continue
            if row.buyer_trade_pubkey is None or row.seller_trade_pubkey is None:
                log.warning(
                    "chat_keys_not_restored", session_id=row.session_id, reason="no trade pubkeys"
                )
                continue
            try:
                material = derive_chat_material(
                    self._keys, row.buyer_trade_pubkey, row.seller_trade_pubkey
                )
            except ChatError as exc:
                log.warning("chat_keys_not_restored", session_id=row.session_id, reason=str(exc))
                continue
            if not _matches(material, row):
                log.warning(
                    "chat_keys_not_restored",
                    session_id=row.session_id,
                    reason="derived shared pubkeys differ from the stored ones",
                )
                continue
            self.remember(row.session_id, material)
            restored.append(row.session_id)
        return tuple(restored)

    # --- outbound --------------------------------------------------------------------------

    async def send_round(
        self,
        session_id: str,
        round_number: int | None,
        buyer_text: str,
        seller_text: str,
        *,
        marker: int | None = None,
    ) -> RoundDelivery:
        """MED-80..83: one round to both parties; `round_number` None is the opening.

        Raises `NoChatMaterial`, `ChatError` (a blank text, equal inner ids: nothing
        written) or `StoreError` (nothing written). After the rows are stored it never
        raises for the relays: a half no relay accepted stays unsent and is republished by
        the next pass (seller skipped when the buyer failed, MED-83).
        """
        material = self._materials.get(session_id)
        if material is None:
            raise NoChatMaterial(session_id)
        prepared = self.prepare_round(material, round_number, buyer_text, seller_text)
        outbound = OutboundRound(
            session_id=session_id,
            buyer=prepared.buyer,
            seller=prepared.seller,
            follow_up=round_number is not None,
            marker=marker,
        )
        await self._tracker.ask(RecordOutboundRound(outbound))
        return await self.publish_round(session_id, prepared)

    def prepare_round(
        self,
        material: ChatMaterial,
        round_number: int | None,
        buyer_text: str,
        seller_text: str,
    ) -> PreparedRound:
        """MED-80/81: both halves built and wrapped, nothing stored or sent. Raises
        `ChatError` for a blank text or equal inner ids."""
        buyer_content, seller_content = round_texts(round_number, buyer_text, seller_text)
        wraps = build_party_wraps(
            self._keys,
            material,
            buyer_text=buyer_content,
            seller_text=seller_content,
            now=self._wall_clock(),
            rand=self._rand,
        )
        return PreparedRound(
            buyer=_outbound("buyer", material.buyer_shared, wraps.buyer, buyer_content),
            seller=_outbound("seller", material.seller_shared, wraps.seller, seller_content),
            buyer_wrap=wraps.buyer.outer,
            seller_wrap=wraps.seller.outer,
        )

    async def publish_round(self, session_id: str, prepared: PreparedRound) -> RoundDelivery:
        """MED-83 for a round whose rows are stored: buyer, then seller if the buyer's went
        out; a half no relay accepted is republished by the next pass (Q-4)."""
        buyer, seller = prepared.buyer, prepared.seller
        buyer_sent = await self._deliver(
            session_id, buyer.shared_pubkey, buyer.inner_event_id, prepared.buyer_wrap
        )
        seller_sent = buyer_sent and await self._deliver(
            session_id, seller.shared_pubkey, seller.inner_event_id, prepared.seller_wrap
        )
        return RoundDelivery(buyer_sent=buyer_sent, seller_sent=seller_sent)

    async def republish_unsent(self, session_id: str | None = None) -> int:
        """Q-4: publish again every stored wrap of a Live session lacking `outbound_sent`;
        the same event, so a party that did get it sees one message. Returns how many went
        out now."""
        sent = 0
        for row in await self._tracker.ask(ListUnsentOutbound(session_id)):
            try:
                wrap = decode_event(row.wrap_json)
            except EventError as exc:
                log.error("chat_wrap_unreadable", session_id=row.session_id, error=str(exc))
                continue
            if await self._deliver(row.session_id, row.shared_pubkey, row.inner_event_id, wrap):
                sent += 1
        return sent

    async def _deliver(
        self, session_id: str, shared_pubkey: str, inner_id: str, wrap: Event
    ) -> bool:
        """Publish with the MED-5 retries; on acceptance write `outbound_sent`."""
        # The pass's fetch on this shared key returns Serbero's own wraps too: known here,
        # they cost no unwrap.
        self._ignored.setdefault(session_id, set()).add(wrap.id)
        delays = (*self._retry_delays, None)
        for attempt, delay in enumerate(delays, start=1):
            result = await self._pool.publish(wrap)
            if result.sent:
                await self._tracker.ask(RecordOutboundSent(session_id, shared_pubkey, inner_id))
                log.info("chat_message_sent", session_id=session_id, wrap_id=wrap.id)
                return True
            if delay is not None:
                await trio.sleep(delay)
            else:
                outcomes = ", ".join(f"{o.relay}: {o.status.value}" for o in result.outcomes)
                log.warning(
                    "chat_message_not_sent",
                    session_id=session_id,
                    wrap_id=wrap.id,
                    attempts=attempt,
                    outcomes=outcomes,
                )
        return False

    # --- inbound ---------------------------------------------------------------------------

    async def ingest_once(self, session_id: str) -> list[IngestOutcome]:
        """MED-100..102 for one session: fetch both parties, open, order, ingest.

        A session without cached material, no longer Live, or whose row names other shared
        keys is skipped (a session that left the Live set is forgotten). No relay
        connected: nothing this pass. Outcomes are in ingest order; a message already
        stored reads as Duplicate without a store write.
        """
        material = await self._live_material(session_id)
        if material is None:
            return []
        try:
            buyer, seller = await self._fetch_both(material)
        except NoRelayConnectedError:
            log.info("chat_fetch_skipped", session_id=session_id, reason="no relay connected")
            return []
        opened_buyer = self._open(session_id, "buyer", material, buyer)
        opened_seller = self._open(session_id, "seller", material, seller)
        return await self._store_ordered(session_id, opened_buyer, opened_seller)

    async def ingest_wrap(self, session_id: str, party: Party, wrap: Event) -> list[IngestOutcome]:
        """One wrap seen arriving on the live watch: the checks and the store write of
        `ingest_once`, without a fetch. A wrap already judged (stored, Serbero's own, bad)
        costs no store read."""
        if wrap.id in self._ignored.get(session_id, ()):
            return []
        material = await self._live_material(session_id)
        if material is None:
            return []
        opened = self._open(session_id, party, material, [wrap])
        buyer, seller = (opened, []) if party == "buyer" else ([], opened)
        return await self._store_ordered(session_id, buyer, seller)

    async def _live_material(self, session_id: str) -> ChatMaterial | None:
        """The cached material of a session still Live whose row names the same shared
        keys; a session that left the Live set is forgotten."""
        material = self._materials.get(session_id)
        if material is None:
            return None
        row = await self._tracker.ask(GetSessionChatKeys(session_id))
        if row is None or row.state in NOT_LIVE_SESSION_STATES:
            self.forget(session_id)
            return None
        if not _matches(material, row):
            log.warning("chat_keys_mismatch", session_id=session_id)
            return None
        return material

    async def _store_ordered(
        self, session_id: str, buyer: list[ChatMessage], seller: list[ChatMessage]
    ) -> list[IngestOutcome]:
        """MED-102: ingest in order, one transaction each; a message known stored reads as
        Duplicate without a store write."""
        stored = self._stored.setdefault(session_id, set())
        outcomes: list[IngestOutcome] = []
        for item in order_inbound(buyer, seller):
            message = item.message
            if message.inner_event_id in stored:
                outcomes.append(Duplicate(inner_event_id=message.inner_event_id))
                continue
            envelope = InboundEnvelope(
                party=item.party,
                shared_pubkey=message.shared_pubkey,
                inner_event_id=message.inner_event_id,
                inner_created_at=message.inner_created_at,
                outer_event_id=message.outer_event_id,
                content=message.content,
            )
            outcome = await self._tracker.ask(IngestInbound(session_id, envelope))
            stored.add(message.inner_event_id)
            outcomes.append(outcome)
            if not isinstance(outcome, Duplicate):
                log.info(
                    "chat_message_ingested",
                    session_id=session_id,
                    party=item.party,
                    inner_event_id=message.inner_event_id,
                    outcome=type(outcome).__name__.lower(),
                )
        return outcomes

    async def _fetch_both(self, material: ChatMaterial) -> tuple[list[Event], list[Event]]:
        since = self._wall_clock() - LOOK_BACK_SECONDS
        found: dict[Party, list[Event]] = {}
        failed: list[NoRelayConnectedError] = []

        async def fetch(party: Party, shared: Keys) -> None:
            flt = Filter(kinds=[CHAT_WRAP_KIND], p=[shared.public_hex], since=since)
            try:
                found[party] = await self._pool.fetch(flt, timeout=self._fetch_timeout)
            except NoRelayConnectedError as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch, "buyer", material.buyer_shared)
            nursery.start_soon(fetch, "seller", material.seller_shared)
        if failed:
            raise failed[0]
        return found["buyer"], found["seller"]

    def _open(
        self, session_id: str, party: Party, material: ChatMaterial, wraps: list[Event]
    ) -> list[ChatMessage]:
        """MED-101: keep what the party signed; drop the rest, each wrap logged once."""
        shared = material.buyer_shared if party == "buyer" else material.seller_shared
        author = material.buyer_pubkey if party == "buyer" else material.seller_pubkey
        ignored = self._ignored.setdefault(session_id, set())
        opened: list[ChatMessage] = []
        for wrap in wraps:
            if wrap.id in ignored:
                continue
            try:
                opened.append(unwrap_chat(shared, author, wrap))
            except ChatError as exc:
                ignored.add(wrap.id)
                if not self._is_own(shared, wrap):
                    log.warning(
                        "chat_wrap_dropped",
                        session_id=session_id,
                        party=party,
                        wrap_id=wrap.id,
                        reason=str(exc),
                    )
        return opened

    def _is_own(self, shared: Keys, wrap: Event) -> bool:
        """Serbero's own outbound wraps match the same filter; they are not hostile."""
        try:
            unwrap_chat(shared, self._keys.public_hex, wrap)
        except ChatError:
            return False
        return True

    # --- the periodic pass -------------------------------------------------------------------

    async def run(
        self,
        inbound: trio.MemorySendChannel[InboundBatch] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Every `fetch_interval` (BEY-24): republish unsent rows, then ingest each cached
        session and hand its outcomes to `inbound` when one is not a Duplicate. A failure
        of one session or of the store is logged and retried next pass, never the end of
        the actor (MED-70)."""
        task_status.started()
        while True:
            await self.pass_once(inbound)
            await trio.sleep(self._fetch_interval)

    async def pass_once(self, inbound: trio.MemorySendChannel[InboundBatch] | None = None) -> None:
        """One pass: republish, then ingest the sessions a few at a time, each session's
        batch handed on as soon as it is stored, so its evaluation need not wait for the
        rest of the pass."""
        try:
            await self.republish_unsent()
        except StoreError as exc:
            log.warning("chat_pass_failed", stage="republish", error=str(exc))
        limiter = trio.CapacityLimiter(INGEST_CONCURRENCY)

        async def ingest(session_id: str) -> None:
            async with limiter:
                read = partial(self.ingest_once, session_id)
                await ingest_and_hand_on("ingest", session_id, read, inbound)

        async with trio.open_nursery() as nursery:
            for session_id in self.sessions():
                nursery.start_soon(ingest, session_id)
