"""The database schema: the reference's versions 1-5 verbatim, then our additive versions 6-8.

Versions 1-5 are the Rust serbero 0.1.1 schema exactly as the reference creates it (table and
column names, declared types, NOT NULL, defaults, keys, index names, the CHECK), so an
existing reference `serbero.db` opens unchanged and the operators' `sqlite3` recipes keep
their shapes. Columns that a version adds to an existing table are appended with
`ALTER TABLE ... ADD COLUMN` only when missing, as the reference does.

Version 6 is ours and only adds (BEY-2, BEY-3, BEY-10, BEY-22):

`notification_outbox`
    One row per solver DM that was *decided* but maybe not yet delivered, written in the
    same transaction as its cause (the new dispute, the take, the resolution, the cycle that
    found a dispute unattended, a handoff). The sender works from it, so a crash between
    decision and send is finished after restart.

    - `id`: decision order; rows for one (`dispute_id`, `solver_pubkey`) pair are handed
      out strictly in this order, one at a time.
    - `dispute_id` (FK `disputes`), `solver_pubkey` (lowercase hex, BEY-12; as written when
      it does not parse), `notif_type` (the `notifications.notif_type` the attempt will
      record), `body` (the DM text).
    - `cause`: what decided it: the dispute event id, `renotification`, `handoff:<id>`...
    - `created_at`: when it was decided. `attempts`: times handed to a sender.
      `next_attempt_at`: not handed out before this (retry backoff).
    - `state`: `pending` (owed), `sent` (a relay accepted it), `failed` (given up for
      good, e.g. an unparsable key), `abandoned` (its purpose is gone, e.g. an initial
      notice for a dispute that was taken meanwhile). `finished_at`: when it left
      `pending`. `last_error`: the latest failure text.
    - `handoff_event_id` (FK `mediation_events(id)`): the handoff an escalation DM is about.
    - `claimed_at`: set while a sender holds the row (in flight); cleared by completion,
      by the start-up requeue, or ignored once older than the claim lease.

`serbero_relay_health`
    The daemon's last word on each relay for `serbero status`: `url`, `state` (free text
    from the relay actor, e.g. `connected`), `last_change_at`, `last_event_at`.

`serbero_daemon_health`
    Key/value facts for `serbero status` (`heartbeat_at`, `last_dispute_event_at`, ...),
    each with `updated_at`; also `wrap_salt`, drawn once per database, from which (with
    the secret key) DMs' gift wraps are derived (BEY-26).

Indexes (prefixed `serbero_` so they are never mistaken for the reference's):
`serbero_idx_outbox_pending` and `serbero_idx_outbox_pair` (partial, pending rows only: the
due scan in id order and the per-pair ordering probe), `serbero_idx_outbox_handoff`,
`serbero_idx_disputes_unattended` (the CORE-52 timer query as an index range) and
`serbero_idx_mediation_events_kind` (the ESC-12 handoff scan without a table scan).

Version 7 is ours and only adds (Q-16):

`serbero_rationale_occurrences`
    One row per use of a rationale, with that use's provenance, where the reference's
    content-addressed `reasoning_rationales` keeps only the first (and refuses a repeat
    with different provenance). `rationale_id` (FK `reasoning_rationales`), `purpose`
    (`classification` or `summary`), `dispute_id` (FK `disputes`), `session_id` (NULL for
    the verdict before a session exists), `provider`, `model`, `prompt_bundle_id`,
    `policy_hash`, `generated_at`. Indexed by rationale and by dispute.

Version 8 is ours and only adds (BEY-16, Q-4):

`serbero_session_trade_keys`
    The parties' trade pubkeys (public data) learnt from the take, one row per session
    (`session_id`, `buyer_trade_pubkey`, `seller_trade_pubkey`), so a restart re-derives the
    chat keys; a session opened before (or by the reference) has none. A table of its own
    rather than columns, so the reference's tables stay exactly as the reference made them.

`serbero_outbound_wraps`
    The exact chat wrap of each outbound `mediation_messages` row (`message_id`, `wrap_json`),
    stored in the transaction that writes the row, so a row whose publish never got an
    `outbound_sent` is republished after a crash as the same event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import apsw

REFERENCE_SCHEMA_VERSION: Final = 5
SCHEMA_VERSION: Final = 9

SCHEMA_VERSION_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"
)

V1_DDL: Final = """
CREATE TABLE IF NOT EXISTS disputes (
    dispute_id       TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    mostro_pubkey    TEXT NOT NULL,
    initiator_role   TEXT NOT NULL,
    dispute_status   TEXT NOT NULL DEFAULT 'initiated',
    event_timestamp  INTEGER NOT NULL,
    detected_at      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    dispute_id     TEXT NOT NULL,
    solver_pubkey  TEXT NOT NULL,
    sent_at        INTEGER NOT NULL,
    status         TEXT NOT NULL,
    error_message  TEXT,
    notif_type     TEXT NOT NULL DEFAULT 'initial',
    FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id)
);
CREATE INDEX IF NOT EXISTS idx_notifications_dispute_id ON notifications(dispute_id);
"""

V2_DISPUTE_COLUMNS: Final = (
    ("lifecycle_state", "TEXT NOT NULL DEFAULT 'new'"),
    ("assigned_solver", "TEXT"),
    ("last_notified_at", "INTEGER"),
    ("last_state_change", "INTEGER"),
)

V2_DDL: Final = """
CREATE TABLE IF NOT EXISTS dispute_state_transitions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    dispute_id       TEXT NOT NULL,
    from_state       TEXT,
    to_state         TEXT NOT NULL,
    transitioned_at  INTEGER NOT NULL,
    trigger          TEXT,
    FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id)
);
CREATE INDEX IF NOT EXISTS idx_state_transitions_dispute_id
    ON dispute_state_transitions(dispute_id);
