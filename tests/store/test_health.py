"""The health record the daemon flushes for `serbero status` (BEY-10)."""

from __future__ import annotations

import apsw

from serbero.store.connection import open_readonly
from serbero.store.health import (
    KEY_HEARTBEAT_AT,
    KEY_LAST_DISPUTE_EVENT_AT,
    HealthSnapshot,
    RelayHealth,
    read_health,
    write_health,
)
from tests.store.helpers import T0, rows


def test_snapshots_upsert_relays_and_facts(conn: apsw.Connection, db_path: str) -> None:
    write_health(
        conn,
        relays=[
            RelayHealth("wss://a", "connected", T0, T0 + 5),
            RelayHealth("wss://b", "connecting", T0),
        ],
        values={KEY_HEARTBEAT_AT: str(T0), KEY_LAST_DISPUTE_EVENT_AT: str(T0 + 5)},
        now=T0,
    )
    write_health(
        conn,
        relays=[RelayHealth("wss://a", "disconnected", T0 + 9)],
        values={KEY_HEARTBEAT_AT: str(T0 + 10)},
        now=T0 + 10,
    )
    expected = HealthSnapshot(
        relays=(
            RelayHealth("wss://a", "disconnected", T0 + 9, T0 + 5),
            RelayHealth("wss://b", "connecting", T0, None),
        ),
        values={KEY_HEARTBEAT_AT: str(T0 + 10), KEY_LAST_DISPUTE_EVENT_AT: str(T0 + 5)},
    )
    assert read_health(conn) == expected
    assert rows(conn, "SELECT key, updated_at FROM serbero_daemon_health ORDER BY key") == [
        (KEY_HEARTBEAT_AT, T0 + 10),
        (KEY_LAST_DISPUTE_EVENT_AT, T0),
    ]
    reader = open_readonly(db_path)
    assert read_health(reader) == expected
    reader.close()


def test_pruning_drops_relays_no_longer_configured(conn: apsw.Connection) -> None:
    write_health(
        conn,
        relays=[RelayHealth("wss://a", "connected", T0), RelayHealth("wss://b", "connected", T0)],
        values={},
        now=T0,
    )
    write_health(
        conn,
        relays=[RelayHealth("wss://b", "connecting", T0 + 1)],
        values={},
        now=T0 + 1,
        prune_relays=True,
    )
    assert [r.url for r in read_health(conn).relays] == ["wss://b"]
    write_health(conn, relays=[], values={}, now=T0 + 2, prune_relays=True)
    assert read_health(conn).relays == ()
