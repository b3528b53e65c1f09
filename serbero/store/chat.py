"""The dispute chat's rows: session keys, outbound rounds, `outbound_sent`, inbound ingest.

Outbound rows are written before anything is published (MED-82) together with the exact
wrap, so a row that never got its `outbound_sent` is republished as the same event (Q-4).
Inbound envelopes are ingested one transaction each with the MED-102 rules; the unique
index on (`session_id`, `inner_event_id`) makes de-duplication survive restarts.
"""

from __future__ import annotations

from typing import Final, Literal

import apsw
import msgspec

from serbero.store.audit import insert_event, payload_field
from serbero.store.errors import UnknownSession
from serbero.store.mediation import NOT_LIVE_SESSION_STATES
from serbero.store.transaction import transaction

__all__ = [
    "OUTBOUND_SENT",
    "Duplicate",
    "Fresh",
    "InboundEnvelope",
    "IngestOutcome",
    "OpeningRows",
    "OutboundMessage",
    "OutboundRound",
    "SessionChatKeys",
    "Stale",
    "UnsentOutbound",
    "ingest_inbound",
    "live_session_chat_keys",
    "record_opening_rows",
    "record_outbound_round",
    "record_outbound_sent",
    "record_trade_pubkeys",
    "session_chat_keys",
    "unsent_outbound",
]

OUTBOUND_SENT: Final = "outbound_sent"
_AWAITING: Final = "awaiting_response"
_OPENING: Final = "opening"
_LIVE: Final = f"s.state NOT IN ({', '.join('?' * len(NOT_LIVE_SESSION_STATES))})"

Party = Literal["buyer", "seller"]


class SessionChatKeys(msgspec.Struct, frozen=True):
    """What the chat actor needs of a session row to (re)build and check its key material."""

    session_id: str
    dispute_id: str
    state: str
    started_at: int
    prompt_bundle_id: str
    policy_hash: str
    buyer_shared_pubkey: str | None
    seller_shared_pubkey: str | None
    buyer_trade_pubkey: str | None
    seller_trade_pubkey: str | None


class OutboundMessage(msgspec.Struct, frozen=True):
    """One party's half of a round, as wrapped (`wrap_json` is the outer event's JSON)."""

    party: Party
    shared_pubkey: str
    inner_event_id: str
    inner_created_at: int
    outer_event_id: str
    content: str
    wrap_json: str


class OpeningRows(msgspec.Struct, frozen=True):
    """The opening round's two halves, stored with the session that sends them (MED-47/82)."""

    buyer: OutboundMessage
    seller: OutboundMessage


class OutboundRound(msgspec.Struct, frozen=True):
    """Both halves of a round; `marker` is set by follow-up rounds only (MED-82, MED-93)."""

    session_id: str
    buyer: OutboundMessage
    seller: OutboundMessage
    follow_up: bool = False
    marker: int | None = None


class UnsentOutbound(msgspec.Struct, frozen=True):
    """An outbound row of a live session with no `outbound_sent` yet, and its stored wrap."""

    message_id: int
    session_id: str
    party: Party
    shared_pubkey: str
    inner_event_id: str
    wrap_json: str


class InboundEnvelope(msgspec.Struct, frozen=True):
    """MED-101's envelope: one opened party message."""

    party: Party
    shared_pubkey: str
    inner_event_id: str
    inner_created_at: int
    outer_event_id: str
    content: str


class Fresh(msgspec.Struct, frozen=True, tag="fresh"):
    """A new message that moved the party's marker; `round_count` after it (MED-102), and
    whether it raised it: both parties have now answered as often as each other's turn
    asked, so the round is complete."""

    inner_event_id: str
    round_count: int
    round_complete: bool = False


class Stale(msgspec.Struct, frozen=True, tag="stale"):
    """Stored with `stale=1`: older than the party's marker or than the session (Q-12)."""

    inner_event_id: str


class Duplicate(msgspec.Struct, frozen=True, tag="duplicate"):
    """Already stored for this session: nothing changed."""

    inner_event_id: str


IngestOutcome = Fresh | Stale | Duplicate

_KEY_COLUMNS: Final = (
    "s.session_id, s.dispute_id, s.state, s.started_at, s.prompt_bundle_id, s.policy_hash,"
    " s.buyer_shared_pubkey, s.seller_shared_pubkey, t.buyer_trade_pubkey, t.seller_trade_pubkey"
    " FROM mediation_sessions s LEFT JOIN serbero_session_trade_keys t USING (session_id)"
)


def _keys_row(row: tuple[object, ...]) -> SessionChatKeys:
    def text(value: object) -> str | None:
        return None if value is None else str(value)

    return SessionChatKeys(
        session_id=str(row[0]),
        dispute_id=str(row[1]),
        state=str(row[2]),
        started_at=int(str(row[3])),
        prompt_bundle_id=str(row[4]),
        policy_hash=str(row[5]),
        buyer_shared_pubkey=text(row[6]),
        seller_shared_pubkey=text(row[7]),
        buyer_trade_pubkey=text(row[8]),
        seller_trade_pubkey=text(row[9]),
    )


