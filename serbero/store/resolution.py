"""A dispute resolved outside Serbero, with the mediation report when one is owed (CORE-49).

Resolving and reporting are one transaction: the report is decided together with the
resolution that causes it, like every DM (BEY-2), so a crash can neither resolve a dispute
without its owed report nor queue a report for a resolution that never committed.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw
import msgspec

from serbero.protocol.texts import TextError, mediation_resolution_report
from serbero.store.disputes import DisputeEvent, ResolutionResult, record_resolution
from serbero.store.mediation import record_resolution_reported, resolution_report_facts
from serbero.store.notifications import NotifType
from serbero.store.outbox import OutboxMessage, OutboxRow, claim_new, enqueue
from serbero.store.transaction import transaction


class ResolutionOutcome(msgspec.Struct, frozen=True):
    """What `resolve_dispute` committed: the resolution itself, and the report (queued, or
    why it could not be written). `claimed`: notices and report rows claimed for immediate
    delivery."""

    resolution: ResolutionResult
    report_outbox_ids: tuple[int, ...] = ()
    reported: bool = False
    report_error: str | None = None
    claimed: tuple[OutboxRow, ...] = ()


def resolve_dispute(
    conn: apsw.Connection,
    event: DisputeEvent,
    notices: Sequence[OutboxMessage],
    report_recipients: Sequence[str],
    now: int,
    *,
    claim: int = 0,
) -> ResolutionOutcome:
    """CORE-49 steps 3-5: resolve (BEY-4/5 included) and, when the dispute has mediation
    context, queue the `mediation_resolution_report` to `report_recipients` with its
    `resolved_externally_reported` event (MED-142..145). Up to `claim` of the queued rows
    are claimed for the sender's hot path.

    Mediation data that cannot be printed in a body (TextError) skips the report but never
    blocks the resolution; the outcome carries the reason.
    """
    with transaction(conn):
        resolution = record_resolution(conn, event, notices, now, claim=claim)
        claimed = resolution.claimed
        if resolution.outcome != "resolved" or not resolution.has_mediation_context:
            return ResolutionOutcome(resolution=resolution, claimed=claimed)
        facts = resolution_report_facts(conn, event.dispute_id)
        try:
            report = mediation_resolution_report(
                dispute_id=event.dispute_id,
                final_status=event.status,
                session=facts.session,
                classification=facts.classification,
                outbound_party_messages=facts.outbound_party_messages,
                no_session_reason=facts.no_session_reason,
            )
        except TextError as exc:
            return ResolutionOutcome(resolution=resolution, report_error=str(exc), claimed=claimed)
        ids = enqueue(
            conn,
            dispute_id=event.dispute_id,
            notif_type=NotifType.MEDIATION_RESOLUTION_REPORT,
            cause=event.event_id,
            messages=[OutboxMessage(solver, report.body) for solver in report_recipients],
            now=now,
        )
        record_resolution_reported(
            conn,
            event.dispute_id,
            facts,
            final_status=event.status,
            narrative=report.narrative,
            now=now,
        )
        claimed += claim_new(conn, ids, now, claim - len(claimed))
    return ResolutionOutcome(
        resolution=resolution, report_outbox_ids=ids, reported=True, claimed=claimed
    )
