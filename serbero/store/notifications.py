"""`notifications` rows: one per recipient attempt, with the reference's exact values (CORE-37).

The outbox completion writes these for the DMs it tracks; senders that work outside the
outbox (the escalation send loop) record theirs with `record_notifications`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

import apsw
import msgspec

from serbero.store.errors import InvalidRecord
from serbero.store.transaction import transaction


class NotifType(enum.StrEnum):
    """`notifications.notif_type` values (the reference's, CORE-37, plus BEY-5's `resolution`)."""

    INITIAL = "initial"
    RENOTIFICATION = "re-notification"
    ASSIGNMENT = "assignment"
    MEDIATION_SUMMARY = "mediation_summary"
    MEDIATION_ESCALATION_RECOMMENDED = "mediation_escalation_recommended"
    MEDIATION_RESOLUTION_REPORT = "mediation_resolution_report"
    ESCALATION = "escalation"
    RESOLUTION = "resolution"


STATUS_SENT: Final = "sent"
STATUS_FAILED: Final = "failed"

FORBIDDEN_NOTIF_TYPES: Final = frozenset({"admin_settle", "admin_cancel"})


class NotificationRecord(msgspec.Struct, frozen=True):
    """One attempt to DM one recipient; `solver_pubkey` in lowercase hex (BEY-12), as written
    only when it does not parse (AS-3)."""

    dispute_id: str
    solver_pubkey: str
    sent_at: int
    status: str
    notif_type: str
    error_message: str | None = None


def _validate(record: NotificationRecord) -> None:
    if record.notif_type in FORBIDDEN_NOTIF_TYPES:
        raise InvalidRecord(f"notif_type {record.notif_type!r} is never written (CORE-1)")
    if record.status == STATUS_SENT:
        if record.error_message is not None:
            raise InvalidRecord("a sent notification carries no error_message (CORE-37)")
    elif record.status == STATUS_FAILED:
        if not record.error_message:
            raise InvalidRecord("a failed notification needs its error_message (CORE-37)")
    else:
        raise InvalidRecord(f"notification status must be sent or failed, not {record.status!r}")


def insert_notification(conn: apsw.Connection, record: NotificationRecord) -> int:
    """Append one row and return its id (the caller owns the transaction)."""
    _validate(record)
    conn.execute(
        "INSERT INTO notifications"
        " (dispute_id, solver_pubkey, sent_at, status, error_message, notif_type)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            record.dispute_id,
            record.solver_pubkey,
            record.sent_at,
            record.status,
            record.error_message,
            record.notif_type,
        ),
    )
    return int(conn.last_insert_rowid())


def record_notifications(
    conn: apsw.Connection, records: Sequence[NotificationRecord]
) -> tuple[int, ...]:
    """Append several attempt rows in one transaction; returns their ids in order."""
    with transaction(conn):
        return tuple(insert_notification(conn, record) for record in records)
