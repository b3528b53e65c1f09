"""The dispatcher inside the full daemon (`serve`): started only when enabled (ESC-7/8), idle
it writes nothing (ESC-AS-1), and a handoff written by a second writer reaches the write
solver through the supervisor's wiring. Real time, 1 s cadence."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
import trio
from structlog.testing import capture_logs

from serbero.config import Config, EscalationConfig, SolverConfig
from serbero.protocol.handoff import parse_handoff_dm
from serbero.protocol.keys import Keys
from tests.daemon.support import count_rows, eventually, make_config, query, running_daemon
from tests.escalation.helpers import SecondWriter, package, solver
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.solver_inbox import SolverInbox

# Tables the daemon itself keeps up to date while idle (our v6 health record, BEY-11).
DAEMON_BOOKKEEPING = {
    "schema_version",
    "sqlite_sequence",
    "serbero_daemon_health",
    "serbero_relay_health",
}
DM_TIMEOUT = 10.0


def daemon_config(
    db_path: str, relay: LocalRelayProcess, *, enabled: bool, solvers: Sequence[SolverConfig] = ()
) -> Config:
    config = make_config(
        db_path, [relay.url], serbero=Keys.generate(), mostro=Keys.generate(), solvers=solvers
    )
    return msgspec.structs.replace(
        config, escalation=EscalationConfig(enabled=enabled, dispatch_interval_seconds=1)
    )


async def test_as1_enabled_idle_daemon_writes_nothing(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    db_path = str(tmp_path / "serbero.db")
    config = daemon_config(db_path, local_relay, enabled=True)
    with capture_logs() as logs:
        async with running_daemon(config):
            await eventually(
                lambda: [entry["event"] for entry in logs].count("phase4_dispatcher_tick") >= 2
            )
    events = [entry["event"] for entry in logs]
    assert "phase4_dispatcher_enabled" in events
    assert "phase4_no_write_solver" in events
    assert query(db_path, "SELECT MAX(version) FROM schema_version")[0][0] >= 5
    tables = [
        name
        for (name,) in query(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")
        if name not in DAEMON_BOOKKEEPING
    ]
    assert {"mediation_events", "notifications", "escalation_dispatches"} <= set(tables)
    assert {name: count_rows(db_path, name) for name in tables} == dict.fromkeys(tables, 0)


async def test_the_daemon_dispatches_a_handoff_from_another_writer(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    db_path = str(tmp_path / "serbero.db")
    writer_solver, keys = solver()
    config = daemon_config(db_path, local_relay, enabled=True, solvers=[writer_solver])
    with SolverInbox(keys.secret.hex(), [local_relay.url]) as inbox:
        async with running_daemon(config):
            writer = SecondWriter(db_path)
            writer.add_dispute("d-daemon")
            handoff_id = writer.add_handoff(package("d-daemon"))
            (dm,) = await trio.to_thread.run_sync(inbox.wait_for_count, 1, DM_TIMEOUT)
            await eventually(lambda: writer.count("escalation_dispatches") == 1)
    assert parse_handoff_dm(dm.content).dispute_id == "d-daemon"
    assert [row[3:5] for row in writer.dispatches()] == [(handoff_id, keys.public_hex)]
    writer.close()


async def test_a_disabled_dispatcher_reads_and_writes_nothing(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    db_path = str(tmp_path / "serbero.db")
    config = daemon_config(db_path, local_relay, enabled=False, solvers=[solver()[0]])
    with capture_logs() as logs:
        async with running_daemon(config):
            writer = SecondWriter(db_path)
            writer.add_dispute("d-off")
            writer.add_handoff(package("d-off"))
            await trio.sleep(2.2)
    events = [entry["event"] for entry in logs]
    assert "phase4_dispatcher_disabled" in events
    assert not [e for e in events if e.startswith("phase4_") and e != "phase4_dispatcher_disabled"]
    assert writer.count("escalation_dispatches") == 0
    assert writer.count("mediation_events", "kind LIKE 'escalation_d%'") == 0
    assert writer.count("mediation_events", "kind = 'escalation_superseded'") == 0
    writer.close()
