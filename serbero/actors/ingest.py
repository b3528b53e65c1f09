"""Ingest: decides each dispute event, one at a time, in arrival order (CORE-24..30, 47, 49).

Every event from the dispute subscription is checked (author, shape, BEY-21 hostile
input), routed on its `s` tag, and turned into exactly one tracker request that records the
event's effect *and* the DMs it owes in one transaction (BEY-2): a new dispute with its
initial notices, a take with its assignment notices, a resolution with its closing notices
and, when mediation was involved, the resolution report. Nothing is sent from here: before
each decision ingest takes a `Lease` on room in the sender, the decision claims that many of
its DMs, and once it is committed the lease hands them over and they are delivered in
parallel; the rest wait in the outbox for the sender's poll. Room is never waited for, so a
slow relay never holds up the next decision (BEY-22). A new dispute is then offered to the
mediation engine, also without waiting (MED-30).

Decisions are pipelined: the request for the next event goes into the tracker's inbox
before the previous answer is read. The tracker runs requests strictly in inbox order, so
events are still decided one at a time in arrival order; the answers are read (and logged)
by a second task, at most `DECISION_PIPELINE` behind.

A bad event is logged once and stored nowhere; a failed decision is logged and the next
event is decided anyway (CORE-6, CORE-28). A decision held up by an unavailable database
is not failed: the tracker runs it once the database takes work again, in order, and ingest
waits for it however long that takes (BEY-25), reading no further events meanwhile once
`DECISION_PIPELINE` decisions wait, which pushes back on the relays instead of losing events.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import ClassVar, Final, Generic, Literal, Protocol, TypeVar

import msgspec
import trio

from serbero.actors.handover import Lease
from serbero.actors.mediation.handle import MediationHandle
from serbero.actors.relay_pool import ReceivedEvent
from serbero.actors.tracker import UNTIL_ANSWERED, Pending, Tracker
from serbero.actors.tracker_requests import (
    RecordAssignment,
    RecordDetected,
    ResolveDispute,
)
from serbero.clock import WallClock
from serbero.config import SolverConfig
from serbero.log import get_logger
from serbero.protocol.dispute_event import (
    Dispute,
    DisputeError,
    DisputeRoute,
    MissingStatusTagError,
    NotADisputeEventError,
    UnrecognisedStatusError,
    parse_dispute_event,
    status_route,
)
from serbero.protocol.texts import (
    assignment_notification,
    initial_notification,
    resolution_notice,
)
from serbero.store.disputes import (
    AssignmentResult,
    DetectionResult,
    DisputeEvent,
)
from serbero.store.errors import StoreError
from serbero.store.outbox import OutboxMessage
from serbero.store.resolution import ResolutionOutcome

__all__ = [
    "DECISION_PIPELINE",
    "DeliveryLane",
    "Ingest",
    "IngestStats",
]

log = get_logger("serbero.ingest")

# Decisions in the tracker's inbox whose answers are not read yet. Bounded: when the store
# falls behind, ingest stops reading events, which pushes back on the relays.
DECISION_PIPELINE: Final = 64
# Hostile events can carry up to 2000 tags of any length; logs show this much of them.
LOG_TAGS_LIMIT: Final = 16
LOG_VALUE_LIMIT: Final = 80
# `initiator_role` of a row created by late discovery from an event without one (BEY-4).
UNKNOWN_INITIATOR: Final = "unknown"
Handler = Literal["detection", "assignment", "resolution"]
# `routed` handler names (CORE-27).
HANDLERS: Final[Mapping[DisputeRoute, Handler]] = {
    "detected": "detection",
    "updated": "assignment",
    "resolved": "resolution",
}


class IngestStats:
    """Ingest's running figures; written by ingest only, read by the health snapshot."""

    __slots__ = (
        "decisions_in_flight",
        "events_received",
        "last_event_at",
        "last_event_id",
        "relay_last_event_at",
    )

    def __init__(self) -> None:
        self.events_received = 0
        self.decisions_in_flight = 0
        self.last_event_id: str | None = None
        # Wall-clock second the last dispute event arrived, overall and per relay.
        self.last_event_at: int | None = None
        self.relay_last_event_at: dict[str, int] = {}


class DeliveryLane(Protocol):
    """The sender's hot path as ingest sees it (`OutboxSender` implements it)."""

    def reserve(self, count: int) -> Lease:
        """A lease on room for up to `count` DMs the next decision may claim (maybe 0)."""
        ...


