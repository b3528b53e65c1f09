"""Kind 38386 dispute events: what Mostro publishes about a dispute, as a `Dispute` fact.

A verified event becomes a `Dispute` (PROTO-36..39); hostile input is refused with one typed
error per reason (BEY-21), so the ingest actor can log a stable event name from the type alone.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

import msgspec

from serbero.protocol.event import Event, first_tag_value

__all__ = [
    "DISPUTE_EVENT_KIND",
    "DISPUTE_ID_MAX_LEN",
    "RESOLUTION_STATUSES",
    "Dispute",
    "DisputeError",
    "DisputeRoute",
    "DisputeStatus",
    "InvalidAssignedSolverError",
    "InvalidDisputeIdError",
    "InvalidInitiatorError",
    "MissingDisputeIdError",
    "MissingStatusTagError",
    "NotADisputeEventError",
    "UnrecognisedStatusError",
    "is_valid_dispute_id",
    "parse_dispute_event",
    "status_route",
]

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
