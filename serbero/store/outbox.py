"""The notification outbox: DMs that were decided, and what became of them (BEY-2, BEY-3, BEY-22).

A decision to notify is written in the transaction that records its cause; the sender then
*claims* due rows, publishes them, and *completes* each one. Completion writes the
`notifications` attempt row (CORE-37) and, for the reference's bookkeeping, moves the
dispute `new -> notified` on the first delivered initial notice and `last_notified_at` on a
delivered re-notification, all in one transaction.

A decision may also claim its own rows in its transaction (`claim_new`) and hand them to
the sender in memory: the DM goes out as soon as the decision is durable, without a second
transaction; the claim is recorded all the same, so a crash re-sends it. Completions can be
recorded many at a time (`complete_many`), each still atomic on its own.

Rules the sender can rely on:

- Rows are handed out oldest first. For one (`dispute_id`, `solver_pubkey`) pair only the
  earliest pending row is ever handed out, so one solver's DMs about one dispute go out in
  decision order (initial, assignment, closing notice), one at a time.
- A claimed row is in flight until completed. A claim older than `CLAIM_LEASE_SECONDS` is
  handed out again (a sender that vanished); `requeue_in_flight` at start-up releases every
  claim at once, so a `kill -9` between claim and completion re-sends.
- A retryable failure reschedules the row with capped exponential backoff, forever, until
  it is sent or its purpose is gone. A final failure (e.g. an unparsable key) ends it.
- The audit trail of a DM that keeps failing stays bounded: its first
  `FAILED_ROWS_IN_FULL` failed attempts each write a `notifications` row, later ones only
  when the pair's latest `failed` row of that type is `FAILED_ROW_INTERVAL_SECONDS` old;
  every attempt still counts in the row's `attempts` and sets `last_error`. Worst case, a
  DM refused all day writes 3 + 24 rows the first day and 24 a day after that.
- Rows whose purpose is gone are *abandoned* instead of sent: an initial notice once the
  dispute left `new`/`notified`, a re-notification once it left `notified`, an assignment
  notice, an escalation DM or a mediation summary once it is resolved. In-flight rows are
  left to finish. A claim looks only at the rows it would hand out, so its cost follows
  `limit`, not the backlog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import apsw
import msgspec

from serbero.protocol.keys import normalise_public_key
from serbero.store.errors import InvalidRecord, UnknownOutboxRow
from serbero.store.lifecycle import (
    TRIGGER_INITIAL_NOTIFICATION,
    LifecycleState,
    TransitionResult,
    apply_transition,
)
from serbero.store.notifications import (
    FORBIDDEN_NOTIF_TYPES,
    STATUS_FAILED,
    STATUS_SENT,
    NotificationRecord,
    NotifType,
    insert_notification,
)
from serbero.store.transaction import transaction

PENDING: Final = "pending"
SENT: Final = "sent"
FAILED: Final = "failed"
ABANDONED: Final = "abandoned"

CLAIM_LEASE_SECONDS: Final = 300
RETRY_INITIAL_SECONDS: Final = 5
RETRY_MAX_SECONDS: Final = 600
# Failed attempts of one DM that each write a `notifications` row; after them, at most one
# row per interval (a relay refusing for a day would otherwise add ~150 rows per DM).
FAILED_ROWS_IN_FULL: Final = 3
FAILED_ROW_INTERVAL_SECONDS: Final = 3600

# For each notif_type that can become pointless: the dispute states in which it still matters.
_UNRESOLVED: Final = (
    LifecycleState.NEW,
    LifecycleState.NOTIFIED,
    LifecycleState.TAKEN,
    LifecycleState.WAITING,
    LifecycleState.ESCALATED,
)
LIVE_STATES_BY_TYPE: Final[Mapping[str, tuple[str, ...]]] = {
    NotifType.INITIAL: (LifecycleState.NEW, LifecycleState.NOTIFIED),
    NotifType.RENOTIFICATION: (LifecycleState.NOTIFIED,),
    NotifType.ASSIGNMENT: _UNRESOLVED,
    # An escalation DM is superseded once the dispute is resolved (ESC-18).
    NotifType.MEDIATION_ESCALATION_RECOMMENDED: _UNRESOLVED,
    # So is a summary not sent yet: the resolution superseded its session (MED-140), and
    # the solvers get the resolution report instead of a summary of a session that ended.
    NotifType.MEDIATION_SUMMARY: _UNRESOLVED,
}


def _obsolete_sql() -> str:
    """SQL truth value over `o` (outbox) and `d` (disputes): the row's purpose is gone."""
    arms = []
    for notif_type, states in LIVE_STATES_BY_TYPE.items():
        live = ", ".join(f"'{state}'" for state in states)
        arms.append(f"WHEN '{notif_type}' THEN d.lifecycle_state NOT IN ({live})")
    return f"(CASE o.notif_type {' '.join(arms)} ELSE 0 END)"


