"""Disputes: detection, assignment, resolution, the re-notification timer's reads and writes.

Each public step is one transaction that records a dispute event's effect together with the
DMs it owes (outbox rows), so a crash never leaves a decision without its notifications
(BEY-2). Callers pass finished DM bodies; the store never formats text.

Late discovery (BEY-4): an `in-progress` or terminal event for a dispute we never saw
creates its row directly in `taken` / `resolved`. Its transition row has `from_state` NULL
(the column allows it): we never observed an earlier state, and NULL marks such rows apart
from the reference's, whose `from_state` is never NULL. `dispute_status` holds the status
of the event that created the row (not `initiated`, which we never saw). Late discovery
queues no DM at all: solvers were never told about the dispute, so neither "new dispute"
nor the take or closing notice means anything to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal, cast

import apsw
import msgspec

from serbero.store.errors import InvalidRecord
from serbero.store.lifecycle import (
    TRIGGER_RESOLVED_EXTERNALLY,
    LifecycleState,
    apply_transition,
    insert_transition_row,
)
from serbero.store.mediation import has_mediation_context, supersede_live_session
from serbero.store.notifications import NotifType
from serbero.store.outbox import OutboxMessage, OutboxRow, abandon_obsolete, claim_new, enqueue
from serbero.store.transaction import transaction

SINCE_SKEW_SECONDS: Final = 60
STATUS_INITIATED: Final = "initiated"
STATUS_IN_PROGRESS: Final = "in-progress"
RESOLUTION_STATUSES: Final = frozenset({"seller-refunded", "settled", "released"})
RENOTIFICATION_CAUSE: Final = "renotification"

_DISPUTE_COLUMNS: Final = (
    "dispute_id, event_id, mostro_pubkey, initiator_role, dispute_status, event_timestamp,"
    " detected_at, lifecycle_state, assigned_solver, last_notified_at, last_state_change"
)


class Dispute(msgspec.Struct, frozen=True):
    """A `disputes` row; `lifecycle_state` is the raw string (operators may have edited it)."""

    dispute_id: str
    event_id: str
    mostro_pubkey: str
    initiator_role: str
    dispute_status: str
    event_timestamp: int
    detected_at: int
    lifecycle_state: str
    assigned_solver: str | None
    last_notified_at: int | None
    last_state_change: int | None


class DisputeEvent(msgspec.Struct, frozen=True):
    """The facts of one kind-38386 event, as ingest extracted and validated them.

    `status` is the `s` value; `initiator_role` the `initiator` tag value (`unknown` when a
    non-`initiated` event has none; only used when the event creates the row).
    """

    dispute_id: str
    event_id: str
    mostro_pubkey: str
    event_timestamp: int
    status: str
    initiator_role: str


class DetectionResult(msgspec.Struct, frozen=True):
    """`inserted` False means a duplicate: nothing was written (CORE-30). `claimed`: the
    rows this transaction also claimed for immediate delivery (see `claim_new`)."""

    inserted: bool
    outbox_ids: tuple[int, ...]
    claimed: tuple[OutboxRow, ...] = ()


class AssignmentResult(msgspec.Struct, frozen=True):
    """`taken`: new/notified -> taken, DMs queued. `noop`: already taken or later (CORE-46).

    `discovered`: the dispute was unknown and now exists in `taken` (BEY-4).
    `superseded_session_id`: the live mediation session a human's take closed (Q-6), and
    `report_outbox_ids` the mediation report it queued.
    """

    outcome: Literal["taken", "noop", "discovered"]
    from_state: str | None
    state: str
    outbox_ids: tuple[int, ...]
    abandoned: int
    claimed: tuple[OutboxRow, ...] = ()
    superseded_session_id: str | None = None
    report_outbox_ids: tuple[int, ...] = ()


class ResolutionResult(msgspec.Struct, frozen=True):
    """`resolved`: moved to resolved, notices queued. `noop`: already resolved (CORE-49).

    `discovered`: the dispute was unknown and now exists in `resolved` (BEY-4).
    `superseded_session_id`: the live mediation session this closed, if any.
    `has_mediation_context`: whether CORE-49 step 5 owes a resolution report.
    """

    outcome: Literal["resolved", "noop", "discovered"]
    from_state: str | None
    superseded_session_id: str | None
    has_mediation_context: bool
    outbox_ids: tuple[int, ...]
    abandoned: int
    claimed: tuple[OutboxRow, ...] = ()


class UnattendedDispute(msgspec.Struct, frozen=True):
    """A `notified` dispute due for re-notification (CORE-52)."""

    dispute_id: str
    event_timestamp: int
    last_notified_at: int


class RenotificationResult(msgspec.Struct, frozen=True):
    """`enqueued`: DMs queued. `not_due`: no longer notified-and-due (BEY-6).

    `already_pending`: every solver is still owed an earlier re-notification, none added.
    `held_back`: solvers skipped because their earlier reminder is still owed.
    """

    outcome: Literal["enqueued", "not_due", "already_pending"]
    outbox_ids: tuple[int, ...]
    held_back: int = 0


class Since(msgspec.Struct, frozen=True):
    """The subscription's `since` (CORE-20/21); `last_seen_event_ts` None on a cold start."""

    since: int
    last_seen_event_ts: int | None


