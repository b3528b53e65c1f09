"""Opening a mediation in the store: eligibility, the start attempt's audit trail, the session
row, the rationale bind and the dispute-scoped escalation (§2, §3, §4, MED-122/123).

Every write is one transaction. The events of one open come in the MED-50 order because the
open procedure asks for them one step at a time; the two steps that must see the database as
it is at the moment of writing (the session commit, the recommend) re-read under the write
lock instead of trusting what the caller saw earlier (Q-18).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import apsw
import msgspec

from serbero.protocol.handoff import HandoffPackage
from serbero.protocol.texts import dispute_escalation_notice
from serbero.store.audit import insert_event, payload_field
from serbero.store.chat import OpeningRows, record_opening_rows, record_trade_pubkeys
from serbero.store.errors import StoreFailure, UnknownDispute
from serbero.store.lifecycle import ALLOWED_TRANSITIONS
from serbero.store.mediation import NOT_LIVE_SESSION_STATES
from serbero.store.notifications import NotifType
from serbero.store.routing import queue_notice
from serbero.store.transaction import transaction

__all__ = [
    "ELIGIBLE_LIFECYCLE_STATES",
    "AlreadyOpen",
    "EligibleDispute",
    "NewSession",
    "OpenOutcome",
    "Opened",
    "StartTrigger",
    "StopReason",
    "TakeOutcome",
    "Verdict",
    "begin_start_attempt",
    "bind_rationale",
    "is_eligible",
    "list_eligible",
    "live_session_of",
    "open_session",
    "recommend_dispute_escalation",
    "record_policy_escalate",
    "record_start_stopped",
    "record_take",
    "record_verdict",
]

ELIGIBLE_LIFECYCLE_STATES: Final = ("new", "notified", "taken", "waiting")
# A session in any state but these blocks a new one for its dispute (MED-4 "Blocking").
# A finished one still blocks until a newer dispute event: a dispute whose mediation
# ended is not mediated again, which would cost a verdict and a take Mostro refuses.
NOT_BLOCKING_SESSION_STATES: Final = ("closed", "superseded_by_human")
AWAITING_RESPONSE: Final = "awaiting_response"
ESCALATION_RECOMMENDED: Final = "escalation_recommended"
HANDOFF_PREPARED: Final = "handoff_prepared"
VALID_ROLES: Final = ("buyer", "seller")

StartTrigger = Literal["detected", "tick_retry"]
StopReason = Literal[
    "ineligible",
    "auth_pending",
    "auth_terminated",
    "reasoning_unhealthy",
    "reasoning_provider_error",
]

# MED-20 (with Q-3's finished sessions) as one predicate over the `disputes` row aliased `d`;
# the single check and the batch listing both use it, so they can never disagree (MED-21).
# The unary `+` strips the column's TEXT affinity from the comparison: only then may SQLite
# seek the dispute-scoped events' index instead of decoding every such event per dispute.
_ELIGIBLE: Final = (
    f"d.lifecycle_state IN ({', '.join(repr(s) for s in ELIGIBLE_LIFECYCLE_STATES)})"
    " AND NOT EXISTS (SELECT 1 FROM mediation_sessions s WHERE s.dispute_id = d.dispute_id"
    f" AND (s.state NOT IN ({', '.join(repr(s) for s in NOT_BLOCKING_SESSION_STATES)})"
    " OR s.started_at >= d.event_timestamp))"
    " AND NOT EXISTS (SELECT 1 FROM mediation_events e"
    f" WHERE e.kind = '{ESCALATION_RECOMMENDED}' AND e.session_id IS NULL"
    f" AND {payload_field('dispute_id', 'e')} = +d.dispute_id)"
)
_LIVE: Final = f"state NOT IN ({', '.join('?' * len(NOT_LIVE_SESSION_STATES))})"


class EligibleDispute(msgspec.Struct, frozen=True):
    """A dispute a start attempt may open a mediation for, with its initiator's role."""

    dispute_id: str
    initiator_role: Literal["buyer", "seller"]