_OBSOLETE: Final = _obsolete_sql()
_UNCLAIMED: Final = "(o.claimed_at IS NULL OR o.claimed_at <= :stale)"
_ROW_COLUMNS: Final = (
    "o.id, o.dispute_id, o.solver_pubkey, o.notif_type, o.body, o.cause, o.created_at,"
    " o.attempts, o.handoff_event_id"
)


class OutboxMessage(msgspec.Struct, frozen=True):
    """One DM to decide: the recipient exactly as configured, and the finished body."""

    solver_pubkey: str
    body: str


class OutboxRow(msgspec.Struct, frozen=True):
    """A claimed row, as the sender needs it; `attempts` counts this hand-out."""

    id: int
    dispute_id: str
    solver_pubkey: str
    notif_type: str
    body: str
    cause: str
    created_at: int
    attempts: int
    handoff_event_id: int | None


class OutboxClaim(msgspec.Struct, frozen=True):
    """Rows handed to the sender now, and how many pointless rows were abandoned first."""

    rows: tuple[OutboxRow, ...]
    abandoned: int


class OutboxCompletion(msgspec.Struct, frozen=True):
    """What completing one row committed.

    `state` is the row's state afterwards (a late completion of a row that had already
    finished leaves it unchanged); `transition` is the `new -> notified` change a delivered
    initial notice caused, if any; `last_notified_at` is the value written, if any;
    `unblocks` says a later row of the same (dispute, solver) pair can now be handed out.
    `notification_id` is the attempt row written, None when a repeated failure wrote none.
    `queued` names the rows what the completion implies queued in its commit (a failed
    summary's escalation notice): due now, the sender looks for them at once.
    """

    outbox_id: int
    dispute_id: str
    solver_pubkey: str
    notif_type: str
    state: str
    notification_id: int | None
    next_attempt_at: int | None
    transition: TransitionResult | None
    last_notified_at: int | None
    unblocks: bool = False
    queued: tuple[int, ...] = ()


class OutboxOutcome(msgspec.Struct, frozen=True):
    """One claimed row's attempt, for `complete_many`: `ok`, or the CORE-37 `error` and
    whether to `retry`."""

    outbox_id: int
    ok: bool
    error: str | None = None
    retry: bool = True


def retry_delay(attempts: int) -> int:
    """Backoff before the next try after `attempts` hand-outs: 5 s doubling, capped at 10 min."""
    exponent = max(0, min(attempts - 1, 16))
    return int(min(RETRY_MAX_SECONDS, RETRY_INITIAL_SECONDS * 2**exponent))


def is_obsolete(notif_type: str, lifecycle_state: str | None) -> bool:
    """Python twin of the SQL rule: the dispute is gone or no longer needs this DM."""
    if lifecycle_state is None:
        return True
    live = LIVE_STATES_BY_TYPE.get(notif_type)
    return live is not None and lifecycle_state not in live


def enqueue(
    conn: apsw.Connection,
    *,
    dispute_id: str,
    notif_type: str,
    cause: str,
    messages: Sequence[OutboxMessage],
    now: int,
    handoff_event_id: int | None = None,
) -> tuple[int, ...]:
    """Insert one pending row per message, due now; ids in message order. Caller owns the tx."""
    if notif_type in FORBIDDEN_NOTIF_TYPES:
        raise InvalidRecord(f"notif_type {notif_type!r} is never written (CORE-1)")
    ids = []
    for message in messages:
        conn.execute(
            "INSERT INTO notification_outbox (dispute_id, solver_pubkey, notif_type, body, cause,"
            " created_at, next_attempt_at, handoff_event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                dispute_id,
                message.solver_pubkey,
                str(notif_type),
                message.body,
                cause,
                now,
                now,
                handoff_event_id,
            ),
        )
        ids.append(int(conn.last_insert_rowid()))
    return tuple(ids)


