"""A classified session's summary in the store: claiming it, recording it with its routed
DMs, escalating when it cannot be delivered, and closing the session once a solver has it
(MED-110..113, MED-124, Q-2, Q-5).

The summary is written in one transaction with everything it implies: its rationale, the
`mediation_summaries` row, `summary_generated` and the outbox rows of its DM (BEY-2), or,
when nobody can be told, the escalation instead (MAS-12). The session closes in the
transaction that records the first summary DM a relay accepted, and the last recipient
failing for good escalates it in that same transaction: a crash can neither leave a
delivered summary's session open nor a failed one waiting forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import apsw
import msgspec

from serbero.log import get_logger
from serbero.protocol.texts import summary_notice
from serbero.store.audit import insert_event
from serbero.store.errors import StoreError, UnknownOutboxRow, UnknownSession
from serbero.store.escalate import (
    NotEscalatable,
    SessionEscalated,
    SessionEscalation,
    recommend_session_escalation,
)
from serbero.store.mediation import SUMMARY_CAUSE_PREFIX, session_classification, summary_cause
from serbero.store.notifications import NotifType
from serbero.store.outbox import FAILED, SENT, OutboxCompletion, OutboxOutcome, complete_many
from serbero.store.rationale import RationaleOccurrence, store_rationale
from serbero.store.routing import queue_notice, solver_recipients
from serbero.store.transaction import transaction

__all__ = [
    "ALL_SENDS_FAILED",
    "NOTIFICATION_FAILED",
    "NO_RECIPIENTS",
    "GeneratedSummary",
    "SummaryEscalated",
    "SummaryGone",
    "SummaryJob",
    "SummaryQueued",
    "SummaryRecord",
    "SummarySettled",
    "begin_summary",
    "complete_and_settle",
    "escalate_summary",
    "log_summary_escalated",
    "record_summary",
    "settle_summary_dm",
    "settle_summary_dms",
    "summaries_due",
]

log = get_logger("serbero.mediation")

CLASSIFIED: Final = "classified"
SUMMARY_PENDING: Final = "summary_pending"
CLOSED: Final = "closed"
SUMMARY_GENERATED: Final = "summary_generated"
NOTIFICATION_FAILED: Final = "notification_failed"
# MED-112/113's reasons, exact.
NO_RECIPIENTS: Final = "no solver recipients configured"
ALL_SENDS_FAILED: Final = "all recipient sends failed"


class SummaryJob(msgspec.Struct, frozen=True, kw_only=True):
    """A session whose summary is being made: what the summarize call and the record need.
    `classification`/`confidence` are the session's latest `classification_produced`, None
    when it has none (the summary cannot be asked for)."""

    session_id: str
    dispute_id: str
    prompt_bundle_id: str
    policy_hash: str
    classification: str | None
    confidence: float | None


def _has_summary(conn: apsw.Connection, session_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM mediation_summaries WHERE session_id = ? LIMIT 1", (session_id,)
    ).fetchone()
    return row is not None


def begin_summary(conn: apsw.Connection, session_id: str, now: int) -> SummaryJob | None:
    """MED-110 step 1: `classified -> summary_pending`, and the job. A `summary_pending`
    session without a summary row is a summary a crash interrupted: its job again, state
    unchanged. Any other state: None (another stage ended it, or it is summarised)."""
    with transaction(conn):
        row = conn.execute(
            "SELECT dispute_id, state, prompt_bundle_id, policy_hash FROM mediation_sessions"
            " WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            raise UnknownSession(session_id)
        dispute_id, state, bundle_id, policy_hash = (str(value) for value in row)
        if state == CLASSIFIED:
            conn.execute(
                "UPDATE mediation_sessions SET state = ?, last_transition_at = ?"
                " WHERE session_id = ? AND state = ?",
                (SUMMARY_PENDING, now, session_id, CLASSIFIED),
            )
        elif state != SUMMARY_PENDING or _has_summary(conn, session_id):
            return None
        found = session_classification(conn, session_id)
    return SummaryJob(
        session_id=session_id,
        dispute_id=dispute_id,
        prompt_bundle_id=bundle_id,
        policy_hash=policy_hash,
        classification=None if found is None else found.label,
        confidence=None if found is None else found.confidence,
    )


def summaries_due(conn: apsw.Connection) -> tuple[str, ...]:
    """The tick's work (Q-2): `classified` sessions, and `summary_pending` ones a crash left
    without a summary row; oldest first."""
    return tuple(
        str(session_id)
        for (session_id,) in conn.execute(
            "SELECT s.session_id FROM mediation_sessions s WHERE s.state = ?"
            " OR (s.state = ? AND NOT EXISTS (SELECT 1 FROM mediation_summaries m"
            " WHERE m.session_id = s.session_id)) ORDER BY s.started_at, s.rowid",
            (CLASSIFIED, SUMMARY_PENDING),
        )
    )


class GeneratedSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A summary that passed the guard (MED-131), and the rationale the model gave for it."""

    summary_text: str
    suggested_next_step: str
    rationale: RationaleOccurrence


