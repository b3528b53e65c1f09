"""What a relay connection actor exchanges with the pool: commands in, events and states out,
and each relay's answer to a publish."""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from serbero.actors.relay.timing import RESUME_SKEW
from serbero.protocol.event import Event
from serbero.protocol.messages import Filter, RelayOk, message_prefix

__all__ = [
    "LINK_LOST_REASON",
    "NOT_CONNECTED_REASON",
    "Command",
    "InboundEnd",
    "InboundEvent",
    "InboundItem",
    "PublishStatus",
    "RelayPublishOutcome",
    "RelayState",
    "SubscribeCommand",
    "UnsubscribeCommand",
    "clip",
    "outcome_from_ok",
]

# A relay's free text (NOTICE, CLOSED, error reasons) is cut to this length in logs.
LOG_TEXT_LIMIT: Final = 200


def clip(text: str) -> str:
    """`text` cut to LOG_TEXT_LIMIT characters for a log line."""
    return text if len(text) <= LOG_TEXT_LIMIT else text[:LOG_TEXT_LIMIT] + "…"


class RelayState(msgspec.Struct, frozen=True):
    """An observable snapshot of one relay link (logs now, the health endpoint later).

    `since` is the wall-clock second the link last came up or went down (failed attempts
    during an outage keep it, so it says when the outage began); `reconnect_attempts` counts
    reconnects scheduled since the last successful connection; `last_error` is why the link
    last went down (kept while connected again, so the health record can show it).
    """

    url: str
    connected: bool
    since: int
    last_error: str | None = None
    reconnect_attempts: int = 0
    authenticated: bool = False


class PublishStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    NOT_CONNECTED = "not_connected"


class RelayPublishOutcome(msgspec.Struct, frozen=True):
    """One relay's answer to one publish; `message` is the relay's OK text or our reason."""

    relay: str
    status: PublishStatus
    message: str = ""

    @property
    def accepted(self) -> bool:
        """BEY-1: `OK true` and `duplicate:` both mean the relay holds the event."""
        return self.status in (PublishStatus.ACCEPTED, PublishStatus.DUPLICATE)


class SubscribeCommand(msgspec.Struct, frozen=True, tag=True):
    """Open (or replace) a subscription. `once` marks a fetch: ended by EOSE/CLOSED, never
    re-sent. `resume_skew=None` re-sends the filter unchanged (gift wraps: their `created_at`
    is randomised, PROTO-5, so moving `since` would lose them)."""

    sub_id: str
    name: str
    filter: Filter
    resume_skew: int | None = RESUME_SKEW
    once: bool = False


class UnsubscribeCommand(msgspec.Struct, frozen=True, tag=True):
    sub_id: str


Command = SubscribeCommand | UnsubscribeCommand


class InboundEvent(msgspec.Struct, frozen=True):
    """An event as a relay sent it: shape-checked, not yet verified or de-duplicated."""

    relay: str
    sub_id: str
    event: Event


class InboundEnd(msgspec.Struct, frozen=True):
    """A fetch subscription is over on this relay (EOSE, CLOSED, not connected, link lost)."""

    relay: str
    sub_id: str
    reason: str
    connected: bool = True


InboundItem = InboundEvent | InboundEnd

NOT_CONNECTED_REASON: Final = "not connected"
LINK_LOST_REASON: Final = "connection lost before OK"


def outcome_from_ok(relay: str, ok: RelayOk) -> RelayPublishOutcome:
    prefix = message_prefix(ok.message)
    if prefix == "duplicate":
        status = PublishStatus.DUPLICATE
    elif ok.accepted:
        status = PublishStatus.ACCEPTED
    elif prefix == "rate-limited":
        status = PublishStatus.RATE_LIMITED
    else:
        status = PublishStatus.REJECTED
    return RelayPublishOutcome(relay, status, ok.message)
