"""One subscription as one relay link sees it: sent or not, its resume point, its catch-up."""

from __future__ import annotations

import enum

import msgspec

from serbero.actors.relay.catchup import CatchUp
from serbero.actors.relay.types import SubscribeCommand
from serbero.protocol.messages import Filter

__all__ = ["SubStatus", "SubscriptionState"]


class SubStatus(enum.Enum):
    IDLE = "idle"  # known, not sent on the current link
    ACTIVE = "active"  # REQ sent and not closed
    CLOSED = "closed"  # CLOSED by the relay; a resend is scheduled or waits for AUTH


class SubscriptionState:
    """One subscription as this relay link sees it."""

    __slots__ = (
        "catchup",
        "closed_attempts",
        "command",
        "generation",
        "newest_created_at",
        "sent_auth_epoch",
        "status",
    )

    def __init__(self, command: SubscribeCommand) -> None:
        self.command = command
        self.status = SubStatus.IDLE
        # The resume point (`filter_to_send`); moves only while no catch-up is running.
        self.newest_created_at: int | None = None
        self.catchup: CatchUp | None = None
        self.closed_attempts = 0
        # Bumped on every REQ; a scheduled resend fires only if nothing was sent since.
        self.generation = 0
        self.sent_auth_epoch = 0

    def filter_to_send(self, now: int) -> Filter:
        """The filter with `since` moved to the newest event seen minus the skew (BEY-7);
        `now` caps an event dated in the future."""
        command = self.command
        if command.resume_skew is None or self.newest_created_at is None:
            return command.filter
        newest = min(self.newest_created_at, now)
        resume = max(0, newest - command.resume_skew)
        if command.filter.since is not None and resume <= command.filter.since:
            return command.filter
        return msgspec.structs.replace(command.filter, since=resume)

    def saw(self, created_at: int) -> None:
        """Track the newest event: held by a running catch-up, else the resume point."""
        catchup = self.catchup
        if catchup is not None:
            if catchup.newest is None or created_at > catchup.newest:
                catchup.newest = created_at
        elif self.newest_created_at is None or created_at > self.newest_created_at:
            self.newest_created_at = created_at

    def end_catchup(self) -> None:
        """The catch-up is over: what it saw becomes the resume point."""
        catchup, self.catchup = self.catchup, None
        if catchup is not None and catchup.newest is not None:
            self.saw(catchup.newest)
