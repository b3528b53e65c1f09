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

With `answer_takes=True` it also plays Mostro's side of the take-flow (PROTO-48..51): it
reads the gift-wrapped `admin-take-dispute` requests sent to it and answers each one the way
Mostro does: `admin-took-dispute` with a `SolverDisputeInfo` carrying the parties' trade
pubkeys (real keys, `trade_keys(dispute_id)`), then the `s=in-progress` event; or `cant-do`
(`not_authorized` for a requester outside `solvers`, `invalid_pubkey` for a dispute already
taken, or whatever `refuse_take` set). `send_cant_do`, `send_took` and `send_reply` push
unrequested (stale, hostile, stranger-signed) replies.

Every publish blocks until at least one relay answered OK true and raises `PublishError`
with each relay's message otherwise. Dispute events are addressable (kind, author, `d`): a
relay keeps only the newest, and refuses a later status that is not strictly newer. So the
default `created_at` is now, bumped past the last one used for the same `d`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Final

import coincurve
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
GIFT_WRAP_KIND: Final = 1059
ADMIN_TAKE_DISPUTE: Final = "admin-take-dispute"
# `ignore_take`: the request is read and never answered.
NO_ANSWER: Final = "no-answer"

Tags = Sequence[Sequence[str]]


class PublishedEvent(msgspec.Struct, frozen=True):
    """An event the simulator published; `accepted_by` lists the relays that said OK."""

    id: str
    created_at: int
    kind: int
    tags: list[list[str]]
    json: str
    accepted_by: list[str]


class TakeRequest(msgspec.Struct, frozen=True):
    """An `admin-take-dispute` the simulator read; `answer` is what it did about it."""

    requester: str
    dispute_id: str
    signature_valid: bool
    answer: str


class MostroSim(ThreadedSdkPeer):
    """Signs and publishes dispute events with the Mostro key. Thread-safe."""

    def __init__(
        self,
        secret_hex: str,
        relay_urls: Iterable[str],
        *,
        instance_name: str = DEFAULT_INSTANCE_NAME,
        timeout: float = DEFAULT_TIMEOUT,
        answer_takes: bool = False,
        solvers: Iterable[str] | None = None,
    ) -> None:
        super().__init__(secret_hex, relay_urls, timeout=timeout)
        self.instance_name = instance_name
        self._lock = threading.Lock()
        self._last_created_at: dict[str, int] = {}
        self._initiators: dict[str, str] = {}
        self._events: list[PublishedEvent] = []
        self._answer_takes = answer_takes
        # None: every requester is one of this node's solvers.
        self._solvers = None if solvers is None else {pk.lower() for pk in solvers}
        self._trade_keys: dict[str, tuple[str, str]] = {}
        self._take_answers: dict[str, str] = {}
        self._taken: set[str] = set()
        self._take_requests: list[TakeRequest] = []

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

    # -- take-flow (answer_takes=True) ----------------------------------------------------

    def trade_keys(self, dispute_id: str) -> tuple[str, str]:
        """The (buyer, seller) trade secret keys (hex) of the dispute's order, made once."""
        with self._lock:
            if dispute_id not in self._trade_keys:
                self._trade_keys[dispute_id] = (
                    nostr_sdk.Keys.generate().secret_key().to_hex(),
                    nostr_sdk.Keys.generate().secret_key().to_hex(),
                )
            return self._trade_keys[dispute_id]

    def trade_pubkeys(self, dispute_id: str) -> tuple[str, str]:
        buyer, seller = self.trade_keys(dispute_id)
        return (
            nostr_sdk.Keys.parse(buyer).public_key().to_hex(),
            nostr_sdk.Keys.parse(seller).public_key().to_hex(),
        )

    def refuse_take(self, dispute_id: str, reason: str) -> None:
        """Answer takes of this dispute with `cant-do` `reason`."""
        with self._lock:
            self._take_answers[dispute_id] = reason

    def ignore_take(self, dispute_id: str) -> None:
        """Read takes of this dispute and never answer (the requester times out)."""
        with self._lock:
            self._take_answers[dispute_id] = NO_ANSWER

    def set_solvers(self, solvers: Iterable[str] | None) -> None:
        with self._lock:
            self._solvers = None if solvers is None else {pk.lower() for pk in solvers}

    def take_requests(self) -> list[TakeRequest]:
        with self._lock:
            return list(self._take_requests)

    def wait_for_take_requests(self, count: int, timeout: float) -> list[TakeRequest]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._take_requests) >= count, timeout):
                raise TimeoutError(f"{len(self._take_requests)} take requests, wanted {count}")
            return list(self._take_requests)

    def send_reply(
        self, receiver: str, message_json: str, *, signer_secret: str | None = None
    ) -> str:
        """Gift-wrap `[message_json, null]` to `receiver` (signed by Mostro unless
        `signer_secret`); `message_json` is sent as is, so it may be malformed."""
        return self.send_rumor(receiver, f"[{message_json},null]", signer_secret=signer_secret)

    def send_rumor(self, receiver: str, content: str, *, signer_secret: str | None = None) -> str:
        """Gift-wrap a kind 1 rumor with exactly `content`; returns the wrap id."""
        signer = self.keys if signer_secret is None else nostr_sdk.Keys.parse(signer_secret)
        return self._call(self._send_wrapped(signer, receiver, content), self.timeout * 2)

    def send_cant_do(
        self, receiver: str, dispute_id: str, reason: str, *, signer_secret: str | None = None
    ) -> str:
        return self.send_reply(
            receiver,
            _message("cant-do", dispute_id, "cant-do", {"cant_do": reason}),
            signer_secret=signer_secret,
        )

    def send_took(
        self,
        receiver: str,
        dispute_id: str,
        buyer_pubkey: str | None,
        seller_pubkey: str | None,
        *,
        signer_secret: str | None = None,
    ) -> str:
        return self.send_reply(
            receiver,
            _took_message(dispute_id, buyer_pubkey, seller_pubkey),
            signer_secret=signer_secret,
        )

    async def _on_connected(self, client: nostr_sdk.Client) -> None:
        if self._answer_takes:
            await self._subscribe(
                nostr_sdk.Filter()
                .kind(nostr_sdk.Kind(GIFT_WRAP_KIND))
                .pubkey(self.keys.public_key())
            )

    async def _on_event(self, event: nostr_sdk.Event) -> None:
        if event.kind().as_u16() != GIFT_WRAP_KIND:
            return
        unwrapped = nostr_sdk.UnwrappedGift.from_gift_wrap(self.keys, event)
        requester = unwrapped.sender().to_hex()
        content = unwrapped.rumor().content()
        message, signature = json.loads(content)
        kind = message.get("dispute") or {}
        if kind.get("action") != ADMIN_TAKE_DISPUTE:
            return
        dispute_id = str(kind.get("id"))
        answer = self._decide(
            requester, dispute_id, _signature_valid(requester, content, signature)
        )
        if answer == "took":
            buyer, seller = self.trade_pubkeys(dispute_id)
            await self._send_wrapped(
                self.keys, requester, f"[{_took_message(dispute_id, buyer, seller)},null]"
            )
            status = self.sign_status(dispute_id, "in-progress")
            self._record(status, await self._publish(status))
        elif answer != NO_ANSWER:
            cant_do = _message("cant-do", dispute_id, "cant-do", {"cant_do": answer})
            await self._send_wrapped(self.keys, requester, f"[{cant_do},null]")

    def _decide(self, requester: str, dispute_id: str, signature_valid: bool) -> str:
        with self._cond:
            if not signature_valid:
                answer = "invalid_signature"
            elif self._solvers is not None and requester not in self._solvers:
                answer = "not_authorized"
            elif dispute_id in self._take_answers:
                answer = self._take_answers[dispute_id]
            elif dispute_id in self._taken:
                # Real Mostro: the dispute is no longer `initiated` (protocol.md §6 note).
                answer = "invalid_pubkey"
            else:
                answer = "took"
                self._taken.add(dispute_id)
            self._take_requests.append(TakeRequest(requester, dispute_id, signature_valid, answer))
            self._cond.notify_all()
            return answer

    async def _send_wrapped(self, signer: nostr_sdk.Keys, receiver: str, content: str) -> str:
        rumor = nostr_sdk.EventBuilder(nostr_sdk.Kind(1), content).finalize_unsigned(
            signer.public_key()
        )
        wrap = nostr_sdk.nip59_make_gift_wrap(signer, nostr_sdk.PublicKey.parse(receiver), rumor)
        await self._publish(wrap)
        return wrap.id().to_hex()

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