class SummaryQueued(msgspec.Struct, frozen=True, kw_only=True):
    """The summary is stored and its DM queued to `recipients` (outbox ids in order)."""

    summary_id: int
    rationale_id: str
    recipients: tuple[str, ...]
    outbox_ids: tuple[int, ...]


class SummaryEscalated(msgspec.Struct, frozen=True, kw_only=True):
    """The summary is stored but nobody could be told: escalated (MAS-12)."""

    summary_id: int
    rationale_id: str
    escalation: SessionEscalated


class SummaryGone(msgspec.Struct, frozen=True):
    """The session left `summary_pending` meanwhile (superseded, escalated): nothing written."""

    state: str


SummaryRecord = SummaryQueued | SummaryEscalated | SummaryGone


def _state(conn: apsw.Connection, session_id: str) -> str:
    row = conn.execute(
        "SELECT state FROM mediation_sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        raise UnknownSession(session_id)
    return str(row[0])


def record_summary(
    conn: apsw.Connection,
    job: SummaryJob,
    summary: GeneratedSummary,
    solvers: Sequence[str],
    now: int,
) -> SummaryRecord:
    """MED-110 step 3 to MED-113's queuing, one transaction: the rationale, the summary row
    and `summary_generated` (all with the session's pinned bundle), then the DM routed per
    MED-112 (`solvers`: configured keys, config order). Nobody to tell: the summary is kept
    and the session escalated `notification_failed` instead. A missing dispute row raises
    `UnknownDispute` and writes nothing (the session stays `summary_pending`)."""
    with transaction(conn):
        state = _state(conn, job.session_id)
        if state != SUMMARY_PENDING:
            return SummaryGone(state)
        body = summary_notice(summary.summary_text, summary.suggested_next_step)
        recipients = solver_recipients(conn, job.dispute_id, solvers)
        stored = store_rationale(
            conn,
            msgspec.structs.replace(
                summary.rationale,
                purpose="summary",
                session_id=job.session_id,
                prompt_bundle_id=job.prompt_bundle_id,
                policy_hash=job.policy_hash,
            ),
            now,
        )
        conn.execute(
            "INSERT INTO mediation_summaries (session_id, dispute_id, classification,"
            " confidence, suggested_next_step, summary_text, prompt_bundle_id, policy_hash,"
            " rationale_id, generated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.session_id,
                job.dispute_id,
                job.classification,
                job.confidence,
                summary.suggested_next_step,
                summary.summary_text,
                job.prompt_bundle_id,
                job.policy_hash,
                stored.rationale_id,
                now,
            ),
        )
        summary_id = int(conn.last_insert_rowid())
        insert_event(
            conn,
            session_id=job.session_id,
            kind=SUMMARY_GENERATED,
            payload={
                "rationale_id": stored.rationale_id,
                "classification": job.classification,
                "confidence": job.confidence,
            },
            prompt_bundle_id=job.prompt_bundle_id,
            policy_hash=job.policy_hash,
            occurred_at=now,
            rationale_id=stored.rationale_id,
        )
        if not recipients:
            escalation = recommend_session_escalation(
                conn,
                _summary_escalation(
                    job.session_id,
                    job.dispute_id,
                    NOTIFICATION_FAILED,
                    NO_RECIPIENTS,
                    (stored.rationale_id,),
                ),
                (),
                now,
            )
            return SummaryEscalated(
                summary_id=summary_id, rationale_id=stored.rationale_id, escalation=escalation
            )
        outbox_ids = queue_notice(
            conn,
            dispute_id=job.dispute_id,
            notif_type=NotifType.MEDIATION_SUMMARY,
            cause=summary_cause(job.session_id),
            body=body,
            recipients=recipients,
            now=now,
        )
    return SummaryQueued(
        summary_id=summary_id,
        rationale_id=stored.rationale_id,
        recipients=recipients,
        outbox_ids=outbox_ids,
    )


def _summary_escalation(
    session_id: str,
    dispute_id: str,
    trigger: str,
    reason: str,
    rationale_refs: tuple[str, ...] = (),
) -> SessionEscalation:
    return SessionEscalation(
        session_id=session_id,
        dispute_id=dispute_id,
        trigger=trigger,
        rationale_refs=rationale_refs,
        reason=reason,
        from_states=(SUMMARY_PENDING,),
    )


def escalate_summary(
    conn: apsw.Connection,
    session_id: str,
    dispute_id: str,
    *,
    trigger: str,
    reason: str,
    solvers: Sequence[str],
    now: int,
) -> SessionEscalated | None:
    """MED-111/124 through the recommend (Q-5): `summary_pending -> escalation_recommended`
    with `reason`, its handoff and the routed notice. None when the session already left
    `summary_pending` (nothing written)."""
    try:
        return recommend_session_escalation(
            conn, _summary_escalation(session_id, dispute_id, trigger, reason), solvers, now
        )
    except NotEscalatable:
        return None


