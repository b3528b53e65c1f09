"""`serbero status`: is the daemon alive, connected and keeping up (BEY-10)?

Everything comes from the database: the health record the daemon flushes (relay states,
heartbeat, last dispute event; our v6 tables), the dispute counts, the outbox, the ESC-12
handoff predicate and mediation's live sessions and escalations. A reference (v5) database
has no health record; the report then says so instead of guessing, and counts what the
reference tables hold.

Health verdict (the exit status of `serbero status`): healthy when the heartbeat is younger
than the stale limit, at least one relay was connected at the last flush, and no other
process holds the database's write lock (the daemon's decisions would wait for it, and its
health record cannot say so meanwhile: see `write_lock`). A daemon that shut down cleanly
recorded it (`stopped_at`) and is reported stopped at once; a crash leaves no such record
and shows as a heartbeat going stale.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from serbero.ops.database import ReadOnlyDatabase
from serbero.ops.mediation import MediationStatus, read_mediation_status
from serbero.ops.write_lock import write_lock_holder
from serbero.store.escalation import count_pending_handoffs
from serbero.store.health import (
    KEY_HEARTBEAT_AT,
    KEY_LAST_DISPUTE_EVENT_AT,
    KEY_LAST_DISPUTE_EVENT_ID,
    KEY_STARTED_AT,
    KEY_STOPPED_AT,
    RELAY_CONNECTED,
    read_health,
)
from serbero.store.lifecycle import LifecycleState

__all__ = [
    "HEALTH_TABLES",
    "STALE_HEARTBEAT_SECONDS",
    "HeartbeatStatus",
    "LastDisputeEvent",
    "OutboxStatus",
    "RelayStatus",
    "StatusReport",
    "read_status",
]

# A heartbeat older than this means the daemon is gone or stuck. The daemon flushes its
# health record far more often; the margin absorbs a busy disk.
STALE_HEARTBEAT_SECONDS: Final = 120
HEALTH_TABLES: Final = ("serbero_relay_health", "serbero_daemon_health")
OUTBOX_TABLE: Final = "notification_outbox"

PROBLEM_NO_HEALTH_RECORD: Final = "no health record: the daemon never ran on this database"
PROBLEM_NO_RELAY: Final = "no relay connected"
PROBLEM_STOPPED: Final = "stopped: the daemon shut down cleanly"
PROBLEM_WRITE_LOCK: Final = (
    "database unavailable: process {pid} holds its write lock; the daemon's decisions wait"
)


class RelayStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One relay as the daemon last recorded it; `since` is when it entered `state`."""

    url: str
    state: str
    connected: bool
    since: int
    last_event_at: int | None


class HeartbeatStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The daemon's last sign of life; `stale` once older than `stale_after` seconds."""

    at: int
    age: int
    stale: bool
    stale_after: int
    started_at: int | None


class LastDisputeEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The newest dispute event seen: from the health record, else the newest `disputes` row."""

    event_id: str | None
    at: int
    age: int
    source: Literal["health", "disputes"]


class OutboxStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Notifications decided but not yet delivered (`pending`), of which `in_flight` are claimed."""

    pending: int
    in_flight: int
    failed: int
    oldest_pending_at: int | None


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """The whole `serbero status` answer; None fields are parts the database cannot tell.
    `write_lock_holder`: the process holding the database's write lock, while one does.
    `mediation`: live sessions and escalations (None without the mediation tables)."""

    database: str
    schema_version: int
    now: int
    healthy: bool
    problems: tuple[str, ...]
    relays: tuple[RelayStatus, ...] | None
    relays_connected: int
    heartbeat: HeartbeatStatus | None
    # When the daemon last shut down cleanly, if it has not started since.
    stopped_at: int | None
    last_dispute_event: LastDisputeEvent | None
    disputes_total: int
    lifecycle_counts: dict[str, int]
    outbox: OutboxStatus | None
    pending_handoffs: int
    unavailable: tuple[str, ...]
    write_lock_holder: int | None = None
    mediation: MediationStatus | None = None


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _lifecycle_counts(db: ReadOnlyDatabase) -> dict[str, int]:
    """Every lifecycle state (zero included), then any hand-edited state found in the table."""
    counts = {state.value: 0 for state in LifecycleState}
    for state, count in db.conn.execute(
        "SELECT lifecycle_state, COUNT(*) FROM disputes GROUP BY lifecycle_state"
    ):
        counts[str(state)] = int(count)
    return counts


