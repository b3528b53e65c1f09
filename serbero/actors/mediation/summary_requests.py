"""The tracker requests of summary delivery (MED-110..113, MED-124); each is one store step
the tracker runs as one transaction."""

from __future__ import annotations

import apsw

from serbero.actors.tracker import Context, Request
from serbero.reasoning.types import TranscriptEntry
from serbero.store.escalate import SessionEscalated
from serbero.store.rounds import transcript
from serbero.store.summaries import (
    GeneratedSummary,
    SummaryJob,
    SummaryRecord,
    begin_summary,
    escalate_summary,
    record_summary,
    summaries_due,
)

__all__ = ["BeginSummary", "EscalateSummary", "ListSummariesDue", "RecordSummary"]

Begun = tuple[SummaryJob, tuple[TranscriptEntry, ...]]


class BeginSummary(Request[Begun | None], frozen=True, kw_only=True):
    """`classified -> summary_pending` (or a crashed summary's job again), with the stored
    transcript (MED-96) when `with_transcript`; None when the session is not due."""

    session_id: str
    with_transcript: bool = False

    def apply(self, conn: apsw.Connection, ctx: Context) -> Begun | None:
        job = begin_summary(conn, self.session_id, ctx.now)
        if job is None:
            return None
        return job, transcript(conn, self.session_id) if self.with_transcript else ()


class ListSummariesDue(Request[tuple[str, ...]], frozen=True):
    """Sessions the tick delivers (Q-2)."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[str, ...]:
        return summaries_due(conn)


class RecordSummary(Request[SummaryRecord], frozen=True):
    """The guarded summary, its rationale, event and routed DM, one transaction (MED-110)."""

    job: SummaryJob
    summary: GeneratedSummary
    solvers: tuple[str, ...]

    def apply(self, conn: apsw.Connection, ctx: Context) -> SummaryRecord:
        return record_summary(conn, self.job, self.summary, self.solvers, ctx.now)


class EscalateSummary(Request[SessionEscalated | None], frozen=True):
    """A summary that cannot be made or shown escalates its session (MED-111, Q-5)."""

    session_id: str
    dispute_id: str
    trigger: str
    reason: str
    solvers: tuple[str, ...]

    def apply(self, conn: apsw.Connection, ctx: Context) -> SessionEscalated | None:
        return escalate_summary(
            conn,
            self.session_id,
            self.dispute_id,
            trigger=self.trigger,
            reason=self.reason,
            solvers=self.solvers,
            now=ctx.now,
        )
