"""`serbero show <dispute_id>`: one dispute's story across every audit table, in time order.

Sources: the `disputes` row, `dispute_state_transitions`, `notifications`, our
`notification_outbox`, the mediation tables (sessions, messages, rationales and each use of
one, events, summaries) and `escalation_dispatches`. Mediation events belong to the dispute
when their session does, or when their payload names it (dispute-scoped rows, MED-2;
dispatcher rows). `serbero.ops.mediation` adds the readable mediation part above them.

Privacy (MED-172, CORE-40): chat content, DM bodies, summary text and rationale text
never leave the database through this view; a rationale is named by its `rationale_id`.
The parties' keys are never shown either: session and message key columns are not read
for display, payload fields whose name marks a key or a text are hidden, and any payload
or error string that contains a party key (shared or trade), a rationale or summary text or
a chat message of this dispute is masked as a last line of defence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

import msgspec

from serbero.ops.database import ReadOnlyDatabase
from serbero.ops.mediation import DisputeMediation, read_dispute_mediation
from serbero.protocol.keys import normalise_public_key
from serbero.store.audit import payload_field
from serbero.store.disputes import Dispute, get_dispute

__all__ = ["HIDDEN", "SOURCES", "Timeline", "TimelineEntry", "read_timeline"]

HIDDEN: Final = "<hidden>"
# Same-second entries are ordered by source in this order, then by row id.
SOURCES: Final = (
    "disputes",
    "notification_outbox",
    "notifications",
    "dispute_state_transitions",
    "mediation_sessions",
    "mediation_messages",
    "reasoning_rationales",
    "serbero_rationale_occurrences",
    "mediation_events",
    "mediation_summaries",
    "escalation_dispatches",
)
_SOURCE_RANK: Final = {source: rank for rank, source in enumerate(SOURCES)}
# Every source but `disputes` may be missing (a reference database has no outbox).
_OPTIONAL_TABLES: Final = tuple(source for source in SOURCES if source != "disputes")
# Payload keys containing one of these, or equal to one of the names after them, name a key
# or free text: their values are shown as HIDDEN.
_HIDDEN_KEY_PARTS: Final = (
    "pubkey",
    "npub",
    "nsec",
    "secret",
    "private",
    "text",
    "content",
    "body",
    "transcript",
)
_HIDDEN_KEYS: Final = frozenset({"summary", "message", "messages", "rationale", "reply"})
# Shorter chat messages are too common as substrings to mask anywhere they appear.
_MIN_MASKED_LENGTH: Final = 8
_DISPUTE_REF_SQL: Final = payload_field("dispute_id")
# Per-session columns holding a party key or free text: read only to mask them.
_SESSION_SECRETS: Final = (
    ("mediation_sessions", ("buyer_shared_pubkey", "seller_shared_pubkey")),
    ("mediation_messages", ("shared_pubkey", "content")),
    ("serbero_session_trade_keys", ("buyer_trade_pubkey", "seller_trade_pubkey")),
    ("mediation_summaries", ("summary_text", "suggested_next_step")),
)

Detail = str | int | float | bool | None | list[Any] | dict[str, Any]


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One thing that happened: when, which table says so, what, and its safe details."""

    at: int
    source: str
    kind: str
    ref: str
    details: dict[str, Detail]


class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    """The dispute row, its mediation session ids, what mediation did (None without the
    mediation tables) and every entry, oldest first."""

    dispute: Dispute
    sessions: tuple[str, ...]
    mediation: DisputeMediation | None
    entries: tuple[TimelineEntry, ...]
    unavailable: tuple[str, ...]


class _Secrets:
    """Strings of this dispute that must not be printed, for masking inside payloads."""

    def __init__(self, values: Iterable[str | None]) -> None:
        self._values = sorted(
            {v for v in values if v and len(v) >= _MIN_MASKED_LENGTH}, key=len, reverse=True
        )

    def mask(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._values:
                if secret in value:
                    value = value.replace(secret, HIDDEN)
            return value
        if isinstance(value, list):
            return [self.mask(item) for item in value]
        if isinstance(value, dict):
            return _safe_payload(value, self)
        return value


def _is_hidden_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in _HIDDEN_KEYS or any(part in lowered for part in _HIDDEN_KEY_PARTS)


def _safe_payload(payload: dict[str, Any], secrets: _Secrets) -> dict[str, Any]:
    return {
        str(key): HIDDEN if _is_hidden_key(str(key)) else secrets.mask(value)
        for key, value in payload.items()
    }


def _decode_payload(text: str, secrets: _Secrets) -> Detail:
    try:
        payload = json.loads(text)
    except ValueError:
        return f"<not JSON, {len(text)} characters>"
    if not isinstance(payload, dict):
        return f"<not a JSON object, {len(text)} characters>"
    return _safe_payload(payload, secrets)


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values) or "NULL"


