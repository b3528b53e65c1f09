"""A session hands its dispute to a human: the session-scoped recommend (MED-121, MED-123) and
the solvers' notice decided with it (MED-126, BEY-2).

Every way a live session can end in an escalation comes through here: the policy's triggers
mid-session, the round limit, the timeout sweep, the failure budget, a lost authorization,
and the two paths the reference writes without a handoff (summary failures, MED-124, and a
bundle that no longer matches, MED-125). Each gets its `handoff_prepared`, so the escalation
dispatcher delivers all of them to the write solvers (Q-5, BEY-17).

One transaction holds the conditional state flip, both events and the routed notice in the
outbox: a crash can neither escalate a session without telling the solvers nor tell them
about an escalation that never committed. A session that already left the five escalatable
states is refused and nothing is written (MED-73), so two triggers racing for one session
end it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import apsw
import msgspec

from serbero.protocol.handoff import HandoffPackage
from serbero.protocol.texts import TextError, session_escalation_notice
from serbero.store.audit import insert_event
from serbero.store.errors import StoreError, StoreFailure, UnknownDispute, UnknownSession
from serbero.store.notifications import NotifType
from serbero.store.rounds import ESCALATABLE_STATES
from serbero.store.routing import queue_notice, solver_recipients
from serbero.store.transaction import transaction

__all__ = [
    "ESCALATION_RECOMMENDED",
    "HANDOFF_PREPARED",
    "NotEscalatable",
    "SessionEscalated",
    "SessionEscalation",
    "recommend_session_escalation",
]

ESCALATION_RECOMMENDED: Final = "escalation_recommended"
HANDOFF_PREPARED: Final = "handoff_prepared"


class NotEscalatable(StoreError):
    """The session is no longer in an escalatable state (MED-73); nothing was written."""

    def __init__(self, session_id: str, state: str) -> None:
        super().__init__(
            f"invalid session transition {state} -> {ESCALATION_RECOMMENDED} for {session_id}"
        )
        self.session_id = session_id
        self.state = state


class SessionEscalation(msgspec.Struct, frozen=True, kw_only=True):
    """What a recommend needs (MED-120). `reason`: why the summary path gave up (MED-124, a
    fixed sentence or an error category, Q-17). `loaded_hash`: the bundle hash loaded now
    when it no longer matches the session's pin (MED-125). Both only go into the
    `escalation_recommended` payload, never into the handoff package. `from_states`: the
    states the caller may end (a subset of MED-73's five), checked in the same conditional
    update, so a stage never ends a session another stage is finishing."""

    session_id: str
    dispute_id: str
    trigger: str
    evidence_refs: tuple[str, ...] = ()
    rationale_refs: tuple[str, ...] = ()
    reason: str | None = None
    loaded_hash: str | None = None
    from_states: tuple[str, ...] = ESCALATABLE_STATES


class SessionEscalated(msgspec.Struct, frozen=True, kw_only=True):
    """What was committed: both events, and the notice's outbox rows (none, with
    `notice_skipped` saying why, when nobody could be told)."""

    escalation_event_id: int
    handoff_event_id: int
    outbox_ids: tuple[int, ...] = ()
    notice_skipped: str | None = None


def _payload(request: SessionEscalation, pinned_hash: str) -> dict[str, object]:
    payload: dict[str, object] = {
        "dispute_id": request.dispute_id,
        "trigger": request.trigger,
        "evidence_refs": list(request.evidence_refs),
        "rationale_refs": list(request.rationale_refs),
    }
    if request.reason is not None:
        payload["reason"] = request.reason
    if request.loaded_hash is not None:
        payload["pinned_hash"] = pinned_hash
        payload["loaded_hash"] = request.loaded_hash
    return payload


def _queue_session_notice(
    conn: apsw.Connection,
    request: SessionEscalation,
    solvers: Sequence[str],
    cause: str,
    now: int,
) -> tuple[tuple[int, ...], str | None]:
    """MED-126, routed per MED-112; a missing dispute row or an id that cannot be printed
    on one line means no notice (the handoff still reaches the write solvers)."""
    try:
        recipients = solver_recipients(conn, request.dispute_id, solvers)
        body = session_escalation_notice(request.session_id, request.dispute_id, request.trigger)
    except UnknownDispute:
        return (), "no dispute row"
    except TextError as exc:
        return (), str(exc)
    if not recipients:
        return (), "no solver recipients configured"
    ids = queue_notice(
        conn,
        dispute_id=request.dispute_id,
        notif_type=NotifType.MEDIATION_ESCALATION_RECOMMENDED,
        cause=cause,
        body=body,
        recipients=recipients,
        now=now,
    )
    return ids, None


def recommend_session_escalation(
    conn: apsw.Connection, request: SessionEscalation, solvers: Sequence[str], now: int
) -> SessionEscalated:
    """MED-121 in one transaction: `<escalatable> -> escalation_recommended`, the
    session-scoped `escalation_recommended` and `handoff_prepared` (MED-123 field order)
    with the session's pinned bundle and the same `occurred_at`, and the MED-126 notice to
    the routed solvers (`solvers`: configured keys, config order).

    Raises `UnknownSession`, `StoreFailure` (the session belongs to another dispute) or
    `NotEscalatable` (already ended; nothing written).
    """
    with transaction(conn):
        row = conn.execute(
            "SELECT dispute_id, state, prompt_bundle_id, policy_hash FROM mediation_sessions"
            " WHERE session_id = ?",
            (request.session_id,),
        ).fetchone()
        if row is None:
            raise UnknownSession(request.session_id)
        dispute_id, state, bundle_id, policy_hash = (str(value) for value in row)
        if dispute_id != request.dispute_id:
            raise StoreFailure(
                f"session {request.session_id} belongs to dispute {dispute_id},"
                f" not {request.dispute_id}"
            )
        allowed = tuple(s for s in request.from_states if s in ESCALATABLE_STATES)
        conn.execute(
            "UPDATE mediation_sessions SET state = ?, last_transition_at = ?"
            f" WHERE session_id = ? AND state IN ({', '.join('?' * len(allowed))})",
            (ESCALATION_RECOMMENDED, now, request.session_id, *allowed),
        )
        if conn.changes() == 0:
            raise NotEscalatable(request.session_id, state)
        escalation_id = insert_event(
            conn,
            session_id=request.session_id,
            kind=ESCALATION_RECOMMENDED,
            payload=_payload(request, policy_hash),
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            occurred_at=now,
        )
        handoff_id = insert_event(
            conn,
            session_id=request.session_id,
            kind=HANDOFF_PREPARED,
            payload=HandoffPackage(
                dispute_id=request.dispute_id,
                session_id=request.session_id,
                trigger=request.trigger,
                evidence_refs=request.evidence_refs,
                prompt_bundle_id=bundle_id,
                policy_hash=policy_hash,
                rationale_refs=request.rationale_refs,
                assembled_at=now,
            ),
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            occurred_at=now,
        )
        outbox_ids, skipped = _queue_session_notice(
            conn, request, solvers, f"escalation:{escalation_id}", now
        )
    return SessionEscalated(
        escalation_event_id=escalation_id,
        handoff_event_id=handoff_id,
        outbox_ids=outbox_ids,
        notice_skipped=skipped,
    )
