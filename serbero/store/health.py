"""The daemon's health record, read by `serbero status` from another process (BEY-10).

The daemon keeps relay states and its own facts in memory and flushes a snapshot now and
then in one transaction; writing per event would cost an fsync each with `synchronous=FULL`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import apsw
import msgspec

from serbero.store.transaction import transaction

KEY_HEARTBEAT_AT: Final = "heartbeat_at"
KEY_STARTED_AT: Final = "started_at"
KEY_LAST_DISPUTE_EVENT_ID: Final = "last_dispute_event_id"
KEY_LAST_DISPUTE_EVENT_AT: Final = "last_dispute_event_at"
# Written by a clean shutdown, cleared by the next start: `serbero status` says "stopped" at
# once instead of waiting for the heartbeat to go stale (which is what a crash looks like).
KEY_STOPPED_AT: Final = "stopped_at"
# `serbero_relay_health.state` values: the daemon writes them, `serbero status` reads them.
RELAY_CONNECTED: Final = "connected"
RELAY_DISCONNECTED: Final = "disconnected"


class RelayHealth(msgspec.Struct, frozen=True):
    """One relay as the daemon last saw it; `last_event_at` None until it delivered one."""

    url: str
    state: str
    last_change_at: int
    last_event_at: int | None = None


class HealthSnapshot(msgspec.Struct, frozen=True):
    """Everything the health tables hold: relays by URL, daemon facts by key."""

    relays: tuple[RelayHealth, ...]
    values: dict[str, str]


def write_health(
    conn: apsw.Connection,
    *,
    relays: Sequence[RelayHealth],
    values: Mapping[str, str],
    now: int,
    prune_relays: bool = False,
    clear: Sequence[str] = (),
) -> None:
    """Upsert relay rows and daemon facts in one transaction.

    A relay row keeps its previous `last_event_at` when the snapshot has none.
    `prune_relays` drops relays not in `relays` (at start-up, after a config change);
    `clear` deletes daemon facts that no longer hold (a previous run's `stopped_at`).
    """
    with transaction(conn):
        for relay in relays:
            conn.execute(
                "INSERT INTO serbero_relay_health (url, state, last_change_at, last_event_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(url) DO UPDATE SET state = excluded.state,"
                " last_change_at = excluded.last_change_at,"
                " last_event_at = COALESCE(excluded.last_event_at, last_event_at)",
                (relay.url, relay.state, relay.last_change_at, relay.last_event_at),
            )
        if prune_relays:
            keep = [relay.url for relay in relays]
            marks = ", ".join("?" for _ in keep)
            where = f" WHERE url NOT IN ({marks})" if keep else ""
            conn.execute(f"DELETE FROM serbero_relay_health{where}", keep)
        for key in clear:
            conn.execute("DELETE FROM serbero_daemon_health WHERE key = ?", (key,))
        for key, value in values.items():
            conn.execute(
                "INSERT INTO serbero_daemon_health (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (key, value, now),
            )


def read_health(conn: apsw.Connection) -> HealthSnapshot:
    """The whole health record (works on a read-only connection)."""
    relays = tuple(
        RelayHealth(*row)
        for row in conn.execute(
            "SELECT url, state, last_change_at, last_event_at FROM serbero_relay_health"
            " ORDER BY url"
        )
    )
    values = {
        str(key): str(value)
        for key, value in conn.execute("SELECT key, value FROM serbero_daemon_health")
    }
    return HealthSnapshot(relays=relays, values=values)