def enqueue_notifications(
    conn: apsw.Connection,
    *,
    dispute_id: str,
    notif_type: str,
    cause: str,
    messages: Sequence[OutboxMessage],
    now: int,
    handoff_event_id: int | None = None,
) -> tuple[int, ...]:
    """`enqueue` as its own transaction, for decisions whose cause is already recorded."""
    with transaction(conn):
        return enqueue(
            conn,
            dispute_id=dispute_id,
            notif_type=notif_type,
            cause=cause,
            messages=messages,
            now=now,
            handoff_event_id=handoff_event_id,
        )


def abandon_obsolete(conn: apsw.Connection, now: int, dispute_id: str | None = None) -> int:
    """Mark pending, not-in-flight rows whose purpose is gone `abandoned`; returns the count.

    Limited to one dispute when `dispute_id` is given. Caller owns the transaction.
    """
    scope = "" if dispute_id is None else " AND o.dispute_id = :dispute_id"
    conn.execute(
        "UPDATE notification_outbox SET state = 'abandoned', finished_at = :now,"
        " claimed_at = NULL WHERE id IN (SELECT o.id FROM notification_outbox o"
        " JOIN disputes d ON d.dispute_id = o.dispute_id"
        f" WHERE o.state = 'pending' AND {_UNCLAIMED} AND {_OBSOLETE}{scope})",
        {"now": now, "stale": now - CLAIM_LEASE_SECONDS, "dispute_id": dispute_id},
    )
    return int(conn.changes())


def abandon_cause(conn: apsw.Connection, dispute_id: str, cause: str, now: int) -> int:
    """Mark the pending, not-in-flight rows queued for `cause` `abandoned`: what they were
    to say is no longer so. Returns the count; caller owns the transaction."""
    conn.execute(
        "UPDATE notification_outbox AS o SET state = 'abandoned', finished_at = :now,"
        " claimed_at = NULL WHERE o.dispute_id = :dispute_id AND o.cause = :cause"
        f" AND o.state = 'pending' AND {_UNCLAIMED}",
        {"now": now, "stale": now - CLAIM_LEASE_SECONDS, "dispute_id": dispute_id, "cause": cause},
    )
    return int(conn.changes())


def claim_due(conn: apsw.Connection, now: int, limit: int) -> OutboxClaim:
    """Hand out up to `limit` due rows, oldest first, abandoning pointless ones on the way.

    A row is due when pending, not in flight, `next_attempt_at <= now`, and no earlier row
    for the same (dispute, solver) pair is still pending. `limit` below 1 counts as 1.
    """
    limit = max(1, limit)
    stale = now - CLAIM_LEASE_SECONDS
    rows: list[OutboxRow] = []
    abandoned = 0
    with transaction(conn):
        while len(rows) < limit:
            wanted = limit - len(rows)
            found = conn.execute(
                f"SELECT {_ROW_COLUMNS}, d.lifecycle_state FROM notification_outbox o"
                " LEFT JOIN disputes d ON d.dispute_id = o.dispute_id"
                f" WHERE o.state = 'pending' AND o.next_attempt_at <= :now AND {_UNCLAIMED}"
                " AND NOT EXISTS (SELECT 1 FROM notification_outbox e WHERE e.state = 'pending'"
                " AND e.dispute_id = o.dispute_id AND e.solver_pubkey = o.solver_pubkey"
                " AND e.id < o.id) ORDER BY o.id LIMIT :limit",
                {"now": now, "stale": stale, "limit": wanted},
            ).fetchall()
            for values in found:
                *columns, lifecycle_state = cast(tuple[Any, ...], values)
                row = OutboxRow(*columns)
                if is_obsolete(row.notif_type, lifecycle_state):
                    conn.execute(
                        "UPDATE notification_outbox SET state = 'abandoned', finished_at = ?,"
                        " claimed_at = NULL WHERE id = ?",
                        (now, row.id),
                    )
                    abandoned += 1
                    continue
                conn.execute(
                    "UPDATE notification_outbox SET claimed_at = ?, attempts = attempts + 1"
                    " WHERE id = ?",
                    (now, row.id),
                )
                rows.append(msgspec.structs.replace(row, attempts=row.attempts + 1))
            if len(found) < wanted:
                break
    return OutboxClaim(rows=tuple(rows), abandoned=abandoned)