R = TypeVar("R", DetectionResult, AssignmentResult, ResolutionOutcome)


class _Decision(msgspec.Struct, Generic[R], frozen=True):
    """A submitted decision whose answer the reporter still has to read and log; it owns
    `lease`, the sender's room for the DMs it may claim, until the answer ends it."""

    handler: ClassVar[Handler]
    dispute: Dispute
    pending: Pending[R]
    lease: Lease


class _Detection(_Decision[DetectionResult], frozen=True):
    handler = "detection"


class _Assignment(_Decision[AssignmentResult], frozen=True):
    handler = "assignment"


class _Resolution(_Decision[ResolutionOutcome], frozen=True):
    handler = "resolution"


AnyDecision = _Detection | _Assignment | _Resolution


@contextmanager
def _released_on_error(lease: Lease) -> Iterator[None]:
    """A decision that fails, or is cancelled, before its lease ended gives the room back."""
    try:
        yield
    except BaseException:
        if not lease.ended:
            lease.release()
        raise


def _clip(value: str) -> str:
    return value if len(value) <= LOG_VALUE_LIMIT else value[:LOG_VALUE_LIMIT] + "…"


def _loggable_tags(tags: Sequence[Sequence[str]]) -> list[list[str]]:
    return [[_clip(value) for value in tag[:3]] for tag in tags[:LOG_TAGS_LIMIT]]


def _facts(dispute: Dispute) -> DisputeEvent:
    return DisputeEvent(
        dispute_id=dispute.dispute_id,
        event_id=dispute.event_id,
        mostro_pubkey=dispute.mostro_pubkey,
        event_timestamp=dispute.event_timestamp,
        status=str(dispute.status),
        initiator_role=dispute.initiator or UNKNOWN_INITIATOR,
    )


