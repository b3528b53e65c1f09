"""The dispute-chat transport: per-party shared keys and Mostro's legacy chat wrap.

After a successful take (PROTO-53) Serbero talks to each party through a key only the two of
them can derive (PROTO-56). Messages travel as a kind 1059 wrap around a *signed* kind 1 note,
with no seal layer (PROTO-58); that is Mostro's scheme, not NIP-17, and mediation content must
never go out any other way (PROTO-63).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Final, Literal, NamedTuple

import msgspec

from serbero.protocol.event import (
    Event,
    EventError,
    decode_event,
    encode_event,
    sign_event,
    tweaked_timestamp,
    verify_event,
)
from serbero.protocol.keys import KeyFormatError, Keys, parse_public_key, shared_x
from serbero.protocol.nip44 import Nip44Error, conversation_key, decrypt, encrypt_bytes

__all__ = [
    "CHAT_INNER_KIND",
    "CHAT_WRAP_KIND",
    "ChatError",
    "ChatMaterial",
    "ChatMessage",
    "ChatWrap",
    "InboundChat",
    "Party",
    "PartyWraps",
    "build_chat_wrap",
    "build_party_wraps",
    "derive_chat_material",
    "order_inbound",
    "shared_keys",
    "unwrap_chat",
]

CHAT_INNER_KIND: Final = 1
CHAT_WRAP_KIND: Final = 1059
_NONCE_LEN: Final = 32
_AUX_LEN: Final = 32

Party = Literal["buyer", "seller"]


class ChatError(ValueError):
    """Chat keys that cannot be derived, or a chat wrap that must be dropped."""


class ChatMaterial(msgspec.Struct, frozen=True):
    """PROTO-54: both trade keys and both shared key pairs. Secrets live in memory only."""

    buyer_pubkey: str
    seller_pubkey: str
    buyer_shared: Keys
    seller_shared: Keys


class ChatWrap(NamedTuple):
    """PROTO-58's `(outer, inner_id, inner_created_at)`."""

    outer: Event
    inner_id: str
    inner_created_at: int


class PartyWraps(msgspec.Struct, frozen=True):
    """One round's outbound pair, built together before anything is stored or published."""

    buyer: ChatWrap
    seller: ChatWrap


class ChatMessage(msgspec.Struct, frozen=True):
    """PROTO-60: one inbound note from a party, opened and verified."""

    shared_pubkey: str
    inner_event_id: str
    inner_created_at: int
    outer_event_id: str
    content: str
    inner_sender: str


class InboundChat(msgspec.Struct, frozen=True):
    """A message with the party whose batch it came from."""

    party: Party
    message: ChatMessage


def shared_keys(serbero: Keys, party_pk: str) -> Keys:
    """PROTO-56: the key pair whose secret is `shared_x(serbero_sk, party_trade_pk)`."""
    try:
        return Keys.from_secret(shared_x(serbero.secret, party_pk))
    except KeyFormatError as exc:
        raise ChatError(f"cannot derive a shared key: {exc}") from None


def _trade_key(role: Party, value: str | None) -> str:
    if value is None:
        raise ChatError(f"{role}_pubkey is missing")
    try:
        return parse_public_key(value)
    except KeyFormatError as exc:
        raise ChatError(f"{role}_pubkey is not a valid public key: {exc}") from None


def derive_chat_material(
    serbero: Keys, buyer_pk: str | None, seller_pk: str | None
) -> ChatMaterial:
    """PROTO-54: both trade keys present, valid and distinct; both shared secrets distinct."""
    buyer = _trade_key("buyer", buyer_pk)
    seller = _trade_key("seller", seller_pk)
    if buyer == seller:
        raise ChatError("buyer and seller trade keys are the same")
    buyer_shared = shared_keys(serbero, buyer)
    seller_shared = shared_keys(serbero, seller)
    if buyer_shared == seller_shared:
        raise ChatError("buyer and seller shared secrets are the same")
    return ChatMaterial(
        buyer_pubkey=buyer,
        seller_pubkey=seller,
        buyer_shared=buyer_shared,
        seller_shared=seller_shared,
    )


