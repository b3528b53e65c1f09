"""Mostro on the wire: kind 38386 dispute events and the gift-wrapped order messages.

Two halves, both pure. The first turns a verified kind 38386 event into a `Dispute` fact
(PROTO-36..39) and refuses hostile input with one typed error per reason (BEY-21), so the
ingest actor can log a stable event name from the type alone. The second speaks Mostro's
message protocol (PROTO-43..53): the signed `admin-take-dispute` request, a lenient parser of
what Mostro sends back, and the take-flow's per-reply decision as a plain function.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
from collections.abc import Callable
from typing import Annotated, Final, Literal, TypeVar

import msgspec

from serbero.protocol.event import DECODE_ERRORS, Event, first_tag_value, make_rumor
from serbero.protocol.keys import Keys, verify_schnorr
from serbero.protocol.nip59 import Unwrapped, WrapInputs, build_gift_wrap

__all__ = [
    "ADMIN_TAKE_DISPUTE",
    "ADMIN_TOOK_DISPUTE",
    "CANT_DO_NULL_REASON",
    "DISPUTE_EVENT_KIND",
    "DISPUTE_ID_MAX_LEN",
    "KNOWN_CANT_DO_REASONS",
    "MOSTRO_MESSAGE_VERSION",
    "MOSTRO_RUMOR_KIND",
    "RESOLUTION_STATUSES",
    "TAKE_TIMEOUT_ERROR",
    "CantDoPayload",
    "Dispute",
    "DisputeError",
    "DisputePayload",
    "DisputeRoute",
    "DisputeStatus",
    "InvalidAssignedSolverError",
    "InvalidDisputeIdError",
    "InvalidInitiatorError",
    "MissingDisputeIdError",
    "MissingStatusTagError",
    "MostroMessage",
    "MostroMessageError",
    "NotADisputeEventError",
    "OtherPayload",
    "Payload",
    "PeerPayload",
    "SolverDisputeInfo",
    "TakeRefused",
    "TakeReplyOutcome",
    "TakeSkip",
    "TakeTook",
    "TextMessagePayload",
    "UnrecognisedStatusError",
    "UserInfo",
    "admin_take_dispute_content",
    "build_admin_take_dispute",
    "canonical_uuid",
    "encode_mostro_message",
    "is_valid_dispute_id",
    "match_take_reply",
    "parse_dispute_event",
    "parse_mostro_message",
    "status_route",
    "take_refusal_error",
]

# --- kind 38386 dispute events ------------------------------------------------------------

DISPUTE_EVENT_KIND: Final = 38386
# BEY-21: Mostro uses UUIDs; anything longer than this is not a dispute id we store.
DISPUTE_ID_MAX_LEN: Final = 128
_INITIATORS: Final = frozenset({"buyer", "seller"})
# Resolution events published after the users settled it themselves may say `unknown`.
_INFORMATIONAL_INITIATORS: Final = frozenset({"buyer", "seller", "unknown"})


class DisputeStatus(enum.StrEnum):
    """PROTO-37: exactly the strings of the mostro-core dispute `Status` enum."""

    INITIATED = "initiated"
    IN_PROGRESS = "in-progress"
    SELLER_REFUNDED = "seller-refunded"
    SETTLED = "settled"
    RELEASED = "released"


RESOLUTION_STATUSES: Final = frozenset(
    {DisputeStatus.SELLER_REFUNDED, DisputeStatus.SETTLED, DisputeStatus.RELEASED}
)

DisputeRoute = Literal["detected", "updated", "resolved"]


class DisputeError(ValueError):
    """A kind 38386 event that Serbero must not act on; the subclass names the reason."""

    def __init__(self, message: str, *, event_id: str) -> None:
        super().__init__(message)
        self.event_id = event_id


class NotADisputeEventError(DisputeError):
    """The event's kind is not 38386 (logged as `ignored_non_dispute_event`)."""

    def __init__(self, message: str, *, event_id: str, kind: int) -> None:
        super().__init__(message, event_id=event_id)
        self.kind = kind


class MissingStatusTagError(DisputeError):
    """No lowercase `s` tag with a value (logged as `missing_status_tag`)."""


class UnrecognisedStatusError(DisputeError):
    """An `s` value outside PROTO-37 (logged as `unrecognised_status_skipped`)."""

    def __init__(self, message: str, *, event_id: str, status: str) -> None:
        super().__init__(message, event_id=event_id)
        self.status = status


