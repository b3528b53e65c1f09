"""Small builders and probes shared by the store tests."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import apsw

from serbero.store.disputes import DisputeEvent
from serbero.store.outbox import OutboxMessage
from serbero.store.rationale import RationaleOccurrence
from serbero.store.sessions import NewSession, bind_rationale, open_session
from serbero.store.summaries import GeneratedSummary, SummaryJob

MOSTRO = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
SOLVERS = ("a" * 64, "b" * 64, "c" * 64)
T0 = 1_700_000_000
BUNDLE = "phase3-default"
HASH = "f" * 64
SUMMARY_RATIONALE = "both parties agree the payment was late"
# MED-50: a happy-path open's events, in id order.
MED50_EVENTS = [
    "start_attempt_started",
    "reasoning_verdict",
    "take_dispute_issued",
    "session_opened",
    "classification_produced",
    "outbound_sent",
    "outbound_sent",
]


def event(
    dispute_id: str = "d-1",
    status: str = "initiated",
    *,
    event_id: str | None = None,
    ts: int = T0,
    initiator: str = "buyer",
) -> DisputeEvent:
    """A kind-38386 event's facts; the event id defaults to one derived from id and status."""
    return DisputeEvent(
        dispute_id=dispute_id,
        event_id=event_id or f"ev-{dispute_id}-{status}",
        mostro_pubkey=MOSTRO,
        event_timestamp=ts,
        status=status,
        initiator_role=initiator,
    )


def new_session(
    dispute_id: str, bundle_id: str = "phase3-default", policy_hash: str = "f" * 64
) -> NewSession:
    """A session to open, with placeholder chat keys (the store does not check them)."""
    return NewSession(
        dispute_id=dispute_id,
        prompt_bundle_id=bundle_id,
        policy_hash=policy_hash,
        buyer_shared_pubkey="1" * 64,
        seller_shared_pubkey="2" * 64,
        buyer_trade_pubkey="3" * 64,
        seller_trade_pubkey="4" * 64,
    )


def open_classified(
    conn: apsw.Connection,
    session_id: str = "s-1",
    dispute_id: str = "d-1",
    *,
    bundle_id: str = BUNDLE,
    policy_hash: str = HASH,
    confidence: float = 0.85,
    now: int = T0,
) -> None:
    """A session of a recorded dispute, classified `coordination_failure_resolvable` at open
    (Q-2): due for its summary."""
    open_session(conn, session_id, new_session(dispute_id, bundle_id, policy_hash), now)
    bind_rationale(
        conn,
        session_id,
        classification="coordination_failure_resolvable",
        confidence=confidence,
        rationale_id=None,
        occurrence_id=None,
        bundle_id=bundle_id,
        policy_hash=policy_hash,
        now=now,
        classified=True,
    )


def generated_summary(job: SummaryJob, text: str = "The fiat arrived late.") -> GeneratedSummary:
    """The summary of `job` as it passed the guard, with `SUMMARY_RATIONALE`."""
    return GeneratedSummary(
        summary_text=text,
        suggested_next_step="Confirm receipt with the seller.",
        rationale=RationaleOccurrence(
            text=SUMMARY_RATIONALE,
            purpose="summary",
            dispute_id=job.dispute_id,
            session_id=job.session_id,
            provider="openai",
            model="gpt-4o-mini",
            prompt_bundle_id=job.prompt_bundle_id,
            policy_hash=job.policy_hash,
        ),
    )


def messages(kind: str, solvers: tuple[str, ...] = SOLVERS) -> tuple[OutboxMessage, ...]:
    return tuple(OutboxMessage(solver_pubkey=s, body=f"{kind} for {s[:4]}") for s in solvers)


def count(conn: apsw.Connection, table: str, where: str = "1", args: tuple[Any, ...] = ()) -> int:
    row = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", args).fetchone()
    assert row is not None
    return int(row[0])


def rows(conn: apsw.Connection, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, args)]


def one(conn: apsw.Connection, sql: str, args: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def normalise_sql(sql: str) -> str:
    """Whitespace-insensitive DDL text, so only tokens are compared."""
    text = re.sub(r"\s+", " ", sql).strip()
    text = re.sub(r"\s*([(),])\s*", r"\1", text)
    return text.replace("IF NOT EXISTS ", "")


def table_structure(conn: apsw.Connection, table: str) -> dict[str, Any]:
    """Everything SQLite reports about a table: columns, FKs, indexes and their columns."""
    indexes = {}
    for _seq, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({table})"):
        columns = [tuple(r) for r in conn.execute(f"PRAGMA index_xinfo({name})")]
        indexes[name] = (unique, origin, partial, columns)
    return {
        "columns": [tuple(r) for r in conn.execute(f"PRAGMA table_xinfo({table})")],
        "foreign_keys": [tuple(r) for r in conn.execute(f"PRAGMA foreign_key_list({table})")],
        "indexes": indexes,
    }


def master(conn: apsw.Connection) -> dict[str, tuple[str, str, str | None]]:
    """`sqlite_master` by name: (type, table, normalised sql)."""
    return {
        name: (kind, tbl, None if sql is None else normalise_sql(sql))
        for kind, name, tbl, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
        )
    }


def tables(conn: apsw.Connection) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]


def query_plans(conn: apsw.Connection, call: Callable[[apsw.Connection], object]) -> list[str]:
    """The EXPLAIN QUERY PLAN lines of every statement `call(conn)` runs, in order."""
    statements: list[tuple[str, Any]] = []

    def trace(_cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        statements.append((sql, bindings))
        return True

    conn.exec_trace = trace
    try:
        call(conn)
    finally:
        conn.exec_trace = None
    return [
        str(row[-1])
        for sql, bindings in statements
        for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", bindings)
    ]
