"""The open procedure: verdict before take, take before session (§3 MED-32, §4).

One start attempt for one dispute, in the spec's order: eligibility and
`start_attempt_started`, the auth gate, the provider's health, the live-session check, the
verdict (classify + policy), the take, the session commit, the rationale bind and the opening
round to both parties. Each store step is its own tracker request, so the audit events come
in MED-50's order. No take happens without a positive verdict from the same attempt, and no
session row exists without a successful take. The opening round's rows are committed with
the session (published after the bind), so a crash never leaves a session its parties were
never written to: a restart publishes what is unsent (Q-4).

Two departures from the reference, both in `beyond.md`: a provider that is unreachable or
times out during the verdict leaves the dispute eligible for a later attempt instead of
escalating it (BEY-20, Q-19), and a `cant-do` Mostro sent about this dispute is reported as
final so the start actor does not take again every tick (BEY-15).
"""

from __future__ import annotations

from collections.abc import Callable

from serbero.actors.mediation.auth import AUTH_TERMINATED, SolverAuth
from serbero.actors.mediation.chat import ChatActor
from serbero.actors.mediation.start import OpenResult
from serbero.actors.mediation.take import NOT_AUTHORIZED, TakeClient, TakeFailed
from serbero.actors.tracker import Tracker
from serbero.actors.tracker_requests import (
    BeginStartAttempt,
    BindRationale,
    GetLiveSession,
    OpenSession,
    RecommendDisputeEscalation,
    RecordPolicyEscalate,
    RecordReasoningCallFailed,
    RecordStartStopped,
    RecordTake,
    RecordVerdict,
    StoreRationale,
)
from serbero.log import get_logger
from serbero.mediation.bringup import MediationContext
from serbero.mediation.policy import AskClarification, Escalate, Initial, Summarize, decide
from serbero.reasoning.errors import ReasoningError
from serbero.reasoning.types import Classification, ClassifyRequest, Role
from serbero.store.errors import StoreError
from serbero.store.rationale import FailedCall, RationaleOccurrence
from serbero.store.sessions import AlreadyOpen, NewSession, StartTrigger, TakeOutcome, Verdict

__all__ = [
    "Opener",
]

log = get_logger("serbero.mediation")


