"""What a reasoning call leaves in the store: its rationale, and the record of a failed call
(MED-170..172, MED-43, Q-16).

A rationale is the model's explanation of a verdict, kept for auditors. Its text lives only
in `reasoning_rationales`, addressed by its SHA-256 (MED-170); everything else (events,
handoffs, logs, DMs, `serbero show`) names it by that id. The reference keeps one row per
text and refuses a second use of the same text from another session, model or bundle with a
"provenance conflict", which blocks an open forever when two verdicts happen to share a
rationale (an empty one, say). We keep the content-addressed row, written by the first
occurrence as the reference would, and add one `serbero_rationale_occurrences` row per use
with its own provenance, so a repeat is recorded instead of refused (Q-16).

A failed call is recorded by its error category only (MED-188): the provider's message can
quote the model's output or a proxy's page, and never goes into the audit trail.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

import apsw
import msgspec

from serbero.reasoning.errors import ErrorCategory
from serbero.store.audit import insert_event
from serbero.store.transaction import transaction

__all__ = [
    "REASONING_CALL_FAILED",
    "FailedCall",
    "Purpose",
    "RationaleOccurrence",
    "StoredRationale",
    "rationale_id",
    "record_reasoning_call_failed",
    "store_rationale",
]

REASONING_CALL_FAILED: Final = "reasoning_call_failed"

Purpose = Literal["classification", "summary"]


def rationale_id(text: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 text (MED-170)."""
    return hashlib.sha256(text.encode()).hexdigest()


class RationaleOccurrence(msgspec.Struct, frozen=True, kw_only=True):
    """One rationale as one call produced it: the text and where it came from.

    `session_id` is None for the open verdict, which comes before any session (MED-43);
    `dispute_id` always names the dispute, so a dispute-scoped rationale is still found.
    """

    text: str
    purpose: Purpose
    dispute_id: str
    session_id: str | None
    provider: str
    model: str
    prompt_bundle_id: str
    policy_hash: str


class StoredRationale(msgspec.Struct, frozen=True, kw_only=True):
    """The id to reference, this occurrence's row, and whether the text was new."""

    rationale_id: str
    occurrence_id: int
    first_occurrence: bool


def store_rationale(
    conn: apsw.Connection, occurrence: RationaleOccurrence, now: int
) -> StoredRationale:
    """Insert the text if unseen (first provenance kept) and always its occurrence row,
    both generated at `now`."""
    rid = rationale_id(occurrence.text)
    with transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO reasoning_rationales (rationale_id, session_id, provider,"
            " model, prompt_bundle_id, policy_hash, rationale_text, generated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rid,
                occurrence.session_id,
                occurrence.provider,
                occurrence.model,
                occurrence.prompt_bundle_id,
                occurrence.policy_hash,
                occurrence.text,
                now,
            ),
        )
        first = conn.changes() == 1
        conn.execute(
            "INSERT INTO serbero_rationale_occurrences (rationale_id, purpose, dispute_id,"
            " session_id, provider, model, prompt_bundle_id, policy_hash, generated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rid,
                occurrence.purpose,
                occurrence.dispute_id,
                occurrence.session_id,
                occurrence.provider,
                occurrence.model,
                occurrence.prompt_bundle_id,
                occurrence.policy_hash,
                now,
            ),
        )
        occurrence_id = int(conn.last_insert_rowid())
    return StoredRationale(rationale_id=rid, occurrence_id=occurrence_id, first_occurrence=first)


class FailedCall(msgspec.Struct, frozen=True, kw_only=True):
    """A provider call that gave no usable answer, as the audit trail keeps it (MED-43)."""

    dispute_id: str
    provider: str
    model: str
    attempt_count: int
    error_category: ErrorCategory
    prompt_bundle_id: str
    policy_hash: str


def record_reasoning_call_failed(conn: apsw.Connection, failed: FailedCall, now: int) -> int:
    """The dispute-scoped `reasoning_call_failed` event (MED-43); returns its id."""
    with transaction(conn):
        return insert_event(
            conn,
            session_id=None,
            kind=REASONING_CALL_FAILED,
            payload={
                "dispute_id": failed.dispute_id,
                "provider": failed.provider,
                "model": failed.model,
                "attempt_count": failed.attempt_count,
                "error_category": failed.error_category,
            },
            prompt_bundle_id=failed.prompt_bundle_id,
            policy_hash=failed.policy_hash,
            occurred_at=now,
        )