def build_chat_wrap(
    serbero: Keys,
    shared_pk: str,
    text: str,
    *,
    now: int,
    rand: Callable[[int], bytes] = os.urandom,
    ephemeral: Keys | None = None,
    nonce: bytes | None = None,
    aux_rand: bytes | None = None,
    wrap_created_at: int | None = None,
) -> ChatWrap:
    """PROTO-58: a kind 1 note signed by Serbero, encrypted from a one-time key to `shared_pk`.

    The text is sent unmodified; only an all-blank text is refused. Every random input (one-time
    key, nonce, `aux_rand`, the back-dated wrap time) is drawn from `rand` unless pinned.
    """
    if not text.strip():
        raise ChatError("refusing to send a blank chat message")
    inner_aux = aux_rand if aux_rand is not None else rand(_AUX_LEN)
    outer_aux = aux_rand if aux_rand is not None else rand(_AUX_LEN)
    try:
        recipient = parse_public_key(shared_pk)
        inner = sign_event(
            serbero, created_at=now, kind=CHAT_INNER_KIND, tags=[], content=text, aux_rand=inner_aux
        )
        one_time = ephemeral if ephemeral is not None else Keys.generate(rand)
        ciphertext = encrypt_bytes(
            encode_event(inner),
            conversation_key(one_time.secret, recipient),
            nonce if nonce is not None else rand(_NONCE_LEN),
        )
        outer = sign_event(
            one_time,
            created_at=tweaked_timestamp(now, rand) if wrap_created_at is None else wrap_created_at,
            kind=CHAT_WRAP_KIND,
            tags=[["p", recipient]],
            content=ciphertext,
            aux_rand=outer_aux,
        )
    except (KeyFormatError, EventError, Nip44Error) as exc:
        raise ChatError(f"cannot build chat wrap: {exc}") from None
    return ChatWrap(outer=outer, inner_id=inner.id, inner_created_at=inner.created_at)


def build_party_wraps(
    serbero: Keys,
    material: ChatMaterial,
    *,
    buyer_text: str,
    seller_text: str,
    now: int,
    rand: Callable[[int], bytes] = os.urandom,
) -> PartyWraps:
    """Both wraps of a round, each to its party's *shared* key only (PROTO-58, PROTO-63).

    Identical inner ids for the two parties would make their messages indistinguishable in
    the store, so that is refused before anything is written (PROTO-58 note, MED-81).
    """
    buyer = build_chat_wrap(
        serbero, material.buyer_shared.public_hex, buyer_text, now=now, rand=rand
    )
    seller = build_chat_wrap(
        serbero, material.seller_shared.public_hex, seller_text, now=now, rand=rand
    )
    if buyer.inner_id == seller.inner_id:
        raise ChatError("buyer and seller messages have the same inner event id")
    return PartyWraps(buyer=buyer, seller=seller)


def unwrap_chat(shared: Keys, expected_author: str, wrap: Event) -> ChatMessage:
    """PROTO-60, in order: decrypt, parse, kind 1 (before the signature), verify, author.

    Serbero's own outbound wraps come back on the same filter and fail the author check.
    """
    if wrap.kind != CHAT_WRAP_KIND:
        raise ChatError(f"kind {wrap.kind} is not a chat wrap")
    try:
        inner_json = decrypt(wrap.content, conversation_key(shared.secret, wrap.pubkey))
    except (Nip44Error, KeyFormatError) as exc:
        raise ChatError(f"cannot decrypt chat wrap: {exc}") from None
    try:
        inner = decode_event(inner_json)
    except EventError as exc:
        raise ChatError(f"inner event is malformed: {exc}") from None
    if inner.kind != CHAT_INNER_KIND:
        raise ChatError(f"inner event kind {inner.kind} is not 1")
    try:
        verify_event(inner)
    except EventError as exc:
        raise ChatError(f"inner event does not verify: {exc}") from None
    if inner.pubkey != expected_author.lower():
        raise ChatError("inner event is not signed by the expected party")
    return ChatMessage(
        shared_pubkey=shared.public_hex,
        inner_event_id=inner.id,
        inner_created_at=inner.created_at,
        outer_event_id=wrap.id,
        content=inner.content,
        inner_sender=inner.pubkey,
    )


def order_inbound(
    buyer_batch: Iterable[ChatMessage], seller_batch: Iterable[ChatMessage]
) -> list[InboundChat]:
    """PROTO-61: one tick's messages by inner `created_at`, buyer before seller on ties.

    The outer `created_at` is noise and never used. A note seen twice in the tick (the same
    inner event in two wraps) is kept once, at its first position; cross-tick de-duplication
    by `(session, inner_event_id)` is the store's job.
    """
    tagged = [InboundChat(party="buyer", message=m) for m in buyer_batch]
    tagged += [InboundChat(party="seller", message=m) for m in seller_batch]
    tagged.sort(key=lambda item: item.message.inner_created_at)
    seen: set[str] = set()
    ordered: list[InboundChat] = []
    for item in tagged:
        if item.message.inner_event_id not in seen:
            seen.add(item.message.inner_event_id)
            ordered.append(item)
    return ordered