class Ingest:
    """The ingest actor; `run` consumes the dispute subscription until it ends."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        mostro_pubkey: str,
        solvers: Sequence[SolverConfig],
        resolution_notices: bool,
        lane: DeliveryLane,
        wall_clock: WallClock,
        stats: IngestStats,
        mediation: MediationHandle | None = None,
        serbero_pubkey: str | None = None,
    ) -> None:
        self._tracker = tracker
        # A take naming another solver supersedes Serbero's live mediation.
        self._serbero_pubkey = serbero_pubkey
        self._mostro = mostro_pubkey
        self._recipients = tuple(solver.key for solver in solvers)
        self._resolution_notices = resolution_notices
        self._lane = lane
        self._wall_clock = wall_clock
        self.stats = stats
        self._mediation = mediation

    async def run(self, events: trio.MemoryReceiveChannel[ReceivedEvent]) -> None:
        """Decide every event; returns only when the subscription's stream ends (CORE-11)."""
        send, receive = trio.open_memory_channel[AnyDecision](DECISION_PIPELINE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report, receive)
            async with send:
                async for received in events:
                    # In flight from the start: submitting to the tracker awaits, and a
                    # reader must never see the event received with nothing in flight.
                    self.stats.decisions_in_flight += 1
                    decision = None
                    try:
                        decision = await self._decide(received)
                    finally:
                        if decision is None:
                            self.stats.decisions_in_flight -= 1
                    if decision is not None:
                        await send.send(decision)

    # --- validation and routing --------------------------------------------------------------

    async def _decide(self, received: ReceivedEvent) -> AnyDecision | None:
        event = received.event
        if event.pubkey != self._mostro:
            log.warning(
                "invalid_event_discarded",
                relay=received.relay,
                event_id=event.id,
                reason="author is not the configured Mostro key",
            )
            return None
        now = self._wall_clock()
        self.stats.events_received += 1
        self.stats.last_event_id = event.id
        self.stats.last_event_at = now
        self.stats.relay_last_event_at[received.relay] = now
        log.info(
            "event_received",
            relay=received.relay,
            event_id=event.id,
            kind=event.kind,
            author=event.pubkey,
            tag_count=len(event.tags),
        )
        try:
            dispute = parse_dispute_event(event)
        except NotADisputeEventError as exc:
            log.warning("ignored_non_dispute_event", kind=exc.kind, event_id=event.id)
            return None
        except MissingStatusTagError:
            log.warning(
                "missing_status_tag",
                event_id=event.id,
                tag_count=len(event.tags),
                tags=_loggable_tags(event.tags),
            )
            return None
        except UnrecognisedStatusError as exc:
            log.warning(
                "unrecognised_status_skipped", status=_clip(repr(exc.status)), event_id=event.id
            )
            return None
        except DisputeError as exc:
            # Missing or hostile `d`, bad initiator, forged `p` (CORE-29, BEY-21).
            log.error(
                "dispatch_error", event_id=event.id, error=str(exc), reason=type(exc).__name__
            )
            return None
        handler = HANDLERS[status_route(dispute.status)]
        log.info("routed", event_id=event.id, status=str(dispute.status), handler=handler)
        try:
            return await self._submit(handler, dispute)
        except StoreError as exc:
            self._log_store_failure(handler, dispute, exc)
        except Exception as exc:
            # CORE-6/28: one event's failure is logged; the next event is decided anyway.
            log.error(
                "dispatch_error", event_id=event.id, error=str(exc), reason=type(exc).__name__
            )
        return None

    async def _submit(self, handler: Handler, dispute: Dispute) -> AnyDecision:
        """Build the decision's request (bodies included) and put it in the tracker's inbox;
        waits while the inbox is full (back-pressure), never fails for slowness."""
        facts = _facts(dispute)
        if handler == "detection":
            messages = self._messages(initial_notification(dispute))
            lease = self._lane.reserve(len(messages))
            with _released_on_error(lease):
                detected = RecordDetected(event=facts, messages=messages, claim=lease.granted)
                pending = await self._tracker.submit(detected, timeout=UNTIL_ANSWERED)
                return _Detection(dispute, pending, lease)
        if handler == "assignment":
            body = assignment_notification(dispute.dispute_id, dispute.assigned_solver)
            messages = self._messages(body)
            lease = self._lane.reserve(len(messages))
            with _released_on_error(lease):
                assignment = RecordAssignment(
                    event=facts,
                    assigned_solver=dispute.assigned_solver,
                    messages=messages,
                    claim=lease.granted,
                    serbero_pubkey=self._serbero_pubkey,
                    report_recipients=self._recipients,
                )
                taken = await self._tracker.submit(assignment, timeout=UNTIL_ANSWERED)
                return _Assignment(dispute, taken, lease)
        # CORE-49 step 2 comes before the load.
        log.info(
            "dispute_resolved_externally",
            dispute_id=dispute.dispute_id,
            resolution_status=str(dispute.status),
        )
        notices = (
            self._messages(resolution_notice(dispute.dispute_id, str(dispute.status)))
            if self._resolution_notices
            else ()
        )
        # The mediation report, when one is owed, is rare: it waits for the poll.
        lease = self._lane.reserve(len(notices))
        with _released_on_error(lease):
            resolution = ResolveDispute(
                event=facts,
                notices=notices,
                report_recipients=self._recipients,
                claim=lease.granted,
            )
            resolved = await self._tracker.submit(resolution, timeout=UNTIL_ANSWERED)
            return _Resolution(dispute, resolved, lease)

    def _messages(self, body: str) -> tuple[OutboxMessage, ...]:
        return tuple(OutboxMessage(solver_pubkey=pubkey, body=body) for pubkey in self._recipients)

    # --- answers -----------------------------------------------------------------------------

    async def _report(self, decisions: trio.MemoryReceiveChannel[AnyDecision]) -> None:
        async for decision in decisions:
            try:
                with _released_on_error(decision.lease):
                    self._answered(decision, await self._result(decision))
            except StoreError as exc:
                self._log_store_failure(decision.handler, decision.dispute, exc)
            finally:
                self.stats.decisions_in_flight -= 1

    @staticmethod
    async def _result(
        decision: AnyDecision,
    ) -> DetectionResult | AssignmentResult | ResolutionOutcome:
        return await decision.pending.result(timeout=UNTIL_ANSWERED)

    def _answered(
        self, decision: AnyDecision, value: DetectionResult | AssignmentResult | ResolutionOutcome
    ) -> None:
        """Log the decision's effect and end its lease: the claimed rows go out now; any
        other row it queued waits in the outbox for the sender's poll."""
        if isinstance(value, DetectionResult):
            self._detected(decision.dispute, value)
            claimed, queued = value.claimed, len(value.outbox_ids)
        elif isinstance(value, AssignmentResult):
            self._assigned(decision.dispute, value)
            claimed = value.claimed
            queued = len(value.outbox_ids) + len(value.report_outbox_ids)
        else:
            self._resolved(decision.dispute, value)
            claimed = value.claimed
            queued = len(value.resolution.outbox_ids) + len(value.report_outbox_ids)
        decision.lease.hand_over(claimed, left_behind=queued > len(claimed))

    def _log_store_failure(self, handler: Handler, dispute: Dispute, exc: StoreError) -> None:
        if handler == "detection":
            # CORE-30: nothing sent or queued; a later copy of the event is decided afresh.
            log.error(
                "persistence_failed",
                dispute_id=dispute.dispute_id,
                event_id=dispute.event_id,
                error=str(exc),
            )
        elif handler == "assignment":
            log.error("dispatch_error", event_id=dispute.event_id, error=str(exc))
        else:
            log.error(
                "resolution_failed",
                dispute_id=dispute.dispute_id,
                event_id=dispute.event_id,
                error=str(exc),
            )

    def _detected(self, dispute: Dispute, result: DetectionResult) -> None:
        if not result.inserted:
            log.debug("duplicate_skip", dispute_id=dispute.dispute_id, event_id=dispute.event_id)
            return
        log.info(
            "detected",
            dispute_id=dispute.dispute_id,
            event_id=dispute.event_id,
            initiator_role=dispute.initiator,
        )
        if not self._recipients:
            log.warning("dispute_not_notified_no_solvers", dispute_id=dispute.dispute_id)
        elif self._mediation is not None:
            # MED-30: after the notices are decided, never waiting; with no solvers,
            # or when the request cannot be taken now, the engine's tick finds the dispute.
            self._mediation.request_start(dispute.dispute_id)

    def _assigned(self, dispute: Dispute, result: AssignmentResult) -> None:
        assigned = dispute.assigned_solver or "unknown"
        if result.superseded_session_id is not None:
            log.info(
                "mediation_session_superseded",
                dispute_id=dispute.dispute_id,
                session_id=result.superseded_session_id,
            )
        if result.outcome == "noop":
            log.debug("assignment_noop", dispute_id=dispute.dispute_id, state=result.state)
            return
        if result.outcome == "discovered":
            # BEY-4: opened while we were away; recorded as taken, nobody is told.
            log.info(
                "dispute_discovered",
                dispute_id=dispute.dispute_id,
                event_id=dispute.event_id,
                state=result.state,
            )
        _log_transition(dispute.dispute_id, result.from_state, result.state, dispute.event_id)
        log.info("assignment_detected", dispute_id=dispute.dispute_id, assigned_solver=assigned)
        if result.abandoned:
            log.debug("outbox_abandoned", dispute_id=dispute.dispute_id, count=result.abandoned)

    def _resolved(self, dispute: Dispute, outcome: ResolutionOutcome) -> None:
        result = outcome.resolution
        if result.outcome == "noop":
            log.debug("resolution_noop", dispute_id=dispute.dispute_id)
            return
        if result.outcome == "discovered":
            log.info(
                "dispute_discovered",
                dispute_id=dispute.dispute_id,
                event_id=dispute.event_id,
                state="resolved",
            )
        _log_transition(
            dispute.dispute_id, result.from_state, "resolved", "dispute_resolved_externally"
        )
        if result.superseded_session_id is not None:
            log.info(
                "mediation_session_superseded",
                dispute_id=dispute.dispute_id,
                session_id=result.superseded_session_id,
            )
        if result.abandoned:
            log.debug("outbox_abandoned", dispute_id=dispute.dispute_id, count=result.abandoned)
        if outcome.report_error is not None:
            log.warning(
                "resolution_report_failed",
                dispute_id=dispute.dispute_id,
                error=outcome.report_error,
            )
        elif outcome.reported:
            log.info(
                "resolution_report_queued",
                dispute_id=dispute.dispute_id,
                recipients=len(outcome.report_outbox_ids),
            )
        else:
            log.debug("resolution_report_not_needed", dispute_id=dispute.dispute_id)


def _log_transition(dispute_id: str, from_state: str | None, to_state: str, trigger: str) -> None:
    """CORE-44's INFO line; `from` is None for a dispute discovered late (BEY-4)."""
    log.info(
        "state_transition",
        dispute_id=dispute_id,
        **{"from": from_state, "to": to_state},
        trigger=trigger,
    )