class Opener:
    """Runs start attempts with the shared mediation context (MED-11)."""

    def __init__(
        self,
        tracker: Tracker,
        context: MediationContext,
        auth: SolverAuth,
        take: TakeClient,
        chat: ChatActor,
        *,
        ring_sender: Callable[[], None] = lambda: None,
    ) -> None:
        self._tracker = tracker
        self._context = context
        self._auth = auth
        self._take = take
        self._chat = chat
        # Tells the outbox sender a notice was queued (it would find it on its own later).
        self._ring_sender = ring_sender

    @property
    def _bundle_args(self) -> tuple[str, str]:
        bundle = self._context.bundle
        return bundle.bundle_id, bundle.policy_hash

    async def attempt(self, dispute_id: str, role: Role, trigger: StartTrigger) -> OpenResult:
        """One start attempt (MED-32); store errors propagate as the attempt's error."""
        if not await self._tracker.ask(BeginStartAttempt(dispute_id, trigger)):
            return OpenResult(outcome="ineligible", dispute_id=dispute_id)
        refusal = self._auth.refusal()
        if refusal is not None:
            terminated = refusal == AUTH_TERMINATED
            await self._tracker.ask(
                RecordStartStopped(dispute_id, "auth_terminated" if terminated else "auth_pending")
            )
            return OpenResult(
                outcome="refused", dispute_id=dispute_id, detail=refusal, retry=not terminated
            )
        try:
            await self._context.provider.health_check()
        except ReasoningError as exc:
            await self._tracker.ask(RecordStartStopped(dispute_id, "reasoning_unhealthy"))
            return OpenResult(
                outcome="refused", dispute_id=dispute_id, detail=exc.message, retry=True
            )
        live = await self._tracker.ask(GetLiveSession(dispute_id))
        if live is not None:
            return OpenResult(outcome="already_open", dispute_id=dispute_id, session_id=live)
        return await self._verdict_then_take(dispute_id, role)

    async def _verdict_then_take(self, dispute_id: str, role: Role) -> OpenResult:
        bundle_id, policy_hash = self._bundle_args
        request = ClassifyRequest(
            session_id=dispute_id, dispute_id=dispute_id, initiator_role=role, round_count=0
        )
        classification: Classification | None = None
        try:
            classification = await self._context.provider.classify(request, self._context.bundle)
        except ReasoningError as exc:
            await self._record_failed_call(dispute_id, exc)
            # A provider that is down says nothing about the dispute: try later (BEY-20).
            if exc.retryable:
                await self._tracker.ask(RecordStartStopped(dispute_id, "reasoning_provider_error"))
                return OpenResult(
                    outcome="failed", dispute_id=dispute_id, detail=exc.message, retry=True
                )
        rationale = None
        if classification is not None:
            rationale = await self._tracker.ask(
                StoreRationale(
                    RationaleOccurrence(
                        text=classification.rationale,
                        purpose="classification",
                        dispute_id=dispute_id,
                        session_id=None,
                        provider=self._context.reasoning.provider,
                        model=self._context.reasoning.model,
                        prompt_bundle_id=bundle_id,
                        policy_hash=policy_hash,
                    )
                )
            )
        action = (
            Escalate(trigger="reasoning_unavailable")
            if classification is None
            else decide(classification, Initial())
        )
        await self._record_verdict(dispute_id, action)
        if isinstance(action, Escalate):
            await self._tracker.ask(
                RecordPolicyEscalate(dispute_id, action.trigger, bundle_id, policy_hash)
            )
            handoff = await self._tracker.ask(
                RecommendDisputeEscalation(
                    dispute_id=dispute_id,
                    trigger=action.trigger,
                    rationale_refs=() if rationale is None else (rationale.rationale_id,),
                    bundle_id=bundle_id,
                    policy_hash=policy_hash,
                    notify=self._context.solvers,
                )
            )
            if handoff is not None and self._context.solvers:
                self._ring_sender()
            log.info(
                "mediation_escalated_before_take", dispute_id=dispute_id, trigger=action.trigger
            )
            return OpenResult(
                outcome="escalated_before_take", dispute_id=dispute_id, trigger=action.trigger
            )
        assert classification is not None
        try:
            taken = await self._take.take(dispute_id)
        except TakeFailed as exc:
            await self._tracker.ask(
                RecordTake(dispute_id, TakeOutcome(False, exc.reason), bundle_id, policy_hash)
            )
            # Mostro also answers `invalid_pubkey` to a solver once anyone took the dispute,
            # so only `not_authorized` says Serbero's key is no solver (MED-56, Q-8).
            if exc.cant_do == NOT_AUTHORIZED:
                self._auth.report_lost(exc.reason)
            return OpenResult(
                outcome="take_refused" if exc.refused else "failed",
                dispute_id=dispute_id,
                detail=exc.reason,
                retry=not exc.refused,
            )
        await self._tracker.ask(RecordTake(dispute_id, TakeOutcome(True), bundle_id, policy_hash))
        material = taken.material
        # The opening round is built now and stored with the session, so no crash can leave
        # a session its parties never hear from; it is published after the bind (MED-50).
        prepared = (
            self._chat.prepare_round(material, None, action.buyer_text, action.seller_text)
            if isinstance(action, AskClarification)
            else None
        )
        session = NewSession(
            dispute_id=dispute_id,
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            buyer_shared_pubkey=material.buyer_shared.public_hex,
            seller_shared_pubkey=material.seller_shared.public_hex,
            buyer_trade_pubkey=taken.buyer_trade_pubkey,
            seller_trade_pubkey=taken.seller_trade_pubkey,
            opening=None if prepared is None else prepared.opening(),
        )
        opened = await self._tracker.ask(OpenSession(session))
        if isinstance(opened, AlreadyOpen):
            return OpenResult(
                outcome="already_open", dispute_id=dispute_id, session_id=opened.session_id
            )
        session_id = opened.session_id
        await self._tracker.ask(
            BindRationale(
                session_id=session_id,
                classification=classification.label,
                confidence=classification.confidence,
                rationale_id=None if rationale is None else rationale.rationale_id,
                occurrence_id=None if rationale is None else rationale.occurrence_id,
                bundle_id=bundle_id,
                policy_hash=policy_hash,
                classified=isinstance(action, Summarize),
            )
        )
        self._chat.remember(session_id, material)
        if prepared is None:
            # the summary of a session classified at open is left to the engine's rounds.
            log.info("mediation_ready_for_summary", dispute_id=dispute_id, session_id=session_id)
            return OpenResult(
                outcome="ready_for_summary", dispute_id=dispute_id, session_id=session_id
            )
        await self._chat.publish_round(session_id, prepared)
        log.info("mediation_session_opened", dispute_id=dispute_id, session_id=session_id)
        return OpenResult(outcome="opened", dispute_id=dispute_id, session_id=session_id)

    async def _record_failed_call(self, dispute_id: str, exc: ReasoningError) -> None:
        bundle_id, policy_hash = self._bundle_args
        await self._tracker.ask(
            RecordReasoningCallFailed(
                FailedCall(
                    dispute_id=dispute_id,
                    provider=self._context.reasoning.provider,
                    model=self._context.reasoning.model,
                    attempt_count=1,
                    error_category=exc.category,
                    prompt_bundle_id=bundle_id,
                    policy_hash=policy_hash,
                )
            )
        )

    async def _record_verdict(
        self, dispute_id: str, action: AskClarification | Summarize | Escalate
    ) -> None:
        """MED-44; a failed write is logged and the attempt goes on."""
        if isinstance(action, Escalate):
            verdict = Verdict(decision="escalate", trigger=action.trigger)
        elif isinstance(action, Summarize):
            verdict = Verdict(
                decision="summarize", classification=action.label, confidence=action.confidence
            )
        else:
            verdict = Verdict(decision="ask_clarification")
        bundle_id, policy_hash = self._bundle_args
        try:
            await self._tracker.ask(RecordVerdict(dispute_id, verdict, bundle_id, policy_hash))
        except StoreError as exc:
            log.warning("reasoning_verdict_write_failed", dispute_id=dispute_id, error=str(exc))
