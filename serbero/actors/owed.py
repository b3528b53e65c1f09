"""Start-up: queue the notices the reference left unfinished (#12 item 5).

A dispute the reference never managed to announce stays `new`; an escalation whose DMs no
relay accepted stays `send_failed`. Both are found once, before the sender starts, and their
DMs are queued in the outbox like any decision of ours: the initial notice to every
configured solver, the escalation DM again to the solvers it was meant for. From then on
the sender delivers them with the notification backoff, until delivered or no longer needed.
"""

from __future__ import annotations

from collections.abc import Sequence

from serbero.actors.tracker import Tracker
from serbero.actors.tracker_requests import FindOwed, QueueOwed
from serbero.config import SolverConfig
from serbero.log import get_logger
from serbero.protocol.dispute_event import Dispute as DisputeFact
from serbero.protocol.dispute_event import DisputeStatus
from serbero.protocol.handoff import HandoffError, decode_handoff_package, render_handoff_dm
from serbero.protocol.texts import TextError, initial_notification
from serbero.store.disputes import Dispute
from serbero.store.errors import StoreError
from serbero.store.outbox import OutboxMessage
from serbero.store.owed import OwedInitial, OwedRetry

__all__ = ["queue_owed_notices"]

log = get_logger("serbero.sender")


def _initial_body(dispute: Dispute) -> str:
    """The initial notice, from the stored row as ingest would have built it."""
    return initial_notification(
        DisputeFact(
            dispute_id=dispute.dispute_id,
            status=DisputeStatus.INITIATED,
            initiator=dispute.initiator_role,
            mostro_pubkey=dispute.mostro_pubkey,
            event_id=dispute.event_id,
            event_timestamp=dispute.event_timestamp,
            assigned_solver=None,
        )
    )


async def queue_owed_notices(
    tracker: Tracker, solvers: Sequence[SolverConfig], *, escalation: bool
) -> None:
    """Find and queue what is owed; a store error is logged and left for the next start.
    Escalation DMs are owed only while the dispatcher is enabled (`escalation`)."""
    try:
        owed = await tracker.ask(FindOwed())
    except StoreError as exc:
        log.warning("owed_notices_failed", error=str(exc))
        return
    initial = []
    if solvers:
        for dispute in owed.initial:
            try:
                body = _initial_body(dispute)
            except TextError as exc:
                log.warning("owed_notice_unusable", dispute_id=dispute.dispute_id, error=str(exc))
                continue
            messages = tuple(OutboxMessage(solver.key, body) for solver in solvers)
            initial.append(OwedInitial(dispute.dispute_id, messages))
    retries = []
    for dispatch in owed.dispatches if escalation else ():
        try:
            body = render_handoff_dm(decode_handoff_package(dispatch.payload_json))
        except HandoffError as exc:
            log.warning("owed_notice_unusable", dispute_id=dispatch.dispute_id, error=str(exc))
            continue
        retries.append(OwedRetry(dispatch, body))
    if not initial and not retries:
        return
    try:
        queued = await tracker.ask(QueueOwed(initial=tuple(initial), retries=tuple(retries)))
    except StoreError as exc:
        log.warning("owed_notices_failed", error=str(exc))
        return
    log.info(
        "owed_notices_queued",
        initial_notices=queued.initial,
        escalation_dispatches=queued.dispatches,
    )
