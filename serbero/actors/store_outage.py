"""When the database cannot take the tracker's work for a while (BEY-25).

An operator's `sqlite3` holding the write lock, a full disk or a flaky volume make SQLite
fail in ways that clear by themselves. The tracker keeps such work queued and tries it
again, in order, until it commits; this module says which errors are of that kind, how
long to wait between attempts, and keeps the one record of an outage that health reports
and callers read. An outage is logged twice: a warning when it starts and an info line
when it clears, however many attempts it took.
"""

from __future__ import annotations

from typing import Final

import apsw

from serbero.log import get_logger

__all__ = [
    "RETRY_FIRST_SECONDS",
    "RETRY_MAX_SECONDS",
    "TRANSIENT_ERRORS",
    "StoreOutage",
    "retry_delay",
    "transient_cause",
]

log = get_logger("serbero.tracker")

# SQLite failures that can clear without the request changing: another process holds the
# lock (busy, locked), the disk is full or failing (I/O, full, cannot open a journal), the
# file-locking protocol raced.
TRANSIENT_ERRORS: Final = (
    apsw.BusyError,
    apsw.LockedError,
    apsw.IOError,
    apsw.FullError,
    apsw.CantOpenError,
    apsw.ProtocolError,
)
# Each attempt already waits out SQLite's busy timeout on a lock, so the pause between
# attempts stays short: a released lock is used again within about a second.
RETRY_FIRST_SECONDS: Final = 0.05
RETRY_MAX_SECONDS: Final = 1.0


def transient_cause(exc: BaseException) -> apsw.Error | None:
    """The error that can clear behind `exc` (itself or what it was raised from), or None.

    A savepoint's rollback can fail after SQLite already rolled the whole transaction back
    on an I/O error; the error that reaches us is then the rollback's, the real one its
    context.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TRANSIENT_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def retry_delay(attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1): doubling, capped."""
    return min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2.0 ** min(attempt - 1, 16))


class StoreOutage:
    """Whether the database takes the tracker's work right now; written by the tracker only,
    read by the health snapshot and by callers deciding how to report a slow answer."""

    __slots__ = ("attempts", "error", "unavailable_since")

    def __init__(self) -> None:
        # Wall-clock second the current outage started, None while the database works.
        self.unavailable_since: int | None = None
        self.error: str | None = None
        # Failed attempts in the current outage.
        self.attempts = 0

    @property
    def available(self) -> bool:
        return self.unavailable_since is None

    def failed(self, error: apsw.Error, *, now: int, waiting: int) -> None:
        """An attempt failed with an error that can clear; `waiting`: requests held back."""
        self.attempts += 1
        self.error = str(error)
        if self.unavailable_since is None:
            self.unavailable_since = now
            log.warning(
                "database_unavailable",
                error=self.error,
                reason=type(error).__name__,
                requests_waiting=waiting,
            )

    def cleared(self, *, now: int) -> None:
        """Work committed again; ends the outage if there was one."""
        since = self.unavailable_since
        if since is None:
            return
        log.info(
            "database_available",
            unavailable_seconds=max(0, now - since),
            attempts=self.attempts,
            last_error=self.error,
        )
        self.unavailable_since = None
        self.error = None
        self.attempts = 0
