"""The tracker requests of the follow-up rounds and of session escalations (MED-93..96,
MED-103, MED-121..126, §12.1 #4).

They live beside the round evaluator rather than in `serbero.actors.tracker_requests`, which
holds the rest of the catalogue; each is still one store step the tracker runs as one
transaction.
"""

from __future__ import annotations

import apsw

from serbero.actors.tracker import Context, Request
from serbero.store.escalate import (
    SessionEscalated,
    SessionEscalation,
    recommend_session_escalation,
)
from serbero.store.rationale import RationaleOccurrence
from serbero.store.rounds import (
    EscalatableSession,
    EvaluationSnapshot,
    RecordedClassification,
    evaluation_snapshot,
    increment_eval_failures,
    mark_classified,
    pending_evaluations,
    record_classification,
    unresponsive_sessions,
    waiting_sessions,
)

__all__ = [
    "GetEvaluationSnapshot",
    "IncrementEvalFailures",
    "ListPendingEvaluations",
    "ListUnresponsiveSessions",
    "ListWaitingSessions",
    "MarkClassified",
    "RecommendSessionEscalation",
    "RecordMidSessionClassification",
]


class GetEvaluationSnapshot(Request[EvaluationSnapshot | None], frozen=True):
    """One session with its F, initiator and transcript (MED-93 steps 1-5, MED-96)."""

    session_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> EvaluationSnapshot | None:
        return evaluation_snapshot(conn, self.session_id)


class RecordMidSessionClassification(Request[RecordedClassification], frozen=True, kw_only=True):
    """A follow-up's rationale + `classification_produced`, before acting (MED-92/93)."""

    session_id: str
    rationale: RationaleOccurrence
    classification: str
    confidence: float

    def apply(self, conn: apsw.Connection, ctx: Context) -> RecordedClassification:
        return record_classification(
            conn,
            self.session_id,
            self.rationale,
            classification=self.classification,
            confidence=self.confidence,
            now=ctx.now,
        )


class IncrementEvalFailures(Request[int], frozen=True):
    """One more failed evaluation; answers the new count (MED-95)."""

    session_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return increment_eval_failures(conn, self.session_id)


class MarkClassified(Request[bool], frozen=True):
    """A mid-session Summarize: `classified`, marker = F, failures 0 (MED-93/94)."""

    session_id: str
    marker: int

    def apply(self, conn: apsw.Connection, ctx: Context) -> bool:
        return mark_classified(conn, self.session_id, self.marker, ctx.now)


class ListPendingEvaluations(Request[tuple[str, ...]], frozen=True):
    """`awaiting_response` sessions with unevaluated fresh inbound messages (Q-1)."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[str, ...]:
        return pending_evaluations(conn)


class ListUnresponsiveSessions(Request[tuple[EscalatableSession, ...]], frozen=True):
    """Sessions whose parties were silent past the timeout at `now` (§12.1 #4)."""

    now: int
    timeout_seconds: int

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[EscalatableSession, ...]:
        return unresponsive_sessions(conn, self.now, self.timeout_seconds)


class ListWaitingSessions(Request[tuple[EscalatableSession, ...]], frozen=True):
    """Every session waiting on the parties (what a lost authorization ends, MED-56)."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[EscalatableSession, ...]:
        return waiting_sessions(conn)


class RecommendSessionEscalation(Request[SessionEscalated], frozen=True):
    """Session-scoped recommend with its handoff and the routed notice (MED-121..126)."""

    escalation: SessionEscalation
    solvers: tuple[str, ...]

    def apply(self, conn: apsw.Connection, ctx: Context) -> SessionEscalated:
        return recommend_session_escalation(conn, self.escalation, self.solvers, ctx.now)