CREATE INDEX IF NOT EXISTS idx_disputes_lifecycle_state ON disputes(lifecycle_state);
"""

V3_DDL: Final = """
CREATE TABLE IF NOT EXISTS mediation_sessions (
    session_id                 TEXT PRIMARY KEY,
    dispute_id                 TEXT NOT NULL,
    state                      TEXT NOT NULL,
    round_count                INTEGER NOT NULL DEFAULT 0,
    prompt_bundle_id           TEXT NOT NULL,
    policy_hash                TEXT NOT NULL,
    instructions_version       TEXT,
    assigned_solver            TEXT,
    current_classification     TEXT,
    current_confidence         REAL,
    buyer_shared_pubkey        TEXT,
    seller_shared_pubkey       TEXT,
    buyer_last_seen_inner_ts   INTEGER,
    seller_last_seen_inner_ts  INTEGER,
    started_at                 INTEGER NOT NULL,
    last_transition_at         INTEGER NOT NULL,
    FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id)
);
CREATE INDEX IF NOT EXISTS idx_mediation_sessions_dispute_id ON mediation_sessions(dispute_id);
CREATE INDEX IF NOT EXISTS idx_mediation_sessions_state ON mediation_sessions(state);

CREATE TABLE IF NOT EXISTS mediation_messages (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id              TEXT NOT NULL,
    direction               TEXT NOT NULL,
    party                   TEXT NOT NULL,
    shared_pubkey           TEXT NOT NULL,
    inner_event_id          TEXT NOT NULL,
    inner_event_created_at  INTEGER NOT NULL,
    outer_event_id          TEXT,
    content                 TEXT NOT NULL,
    prompt_bundle_id        TEXT,
    policy_hash             TEXT,
    persisted_at            INTEGER NOT NULL,
    stale                   INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_mediation_messages_inner_event
    ON mediation_messages(session_id, inner_event_id);
CREATE INDEX IF NOT EXISTS idx_mediation_messages_session ON mediation_messages(session_id);
CREATE INDEX IF NOT EXISTS idx_mediation_messages_direction ON mediation_messages(direction);

CREATE TABLE IF NOT EXISTS reasoning_rationales (
    rationale_id      TEXT PRIMARY KEY,
    session_id        TEXT,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_bundle_id  TEXT NOT NULL,
    policy_hash       TEXT NOT NULL,
    rationale_text    TEXT NOT NULL,
    generated_at      INTEGER NOT NULL,
    FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id)
);
CREATE INDEX IF NOT EXISTS idx_reasoning_rationales_session ON reasoning_rationales(session_id);