def record_trade_pubkeys(
    conn: apsw.Connection, session_id: str, buyer_trade_pubkey: str, seller_trade_pubkey: str
) -> None:
    """Persist the parties' trade pubkeys for the session (BEY-16); the caller may run it
    inside the transaction that inserts the session."""
    with transaction(conn):
        _pinned(conn, session_id)
        conn.execute(
            "INSERT INTO serbero_session_trade_keys"
            " (session_id, buyer_trade_pubkey, seller_trade_pubkey) VALUES (?, ?, ?)"
            " ON CONFLICT (session_id) DO UPDATE SET"
            " buyer_trade_pubkey = excluded.buyer_trade_pubkey,"
            " seller_trade_pubkey = excluded.seller_trade_pubkey",
            (session_id, buyer_trade_pubkey, seller_trade_pubkey),
        )


def session_chat_keys(conn: apsw.Connection, session_id: str) -> SessionChatKeys | None:
    row = conn.execute(f"SELECT {_KEY_COLUMNS} WHERE s.session_id = ?", (session_id,)).fetchone()
    return None if row is None else _keys_row(row)


def live_session_chat_keys(conn: apsw.Connection) -> tuple[SessionChatKeys, ...]:
    """Every Live session (MED-4), oldest first: the restart's re-derivation list (MED-151)."""
    return tuple(
        _keys_row(row)
        for row in conn.execute(
            f"SELECT {_KEY_COLUMNS} WHERE {_LIVE} ORDER BY s.started_at, s.rowid",
            NOT_LIVE_SESSION_STATES,
        )
    )


def _pinned(conn: apsw.Connection, session_id: str) -> tuple[str, str]:
    row = conn.execute(
        "SELECT prompt_bundle_id, policy_hash FROM mediation_sessions WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        raise UnknownSession(session_id)
    return str(row[0]), str(row[1])


def _insert_outbound(
    conn: apsw.Connection,
    session_id: str,
    message: OutboundMessage,
    pinned: tuple[str, str],
    now: int,
) -> int:
    conn.execute(
        "INSERT INTO mediation_messages (session_id, direction, party, shared_pubkey,"
        " inner_event_id, inner_event_created_at, outer_event_id, content, prompt_bundle_id,"
        " policy_hash, persisted_at, stale) VALUES (?, 'outbound', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        (
            session_id,
            message.party,
            message.shared_pubkey,
            message.inner_event_id,
            message.inner_created_at,
            message.outer_event_id,
            message.content,
            *pinned,
            now,
        ),
    )
    message_id = int(conn.last_insert_rowid())
    conn.execute(
        "INSERT INTO serbero_outbound_wraps (message_id, wrap_json) VALUES (?, ?)",
        (message_id, message.wrap_json),
    )
    return message_id


def record_opening_rows(
    conn: apsw.Connection, session_id: str, opening: OpeningRows, now: int
) -> tuple[int, int]:
    """The opening round's rows and wraps, inside the caller's session commit: a session
    never exists without its opening round, so a crash after the commit leaves rows the
    restart publishes (Q-4) instead of a session nobody wrote to. Returns the message ids."""
    with transaction(conn):
        pinned = _pinned(conn, session_id)
        return (
            _insert_outbound(conn, session_id, opening.buyer, pinned, now),
            _insert_outbound(conn, session_id, opening.seller, pinned, now),
        )


def record_outbound_round(
    conn: apsw.Connection, outbound: OutboundRound, now: int
) -> tuple[int, int]:
    """MED-82 in one transaction: both rows with their wraps, then the session's update.

    Opening: `opening -> awaiting_response` if it is not there yet. Follow-up: refresh
    `last_transition_at` only in `awaiting_response`, set the marker, reset the failures.
    Returns the buyer's and the seller's message ids.
    """
    session_id = outbound.session_id
    with transaction(conn):
        pinned = _pinned(conn, session_id)
        buyer_id = _insert_outbound(conn, session_id, outbound.buyer, pinned, now)
        seller_id = _insert_outbound(conn, session_id, outbound.seller, pinned, now)
        if not outbound.follow_up:
            conn.execute(
                "UPDATE mediation_sessions SET state = ?, last_transition_at = ?"
                " WHERE session_id = ? AND state = ?",
                (_AWAITING, now, session_id, _OPENING),
            )
        else:
            conn.execute(
                "UPDATE mediation_sessions SET last_transition_at = ?"
                " WHERE session_id = ? AND state = ?",
                (now, session_id, _AWAITING),
            )
            conn.execute(
                "UPDATE mediation_sessions SET consecutive_eval_failures = 0,"
                " round_count_last_evaluated = COALESCE(?, round_count_last_evaluated)"
                " WHERE session_id = ?",
                (outbound.marker, session_id),
            )
    return buyer_id, seller_id