def _require_status(event: DisputeEvent, allowed: frozenset[str]) -> None:
    if event.status not in allowed:
        raise InvalidRecord(f"event status {event.status!r} not in {sorted(allowed)}")


def get_dispute(conn: apsw.Connection, dispute_id: str) -> Dispute | None:
    """The dispute's row, or None."""
    row = conn.execute(
        f"SELECT {_DISPUTE_COLUMNS} FROM disputes WHERE dispute_id = ?", (dispute_id,)
    ).fetchone()
    return None if row is None else Dispute(*row)


def _insert_dispute(
    conn: apsw.Connection, event: DisputeEvent, lifecycle_state: str, now: int, *, dedup: bool
) -> bool:
    conflict = " ON CONFLICT(dispute_id) DO NOTHING" if dedup else ""
    conn.execute(
        "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
        " dispute_status, event_timestamp, detected_at, lifecycle_state) VALUES"
        f" (?, ?, ?, ?, ?, ?, ?, ?){conflict}",
        (
            event.dispute_id,
            event.event_id,
            event.mostro_pubkey,
            event.initiator_role,
            event.status,
            event.event_timestamp,
            now,
            str(lifecycle_state),
        ),
    )
    return int(conn.changes()) == 1


def _discover(
    conn: apsw.Connection,
    event: DisputeEvent,
    state: str,
    trigger: str,
    now: int,
    assigned_solver: str | None = None,
) -> None:
    """BEY-4: create an unseen dispute directly in `state`, with a NULL-origin transition row."""
    _insert_dispute(conn, event, state, now, dedup=False)
    conn.execute(
        "UPDATE disputes SET last_state_change = ?, assigned_solver = ? WHERE dispute_id = ?",
        (now, assigned_solver, event.dispute_id),
    )
    insert_transition_row(conn, event.dispute_id, None, str(state), trigger, now)


def record_detected(
    conn: apsw.Connection,
    event: DisputeEvent,
    messages: Sequence[OutboxMessage],
    now: int,
    *,
    claim: int = 0,
) -> DetectionResult:
    """CORE-30 with BEY-2: insert the dispute (`new`) and its initial DMs, or nothing at all.

    The dedup key is `dispute_id` only; a known dispute is never updated. Any other clash
    (e.g. the same `event_id` under another dispute) raises and writes nothing. Up to
    `claim` of the DMs are claimed for immediate delivery in the same transaction.
    """
    _require_status(event, frozenset({STATUS_INITIATED}))
    with transaction(conn):
        if not _insert_dispute(conn, event, LifecycleState.NEW, now, dedup=True):
            return DetectionResult(inserted=False, outbox_ids=())
        ids, claimed = _enqueue_and_claim(conn, event, NotifType.INITIAL, messages, now, claim)
    return DetectionResult(inserted=True, outbox_ids=ids, claimed=claimed)