def _rows(db: ReadOnlyDatabase, sql: str, args: Sequence[object]) -> list[dict[str, Any]]:
    """Rows as column name -> value, so each view names the columns it shows, never positions."""
    cursor = db.conn.cursor()
    cursor.row_trace = lambda cur, row: dict(
        zip((column for column, _ in cur.getdescription()), row, strict=True)
    )
    return list(cursor.execute(sql, args))


def _session_ids(db: ReadOnlyDatabase, dispute_id: str) -> tuple[str, ...]:
    if not db.has("mediation_sessions"):
        return ()
    rows = db.conn.execute(
        "SELECT session_id FROM mediation_sessions WHERE dispute_id = ? ORDER BY started_at, rowid",
        (dispute_id,),
    )
    return tuple(str(row[0]) for row in rows)


def _collect_secrets(
    db: ReadOnlyDatabase, sessions: tuple[str, ...], rationale_ids: Iterable[str]
) -> _Secrets:
    """Party keys (shared and trade), chat content, summary and rationale texts of this
    dispute (read only to mask them)."""
    values: list[str | None] = []
    marks = _marks(sessions)
    for table, columns in _SESSION_SECRETS:
        if db.has(table) and sessions:
            for row in db.conn.execute(
                f"SELECT {', '.join(columns)} FROM {table} WHERE session_id IN ({marks})",
                sessions,
            ):
                values.extend(row)
    ids = tuple(rationale_ids)
    if db.has("reasoning_rationales"):
        for (text,) in db.conn.execute(
            "SELECT rationale_text FROM reasoning_rationales"
            f" WHERE session_id IN ({marks}) OR rationale_id IN ({_marks(ids)})",
            (*sessions, *ids),
        ):
            values.append(text)
    return _Secrets(values)


def _dispute_entry(dispute: Dispute) -> TimelineEntry:
    return TimelineEntry(
        at=dispute.detected_at,
        source="disputes",
        kind="dispute_detected",
        ref=dispute.dispute_id,
        details={
            "event_id": dispute.event_id,
            "event_timestamp": dispute.event_timestamp,
            "dispute_status": dispute.dispute_status,
            "initiator_role": dispute.initiator_role,
        },
    )


def _transitions(db: ReadOnlyDatabase, dispute_id: str) -> list[TimelineEntry]:
    if not db.has("dispute_state_transitions"):
        return []
    return [
        TimelineEntry(
            at=int(row["transitioned_at"]),
            source="dispute_state_transitions",
            kind="state_transition",
            ref=str(row["id"]),
            details={"from": row["from_state"], "to": row["to_state"], "trigger": row["trigger"]},
        )
        for row in _rows(
            db,
            "SELECT id, from_state, to_state, transitioned_at, trigger"
            " FROM dispute_state_transitions WHERE dispute_id = ? ORDER BY id",
            (dispute_id,),
        )
    ]


def _notifications(db: ReadOnlyDatabase, dispute_id: str, secrets: _Secrets) -> list[TimelineEntry]:
    return [
        TimelineEntry(
            at=int(row["sent_at"]),
            source="notifications",
            kind=f"notification_{row['status']}",
            ref=str(row["id"]),
            details={
                "notif_type": row["notif_type"],
                "solver": normalise_public_key(row["solver_pubkey"]),
                "error": secrets.mask(row["error_message"]),
            },
        )
        for row in _rows(
            db,
            "SELECT id, solver_pubkey, sent_at, status, error_message, notif_type"
            " FROM notifications WHERE dispute_id = ? ORDER BY id",
            (dispute_id,),
        )
    ]


def _outbox(db: ReadOnlyDatabase, dispute_id: str, secrets: _Secrets) -> list[TimelineEntry]:
    if not db.has("notification_outbox"):
        return []
    return [
        TimelineEntry(
            at=int(row["created_at"]),
            source="notification_outbox",
            kind="notification_queued",
            ref=str(row["id"]),
            details={
                "notif_type": row["notif_type"],
                "solver": normalise_public_key(row["solver_pubkey"]),
                "cause": row["cause"],
                "state": row["state"],
                "attempts": int(row["attempts"]),
                "finished_at": row["finished_at"],
                "last_error": secrets.mask(row["last_error"]),
                "handoff_event_id": row["handoff_event_id"],
            },
        )
        for row in _rows(
            db,
            "SELECT id, solver_pubkey, notif_type, cause, created_at, attempts, state,"
            " last_error, finished_at, handoff_event_id FROM notification_outbox"
            " WHERE dispute_id = ? ORDER BY id",
            (dispute_id,),
        )
    ]


