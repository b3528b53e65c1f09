"""The rationale store: content-addressed text, one occurrence row per use (MED-170/171,
Q-16), and failed calls recorded by category only (MED-43, MED-188). Real SQLite files."""

from __future__ import annotations

import json

import apsw
import msgspec
import pytest
from structlog.testing import capture_logs

from serbero.actors.tracker import open_tracker
from serbero.actors.tracker_requests import RecordReasoningCallFailed, StoreRationale
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from serbero.store.rationale import (
    FailedCall,
    RationaleOccurrence,
    StoredRationale,
    rationale_id,
    record_reasoning_call_failed,
    store_rationale,
)
from tests.store.helpers import T0, count, event, rows
from tests.support.clocks import FakeWallClock

HASH = "e208ac72a7e9e763ac19015546d716cc6301a582afd1ee5698d83245a78f3d1d"
OPEN_VERDICT = RationaleOccurrence(
    text="Both parties describe a late bank transfer.",
    purpose="classification",
    dispute_id="d-1",
    session_id=None,
    provider="openai",
    model="gpt-4o-mini",
    prompt_bundle_id="phase3-default",
    policy_hash=HASH,
)
UNREACHABLE = FailedCall(
    dispute_id="d-1",
    provider="openai",
    model="gpt-4o-mini",
    attempt_count=2,
    error_category="unreachable",
    prompt_bundle_id="phase3-default",
    policy_hash=HASH,
)


@pytest.fixture
def with_dispute(conn: apsw.Connection) -> apsw.Connection:
    record_detected(conn, event("d-1"), (), T0)
    record_detected(conn, event("d-2"), (), T0)
    conn.execute(
        "INSERT INTO mediation_sessions (session_id, dispute_id, state, prompt_bundle_id,"
        " policy_hash, started_at, last_transition_at)"
        " VALUES ('s-1', 'd-1', 'awaiting_response', 'phase3-default', ?, ?, ?)",
        (HASH, T0, T0),
    )
    return conn


