"""The engine's evaluation stages: follow-up rounds, the round limit, the timeout sweep, the
failure budget and a lost authorization (§7, §9.1, §12.1, MED-56, Q-1).

After the parties answer, the transcript goes back to the model; the policy turns its reading
into one action: another question to each party (`Round N. ...`, guarded, BEY-19), a summary
for the solver (the session becomes `classified` and the summaries stage takes over), or an
escalation. Whatever ends a session goes through the session-scoped recommend, which writes
the handoff and queues the solvers' notice in one transaction (MED-121..126).

Each session is evaluated at most once per tick and never by two tasks at once. Between ticks,
an answer the live watch stores that completes a round (both parties have answered) is
evaluated at once; one stored while its session is being evaluated is evaluated right after.
A failed evaluation (provider, store or relay) counts against the session's budget (MED-95):
it is tried again on the next tick while the count stays below `FAILURE_THRESHOLD` (Q-1), and
escalated `reasoning_unavailable` when it reaches it. This stage only ends sessions that wait
on the parties; a `classified` or `summary_pending` session belongs to the summaries stage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final

from serbero.actors.mediation.auth import SolverAuth
from serbero.actors.mediation.chat import ChatActor, InboundBatch, NoChatMaterial
from serbero.actors.mediation.requests import (
    GetEvaluationSnapshot,
    IncrementEvalFailures,
    ListPendingEvaluations,
    ListUnresponsiveSessions,
    ListWaitingSessions,
    MarkClassified,
    RecommendSessionEscalation,
    RecordMidSessionClassification,
)
from serbero.actors.tracker import Tracker
from serbero.actors.tracker_requests import GetSessionChatKeys
from serbero.log import get_logger
from serbero.mediation.bringup import MediationContext
from serbero.mediation.policy import (
    AskClarification,
    EscalationTrigger,
    MidSession,
    Summarize,
    decide,
    round_limit_reached,
)
from serbero.protocol.chat import ChatError
from serbero.reasoning.errors import ReasoningError
from serbero.reasoning.types import Classification, ClassifyRequest, TranscriptEntry
from serbero.store.chat import Fresh
from serbero.store.errors import StoreError
from serbero.store.escalate import SessionEscalation
from serbero.store.rationale import RationaleOccurrence
from serbero.store.rounds import AWAITING_RESPONSE, PARTY_WAIT_STATES, EvaluationSnapshot

__all__ = [
    "FAILURE_THRESHOLD",
    "Deliver",
    "RoundEvaluator",
]

log = get_logger("serbero.mediation")

# MED-5/95: this many failed evaluations in a row end the session `reasoning_unavailable`.
FAILURE_THRESHOLD: Final = 3

# The summaries stage: deliver a `classified` session's summary from this transcript.
Deliver = Callable[[str, tuple[TranscriptEntry, ...]], Awaitable[None]]


def _no_ring() -> None:
    return None


class RoundEvaluator:
    """Evaluates sessions after party replies and ends the ones that cannot go on.

    Notices go to `context.solvers` as routed by MED-112; `deliver`: the summaries stage;
    `ring_sender`: wakes the sender after a notice was queued.
    """

    def __init__(
        self,
        tracker: Tracker,
        context: MediationContext,
        chat: ChatActor,
        auth: SolverAuth,
        *,
        deliver: Deliver,
        ring_sender: Callable[[], None] = _no_ring,
    ) -> None:
        self._tracker = tracker
        self._context = context
        self._chat = chat
        self._auth = auth
        self._deliver = deliver
        self._ring_sender = ring_sender
        self._busy: set[str] = set()
        self._evaluated: set[str] = set()
        # Busy sessions that got another answer meanwhile: evaluated again when free.
        self._again: set[str] = set()
        self._losses_seen = auth.losses

    # --- entry points ----------------------------------------------------------------------

    async def on_batch(self, batch: InboundBatch) -> None:
        """A session's ingest outcomes of one pass: the round limit per Fresh (MED-103), then
        one evaluation if anything fresh arrived (MED-93)."""
        session_id = batch.session_id
        fresh = [outcome for outcome in batch.outcomes if isinstance(outcome, Fresh)]
        if not fresh:
            return
        if session_id in self._busy:
            # The running evaluation may have read the transcript before this answer.
            self._again.add(session_id)
            return
        with self._claim(session_id):
            max_rounds = self._context.mediation.max_rounds
            for outcome in fresh:
                if round_limit_reached(outcome.round_count, max_rounds):
                    await self._round_limit(session_id, outcome.inner_event_id)
                    return
            await self._evaluate_until_current(session_id)

    async def on_answer(self, batch: InboundBatch) -> None:
        """An answer the live watch stored between ticks (BEY-30): evaluated now when it
        completed a round, the other party having answered already; a lone answer waits
        for the tick (Q-1's pass), so one question's two answers are read together."""
        if any(isinstance(outcome, Fresh) and outcome.round_complete for outcome in batch.outcomes):
            await self.on_batch(batch)

    async def evaluate_pending(self) -> None:
        """Q-1: every `awaiting_response` session with fresh messages past its marker that
        this tick has not evaluated yet; a failed evaluation is retried here. Ends the tick
        for `on_batch`'s once-per-tick rule."""
        try:
            pending = await self._tracker.ask(ListPendingEvaluations())
        except StoreError as exc:
            log.warning("mediation_stage_failed", stage="evaluate_pending", error=str(exc))
            pending = ()
        for session_id in pending:
            if session_id in self._busy or session_id in self._evaluated:
                continue
            with self._claim(session_id):
                await self._evaluate_until_current(session_id)
        self._evaluated.clear()

    async def sweep(self, now: int) -> None:
        """§12.1 #4: end sessions whose parties were silent past
        `[mediation].party_response_timeout_seconds` (0 = off) with `party_unresponsive`;
        and, when the authorization was lost since the last sweep, every session waiting on
        the parties with `authorization_lost` (MED-56)."""
        if self._auth.losses != self._losses_seen:
            self._losses_seen = self._auth.losses
            await self._end_waiting_sessions()
        timeout = self._context.mediation.party_response_timeout_seconds
        try:
            silent = await self._tracker.ask(ListUnresponsiveSessions(now, timeout))
        except StoreError as exc:
            log.warning("mediation_stage_failed", stage="sweep", error=str(exc))
            return
        for session in silent:
            if session.session_id not in self._busy:
                await self._escalate(session.session_id, session.dispute_id, "party_unresponsive")

    async def authorization_lost(self, error: str) -> None:
        """MED-56: Serbero is no longer a solver: the handle goes unauthorized (a new retry
        loop starts) and every session waiting on the parties is escalated
        `authorization_lost`."""
        self._auth.report_lost(error)
        self._losses_seen = self._auth.losses
        await self._end_waiting_sessions()

    async def policy_changed(self, session_id: str, dispute_id: str) -> None:
        """MED-151/125: a live session pinned to another policy than the loaded one, whose
        chat keys could not be rebuilt, cannot go on: escalated `policy_bundle_missing` with
        both hashes, through the recommend so the dispatcher sees it (Q-5, BEY-17)."""
        await self._escalate(
            session_id,
            dispute_id,
            "policy_bundle_missing",
            loaded_hash=self._context.bundle.policy_hash,
        )

    # --- evaluation --------------------------------------------------------------------------

    @contextmanager
    def _claim(self, session_id: str) -> Iterator[None]:
        self._busy.add(session_id)
        self._evaluated.add(session_id)
        try:
            yield
        finally:
            self._busy.discard(session_id)
            self._again.discard(session_id)

    async def _evaluate_until_current(self, session_id: str) -> None:
        await self._evaluate(session_id)
        while session_id in self._again:
            self._again.discard(session_id)
            await self._evaluate(session_id)

    async def _evaluate(self, session_id: str) -> None:
        """MED-93 for one session; every failure after the checks counts (MED-95)."""
        try:
            snapshot = await self._tracker.ask(GetEvaluationSnapshot(session_id))
        except StoreError as exc:
            log.warning("mediation_stage_failed", stage="evaluate", error=str(exc))
            return
        if snapshot is None or snapshot.state != AWAITING_RESPONSE:
            return
        if snapshot.fresh_inbound <= snapshot.marker:
            return
        if round_limit_reached(snapshot.round_count, self._context.mediation.max_rounds):
            # A reply that reached the limit while the session was busy, seen by Q-1's pass.
            await self._round_limit(session_id, snapshot.latest_fresh_inbound)
            return
        if self._chat.material(session_id) is None:
            log.info("mediation_evaluation_skipped", session_id=session_id, reason="no chat keys")
            return
        if snapshot.initiator_role is None:
            log.warning(
                "mediation_evaluation_skipped", session_id=session_id, reason="no initiator role"
            )
            return
        if snapshot.dropped:
            log.warning(
                "mediation_transcript_rows_dropped", session_id=session_id, rows=snapshot.dropped
            )
        try:
            classification = await self._context.provider.classify(
                ClassifyRequest(
                    session_id=session_id,
                    dispute_id=snapshot.dispute_id,
                    initiator_role=snapshot.initiator_role,
                    round_count=snapshot.round_count,
                    transcript=snapshot.transcript,
                ),
                self._context.bundle,
            )
        except ReasoningError as exc:
            await self._failed(snapshot, "classify", exc.category)
            return
        await self._act(snapshot, classification)

    async def _act(self, snapshot: EvaluationSnapshot, classification: Classification) -> None:
        """MED-93 steps 6-7: persist the reading, decide, and carry the action out."""
        session_id = snapshot.session_id
        bundle = self._context.bundle
        try:
            recorded = await self._tracker.ask(
                RecordMidSessionClassification(
                    session_id=session_id,
                    rationale=RationaleOccurrence(
                        text=classification.rationale,
                        purpose="classification",
                        dispute_id=snapshot.dispute_id,
                        session_id=session_id,
                        provider=self._context.reasoning.provider,
                        model=self._context.reasoning.model,
                        prompt_bundle_id=bundle.bundle_id,
                        policy_hash=bundle.policy_hash,
                    ),
                    classification=classification.label,
                    confidence=classification.confidence,
                )
            )
        except StoreError as exc:
            await self._failed(snapshot, "record", str(exc))
            return
        action = decide(classification, MidSession(recorded.n))
        if isinstance(action, AskClarification):
            try:
                delivery = await self._chat.send_round(
                    session_id,
                    recorded.n,
                    action.buyer_text,
                    action.seller_text,
                    marker=snapshot.fresh_inbound,
                )
            except (NoChatMaterial, ChatError, StoreError) as exc:
                await self._failed(snapshot, "follow_up", str(exc))
                return
            # The round is committed; a half no relay took goes out at the next pass.
            log.info(
                "mediation_follow_up_sent",
                session_id=session_id,
                round=recorded.n,
                buyer_sent=delivery.buyer_sent,
                seller_sent=delivery.seller_sent,
            )
        elif isinstance(action, Summarize):
            await self._summarize(snapshot)
        else:
            if action.guard_match:
                log.warning(
                    "mediation_clarification_suppressed",
                    session_id=session_id,
                    matched=action.guard_match,
                )
            if not await self._escalate(session_id, snapshot.dispute_id, action.trigger):
                await self._failed(snapshot, "escalate", "recommend failed")

    async def _summarize(self, snapshot: EvaluationSnapshot) -> None:
        """Summarize: `classified` (marker and failures with it, MED-94), then the summaries
        stage delivers from this transcript."""
        session_id = snapshot.session_id
        try:
            moved = await self._tracker.ask(MarkClassified(session_id, snapshot.fresh_inbound))
        except StoreError as exc:
            await self._failed(snapshot, "classify_state", str(exc))
            return
        if not moved:
            return
        log.info("mediation_summary_requested", session_id=session_id)
        try:
            await self._deliver(session_id, snapshot.transcript)
        except StoreError as exc:
            # The session stays `classified`; the summaries stage's tick delivers it.
            log.warning("mediation_stage_failed", stage="deliver", error=str(exc))

    async def _failed(self, snapshot: EvaluationSnapshot, stage: str, error: str) -> None:
        """MED-95: count the failure; at the threshold, escalate `reasoning_unavailable`."""
        session_id = snapshot.session_id
        try:
            failures = await self._tracker.ask(IncrementEvalFailures(session_id))
        except StoreError as exc:
            log.warning("mediation_stage_failed", stage="count_failure", error=str(exc))
            return
        log.warning(
            "mediation_evaluation_failed",
            session_id=session_id,
            stage=stage,
            error=error,
            failures=failures,
        )
        if failures >= FAILURE_THRESHOLD:
            await self._escalate(session_id, snapshot.dispute_id, "reasoning_unavailable")

    # --- escalation --------------------------------------------------------------------------

    async def _round_limit(self, session_id: str, evidence: str | None) -> None:
        """MED-103: the parties answered `max_rounds` rounds; a human takes it from here."""
        try:
            keys = await self._tracker.ask(GetSessionChatKeys(session_id))
        except StoreError as exc:
            log.warning("mediation_stage_failed", stage="round_limit", error=str(exc))
            return
        if keys is None or keys.state not in PARTY_WAIT_STATES:
            return
        await self._escalate(
            session_id,
            keys.dispute_id,
            "round_limit",
            evidence_refs=() if evidence is None else (evidence,),
        )

    async def _end_waiting_sessions(self) -> None:
        try:
            sessions = await self._tracker.ask(ListWaitingSessions())
        except StoreError as exc:
            log.warning("mediation_stage_failed", stage="authorization_lost", error=str(exc))
            return
        for session in sessions:
            if session.session_id not in self._busy:
                await self._escalate(session.session_id, session.dispute_id, "authorization_lost")

    async def _escalate(
        self,
        session_id: str,
        dispute_id: str,
        trigger: EscalationTrigger,
        *,
        evidence_refs: tuple[str, ...] = (),
        loaded_hash: str | None = None,
    ) -> bool:
        """The session-scoped recommend with its notice (MED-121, MED-126); only a session
        still waiting on the parties is ended. False (logged) when nothing was written."""
        request = SessionEscalation(
            session_id=session_id,
            dispute_id=dispute_id,
            trigger=trigger,
            evidence_refs=evidence_refs,
            loaded_hash=loaded_hash,
            from_states=PARTY_WAIT_STATES,
        )
        try:
            done = await self._tracker.ask(
                RecommendSessionEscalation(request, self._context.solvers)
            )
        except StoreError as exc:
            log.warning(
                "mediation_escalation_failed",
                session_id=session_id,
                trigger=trigger,
                error=str(exc),
            )
            return False
        self._chat.forget(session_id)
        if done.outbox_ids:
            self._ring_sender()
        log.info(
            "mediation_session_escalated",
            session_id=session_id,
            dispute_id=dispute_id,
            trigger=trigger,
            notices=len(done.outbox_ids),
            notice_skipped=done.notice_skipped,
        )
        return True
