"""Typed store errors: what a store step can fail with, as the tracker hands it back.

Callers catch `StoreError` for "the step did not happen"; the subclasses say why, so the
daemon can log the right event (`transition_failed`, `persistence_failed`, ...) without
parsing messages.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every failure a store step reports; nothing of the step was committed."""


class StoreFailure(StoreError):
    """SQLite itself failed (locked, unwritable, constraint clash, ...) or the step had a bug."""


class InvalidTransition(StoreError):
    """A lifecycle change outside the CORE-43 table; the dispute row is left as it was."""

    def __init__(self, dispute_id: str, from_state: str, to_state: str) -> None:
        super().__init__(
            f"invalid lifecycle transition {from_state} -> {to_state} for {dispute_id}"
        )
        self.dispute_id = dispute_id
        self.from_state = from_state
        self.to_state = to_state


class UnknownDispute(StoreError):
    """The step needs a `disputes` row that does not exist."""

    def __init__(self, dispute_id: str) -> None:
        super().__init__(f"unknown dispute {dispute_id}")
        self.dispute_id = dispute_id


class UnknownSession(StoreError):
    """The step needs a `mediation_sessions` row that does not exist."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"unknown mediation session {session_id}")
        self.session_id = session_id


class UnknownOutboxRow(StoreError):
    """A completion names an outbox row that does not exist."""

    def __init__(self, outbox_id: int) -> None:
        super().__init__(f"unknown outbox row {outbox_id}")
        self.outbox_id = outbox_id


class InvalidRecord(StoreError, ValueError):
    """The caller asked to write a value the schema's conventions forbid (CORE-1, CORE-37)."""