def record_assignment(
    conn: apsw.Connection,
    event: DisputeEvent,
    assigned_solver: str | None,
    messages: Sequence[OutboxMessage],
    now: int,
    *,
    claim: int = 0,
) -> AssignmentResult:
    """CORE-47 steps 2-5 and 7 as one transaction (or BEY-4 discovery of an unseen dispute).

    From `new`/`notified`: transition to `taken` (trigger = the event id), set
    `assigned_solver` when the event names one, queue the assignment DMs, and abandon the
    initial / re-notification DMs that are still waiting. `last_notified_at` is untouched.
    Up to `claim` of the DMs are claimed for immediate delivery (`claim_new`).
    """
    _require_status(event, frozenset({STATUS_IN_PROGRESS}))
    with transaction(conn):
        current = get_dispute(conn, event.dispute_id)
        if current is None:
            _discover(conn, event, LifecycleState.TAKEN, event.event_id, now, assigned_solver)
            return AssignmentResult(
                outcome="discovered",
                from_state=None,
                state=LifecycleState.TAKEN,
                outbox_ids=(),
                abandoned=0,
            )
        if current.lifecycle_state not in (LifecycleState.NEW, LifecycleState.NOTIFIED):
            return AssignmentResult(
                outcome="noop",
                from_state=current.lifecycle_state,
                state=current.lifecycle_state,
                outbox_ids=(),
                abandoned=0,
            )
        apply_transition(conn, event.dispute_id, LifecycleState.TAKEN, event.event_id, now)
        if assigned_solver is not None:
            conn.execute(
                "UPDATE disputes SET assigned_solver = ? WHERE dispute_id = ?",
                (assigned_solver, event.dispute_id),
            )
        abandoned = abandon_obsolete(conn, now, event.dispute_id)
        ids, claimed = _enqueue_and_claim(conn, event, NotifType.ASSIGNMENT, messages, now, claim)
    return AssignmentResult(
        outcome="taken",
        from_state=current.lifecycle_state,
        state=LifecycleState.TAKEN,
        outbox_ids=ids,
        abandoned=abandoned,
        claimed=claimed,
    )


def record_resolution(
    conn: apsw.Connection,
    event: DisputeEvent,
    messages: Sequence[OutboxMessage],
    now: int,
    *,
    claim: int = 0,
) -> ResolutionResult:
    """CORE-49 step 4 with BEY-5 as one transaction (or BEY-4 discovery of an unseen dispute).

    From any non-resolved state: `resolved` + transition row (trigger
    `dispute_resolved_externally`), the latest live mediation session closed as superseded
    (MED-140), the closing notices queued (`notif_type` `resolution`; pass none when
    `[notifications].resolution` is off) and the DMs that became pointless abandoned. Up to
    `claim` of the notices are claimed for immediate delivery (`claim_new`).
    """
    _require_status(event, RESOLUTION_STATUSES)
    with transaction(conn):
        current = get_dispute(conn, event.dispute_id)
        if current is None:
            _discover(conn, event, LifecycleState.RESOLVED, TRIGGER_RESOLVED_EXTERNALLY, now)
            return ResolutionResult(
                outcome="discovered",
                from_state=None,
                superseded_session_id=None,
                has_mediation_context=has_mediation_context(conn, event.dispute_id),
                outbox_ids=(),
                abandoned=0,
            )
        if current.lifecycle_state == LifecycleState.RESOLVED:
            return ResolutionResult(
                outcome="noop",
                from_state=current.lifecycle_state,
                superseded_session_id=None,
                has_mediation_context=has_mediation_context(conn, event.dispute_id),
                outbox_ids=(),
                abandoned=0,
            )
        apply_transition(
            conn, event.dispute_id, LifecycleState.RESOLVED, TRIGGER_RESOLVED_EXTERNALLY, now
        )
        session_id = supersede_live_session(
            conn, event.dispute_id, event.event_id, event.status, now
        )
        abandoned = abandon_obsolete(conn, now, event.dispute_id)
        ids, claimed = _enqueue_and_claim(conn, event, NotifType.RESOLUTION, messages, now, claim)
        context = has_mediation_context(conn, event.dispute_id)
    return ResolutionResult(
        outcome="resolved",
        from_state=current.lifecycle_state,
        superseded_session_id=session_id,
        has_mediation_context=context,
        outbox_ids=ids,
        abandoned=abandoned,
        claimed=claimed,
    )