def is_eligible(conn: apsw.Connection, dispute_id: str) -> bool:
    """MED-20 for one dispute; a lifecycle value this daemon does not know is an error."""
    row = conn.execute(
        f"SELECT d.lifecycle_state, {_ELIGIBLE} FROM disputes d WHERE d.dispute_id = ?",
        (dispute_id,),
    ).fetchone()
    if row is None:
        return False
    if str(row[0]) not in ALLOWED_TRANSITIONS:
        raise StoreFailure(f"dispute {dispute_id} has unknown lifecycle state {row[0]!r}")
    return bool(row[1])


def list_eligible(conn: apsw.Connection) -> tuple[EligibleDispute, ...]:
    """Every eligible dispute, oldest dispute event first, invalid roles skipped (MED-21)."""
    rows = conn.execute(
        f"SELECT d.dispute_id, d.initiator_role FROM disputes d WHERE {_ELIGIBLE}"
        " ORDER BY d.event_timestamp ASC, d.rowid ASC"
    )
    return tuple(
        EligibleDispute(str(dispute_id), role) for dispute_id, role in rows if role in VALID_ROLES
    )


def begin_start_attempt(
    conn: apsw.Connection, dispute_id: str, trigger: StartTrigger, now: int
) -> bool:
    """MED-32 (1)-(2) in one transaction: `start_attempt_started` if the dispute is eligible
    (True), else `start_attempt_stopped` with `ineligible` (False). A check error writes
    nothing."""
    with transaction(conn):
        if not is_eligible(conn, dispute_id):
            _stopped(conn, dispute_id, "ineligible", now)
            return False
        insert_event(
            conn,
            session_id=None,
            kind="start_attempt_started",
            payload={"dispute_id": dispute_id, "trigger": trigger},
            prompt_bundle_id=None,
            policy_hash=None,
            occurred_at=now,
        )
        return True


def record_start_stopped(
    conn: apsw.Connection, dispute_id: str, stop_reason: StopReason, now: int
) -> int:
    """A start attempt the open procedure refused before any verdict (MED-32 (3))."""
    with transaction(conn):
        return _stopped(conn, dispute_id, stop_reason, now)


def _stopped(conn: apsw.Connection, dispute_id: str, stop_reason: str, now: int) -> int:
    return insert_event(
        conn,
        session_id=None,
        kind="start_attempt_stopped",
        payload={"dispute_id": dispute_id, "stop_reason": stop_reason},
        prompt_bundle_id=None,
        policy_hash=None,
        occurred_at=now,
    )


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What the open's policy decided, as `reasoning_verdict` records it (MED-44)."""

    decision: Literal["ask_clarification", "summarize", "escalate"]
    classification: str | None = None
    confidence: float | None = None
    trigger: str | None = None


def record_verdict(
    conn: apsw.Connection,
    dispute_id: str,
    verdict: Verdict,
    bundle_id: str,
    policy_hash: str,
    now: int,
) -> int:
    """The dispute-scoped `reasoning_verdict` (MED-44); `rationale_id` stays NULL."""
    payload: dict[str, object] = {"dispute_id": dispute_id, "decision": verdict.decision}
    if verdict.decision == "summarize":
        payload["classification"] = verdict.classification
        payload["confidence"] = verdict.confidence
    elif verdict.decision == "escalate":
        payload["trigger"] = verdict.trigger
    with transaction(conn):
        return insert_event(
            conn,
            session_id=None,
            kind="reasoning_verdict",
            payload=payload,
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            occurred_at=now,
        )