def _message(channel: str, dispute_id: str, action: str, payload: object) -> str:
    return json.dumps(
        {
            channel: {
                "version": 1,
                "request_id": None,
                "trade_index": None,
                "id": dispute_id,
                "action": action,
                "payload": payload,
            }
        },
        separators=(",", ":"),
    )


def _took_message(dispute_id: str, buyer: str | None, seller: str | None) -> str:
    """PROTO-49 with a PROTO-50 `SolverDisputeInfo` (every key, as Mostro sends it)."""
    now = int(time.time())
    info = {
        "id": "5d2c7e0a-4b1f-4e7a-9c3d-8a6b2f1e0d44",
        "kind": "sell",
        "status": "dispute",
        "hash": None,
        "preimage": None,
        "order_previous_status": "active",
        "initiator_pubkey": buyer,
        "buyer_pubkey": buyer,
        "seller_pubkey": seller,
        "initiator_full_privacy": False,
        "counterpart_full_privacy": False,
        "initiator_info": None,
        "counterpart_info": None,
        "premium": 0,
        "payment_method": "SEPA",
        "amount": 15000,
        "fiat_amount": 10,
        "fee": 45,
        "routing_fee": 0,
        "buyer_invoice": None,
        "invoice_held_at": now,
        "taken_at": now,
        "created_at": now,
    }
    return _message("dispute", dispute_id, "admin-took-dispute", {"dispute": [dispute_id, info]})


def _signature_valid(requester: str, content: str, signature: object) -> bool:
    """Mostro checks the request's signature over element 0 as sent (PROTO-47); the element's
    raw text is everything between the opening `[` and the `,"<sig>"` that ends the array."""
    if not isinstance(signature, str):
        return False
    raw = content[1 : content.rindex(',"')]
    try:
        key = coincurve.PublicKeyXOnly(bytes.fromhex(requester))
        return bool(key.verify(bytes.fromhex(signature), hashlib.sha256(raw.encode()).digest()))
    except ValueError:
        return False
