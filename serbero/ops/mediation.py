"""Mediation as an operator reads it: `serbero status` counts, the mediation part of `show`.

`status` answers "is mediation keeping up?": how many sessions are live, by state, and how
escalations stand: recommended (every `escalation_recommended` row), dispatched to the write
solvers or failed to send (the dispatcher's rows), and pending (handoffs it has not handled
yet, ESC-12).

`show` answers "what did mediation do with this dispute?": the verdicts before the take, then
per session its state, rounds, messages each way, every classification with its label and
confidence, the summary and whether it reached a solver, the escalation trigger and what the
dispatcher did with the handoff, or the human take or resolution that superseded it.

Privacy (MED-172): this view selects labels, numbers, triggers, states and times only. No
query here reads rationale text, chat content, summary text or a party's key, and a payload
value is shown only when it belongs to its closed vocabulary (a label, a trigger, a Mostro
status); anything else reads as `UNRECOGNISED`, so a hand-edited row cannot smuggle text out.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any, Final

import msgspec

from serbero.mediation.policy import ESCALATION_TRIGGERS
from serbero.ops.database import ReadOnlyDatabase
from serbero.protocol.dispute_event import DisputeStatus
from serbero.reasoning.types import LABELS, SUGGESTED_ACTIONS
from serbero.store.audit import payload_field
from serbero.store.escalation import (
    HANDOFF_KIND,
    KIND_PARSE_FAILED,
    KIND_SUPERSEDED,
    STATUS_DISPATCHED,
    STATUS_SEND_FAILED,
    count_pending_handoffs,
)
from serbero.store.mediation import NOT_LIVE_SESSION_STATES
from serbero.store.notifications import STATUS_FAILED, STATUS_SENT, NotifType

__all__ = [
    "LIVE_SESSION_STATES",
    "UNRECOGNISED",
    "ClassificationView",
    "DisputeMediation",
    "EscalationCounts",
    "EscalationView",
    "MediationStatus",
    "OpenVerdictView",
    "SessionView",
    "SummaryView",
    "read_dispute_mediation",
    "read_mediation_status",
]

UNRECOGNISED: Final = "<unrecognised>"
# MED-71's states in which a session still works with the parties (not NOT_LIVE).
LIVE_SESSION_STATES: Final = (
    "opening",
    "awaiting_response",
    "classified",
    "follow_up_pending",
    "summary_pending",
)
ESCALATION_KIND: Final = "escalation_recommended"
SUPERSEDED_KIND: Final = "superseded_by_human"
# What a handoff became: the dispatcher's row status, or the audit event that ended it.
HANDOFF_PENDING: Final = "pending"
HANDOFF_NONE: Final = "none"

_SESSION_TABLES: Final = ("mediation_sessions", "mediation_events")
_STATUSES: Final = frozenset(status.value for status in DisputeStatus)
_DISPUTE_REF_SQL: Final = payload_field("dispute_id")
_HANDOFF_REF_SQL: Final = payload_field("handoff_event_id")
# The end of the last summary's window (SQLite's largest integer).
_NO_END: Final = 2**63 - 1


# --- status -------------------------------------------------------------------------------


class EscalationCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Escalations over the database's life: recommended; handoffs dispatched to the write
    solvers or whose sends all failed; handoffs the dispatcher has yet to handle (ESC-12)."""

    recommended: int
    dispatched: int
    send_failed: int
    pending: int


class MediationStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Live sessions (every live state, zero included, then any other non-final state
    found) and the escalation counts."""

    live_sessions: int
    live_by_state: dict[str, int]
    escalations: EscalationCounts


def _count(db: ReadOnlyDatabase, sql: str, args: Sequence[object] = ()) -> int:
    row = db.conn.execute(sql, args).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def read_mediation_status(db: ReadOnlyDatabase) -> MediationStatus | None:
    """The counts, or None on a database without the mediation tables."""
    if not all(db.has(table) for table in _SESSION_TABLES):
        return None
    by_state = dict.fromkeys(LIVE_SESSION_STATES, 0)
    marks = ", ".join("?" for _ in NOT_LIVE_SESSION_STATES)
    for state, count in db.conn.execute(
        f"SELECT state, COUNT(*) FROM mediation_sessions WHERE state NOT IN ({marks})"
        " GROUP BY state ORDER BY state",
        NOT_LIVE_SESSION_STATES,
    ):
        by_state[str(state)] = int(count)
    dispatched = send_failed = pending = 0
    if db.has("escalation_dispatches"):
        dispatched, send_failed = (
            _count(db, "SELECT COUNT(*) FROM escalation_dispatches WHERE status = ?", (status,))
            for status in (STATUS_DISPATCHED, STATUS_SEND_FAILED)
        )
        pending = count_pending_handoffs(db.conn)
    return MediationStatus(
        live_sessions=sum(by_state.values()),
        live_by_state=by_state,
        escalations=EscalationCounts(
            recommended=_count(
                db, "SELECT COUNT(*) FROM mediation_events WHERE kind = ?", (ESCALATION_KIND,)
            ),
            dispatched=dispatched,
            send_failed=send_failed,
            pending=pending,
        ),
    )


# --- show ---------------------------------------------------------------------------------


class OpenVerdictView(msgspec.Struct, frozen=True, kw_only=True):
    """The verdict before a take (MED-44): the policy's decision, the label and confidence
    of a Summarize, the trigger of an Escalate."""

    at: int
    decision: str
    label: str | None
    confidence: float | None
    trigger: str | None


class ClassificationView(msgspec.Struct, frozen=True, kw_only=True):
    """One `classification_produced`: round 0 is the open verdict, then one per follow-up."""

    at: int
    round: int
    label: str
    confidence: float | None


class SummaryView(msgspec.Struct, frozen=True, kw_only=True):
    """A stored summary and its DMs to the solvers: `delivered` once one was sent."""

    at: int
    label: str
    confidence: float
    delivered: bool
    sent: int
    failed: int
    queued: int


class EscalationView(msgspec.Struct, frozen=True, kw_only=True):
    """An escalation and its handoff: `handoff` is `dispatched` / `send_failed` (with the
    dispatcher's time and recipient count), `pending`, `superseded` (the dispute was
    resolved first), `parse_failed`, or `none` (an escalation written without one)."""

    at: int
    session_id: str | None
    trigger: str
    handoff: str
    dispatched_at: int | None
    recipients: int


class SessionView(msgspec.Struct, frozen=True, kw_only=True):
    """One session. `superseded_by`: the Mostro status of the event that ended it from
    outside: `in-progress` for a human solver's take (Q-6), else the resolution's."""

    session_id: str
    state: str
    live: bool
    started_at: int
    last_transition_at: int
    rounds: int
    messages_out: int
    messages_in: int
    messages_stale: int
    classifications: tuple[ClassificationView, ...]
    summaries: tuple[SummaryView, ...]
    escalation: EscalationView | None
    superseded_by: str | None


class DisputeMediation(msgspec.Struct, frozen=True, kw_only=True):
    """Everything mediation did with one dispute, oldest first in each part."""

    open_verdicts: tuple[OpenVerdictView, ...]
    escalations: tuple[EscalationView, ...]
    sessions: tuple[SessionView, ...]


def _known(value: Any, vocabulary: Collection[str]) -> str | None:
    """A payload value as shown: None stays None, a word of the vocabulary itself, any
    other value UNRECOGNISED (it may be anything a hand edit put there)."""
    if value is None:
        return None
    return value if isinstance(value, str) and value in vocabulary else UNRECOGNISED


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _payload(text: Any) -> dict[str, Any]:
    try:
        payload = json.loads(str(text))
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


class _Events(msgspec.Struct, frozen=True):
    """The dispute's mediation events: id, session, kind, payload, time; ascending ids."""

    rows: tuple[tuple[int, str | None, str, dict[str, Any], int], ...]

    def of(self, kind: str, session_id: str | None) -> list[tuple[int, dict[str, Any], int]]:
        return [
            (event_id, payload, at)
            for event_id, session, row_kind, payload, at in self.rows
            if row_kind == kind and session == session_id
        ]


_READ_KINDS: Final = (
    "reasoning_verdict",
    "classification_produced",
    ESCALATION_KIND,
    HANDOFF_KIND,
    SUPERSEDED_KIND,
)


