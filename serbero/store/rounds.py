"""What the follow-up rounds read and write: the session as the evaluator sees it, the
transcript, the mid-session classification, the failure counter and the listings the engine's
tick walks (MED-93..96, MED-103, §12.1 #4, Q-1).

The marker `round_count_last_evaluated` counts the fresh inbound messages already evaluated
(not rounds). It only moves with the commit that acts on an evaluation (MED-94): the
follow-up round's rows (`serbero.store.chat.record_outbound_round`) or the move to
`classified` here, so a crash in between leaves the session to be evaluated again.
"""

from __future__ import annotations

from typing import Final

import apsw
import msgspec

from serbero.reasoning.types import Role, Speaker, TranscriptEntry
from serbero.store.audit import insert_event
from serbero.store.errors import UnknownSession
from serbero.store.rationale import RationaleOccurrence, store_rationale
from serbero.store.transaction import transaction

__all__ = [
    "AWAITING_RESPONSE",
    "CLASSIFICATION_PRODUCED",
    "ESCALATABLE_STATES",
    "PARTY_WAIT_STATES",
    "TRANSCRIPT_CAP",
    "EscalatableSession",
    "EvaluationSnapshot",
    "RecordedClassification",
    "evaluation_snapshot",
    "increment_eval_failures",
    "mark_classified",
    "pending_evaluations",
    "record_classification",
    "transcript",
    "unresponsive_sessions",
    "waiting_sessions",
]

AWAITING_RESPONSE: Final = "awaiting_response"
CLASSIFIED: Final = "classified"
CLASSIFICATION_PRODUCED: Final = "classification_produced"
# MED-5: a transcript holds at most the latest 40 messages.
TRANSCRIPT_CAP: Final = 40
# MED-72/73: the states an escalation may leave.
ESCALATABLE_STATES: Final = (
    "opening",
    AWAITING_RESPONSE,
    CLASSIFIED,
    "follow_up_pending",
    "summary_pending",
)
# The states in which Serbero waits on the parties. The timeout sweep looks only at these:
# a `classified` or `summary_pending` session waits on Serbero's own summary, and a timeout
# escalating it mid-delivery could end one session twice (summary and escalation).
PARTY_WAIT_STATES: Final = ("opening", AWAITING_RESPONSE, "follow_up_pending")


def _placeholders(values: tuple[str, ...]) -> str:
    return ", ".join("?" * len(values))


class EvaluationSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One session as MED-93 needs it, read in one go.

    `fresh_inbound` is F (inbound rows with `stale = 0`); `marker` is
    `round_count_last_evaluated`; `latest_fresh_inbound` the newest fresh inbound's inner id
    (the round limit's evidence); `initiator_role` None when the dispute row lacks a valid one;
    `dropped` counts inbound rows whose shared pubkey is neither party's (left out, MED-96).
    """

    session_id: str
    dispute_id: str
    state: str
    round_count: int
    marker: int
    failures: int
    fresh_inbound: int
    latest_fresh_inbound: str | None
    initiator_role: Role | None
    prompt_bundle_id: str
    policy_hash: str
    transcript: tuple[TranscriptEntry, ...]
    dropped: int = 0


def _transcript(
    conn: apsw.Connection, session_id: str, buyer: str | None, seller: str | None
) -> tuple[tuple[TranscriptEntry, ...], int]:
    rows = conn.execute(
        "SELECT direction, shared_pubkey, inner_event_created_at, content"
        " FROM mediation_messages WHERE session_id = ? AND stale = 0"
        " ORDER BY inner_event_created_at DESC, id DESC LIMIT ?",
        (session_id, TRANSCRIPT_CAP),
    ).fetchall()
    entries: list[TranscriptEntry] = []
    dropped = 0
    for direction, shared_pubkey, created_at, content in reversed(rows):
        party: Speaker
        if direction == "outbound":
            party = "serbero"
        elif shared_pubkey is not None and shared_pubkey == buyer:
            party = "buyer"
        elif shared_pubkey is not None and shared_pubkey == seller:
            party = "seller"
        else:
            dropped += 1
            continue
        entries.append(TranscriptEntry(party, int(created_at), str(content)))
    return tuple(entries), dropped


def transcript(conn: apsw.Connection, session_id: str) -> tuple[TranscriptEntry, ...]:
    """MED-96: the session's latest `TRANSCRIPT_CAP` fresh messages, oldest first; Serbero's
    as `serbero`, the parties' by their shared pubkey (any other inbound row is left out)."""
    row = conn.execute(
        "SELECT buyer_shared_pubkey, seller_shared_pubkey FROM mediation_sessions"
        " WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        raise UnknownSession(session_id)
    return _transcript(conn, session_id, row[0], row[1])[0]


def evaluation_snapshot(conn: apsw.Connection, session_id: str) -> EvaluationSnapshot | None:
    """The session row, its dispute's initiator, F, and the transcript; None if no session."""
    row = conn.execute(
        "SELECT s.dispute_id, s.state, s.round_count, s.round_count_last_evaluated,"
        " s.consecutive_eval_failures, s.prompt_bundle_id, s.policy_hash,"
        " s.buyer_shared_pubkey, s.seller_shared_pubkey, d.initiator_role,"
        " (SELECT COUNT(*) FROM mediation_messages m WHERE m.session_id = s.session_id"
        "  AND m.direction = 'inbound' AND m.stale = 0),"
        " (SELECT m.inner_event_id FROM mediation_messages m WHERE m.session_id = s.session_id"
        "  AND m.direction = 'inbound' AND m.stale = 0"
        "  ORDER BY m.inner_event_created_at DESC, m.id DESC LIMIT 1)"
        " FROM mediation_sessions s LEFT JOIN disputes d ON d.dispute_id = s.dispute_id"
        " WHERE s.session_id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        return None
    entries, dropped = _transcript(conn, session_id, row[7], row[8])
    role = row[9]
    return EvaluationSnapshot(
        session_id=session_id,
        dispute_id=str(row[0]),
        state=str(row[1]),
        round_count=int(row[2]),
        marker=int(row[3]),
        failures=int(row[4]),
        prompt_bundle_id=str(row[5]),
        policy_hash=str(row[6]),
        initiator_role="buyer" if role == "buyer" else "seller" if role == "seller" else None,
        fresh_inbound=int(row[10]),
        latest_fresh_inbound=None if row[11] is None else str(row[11]),
        transcript=entries,
        dropped=dropped,
    )


class RecordedClassification(msgspec.Struct, frozen=True, kw_only=True):
    """A stored mid-session classification: its rationale, its event, and `n`, the number of
    `classification_produced` events the session had before it (MED-93 step 6: the open
    verdict's is the first, so the first follow-up is n = 1)."""

    rationale_id: str
    event_id: int
    n: int


def record_classification(
    conn: apsw.Connection,
    session_id: str,
    rationale: RationaleOccurrence,
    *,
    classification: str,
    confidence: float,
    now: int,
) -> RecordedClassification:
    """MED-92/93: the session-scoped rationale and `classification_produced` naming it, in
    one transaction, before the policy's action is carried out."""
    with transaction(conn):
        if (
            conn.execute(
                "SELECT 1 FROM mediation_sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            is None
        ):
            raise UnknownSession(session_id)
        counted = conn.execute(
            "SELECT COUNT(*) FROM mediation_events WHERE session_id = ? AND kind = ?",
            (session_id, CLASSIFICATION_PRODUCED),
        ).fetchone()
        stored = store_rationale(
            conn, msgspec.structs.replace(rationale, session_id=session_id), now
        )
        event_id = insert_event(
            conn,
            session_id=session_id,
            kind=CLASSIFICATION_PRODUCED,
            payload={
                "classification": classification,
                "confidence": confidence,
                "rationale_id": stored.rationale_id,
            },
            prompt_bundle_id=rationale.prompt_bundle_id,
            policy_hash=rationale.policy_hash,
            occurred_at=now,
            rationale_id=stored.rationale_id,
        )
    return RecordedClassification(
        rationale_id=stored.rationale_id,
        event_id=event_id,
        n=0 if counted is None else int(counted[0]),
    )


def increment_eval_failures(conn: apsw.Connection, session_id: str) -> int:
    """MED-95: one more failed evaluation; returns the new count."""
    with transaction(conn):
        row = conn.execute(
            "UPDATE mediation_sessions SET consecutive_eval_failures ="
            " consecutive_eval_failures + 1 WHERE session_id = ?"
            " RETURNING consecutive_eval_failures",
            (session_id,),
        ).fetchone()
    if row is None:
        raise UnknownSession(session_id)
    return int(row[0])


def mark_classified(conn: apsw.Connection, session_id: str, marker: int, now: int) -> bool:
    """A mid-session Summarize: `awaiting_response -> classified` with the marker set to F
    and the failures reset, one transaction (MED-93 step 7, MED-94). The summary delivery
    follows; if the daemon stops first, the tick delivers the `classified` session (Q-2).
    False (nothing written) when the session is no longer `awaiting_response`."""
    with transaction(conn):
        conn.execute(
            "UPDATE mediation_sessions SET state = ?, last_transition_at = ?,"
            " round_count_last_evaluated = ?, consecutive_eval_failures = 0"
            " WHERE session_id = ? AND state = ?",
            (CLASSIFIED, now, marker, session_id, AWAITING_RESPONSE),
        )
        return conn.changes() == 1


def pending_evaluations(conn: apsw.Connection) -> tuple[str, ...]:
    """Q-1: `awaiting_response` sessions with more fresh inbound messages than evaluated,
    oldest first, so a failed evaluation is tried again on the next tick."""
    return tuple(
        str(session_id)
        for (session_id,) in conn.execute(
            "SELECT s.session_id FROM mediation_sessions s WHERE s.state = ?"
            " AND (SELECT COUNT(*) FROM mediation_messages m WHERE m.session_id = s.session_id"
            " AND m.direction = 'inbound' AND m.stale = 0) > s.round_count_last_evaluated"
            " ORDER BY s.started_at, s.rowid",
            (AWAITING_RESPONSE,),
        )
    )


class EscalatableSession(msgspec.Struct, frozen=True):
    """A session an escalation may still end, with its dispute."""

    session_id: str
    dispute_id: str


def unresponsive_sessions(
    conn: apsw.Connection, now: int, timeout_seconds: int
) -> tuple[EscalatableSession, ...]:
    """§12.1 #4: sessions waiting on the parties where nothing was heard for longer than the
    timeout: `now > max(started_at, buyer_last_seen, seller_last_seen) + timeout`. A timeout
    of 0 turns the sweep off."""
    if timeout_seconds <= 0:
        return ()
    rows = conn.execute(
        "SELECT session_id, dispute_id FROM mediation_sessions"
        f" WHERE state IN ({_placeholders(PARTY_WAIT_STATES)})"
        " AND ? > MAX(started_at, COALESCE(buyer_last_seen_inner_ts, started_at),"
        " COALESCE(seller_last_seen_inner_ts, started_at)) + ?"
        " ORDER BY started_at, rowid",
        (*PARTY_WAIT_STATES, now, timeout_seconds),
    )
    return tuple(EscalatableSession(str(sid), str(did)) for sid, did in rows)


def waiting_sessions(conn: apsw.Connection) -> tuple[EscalatableSession, ...]:
    """Every session waiting on the parties (`PARTY_WAIT_STATES`), oldest first."""
    rows = conn.execute(
        "SELECT session_id, dispute_id FROM mediation_sessions"
        f" WHERE state IN ({_placeholders(PARTY_WAIT_STATES)}) ORDER BY started_at, rowid",
        PARTY_WAIT_STATES,
    )
    return tuple(EscalatableSession(str(sid), str(did)) for sid, did in rows)