def record_policy_escalate(
    conn: apsw.Connection,
    dispute_id: str,
    trigger: str,
    bundle_id: str,
    policy_hash: str,
    now: int,
) -> int:
    """The `start_attempt_stopped` of a negative verdict: key `reason`, bundle set (MED-45, Q-9)."""
    with transaction(conn):
        return insert_event(
            conn,
            session_id=None,
            kind="start_attempt_stopped",
            payload={"dispute_id": dispute_id, "reason": "policy_escalate", "trigger": trigger},
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            occurred_at=now,
        )


class TakeOutcome(msgspec.Struct, frozen=True):
    """How the take went: `reason` is the error text of a failure (MED-46)."""

    succeeded: bool
    reason: str = ""


def record_take(
    conn: apsw.Connection,
    dispute_id: str,
    outcome: TakeOutcome,
    bundle_id: str,
    policy_hash: str,
    now: int,
) -> int:
    """The dispute-scoped `take_dispute_issued` (MED-46)."""
    payload: dict[str, object] = {"dispute_id": dispute_id}
    if outcome.succeeded:
        payload["outcome"] = "success"
    else:
        payload["outcome"] = "failure"
        payload["reason"] = outcome.reason
    with transaction(conn):
        return insert_event(
            conn,
            session_id=None,
            kind="take_dispute_issued",
            payload=payload,
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            occurred_at=now,
        )


class NewSession(msgspec.Struct, frozen=True, kw_only=True):
    """A session to commit after a successful take (MED-47) and its parties' keys (BEY-16);
    its id is drawn as it is committed."""

    dispute_id: str
    prompt_bundle_id: str
    policy_hash: str
    buyer_shared_pubkey: str
    seller_shared_pubkey: str
    buyer_trade_pubkey: str
    seller_trade_pubkey: str
    # The opening round when the verdict asks the parties (None: Summarize, MED-49).
    opening: OpeningRows | None = None


class Opened(msgspec.Struct, frozen=True):
    """The session row and its `session_opened` event were committed."""

    session_id: str
    event_id: int


class AlreadyOpen(msgspec.Struct, frozen=True):
    """Another open committed a live session for the dispute first; nothing was written."""

    session_id: str


OpenOutcome = Opened | AlreadyOpen


def live_session_of(conn: apsw.Connection, dispute_id: str) -> str | None:
    """The dispute's live session id, if any (MED-42)."""
    row = conn.execute(
        f"SELECT session_id FROM mediation_sessions WHERE dispute_id = ? AND {_LIVE}"
        " ORDER BY started_at DESC, rowid DESC LIMIT 1",
        (dispute_id, *NOT_LIVE_SESSION_STATES),
    ).fetchone()
    return None if row is None else str(row[0])


def open_session(conn: apsw.Connection, session_id: str, new: NewSession, now: int) -> OpenOutcome:
    """MED-47: re-check for a live session under the write lock, then insert the session at
    `awaiting_response` as `session_id`, with its pinned bundle, its trade pubkeys,
    `session_opened` and, when given, the opening round's rows (published after the commit,
    MED-82/83)."""
    with transaction(conn):
        if (
            conn.execute(
                "SELECT 1 FROM disputes WHERE dispute_id = ?", (new.dispute_id,)
            ).fetchone()
            is None
        ):
            raise UnknownDispute(new.dispute_id)
        existing = live_session_of(conn, new.dispute_id)
        if existing is not None:
            return AlreadyOpen(existing)
        conn.execute(
            "INSERT INTO mediation_sessions (session_id, dispute_id, state, round_count,"
            " prompt_bundle_id, policy_hash, buyer_shared_pubkey, seller_shared_pubkey,"
            " started_at, last_transition_at) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                new.dispute_id,
                AWAITING_RESPONSE,
                new.prompt_bundle_id,
                new.policy_hash,
                new.buyer_shared_pubkey,
                new.seller_shared_pubkey,
                now,
                now,
            ),
        )
        record_trade_pubkeys(conn, session_id, new.buyer_trade_pubkey, new.seller_trade_pubkey)
        event_id = insert_event(
            conn,
            session_id=session_id,
            kind="session_opened",
            payload={},
            prompt_bundle_id=new.prompt_bundle_id,
            policy_hash=new.policy_hash,
            occurred_at=now,
        )
        if new.opening is not None:
            record_opening_rows(conn, session_id, new.opening, now)
    return Opened(session_id, event_id)


