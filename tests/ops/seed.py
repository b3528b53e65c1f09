"""Databases for the operator-command tests, written through the real store functions.

`seed_v6` builds a daemon database: detections, deliveries (one failed and retried), a take,
a resolution, a mediation session with chat messages and a rationale, a handoff and its
dispatch, and the daemon's health record. The mediation engine's own writers do not exist
yet, so its session, message, rationale and summary rows are plain INSERTs of the spec's
columns. `seed_reference` builds a reference (v5) database from the spec's literal DDL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import apsw

from serbero.store.audit import insert_event
from serbero.store.connection import open_database
from serbero.store.disputes import (
    DisputeEvent,
    record_assignment,
    record_detected,
    record_resolution,
)
from serbero.store.escalation import RecipientOutcome, pending_handoffs_page, record_dispatch
from serbero.store.health import (
    KEY_HEARTBEAT_AT,
    KEY_LAST_DISPUTE_EVENT_AT,
    KEY_LAST_DISPUTE_EVENT_ID,
    KEY_STARTED_AT,
    RelayHealth,
    write_health,
)
from serbero.store.outbox import OutboxMessage, claim_due, complete
from serbero.store.rationale import RationaleOccurrence, store_rationale
from tests.store.reference_schema import build_reference

MOSTRO: Final = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
SOLVER_A: Final = "a1" * 32
SOLVER_B: Final = "b2" * 32
SOLVERS: Final = (SOLVER_A, SOLVER_B)
T0: Final = 1_700_000_000

# Things `show` must never print.
BUYER_KEY: Final = "bb" * 32
SELLER_KEY: Final = "cc" * 32
RATIONALE_TEXT: Final = "The seller's bank statement looks forged; rationale-secret-words"
MESSAGE_TEXT: Final = "my trade pubkey is private, chat-content-secret"
SUMMARY_TEXT: Final = "summary-text-never-shown"
NEXT_STEP_TEXT: Final = "next-step-text-never-shown"
RATIONALE_ID: Final = "7e" * 32
VERDICT_RATIONALE_TEXT: Final = "Dispute-scoped verdict rationale, verdict-secret-words"
SESSION_ID: Final = "sess-1"

# Dispute ids by what happened to them.
MEDIATED: Final = "d-mediated"
NOTIFIED: Final = "d-notified"
FRESH: Final = "d-fresh"
RESOLVED: Final = "d-resolved"


def dispute_event(dispute_id: str, status: str, ts: int) -> DisputeEvent:
    return DisputeEvent(
        dispute_id=dispute_id,
        event_id=f"ev-{dispute_id}-{status}",
        mostro_pubkey=MOSTRO,
        event_timestamp=ts,
        status=status,
        initiator_role="buyer" if status == "initiated" else "unknown",
    )


def _messages(kind: str) -> tuple[OutboxMessage, ...]:
    return tuple(
        OutboxMessage(solver_pubkey=s, body=f"{kind} DM body for {s[:4]}") for s in SOLVERS
    )


def _deliver(conn: apsw.Connection, now: int, *, fail_first: bool = False) -> None:
    """Claim every due row and complete it sent (the first one failed for retry, if asked)."""
    claim = claim_due(conn, now, 100)
    for index, row in enumerate(claim.rows):
        failed = fail_first and index == 0
        complete(
            conn,
            row.id,
            ok=not failed,
            error="no relay accepted: rate-limited" if failed else None,
            retry=failed,
            now=now,
        )


def _mediation(conn: apsw.Connection, now: int) -> None:
    """A session on MEDIATED with two chat messages, a rationale, a summary and events."""
    with conn:
        conn.execute(
            "INSERT INTO mediation_sessions (session_id, dispute_id, state, round_count,"
            " prompt_bundle_id, policy_hash, buyer_shared_pubkey, seller_shared_pubkey,"
            " started_at, last_transition_at, current_classification, current_confidence)"
            " VALUES (?, ?, 'classified', 1, 'phase3-default', 'ph', ?, ?, ?, ?,"
            " 'coordination_failure', 0.8)",
            (SESSION_ID, MEDIATED, BUYER_KEY, SELLER_KEY, now, now + 30),
        )
        for index, (party, key) in enumerate((("buyer", BUYER_KEY), ("seller", SELLER_KEY))):
            conn.execute(
                "INSERT INTO mediation_messages (session_id, direction, party, shared_pubkey,"
                " inner_event_id, inner_event_created_at, outer_event_id, content,"
                " persisted_at) VALUES (?, 'inbound', ?, ?, ?, ?, ?, ?, ?)",
                (
                    SESSION_ID,
                    party,
                    key,
                    f"inner-{index}",
                    now + 10,
                    f"outer-{index}",
                    f"{MESSAGE_TEXT} {party}",
                    now + 11,
                ),
            )
        conn.execute(
            "INSERT INTO reasoning_rationales (rationale_id, session_id, provider, model,"
            " prompt_bundle_id, policy_hash, rationale_text, generated_at)"
            " VALUES (?, ?, 'openai', 'gpt-test', 'phase3-default', 'ph', ?, ?)",
            (RATIONALE_ID, SESSION_ID, RATIONALE_TEXT, now + 20),
        )
        conn.execute(
            "INSERT INTO mediation_events (session_id, kind, payload_json, rationale_id,"
            " prompt_bundle_id, policy_hash, occurred_at)"
            " VALUES (?, 'classification_produced', ?, ?, 'phase3-default', 'ph', ?)",
            (
                SESSION_ID,
                '{"classification":"coordination_failure","confidence":0.8,'
                f'"rationale_id":"{RATIONALE_ID}","buyer_trade_pubkey":"{BUYER_KEY}",'
                f'"note":"quoting {SELLER_KEY} and {RATIONALE_TEXT}"}}',
                RATIONALE_ID,
                now + 20,
            ),
        )
        conn.execute(
            "INSERT INTO mediation_summaries (session_id, dispute_id, classification,"
            " confidence, suggested_next_step, summary_text, prompt_bundle_id, policy_hash,"
            " rationale_id, generated_at) VALUES (?, ?, 'coordination_failure', 0.8, ?, ?,"
            " 'phase3-default', 'ph', ?, ?)",
            (SESSION_ID, MEDIATED, NEXT_STEP_TEXT, SUMMARY_TEXT, RATIONALE_ID, now + 25),
        )
        store_rationale(
            conn,
            RationaleOccurrence(
                text=VERDICT_RATIONALE_TEXT,
                purpose="classification",
                dispute_id=MEDIATED,
                session_id=None,
                provider="openai",
                model="gpt-test",
                prompt_bundle_id="phase3-default",
                policy_hash="ph",
            ),
            now - 6,
        )
        insert_event(
            conn,
            session_id=None,
            kind="reasoning_verdict",
            payload={"dispute_id": MEDIATED, "outcome": "mediate"},
            prompt_bundle_id="phase3-default",
            policy_hash="ph",
            occurred_at=now - 5,
        )
        insert_event(
            conn,
            session_id=SESSION_ID,
            kind="handoff_prepared",
            payload={
                "dispute_id": MEDIATED,
                "session_id": SESSION_ID,
                "trigger": "round_limit",
                "evidence_refs": ["inner-0"],
                "prompt_bundle_id": "phase3-default",
                "policy_hash": "ph",
                "rationale_refs": [RATIONALE_ID],
                "assembled_at": now + 40,
            },
            prompt_bundle_id="phase3-default",
            policy_hash="ph",
            occurred_at=now + 40,
        )
        insert_event(
            conn,
            session_id=None,
            kind="handoff_prepared",
            payload={"dispute_id": NOTIFIED, "trigger": "fraud_indicator"},
            prompt_bundle_id="phase3-default",
            policy_hash="ph",
            occurred_at=now + 41,
        )


def seed_v6(path: Path, now: int = T0) -> None:
    """A daemon database (schema v6) with four disputes in different states; see the module doc.

    Times: MEDIATED, NOTIFIED, FRESH detected at `now`, `now+100`, `now+200`; RESOLVED at
    `now+300` and resolved at `now+400`. FRESH stays `new` with both initial DMs pending, one
    in flight. The health record is flushed at `now+500`.
    """
    conn, _ = open_database(str(path))
    try:
        record_detected(conn, dispute_event(MEDIATED, "initiated", now - 10), _messages("i"), now)
        _deliver(conn, now + 1)
        record_assignment(
            conn, dispute_event(MEDIATED, "in-progress", now + 2), SOLVER_A, _messages("a"), now + 2
        )
        _deliver(conn, now + 3)
        _mediation(conn, now + 5)
        handoff = pending_handoffs_page(conn)[0]
        record_dispatch(
            conn,
            dispatch_id="dispatch-1",
            handoff=handoff,
            dispute_id=MEDIATED,
            outcomes=(RecipientOutcome(solver_pubkey=SOLVER_A, ok=True),),
            via_fallback=False,
            dispatched_at=now + 50,
        )
        record_detected(
            conn, dispute_event(NOTIFIED, "initiated", now + 90), _messages("i"), now + 100
        )
        _deliver(conn, now + 101, fail_first=True)
        record_detected(
            conn, dispute_event(RESOLVED, "initiated", now + 290), _messages("i"), now + 300
        )
        _deliver(conn, now + 301)
        record_resolution(conn, dispute_event(RESOLVED, "settled", now + 390), (), now + 400)
        # FRESH: two initial DMs owed, one of them in flight.
        record_detected(
            conn, dispute_event(FRESH, "initiated", now + 190), _messages("i"), now + 200
        )
        claim_due(conn, now + 410, 1)
        write_health(
            conn,
            relays=[
                RelayHealth("wss://relay.one", "connected", now + 10, now + 390),
                RelayHealth("wss://relay.two", "backoff", now + 450),
            ],
            values={
                KEY_HEARTBEAT_AT: str(now + 500),
                KEY_STARTED_AT: str(now),
                KEY_LAST_DISPUTE_EVENT_AT: str(now + 390),
                KEY_LAST_DISPUTE_EVENT_ID: f"ev-{RESOLVED}-settled",
            },
            now=now + 500,
            prune_relays=True,
        )
    finally:
        conn.close()


def seed_reference(path: Path, now: int = T0) -> None:
    """A reference serbero 0.1.1 database (v5) with two disputes and its own audit rows."""
    conn = apsw.Connection(str(path))
    try:
        build_reference(conn, 5)
        with conn:
            for index, (dispute_id, state) in enumerate(((NOTIFIED, "notified"), (FRESH, "new"))):
                at = now + 100 * index
                conn.execute(
                    "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
                    " dispute_status, event_timestamp, detected_at, lifecycle_state,"
                    " last_notified_at, last_state_change) VALUES (?, ?, ?, 'seller',"
                    " 'initiated', ?, ?, ?, ?, ?)",
                    (dispute_id, f"ev-{dispute_id}", MOSTRO, at - 5, at, state, at, at),
                )
            conn.execute(
                "INSERT INTO notifications (dispute_id, solver_pubkey, sent_at, status,"
                " notif_type) VALUES (?, ?, ?, 'sent', 'initial')",
                (NOTIFIED, SOLVER_A, now + 1),
            )
            conn.execute(
                "INSERT INTO dispute_state_transitions (dispute_id, from_state, to_state,"
                " transitioned_at, trigger) VALUES (?, 'new', 'notified', ?,"
                " 'initial_notification')",
                (NOTIFIED, now + 1),
            )
            conn.execute(
                "INSERT INTO mediation_events (session_id, kind, payload_json, occurred_at)"
                " VALUES (NULL, 'handoff_prepared', ?, ?)",
                (f'{{"dispute_id":"{NOTIFIED}","trigger":"fraud_indicator"}}', now + 2),
            )
    finally:
        conn.close()
