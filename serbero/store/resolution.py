"""A dispute resolved or taken over outside Serbero, with the mediation report when one is
owed (CORE-49, Q-6).

Resolving and reporting are one transaction: the report is decided together with the
resolution that causes it, like every DM (BEY-2), so a crash can neither resolve a dispute
without its owed report nor queue a report for a resolution that never committed.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw
import msgspec

from serbero.protocol.keys import normalise_public_key
from serbero.protocol.texts import TextError, mediation_resolution_report
from serbero.store.disputes import (
    AssignmentResult,
    DisputeEvent,
    ResolutionResult,
    record_assignment,
    record_resolution,
)
from serbero.store.mediation import (
    TAKEOVER_REASON,
    record_resolution_reported,
    resolution_report_facts,
    resolution_reported,
    supersede_live_session,
)
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
        if resolution_reported(conn, event.dispute_id):
            # A human's take already brought the report: once per dispute.
            return ResolutionOutcome(resolution=resolution, claimed=claimed)
        try:
            ids = queue_report(conn, event, report_recipients, now)
        except TextError as exc:
            return ResolutionOutcome(resolution=resolution, report_error=str(exc), claimed=claimed)
        claimed += claim_new(conn, ids, now, claim - len(claimed))
    return ResolutionOutcome(
        resolution=resolution, report_outbox_ids=ids, reported=True, claimed=claimed
    )


def queue_report(
    conn: apsw.Connection,
    event: DisputeEvent,
    recipients: Sequence[str],
    now: int,
    *,
    taken_over: bool = False,
) -> tuple[int, ...]:
    """MED-142..145: the report on the dispute's mediation, read now, queued to every
    recipient with its `resolved_externally_reported` event; outbox ids in order. Data
    that cannot be printed in a body raises `TextError` before anything is written. The
    caller owns the transaction."""
    facts = resolution_report_facts(conn, event.dispute_id)
    report = mediation_resolution_report(
        dispute_id=event.dispute_id,
        final_status=event.status,
        session=facts.session,
        classification=facts.classification,
        outbound_party_messages=facts.outbound_party_messages,
        no_session_reason=facts.no_session_reason,
        taken_over=taken_over,
    )
    ids = enqueue(
        conn,
        dispute_id=event.dispute_id,
        notif_type=NotifType.MEDIATION_RESOLUTION_REPORT,
        cause=event.event_id,
        messages=[OutboxMessage(solver, report.body) for solver in recipients],
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
    return ids


class Takeover(msgspec.Struct, frozen=True):
    """A human solver's take closed this live session; the report's outbox rows (none, with
    `report_error`, when its data could not be printed)."""

    session_id: str
    report_outbox_ids: tuple[int, ...] = ()
    report_error: str | None = None


def supersede_for_human(
    conn: apsw.Connection,
    event: DisputeEvent,
    assigned_solver: str | None,
    serbero_pubkey: str,
    report_recipients: Sequence[str],
    now: int,
) -> Takeover | None:
    """Q-6 / BEY-18: an `in-progress` event naming a solver other than Serbero supersedes
    the dispute's live session (`-> superseded_by_human -> closed`, MED-140's events with
    reason `dispute_taken_by_human`), abandons its summary DMs not sent yet and queues the
    report to `report_recipients`, once: a replayed event finds no live session and writes
    nothing. An event naming no solver, or Serbero itself (its own take), changes nothing.
    Caller owns the transaction."""
    if assigned_solver is None or normalise_public_key(assigned_solver) == serbero_pubkey:
        return None
    session_id = supersede_live_session(
        conn, event.dispute_id, event.event_id, event.status, now, reason=TAKEOVER_REASON
    )
    if session_id is None:
        return None
    if resolution_reported(conn, event.dispute_id):
        return Takeover(session_id=session_id)
    try:
        ids = queue_report(conn, event, report_recipients, now, taken_over=True)
    except TextError as exc:
        return Takeover(session_id=session_id, report_error=str(exc))
    return Takeover(session_id=session_id, report_outbox_ids=ids)


def assign_dispute(
    conn: apsw.Connection,
    event: DisputeEvent,
    assigned_solver: str | None,
    messages: Sequence[OutboxMessage],
    now: int,
    *,
    claim: int = 0,
    serbero_pubkey: str | None = None,
    report_recipients: Sequence[str] = (),
) -> AssignmentResult:
    """CORE-47's assignment and, with `serbero_pubkey`, Q-6's takeover in one transaction:
    whatever the lifecycle did (a dispute Serbero took is already `taken`), a solver other
    than Serbero taking it supersedes its live mediation and queues the report."""
    with transaction(conn):
        result = record_assignment(conn, event, assigned_solver, messages, now, claim=claim)
        takeover = (
            None
            if serbero_pubkey is None
            else supersede_for_human(
                conn, event, assigned_solver, serbero_pubkey, report_recipients, now
            )
        )
    if takeover is None:
        return result
    return msgspec.structs.replace(
        result,
        superseded_session_id=takeover.session_id,
        report_outbox_ids=takeover.report_outbox_ids,
    )
