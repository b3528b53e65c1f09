"""The tracker's request catalogue: every store step another actor may ask for.

Each request is a frozen struct naming one logical store step, run by the tracker as one
transaction (see `serbero.actors.tracker`). The steps themselves live in `serbero.store`;
a request only carries the caller's arguments and adds the batch's clock and randomness.
"""

from __future__ import annotations

import uuid

import apsw
import msgspec

from serbero.actors.tracker import Context, Request
from serbero.store.auth_events import AuthEventKind, record_auth_event
from serbero.store.chat import (
    InboundEnvelope,
    IngestOutcome,
    OutboundRound,
    SessionChatKeys,
    UnsentOutbound,
    ingest_inbound,
    live_session_chat_keys,
    record_outbound_round,
    record_outbound_sent,
    record_trade_pubkeys,
    session_chat_keys,
    unsent_outbound,
)
from serbero.store.disputes import (
    AssignmentResult,
    DetectionResult,
    Dispute,
    DisputeEvent,
    RenotificationResult,
    Since,
    UnattendedDispute,
    compute_since,
    enqueue_renotification,
    get_dispute,
    list_unattended,
    record_detected,
)
from serbero.store.errors import UnknownOutboxRow
from serbero.store.escalation import (
    HANDOFF_PAGE_SIZE,
    DispatchRecord,
    HandoffRow,
    ParseFailure,
    RecipientOutcome,
    pending_handoffs_page,
    record_dispatch,
    record_parse_failed,
    record_superseded,
    record_unroutable,
)
from serbero.store.health import RelayHealth, write_health
from serbero.store.notifications import NotificationRecord, record_notifications
from serbero.store.outbox import (
    OutboxClaim,
    OutboxCompletion,
    OutboxMessage,
    OutboxOutcome,
    claim_due,
    count_pending,
    expedite_retries,
    next_due_at,
    requeue_in_flight,
)
from serbero.store.owed import (
    OwedInitial,
    OwedQueued,
    OwedRetry,
    OwedWork,
    find_owed,
    queue_owed,
)
from serbero.store.rationale import (
    FailedCall,
    RationaleOccurrence,
    StoredRationale,
    record_reasoning_call_failed,
    store_rationale,
)
from serbero.store.resolution import ResolutionOutcome, assign_dispute, resolve_dispute
from serbero.store.sending import SendingOrigin, sending_origin
from serbero.store.sessions import (
    EligibleDispute,
    NewSession,
    OpenOutcome,
    StartTrigger,
    StopReason,
    TakeOutcome,
    Verdict,
    begin_start_attempt,
    bind_rationale,
    is_eligible,
    list_eligible,
    live_session_of,
    open_session,
    recommend_dispute_escalation,
    record_policy_escalate,
    record_start_stopped,
    record_take,
    record_verdict,
)
from serbero.store.summaries import complete_and_settle


class GetDispute(Request[Dispute | None], frozen=True):
    """The dispute's row, or None (ESC-3 lookup, CORE-47/49 loads)."""

    dispute_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> Dispute | None:
        return get_dispute(conn, self.dispute_id)


