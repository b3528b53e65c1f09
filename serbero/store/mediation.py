"""What the core's resolution step needs from the mediation tables (CORE-49, MED-140/141)."""

from __future__ import annotations

from typing import Final

import apsw
import msgspec

from serbero.protocol.texts import NoSessionReason, ReportClassification, ReportSession
from serbero.store.audit import insert_event, payload_field
from serbero.store.outbox import abandon_cause

NOT_LIVE_SESSION_STATES: Final = (
    "closed",
    "summary_delivered",
    "escalation_recommended",
    "superseded_by_human",
)
SESSION_CLOSED: Final = "closed"
SUPERSEDE_REASON: Final = "dispute_resolved_externally"
# The outbox `cause` of a session's summary DMs is this prefix and the session id.
SUMMARY_CAUSE_PREFIX: Final = "summary:"
# A human solver took the dispute over from Serbero (Q-6, BEY-18).
TAKEOVER_REASON: Final = "dispute_taken_by_human"
# A dispute-scoped event (no session) whose payload names the dispute `?` (MED-2).
_DISPUTE_SCOPED: Final = f"session_id IS NULL AND {payload_field('dispute_id')} = ?"


def summary_cause(session_id: str) -> str:
    """The outbox `cause` of a session's summary DMs: it names the session, so a DM's
    completion finds it."""
    return f"{SUMMARY_CAUSE_PREFIX}{session_id}"


def supersede_live_session(
    conn: apsw.Connection,
    dispute_id: str,
    event_id: str,
    resolution_status: str,
    now: int,
    *,
    reason: str = SUPERSEDE_REASON,
) -> str | None:
    """Close the dispute's latest live session `-> superseded_by_human -> closed` (MED-140).

    Writes the `superseded_by_human` and `session_closed` events with the session's pinned
    bundle id and policy hash; `reason` says why (a resolution, or a human's take, Q-6). A
    summary of the session still waiting in the outbox is abandoned: the session ends here,
    once, and the solvers get the mediation report instead.
    Returns the session id, or None when no session is live. The caller owns the
    transaction (it is part of the resolution or assignment step).
    """
    row = conn.execute(
        "SELECT session_id, prompt_bundle_id, policy_hash FROM mediation_sessions"
        " WHERE dispute_id = ? AND state NOT IN (?, ?, ?, ?)"
        " ORDER BY started_at DESC, rowid DESC LIMIT 1",
        (dispute_id, *NOT_LIVE_SESSION_STATES),
    ).fetchone()
    if row is None:
        return None
    session_id, bundle_id, policy_hash = str(row[0]), row[1], row[2]
    conn.execute(
        "UPDATE mediation_sessions SET state = ?, last_transition_at = ? WHERE session_id = ?",
        (SESSION_CLOSED, now, session_id),
    )
    insert_event(
        conn,
        session_id=session_id,
        kind="superseded_by_human",
        payload={
            "reason": reason,
            "resolution_status": resolution_status,
            "dispute_id": dispute_id,
            "event_id": event_id,
        },
        prompt_bundle_id=bundle_id,
        policy_hash=policy_hash,
        occurred_at=now,
    )
    insert_event(
        conn,
        session_id=session_id,
        kind="session_closed",
        payload={"reason": reason, "dispute_id": dispute_id},
        prompt_bundle_id=bundle_id,
        policy_hash=policy_hash,
        occurred_at=now,
    )
    abandon_cause(conn, dispute_id, summary_cause(session_id), now)
    return session_id


def has_mediation_context(conn: apsw.Connection, dispute_id: str) -> bool:
    """A session row, or a dispute-scoped event naming the dispute (CORE-49 step 5, MED-141)."""
    return _exists(
        conn,
        "SELECT 1 FROM mediation_sessions WHERE dispute_id = ?"
        f" UNION ALL SELECT 1 FROM mediation_events WHERE {_DISPUTE_SCOPED}",
        (dispute_id, dispute_id),
    )


def resolution_reported(conn: apsw.Connection, dispute_id: str) -> bool:
    """Whether the solvers already had the dispute's mediation report (MED-145's event):
    it is sent once per dispute, whether a human's take or the resolution came first."""
    return _exists(
        conn,
        "SELECT 1 FROM mediation_events WHERE kind = 'resolved_externally_reported'"
        f" AND {payload_field('dispute_id')} = ?",
        (dispute_id,),
    )