def _outbox(db: ReadOnlyDatabase) -> OutboxStatus | None:
    if not db.has(OUTBOX_TABLE):
        return None
    row = db.conn.execute(
        "SELECT COALESCE(SUM(state = 'pending'), 0),"
        " COALESCE(SUM(state = 'pending' AND claimed_at IS NOT NULL), 0),"
        " COALESCE(SUM(state = 'failed'), 0),"
        " MIN(CASE WHEN state = 'pending' THEN created_at END)"
        f" FROM {OUTBOX_TABLE}"
    ).fetchone()
    pending, in_flight, failed, oldest = row if row is not None else (0, 0, 0, None)
    return OutboxStatus(
        pending=int(pending),
        in_flight=int(in_flight),
        failed=int(failed),
        oldest_pending_at=None if oldest is None else int(oldest),
    )


def _pending_handoffs(db: ReadOnlyDatabase) -> int:
    """ESC-12: `handoff_prepared` rows with neither a dispatch row nor a parse-failed event."""
    if not (db.has("mediation_events") and db.has("escalation_dispatches")):
        return 0
    return count_pending_handoffs(db.conn)


def _newest_dispute_event(db: ReadOnlyDatabase, now: int) -> LastDisputeEvent | None:
    row = db.conn.execute(
        "SELECT event_id, event_timestamp FROM disputes"
        " ORDER BY event_timestamp DESC, detected_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    at = int(row[1])
    return LastDisputeEvent(event_id=str(row[0]), at=at, age=max(0, now - at), source="disputes")


def read_status(
    db: ReadOnlyDatabase, now: int, *, stale_after: int = STALE_HEARTBEAT_SECONDS
) -> StatusReport:
    """Collect the status report at wall-clock second `now`."""
    unavailable = [table for table in (*HEALTH_TABLES, OUTBOX_TABLE) if not db.has(table)]
    problems: list[str] = []
    relays: tuple[RelayStatus, ...] | None = None
    heartbeat: HeartbeatStatus | None = None
    last_event: LastDisputeEvent | None = None
    stopped_at: int | None = None
    if all(db.has(table) for table in HEALTH_TABLES):
        record = read_health(db.conn)
        relays = tuple(
            RelayStatus(
                url=relay.url,
                state=relay.state,
                connected=relay.state == RELAY_CONNECTED,
                since=relay.last_change_at,
                last_event_at=relay.last_event_at,
            )
            for relay in record.relays
        )
        stopped_at = _int_or_none(record.values.get(KEY_STOPPED_AT))
        beat = _int_or_none(record.values.get(KEY_HEARTBEAT_AT))
        if beat is not None:
            age = max(0, now - beat)
            heartbeat = HeartbeatStatus(
                at=beat,
                age=age,
                stale=age > stale_after,
                stale_after=stale_after,
                started_at=_int_or_none(record.values.get(KEY_STARTED_AT)),
            )
        event_at = _int_or_none(record.values.get(KEY_LAST_DISPUTE_EVENT_AT))
        if event_at is not None:
            last_event = LastDisputeEvent(
                event_id=record.values.get(KEY_LAST_DISPUTE_EVENT_ID),
                at=event_at,
                age=max(0, now - event_at),
                source="health",
            )
    if last_event is None:
        last_event = _newest_dispute_event(db, now)
    connected = sum(relay.connected for relay in relays or ())
    if stopped_at is not None:
        problems.append(PROBLEM_STOPPED)
    elif heartbeat is None:
        problems.append(PROBLEM_NO_HEALTH_RECORD)
    else:
        if heartbeat.stale:
            problems.append(f"heartbeat stale: {heartbeat.age}s old (limit {stale_after}s)")
        if connected == 0:
            problems.append(PROBLEM_NO_RELAY)
    holder = write_lock_holder(db.path)
    if holder is not None:
        problems.append(PROBLEM_WRITE_LOCK.format(pid=holder))
    counts = _lifecycle_counts(db)
    return StatusReport(
        database=db.path,
        schema_version=db.schema_version,
        now=now,
        healthy=not problems,
        problems=tuple(problems),
        relays=relays,
        relays_connected=connected,
        heartbeat=heartbeat,
        stopped_at=stopped_at,
        last_dispute_event=last_event,
        disputes_total=sum(counts.values()),
        lifecycle_counts=counts,
        outbox=_outbox(db),
        pending_handoffs=_pending_handoffs(db),
        unavailable=tuple(unavailable),
        write_lock_holder=holder,
        mediation=read_mediation_status(db),
    )