def test_rationale_id_is_the_sha256_of_the_utf8_text() -> None:
    assert rationale_id("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert rationale_id("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_first_occurrence_writes_the_text_and_its_provenance(with_dispute: apsw.Connection) -> None:
    stored = store_rationale(with_dispute, OPEN_VERDICT, T0)
    rid = rationale_id(OPEN_VERDICT.text)
    assert stored == StoredRationale(rationale_id=rid, occurrence_id=1, first_occurrence=True)
    assert rows(with_dispute, "SELECT * FROM reasoning_rationales") == [
        (rid, None, "openai", "gpt-4o-mini", "phase3-default", HASH, OPEN_VERDICT.text, T0)
    ]
    assert rows(with_dispute, "SELECT * FROM serbero_rationale_occurrences") == [
        (1, rid, "classification", "d-1", None, "openai", "gpt-4o-mini", "phase3-default",
         HASH, T0)
    ]  # fmt: skip


def test_the_same_text_with_other_provenance_is_a_second_occurrence_not_a_conflict(
    with_dispute: apsw.Connection,
) -> None:
    """Q-16: the reference refuses this with a provenance conflict and blocks the open."""
    store_rationale(with_dispute, OPEN_VERDICT, T0)
    later = msgspec.structs.replace(
        OPEN_VERDICT,
        purpose="summary",
        session_id="s-1",
        provider="anthropic",
        model="claude",
        policy_hash="0" * 64,
    )
    other_dispute = msgspec.structs.replace(OPEN_VERDICT, dispute_id="d-2")
    second = store_rationale(with_dispute, later, T0 + 60)
    third = store_rationale(with_dispute, other_dispute, T0 + 90)
    assert (second.occurrence_id, second.first_occurrence) == (2, False)
    assert (third.occurrence_id, third.first_occurrence) == (3, False)
    assert second.rationale_id == third.rationale_id == rationale_id(OPEN_VERDICT.text)
    # The content-addressed row keeps the first provenance, as the reference would.
    first = "SELECT session_id, provider, generated_at FROM reasoning_rationales"
    assert rows(with_dispute, first) == [(None, "openai", T0)]
    assert rows(
        with_dispute,
        "SELECT purpose, dispute_id, session_id, provider, model, policy_hash, generated_at"
        " FROM serbero_rationale_occurrences ORDER BY id",
    ) == [
        ("classification", "d-1", None, "openai", "gpt-4o-mini", HASH, T0),
        ("summary", "d-1", "s-1", "anthropic", "claude", "0" * 64, T0 + 60),
        ("classification", "d-2", None, "openai", "gpt-4o-mini", HASH, T0 + 90),
    ]


def test_an_empty_rationale_is_stored_like_any_other(with_dispute: apsw.Connection) -> None:
    empty = msgspec.structs.replace(OPEN_VERDICT, text="")
    assert store_rationale(with_dispute, empty, T0).first_occurrence
    assert not store_rationale(with_dispute, empty, T0).first_occurrence
    assert count(with_dispute, "reasoning_rationales") == 1
    assert count(with_dispute, "serbero_rationale_occurrences") == 2


def test_an_unknown_dispute_writes_nothing(with_dispute: apsw.Connection) -> None:
    stray = msgspec.structs.replace(OPEN_VERDICT, dispute_id="nobody", text="new text")
    with pytest.raises(apsw.ConstraintError):
        store_rationale(with_dispute, stray, T0)
    assert count(with_dispute, "reasoning_rationales") == 0
    assert count(with_dispute, "serbero_rationale_occurrences") == 0


def test_the_store_survives_a_reopen(db_path: str) -> None:
    conn, _ = open_database(db_path)
    record_detected(conn, event("d-1"), (), T0)
    store_rationale(conn, OPEN_VERDICT, T0)
    conn.close()
    conn, _ = open_database(db_path)
    try:
        assert not store_rationale(conn, OPEN_VERDICT, T0).first_occurrence
        assert count(conn, "serbero_rationale_occurrences") == 2
    finally:
        conn.close()


def test_a_failed_call_is_recorded_by_category_only(with_dispute: apsw.Connection) -> None:
    event_id = record_reasoning_call_failed(with_dispute, UNREACHABLE, T0 + 5)
    ((session, kind, payload, rationale, bundle, policy, at),) = rows(
        with_dispute,
        "SELECT session_id, kind, payload_json, rationale_id, prompt_bundle_id, policy_hash,"
        " occurred_at FROM mediation_events WHERE id = ?",
        (event_id,),
    )
    assert (session, kind, rationale, bundle, policy, at) == (
        None,
        "reasoning_call_failed",
        None,
        "phase3-default",
        HASH,
        T0 + 5,
    )
    assert payload == (
        '{"attempt_count":2,"dispute_id":"d-1","error_category":"unreachable",'
        '"model":"gpt-4o-mini","provider":"openai"}'
    )
    assert set(json.loads(payload)) == {
        "dispute_id",
        "provider",
        "model",
        "attempt_count",
        "error_category",
    }


async def test_written_through_the_tracker_and_never_logged(db_path: str) -> None:
    """The engine writes through the tracker (one request, one transaction); neither the
    rationale text nor a provider's error message reaches a log record."""
    conn, _ = open_database(db_path)
    record_detected(conn, event("d-1"), (), T0)
    conn.close()
    failed = msgspec.structs.replace(UNREACHABLE, error_category="malformed_response")
    with capture_logs() as logs:
        async with open_tracker(db_path, wall_clock=FakeWallClock(T0 + 7)) as tracker:
            first = await tracker.ask(StoreRationale(OPEN_VERDICT))
            again = await tracker.ask(StoreRationale(OPEN_VERDICT))
            event_id = await tracker.ask(RecordReasoningCallFailed(failed))
    assert (first.first_occurrence, again.first_occurrence) == (True, False)
    assert again.rationale_id == rationale_id(OPEN_VERDICT.text)
    conn, _ = open_database(db_path)
    try:
        generated = "SELECT generated_at FROM serbero_rationale_occurrences ORDER BY id"
        assert rows(conn, generated) == [(T0 + 7,), (T0 + 7,)]
        kind = "SELECT kind, occurred_at FROM mediation_events WHERE id = ?"
        assert rows(conn, kind, (event_id,)) == [("reasoning_call_failed", T0 + 7)]
    finally:
        conn.close()
    assert OPEN_VERDICT.text not in repr(logs)
