"""A store that has mediated for a long time: the seed for the tick figures of bench/mediation.

`seed_store` fills a real SQLite file (created and migrated by `open_database`, so it has
every table and index the daemon's has) with what a busy Serbero would hold after thousands
of mediations: per session its dispute, the audit events the open procedure and the rounds
write (with the payloads their writers give them, since some listings read those), chat
messages in both directions with the stored outbound wraps, rationales, the trade keys, and
for a session that ended its summary or its escalation. Most sessions are over; a few are
live at each state a tick looks at; some disputes have no session (waiting for a start, or
escalated before any take). Rows are inserted directly, in one transaction, because 10,000
sessions through the store functions one transaction each would take minutes; the shapes
follow those functions.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from typing import Final

import apsw
import msgspec

from serbero.store.audit import encode_payload
from serbero.store.connection import open_database

BUNDLE_ID: Final = "phase3-default"
POLICY_HASH: Final = "b" * 64
SERBERO: Final = "5e" * 32
MOSTRO: Final = "a1" * 32
DAY: Final = 86_400
# The seeded store's "now": the newest session started just before it.
SEED_NOW: Final = 1_790_000_000
# How the stored sessions ended, by share (the rest is live).
ENDINGS: Final = (
    ("closed", 0.62),  # summary delivered and closed, or superseded externally
    ("escalation_recommended", 0.30),
    ("superseded_by_human", 0.06),
)
# Live sessions, spread over the states a tick lists.
LIVE_STATES: Final = ("awaiting_response", "awaiting_response", "classified", "summary_pending")
# One live session in this many has its last round's messages not yet accepted by a relay.
UNSENT_EVERY: Final = 20
# Disputes without a session, per 100 sessions: waiting for a start, escalated before take.
WAITING_PER_100: Final = 1
ESCALATED_BEFORE_TAKE_PER_100: Final = 8
MESSAGE_TEXT: Final = (
    "I sent the payment at 10:05 with the order reference; my bank shows it as completed "
    "and I attached the confirmation. Please check again."
)
RATIONALE_TEXT: Final = "Both accounts agree on the amount; the transfer is likely delayed. " * 3


class Seeded(msgspec.Struct, frozen=True):
    """What `seed_store` wrote, for the bench's printout."""

    sessions: int
    live: int
    disputes: int
    messages: int
    events: int
    bytes: int


def _hex(rng: random.Random, size: int = 32) -> str:
    return rng.randbytes(size).hex()


def _events(session_id: str, dispute_id: str, ending: str, at: int) -> Iterator[tuple[object, ...]]:
    """(session_id, kind, payload_json, occurred_at) of one session's audit trail."""

    def event(kind: str, payload: dict[str, object], offset: int) -> tuple[object, ...]:
        return (session_id, kind, encode_payload(payload), at + offset)

    yield event("session_opened", {}, 2)
    yield event(
        "classification_produced",
        {"classification": "coordination_failure_resolvable", "confidence": 0.8},
        2,
    )
    if ending == "escalation_recommended":
        yield event("escalation_recommended", {"trigger": "conflicting_claims"}, 900)
        yield event(
            "handoff_prepared",
            {"dispute_id": dispute_id, "session_id": session_id, "trigger": "conflicting_claims"},
            900,
        )
    elif ending == "closed":
        yield event(
            "summary_generated", {"classification": "coordination_failure_resolvable"}, 1800
        )
    elif ending == "superseded_by_human":
        yield event("superseded_by_human", {"reason": "dispute_resolved_externally"}, 600)


