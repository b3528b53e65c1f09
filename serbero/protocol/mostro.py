"""Mostro's message protocol on the wire: the gift-wrapped order messages (PROTO-43..52).

Pure: canonical encoding of a message, and a lenient parser of what Mostro sends, with the
signature over element 0 checked as received and then in canonical form. The take-flow that
uses them lives in `serbero.protocol.take`; dispute events in `serbero.protocol.dispute_event`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Final, TypeVar

import msgspec

from serbero.protocol.event import DECODE_ERRORS
from serbero.protocol.keys import verify_schnorr
from serbero.protocol.nip59 import Unwrapped

__all__ = [
    "CANT_DO_NULL_REASON",
    "KNOWN_CANT_DO_REASONS",
    "MOSTRO_MESSAGE_VERSION",
    "MOSTRO_RUMOR_KIND",
    "CantDoPayload",
    "DisputePayload",
    "MostroMessage",
    "MostroMessageError",
    "OtherPayload",
    "Payload",
    "PeerPayload",
    "SolverDisputeInfo",
    "TextMessagePayload",
    "UserInfo",
    "canonical_uuid",
    "encode_mostro_message",
    "parse_mostro_message",
]

MOSTRO_MESSAGE_VERSION: Final = 1
# PROTO-46: Mostro messages ride in kind 1 rumors, not NIP-17's kind 14.
MOSTRO_RUMOR_KIND: Final = 1
# PROTO-51: a null cant-do reason means this.
CANT_DO_NULL_REASON: Final = "invalid_action"
KNOWN_CANT_DO_REASONS: Final = frozenset(
    {
        "invalid_signature",
        "invalid_trade_index",
        "invalid_amount",
        "invalid_invoice",
        "invalid_payment_request",
        "invalid_peer",
        "invalid_rating",
        "invalid_text_message",
        "invalid_order_kind",
        "invalid_order_status",
        "invalid_pubkey",
        "invalid_parameters",
        "order_already_canceled",
        "cant_create_user",
        "is_not_your_order",
        "not_allowed_by_status",
        "out_of_range_fiat_amount",
        "out_of_range_sats_amount",
        "is_not_your_dispute",
        "dispute_taken_by_admin",
        "not_authorized",
        "dispute_creation_error",
        "not_found",
        "invalid_dispute_status",
        "invalid_action",
        "pending_order_exists",
        "invalid_fiat_currency",
        "too_many_requests",
    }
)
_SIG_HEX: Final = re.compile(r"[0-9a-fA-F]{128}")
# Mostro's ids are `uuid::Uuid`, which parses these spellings and prints the hyphenated one.
_UUID_FORMS: Final = (
    re.compile(
        r"([0-9a-fA-F]{8})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{12})"
    ),
    re.compile(
        r"([0-9a-fA-F]{8})([0-9a-fA-F]{4})([0-9a-fA-F]{4})([0-9a-fA-F]{4})([0-9a-fA-F]{12})"
    ),
    re.compile(
        r"\{([0-9a-fA-F]{8})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{12})\}"
    ),
    re.compile(
        r"urn:uuid:([0-9a-fA-F]{8})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-"
        r"([0-9a-fA-F]{12})"
    ),
)

_I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_T = TypeVar("_T")
_U64 = Annotated[int, msgspec.Meta(ge=0)]


class MostroMessageError(ValueError):
    """Rumor content that is not a well-formed, correctly signed Mostro message (`Malformed`)."""


def canonical_uuid(value: str) -> str | None:
    """The lowercase hyphenated form of a UUID, or None when `value` is not one (PROTO-41)."""
    for form in _UUID_FORMS:
        match = form.fullmatch(value)
        if match:
            return "-".join(match.groups()).lower()
    return None


class UserInfo(msgspec.Struct, frozen=True):
    """Reputation summary Mostro attaches to a party."""

    rating: float
    reviews: _I64
    operating_days: _I64


class SolverDisputeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """PROTO-50, parsed leniently: only the two trade keys must be present (they may be null).

    Fields that are present must have their PROTO-50 types; `order_id` is the `id` key.
    """

    buyer_pubkey: str | None
    seller_pubkey: str | None
    order_id: str | None = msgspec.field(default=None, name="id")
    kind: str | None = None
    status: str | None = None
    hash: str | None = None
    preimage: str | None = None
    order_previous_status: str | None = None
    initiator_pubkey: str | None = None
    initiator_full_privacy: bool | None = None
    counterpart_full_privacy: bool | None = None
    initiator_info: UserInfo | None = None
    counterpart_info: UserInfo | None = None
    premium: _I64 | None = None
    payment_method: str | None = None
    amount: _I64 | None = None
    fiat_amount: _I64 | None = None
    fee: _I64 | None = None
    routing_fee: _I64 | None = None
    buyer_invoice: str | None = None
    invoice_held_at: _I64 | None = None
    taken_at: _I64 | None = None
    created_at: _I64 | None = None


class DisputePayload(msgspec.Struct, frozen=True, tag="dispute"):
    """`{"dispute":[<uuid>, <SolverDisputeInfo|null>]}`."""

    dispute_id: str
    info: SolverDisputeInfo | None


class CantDoPayload(msgspec.Struct, frozen=True, tag="cant_do"):
    """`{"cant_do": <reason|null>}`; null becomes `invalid_action`, unknown strings are kept."""

    reason: str

    @property
    def known(self) -> bool:
        """Whether the reason is one PROTO-51 lists (an unknown one is still a refusal)."""
        return self.reason in KNOWN_CANT_DO_REASONS


class PeerPayload(msgspec.Struct, frozen=True, tag="peer"):
    """`{"peer":{"pubkey":…,"reputation":…}}`."""

    pubkey: str
    reputation: UserInfo | None = None


class TextMessagePayload(msgspec.Struct, frozen=True, tag="text_message"):
    """`{"text_message":"…"}`."""

    text: str


class OtherPayload(msgspec.Struct, frozen=True, tag="other"):
    """A payload variant Serbero does not act on; only its name is kept."""

    name: str


Payload = DisputePayload | CantDoPayload | PeerPayload | TextMessagePayload | OtherPayload


class MostroMessage(msgspec.Struct, frozen=True):
    """An opened Mostro message: the channel key, the MessageKind fields and who sent it."""

    sender: str
    channel: str
    version: int
    request_id: int | None
    trade_index: int | None
    id: str | None
    action: str
    payload: Payload | None
    # Whether element 1 of the rumor content carried a signature (which then verified).
    signed: bool
    rumor_created_at: int
    wrap_id: str


_RAW_NULL: Final = msgspec.Raw(b"null")


class _WireKind(msgspec.Struct):
    """MessageKind as received: key order free, unknown keys ignored (PROTO-43)."""

    version: _I64
    action: str
    request_id: _U64 | None = None
    trade_index: _I64 | None = None
    id: str | None = None
    # msgspec cannot decode `Raw | None`; a JSON null arrives as the raw bytes `null`.
    payload: msgspec.Raw = _RAW_NULL


class _WirePeer(msgspec.Struct):
    pubkey: str
    reputation: UserInfo | None = None


_encoder: Final = msgspec.json.Encoder()
_content_decoder: Final = msgspec.json.Decoder(tuple[msgspec.Raw, msgspec.Raw])
_object_decoder: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_kind_decoder: Final = msgspec.json.Decoder(_WireKind)
_sig_decoder: Final = msgspec.json.Decoder(str | None)
_any_decoder: Final = msgspec.json.Decoder()
_dispute_payload_decoder: Final = msgspec.json.Decoder(tuple[str, msgspec.Raw])
_info_decoder: Final = msgspec.json.Decoder(SolverDisputeInfo | None)
_reason_decoder: Final = msgspec.json.Decoder(str | None)
_peer_decoder: Final = msgspec.json.Decoder(_WirePeer)
_text_decoder: Final = msgspec.json.Decoder(str)


def encode_mostro_message(
    channel: str,
    action: str,
    *,
    id: str | None,
    payload: object = None,
    request_id: int | None = None,
    trade_index: int | None = None,
    version: int = MOSTRO_MESSAGE_VERSION,
) -> bytes:
    """PROTO-43 canonical JSON: compact, fixed key order, `id` left out when there is none."""
    kind: dict[str, object] = {
        "version": version,
        "request_id": request_id,
        "trade_index": trade_index,
    }
    if id is not None:
        kind["id"] = id
    kind["action"] = action
    kind["payload"] = payload
    try:
        return _encoder.encode({channel: kind})
    except (UnicodeEncodeError, TypeError, OverflowError, RecursionError) as exc:
        raise MostroMessageError(f"message cannot be encoded: {exc}") from None


def _decode(decoder: msgspec.json.Decoder[_T], data: bytes | str, what: str) -> _T:
    """Decode or raise MostroMessageError."""
    try:
        return decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise MostroMessageError(f"malformed {what}: {exc}") from None


def _single_entry(raw: bytes, what: str) -> tuple[str, msgspec.Raw]:
    """An externally tagged object: exactly one key naming the variant."""
    entries = _decode(_object_decoder, raw, what)
    if len(entries) != 1:
        raise MostroMessageError(f"{what} must have exactly one key, got {len(entries)}")
    ((name, value),) = entries.items()
    return name, value


def _parse_payload(raw: msgspec.Raw) -> Payload | None:
    if bytes(raw) == bytes(_RAW_NULL):
        return None
    name, value = _single_entry(bytes(raw), "payload")
    if name == "dispute":
        dispute_id, info_raw = _decode(_dispute_payload_decoder, bytes(value), "dispute payload")
        info = _decode(_info_decoder, bytes(info_raw), "SolverDisputeInfo")
        return DisputePayload(dispute_id=dispute_id, info=info)
    if name == "cant_do":
        reason = _decode(_reason_decoder, bytes(value), "cant_do payload")
        return CantDoPayload(reason=CANT_DO_NULL_REASON if reason is None else reason)
    if name == "peer":
        peer = _decode(_peer_decoder, bytes(value), "peer payload")
        return PeerPayload(pubkey=peer.pubkey, reputation=peer.reputation)
    if name == "text_message":
        return TextMessagePayload(text=_decode(_text_decoder, bytes(value), "text_message"))
    return OtherPayload(name=name)


def _canonical_bytes(channel: str, kind: _WireKind) -> bytes:
    """The canonical re-serialization of a received message (PROTO-52 fallback)."""
    payload = _decode(_any_decoder, bytes(kind.payload), "payload")
    return encode_mostro_message(
        channel,
        kind.action,
        id=kind.id,
        payload=payload,
        request_id=kind.request_id,
        trade_index=kind.trade_index,
        version=kind.version,
    )


def _check_signature(sender: str, sig_hex: str, raw: bytes, channel: str, kind: _WireKind) -> None:
    if not _SIG_HEX.fullmatch(sig_hex):
        raise MostroMessageError("message signature must be 128 hex characters")
    sig = bytes.fromhex(sig_hex)
    if verify_schnorr(sender, hashlib.sha256(raw).digest(), sig):
        return
    canonical = _canonical_bytes(channel, kind)
    if canonical != raw and verify_schnorr(sender, hashlib.sha256(canonical).digest(), sig):
        return
    raise MostroMessageError("message signature does not verify against the sender")


def parse_mostro_message(unwrapped: Unwrapped) -> MostroMessage:
    """PROTO-52: the rumor content `[message, sig|null]` of an opened gift wrap.

    Any rumor kind is accepted. A signature, when present, is checked over the raw bytes of
    element 0 as received and then over the canonical re-serialization.
    """
    raw_message, raw_sig = _decode(_content_decoder, unwrapped.rumor.content, "rumor content")
    sig = _decode(_sig_decoder, bytes(raw_sig), "message signature")
    channel, raw_kind = _single_entry(bytes(raw_message), "message")
    kind = _decode(_kind_decoder, bytes(raw_kind), "message kind")
    if sig is not None:
        _check_signature(unwrapped.sender, sig, bytes(raw_message), channel, kind)
    return MostroMessage(
        sender=unwrapped.sender,
        channel=channel,
        version=kind.version,
        request_id=kind.request_id,
        trade_index=kind.trade_index,
        id=kind.id,
        action=kind.action,
        payload=_parse_payload(kind.payload),
        signed=sig is not None,
        rumor_created_at=unwrapped.rumor.created_at,
        wrap_id=unwrapped.wrap_id,
    )
