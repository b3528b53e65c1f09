"""Summary delivery: a classified session's summary, asked of the model, guarded, stored
and routed to the solvers, or the session escalated (§11, MED-110..113, MED-131, Q-2).

Two ways in. The rounds stage hands over a session it has just classified, with the
transcript it evaluated (`deliver`). The engine's tick calls `deliver_pending`, which finds
every session still `classified` (a Summarize at open, Q-2, or a hand-over the daemon did
not live to finish) and every `summary_pending` session a crash left without a summary, and
delivers each from the stored transcript.

The DM itself goes through the outbox: the session closes when a relay accepts the first
summary DM, in the transaction recording that outcome (`settle_summary_dm`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from serbero.actors.mediation.summary_requests import (
    BeginSummary,
    EscalateSummary,
    ListSummariesDue,
    RecordSummary,
)
from serbero.actors.tracker import Tracker
from serbero.log import get_logger
from serbero.mediation.bringup import MediationContext
from serbero.mediation.guard import check_summary
from serbero.reasoning.errors import ReasoningError
from serbero.reasoning.types import LABELS, SummarizeRequest, TranscriptEntry
from serbero.store.errors import StoreError
from serbero.store.rationale import RationaleOccurrence
from serbero.store.summaries import (
    NO_RECIPIENTS,
    NOTIFICATION_FAILED,
    GeneratedSummary,
    SummaryEscalated,
    SummaryGone,
    SummaryJob,
    log_summary_escalated,
)

__all__ = ["SummaryDelivery"]

log = get_logger("serbero.mediation")

AUTHORITY_BOUNDARY: Final = "authority_boundary_attempt"
REASONING_UNAVAILABLE: Final = "reasoning_unavailable"
# a summary that could not be stored escalates with this reason, not the error text.
STORE_FAILED_REASON: Final = "summary could not be stored"
NO_CLASSIFICATION_REASON: Final = "no classification recorded for the session"


def _no_ring() -> None:
    return None


class SummaryDelivery:
    """Delivers summaries with the shared mediation context (MED-11); one at a time per
    session, so the tick never summarises a session the rounds stage is summarising."""

    def __init__(
        self,
        tracker: Tracker,
        context: MediationContext,
        *,
        ring_sender: Callable[[], None] = _no_ring,
    ) -> None:
        self._tracker = tracker
        self._context = context
        self._ring_sender = ring_sender
        self._in_flight: set[str] = set()

    async def deliver(self, session_id: str, transcript: tuple[TranscriptEntry, ...]) -> None:
        """MED-110..113 for one `classified` session, from `transcript`."""
        await self._run(session_id, transcript)

    async def deliver_pending(self) -> None:
        """The tick's stage (Q-2): every session due a summary, oldest first; a failure is
        logged and the next session still gets its turn."""
        try:
            due = await self._tracker.ask(ListSummariesDue())
        except StoreError as exc:
            log.warning("mediation_summary_failed", session_id=None, stage="list", error=str(exc))
            return
        for session_id in due:
            await self._run(session_id, None)

    async def _run(self, session_id: str, transcript: tuple[TranscriptEntry, ...] | None) -> None:
        if session_id in self._in_flight:
            return
        self._in_flight.add(session_id)
        try:
            await self._summarise(session_id, transcript)
        except StoreError as exc:
            log.warning(
                "mediation_summary_failed", session_id=session_id, stage="store", error=str(exc)
            )
        finally:
            self._in_flight.discard(session_id)

    async def _summarise(
        self, session_id: str, transcript: tuple[TranscriptEntry, ...] | None
    ) -> None:
        begun = await self._tracker.ask(
            BeginSummary(session_id=session_id, with_transcript=transcript is None)
        )
        if begun is None:
            return
        job, stored_transcript = begun
        if job.classification not in LABELS or job.confidence is None:
            await self._escalate(job, REASONING_UNAVAILABLE, NO_CLASSIFICATION_REASON)
            return
        request = SummarizeRequest(
            session_id=job.session_id,
            dispute_id=job.dispute_id,
            label=job.classification,
            confidence=job.confidence,
            transcript=stored_transcript if transcript is None else transcript,
        )
        try:
            summary = await self._context.provider.summarize(request, self._context.bundle)
        except ReasoningError as exc:
            # the category, never the provider's text (it can quote model output).
            await self._escalate(job, REASONING_UNAVAILABLE, exc.category)
            return
        violation = check_summary(summary)
        if violation is not None:
            await self._escalate(
                job, AUTHORITY_BOUNDARY, violation.reason, matched=violation.matched
            )
            return
        generated = GeneratedSummary(
            summary_text=summary.summary_text,
            suggested_next_step=summary.suggested_next_step,
            rationale=RationaleOccurrence(
                text=summary.rationale,
                purpose="summary",
                dispute_id=job.dispute_id,
                session_id=job.session_id,
                provider=self._context.reasoning.provider,
                model=self._context.reasoning.model,
                prompt_bundle_id=job.prompt_bundle_id,
                policy_hash=job.policy_hash,
            ),
        )
        try:
            record = await self._tracker.ask(RecordSummary(job, generated, self._context.solvers))
        except StoreError as exc:
            log.warning(
                "mediation_summary_failed", session_id=session_id, stage="record", error=str(exc)
            )
            await self._escalate(job, REASONING_UNAVAILABLE, STORE_FAILED_REASON)
            return
        if isinstance(record, SummaryGone):
            log.info(
                "mediation_summary_dropped",
                dispute_id=job.dispute_id,
                session_id=session_id,
                state=record.state,
            )
            return
        if isinstance(record, SummaryEscalated):
            self._ring_sender()
            log_summary_escalated(job.dispute_id, session_id, NOTIFICATION_FAILED, NO_RECIPIENTS)
            return
        self._ring_sender()
        log.info(
            "mediation_summary_queued",
            dispute_id=job.dispute_id,
            session_id=session_id,
            recipients=len(record.recipients),
        )

    async def _escalate(
        self, job: SummaryJob, trigger: str, reason: str, *, matched: str = ""
    ) -> None:
        escalated = await self._tracker.ask(
            EscalateSummary(job.session_id, job.dispute_id, trigger, reason, self._context.solvers)
        )
        if escalated is None:
            return
        if escalated.outbox_ids:
            self._ring_sender()
        log_summary_escalated(job.dispute_id, job.session_id, trigger, reason, matched)
