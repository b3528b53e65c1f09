"""A busy database delays disputes and loses none (BEY-25), against a real relay, a real
database file and a second process holding its write lock, as an operator's `sqlite3`
running `BEGIN EXCLUSIVE` would. Meanwhile `/health` and `serbero status` say so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import trio
from structlog.testing import capture_logs

from serbero.config import HealthConfig
from serbero.ops.healthcheck import probe
from tests.daemon.support import Harness, eventually, free_port, in_thread, running_daemon
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.sqlite_process import SqliteProcess

# The console script beside the interpreter running the tests (the project venv).
SERBERO_SCRIPT = Path(sys.executable).with_name("serbero")
HOLD_SECONDS = 15.0
DISPUTES = 10
# Issue #12's target: every dispute notified within 2 s of the lock's release.
NOTIFIED_WITHIN = 2.0


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "serbero.db")


async def test_disputes_arriving_while_another_process_holds_the_lock_are_all_notified(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    port = free_port()
    async with Harness(local_relay.url, db_path, valid_solvers=2) as h:
        health = HealthConfig(listen=f"127.0.0.1:{port}")
        config = msgspec.structs.replace(h.config, health=health)
        with capture_logs() as logs:
            async with running_daemon(config) as context:
                with SqliteProcess(db_path) as operator:
                    await in_thread(operator.execute, "BEGIN EXCLUSIVE")
                    locked_at = trio.current_time()
                    for i in range(DISPUTES):
                        await in_thread(h.sim.open_dispute, f"locked-{i}", "buyer")
                        await trio.sleep(HOLD_SECONDS / 2 / DISPUTES)
                    await eventually(lambda: context.snapshot().events_received == DISPUTES)
                    await eventually(
                        lambda: context.snapshot().database_unavailable_since is not None
                    )
                    answer = await in_thread(probe, f"http://127.0.0.1:{port}/health")
                    assert answer.status == 503
                    # In a process of its own, as an operator runs it.
                    ran = await in_thread(
                        subprocess.run,
                        [SERBERO_SCRIPT, "status", "--db", db_path, "--json"],
                        capture_output=True,
                        text=True,
                        timeout=30,
                    )
                    assert ran.returncode == 2, ran.stderr
                    status = json.loads(ran.stdout)
                    assert status["write_lock_holder"] == operator.pid
                    assert any("database unavailable" in p for p in status["problems"])
                    await trio.sleep_until(locked_at + HOLD_SECONDS)
                    assert h.dm_counts() == [0, 0]
                    assert context.snapshot().decisions_in_flight == DISPUTES
                    await in_thread(operator.execute, "ROLLBACK")
                    released_at = trio.current_time()
                inboxes = await h.wait_dms(DISPUTES)
                notified_after = trio.current_time() - released_at
                await h.settled(context, DISPUTES)
                assert context.snapshot().database_unavailable_since is None
    assert notified_after < NOTIFIED_WITHIN, f"{notified_after:.2f} s after the release"
    expected = {f"locked-{i}" for i in range(DISPUTES)}
    for dms in inboxes:
        assert {dm.content.split("dispute_id: ")[1].split("\n")[0] for dm in dms} == expected
    assert h.rows("disputes", "lifecycle_state = 'notified'") == DISPUTES
    outage = [
        e["event"] for e in logs if e["event"] in ("database_unavailable", "database_available")
    ]
    assert outage == ["database_unavailable", "database_available"]
    assert not [e for e in logs if e["event"] in ("persistence_failed", "outbox_claim_failed")]