class ReportFacts(msgspec.Struct, frozen=True):
    """What a `mediation_resolution_report` says about a dispute (MED-142/143).

    `session`: the most recent session by `started_at` (any state, read after the
    resolution closed it), or None. `classification`: its latest `classification_produced`,
    else the latest dispute-scoped `reasoning_verdict` carrying label and confidence, else
    None. `outbound_party_messages`: distinct parties messaged in that session, 0..2.
    `no_session_reason` picks the narrative's clause when there is no session.
    """

    session: ReportSession | None
    classification: ReportClassification | None
    outbound_party_messages: int
    no_session_reason: NoSessionReason


def _classification(payload: object) -> ReportClassification | None:
    if not isinstance(payload, dict):
        return None
    label, confidence = payload.get("classification"), payload.get("confidence")
    if not isinstance(label, str) or isinstance(confidence, bool):
        return None
    if not isinstance(confidence, int | float):
        return None
    return ReportClassification(label=label, confidence=float(confidence))


def _latest_classification(
    conn: apsw.Connection, where: str, args: tuple[object, ...]
) -> ReportClassification | None:
    for (payload_json,) in conn.execute(
        f"SELECT payload_json FROM mediation_events WHERE {where}"
        " ORDER BY occurred_at DESC, id DESC",
        args,
    ):
        try:
            found = _classification(msgspec.json.decode(payload_json))
        except (msgspec.DecodeError, RecursionError):
            continue
        if found is not None:
            return found
    return None


def session_classification(conn: apsw.Connection, session_id: str) -> ReportClassification | None:
    """The session's latest `classification_produced` label and confidence, or None."""
    return _latest_classification(
        conn, "session_id = ? AND kind = 'classification_produced'", (session_id,)
    )


def _exists(conn: apsw.Connection, sql: str, args: tuple[object, ...]) -> bool:
    row = conn.execute(f"SELECT EXISTS ({sql})", args).fetchone()
    return bool(row[0]) if row is not None else False


def resolution_report_facts(conn: apsw.Connection, dispute_id: str) -> ReportFacts:
    """MED-142's report data, read inside the resolution's transaction."""
    session = conn.execute(
        "SELECT session_id, state FROM mediation_sessions WHERE dispute_id = ?"
        " ORDER BY started_at DESC, rowid DESC LIMIT 1",
        (dispute_id,),
    ).fetchone()
    found: ReportClassification | None = None
    outbound = 0
    reason: NoSessionReason = "none"
    latest: ReportSession | None = None
    if session is not None:
        latest = ReportSession(session_id=str(session[0]), state=str(session[1]))
        found = session_classification(conn, latest.session_id)
        row = conn.execute(
            "SELECT COUNT(DISTINCT party) FROM mediation_messages"
            " WHERE session_id = ? AND direction = 'outbound'",
            (latest.session_id,),
        ).fetchone()
        outbound = min(2, int(row[0])) if row is not None else 0
    elif _exists(
        conn,
        "SELECT 1 FROM mediation_events WHERE kind = 'take_dispute_issued' AND "
        f"{_DISPUTE_SCOPED} AND {payload_field('outcome')} = 'failure'",
        (dispute_id,),
    ):
        reason = "take_failed"
    elif _exists(
        conn,
        "SELECT 1 FROM mediation_events WHERE ((kind = 'reasoning_verdict' AND"
        f" {payload_field('decision')} = 'escalate') OR"
        f" kind = 'escalation_recommended') AND {_DISPUTE_SCOPED}",
        (dispute_id,),
    ):
        reason = "escalated_before_take"
    if found is None:
        found = _latest_classification(
            conn, f"kind = 'reasoning_verdict' AND {_DISPUTE_SCOPED}", (dispute_id,)
        )
    return ReportFacts(
        session=latest,
        classification=found,
        outbound_party_messages=outbound,
        no_session_reason=reason,
    )


def record_resolution_reported(
    conn: apsw.Connection,
    dispute_id: str,
    facts: ReportFacts,
    *,
    final_status: str,
    narrative: str,
    now: int,
) -> int:
    """MED-145: the `resolved_externally_reported` audit event; caller owns the transaction."""
    session_id = None if facts.session is None else facts.session.session_id
    classification = facts.classification
    return insert_event(
        conn,
        session_id=session_id,
        kind="resolved_externally_reported",
        payload={
            "dispute_id": dispute_id,
            "session_id": session_id,
            "classification": None if classification is None else classification.label,
            "confidence": None if classification is None else classification.confidence,
            "outbound_party_messages_count": facts.outbound_party_messages,
            "final_dispute_status": final_status,
            "narrative": narrative,
        },
        prompt_bundle_id=None,
        policy_hash=None,
        occurred_at=now,
    )
