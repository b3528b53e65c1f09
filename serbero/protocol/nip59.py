"""NIP-59 gift wraps and NIP-17 private DMs (PROTO-31..33).

Every random input (ephemeral key, NIP-44 nonces, BIP-340 aux, timestamp tweaks) comes from the
injected ``rand`` unless given explicitly, so vectors reproduce byte for byte (PROTO-1/66).
Unwrapping runs the PROTO-32 checks in order and reports each failure as a typed error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Annotated, Final

import msgspec

from serbero.protocol import nip44
from serbero.protocol.event import (
    MAX_KIND,
    MAX_TAGS,
    MAX_TIMESTAMP,
    Event,
    EventError,
    Rumor,
    compute_event_id,
    decode_event,
    encode_event,
    sign_event,
    tweaked_timestamp,
    verify_event,
)
from serbero.protocol.keys import Keys, parse_public_key

__all__ = [
    "DM_KIND",
    "GIFT_WRAP_KIND",
    "SEAL_KIND",
    "GiftWrapError",
    "Malformed",
    "NotForMe",
    "NotGiftWrap",
    "SenderMismatch",
    "Unwrapped",
    "build_gift_wrap",
    "build_private_dm",
    "unwrap_gift",
]

SEAL_KIND: Final = 13
DM_KIND: Final = 14
GIFT_WRAP_KIND: Final = 1059
_NONCE_LEN: Final = 32
_AUX_LEN: Final = 32


class GiftWrapError(ValueError):
    """A gift wrap that cannot be built or opened."""


class NotGiftWrap(GiftWrapError):
    """The outer event is not kind 1059 (PROTO-32 step 1)."""


class NotForMe(GiftWrapError):
    """A layer does not decrypt with our key: addressed to someone else, or corrupted."""


class Malformed(GiftWrapError):
    """The seal or rumor inside decrypted but is not a valid event of the expected shape."""


class SenderMismatch(Malformed):
    """The rumor's author differs from the seal's signer (impersonation attempt)."""


class Unwrapped(msgspec.Struct, frozen=True):
    """An opened gift wrap: ``sender`` is the seal signer, the only authenticated author."""

    sender: str
    rumor: Rumor
    wrap_id: str


class _IncomingRumor(msgspec.Struct, frozen=True):
    """PROTO-32 step 5: id optional (recomputed, never trusted), sig ignored as unknown."""

    pubkey: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    created_at: Annotated[int, msgspec.Meta(ge=0, le=MAX_TIMESTAMP)]
    kind: Annotated[int, msgspec.Meta(ge=0, le=MAX_KIND)]
    tags: Annotated[
        list[Annotated[list[str], msgspec.Meta(min_length=1)]], msgspec.Meta(max_length=MAX_TAGS)
    ]
    content: str


_rumor_decoder: Final = msgspec.json.Decoder(_IncomingRumor)


def _without_self_p(tags: Sequence[Sequence[str]], author: str) -> list[list[str]]:
    return [list(tag) for tag in tags if not (len(tag) >= 2 and tag[0] == "p" and tag[1] == author)]


def build_gift_wrap(
    sender: Keys,
    receiver_pk: str,
    rumor: Rumor,
    *,
    now: int,
    extra_tags: Sequence[Sequence[str]] = (),
    rand: Callable[[int], bytes] = os.urandom,
    ephemeral: Keys | None = None,
    seal_nonce: bytes | None = None,
    wrap_nonce: bytes | None = None,
    aux_rand: bytes | None = None,
    seal_created_at: int | None = None,
    wrap_created_at: int | None = None,
) -> Event:
    """PROTO-31: rumor (self-``p`` dropped, id recomputed) -> seal (kind 13) -> wrap (kind 1059).

    The explicit keyword arguments pin individual random inputs (vectors); anything left None
    is drawn from ``rand``. The ephemeral key signs exactly one wrap and is then dropped.
    """
    receiver = parse_public_key(receiver_pk)
    author = sender.public_hex
    if rumor.pubkey != author:
        raise GiftWrapError("the rumor's pubkey must be the sender's key")
    tags = _without_self_p(rumor.tags, author)
    inner = Rumor(
        compute_event_id(author, rumor.created_at, rumor.kind, tags, rumor.content),
        author,
        rumor.created_at,
        rumor.kind,
        tags,
        rumor.content,
    )
    seal_content = nip44.encrypt_bytes(
        encode_event(inner),
        nip44.conversation_key(sender.secret, receiver),
        seal_nonce if seal_nonce is not None else rand(_NONCE_LEN),
    )
    seal = sign_event(
        sender,
        created_at=seal_created_at if seal_created_at is not None else tweaked_timestamp(now, rand),
        kind=SEAL_KIND,
        tags=[],
        content=seal_content,
        aux_rand=aux_rand if aux_rand is not None else rand(_AUX_LEN),
    )
    one_time = ephemeral if ephemeral is not None else Keys.generate(rand)
    wrap_content = nip44.encrypt_bytes(
        encode_event(seal),
        nip44.conversation_key(one_time.secret, receiver),
        wrap_nonce if wrap_nonce is not None else rand(_NONCE_LEN),
    )
    return sign_event(
        one_time,
        created_at=wrap_created_at if wrap_created_at is not None else tweaked_timestamp(now, rand),
        kind=GIFT_WRAP_KIND,
        tags=[*extra_tags, ["p", receiver]],
        content=wrap_content,
        aux_rand=aux_rand if aux_rand is not None else rand(_AUX_LEN),
    )


def build_private_dm(
    sender: Keys,
    receiver_pk: str,
    text: str,
    *,
    now: int,
    rand: Callable[[int], bytes] = os.urandom,
    ephemeral: Keys | None = None,
    seal_nonce: bytes | None = None,
    wrap_nonce: bytes | None = None,
    aux_rand: bytes | None = None,
    seal_created_at: int | None = None,
    wrap_created_at: int | None = None,
) -> Event:
    """PROTO-33: a NIP-17 DM, byte-equivalent to nostr-sdk ``send_private_msg(receiver, text)``.

    Rumor kind 14, ``created_at`` = now, tags ``[["p", receiver]]``; no outer extra tags.
    """
    receiver = parse_public_key(receiver_pk)
    author = sender.public_hex
    tags = [["p", receiver]]
    rumor = Rumor(
        compute_event_id(author, now, DM_KIND, tags, text), author, now, DM_KIND, tags, text
    )
    return build_gift_wrap(
        sender,
        receiver,
        rumor,
        now=now,
        rand=rand,
        ephemeral=ephemeral,
        seal_nonce=seal_nonce,
        wrap_nonce=wrap_nonce,
        aux_rand=aux_rand,
        seal_created_at=seal_created_at,
        wrap_created_at=wrap_created_at,
    )


def unwrap_gift(receiver: Keys, wrap: Event) -> Unwrapped:
    """PROTO-32, in order. ``wrap`` must already be verified (PROTO-9, done by the pool)."""
    if wrap.kind != GIFT_WRAP_KIND:
        raise NotGiftWrap(f"kind {wrap.kind} is not a gift wrap")
    try:
        seal_json = nip44.decrypt(
            wrap.content, nip44.conversation_key(receiver.secret, wrap.pubkey)
        )
    except nip44.Nip44Error as exc:
        raise NotForMe(f"wrap does not decrypt: {exc}") from exc
    try:
        seal = decode_event(seal_json)
        verify_event(seal)
    except EventError as exc:
        raise Malformed(f"invalid seal: {exc}") from exc
    if seal.kind != SEAL_KIND:
        raise Malformed(f"seal has kind {seal.kind}, expected 13")
    try:
        rumor_json = nip44.decrypt(
            seal.content, nip44.conversation_key(receiver.secret, seal.pubkey)
        )
    except nip44.Nip44Error as exc:
        raise NotForMe(f"seal does not decrypt: {exc}") from exc
    try:
        raw = _rumor_decoder.decode(rumor_json)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise Malformed(f"invalid rumor: {exc}") from None
    if raw.pubkey != seal.pubkey:
        raise SenderMismatch("rumor author differs from the seal signer")
    rumor = Rumor(
        compute_event_id(raw.pubkey, raw.created_at, raw.kind, raw.tags, raw.content),
        raw.pubkey,
        raw.created_at,
        raw.kind,
        raw.tags,
        raw.content,
    )
    return Unwrapped(sender=seal.pubkey, rumor=rumor, wrap_id=wrap.id)