CREATE TABLE IF NOT EXISTS mediation_summaries (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id           TEXT NOT NULL,
    dispute_id           TEXT NOT NULL,
    classification       TEXT NOT NULL,
    confidence           REAL NOT NULL,
    suggested_next_step  TEXT NOT NULL,
    summary_text         TEXT NOT NULL,
    prompt_bundle_id     TEXT NOT NULL,
    policy_hash          TEXT NOT NULL,
    rationale_id         TEXT,
    generated_at         INTEGER NOT NULL,
    FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id),
    FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id),
    FOREIGN KEY (rationale_id) REFERENCES reasoning_rationales(rationale_id)
);
CREATE INDEX IF NOT EXISTS idx_mediation_summaries_session ON mediation_summaries(session_id);

CREATE TABLE IF NOT EXISTS mediation_events (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id        TEXT,
    kind              TEXT NOT NULL,
    payload_json      TEXT NOT NULL DEFAULT '{}',
    rationale_id      TEXT,
    prompt_bundle_id  TEXT,
    policy_hash       TEXT,
    occurred_at       INTEGER NOT NULL,
    FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id),
    FOREIGN KEY (rationale_id) REFERENCES reasoning_rationales(rationale_id)
);
CREATE INDEX IF NOT EXISTS idx_mediation_events_session_kind ON mediation_events(session_id, kind);
"""

V4_SESSION_COLUMNS: Final = (
    ("round_count_last_evaluated", "INTEGER NOT NULL DEFAULT 0"),
    ("consecutive_eval_failures", "INTEGER NOT NULL DEFAULT 0"),
)

V5_DDL: Final = """
CREATE TABLE IF NOT EXISTS escalation_dispatches (
    dispatch_id         TEXT PRIMARY KEY,
    dispute_id          TEXT NOT NULL,
    session_id          TEXT,
    handoff_event_id    INTEGER NOT NULL,
    target_solver       TEXT NOT NULL,
    dispatched_at       INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    status              TEXT NOT NULL DEFAULT 'dispatched'
                        CHECK (status IN ('dispatched', 'send_failed')),
    fallback_broadcast  INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id),
    FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id),
    FOREIGN KEY (handoff_event_id) REFERENCES mediation_events(id)
);
CREATE INDEX IF NOT EXISTS idx_escalation_dispatches_dispute ON escalation_dispatches(dispute_id);
CREATE UNIQUE INDEX IF NOT EXISTS idx_escalation_dispatches_handoff
    ON escalation_dispatches(handoff_event_id);
