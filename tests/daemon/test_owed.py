"""Notices the reference left unfinished, finished after switching (#12 item 5): escalation
DMs that no relay accepted (`send_failed` dispatches in a reference v5 database) are sent
again at start-up, to the solvers they were meant for, once; a resolved dispute's are not.
(The `new` dispute the reference never announced: test_startup.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import apsw
import msgspec
import trio
from structlog.testing import capture_logs

from serbero.config import EscalationConfig
from tests.daemon.support import Harness, running_daemon
from tests.escalation.helpers import package
from tests.store.reference_schema import build_reference
from tests.support.relay_fixtures import LocalRelayProcess


def build_reference_dispatches(db_path: str, h: Harness, now: int) -> None:
    """Two disputes whose escalation DMs reached nobody, as serbero 0.1.1 records it: the
    handoff, the `send_failed` dispatch naming both solvers, the failed attempt rows. One
    dispute is resolved since."""
    conn = apsw.Connection(db_path)
    solvers = [keys.public_hex for keys in h.solver_keys]
    try:
        build_reference(conn, 5)
        with conn:
            for dispute_id, state in (("esc-open", "notified"), ("esc-closed", "resolved")):
                conn.execute(
                    "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
                    " dispute_status, event_timestamp, detected_at, lifecycle_state)"
                    " VALUES (?, ?, ?, 'buyer', 'initiated', ?, ?, ?)",
                    (dispute_id, f"ev-{dispute_id}", h.mostro.public_hex, now, now, state),
                )
                conn.execute(
                    "INSERT INTO mediation_events (kind, payload_json, occurred_at)"
                    " VALUES ('handoff_prepared', ?, ?)",
                    (package(dispute_id), now),
                )
                handoff_id = conn.last_insert_rowid()
                conn.execute(
                    "INSERT INTO escalation_dispatches (dispatch_id, dispute_id, handoff_event_id,"
                    " target_solver, dispatched_at, created_at, status)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'send_failed')",
                    (f"x-{dispute_id}", dispute_id, handoff_id, ",".join(solvers), now, now),
                )
                for solver in solvers:
                    conn.execute(
                        "INSERT INTO notifications (dispute_id, solver_pubkey, sent_at, status,"
                        " error_message, notif_type) VALUES (?, ?, ?, 'failed', 'no relay',"
                        " 'mediation_escalation_recommended')",
                        (dispute_id, solver, now),
                    )
    finally:
        conn.close()


async def test_send_failed_escalations_of_a_reference_database_are_sent_again_once(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    db_path = str(tmp_path / "serbero.db")
    async with Harness(local_relay.url, db_path, permissions=["write", "write"]) as h:
        config = msgspec.structs.replace(
            h.config, escalation=EscalationConfig(enabled=True, dispatch_interval_seconds=3600)
        )
        build_reference_dispatches(db_path, h, int(time.time()) - 600)
        with capture_logs() as logs:
            async with running_daemon(config) as context:
                for (dm,) in await h.wait_dms(1):
                    assert "esc-open" in dm.content and "esc-closed" not in dm.content
                await h.settled(context, 0)
        (owed,) = [entry for entry in logs if entry["event"] == "owed_notices_queued"]
        assert (owed["initial_notices"], owed["escalation_dispatches"]) == (0, 1)
        assert h.rows("notifications", "dispute_id = 'esc-open' AND status = 'sent'") == 2
        assert h.rows("notification_outbox", "handoff_event_id IS NOT NULL") == 2
        # The reference's record of the first attempt stays as it was.
        assert h.rows("escalation_dispatches", "status = 'send_failed'") == 2

        async with running_daemon(config) as context:
            await h.settled(context, 0)
            await trio.sleep(0.5)
        assert h.dm_counts() == [1, 1]
        assert h.rows("notification_outbox") == 2


async def test_a_disabled_dispatcher_owes_no_escalation_dm(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    db_path = str(tmp_path / "serbero.db")
    async with Harness(local_relay.url, db_path, permissions=["write", "write"]) as h:
        build_reference_dispatches(db_path, h, int(time.time()) - 600)
        async with running_daemon(h.config) as context:
            await h.settled(context, 0)
            await trio.sleep(0.5)
        assert h.dm_counts() == [0, 0]
        assert h.rows("notification_outbox") == 0