def _sessions(db: ReadOnlyDatabase, dispute_id: str) -> list[TimelineEntry]:
    if not db.has("mediation_sessions"):
        return []
    return [
        TimelineEntry(
            at=int(row["started_at"]),
            source="mediation_sessions",
            kind="mediation_session_started",
            ref=str(row["session_id"]),
            details={
                "state": row["state"],
                "round_count": row["round_count"],
                "classification": row["current_classification"],
                "confidence": row["current_confidence"],
                "assigned_solver": row["assigned_solver"],
                "prompt_bundle_id": row["prompt_bundle_id"],
                "last_transition_at": row["last_transition_at"],
            },
        )
        for row in _rows(
            db,
            "SELECT session_id, state, round_count, prompt_bundle_id, assigned_solver,"
            " current_classification, current_confidence, started_at, last_transition_at"
            " FROM mediation_sessions WHERE dispute_id = ? ORDER BY started_at, rowid",
            (dispute_id,),
        )
    ]


def _messages(db: ReadOnlyDatabase, sessions: tuple[str, ...]) -> list[TimelineEntry]:
    """Message metadata only: who, which direction, which events; never the content."""
    if not db.has("mediation_messages") or not sessions:
        return []
    return [
        TimelineEntry(
            at=int(row["persisted_at"]),
            source="mediation_messages",
            kind=f"mediation_message_{row['direction']}",
            ref=str(row["id"]),
            details={
                "session_id": row["session_id"],
                "party": row["party"],
                "inner_event_id": row["inner_event_id"],
                "inner_event_created_at": row["inner_event_created_at"],
                "outer_event_id": row["outer_event_id"],
                "stale": bool(row["stale"]),
            },
        )
        for row in _rows(
            db,
            "SELECT id, session_id, direction, party, inner_event_id, inner_event_created_at,"
            " outer_event_id, persisted_at, stale FROM mediation_messages"
            f" WHERE session_id IN ({_marks(sessions)}) ORDER BY id",
            sessions,
        )
    ]


def _event_rows(
    db: ReadOnlyDatabase, dispute_id: str, sessions: tuple[str, ...]
) -> list[dict[str, Any]]:
    if not db.has("mediation_events"):
        return []
    return _rows(
        db,
        "SELECT id, session_id, kind, payload_json, rationale_id, occurred_at"
        f" FROM mediation_events WHERE session_id IN ({_marks(sessions)})"
        f" OR {_DISPUTE_REF_SQL} = ? ORDER BY id",
        (*sessions, dispute_id),
    )


def _events(rows: list[dict[str, Any]], secrets: _Secrets) -> list[TimelineEntry]:
    return [
        TimelineEntry(
            at=int(row["occurred_at"]),
            source="mediation_events",
            kind=str(row["kind"]),
            ref=str(row["id"]),
            details={
                "session_id": row["session_id"],
                "rationale_id": row["rationale_id"],
                "payload": _decode_payload(str(row["payload_json"]), secrets),
            },
        )
        for row in rows
    ]


def _summary_rows(db: ReadOnlyDatabase, dispute_id: str) -> list[dict[str, Any]]:
    if not db.has("mediation_summaries"):
        return []
    return _rows(
        db,
        "SELECT id, session_id, classification, confidence, rationale_id, prompt_bundle_id,"
        " generated_at FROM mediation_summaries WHERE dispute_id = ? ORDER BY id",
        (dispute_id,),
    )


def _summaries(rows: list[dict[str, Any]]) -> list[TimelineEntry]:
    """Summary metadata; the summary text and suggested next step stay in the database."""
    return [
        TimelineEntry(
            at=int(row["generated_at"]),
            source="mediation_summaries",
            kind="mediation_summary",
            ref=str(row["id"]),
            details={
                "session_id": row["session_id"],
                "classification": row["classification"],
                "confidence": row["confidence"],
                "rationale_id": row["rationale_id"],
                "prompt_bundle_id": row["prompt_bundle_id"],
            },
        )
        for row in rows
    ]