"""

V6_DDL: Final = """
CREATE TABLE IF NOT EXISTS notification_outbox (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    dispute_id        TEXT NOT NULL,
    solver_pubkey     TEXT NOT NULL,
    notif_type        TEXT NOT NULL,
    body              TEXT NOT NULL,
    cause             TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER NOT NULL,
    state             TEXT NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'sent', 'failed', 'abandoned')),
    last_error        TEXT,
    finished_at       INTEGER,
    handoff_event_id  INTEGER,
    claimed_at        INTEGER,
    FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id),
    FOREIGN KEY (handoff_event_id) REFERENCES mediation_events(id)
);
CREATE INDEX IF NOT EXISTS serbero_idx_outbox_pending
    ON notification_outbox(id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS serbero_idx_outbox_pair
    ON notification_outbox(dispute_id, solver_pubkey, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS serbero_idx_outbox_handoff
    ON notification_outbox(handoff_event_id) WHERE handoff_event_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS serbero_relay_health (
    url             TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    last_change_at  INTEGER NOT NULL,
    last_event_at   INTEGER
);

CREATE TABLE IF NOT EXISTS serbero_daemon_health (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS serbero_idx_disputes_unattended
    ON disputes(lifecycle_state, last_notified_at);
CREATE INDEX IF NOT EXISTS serbero_idx_mediation_events_kind ON mediation_events(kind, id);
"""

V7_DDL: Final = """
CREATE TABLE IF NOT EXISTS serbero_rationale_occurrences (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    rationale_id      TEXT NOT NULL,
    purpose           TEXT NOT NULL CHECK (purpose IN ('classification', 'summary')),
    dispute_id        TEXT NOT NULL,
    session_id        TEXT,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_bundle_id  TEXT NOT NULL,
    policy_hash       TEXT NOT NULL,
    generated_at      INTEGER NOT NULL,
    FOREIGN KEY (rationale_id) REFERENCES reasoning_rationales(rationale_id),
    FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id),
    FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id)
);
CREATE INDEX IF NOT EXISTS serbero_idx_rationale_occurrences_rationale
    ON serbero_rationale_occurrences(rationale_id);
CREATE INDEX IF NOT EXISTS serbero_idx_rationale_occurrences_dispute
    ON serbero_rationale_occurrences(dispute_id);
"""

V8_DDL: Final = """
CREATE TABLE IF NOT EXISTS serbero_session_trade_keys (
    session_id           TEXT PRIMARY KEY,
    buyer_trade_pubkey   TEXT NOT NULL,
    seller_trade_pubkey  TEXT NOT NULL,
    FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id)
);

CREATE TABLE IF NOT EXISTS serbero_outbound_wraps (
    message_id  INTEGER PRIMARY KEY,
    wrap_json   TEXT NOT NULL,
    FOREIGN KEY (message_id) REFERENCES mediation_messages(id)
);
"""

# The engine's tick lists over every stored session (MED-70). With ten thousand of them the
# dispute-scoped lookup (eligibility, MED-20) decoded every dispute-scoped event's JSON once
# per candidate dispute, and the unsent-outbound listing walked every outbound message
# ever sent; these let both seek instead. The expression is `payload_field('dispute_id')`
# exactly, or SQLite would not match it.
V9_DDL: Final = """
CREATE INDEX IF NOT EXISTS serbero_idx_mediation_events_dispute_scoped
    ON mediation_events(
        (CASE WHEN json_valid(payload_json) THEN json_extract(payload_json, '$.dispute_id') END)
    ) WHERE session_id IS NULL;
CREATE INDEX IF NOT EXISTS serbero_idx_mediation_messages_session_direction
    ON mediation_messages(session_id, direction);
"""


def _add_columns_if_missing(
    conn: apsw.Connection, table: str, columns: tuple[tuple[str, str], ...]
) -> None:
    """Append each column unless `PRAGMA table_info` already lists it (reference behaviour)."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, definition in columns:
        if name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")


def _apply_v1(conn: apsw.Connection) -> None:
    conn.execute(V1_DDL)


def _apply_v2(conn: apsw.Connection) -> None:
    _add_columns_if_missing(conn, "disputes", V2_DISPUTE_COLUMNS)
    conn.execute(V2_DDL)


def _apply_v3(conn: apsw.Connection) -> None:
    conn.execute(V3_DDL)


def _apply_v4(conn: apsw.Connection) -> None:
    _add_columns_if_missing(conn, "mediation_sessions", V4_SESSION_COLUMNS)


def _apply_v5(conn: apsw.Connection) -> None:
    conn.execute(V5_DDL)


def _apply_v6(conn: apsw.Connection) -> None:
    conn.execute(V6_DDL)


def _apply_v7(conn: apsw.Connection) -> None:
    conn.execute(V7_DDL)


def _apply_v8(conn: apsw.Connection) -> None:
    conn.execute(V8_DDL)


def _apply_v9(conn: apsw.Connection) -> None:
    conn.execute(V9_DDL)


MIGRATIONS: Final[tuple[tuple[int, Callable[[apsw.Connection], None]], ...]] = (
    (1, _apply_v1),
    (2, _apply_v2),
    (3, _apply_v3),
    (4, _apply_v4),
    (5, _apply_v5),
    (6, _apply_v6),
    (7, _apply_v7),
    (8, _apply_v8),
    (9, _apply_v9),
)