def _events(db: ReadOnlyDatabase, dispute_id: str, sessions: Sequence[str]) -> _Events:
    session_marks = ", ".join("?" for _ in sessions) or "NULL"
    kind_marks = ", ".join("?" for _ in _READ_KINDS)
    rows = db.conn.execute(
        "SELECT id, session_id, kind, payload_json, occurred_at FROM mediation_events"
        f" WHERE kind IN ({kind_marks}) AND (session_id IN ({session_marks})"
        f" OR (session_id IS NULL AND {_DISPUTE_REF_SQL} = ?)) ORDER BY id",
        (*_READ_KINDS, *sessions, dispute_id),
    )
    return _Events(
        tuple(
            (int(event_id), None if sid is None else str(sid), str(kind), _payload(text), int(at))
            for event_id, sid, kind, text, at in rows
        )
    )


def _open_verdicts(events: _Events) -> tuple[OpenVerdictView, ...]:
    return tuple(
        OpenVerdictView(
            at=at,
            decision=_known(payload.get("decision"), SUGGESTED_ACTIONS) or UNRECOGNISED,
            label=_known(payload.get("classification"), LABELS),
            confidence=_number(payload.get("confidence")),
            trigger=_known(payload.get("trigger"), ESCALATION_TRIGGERS),
        )
        for _, payload, at in events.of("reasoning_verdict", None)
    )


def _handoff_outcome(db: ReadOnlyDatabase, handoff_id: int | None) -> tuple[str, int | None, int]:
    """What became of a handoff: (outcome, dispatched_at, recipient count)."""
    if handoff_id is None:
        return HANDOFF_NONE, None, 0
    if db.has("escalation_dispatches"):
        row = db.conn.execute(
            "SELECT status, dispatched_at, target_solver FROM escalation_dispatches"
            " WHERE handoff_event_id = ?",
            (handoff_id,),
        ).fetchone()
        if row is not None:
            status = _known(row[0], (STATUS_DISPATCHED, STATUS_SEND_FAILED)) or UNRECOGNISED
            return status, int(row[1]), len(str(row[2]).split(","))
    for kind, outcome in ((KIND_SUPERSEDED, "superseded"), (KIND_PARSE_FAILED, "parse_failed")):
        if _count(
            db,
            f"SELECT COUNT(*) FROM mediation_events WHERE kind = ? AND {_HANDOFF_REF_SQL} = ?",
            (kind, handoff_id),
        ):
            return outcome, None, 0
    return HANDOFF_PENDING, None, 0


def _escalations(
    db: ReadOnlyDatabase, events: _Events, session_id: str | None
) -> tuple[EscalationView, ...]:
    """Each escalation of one scope, with the first handoff of that scope written after it
    (recommend writes both in one transaction, MED-121/122)."""
    handoffs = [event_id for event_id, _, _ in events.of(HANDOFF_KIND, session_id)]
    views = []
    for event_id, payload, at in events.of(ESCALATION_KIND, session_id):
        handoff = next((h for h in handoffs if h > event_id), None)
        if handoff is not None:
            handoffs.remove(handoff)
        outcome, dispatched_at, recipients = _handoff_outcome(db, handoff)
        views.append(
            EscalationView(
                at=at,
                session_id=session_id,
                trigger=_known(payload.get("trigger"), ESCALATION_TRIGGERS) or UNRECOGNISED,
                handoff=outcome,
                dispatched_at=dispatched_at,
                recipients=recipients,
            )
        )
    return tuple(views)


def _classifications(events: _Events, session_id: str) -> tuple[ClassificationView, ...]:
    return tuple(
        ClassificationView(
            at=at,
            round=index,
            label=_known(payload.get("classification"), LABELS) or UNRECOGNISED,
            confidence=_number(payload.get("confidence")),
        )
        for index, (_, payload, at) in enumerate(events.of("classification_produced", session_id))
    )


