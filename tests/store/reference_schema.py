"""The reference schema v1..v5, transcribed once from the reference's migrations as literal DDL.

This is the yardstick for `serbero.store.schema`: tests build a database from these
statements and compare its structure with ours. It is deliberately written out again (not
imported from the code under test), following the spec's wording: physical column order,
v2/v4 columns appended with ALTER TABLE, FKs as table-level clauses after the columns.
"""

from __future__ import annotations

import apsw

SCHEMA_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY);"

# v1: disputes, notifications
V1 = """
CREATE TABLE disputes (
  dispute_id TEXT PRIMARY KEY,
  event_id TEXT NOT NULL UNIQUE,
  mostro_pubkey TEXT NOT NULL,
  initiator_role TEXT NOT NULL,
  dispute_status TEXT NOT NULL DEFAULT 'initiated',
  event_timestamp INTEGER NOT NULL,
  detected_at INTEGER NOT NULL
);
CREATE TABLE notifications (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dispute_id TEXT NOT NULL,
  solver_pubkey TEXT NOT NULL,
  sent_at INTEGER NOT NULL,
  status TEXT NOT NULL,
  error_message TEXT,
  notif_type TEXT NOT NULL DEFAULT 'initial',
  FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id)
);
CREATE INDEX idx_notifications_dispute_id ON notifications (dispute_id);
"""

# v2: lifecycle
V2 = """
ALTER TABLE disputes ADD COLUMN lifecycle_state TEXT NOT NULL DEFAULT 'new';
ALTER TABLE disputes ADD COLUMN assigned_solver TEXT;
ALTER TABLE disputes ADD COLUMN last_notified_at INTEGER;
ALTER TABLE disputes ADD COLUMN last_state_change INTEGER;
CREATE TABLE dispute_state_transitions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dispute_id TEXT NOT NULL,
  from_state TEXT,
  to_state TEXT NOT NULL,
  transitioned_at INTEGER NOT NULL,
  trigger TEXT,
  FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id)
);
CREATE INDEX idx_state_transitions_dispute_id ON dispute_state_transitions (dispute_id);
CREATE INDEX idx_disputes_lifecycle_state ON disputes (lifecycle_state);
"""

# v3: mediation
V3 = """
CREATE TABLE mediation_sessions (
  session_id TEXT PRIMARY KEY,
  dispute_id TEXT NOT NULL,
  state TEXT NOT NULL,
  round_count INTEGER NOT NULL DEFAULT 0,
  prompt_bundle_id TEXT NOT NULL,
  policy_hash TEXT NOT NULL,
  instructions_version TEXT,
  assigned_solver TEXT,
  current_classification TEXT,
  current_confidence REAL,
  buyer_shared_pubkey TEXT,
  seller_shared_pubkey TEXT,
  buyer_last_seen_inner_ts INTEGER,
  seller_last_seen_inner_ts INTEGER,
  started_at INTEGER NOT NULL,
  last_transition_at INTEGER NOT NULL,
  FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id)
);
CREATE INDEX idx_mediation_sessions_dispute_id ON mediation_sessions (dispute_id);
CREATE INDEX idx_mediation_sessions_state ON mediation_sessions (state);
CREATE TABLE mediation_messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  session_id TEXT NOT NULL,
  direction TEXT NOT NULL,
  party TEXT NOT NULL,
  shared_pubkey TEXT NOT NULL,
  inner_event_id TEXT NOT NULL,
  inner_event_created_at INTEGER NOT NULL,
  outer_event_id TEXT,
  content TEXT NOT NULL,
  prompt_bundle_id TEXT,
  policy_hash TEXT,
  persisted_at INTEGER NOT NULL,
  stale INTEGER NOT NULL DEFAULT 0,
  FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id)
);
CREATE UNIQUE INDEX uq_mediation_messages_inner_event
  ON mediation_messages (session_id, inner_event_id);
CREATE INDEX idx_mediation_messages_session ON mediation_messages (session_id);
CREATE INDEX idx_mediation_messages_direction ON mediation_messages (direction);
CREATE TABLE reasoning_rationales (
  rationale_id TEXT PRIMARY KEY,
  session_id TEXT,
  provider TEXT NOT NULL,
  model TEXT NOT NULL,
  prompt_bundle_id TEXT NOT NULL,
  policy_hash TEXT NOT NULL,
  rationale_text TEXT NOT NULL,
  generated_at INTEGER NOT NULL,
  FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id)
);
CREATE INDEX idx_reasoning_rationales_session ON reasoning_rationales (session_id);
CREATE TABLE mediation_summaries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  session_id TEXT NOT NULL,
  dispute_id TEXT NOT NULL,
  classification TEXT NOT NULL,
  confidence REAL NOT NULL,
  suggested_next_step TEXT NOT NULL,
  summary_text TEXT NOT NULL,
  prompt_bundle_id TEXT NOT NULL,
  policy_hash TEXT NOT NULL,
  rationale_id TEXT,
  generated_at INTEGER NOT NULL,
  FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id),
  FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id),
  FOREIGN KEY (rationale_id) REFERENCES reasoning_rationales(rationale_id)
);
CREATE INDEX idx_mediation_summaries_session ON mediation_summaries (session_id);
CREATE TABLE mediation_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  session_id TEXT,
  kind TEXT NOT NULL,
  payload_json TEXT NOT NULL DEFAULT '{}',
  rationale_id TEXT,
  prompt_bundle_id TEXT,
  policy_hash TEXT,
  occurred_at INTEGER NOT NULL,
  FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id),
  FOREIGN KEY (rationale_id) REFERENCES reasoning_rationales(rationale_id)
);
CREATE INDEX idx_mediation_events_session_kind ON mediation_events (session_id, kind);
"""

# v4: follow-up counters
V4 = """
ALTER TABLE mediation_sessions ADD COLUMN round_count_last_evaluated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mediation_sessions ADD COLUMN consecutive_eval_failures INTEGER NOT NULL DEFAULT 0;
"""

# v5: escalation dispatches
V5 = """
CREATE TABLE escalation_dispatches (
  dispatch_id TEXT PRIMARY KEY,
  dispute_id TEXT NOT NULL,
  session_id TEXT,
  handoff_event_id INTEGER NOT NULL,
  target_solver TEXT NOT NULL,
  dispatched_at INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  status TEXT NOT NULL DEFAULT 'dispatched' CHECK (status IN ('dispatched', 'send_failed')),
  fallback_broadcast INTEGER NOT NULL DEFAULT 0,
  FOREIGN KEY (dispute_id) REFERENCES disputes(dispute_id),
  FOREIGN KEY (session_id) REFERENCES mediation_sessions(session_id),
  FOREIGN KEY (handoff_event_id) REFERENCES mediation_events(id)
);
CREATE INDEX idx_escalation_dispatches_dispute ON escalation_dispatches (dispute_id);
CREATE UNIQUE INDEX idx_escalation_dispatches_handoff ON escalation_dispatches (handoff_event_id);
"""

VERSIONS = {1: V1, 2: V2, 3: V3, 4: V4, 5: V5}


def build_reference(conn: apsw.Connection, upto: int) -> None:
    """Make `conn` a reference database at version `upto`, as 0.1.1 would have left it."""
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(SCHEMA_VERSION_TABLE)
    for version in range(1, upto + 1):
        with conn:
            conn.execute(VERSIONS[version])
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