def seed_store(path: str, sessions: int, live: int, seed: int = 17) -> Seeded:
    """Create `path` and fill it as described above; `live` of the sessions are live."""
    rng = random.Random(seed)
    conn, _ = open_database(path)
    now = SEED_NOW
    disputes: list[tuple[object, ...]] = []
    session_rows: list[tuple[object, ...]] = []
    messages: list[tuple[object, ...]] = []
    wraps: list[tuple[int, str]] = []
    events: list[tuple[object, ...]] = []
    rationales: list[tuple[object, ...]] = []
    summaries: list[tuple[object, ...]] = []
    trade_keys: list[tuple[object, ...]] = []
    message_id = 0
    weights = [share for _, share in ENDINGS]
    for index in range(sessions):
        dispute_id, session_id = (
            str(uuid.UUID(int=rng.getrandbits(128))),
            str(uuid.UUID(int=rng.getrandbits(128))),
        )
        is_live = index >= sessions - live
        at = now - (sessions - index) * 90 * DAY // sessions
        if is_live:
            ending, state = "", LIVE_STATES[index % len(LIVE_STATES)]
        else:
            ending = rng.choices([name for name, _ in ENDINGS], weights)[0]
            state = ending
        lifecycle = "taken" if is_live else "resolved"
        status = "in-progress" if is_live else "settled"
        disputes.append(
            (
                dispute_id,
                _hex(rng),
                MOSTRO,
                rng.choice(("buyer", "seller")),
                status,
                at - 5,
                at - 4,
                lifecycle,
                SERBERO,
                at - 4,
                at,
            )
        )
        buyer_shared, seller_shared = _hex(rng), _hex(rng)
        rounds = rng.choice((1, 1, 2))
        last_answer = at + (rounds - 1) * 600 + 120
        session_rows.append(
            (
                session_id,
                dispute_id,
                state,
                rounds,
                BUNDLE_ID,
                POLICY_HASH,
                SERBERO,
                "coordination_failure_resolvable",
                0.8,
                buyer_shared,
                seller_shared,
                at,
                at + 900,
                # One live session in three has an answer the rounds have not evaluated yet.
                2 * rounds - (1 if is_live and index % 3 == 0 else 0),
                0,
                last_answer,
                last_answer,
            )
        )
        trade_keys.append((session_id, _hex(rng), _hex(rng)))
        for round_index in range(rounds):
            base = at + round_index * 600
            for party, shared in (("buyer", buyer_shared), ("seller", seller_shared)):
                message_id += 1
                inner_id = _hex(rng)
                if not (is_live and index % UNSENT_EVERY == 0 and round_index == rounds - 1):
                    sent = {"inner_event_id": inner_id, "shared_pubkey": shared}
                    events.append((session_id, "outbound_sent", encode_payload(sent), base + 1))
                messages.append(
                    (
                        message_id,
                        session_id,
                        "outbound",
                        party,
                        shared,
                        inner_id,
                        base,
                        _hex(rng),
                        MESSAGE_TEXT,
                        BUNDLE_ID,
                        POLICY_HASH,
                        base,
                        0,
                    )
                )
                wraps.append((message_id, "{" + "0" * 1200 + "}"))
            for party, shared in (("buyer", buyer_shared), ("seller", seller_shared)):
                message_id += 1
                messages.append(
                    (
                        message_id,
                        session_id,
                        "inbound",
                        party,
                        shared,
                        _hex(rng),
                        base + 120,
                        _hex(rng),
                        MESSAGE_TEXT,
                        None,
                        None,
                        base + 125,
                        0,
                    )
                )
        rationale_id = _hex(rng)
        rationales.append(
            (
                rationale_id,
                session_id,
                "openai",
                "gpt-4o-mini",
                BUNDLE_ID,
                POLICY_HASH,
                RATIONALE_TEXT,
                at + 1,
            )
        )
        events.extend(_events(session_id, dispute_id, ending, at))
        if ending == "closed":
            summaries.append(
                (
                    session_id,
                    dispute_id,
                    "coordination_failure_resolvable",
                    0.85,
                    "confirm receipt",
                    RATIONALE_TEXT,
                    BUNDLE_ID,
                    POLICY_HASH,
                    None,
                    at + 1800,
                )
            )
    extra = sessions * (WAITING_PER_100 + ESCALATED_BEFORE_TAKE_PER_100) // 100
    for index in range(extra):
        dispute_id = str(uuid.UUID(int=rng.getrandbits(128)))
        at = now - rng.randrange(90 * DAY)
        escalated = index % (WAITING_PER_100 + ESCALATED_BEFORE_TAKE_PER_100) != 0
        disputes.append(
            (
                dispute_id,
                _hex(rng),
                MOSTRO,
                "buyer",
                "initiated",
                at - 5,
                at - 4,
                "notified",
                None,
                at - 4,
                at,
            )
        )
        if escalated:
            events.append(
                (
                    None,
                    "escalation_recommended",
                    encode_payload({"dispute_id": dispute_id, "trigger": "conflicting_claims"}),
                    at,
                )
            )
    with conn:
        conn.executemany(
            "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
            " dispute_status, event_timestamp, detected_at, lifecycle_state, assigned_solver,"
            " last_notified_at, last_state_change) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            disputes,
        )
        conn.executemany(
            "INSERT INTO mediation_sessions (session_id, dispute_id, state, round_count,"
            " prompt_bundle_id, policy_hash, assigned_solver, current_classification,"
            " current_confidence, buyer_shared_pubkey, seller_shared_pubkey, started_at,"
            " last_transition_at, round_count_last_evaluated, consecutive_eval_failures,"
            " buyer_last_seen_inner_ts, seller_last_seen_inner_ts)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            session_rows,
        )
        conn.executemany("INSERT INTO serbero_session_trade_keys VALUES (?,?,?)", trade_keys)
        conn.executemany(
            "INSERT INTO mediation_messages (id, session_id, direction, party, shared_pubkey,"
            " inner_event_id, inner_event_created_at, outer_event_id, content,"
            " prompt_bundle_id, policy_hash, persisted_at, stale)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            messages,
        )
        conn.executemany("INSERT INTO serbero_outbound_wraps VALUES (?,?)", wraps)
        conn.executemany("INSERT INTO reasoning_rationales VALUES (?,?,?,?,?,?,?,?)", rationales)
        conn.executemany(
            "INSERT INTO mediation_events (session_id, kind, payload_json, prompt_bundle_id,"
            " policy_hash, occurred_at) VALUES (?,?,?,'" + BUNDLE_ID + "','" + POLICY_HASH + "',?)",
            events,
        )
        conn.executemany(
            "INSERT INTO mediation_summaries (session_id, dispute_id, classification,"
            " confidence, suggested_next_step, summary_text, prompt_bundle_id, policy_hash,"
            " rationale_id, generated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            summaries,
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return Seeded(
        sessions=sessions,
        live=live,
        disputes=len(disputes),
        messages=len(messages),
        events=len(events),
        bytes=os.path.getsize(path),
    )


def connection(path: str) -> apsw.Connection:
    """The seeded file opened as the daemon opens it (pragmas, migrations: a no-op)."""
    conn, _ = open_database(path)
    return conn