def _rationale_entry(row: dict[str, Any], *, source: str, kind: str) -> TimelineEntry:
    """A rationale by id and provenance; its text is never read for display."""
    return TimelineEntry(
        at=int(row["generated_at"]),
        source=source,
        kind=kind,
        ref=str(row["rationale_id"]),
        details={
            "session_id": row["session_id"],
            "provider": row["provider"],
            "model": row["model"],
            "prompt_bundle_id": row["prompt_bundle_id"],
        },
    )


def _rationales(
    db: ReadOnlyDatabase, sessions: tuple[str, ...], rationale_ids: tuple[str, ...]
) -> list[TimelineEntry]:
    """Which rationales exist (id, provider, model)."""
    if not db.has("reasoning_rationales"):
        return []
    return [
        _rationale_entry(row, source="reasoning_rationales", kind="reasoning_rationale")
        for row in _rows(
            db,
            "SELECT rationale_id, session_id, provider, model, prompt_bundle_id, generated_at"
            f" FROM reasoning_rationales WHERE session_id IN ({_marks(sessions)})"
            f" OR rationale_id IN ({_marks(rationale_ids)}) ORDER BY generated_at, rowid",
            (*sessions, *rationale_ids),
        )
    ]


def _occurrence_rows(db: ReadOnlyDatabase, dispute_id: str) -> list[dict[str, Any]]:
    if not db.has("serbero_rationale_occurrences"):
        return []
    return _rows(
        db,
        "SELECT rationale_id, purpose, session_id, provider, model, prompt_bundle_id,"
        " generated_at FROM serbero_rationale_occurrences WHERE dispute_id = ? ORDER BY id",
        (dispute_id,),
    )


def _occurrences(rows: list[dict[str, Any]]) -> list[TimelineEntry]:
    """Each use of a rationale (Q-16), dispute-scoped verdicts included."""
    return [
        _rationale_entry(
            row, source="serbero_rationale_occurrences", kind=f"rationale_{row['purpose']}"
        )
        for row in rows
    ]


def _dispatches(db: ReadOnlyDatabase, dispute_id: str) -> list[TimelineEntry]:
    if not db.has("escalation_dispatches"):
        return []
    return [
        TimelineEntry(
            at=int(row["dispatched_at"]),
            source="escalation_dispatches",
            kind=f"escalation_{row['status']}",
            ref=str(row["dispatch_id"]),
            details={
                "session_id": row["session_id"],
                "handoff_event_id": row["handoff_event_id"],
                "target_solver": _solver_list(row["target_solver"]),
                "fallback_broadcast": bool(row["fallback_broadcast"]),
            },
        )
        for row in _rows(
            db,
            "SELECT dispatch_id, session_id, handoff_event_id, target_solver, dispatched_at,"
            " status, fallback_broadcast FROM escalation_dispatches WHERE dispute_id = ?"
            " ORDER BY dispatched_at, rowid",
            (dispute_id,),
        )
    ]


def _solver_list(text: str) -> str:
    """`target_solver` names one key or several, comma-joined; each shown as stored now."""
    return ",".join(normalise_public_key(key) for key in text.split(","))


def read_timeline(db: ReadOnlyDatabase, dispute_id: str) -> Timeline | None:
    """The dispute's timeline, or None when no `disputes` row has that id."""
    dispute = get_dispute(db.conn, dispute_id)
    if dispute is None:
        return None
    sessions = _session_ids(db, dispute_id)
    event_rows = _event_rows(db, dispute_id, sessions)
    summary_rows = _summary_rows(db, dispute_id)
    occurrence_rows = _occurrence_rows(db, dispute_id)
    rationale_ids = tuple(
        sorted(
            {
                str(row["rationale_id"])
                for row in (*event_rows, *summary_rows, *occurrence_rows)
                if row["rationale_id"] is not None
            }
        )
    )
    secrets = _collect_secrets(db, sessions, rationale_ids)
    entries = [
        _dispute_entry(dispute),
        *_outbox(db, dispute_id, secrets),
        *_notifications(db, dispute_id, secrets),
        *_transitions(db, dispute_id),
        *_sessions(db, dispute_id),
        *_messages(db, sessions),
        *_rationales(db, sessions, rationale_ids),
        *_occurrences(occurrence_rows),
        *_events(event_rows, secrets),
        *_summaries(summary_rows),
        *_dispatches(db, dispute_id),
    ]
    entries.sort(key=lambda entry: (entry.at, _SOURCE_RANK[entry.source]))
    return Timeline(
        dispute=dispute,
        sessions=sessions,
        mediation=read_dispute_mediation(db, dispute_id),
        entries=tuple(entries),
        unavailable=tuple(table for table in _OPTIONAL_TABLES if not db.has(table)),
    )