def _sent_exists(conn: apsw.Connection, session_id: str, inner_event_id: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM mediation_events WHERE session_id = ? AND kind = ?"
        f" AND {payload_field('inner_event_id')} = ?)",
        (session_id, OUTBOUND_SENT, inner_event_id),
    ).fetchone()
    return bool(row is not None and row[0])


def record_outbound_sent(
    conn: apsw.Connection, session_id: str, shared_pubkey: str, inner_event_id: str, now: int
) -> int | None:
    """MED-83's `outbound_sent` with the session's pinned bundle; None when already written
    (a republish of a row whose first publish did go out)."""
    with transaction(conn):
        bundle_id, policy_hash = _pinned(conn, session_id)
        if _sent_exists(conn, session_id, inner_event_id):
            return None
        return insert_event(
            conn,
            session_id=session_id,
            kind=OUTBOUND_SENT,
            payload={"inner_event_id": inner_event_id, "shared_pubkey": shared_pubkey},
            prompt_bundle_id=bundle_id,
            policy_hash=policy_hash,
            occurred_at=now,
        )


def unsent_outbound(
    conn: apsw.Connection, session_id: str | None = None
) -> tuple[UnsentOutbound, ...]:
    """Outbound rows of Live sessions whose wrap is stored and that no `outbound_sent` names
    (Q-4), in write order; rows of one session only when `session_id` is given.

    The sessions drive the join (CROSS JOIN fixes the order): a store holds few live
    sessions and many finished ones, and SQLite, left to itself, walked every outbound
    message ever stored."""
    where = "" if session_id is None else " AND s.session_id = ?"
    args: tuple[object, ...] = (
        OUTBOUND_SENT,
        *NOT_LIVE_SESSION_STATES,
        *(() if session_id is None else (session_id,)),
    )
    rows = conn.execute(
        "SELECT m.id, m.session_id, m.party, m.shared_pubkey, m.inner_event_id, w.wrap_json"
        " FROM mediation_sessions s"
        " CROSS JOIN mediation_messages m ON m.session_id = s.session_id"
        " JOIN serbero_outbound_wraps w ON w.message_id = m.id"
        " WHERE m.direction = 'outbound' AND NOT EXISTS (SELECT 1 FROM mediation_events e"
        " WHERE e.session_id = m.session_id AND e.kind = ?"
        f" AND {payload_field('inner_event_id', 'e')} = m.inner_event_id)"
        f" AND {_LIVE}{where} ORDER BY m.id",
        args,
    )
    return tuple(
        UnsentOutbound(
            message_id=int(row[0]),
            session_id=str(row[1]),
            party="buyer" if row[2] == "buyer" else "seller",
            shared_pubkey=str(row[3]),
            inner_event_id=str(row[4]),
            wrap_json=str(row[5]),
        )
        for row in rows
    )


def _fresh_round_count(conn: apsw.Connection, session_id: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(SUM(party = 'buyer'), 0), COALESCE(SUM(party = 'seller'), 0)"
        " FROM mediation_messages WHERE session_id = ? AND direction = 'inbound' AND stale = 0",
        (session_id,),
    ).fetchone()
    return 0 if row is None else min(int(row[0]), int(row[1]))


def ingest_inbound(
    conn: apsw.Connection, session_id: str, envelope: InboundEnvelope, now: int
) -> IngestOutcome:
    """MED-102 for one envelope, one transaction, plus Q-12: a message older than the
    session's start is stale (a re-opened session shares the shared pubkeys, so the old
    session's chat is still on the relays)."""
    marker_column = f"{envelope.party}_last_seen_inner_ts"
    with transaction(conn):
        row = conn.execute(
            f"SELECT {marker_column}, started_at, round_count FROM mediation_sessions"
            " WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            raise UnknownSession(session_id)
        last_seen, started_at, previous_rounds = row[0], int(row[1]), int(row[2])
        created = envelope.inner_created_at
        stale = (last_seen is not None and created < int(last_seen)) or created < started_at
        conn.execute(
            "INSERT INTO mediation_messages (session_id, direction, party, shared_pubkey,"
            " inner_event_id, inner_event_created_at, outer_event_id, content,"
            " prompt_bundle_id, policy_hash, persisted_at, stale)"
            " VALUES (?, 'inbound', ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?)"
            " ON CONFLICT (session_id, inner_event_id) DO NOTHING",
            (
                session_id,
                envelope.party,
                envelope.shared_pubkey,
                envelope.inner_event_id,
                created,
                envelope.outer_event_id,
                envelope.content,
                now,
                int(stale),
            ),
        )
        if conn.changes() == 0:
            return Duplicate(inner_event_id=envelope.inner_event_id)
        if stale:
            return Stale(inner_event_id=envelope.inner_event_id)
        round_count = _fresh_round_count(conn, session_id)
        conn.execute(
            f"UPDATE mediation_sessions SET {marker_column} = ?, round_count = ?"
            " WHERE session_id = ?",
            (created, round_count, session_id),
        )
        return Fresh(
            inner_event_id=envelope.inner_event_id,
            round_count=round_count,
            round_complete=round_count > previous_rounds,
        )