class ComputeSince(Request[Since], frozen=True):
    """The dispute subscription's `since` (CORE-20/21), against the tracker's wall clock."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> Since:
        return compute_since(conn, ctx.now)


class RecordDetected(Request[DetectionResult], frozen=True):
    """A new `initiated` dispute and its initial DMs (one message per solver), or a duplicate.

    `claim`: how many of the DMs the sender has room for right now; that many are claimed
    in the deciding transaction and come back in `claimed` (the outbox's hot path).
    """

    event: DisputeEvent
    messages: tuple[OutboxMessage, ...] = ()
    claim: int = 0

    def apply(self, conn: apsw.Connection, ctx: Context) -> DetectionResult:
        return record_detected(conn, self.event, self.messages, ctx.now, claim=self.claim)


class RecordAssignment(Request[AssignmentResult], frozen=True):
    """An `in-progress` event: take the dispute and queue the assignment DMs (CORE-47);
    `claim` as for `RecordDetected`; with `serbero_pubkey`, Q-6's takeover too."""

    event: DisputeEvent
    assigned_solver: str | None
    messages: tuple[OutboxMessage, ...] = ()
    claim: int = 0
    serbero_pubkey: str | None = None
    report_recipients: tuple[str, ...] = ()

    def apply(self, conn: apsw.Connection, ctx: Context) -> AssignmentResult:
        return assign_dispute(
            conn,
            self.event,
            self.assigned_solver,
            self.messages,
            ctx.now,
            claim=self.claim,
            serbero_pubkey=self.serbero_pubkey,
            report_recipients=self.report_recipients,
        )


class ResolveDispute(Request[ResolutionOutcome], frozen=True):
    """A terminal event: resolve, supersede live mediation, queue closing notices and, when
    mediation was involved, the resolution report, as one transaction (CORE-49 steps 3-5)."""

    event: DisputeEvent
    notices: tuple[OutboxMessage, ...] = ()
    report_recipients: tuple[str, ...] = ()
    claim: int = 0

    def apply(self, conn: apsw.Connection, ctx: Context) -> ResolutionOutcome:
        return resolve_dispute(
            conn, self.event, self.notices, self.report_recipients, ctx.now, claim=self.claim
        )


class ListUnattended(Request[tuple[UnattendedDispute, ...]], frozen=True):
    """The timer cycle's query (CORE-52); `now` is the cycle's single `now`."""

    now: int
    renotification_seconds: int

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[UnattendedDispute, ...]:
        return list_unattended(conn, self.now, self.renotification_seconds)


class EnqueueRenotification(Request[RenotificationResult], frozen=True):
    """Re-check and queue one dispute's re-notifications (CORE-53, BEY-6)."""

    dispute_id: str
    cycle_now: int
    renotification_seconds: int
    messages: tuple[OutboxMessage, ...] = ()

    def apply(self, conn: apsw.Connection, ctx: Context) -> RenotificationResult:
        return enqueue_renotification(
            conn,
            self.dispute_id,
            cycle_now=self.cycle_now,
            renotification_seconds=self.renotification_seconds,
            messages=self.messages,
            now=ctx.now,
        )


class ClaimOutbox(Request[OutboxClaim], frozen=True):
    """Hand up to `limit` due outbox rows to the sender, oldest first, pair order kept."""

    limit: int

    def apply(self, conn: apsw.Connection, ctx: Context) -> OutboxClaim:
        return claim_due(conn, ctx.now, self.limit)


class CompleteOutboxes(Request[tuple[OutboxCompletion | UnknownOutboxRow, ...]], frozen=True):
    """Several claimed rows' outcomes under one commit, each row atomic on its own; an
    unknown row answers `UnknownOutboxRow` in its place. A summary DM's outcome settles its
    session in the same commit (MED-113)."""

    outcomes: tuple[OutboxOutcome, ...]

    def apply(
        self, conn: apsw.Connection, ctx: Context
    ) -> tuple[OutboxCompletion | UnknownOutboxRow, ...]:
        return complete_and_settle(conn, self.outcomes, ctx.now)


class NextOutboxDue(Request[int | None], frozen=True):
    """When the sender should claim again (wall-clock second), or None: nothing waits."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> int | None:
        return next_due_at(conn)


class ExpediteRetries(Request[int], frozen=True):
    """Make rows waiting out a retry backoff due now (a relay is back); returns how many."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return expedite_retries(conn, ctx.now)


class CountOutboxPending(Request[int], frozen=True):
    """How many decided DMs are still owed (the health snapshot's queue depth)."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return count_pending(conn)


class RequeueInFlight(Request[int], frozen=True):
    """Release every outbox claim; run once at start-up before the sender starts."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return requeue_in_flight(conn)


class FindOwed(Request[OwedWork], frozen=True):
    """Notices the reference left unfinished: `new` disputes and `send_failed` dispatches
    with no outbox row behind them (#12 item 5)."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> OwedWork:
        return find_owed(conn)


class QueueOwed(Request[OwedQueued], frozen=True):
    """Queue the owed notices found by `FindOwed`, each once."""

    initial: tuple[OwedInitial, ...]
    retries: tuple[OwedRetry, ...]

    def apply(self, conn: apsw.Connection, ctx: Context) -> OwedQueued:
        return queue_owed(conn, self.initial, self.retries, ctx.now)


class StartSending(Request[SendingOrigin], frozen=True):
    """The database's gift-wrap salt (drawn the first time) and its last outbox id."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> SendingOrigin:
        return sending_origin(conn, now=ctx.now, rand=ctx.rand)


class RecordNotifications(Request[tuple[int, ...]], frozen=True):
    """Attempt rows for sends made outside the outbox (ESC-26 step 3), in one transaction."""

    records: tuple[NotificationRecord, ...]

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[int, ...]:
        return record_notifications(conn, self.records)


class ScanPendingHandoffs(Request[tuple[HandoffRow, ...]], frozen=True):
    """One page of pending handoffs after `after_id` (ESC-12, ESC-14)."""

    after_id: int = 0
    limit: int = HANDOFF_PAGE_SIZE

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[HandoffRow, ...]:
        return pending_handoffs_page(conn, after_id=self.after_id, limit=self.limit)


class RecordDispatch(Request[DispatchRecord], frozen=True):
    """ESC-28: dispatch row + `escalation_dispatched`, one transaction; the tracker makes the
    `dispatch_id` (UUID v4 from the injected randomness)."""

    handoff: HandoffRow
    dispute_id: str
    outcomes: tuple[RecipientOutcome, ...]
    via_fallback: bool
    dispatched_at: int
    # DMs no relay accepted, queued in the same transaction for the outbox to retry.
    retries: tuple[OutboxMessage, ...] = ()

    def apply(self, conn: apsw.Connection, ctx: Context) -> DispatchRecord:
        return record_dispatch(
            conn,
            dispatch_id=str(uuid.UUID(bytes=ctx.rand(16), version=4)),
            handoff=self.handoff,
            dispute_id=self.dispute_id,
            outcomes=self.outcomes,
            via_fallback=self.via_fallback,
            dispatched_at=self.dispatched_at,
            retries=self.retries,
        )


class RecordSuperseded(Request[bool], frozen=True):
    """ESC-18: `escalation_superseded` unless already written for this handoff."""

    handoff: HandoffRow
    dispute_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> bool:
        return record_superseded(conn, self.handoff, self.dispute_id, ctx.now)


class RecordUnroutable(Request[bool], frozen=True):
    """ESC-21: `escalation_dispatch_unroutable` unless already written for this handoff."""

    handoff: HandoffRow
    dispute_id: str
    configured_solver_count: int

    def apply(self, conn: apsw.Connection, ctx: Context) -> bool:
        return record_unroutable(
            conn, self.handoff, self.dispute_id, self.configured_solver_count, ctx.now
        )


class RecordParseFailed(Request[bool], frozen=True):
    """ESC-16/17: the `escalation_dispatch_parse_failed` event that consumes the handoff."""

    handoff: HandoffRow
    dispute_id: str
    reason: ParseFailure
    detail: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> bool:
        return record_parse_failed(
            conn, self.handoff, self.dispute_id, self.reason, self.detail, ctx.now
        )


class StoreRationale(Request[StoredRationale], frozen=True):
    """A reasoning call's rationale: its text once, one occurrence row each time (MED-170/171,
    Q-16)."""

    occurrence: RationaleOccurrence

    def apply(self, conn: apsw.Connection, ctx: Context) -> StoredRationale:
        return store_rationale(conn, self.occurrence, ctx.now)


class RecordReasoningCallFailed(Request[int], frozen=True):
    """The `reasoning_call_failed` event of a provider call that failed (MED-43); category only."""

    failed: FailedCall

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return record_reasoning_call_failed(conn, self.failed, ctx.now)


class IsEligible(Request[bool], frozen=True):
    """MED-20 for one dispute."""

    dispute_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> bool:
        return is_eligible(conn, self.dispute_id)


class ListEligible(Request[tuple[EligibleDispute, ...]], frozen=True):
    """The tick's batch of eligible disputes, oldest first (MED-21)."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[EligibleDispute, ...]:
        return list_eligible(conn)


class BeginStartAttempt(Request[bool], frozen=True):
    """`start_attempt_started` if eligible (True), else `start_attempt_stopped` (MED-32)."""

    dispute_id: str
    trigger: StartTrigger

    def apply(self, conn: apsw.Connection, ctx: Context) -> bool:
        return begin_start_attempt(conn, self.dispute_id, self.trigger, ctx.now)


class RecordStartStopped(Request[int], frozen=True):
    """A start attempt refused by the auth or health gate (MED-32 (3))."""

    dispute_id: str
    stop_reason: StopReason

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return record_start_stopped(conn, self.dispute_id, self.stop_reason, ctx.now)


class RecordVerdict(Request[int], frozen=True):
    """The open's dispute-scoped `reasoning_verdict` (MED-44)."""

    dispute_id: str
    verdict: Verdict
    bundle_id: str
    policy_hash: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return record_verdict(
            conn, self.dispute_id, self.verdict, self.bundle_id, self.policy_hash, ctx.now
        )


class RecordPolicyEscalate(Request[int], frozen=True):
    """The `start_attempt_stopped {reason: policy_escalate}` of a negative verdict (MED-45)."""

    dispute_id: str
    trigger: str
    bundle_id: str
    policy_hash: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return record_policy_escalate(
            conn, self.dispute_id, self.trigger, self.bundle_id, self.policy_hash, ctx.now
        )


class RecordTake(Request[int], frozen=True):
    """The dispute-scoped `take_dispute_issued` (MED-46)."""

    dispute_id: str
    outcome: TakeOutcome
    bundle_id: str
    policy_hash: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return record_take(
            conn, self.dispute_id, self.outcome, self.bundle_id, self.policy_hash, ctx.now
        )


class GetLiveSession(Request[str | None], frozen=True):
    """The dispute's live session id, if any (MED-42)."""

    dispute_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> str | None:
        return live_session_of(conn, self.dispute_id)


class OpenSession(Request[OpenOutcome], frozen=True):
    """Commit the session after a take under a fresh UUIDv4, re-checked live (MED-47, Q-18),
    with its opening round's rows when it has one."""

    session: NewSession

    def apply(self, conn: apsw.Connection, ctx: Context) -> OpenOutcome:
        session_id = str(uuid.UUID(bytes=ctx.rand(16), version=4))
        return open_session(conn, session_id, self.session, ctx.now)


class BindRationale(Request[int], frozen=True, kw_only=True):
    """The open verdict's rationale joins its session + `classification_produced` (MED-48)."""

    session_id: str
    classification: str
    confidence: float
    rationale_id: str | None
    occurrence_id: int | None
    bundle_id: str
    policy_hash: str
    classified: bool = False

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return bind_rationale(
            conn,
            self.session_id,
            classification=self.classification,
            confidence=self.confidence,
            rationale_id=self.rationale_id,
            occurrence_id=self.occurrence_id,
            bundle_id=self.bundle_id,
            policy_hash=self.policy_hash,
            now=ctx.now,
            classified=self.classified,
        )


class RecommendDisputeEscalation(Request[int | None], frozen=True, kw_only=True):
    """Dispute-scoped `escalation_recommended` + `handoff_prepared` (MED-122/123) and the
    MED-127 notice to every key in `notify`."""

    dispute_id: str
    trigger: str
    rationale_refs: tuple[str, ...]
    bundle_id: str
    policy_hash: str
    notify: tuple[str, ...] = ()

    def apply(self, conn: apsw.Connection, ctx: Context) -> int | None:
        return recommend_dispute_escalation(
            conn,
            self.dispute_id,
            self.trigger,
            rationale_refs=self.rationale_refs,
            bundle_id=self.bundle_id,
            policy_hash=self.policy_hash,
            now=ctx.now,
            notify=self.notify,
        )


class WriteHealth(Request[None], frozen=True):
    """Flush the daemon's health snapshot for `serbero status`."""

    relays: tuple[RelayHealth, ...] = ()
    values: dict[str, str] = msgspec.field(default_factory=dict)
    prune_relays: bool = False
    clear: tuple[str, ...] = ()

    def apply(self, conn: apsw.Connection, ctx: Context) -> None:
        write_health(
            conn,
            relays=self.relays,
            values=self.values,
            now=ctx.now,
            prune_relays=self.prune_relays,
            clear=self.clear,
        )


class RecordTradePubkeys(Request[None], frozen=True):
    """The parties' trade pubkeys on the session row, so a restart re-derives keys (BEY-16)."""

    session_id: str
    buyer_trade_pubkey: str
    seller_trade_pubkey: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> None:
        record_trade_pubkeys(
            conn, self.session_id, self.buyer_trade_pubkey, self.seller_trade_pubkey
        )


class GetSessionChatKeys(Request[SessionChatKeys | None], frozen=True):
    """One session's pubkeys, state and pinned bundle, or None."""

    session_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> SessionChatKeys | None:
        return session_chat_keys(conn, self.session_id)


class ListLiveSessionChatKeys(Request[tuple[SessionChatKeys, ...]], frozen=True):
    """Every Live session's keys: the restart's re-derivation list (MED-151, BEY-16)."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[SessionChatKeys, ...]:
        return live_session_chat_keys(conn)


class RecordOutboundRound(Request[tuple[int, int]], frozen=True):
    """Both outbound rows of a round with their wraps, before publishing (MED-82)."""

    outbound: OutboundRound

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[int, int]:
        return record_outbound_round(conn, self.outbound, ctx.now)


class RecordOutboundSent(Request[int | None], frozen=True):
    """`outbound_sent` after a relay accepted one party's wrap (MED-83); None if already."""

    session_id: str
    shared_pubkey: str
    inner_event_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> int | None:
        return record_outbound_sent(
            conn, self.session_id, self.shared_pubkey, self.inner_event_id, ctx.now
        )


class ListUnsentOutbound(Request[tuple[UnsentOutbound, ...]], frozen=True):
    """Outbound rows of Live sessions still lacking `outbound_sent` (Q-4)."""

    session_id: str | None = None

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[UnsentOutbound, ...]:
        return unsent_outbound(conn, self.session_id)


class IngestInbound(Request[IngestOutcome], frozen=True):
    """One inbound envelope, one transaction (MED-102, Q-12)."""

    session_id: str
    envelope: InboundEnvelope

    def apply(self, conn: apsw.Connection, ctx: Context) -> IngestOutcome:
        return ingest_inbound(conn, self.session_id, self.envelope, ctx.now)


class RecordAuthEvent(Request[int], frozen=True):
    """An `auth_retry_attempt` / `_recovered` / `_terminated` row (MED-52..54)."""

    kind: AuthEventKind
    attempt: int
    error: str | None = None
    cumulative_secs: int | None = None

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        payload: dict[str, object] = {"attempt": self.attempt}
        if self.error is not None:
            payload["error"] = self.error
        if self.cumulative_secs is not None:
            payload["cumulative_secs"] = self.cumulative_secs
        return record_auth_event(conn, self.kind, payload, ctx.now)
