"""`mediation_events` rows: the append-only audit log shared by mediation and escalation.

Payloads are compact JSON with keys sorted, as the reference emits them (ESC-31, MED-3);
readers use `json_extract` and never rely on key order.
"""

from __future__ import annotations

from collections.abc import Mapping

import apsw
import msgspec


def payload_field(name: str, table: str | None = None) -> str:
    """SQL for one `payload_json` key of a row (of `table`, when the query aliases it).

    Other programs write these rows too, so a payload that is not JSON reads as NULL rather
    than failing the whole query.
    """
    column = "payload_json" if table is None else f"{table}.payload_json"
    return f"CASE WHEN json_valid({column}) THEN json_extract({column}, '$.{name}') END"


def encode_payload(payload: Mapping[str, object]) -> str:
    """Compact JSON, keys in lexicographic order, non-ASCII kept raw."""
    return msgspec.json.encode(payload, order="sorted").decode()


def insert_event(
    conn: apsw.Connection,
    *,
    session_id: str | None,
    kind: str,
    payload: Mapping[str, object] | msgspec.Struct,
    prompt_bundle_id: str | None,
    policy_hash: str | None,
    occurred_at: int,
    rationale_id: str | None = None,
) -> int:
    """Append one audit event and return its id; caller owns the tx.

    A mapping payload is written with sorted keys; a struct payload keeps its declared field
    order, for the one payload whose order is fixed (`handoff_prepared`, MED-123).
    """
    encoded = (
        msgspec.json.encode(payload).decode()
        if isinstance(payload, msgspec.Struct)
        else encode_payload(payload)
    )
    conn.execute(
        "INSERT INTO mediation_events"
        " (session_id, kind, payload_json, rationale_id, prompt_bundle_id, policy_hash,"
        " occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (session_id, kind, encoded, rationale_id, prompt_bundle_id, policy_hash, occurred_at),
    )
    return int(conn.last_insert_rowid())
