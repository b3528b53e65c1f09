"""The escalation gate: one handoff from decoding to its recorded outcome (ESC-15..30).

The scanner hands over one pending `handoff_prepared` row at a time; the gate decodes it,
looks the dispute up, applies the supersession gate, routes it, runs the sequential send loop
and asks the tracker to record what happened, then reports the handoff finished. Everything
for one handoff, its commit included, ends before the next one starts (ESC-15), so the send
loop lives here rather than in a separate actor: there is nothing to overlap.

Only two outcomes consume a handoff (ESC-13): a committed dispatch row, or a parse-failed
event. Every other path, including any store error, leaves it pending for the next cycle;
a dispatch that cannot be committed after sending is re-sent then (at-least-once, ESC-30).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Final

import msgspec
import trio

from serbero.actors.delivery import SEND_FAILED_PREFIX, Deliver, Delivery, DmIdentity
from serbero.actors.tracker import Pending, Tracker
from serbero.actors.tracker_requests import (
    GetDispute,
    RecordDispatch,
    RecordNotifications,
    RecordParseFailed,
    RecordSuperseded,
    RecordUnroutable,
)
from serbero.clock import WallClock
from serbero.config import SolverConfig
from serbero.log import get_logger
from serbero.protocol.handoff import (
    HandoffError,
    decode_handoff_package,
    dispute_id_hint,
    render_handoff_dm,
)
from serbero.store.errors import StoreError
from serbero.store.escalation import (
    HANDOFF_NOTIF_TYPE,
    STATUS_DISPATCHED,
    DispatchRecord,
    HandoffRow,
    ParseFailure,
    RecipientOutcome,
)
from serbero.store.lifecycle import LifecycleState
from serbero.store.notifications import (
    STATUS_FAILED,
    STATUS_SENT,
    NotificationRecord,
)
from serbero.store.outbox import OutboxMessage

__all__ = [
    "ORPHAN_DETAIL",
    "Gate",
    "HandoffDone",
    "HandoffOutcome",
    "Route",
    "RouteKind",
    "route_handoff",
    "run",
]

log = get_logger("serbero.escalation")

# ESC-17: the exact detail of an orphan handoff's parse-failed event.
ORPHAN_DETAIL: Final = "dispute_id not found"
UNROUTABLE_HINT: Final = (
    "the handoff stays unconsumed and is examined again every cycle; add a solver with"
    ' permission = "write", or set [escalation].fallback_to_all_solvers = true with at'
    " least one solver configured, and restart"
)


class RouteKind(enum.StrEnum):
    """Which ESC-19 rule fired."""

    TARGETED = "targeted"
    WRITE_BROADCAST = "write_broadcast"
    FALLBACK_BROADCAST = "fallback_broadcast"
    UNROUTABLE = "unroutable"


class Route(msgspec.Struct, frozen=True):
    """The recipients in send order (empty only when unroutable)."""

    kind: RouteKind
    recipients: tuple[SolverConfig, ...] = ()

    @property
    def via_fallback(self) -> bool:
        return self.kind is RouteKind.FALLBACK_BROADCAST


def _is_assignee(solver: SolverConfig, assigned_solver: str) -> bool:
    """ESC-19 rule 1 matches the configured key exactly; BEY-12 normalises configured keys
    to lowercase hex, so the normalised form matches too."""
    return assigned_solver in (solver.pubkey, solver.pubkey_hex)


def route_handoff(
    solvers: Sequence[SolverConfig], assigned_solver: str | None, fallback_to_all_solvers: bool
) -> Route:
    """ESC-19/20, first matching rule wins; config order is kept and nothing is de-duplicated."""
    writers = tuple(solver for solver in solvers if solver.can_write)
    if assigned_solver is not None:
        for solver in writers:
            if _is_assignee(solver, assigned_solver):
                return Route(RouteKind.TARGETED, (solver,))
    if writers:
        return Route(RouteKind.WRITE_BROADCAST, writers)
    if fallback_to_all_solvers and solvers:
        return Route(RouteKind.FALLBACK_BROADCAST, tuple(solvers))
    return Route(RouteKind.UNROUTABLE)


class HandoffOutcome(enum.StrEnum):
    """How one handoff ended this cycle; only the first four consume it (ESC-13). The two
    parse failures carry the ESC-35 `reason` strings."""

    DISPATCHED = "dispatched"
    SEND_FAILED = "send_failed"
    DESERIALIZE_FAILED = "deserialize_failed"
    ORPHAN = "orphan_dispute_reference"
    SUPERSEDED = "superseded"
    UNROUTABLE = "unroutable"
    LEFT_PENDING = "left_pending"

    @property
    def consumed(self) -> bool:
        return self in _CONSUMING


_CONSUMING: Final = frozenset(
    {
        HandoffOutcome.DISPATCHED,
        HandoffOutcome.SEND_FAILED,
        HandoffOutcome.DESERIALIZE_FAILED,
        HandoffOutcome.ORPHAN,
    }
)


class HandoffDone(msgspec.Struct, frozen=True):
    """The gate's report to the scanner: this handoff is finished for this cycle."""

    handoff_event_id: int
    outcome: HandoffOutcome


