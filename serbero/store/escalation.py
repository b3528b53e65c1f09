"""The escalation dispatcher's reads and writes (ESC-12..14, ESC-28, ESC-31..35; BEY-14).

A handoff stays pending until a dispatch row or a parse-failed event names it (ESC-12).
The dispatcher only ever inserts: dispatch rows, the four audit event kinds, notification
rows. Superseded and unroutable events are written at most once per handoff id, checked
and inserted inside one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal, cast

import apsw
import msgspec

from serbero.store.audit import insert_event, payload_field
from serbero.store.errors import InvalidRecord
from serbero.store.notifications import NotifType
from serbero.store.outbox import OutboxMessage, enqueue
from serbero.store.transaction import transaction

HANDOFF_PAGE_SIZE: Final = 128
HANDOFF_KIND: Final = "handoff_prepared"
KIND_DISPATCHED: Final = "escalation_dispatched"
KIND_SUPERSEDED: Final = "escalation_superseded"
KIND_UNROUTABLE: Final = "escalation_dispatch_unroutable"
KIND_PARSE_FAILED: Final = "escalation_dispatch_parse_failed"
STATUS_DISPATCHED: Final = "dispatched"
STATUS_SEND_FAILED: Final = "send_failed"
SUPERSEDED_REASON: Final = "dispute_already_resolved"
# ESC-26 step 3: escalation DMs reuse mediation's notif_type, retries too.
HANDOFF_NOTIF_TYPE: Final = NotifType.MEDIATION_ESCALATION_RECOMMENDED
ParseFailure = Literal["deserialize_failed", "orphan_dispute_reference"]

_HANDOFF_REF: Final = payload_field("handoff_event_id", "p")
# ESC-12: a `handoff_prepared` row `h` that no dispatch row and no parse-failed event names.
_PENDING_HANDOFF: Final = (
    "h.kind = :kind"
    " AND NOT EXISTS (SELECT 1 FROM escalation_dispatches d WHERE d.handoff_event_id = h.id)"
    " AND NOT EXISTS (SELECT 1 FROM mediation_events p WHERE p.kind = :parse_failed"
    f" AND {_HANDOFF_REF} = h.id)"
)
_PENDING_ARGS: Final = {"kind": HANDOFF_KIND, "parse_failed": KIND_PARSE_FAILED}


class HandoffRow(msgspec.Struct, frozen=True):
    """A `handoff_prepared` event as the scan returns it (ESC-1); `id` is the dedup key."""

    id: int
    session_id: str | None
    payload_json: str
    prompt_bundle_id: str | None
    policy_hash: str | None
    occurred_at: int


class RecipientOutcome(msgspec.Struct, frozen=True):
    """One recipient of the send loop, in send order, and whether a relay accepted the DM."""

    solver_pubkey: str
    ok: bool


class DispatchRecord(msgspec.Struct, frozen=True):
    """The committed `escalation_dispatches` row and the id of its `escalation_dispatched`."""

    dispatch_id: str
    dispute_id: str
    handoff_event_id: int
    target_solver: str
    status: str
    fallback_broadcast: bool
    dispatched_at: int
    audit_event_id: int


def pending_handoffs_page(
    conn: apsw.Connection, *, after_id: int = 0, limit: int = HANDOFF_PAGE_SIZE
) -> tuple[HandoffRow, ...]:
    """One page of pending handoffs with `id > after_id`, ascending (ESC-12, ESC-14).

    The scanner asks again with the last id until a page comes back short, so every
    pending handoff is examined each cycle. `limit` below 1 is clamped to 1. Besides the
    ESC-12 predicate, a handoff whose DMs are still owed in our outbox is being worked on
    and is skipped; once those rows finish it is pending again until its dispatch row
    exists (so a crash before that re-sends, ESC-30).
    """
    rows = conn.execute(
        "SELECT h.id, h.session_id, h.payload_json, h.prompt_bundle_id, h.policy_hash,"
        f" h.occurred_at FROM mediation_events h WHERE {_PENDING_HANDOFF} AND h.id > :after"
        " AND NOT EXISTS (SELECT 1 FROM notification_outbox o"
        " WHERE o.handoff_event_id = h.id AND o.state = 'pending')"
        " ORDER BY h.id LIMIT :limit",
        {**_PENDING_ARGS, "after": after_id, "limit": max(1, limit)},
    ).fetchall()
    return tuple(HandoffRow(*cast(tuple[Any, ...], row)) for row in rows)


def count_pending_handoffs(conn: apsw.Connection) -> int:
    """ESC-12's pending count, for `serbero status`.

    Only reference tables are read (not our outbox), so it works on a v5 database too.
    """
    row = conn.execute(
        f"SELECT COUNT(*) FROM mediation_events h WHERE {_PENDING_HANDOFF}", _PENDING_ARGS
    ).fetchone()
    return 0 if row is None else int(row[0])


def _audit_exists(conn: apsw.Connection, kind: str, handoff_event_id: int) -> bool:
    row = conn.execute(
        f"SELECT 1 FROM mediation_events p WHERE p.kind = ? AND {_HANDOFF_REF} = ? LIMIT 1",
        (kind, handoff_event_id),
    ).fetchone()
    return row is not None


def _insert_once(
    conn: apsw.Connection, kind: str, handoff: HandoffRow, payload: dict[str, object], now: int
) -> bool:
    with transaction(conn):
        if _audit_exists(conn, kind, handoff.id):
            return False
        insert_event(
            conn,
            session_id=handoff.session_id,
            kind=kind,
            payload=payload,
            prompt_bundle_id=handoff.prompt_bundle_id,
            policy_hash=handoff.policy_hash,
            occurred_at=now,
        )
    return True


def record_dispatch(
    conn: apsw.Connection,
    *,
    dispatch_id: str,
    handoff: HandoffRow,
    dispute_id: str,
    outcomes: Sequence[RecipientOutcome],
    via_fallback: bool,
    dispatched_at: int,
    retries: Sequence[OutboxMessage] = (),
) -> DispatchRecord:
    """ESC-28: the dispatch row and its `escalation_dispatched` event, both or neither.

    `retries` are the DMs no relay accepted: queued in the same transaction, dated
    `dispatched_at` and tied to the handoff, the outbox sender retries them with the
    notification backoff until delivered or the dispute is resolved (#12 item 5).

    `outcomes` is the attempted list in send order (never regrouped); the status is
    `dispatched` if any recipient succeeded, else `send_failed` (ESC-27). `dispatched_at`
    is the `T` taken before the send loop; it is also `created_at` and the event's time.
    A second dispatch for the same handoff fails on the unique index and writes nothing.
    """
    if not outcomes:
        raise InvalidRecord("a dispatch needs at least one attempted recipient")
    status = STATUS_DISPATCHED if any(o.ok for o in outcomes) else STATUS_SEND_FAILED
    target_solver = ",".join(o.solver_pubkey for o in outcomes)
    with transaction(conn):
        conn.execute(
            "INSERT INTO escalation_dispatches (dispatch_id, dispute_id, session_id,"
            " handoff_event_id, target_solver, dispatched_at, created_at, status,"
            " fallback_broadcast) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                dispatch_id,
                dispute_id,
                handoff.session_id,
                handoff.id,
                target_solver,
                dispatched_at,
                dispatched_at,
                status,
                1 if via_fallback else 0,
            ),
        )
        audit_id = insert_event(
            conn,
            session_id=handoff.session_id,
            kind=KIND_DISPATCHED,
            payload={
                "dispatch_id": dispatch_id,
                "dispute_id": dispute_id,
                "fallback_broadcast": via_fallback,
                "handoff_event_id": handoff.id,
                "status": status,
                "target_solver": target_solver,
            },
            prompt_bundle_id=handoff.prompt_bundle_id,
            policy_hash=handoff.policy_hash,
            occurred_at=dispatched_at,
        )
        if retries:
            queue_handoff_retries(conn, dispute_id, handoff.id, retries, dispatched_at)
    return DispatchRecord(
        dispatch_id=dispatch_id,
        dispute_id=dispute_id,
        handoff_event_id=handoff.id,
        target_solver=target_solver,
        status=status,
        fallback_broadcast=via_fallback,
        dispatched_at=dispatched_at,
        audit_event_id=audit_id,
    )


def queue_handoff_retries(
    conn: apsw.Connection,
    dispute_id: str,
    handoff_event_id: int,
    messages: Sequence[OutboxMessage],
    dispatched_at: int,
) -> tuple[int, ...]:
    """Queue escalation DMs to retry through the outbox; caller owns the transaction."""
    return enqueue(
        conn,
        dispute_id=dispute_id,
        notif_type=HANDOFF_NOTIF_TYPE,
        cause=f"handoff:{handoff_event_id}",
        messages=messages,
        now=dispatched_at,
        handoff_event_id=handoff_event_id,
    )


def record_superseded(
    conn: apsw.Connection, handoff: HandoffRow, dispute_id: str, now: int
) -> bool:
    """ESC-18/33: one `escalation_superseded` per handoff id; False when already written."""
    return _insert_once(
        conn,
        KIND_SUPERSEDED,
        handoff,
        {"dispute_id": dispute_id, "handoff_event_id": handoff.id, "reason": SUPERSEDED_REASON},
        now,
    )


def record_unroutable(
    conn: apsw.Connection,
    handoff: HandoffRow,
    dispute_id: str,
    configured_solver_count: int,
    now: int,
) -> bool:
    """ESC-21/34: one `escalation_dispatch_unroutable` per handoff id; False when present.

    `fallback_to_all_solvers` is always false: it means "rule 3 did not fire".
    """
    return _insert_once(
        conn,
        KIND_UNROUTABLE,
        handoff,
        {
            "configured_solver_count": configured_solver_count,
            "dispute_id": dispute_id,
            "fallback_to_all_solvers": False,
            "handoff_event_id": handoff.id,
        },
        now,
    )


def record_parse_failed(
    conn: apsw.Connection,
    handoff: HandoffRow,
    dispute_id: str,
    reason: ParseFailure,
    detail: str,
    now: int,
) -> bool:
    """ESC-16/17/35: the event that consumes an unusable handoff; False when already there.

    `dispute_id` is the best-effort hint (`unknown` when the payload had no string one).
    """
    return _insert_once(
        conn,
        KIND_PARSE_FAILED,
        handoff,
        {
            "detail": detail,
            "dispute_id": dispute_id,
            "handoff_event_id": handoff.id,
            "reason": reason,
        },
        now,
    )
