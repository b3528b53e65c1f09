"""Notices still owed from before the switch, found once at start-up (#12 item 5).

The reference gives up on a DM no relay accepted: a dispute whose initial notice reached
nobody stays `new` for good, and an escalation dispatch whose DMs all failed is recorded
`send_failed` and never sent again. Our own decisions always leave outbox rows, so a
`new` dispute, or a `send_failed` dispatch, with no outbox row behind it is the reference's
unfinished work; queueing its DMs leaves rows behind, so each is taken up once. The sender
then works them like any other (backoff, until delivered or no longer needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

import apsw
import msgspec

from serbero.store.disputes import Dispute, get_dispute
from serbero.store.escalation import STATUS_SEND_FAILED, queue_handoff_retries
from serbero.store.lifecycle import LifecycleState
from serbero.store.notifications import NotifType
from serbero.store.outbox import OutboxMessage, enqueue
from serbero.store.transaction import transaction

OWED_CAUSE: Final = "owed-at-start"

_NO_OUTBOX_ROW: Final = (
    "NOT EXISTS (SELECT 1 FROM notification_outbox o WHERE o.dispute_id = d.dispute_id)"
)
_NO_RETRY_ROW: Final = (
    "NOT EXISTS (SELECT 1 FROM notification_outbox o WHERE o.handoff_event_id = x.handoff_event_id)"
)


class OwedInitial(msgspec.Struct, frozen=True):
    """An owed dispute's initial notice, ready to queue."""

    dispute_id: str
    messages: tuple[OutboxMessage, ...]


class OwedDispatch(msgspec.Struct, frozen=True):
    """A `send_failed` dispatch of a live dispute with no retry queued: its recipients (as
    recorded, in send order), when it went out, and its handoff's package."""

    dispatch_id: str
    dispute_id: str
    handoff_event_id: int
    recipients: tuple[str, ...]
    dispatched_at: int
    payload_json: str


class OwedRetry(msgspec.Struct, frozen=True):
    """An owed dispatch's DM body, ready to queue for its recipients."""

    dispatch: OwedDispatch
    body: str


class OwedWork(msgspec.Struct, frozen=True):
    """Everything owed at start-up."""

    initial: tuple[Dispute, ...]
    dispatches: tuple[OwedDispatch, ...]


class OwedQueued(msgspec.Struct, frozen=True):
    """How many disputes and dispatches got their DMs queued."""

    initial: int
    dispatches: int


def owed_initial_notices(conn: apsw.Connection) -> tuple[Dispute, ...]:
    """Disputes in `new` that no decision of ours ever queued a DM for, oldest first."""
    ids = conn.execute(
        f"SELECT d.dispute_id FROM disputes d WHERE d.lifecycle_state = ? AND {_NO_OUTBOX_ROW}"
        " ORDER BY d.detected_at, d.dispute_id",
        (LifecycleState.NEW,),
    ).fetchall()
    found = (get_dispute(conn, str(row[0])) for row in ids)
    return tuple(dispute for dispute in found if dispute is not None)


def find_owed(conn: apsw.Connection) -> OwedWork:
    """What the reference left unfinished (read only)."""
    return OwedWork(initial=owed_initial_notices(conn), dispatches=owed_dispatches(conn))


def queue_owed(
    conn: apsw.Connection,
    initial: Sequence[OwedInitial],
    retries: Sequence[OwedRetry],
    now: int,
) -> OwedQueued:
    """Queue each owed notice in its own transaction; what is no longer owed is skipped."""
    queued_initial = sum(
        bool(queue_owed_initial(conn, owed.dispute_id, owed.messages, now)) for owed in initial
    )
    queued_dispatches = sum(
        bool(queue_owed_dispatch(conn, retry.dispatch, retry.body)) for retry in retries
    )
    return OwedQueued(initial=queued_initial, dispatches=queued_dispatches)


def queue_owed_initial(
    conn: apsw.Connection, dispute_id: str, messages: Sequence[OutboxMessage], now: int
) -> tuple[int, ...]:
    """Queue the initial notice of one owed dispute; () when it is owed no longer (taken
    meanwhile, or queued already)."""
    with transaction(conn):
        still = conn.execute(
            f"SELECT 1 FROM disputes d WHERE d.dispute_id = ? AND d.lifecycle_state = ?"
            f" AND {_NO_OUTBOX_ROW}",
            (dispute_id, LifecycleState.NEW),
        ).fetchone()
        if still is None:
            return ()
        return enqueue(
            conn,
            dispute_id=dispute_id,
            notif_type=NotifType.INITIAL,
            cause=OWED_CAUSE,
            messages=messages,
            now=now,
        )


def owed_dispatches(conn: apsw.Connection) -> tuple[OwedDispatch, ...]:
    """`send_failed` dispatches of unresolved disputes with no retry queued, oldest first."""
    rows = conn.execute(
        "SELECT x.dispatch_id, x.dispute_id, x.handoff_event_id, x.target_solver,"
        " x.dispatched_at, h.payload_json FROM escalation_dispatches x"
        " JOIN disputes d ON d.dispute_id = x.dispute_id"
        " JOIN mediation_events h ON h.id = x.handoff_event_id"
        f" WHERE x.status = ? AND d.lifecycle_state != ? AND {_NO_RETRY_ROW}"
        " ORDER BY x.dispatched_at, x.handoff_event_id",
        (STATUS_SEND_FAILED, LifecycleState.RESOLVED),
    ).fetchall()
    owed = []
    for row in rows:
        dispatch_id, dispute_id, handoff_id, targets, dispatched_at, payload = cast(
            tuple[str, str, int, str, int, str], row
        )
        recipients = tuple(target for target in targets.split(",") if target)
        owed.append(
            OwedDispatch(dispatch_id, dispute_id, handoff_id, recipients, dispatched_at, payload)
        )
    return tuple(owed)


def queue_owed_dispatch(conn: apsw.Connection, owed: OwedDispatch, body: str) -> tuple[int, ...]:
    """Queue the retries of one owed dispatch, dated as it was; () when no longer owed."""
    with transaction(conn):
        still = conn.execute(
            "SELECT 1 FROM escalation_dispatches x JOIN disputes d ON d.dispute_id = x.dispute_id"
            f" WHERE x.dispatch_id = ? AND d.lifecycle_state != ? AND {_NO_RETRY_ROW}",
            (owed.dispatch_id, LifecycleState.RESOLVED),
        ).fetchone()
        if still is None:
            return ()
        return queue_handoff_retries(
            conn,
            owed.dispute_id,
            owed.handoff_event_id,
            tuple(OutboxMessage(recipient, body) for recipient in owed.recipients),
            owed.dispatched_at,
        )