def bind_rationale(
    conn: apsw.Connection,
    session_id: str,
    *,
    classification: str,
    confidence: float,
    rationale_id: str | None,
    occurrence_id: int | None,
    bundle_id: str,
    policy_hash: str,
    now: int,
    classified: bool = False,
) -> int:
    """MED-48: give the open verdict's rationale its session (only if it has none yet) and
    write `classification_produced` naming it. `classified`: the verdict was Summarize, so
    the session moves on to `classified` (MED-49)."""
    with transaction(conn):
        if classified:
            conn.execute(
                "UPDATE mediation_sessions SET state = 'classified', last_transition_at = ?"
                " WHERE session_id = ?",
                (now, session_id),
            )
        if rationale_id is not None:
            conn.execute(
                "UPDATE reasoning_rationales SET session_id = ?"
                " WHERE rationale_id = ? AND session_id IS NULL",
                (session_id, rationale_id),
            )
        if occurrence_id is not None:
            conn.execute(
                "UPDATE serbero_rationale_occurrences SET session_id = ?"
                " WHERE id = ? AND session_id IS NULL",
                (session_id, occurrence_id),
            )
        return insert_event(
            conn,
            session_id=session_id,
            kind="classification_produced",
            payload={
                "classification": classification,
                "confidence": confidence,
                "rationale_id": rationale_id,
            },
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            occurred_at=now,
            rationale_id=rationale_id,
        )


def recommend_dispute_escalation(
    conn: apsw.Connection,
    dispute_id: str,
    trigger: str,
    *,
    rationale_refs: tuple[str, ...],
    bundle_id: str,
    policy_hash: str,
    now: int,
    notify: Sequence[str] = (),
) -> int | None:
    """MED-122: dispute-scoped `escalation_recommended` + `handoff_prepared` (MED-123 field
    order) in one transaction, so the escalation dispatcher delivers the handoff (BEY-17),
    and the MED-127 notice queued to every solver in `notify` in that same transaction.

    Returns the handoff event's id, or None when the dispute already had a dispute-scoped
    recommendation (nothing written, no notice, still a success).
    """
    with transaction(conn):
        seen = conn.execute(
            "SELECT 1 FROM mediation_events WHERE kind = ? AND session_id IS NULL"
            f" AND {payload_field('dispute_id')} = ? LIMIT 1",
            (ESCALATION_RECOMMENDED, dispute_id),
        ).fetchone()
        if seen is not None:
            return None
        insert_event(
            conn,
            session_id=None,
            kind=ESCALATION_RECOMMENDED,
            payload={
                "dispute_id": dispute_id,
                "trigger": trigger,
                "evidence_refs": [],
                "rationale_refs": list(rationale_refs),
            },
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            occurred_at=now,
        )
        handoff_id = insert_event(
            conn,
            session_id=None,
            kind=HANDOFF_PREPARED,
            payload=HandoffPackage(
                dispute_id=dispute_id,
                trigger=trigger,
                evidence_refs=(),
                prompt_bundle_id=bundle_id,
                policy_hash=policy_hash,
                rationale_refs=rationale_refs,
                assembled_at=now,
            ),
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            occurred_at=now,
        )
        if notify:
            queue_notice(
                conn,
                dispute_id=dispute_id,
                notif_type=NotifType.MEDIATION_ESCALATION_RECOMMENDED,
                cause=f"{HANDOFF_PREPARED}:{handoff_id}",
                body=dispute_escalation_notice(dispute_id, trigger),
                recipients=notify,
                now=now,
            )
        return handoff_id
