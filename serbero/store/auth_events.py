"""The solver-authorization audit rows: daemon-scoped `auth_retry_*` events (MED-52..54)."""

from __future__ import annotations

from typing import Literal

import apsw

from serbero.store.audit import insert_event
from serbero.store.transaction import transaction

AuthEventKind = Literal["auth_retry_attempt", "auth_retry_recovered", "auth_retry_terminated"]


def record_auth_event(
    conn: apsw.Connection, kind: AuthEventKind, payload: dict[str, object], now: int
) -> int:
    """One `auth_retry_*` row: no session, no dispute, no bundle (§19)."""
    with transaction(conn):
        return insert_event(
            conn,
            session_id=None,
            kind=kind,
            payload=payload,
            prompt_bundle_id=None,
            policy_hash=None,
            occurred_at=now,
        )