def log_summary_escalated(
    dispute_id: str, session_id: str, trigger: str, reason: str, matched: str = ""
) -> None:
    """`mediation_summary_escalated`, one shape for every way a summary escalates (the
    delivery's and the DM settling's)."""
    log.warning(
        "mediation_summary_escalated",
        dispute_id=dispute_id,
        session_id=session_id,
        trigger=trigger,
        reason=reason,
        matched=matched,
    )


class SummarySettled(msgspec.Struct, frozen=True, kw_only=True):
    """What a summary DM's completion did to its session: `closed` (the first DM sent), or
    `escalation` (the last recipient failed for good)."""

    session_id: str
    closed: bool = False
    escalation: SessionEscalated | None = None


def settle_summary_dm(
    conn: apsw.Connection, completion: OutboxCompletion, now: int
) -> SummarySettled | None:
    """After one outbox completion, in its transaction: a summary DM sent moves its session
    `summary_pending -> summary_delivered -> closed` (same timestamp, MED-113); the last of
    its summary DMs failing for good with none sent escalates `notification_failed`, routed
    among the summary's own recipients. None when the row is not a summary DM or changes
    nothing (the session was closed already, or other recipients are still pending)."""
    if completion.notif_type != NotifType.MEDIATION_SUMMARY or completion.state not in (
        SENT,
        FAILED,
    ):
        return None
    row = conn.execute(
        "SELECT cause FROM notification_outbox WHERE id = ?", (completion.outbox_id,)
    ).fetchone()
    cause = "" if row is None else str(row[0])
    if not cause.startswith(SUMMARY_CAUSE_PREFIX):
        return None
    session_id = cause.removeprefix(SUMMARY_CAUSE_PREFIX)
    with transaction(conn):
        if completion.state == SENT:
            conn.execute(
                "UPDATE mediation_sessions SET state = ?, last_transition_at = ?"
                " WHERE session_id = ? AND state = ?",
                (CLOSED, now, session_id, SUMMARY_PENDING),
            )
            return SummarySettled(session_id=session_id, closed=True) if conn.changes() else None
        waiting = conn.execute(
            "SELECT 1 FROM notification_outbox WHERE state = 'pending' AND dispute_id = ?"
            " AND cause = ? LIMIT 1",
            (completion.dispute_id, cause),
        ).fetchone()
        if waiting is not None:
            return None
        recipients = tuple(
            str(key)
            for (key,) in conn.execute(
                "SELECT solver_pubkey FROM notification_outbox WHERE dispute_id = ?"
                " AND cause = ? ORDER BY id",
                (completion.dispute_id, cause),
            )
        )
        escalation = escalate_summary(
            conn,
            session_id,
            completion.dispute_id,
            trigger=NOTIFICATION_FAILED,
            reason=ALL_SENDS_FAILED,
            solvers=recipients,
            now=now,
        )
    return (
        None if escalation is None else SummarySettled(session_id=session_id, escalation=escalation)
    )


def settle_summary_dms(
    conn: apsw.Connection,
    completions: Sequence[OutboxCompletion | UnknownOutboxRow],
    now: int,
) -> tuple[OutboxCompletion | UnknownOutboxRow, ...]:
    """`settle_summary_dm` for each completion of a batch, in the caller's transaction: a
    session that cannot be settled is logged, and its settling's own savepoint rolls back
    alone, never undoing the DM outcomes recorded with it (the next completion or the tick
    settles it). Returns the completions, each naming in `queued` the escalation notice its
    settling queued."""
    settled: list[OutboxCompletion | UnknownOutboxRow] = []
    for completion in completions:
        settled.append(completion)
        if not isinstance(completion, OutboxCompletion):
            continue
        try:
            done = settle_summary_dm(conn, completion, now)
        except StoreError as exc:
            log.warning(
                "mediation_summary_settle_failed",
                dispute_id=completion.dispute_id,
                outbox_id=completion.outbox_id,
                error=str(exc),
            )
            continue
        if done is None:
            continue
        if done.escalation is None:
            log.info(
                "mediation_summary_delivered",
                dispute_id=completion.dispute_id,
                session_id=done.session_id,
            )
            continue
        settled[-1] = msgspec.structs.replace(completion, queued=done.escalation.outbox_ids)
        log_summary_escalated(
            completion.dispute_id, done.session_id, NOTIFICATION_FAILED, ALL_SENDS_FAILED
        )
    return tuple(settled)


def complete_and_settle(
    conn: apsw.Connection, outcomes: Sequence[OutboxOutcome], now: int
) -> tuple[OutboxCompletion | UnknownOutboxRow, ...]:
    """The sender's batch of DM outcomes (`complete_many`) and what they mean for summary
    sessions (`settle_summary_dms`), under one commit (MED-113)."""
    with transaction(conn):
        return settle_summary_dms(conn, complete_many(conn, outcomes, now=now), now)