class MissingDisputeIdError(DisputeError):
    """No `d` tag with a value (PROTO-39)."""


class InvalidDisputeIdError(DisputeError):
    """A `d` value that is not 1-128 printable characters without whitespace (BEY-21)."""

    def __init__(self, message: str, *, event_id: str, dispute_id: str) -> None:
        super().__init__(message, event_id=event_id)
        self.dispute_id = dispute_id


class InvalidInitiatorError(DisputeError):
    """An `initiated` event whose `initiator` is missing or not buyer/seller (BEY-21)."""


class InvalidAssignedSolverError(DisputeError):
    """An `in-progress` event whose `p` value could forge lines in a DM body (BEY-21)."""


class Dispute(msgspec.Struct, frozen=True):
    """What one verified kind 38386 event says about a dispute."""

    dispute_id: str
    status: DisputeStatus
    # `buyer`/`seller` on `initiated` events (validated); elsewhere informational and None
    # unless it is `buyer`, `seller` or `unknown`.
    initiator: str | None
    mostro_pubkey: str
    event_id: str
    event_timestamp: int
    # First `p` value of an `in-progress` event; None otherwise (texts write `unknown`).
    assigned_solver: str | None


def is_valid_dispute_id(value: str) -> bool:
    """BEY-21: 1-128 printable characters, none of them whitespace or control characters."""
    return (
        0 < len(value) <= DISPUTE_ID_MAX_LEN
        and value.isprintable()
        and not any(ch.isspace() for ch in value)
    )


def status_route(status: DisputeStatus) -> DisputeRoute:
    """PROTO-38: which handler a status goes to."""
    if status is DisputeStatus.INITIATED:
        return "detected"
    if status is DisputeStatus.IN_PROGRESS:
        return "updated"
    return "resolved"


def parse_dispute_event(event: Event) -> Dispute:
    """PROTO-36..39 + BEY-21 on an event already verified per PROTO-9.

    Checks run in routing order (kind, status, id, per-status fields) so the first failure is
    the one the reference would log.
    """
    if event.kind != DISPUTE_EVENT_KIND:
        raise NotADisputeEventError(
            f"kind {event.kind} is not a dispute event", event_id=event.id, kind=event.kind
        )
    raw_status = first_tag_value(event.tags, "s")
    if raw_status is None:
        raise MissingStatusTagError("no `s` tag with a value", event_id=event.id)
    try:
        status = DisputeStatus(raw_status)
    except ValueError:
        raise UnrecognisedStatusError(
            "unrecognised dispute status", event_id=event.id, status=raw_status
        ) from None
    dispute_id = first_tag_value(event.tags, "d")
    if dispute_id is None:
        raise MissingDisputeIdError("no `d` tag with a value", event_id=event.id)
    if not is_valid_dispute_id(dispute_id):
        raise InvalidDisputeIdError(
            "dispute id must be 1-128 printable characters without whitespace",
            event_id=event.id,
            dispute_id=dispute_id,
        )
    initiator = first_tag_value(event.tags, "initiator")
    if status is DisputeStatus.INITIATED:
        if initiator not in _INITIATORS:
            raise InvalidInitiatorError(
                "initiated dispute without a buyer/seller initiator", event_id=event.id
            )
    elif initiator not in _INFORMATIONAL_INITIATORS:
        initiator = None
    assigned_solver = None
    if status is DisputeStatus.IN_PROGRESS:
        assigned_solver = first_tag_value(event.tags, "p")
        if assigned_solver is not None and not is_valid_dispute_id(assigned_solver):
            raise InvalidAssignedSolverError(
                "assigned solver must be 1-128 printable characters without whitespace",
                event_id=event.id,
            )
    return Dispute(
        dispute_id=dispute_id,
        status=status,
        initiator=initiator,
        mostro_pubkey=event.pubkey,
        event_id=event.id,
        event_timestamp=event.created_at,
        assigned_solver=assigned_solver,
    )


# --- Mostro messages ----------------------------------------------------------------------

MOSTRO_MESSAGE_VERSION: Final = 1
# PROTO-46: Mostro messages ride in kind 1 rumors, not NIP-17's kind 14.
MOSTRO_RUMOR_KIND: Final = 1
ADMIN_TAKE_DISPUTE: Final = "admin-take-dispute"
ADMIN_TOOK_DISPUTE: Final = "admin-took-dispute"
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
TAKE_TIMEOUT_ERROR: Final = "timed out waiting for AdminTookDispute response from Mostro"

