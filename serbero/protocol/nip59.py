"""NIP-59 gift wraps and NIP-17 private DMs (PROTO-31..33).

Every random input (ephemeral key, NIP-44 nonces, BIP-340 aux, timestamp tweaks) comes from the
injected ``rand`` unless pinned in a `WrapInputs`, so vectors reproduce byte for byte (PROTO-1/66).
Unwrapping runs the PROTO-32 checks in order and reports each failure as a typed error.

The two key agreements a wrap needs can be done ahead of the message and handed in: the
seal's (`seal_key`, our key with the receiver's, which never changes) and the one-time key's
(`OneTimeKey`, an ephemeral key with its conversation key, used for exactly one wrap). What
is left per DM is two encryptions and two signatures (`wrap_seed.SeededWrapper` does this).
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
    "OneTimeKey",
    "SenderMismatch",
    "Unwrapped",
    "WrapInputs",
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


class WrapInputs(msgspec.Struct, frozen=True, kw_only=True):
    """The random inputs of one gift wrap, pinned so test vectors reproduce byte for byte
    (PROTO-1/66); any field left None is drawn from ``rand``. One ``aux_rand`` serves every
    signature of the wrap."""

    ephemeral: Keys | None = None
    seal_nonce: bytes | None = None
    wrap_nonce: bytes | None = None
    aux_rand: bytes | None = None
    seal_created_at: int | None = None
    wrap_created_at: int | None = None


_NOTHING_PINNED: Final = WrapInputs()


class OneTimeKey:
    """A fresh ephemeral key for one gift wrap to `receiver`, with the eph->receiver
    conversation key already derived. PROTO-31: it signs exactly one wrap; a second use
    raises `GiftWrapError`, so a prepared key can never be reused by mistake."""

    __slots__ = ("_conversation_key", "_keys", "receiver")

    def __init__(self, keys: Keys, receiver: str, conversation_key: bytes) -> None:
        self._keys: Keys | None = keys
        self.receiver = receiver
        self._conversation_key = conversation_key

    def __repr__(self) -> str:
        state = "used" if self._keys is None else "fresh"
        return f"OneTimeKey(receiver={self.receiver!r}, {state})"

    @property
    def used(self) -> bool:
        return self._keys is None

    def take(self) -> tuple[Keys, bytes]:
        """The key pair and conversation key, once; the key is forgotten here."""
        keys = self._keys
        if keys is None:
            raise GiftWrapError("a one-time key signs one gift wrap only (PROTO-31)")
        self._keys = None
        return keys, self._conversation_key


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
    pinned: WrapInputs | None = None,
    seal_key: bytes | None = None,
    one_time: OneTimeKey | None = None,
) -> Event:
    """PROTO-31: rumor (self-``p`` dropped, id recomputed) -> seal (kind 13) -> wrap (kind 1059).

    ``pinned`` fixes random inputs for vectors; anything not pinned is drawn from ``rand``.
    The ephemeral key signs exactly one wrap and is then dropped.
    ``seal_key`` (the sender->receiver conversation key) and ``one_time`` (an ephemeral key
    prepared for this receiver) carry work done in advance (`wrap_seed.SeededWrapper`).
    """
    receiver = parse_public_key(receiver_pk)
    author = sender.public_hex
    if rumor.pubkey != author:
        raise GiftWrapError("the rumor's pubkey must be the sender's key")
    _check_one_time(one_time, pinned, receiver)
    tags = _without_self_p(rumor.tags, author)
    inner = Rumor(
        compute_event_id(author, rumor.created_at, rumor.kind, tags, rumor.content),
        author,
        rumor.created_at,
        rumor.kind,
        tags,
        rumor.content,
    )
    return _seal_and_wrap(
        sender,
        receiver,
        inner,
        now=now,
        extra_tags=extra_tags,
        rand=rand,
        pinned=pinned,
        seal_key=seal_key,
        one_time=one_time,
    )


def _check_one_time(one_time: OneTimeKey | None, pinned: WrapInputs | None, receiver: str) -> None:
    pinned_ephemeral = pinned is not None and pinned.ephemeral is not None
    if one_time is not None and (pinned_ephemeral or one_time.receiver != receiver):
        raise GiftWrapError("a one-time key is prepared for one receiver and replaces ephemeral")


def _seal_and_wrap(
    sender: Keys,
    receiver: str,
    inner: Rumor,
    *,
    now: int,
    extra_tags: Sequence[Sequence[str]],
    rand: Callable[[int], bytes],
    pinned: WrapInputs | None,
    seal_key: bytes | None,
    one_time: OneTimeKey | None,
) -> Event:
    """Seal a finished rumor (valid id, no self-``p``) to a parsed receiver and wrap it."""
    pins = pinned if pinned is not None else _NOTHING_PINNED
    seal_content = nip44.encrypt_bytes(
        encode_event(inner),
        seal_key if seal_key is not None else nip44.conversation_key(sender.secret, receiver),
        pins.seal_nonce if pins.seal_nonce is not None else rand(_NONCE_LEN),
    )
    seal = sign_event(
        sender,
        created_at=(
            pins.seal_created_at
            if pins.seal_created_at is not None
            else tweaked_timestamp(now, rand)
        ),
        kind=SEAL_KIND,
        tags=[],
        content=seal_content,
        aux_rand=pins.aux_rand if pins.aux_rand is not None else rand(_AUX_LEN),
    )
    if one_time is not None:
        wrap_signer, wrap_key = one_time.take()
    else:
        wrap_signer = pins.ephemeral if pins.ephemeral is not None else Keys.generate(rand)
        wrap_key = nip44.conversation_key(wrap_signer.secret, receiver)
    wrap_content = nip44.encrypt_bytes(
        encode_event(seal),
        wrap_key,
        pins.wrap_nonce if pins.wrap_nonce is not None else rand(_NONCE_LEN),
    )
    return sign_event(
        wrap_signer,
        created_at=(
            pins.wrap_created_at
            if pins.wrap_created_at is not None
            else tweaked_timestamp(now, rand)
        ),
        kind=GIFT_WRAP_KIND,
        tags=[*extra_tags, ["p", receiver]],
        content=wrap_content,
        aux_rand=pins.aux_rand if pins.aux_rand is not None else rand(_AUX_LEN),
    )


def build_private_dm(
    sender: Keys,
    receiver_pk: str,
    text: str,
    *,
    now: int,
    rand: Callable[[int], bytes] = os.urandom,
    pinned: WrapInputs | None = None,
    seal_key: bytes | None = None,
    one_time: OneTimeKey | None = None,
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
    if receiver == author:
        # A note to self loses its self-`p` (and so its id) in the general path.
        return build_gift_wrap(
            sender,
            receiver,
            rumor,
            now=now,
            rand=rand,
            pinned=pinned,
            seal_key=seal_key,
            one_time=one_time,
        )
    _check_one_time(one_time, pinned, receiver)
    return _seal_and_wrap(
        sender,
        receiver,
        rumor,
        now=now,
        extra_tags=(),
        rand=rand,
        pinned=pinned,
        seal_key=seal_key,
        one_time=one_time,
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