def _summary_dms(
    db: ReadOnlyDatabase, dispute_id: str, start: int, end: int
) -> tuple[int, int, int]:
    """Summary DMs of the dispute from one summary until the next: sent, failed, queued."""
    kind = NotifType.MEDIATION_SUMMARY.value
    sent, failed = (
        _count(
            db,
            "SELECT COUNT(*) FROM notifications WHERE dispute_id = ? AND notif_type = ?"
            " AND status = ? AND sent_at >= ? AND sent_at < ?",
            (dispute_id, kind, status, start, end),
        )
        for status in (STATUS_SENT, STATUS_FAILED)
    )
    queued = 0
    if db.has("notification_outbox"):
        queued = _count(
            db,
            "SELECT COUNT(*) FROM notification_outbox WHERE dispute_id = ? AND notif_type = ?"
            " AND state = 'pending' AND created_at >= ? AND created_at < ?",
            (dispute_id, kind, start, end),
        )
    return sent, failed, queued


def _summaries(db: ReadOnlyDatabase, dispute_id: str) -> dict[str, list[SummaryView]]:
    """Each session's summaries (label, confidence, time; never the text) and their DMs."""
    if not db.has("mediation_summaries"):
        return {}
    rows = list(
        db.conn.execute(
            "SELECT session_id, classification, confidence, generated_at"
            " FROM mediation_summaries WHERE dispute_id = ? ORDER BY generated_at, id",
            (dispute_id,),
        )
    )
    by_session: dict[str, list[SummaryView]] = {}
    for index, (session_id, label, confidence, at) in enumerate(rows):
        end = int(rows[index + 1][3]) if index + 1 < len(rows) else _NO_END
        sent, failed, queued = _summary_dms(db, dispute_id, int(at), end)
        by_session.setdefault(str(session_id), []).append(
            SummaryView(
                at=int(at),
                label=_known(label, LABELS) or UNRECOGNISED,
                confidence=_number(confidence) or 0.0,
                delivered=sent > 0,
                sent=sent,
                failed=failed,
                queued=queued,
            )
        )
    return by_session


def _message_counts(db: ReadOnlyDatabase, session_id: str) -> tuple[int, int, int]:
    """Messages of a session: outbound, fresh inbound, stale inbound (counts, no content)."""
    if not db.has("mediation_messages"):
        return 0, 0, 0
    row = db.conn.execute(
        "SELECT COALESCE(SUM(direction = 'outbound'), 0),"
        " COALESCE(SUM(direction = 'inbound' AND stale = 0), 0),"
        " COALESCE(SUM(direction = 'inbound' AND stale != 0), 0)"
        " FROM mediation_messages WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    return (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))


def read_dispute_mediation(db: ReadOnlyDatabase, dispute_id: str) -> DisputeMediation | None:
    """The dispute's mediation part, or None on a database without the mediation tables."""
    if not all(db.has(table) for table in _SESSION_TABLES):
        return None
    rows = list(
        db.conn.execute(
            "SELECT session_id, state, started_at, last_transition_at, round_count"
            " FROM mediation_sessions WHERE dispute_id = ? ORDER BY started_at, rowid",
            (dispute_id,),
        )
    )
    events = _events(db, dispute_id, [str(row[0]) for row in rows])
    summaries = _summaries(db, dispute_id)
    sessions = []
    for session_id, state, started_at, last_transition_at, round_count in rows:
        sid = str(session_id)
        out, fresh, stale = _message_counts(db, sid)
        escalation = _escalations(db, events, sid)
        superseded = events.of(SUPERSEDED_KIND, sid)
        sessions.append(
            SessionView(
                session_id=sid,
                state=str(state),
                live=str(state) not in NOT_LIVE_SESSION_STATES,
                started_at=int(started_at),
                last_transition_at=int(last_transition_at),
                rounds=int(round_count),
                messages_out=out,
                messages_in=fresh,
                messages_stale=stale,
                classifications=_classifications(events, sid),
                summaries=tuple(summaries.get(sid, ())),
                escalation=escalation[0] if escalation else None,
                superseded_by=(
                    _known(superseded[0][1].get("resolution_status"), _STATUSES) or UNRECOGNISED
                    if superseded
                    else None
                ),
            )
        )
    return DisputeMediation(
        open_verdicts=_open_verdicts(events),
        escalations=_escalations(db, events, None),
        sessions=tuple(sessions),
    )
