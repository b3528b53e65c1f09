"""The health record `serbero status` reads (BEY-10) and the live snapshot (BEY-11 input)."""

from __future__ import annotations

from pathlib import Path

import apsw

from serbero.store.health import (
    KEY_HEARTBEAT_AT,
    KEY_LAST_DISPUTE_EVENT_AT,
    KEY_LAST_DISPUTE_EVENT_ID,
    KEY_STARTED_AT,
    RELAY_CONNECTED,
    RELAY_DISCONNECTED,
    HealthSnapshot,
    read_health,
)
from tests.daemon.support import Harness, eventually, in_thread, running_daemon
from tests.support.relay_fixtures import LocalRelayProcess


def health(db_path: str) -> HealthSnapshot:
    conn = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return read_health(conn)
    finally:
        conn.close()


async def test_the_record_follows_relays_and_dispute_events(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    db_path = str(tmp_path / "serbero.db")
    async with (
        Harness(local_relay.url, db_path, valid_solvers=1) as h,
        running_daemon(h.config) as context,
    ):
        await eventually(
            lambda: [r.state for r in health(db_path).relays] == [RELAY_CONNECTED], timeout=5
        )
        record = health(db_path)
        assert int(record.values[KEY_STARTED_AT]) <= int(record.values[KEY_HEARTBEAT_AT])
        assert KEY_LAST_DISPUTE_EVENT_ID not in record.values

        event_id = await in_thread(h.sim.open_dispute, "d-health", "buyer")
        await h.settled(context, 1)
        await eventually(
            lambda: health(db_path).values.get(KEY_LAST_DISPUTE_EVENT_ID) == event_id,
            timeout=5,
        )
        record = health(db_path)
        (relay,) = record.relays
        assert relay.last_event_at == int(record.values[KEY_LAST_DISPUTE_EVENT_AT])

        snap = context.snapshot()
        assert snap.relays_connected == 1
        assert snap.last_dispute_event_id == event_id
        assert snap.events_received == 1
        assert snap.delivered == 1 and snap.delivery_failures == 0
        assert snap.serbero_pubkey == h.serbero.public_hex
        assert {actor.name: actor.state for actor in snap.actors} == {
            "sender": "running",
            "renotify": "running",
            "health_record": "running",
            "ingest": "running",
        }
        await eventually(lambda: context.snapshot().outbox_pending == 0, timeout=5)

        await local_relay.astop()
        await eventually(
            lambda: [r.state for r in health(db_path).relays] == [RELAY_DISCONNECTED], timeout=5
        )
        await local_relay.astart()
        await eventually(
            lambda: [r.state for r in health(db_path).relays] == [RELAY_CONNECTED], timeout=5
        )