_AUX_LEN: Final = 32
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


def take_refusal_error(dispute_id: str, reason: str) -> str:
    """PROTO-53 step 3.4: the take-flow's failure text for a `cant-do`."""
    return f"Mostro refused AdminTakeDispute for dispute {dispute_id}: {reason}"


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


def admin_take_dispute_content(
    serbero: Keys, dispute_id: str, *, aux_rand: bytes | None = None
) -> str:
    """PROTO-45/47: the signed rumor content `[<message>,"<sig>"]` for a dispute UUID.

    Built as a literal string so element 0 is exactly the bytes that were signed.
    `aux_rand` defaults to fresh random bytes inside the signer.
    """
    uuid = canonical_uuid(dispute_id)
    if uuid is None:
        raise MostroMessageError("admin-take-dispute needs a UUID dispute id (PROTO-41)")
    message = encode_mostro_message("dispute", ADMIN_TAKE_DISPUTE, id=uuid)
    sig = serbero.sign_schnorr(hashlib.sha256(message).digest(), aux_rand).hex()
    return "[" + message.decode() + ',"' + sig + '"]'


def build_admin_take_dispute(
    serbero: Keys,
    mostro_pk: str,
    dispute_id: str,
    *,
    now: int,
    rand: Callable[[int], bytes] = os.urandom,
    pinned: WrapInputs | None = None,
) -> Event:
    """PROTO-46: the gift wrap carrying `admin-take-dispute` to Mostro.

    Rumor kind 1, no tags, `created_at` = now (Mostro drops rumors older than ~10 s); the wrap
    is addressed with `["p", mostro_pk]` and nothing else. Every random input comes from
    `rand` unless `pinned`; a pinned `aux_rand` also serves the message signature.
    """
    pinned_aux = pinned.aux_rand if pinned is not None else None
    message_aux = pinned_aux if pinned_aux is not None else rand(_AUX_LEN)
    rumor = make_rumor(
        serbero.public_hex,
        created_at=now,
        kind=MOSTRO_RUMOR_KIND,
        tags=[],
        content=admin_take_dispute_content(serbero, dispute_id, aux_rand=message_aux),
    )
    return build_gift_wrap(
        serbero,
        mostro_pk,
        rumor,
        now=now,
        rand=rand,
        pinned=pinned,
    )


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


# --- the take-flow's per-reply decision ---------------------------------------------------


class TakeSkip(msgspec.Struct, frozen=True, tag="skip"):
    """Not the reply we wait for; keep waiting (the reason is for debug logs)."""

    reason: str


class TakeRefused(msgspec.Struct, frozen=True, tag="refused"):
    """Mostro answered `cant-do` for this dispute: the take-flow fails."""

    reason: str


class TakeTook(msgspec.Struct, frozen=True, tag="took"):
    """Mostro confirmed the take; `info` carries the parties' trade keys (PROTO-54 input)."""

    info: SolverDisputeInfo


TakeReplyOutcome = TakeSkip | TakeRefused | TakeTook


def match_take_reply(msg: MostroMessage, *, mostro_pk: str, dispute_id: str) -> TakeReplyOutcome:
    """PROTO-53 steps 3.2-3.6 for one opened message; step 3.7 (chat keys) is the caller's.

    Ids are compared as UUIDs, as Mostro does, so spelling differences do not matter. Stale
    replies for other disputes are skipped; a replayed reply for this dispute is success.
    """
    if msg.sender.lower() != mostro_pk.lower():
        return TakeSkip(reason="sender is not the Mostro node")
    wanted = canonical_uuid(dispute_id)
    if wanted is None:
        return TakeSkip(reason="dispute id is not a UUID")
    if msg.id is None or canonical_uuid(msg.id) != wanted:
        return TakeSkip(reason="message is about another dispute")
    if isinstance(msg.payload, CantDoPayload):
        return TakeRefused(reason=msg.payload.reason)
    if msg.action != ADMIN_TOOK_DISPUTE:
        return TakeSkip(reason=f"action {msg.action!r} is not admin-took-dispute")
    payload = msg.payload
    if (
        not isinstance(payload, DisputePayload)
        or payload.info is None
        or canonical_uuid(payload.dispute_id) != wanted
    ):
        return TakeSkip(reason="admin-took-dispute without dispute info for this dispute")
    return TakeTook(info=payload.info)