class Gate:
    """The per-handoff pipeline; the solver list and fallback flag are fixed at start (ESC-4)."""

    def __init__(
        self,
        tracker: Tracker,
        deliver: Deliver,
        *,
        solvers: Sequence[SolverConfig],
        fallback_to_all_solvers: bool,
        wall_clock: WallClock,
        ring_sender: Callable[[], None] = lambda: None,
    ) -> None:
        self._tracker = tracker
        self._deliver = deliver
        self._solvers = tuple(solvers)
        self._fallback = fallback_to_all_solvers
        self._wall_clock = wall_clock
        # Wakes the outbox sender for the retries a dispatch queued.
        self._ring_sender = ring_sender

    async def process(self, handoff: HandoffRow) -> HandoffOutcome:
        """Steps 6.1-6.8 for one handoff; store errors leave it pending, never raise."""
        try:
            package = decode_handoff_package(handoff.payload_json)
            body = render_handoff_dm(package)
        except HandoffError as exc:
            return await self._parse_failed(
                handoff, dispute_id_hint(handoff.payload_json), "deserialize_failed", str(exc)
            )
        dispute_id = package.dispute_id
        try:
            dispute = await self._tracker.ask(GetDispute(dispute_id))
        except StoreError as exc:
            log.error(
                "phase4_dispute_lookup_failed",
                dispute_id=dispute_id,
                handoff_event_id=handoff.id,
                error=str(exc),
            )
            return HandoffOutcome.LEFT_PENDING
        if dispute is None:
            return await self._parse_failed(
                handoff, dispute_id, "orphan_dispute_reference", ORPHAN_DETAIL
            )
        if dispute.lifecycle_state == LifecycleState.RESOLVED:
            return await self._superseded(handoff, dispute_id)
        route = route_handoff(self._solvers, dispute.assigned_solver, self._fallback)
        if route.kind is RouteKind.UNROUTABLE:
            return await self._unroutable(handoff, dispute_id)
        return await self._dispatch(handoff, dispute_id, body, route)

    async def _parse_failed(
        self, handoff: HandoffRow, dispute_id: str, reason: ParseFailure, detail: str
    ) -> HandoffOutcome:
        """ESC-16/17: the parse-failed event consumes the handoff; no DM, no dispatch row."""
        log.error(
            "phase4_parse_failed",
            handoff_event_id=handoff.id,
            dispute_id=dispute_id,
            reason=reason,
            error=detail,
        )
        try:
            await self._tracker.ask(RecordParseFailed(handoff, dispute_id, reason, detail))
        except StoreError as exc:
            log.error(
                "phase4_parse_failed_record_failed",
                handoff_event_id=handoff.id,
                dispute_id=dispute_id,
                error=str(exc),
            )
            return HandoffOutcome.LEFT_PENDING
        return HandoffOutcome(reason)

    async def _superseded(self, handoff: HandoffRow, dispute_id: str) -> HandoffOutcome:
        """ESC-18: logged every cycle, recorded once per handoff id; the handoff stays pending."""
        log.info("phase4_superseded", dispute_id=dispute_id, handoff_event_id=handoff.id)
        try:
            await self._tracker.ask(RecordSuperseded(handoff, dispute_id))
        except StoreError as exc:
            log.error(
                "phase4_superseded_record_failed",
                dispute_id=dispute_id,
                handoff_event_id=handoff.id,
                error=str(exc),
            )
        return HandoffOutcome.SUPERSEDED

    async def _unroutable(self, handoff: HandoffRow, dispute_id: str) -> HandoffOutcome:
        """ESC-21: ERROR every cycle, one audit row per handoff id; the handoff stays pending."""
        log.error(
            "phase4_unroutable",
            dispute_id=dispute_id,
            handoff_event_id=handoff.id,
            configured_solver_count=len(self._solvers),
            config_fallback_to_all_solvers=self._fallback,
            hint=UNROUTABLE_HINT,
        )
        try:
            await self._tracker.ask(RecordUnroutable(handoff, dispute_id, len(self._solvers)))
        except StoreError as exc:
            log.error(
                "phase4_unroutable_record_failed",
                dispute_id=dispute_id,
                handoff_event_id=handoff.id,
                error=str(exc),
            )
        return HandoffOutcome.UNROUTABLE

    async def _attempt(self, solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        """One recipient; whatever goes wrong is that recipient's failure (ESC-26 step 4)."""
        try:
            return await self._deliver(solver, body, dm)
        except Exception as exc:
            log.error("phase4_recipient_crashed", solver=solver.key, error=repr(exc))
            return Delivery(ok=False, error=f"{SEND_FAILED_PREFIX}{exc!r}", retryable=True)

    async def _dispatch(
        self, handoff: HandoffRow, dispute_id: str, body: str, route: Route
    ) -> HandoffOutcome:
        """ESC-26..30: send to each recipient in route order, then commit the dispatch."""
        sent_at = self._wall_clock()
        outcomes: list[RecipientOutcome] = []
        retries: list[OutboxMessage] = []
        records: list[tuple[NotificationRecord, Pending[tuple[int, ...]]]] = []
        for solver in route.recipients:
            # The handoff names the DM: a retry of it builds the same wrap (BEY-26).
            delivery = await self._attempt(solver, body, DmIdentity("handoff", handoff.id, sent_at))
            if delivery.ok:
                log.debug("phase4_recipient_sent", dispute_id=dispute_id, solver=solver.key)
            else:
                log.warning(
                    "phase4_recipient_failed",
                    dispute_id=dispute_id,
                    solver=solver.key,
                    error=delivery.error,
                )
            outcomes.append(RecipientOutcome(solver.key, delivery.ok))
            if not delivery.ok and delivery.retryable:
                retries.append(OutboxMessage(solver.key, body))
            record = NotificationRecord(
                dispute_id=dispute_id,
                solver_pubkey=solver.key,
                sent_at=sent_at,
                status=STATUS_SENT if delivery.ok else STATUS_FAILED,
                notif_type=HANDOFF_NOTIF_TYPE,
                error_message=None if delivery.ok else delivery.error,
            )
            try:
                records.append((record, await self._tracker.submit(RecordNotifications((record,)))))
            except StoreError as exc:
                _record_failed(record, exc)
        # Submitted before the attempt rows are awaited, so the last of them and the dispatch
        # usually share one commit (the tracker keeps inbox order).
        committing: Pending[DispatchRecord] | StoreError
        try:
            committing = await self._tracker.submit(
                RecordDispatch(
                    handoff=handoff,
                    dispute_id=dispute_id,
                    outcomes=tuple(outcomes),
                    via_fallback=route.via_fallback,
                    dispatched_at=sent_at,
                    retries=tuple(retries),
                )
            )
        except StoreError as exc:
            committing = exc
        for record, pending in records:
            try:
                await pending.result()
            except StoreError as exc:
                _record_failed(record, exc)
        try:
            if isinstance(committing, StoreError):
                raise committing
            dispatch = await committing.result()
        except StoreError as exc:
            log.error(
                "phase4_dispatch_record_failed",
                dispute_id=dispute_id,
                handoff_event_id=handoff.id,
                error=str(exc),
                hint="the handoff stays pending and will be dispatched again next cycle",
            )
            return HandoffOutcome.LEFT_PENDING
        log.info(
            "phase4_dispatched",
            dispute_id=dispute_id,
            handoff_event_id=handoff.id,
            dispatch_id=dispatch.dispatch_id,
            status=dispatch.status,
            recipient_count=len(outcomes),
            via_fallback=route.via_fallback,
            retries_queued=len(retries),
        )
        if retries:
            # Due now: the sender tries them once more at once, then with its backoff.
            self._ring_sender()
        if dispatch.status == STATUS_DISPATCHED:
            return HandoffOutcome.DISPATCHED
        return HandoffOutcome.SEND_FAILED


def _record_failed(record: NotificationRecord, exc: StoreError) -> None:
    """ESC-26 step 3 / CORE-38: an attempt row that could not be written is only logged."""
    log.warning(
        "notification_record_failed",
        dispute_id=record.dispute_id,
        solver_pubkey=record.solver_pubkey,
        status=record.status,
        notif_type=record.notif_type,
        error=str(exc),
    )


async def run(
    gate: Gate,
    handoffs: trio.MemoryReceiveChannel[HandoffRow],
    done: trio.MemorySendChannel[HandoffDone],
) -> None:
    """Process handoffs one at a time and report each one finished, whatever happened.

    A bug hit by one handoff is logged and that handoff left pending: a single handoff never
    kills the actor.
    """
    async with handoffs, done:
        async for handoff in handoffs:
            try:
                outcome = await gate.process(handoff)
            except Exception as exc:
                log.error("phase4_handoff_failed", handoff_event_id=handoff.id, error=repr(exc))
                outcome = HandoffOutcome.LEFT_PENDING
            await done.send(HandoffDone(handoff.id, outcome))
