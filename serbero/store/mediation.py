"""What the core's resolution step needs from the mediation tables (CORE-49, MED-140/141)."""

from __future__ import annotations

from typing import Final

import apsw

from serbero.store.audit import insert_event

NOT_LIVE_SESSION_STATES: Final = (
    "closed",
    "summary_delivered",
    "escalation_recommended",
    "superseded_by_human",
)
SESSION_CLOSED: Final = "closed"
SUPERSEDE_REASON: Final = "dispute_resolved_externally"


def supersede_live_session(
    conn: apsw.Connection, dispute_id: str, event_id: str, resolution_status: str, now: int
) -> str | None:
    """Close the dispute's latest live session `-> superseded_by_human -> closed` (MED-140).

    Writes the `superseded_by_human` and `session_closed` events with the session's pinned
    bundle id and policy hash. Returns the session id, or None when no session is live.
    The caller owns the transaction (it is part of the resolution step).
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
            "reason": SUPERSEDE_REASON,
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
        payload={"reason": SUPERSEDE_REASON, "dispute_id": dispute_id},
        prompt_bundle_id=bundle_id,
        policy_hash=policy_hash,
        occurred_at=now,
    )
    return session_id


def has_mediation_context(conn: apsw.Connection, dispute_id: str) -> bool:
    """A session row, or a dispute-scoped event naming the dispute (CORE-49 step 5, MED-141)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM mediation_sessions WHERE dispute_id = ?)"
        " OR EXISTS (SELECT 1 FROM mediation_events WHERE session_id IS NULL AND"
        " CASE WHEN json_valid(payload_json) THEN json_extract(payload_json, '$.dispute_id')"
        " END = ?)",
        (dispute_id, dispute_id),
    ).fetchone()
    return bool(row[0]) if row is not None else False
