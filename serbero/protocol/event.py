"""NIP-01 events: the struct, the canonical id (PROTO-7), signing and verification.

Decoding validates the full PROTO-6 shape in one msgspec pass; verification (id recompute plus
BIP-340) is a separate step so the relay pool can do it exactly once per event id.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Final

import msgspec

from serbero.protocol.keys import Keys, verify_schnorr

__all__ = [
    "DECODE_ERRORS",
    "MAX_KIND",
    "MAX_TAGS",
    "MAX_TIMESTAMP",
    "TIMESTAMP_TWEAK_RANGE",
    "Event",
    "EventError",
    "Rumor",
    "compute_event_id",
    "decode_event",
    "decode_rumor",
    "encode_event",
    "expiration_of",
    "first_tag_value",
    "make_rumor",
    "sign_event",
    "tweaked_timestamp",
    "verify_event",
]

MAX_KIND: Final = 65535
MAX_TAGS: Final = 2000
# Timestamps go into SQLite INTEGER columns, so anything beyond int64 is rejected as malformed.
MAX_TIMESTAMP: Final = 2**63 - 1
# PROTO-5: seals and wraps are back-dated by a uniform r in [0, 172800) seconds.
TIMESTAMP_TWEAK_RANGE: Final = 172_800

_Hex64 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
_Hex128 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{128}$")]
_Timestamp = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIMESTAMP)]
_Kind = Annotated[int, msgspec.Meta(ge=0, le=MAX_KIND)]
_Tag = Annotated[list[str], msgspec.Meta(min_length=1)]
_Tags = Annotated[list[_Tag], msgspec.Meta(max_length=MAX_TAGS)]

_INTEGER_TAG_VALUE: Final = re.compile(r"[0-9]{1,19}")
_TWEAK_DRAW_BYTES: Final = 3
# Largest multiple of the tweak range that fits the draw: rejection above it keeps r uniform.
_TWEAK_DRAW_LIMIT: Final = (
    (1 << (8 * _TWEAK_DRAW_BYTES)) // TIMESTAMP_TWEAK_RANGE * TIMESTAMP_TWEAK_RANGE
)


class EventError(ValueError):
    """An event that is malformed, has a wrong id, or a bad signature."""


class Event(msgspec.Struct, frozen=True):
    """A signed NIP-01 event; field order is the wire order of PROTO-6."""

    id: _Hex64
    pubkey: _Hex64
    created_at: _Timestamp
    kind: _Kind
    tags: _Tags
    content: str
    sig: _Hex128


class Rumor(msgspec.Struct, frozen=True):
    """An unsigned event (NIP-59 rumor): same order as Event, never a ``sig``."""

    id: _Hex64
    pubkey: _Hex64
    created_at: _Timestamp
    kind: _Kind
    tags: _Tags
    content: str


_event_decoder: Final = msgspec.json.Decoder(Event)
_rumor_decoder: Final = msgspec.json.Decoder(Rumor)
_encoder: Final = msgspec.json.Encoder()
# What msgspec raises for malformed JSON, wrong shapes, un-encodable str input or non-buffers;
# every protocol parser turns these into its own typed error. RecursionError: msgspec gives up
# on ~1000-deep nesting, which a few kilobytes of hostile input reach.
DECODE_ERRORS: Final = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    UnicodeError,
    TypeError,
    RecursionError,
)


def _serialize_for_id(
    pubkey: str, created_at: int, kind: int, tags: Sequence[Sequence[str]], content: str
) -> bytes:
    try:
        return _encoder.encode([0, pubkey, created_at, kind, tags, content])
    except (UnicodeEncodeError, TypeError, OverflowError) as exc:
        raise EventError(f"event cannot be serialized: {exc}") from None


def compute_event_id(
    pubkey: str, created_at: int, kind: int, tags: Sequence[Sequence[str]], content: str
) -> str:
    """PROTO-7: SHA-256 of compact ``[0,pubkey,created_at,kind,tags,content]``, lowercase hex.

    msgspec escapes exactly the PROTO-7 set and writes everything else verbatim as UTF-8; a lone
    surrogate cannot be encoded and raises EventError.
    """
    return hashlib.sha256(_serialize_for_id(pubkey, created_at, kind, tags, content)).hexdigest()


def _check_fields(created_at: int, kind: int, tags: Sequence[Sequence[str]]) -> list[list[str]]:
    if type(created_at) is not int or not 0 <= created_at <= MAX_TIMESTAMP:
        raise EventError("created_at must be an integer >= 0")
    if type(kind) is not int or not 0 <= kind <= MAX_KIND:
        raise EventError("kind must be an integer in 0..65535")
    if len(tags) > MAX_TAGS:
        raise EventError(f"more than {MAX_TAGS} tags")
    copied = [list(tag) for tag in tags]
    for tag in copied:
        if not tag or not all(type(item) is str for item in tag):
            raise EventError("every tag must be a non-empty list of strings")
    return copied


def sign_event(
    keys: Keys,
    *,
    created_at: int,
    kind: int,
    tags: Sequence[Sequence[str]],
    content: str,
    aux_rand: bytes | None = None,
) -> Event:
    """Build and sign an event as ``keys`` (PROTO-8); tags are copied, never aliased."""
    own_tags = _check_fields(created_at, kind, tags)
    pubkey = keys.public_hex
    event_id = compute_event_id(pubkey, created_at, kind, own_tags, content)
    sig = keys.sign_schnorr(bytes.fromhex(event_id), aux_rand).hex()
    return Event(event_id, pubkey, created_at, kind, own_tags, content, sig)


def make_rumor(
    pubkey: str, *, created_at: int, kind: int, tags: Sequence[Sequence[str]], content: str
) -> Rumor:
    """An unsigned event with its id computed (NIP-59 rumor)."""
    own_tags = _check_fields(created_at, kind, tags)
    event_id = compute_event_id(pubkey, created_at, kind, own_tags, content)
    return Rumor(event_id, pubkey, created_at, kind, own_tags, content)


def decode_event(data: bytes | str) -> Event:
    """Parse one signed event with full PROTO-6 shape checks; does NOT verify (verify_event)."""
    try:
        return _event_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise EventError(f"malformed event: {exc}") from None


def decode_rumor(data: bytes | str) -> Rumor:
    """Parse an unsigned event whose ``id`` is present (shape only; ``sig`` is ignored)."""
    try:
        return _rumor_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise EventError(f"malformed rumor: {exc}") from None


def verify_event(event: Event) -> None:
    """PROTO-9 steps 2-3: the recomputed id matches and the BIP-340 signature is valid."""
    expected = compute_event_id(
        event.pubkey, event.created_at, event.kind, event.tags, event.content
    )
    if expected != event.id:
        raise EventError("id does not match the event contents")
    try:
        digest = bytes.fromhex(event.id)
        sig = bytes.fromhex(event.sig)
    except ValueError:
        raise EventError("id or sig is not hex") from None
    if not verify_schnorr(event.pubkey, digest, sig):
        raise EventError("invalid signature")


def encode_event(event: Event | Rumor) -> bytes:
    """Compact JSON in PROTO-6 key order (an Event with ``sig`` last, a Rumor without)."""
    try:
        return _encoder.encode(event)
    except UnicodeEncodeError as exc:
        raise EventError(f"event cannot be serialized: {exc}") from None


def first_tag_value(tags: Sequence[Sequence[str]], name: str) -> str | None:
    """PROTO-11: first value of a tag named ``name`` (case-sensitive); valueless tags are absent."""
    for tag in tags:
        if len(tag) >= 2 and tag[0] == name:
            return tag[1]
    return None


def expiration_of(event: Event | Rumor) -> int | None:
    """NIP-40: the first ``expiration`` tag as an integer, or None when absent or not an integer."""
    value = first_tag_value(event.tags, "expiration")
    if value is None or not _INTEGER_TAG_VALUE.fullmatch(value):
        return None
    return int(value)


def tweaked_timestamp(now: int, rand: Callable[[int], bytes] = os.urandom) -> int:
    """PROTO-5: ``now - r`` with r uniform in [0, 172800), by rejection sampling."""
    while True:
        draw = int.from_bytes(rand(_TWEAK_DRAW_BYTES), "big")
        if draw < _TWEAK_DRAW_LIMIT:
            return now - draw % TIMESTAMP_TWEAK_RANGE