def list_unattended(
    conn: apsw.Connection, now: int, renotification_seconds: int
) -> tuple[UnattendedDispute, ...]:
    """CORE-52: `notified` disputes with `last_notified_at < now - renotification_seconds`.

    Oldest notification first, so a long list is worked fairly.
    """
    cutoff = now - renotification_seconds
    rows = conn.execute(
        "SELECT dispute_id, event_timestamp, last_notified_at FROM disputes"
        " WHERE lifecycle_state = 'notified' AND last_notified_at IS NOT NULL"
        " AND last_notified_at < ? ORDER BY last_notified_at, dispute_id",
        (cutoff,),
    ).fetchall()
    return tuple(UnattendedDispute(*cast(tuple[Any, ...], row)) for row in rows)


def enqueue_renotification(
    conn: apsw.Connection,
    dispute_id: str,
    *,
    cycle_now: int,
    renotification_seconds: int,
    messages: Sequence[OutboxMessage],
    now: int,
) -> RenotificationResult:
    """BEY-6: re-check "still notified and due" and queue the re-notifications, atomically.

    `cycle_now` is the timer cycle's single `now` (CORE-52); a dispute that was taken, or
    re-notified, since the cycle's query gets nothing. A solver still owed an earlier
    re-notification (its relays refuse it) gets no second one stacked on it; the other
    solvers get theirs, so one unreachable solver holds back only its own reminders.
    """
    cutoff = cycle_now - renotification_seconds
    with transaction(conn):
        due = conn.execute(
            "SELECT 1 FROM disputes WHERE dispute_id = ? AND lifecycle_state = 'notified'"
            " AND last_notified_at IS NOT NULL AND last_notified_at < ?",
            (dispute_id, cutoff),
        ).fetchone()
        if due is None:
            return RenotificationResult(outcome="not_due", outbox_ids=())
        owed = {
            str(row[0])
            for row in conn.execute(
                "SELECT DISTINCT solver_pubkey FROM notification_outbox"
                " WHERE state = 'pending' AND dispute_id = ? AND notif_type = ?",
                (dispute_id, str(NotifType.RENOTIFICATION)),
            )
        }
        fresh = [message for message in messages if message.solver_pubkey not in owed]
        held_back = len(messages) - len(fresh)
        if not fresh:
            return RenotificationResult(
                outcome="already_pending", outbox_ids=(), held_back=held_back
            )
        ids = enqueue(
            conn,
            dispute_id=dispute_id,
            notif_type=NotifType.RENOTIFICATION,
            cause=RENOTIFICATION_CAUSE,
            messages=fresh,
            now=now,
        )
    return RenotificationResult(outcome="enqueued", outbox_ids=ids, held_back=held_back)


def compute_since(conn: apsw.Connection, now: int) -> Since:
    """Warm start: `max(0, MAX(event_timestamp) - 60)`; cold start (no rows): `now`."""
    row = conn.execute("SELECT MAX(event_timestamp) FROM disputes").fetchone()
    if row is None or row[0] is None:
        return Since(since=now, last_seen_event_ts=None)
    last = int(row[0])
    return Since(since=max(0, last - SINCE_SKEW_SECONDS), last_seen_event_ts=last)


def _enqueue_and_claim(
    conn: apsw.Connection,
    event: DisputeEvent,
    notif_type: NotifType,
    messages: Sequence[OutboxMessage],
    now: int,
    claim: int,
) -> tuple[tuple[int, ...], tuple[OutboxRow, ...]]:
    """The DMs `event` caused, queued, and up to `claim` of them claimed for the sender's
    hot path (`claim_new`); the queued ids and the claimed rows. Caller owns the tx."""
    ids = enqueue(
        conn,
        dispute_id=event.dispute_id,
        notif_type=notif_type,
        cause=event.event_id,
        messages=messages,
        now=now,
    )
    return ids, claim_new(conn, ids, now, claim)