def claim_new(
    conn: apsw.Connection, outbox_ids: Sequence[int], now: int, limit: int
) -> tuple[OutboxRow, ...]:
    """Claim up to `limit` of rows just enqueued (in id order) for the sender to deliver at
    once, in the transaction that decided them. A row queued behind an earlier pending row
    of its pair is left for `claim_due` (BEY-22), as are rows beyond `limit`. Caller owns
    the transaction.
    """
    rows: list[OutboxRow] = []
    for outbox_id in outbox_ids:
        if len(rows) >= limit:
            break
        found = conn.execute(
            "UPDATE notification_outbox AS o SET claimed_at = :now, attempts = attempts + 1"
            " WHERE o.id = :id AND o.state = 'pending' AND o.claimed_at IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM notification_outbox e WHERE e.state = 'pending'"
            " AND e.dispute_id = o.dispute_id AND e.solver_pubkey = o.solver_pubkey"
            f" AND e.id < o.id) RETURNING {_ROW_COLUMNS.replace('o.', '')}",
            {"now": now, "id": outbox_id},
        ).fetchone()
        if found is not None:
            rows.append(OutboxRow(*cast(tuple[Any, ...], found)))
    return tuple(rows)


def complete(
    conn: apsw.Connection,
    outbox_id: int,
    *,
    ok: bool,
    error: str | None,
    retry: bool,
    now: int,
) -> OutboxCompletion:
    """Record one attempt's outcome and everything it implies, in one transaction.

    `ok`: a relay accepted the DM. Otherwise `error` is the CORE-37 error text and `retry`
    says whether trying again can help (publish failures: yes; unparsable key: no).
    """
    with transaction(conn):
        found = conn.execute(
            "SELECT o.dispute_id, o.solver_pubkey, o.notif_type, o.state, o.attempts,"
            " d.lifecycle_state FROM notification_outbox o"
            " LEFT JOIN disputes d ON d.dispute_id = o.dispute_id WHERE o.id = ?",
            (outbox_id,),
        ).fetchone()
        if found is None:
            raise UnknownOutboxRow(outbox_id)
        dispute_id, solver, notif_type, state, attempts, lifecycle_state = found
        stays_pending = (
            not ok and state == PENDING and retry and not is_obsolete(notif_type, lifecycle_state)
        )
        notification_id: int | None = None
        # A row queued by an earlier version may spell the key as the config did (BEY-12).
        recorded_key = normalise_public_key(solver)
        quiet = stays_pending and _failure_recorded_lately(
            conn, dispute_id, recorded_key, notif_type, int(attempts), now
        )
        if not quiet:
            notification_id = insert_notification(
                conn,
                NotificationRecord(
                    dispute_id=dispute_id,
                    solver_pubkey=recorded_key,
                    sent_at=now,
                    status=STATUS_SENT if ok else STATUS_FAILED,
                    notif_type=notif_type,
                    error_message=None if ok else error,
                ),
            )
        transition: TransitionResult | None = None
        last_notified_at: int | None = None
        next_attempt_at: int | None = None
        if state != PENDING:
            new_state = str(state)
        elif ok:
            new_state = SENT
            conn.execute(
                "UPDATE notification_outbox SET state = 'sent', finished_at = ?, claimed_at = NULL"
                " WHERE id = ?",
                (now, outbox_id),
            )
            if notif_type == NotifType.INITIAL and lifecycle_state == LifecycleState.NEW:
                transition = apply_transition(
                    conn, dispute_id, LifecycleState.NOTIFIED, TRIGGER_INITIAL_NOTIFICATION, now
                )
                last_notified_at = now
            elif (
                notif_type == NotifType.RENOTIFICATION
                and lifecycle_state == LifecycleState.NOTIFIED
            ):
                last_notified_at = now
            if last_notified_at is not None:
                conn.execute(
                    "UPDATE disputes SET last_notified_at = ? WHERE dispute_id = ?",
                    (last_notified_at, dispute_id),
                )
        elif stays_pending:
            new_state = PENDING
            next_attempt_at = now + retry_delay(int(attempts))
            conn.execute(
                "UPDATE notification_outbox SET claimed_at = NULL, next_attempt_at = ?,"
                " last_error = ? WHERE id = ?",
                (next_attempt_at, error, outbox_id),
            )
        else:
            new_state = ABANDONED if retry else FAILED
            conn.execute(
                "UPDATE notification_outbox SET state = ?, finished_at = ?, claimed_at = NULL,"
                " last_error = ? WHERE id = ?",
                (new_state, now, error, outbox_id),
            )
        unblocks = (
            state == PENDING
            and new_state != PENDING
            and conn.execute(
                "SELECT 1 FROM notification_outbox WHERE state = 'pending' AND dispute_id = ?"
                " AND solver_pubkey = ? LIMIT 1",
                (dispute_id, solver),
            ).fetchone()
            is not None
        )
    return OutboxCompletion(
        outbox_id=outbox_id,
        dispute_id=dispute_id,
        solver_pubkey=solver,
        notif_type=notif_type,
        state=new_state,
        notification_id=notification_id,
        next_attempt_at=next_attempt_at,
        transition=transition,
        last_notified_at=last_notified_at,
        unblocks=unblocks,
    )


def _failure_recorded_lately(
    conn: apsw.Connection, dispute_id: str, solver: str, notif_type: str, attempts: int, now: int
) -> bool:
    """Whether this retried failure may go without an attempt row: the DM has failed
    `FAILED_ROWS_IN_FULL` times already and its pair has a `failed` row of this type
    from the last `FAILED_ROW_INTERVAL_SECONDS`."""
    if attempts <= FAILED_ROWS_IN_FULL:
        return False
    recent = conn.execute(
        "SELECT 1 FROM notifications WHERE dispute_id = ? AND solver_pubkey = ?"
        " AND notif_type = ? AND status = 'failed' AND sent_at > ? LIMIT 1",
        (dispute_id, solver, notif_type, now - FAILED_ROW_INTERVAL_SECONDS),
    ).fetchone()
    return recent is not None


def complete_many(
    conn: apsw.Connection, outcomes: Sequence[OutboxOutcome], *, now: int
) -> tuple[OutboxCompletion | UnknownOutboxRow, ...]:
    """`complete` for several rows under one commit, each in its own savepoint; a row that
    does not exist answers `UnknownOutboxRow` in its place and the others still complete."""
    results: list[OutboxCompletion | UnknownOutboxRow] = []
    with transaction(conn):
        for outcome in outcomes:
            try:
                results.append(
                    complete(
                        conn,
                        outcome.outbox_id,
                        ok=outcome.ok,
                        error=outcome.error,
                        retry=outcome.retry,
                        now=now,
                    )
                )
            except UnknownOutboxRow as exc:
                results.append(exc)
    return tuple(results)


def requeue_in_flight(conn: apsw.Connection) -> int:
    """Release every claim (start-up: whatever was in flight died with the last process)."""
    with transaction(conn):
        conn.execute(
            "UPDATE notification_outbox SET claimed_at = NULL"
            " WHERE state = 'pending' AND claimed_at IS NOT NULL"
        )
        return int(conn.changes())


def next_due_at(conn: apsw.Connection) -> int | None:
    """When a claim could next hand something out: the earliest `next_attempt_at` among
    pending rows that are not in flight and not held back behind an earlier pending row of
    their pair (those become due when that row completes). None when nothing is waiting."""
    row = conn.execute(
        "SELECT MIN(o.next_attempt_at) FROM notification_outbox o"
        " WHERE o.state = 'pending' AND o.claimed_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM notification_outbox e WHERE e.state = 'pending'"
        " AND e.dispute_id = o.dispute_id AND e.solver_pubkey = o.solver_pubkey"
        " AND e.id < o.id)"
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def count_pending(conn: apsw.Connection) -> int:
    """How many decided DMs are still owed (in flight included)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM notification_outbox WHERE state = 'pending'"
    ).fetchone()
    return 0 if row is None else int(row[0])


def expedite_retries(conn: apsw.Connection, now: int) -> int:
    """Make every pending row that waits out a retry backoff due now; returns the count.

    For when the reason they failed is gone (a relay is connected again): a long outage
    must not leave DMs waiting up to `RETRY_MAX_SECONDS` after the relays came back.
    """
    with transaction(conn):
        conn.execute(
            "UPDATE notification_outbox SET next_attempt_at = ?"
            " WHERE state = 'pending' AND claimed_at IS NULL AND next_attempt_at > ?",
            (now, now),
        )
        return int(conn.changes())
