"""Start-up (CORE-8, CORE-9, CORE-17, CORE-20/21) and drop-in use of a reference database."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import apsw
import msgspec
import pytest
import trio
from structlog.testing import capture_logs

from serbero.config import (
    Config,
    EscalationConfig,
    MediationConfig,
    PromptsConfig,
    ReasoningConfig,
    RelayConfig,
    Secret,
    SolverConfig,
)
from serbero.daemon import DaemonContext, DaemonFatal, serve
from serbero.protocol.keys import Keys
from serbero.store.schema import SCHEMA_VERSION
from tests.daemon.support import FAST, Harness, in_thread, make_config, query, running_daemon
from tests.relay.helpers import refused_port
from tests.store.reference_schema import build_reference
from tests.support.relay_fixtures import LocalRelayProcess

STARTUP_ORDER = [
    "starting",
    "config_loaded",
    "configured_relay",
    "configured_solver",
    "configured_solver",
    "database_ready",
    "cold_start_since_now",
    "solvers_ready",
    "serbero_identity",
    "subscribing",
    "phase4_dispatcher_disabled",
    "event_loop_started",
]


def offline_config(tmp_path: Path, port: int, **sections: Any) -> Config:
    """Two solvers and one relay that refuses every connection."""
    config = make_config(
        str(tmp_path / "serbero.db"),
        [f"ws://127.0.0.1:{port}"],
        serbero=Keys.generate(),
        mostro=Keys.generate(),
        solvers=[SolverConfig.from_text(Keys.generate().public_hex) for _ in range(2)],
    )
    return msgspec.structs.replace(config, **sections)


async def start_and_stop(config: Config) -> list[dict[str, Any]]:
    """Run the daemon to readiness, stop it; the log records of the whole run."""
    shutdown = trio.Event()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            context: DaemonContext = await nursery.start(
                partial(serve, config, shutdown=shutdown, relay_timing=FAST)
            )
            assert context.snapshot().relays_connected == 0
            shutdown.set()
    return logs


def names(logs: Sequence[dict[str, Any]]) -> list[str]:
    return [str(entry["event"]) for entry in logs]


async def test_startup_logs_in_core8_order_and_an_unreachable_relay_is_not_fatal(
    tmp_path: Path,
) -> None:
    with refused_port() as port:
        config = offline_config(tmp_path, port)
        logs = await start_and_stop(config)
    assert [name for name in names(logs) if name in STARTUP_ORDER] == STARTUP_ORDER
    assert names(logs)[-1] == "exited_cleanly"
    (identity,) = [entry for entry in logs if entry["event"] == "serbero_identity"]
    assert identity["serbero_pubkey"] == config.identity().public_hex


async def test_optional_features_are_reported(tmp_path: Path) -> None:
    """CORE-8 steps 9 and 13, CORE-17: the dispatcher line carries its settings; mediation
    without reasoning is off (INFO); a failed mediation bring-up is an ERROR, never fatal."""
    with refused_port() as port:
        config = offline_config(
            tmp_path,
            port,
            escalation=EscalationConfig(enabled=True, dispatch_interval_seconds=7),
            mediation=MediationConfig(enabled=True),
        )
        logs = await start_and_stop(config)
        both = offline_config(
            tmp_path,
            port,
            mediation=MediationConfig(enabled=True),
            reasoning=ReasoningConfig(enabled=True, api_key=Secret("k")),
            prompts=PromptsConfig(system_instructions_path=str(tmp_path / "missing.md")),
        )
        both_logs = await start_and_stop(both)
    (enabled,) = [entry for entry in logs if entry["event"] == "phase4_dispatcher_enabled"]
    assert enabled["dispatch_interval_seconds"] == 7
    assert enabled["fallback_to_all_solvers"] is False
    assert enabled["write_solver_count"] == 0
    assert "mediation_disabled" in names(logs)
    (failed,) = [entry for entry in both_logs if entry["event"] == "mediation_bringup_failed"]
    assert failed["log_level"] == "error"
    assert failed["stage"] == "bundle"
    assert "event_loop_started" in names(both_logs)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"mostro_pubkey": "not-a-key"}, "invalid [mostro].pubkey"),
        ({"db_path": "/nonexistent/dir/serbero.db"}, "database"),
        ({"private_key": Secret("00" * 32)}, "invalid [serbero].private_key"),
        ({"relays": ()}, "no relays configured"),
        ({"relays": (RelayConfig(url="http://example.com"),)}, "invalid relay configuration"),
    ],
)
async def test_fatal_startup_errors(tmp_path: Path, change: dict[str, Any], reason: str) -> None:
    """CORE-9: logged as `daemon_terminated` and raised as DaemonFatal (exit 1)."""
    config = make_config(
        str(tmp_path / "serbero.db"),
        ["ws://127.0.0.1:1"],
        serbero=Keys.generate(),
        mostro=Keys.generate(),
    )
    if "mostro_pubkey" in change:
        config = msgspec.structs.replace(
            config, mostro=msgspec.structs.replace(config.mostro, pubkey=change["mostro_pubkey"])
        )
    elif "db_path" in change or "private_key" in change:
        config = msgspec.structs.replace(
            config,
            serbero=msgspec.structs.replace(
                config.serbero, **{key: value for key, value in change.items()}
            ),
        )
    else:
        config = msgspec.structs.replace(config, relays=change["relays"])
    with capture_logs() as logs, pytest.raises(DaemonFatal, match=reason.replace("[", r"\[")):
        await serve(config, shutdown=trio.Event(), relay_timing=FAST)
    (terminated,) = [entry for entry in logs if entry["event"] == "daemon_terminated"]
    assert reason in terminated["error"]
    if "mostro_pubkey" in change:
        assert not (tmp_path / "serbero.db").exists(), "step 5 comes before the database"


async def test_a_reference_database_with_history_is_used_as_is(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """Drop-in: a serbero 0.1.1 database (schema 5) with history. Warm start from its newest
    event (CORE-20) replays the old disputes, which are all duplicates or no-ops: nobody is
    told again, except about the dispute the reference never managed to announce (left
    `new`), whose initial notice goes out at start-up, once (#12 item 5). A new dispute is
    detected and notified."""
    db_path = str(tmp_path / "serbero.db")
    async with Harness(local_relay.url, db_path) as h:
        now = int(time.time())
        history = {
            "old-new": ("initiated", "new"),
            "old-notified": ("initiated", "notified"),
            "old-taken": ("in-progress", "taken"),
            "old-resolved": ("settled", "resolved"),
        }
        event_ids = {}
        for offset, (dispute_id, (status, _)) in enumerate(history.items()):
            created_at = now - 40 + offset
            event = await in_thread(h.sim.sign_status, dispute_id, status, created_at=created_at)
            [event_ids[dispute_id]] = await in_thread(h.sim.publish_signed, [event])
        build_reference_history(db_path, h, history, event_ids, now)

        with capture_logs() as logs:
            async with running_daemon(h.config) as context:
                for (dm,) in await h.wait_dms(1):
                    assert "dispute_id: old-new" in dm.content
                    assert "initiator: buyer" in dm.content
                await h.settled(context, len(history))
                await in_thread(h.sim.open_dispute, "brand-new", "seller")
                for _, dm in await h.wait_dms(2):
                    assert "dispute_id: brand-new" in dm.content
                await h.settled(context, len(history) + 1)
                await trio.sleep(0.3)
        assert h.dm_counts() == [2, 2]
        assert query(db_path, "SELECT dispute_id, lifecycle_state FROM disputes ORDER BY 1") == [
            ("brand-new", "notified"),
            ("old-new", "notified"),
            ("old-notified", "notified"),
            ("old-resolved", "resolved"),
            ("old-taken", "taken"),
        ]
        # Sent rows only: the owed notice may be tried before the relay link is up, which
        # records a failed attempt and retries; the DM counts above say nobody got it twice.
        assert h.rows("notifications", "dispute_id LIKE 'old-%' AND status = 'sent'") == 4
        # Started again: the owed notice was paid; nothing is announced twice.
        with capture_logs() as again:
            async with running_daemon(h.config) as context:
                await h.settled(context, 0)
                await trio.sleep(0.5)
        assert h.dm_counts() == [2, 2]
        assert "owed_notices_queued" not in names(again)
        assert query(db_path, "SELECT MAX(version) FROM schema_version") == [(SCHEMA_VERSION,)]
    (resume,) = [entry for entry in logs if entry["event"] == "resume_since"]
    assert resume["last_seen_event_ts"] == now - 40 + len(history) - 1
    assert resume["resume_since_ts"] == resume["last_seen_event_ts"] - 60
    (owed,) = [entry for entry in logs if entry["event"] == "owed_notices_queued"]
    assert (owed["initial_notices"], owed["escalation_dispatches"]) == (1, 0)
    skipped = names(logs)
    assert skipped.count("duplicate_skip") == 2
    assert skipped.count("assignment_noop") == 1
    assert skipped.count("resolution_noop") == 1


def build_reference_history(
    db_path: str,
    h: Harness,
    history: dict[str, tuple[str, str]],
    event_ids: dict[str, str],
    now: int,
) -> None:
    """The rows serbero 0.1.1 would have written for those disputes."""
    conn = apsw.Connection(db_path)
    try:
        build_reference(conn, 5)
        with conn:
            for offset, (dispute_id, (_, state)) in enumerate(history.items()):
                notified_at = None if state == "new" else now - 30
                conn.execute(
                    "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
                    " dispute_status, event_timestamp, detected_at, lifecycle_state,"
                    " last_notified_at) VALUES (?, ?, ?, 'buyer', 'initiated', ?, ?, ?, ?)",
                    (
                        dispute_id,
                        event_ids[dispute_id],
                        h.mostro.public_hex,
                        now - 40 + offset,
                        now - 35,
                        state,
                        notified_at,
                    ),
                )
            conn.execute(
                "INSERT INTO notifications (dispute_id, solver_pubkey, sent_at, status)"
                " VALUES ('old-notified', ?, ?, 'sent'), ('old-taken', ?, ?, 'sent')",
                (h.solver_keys[0].public_hex, now - 30, h.solver_keys[1].public_hex, now - 30),
            )
    finally:
        conn.close()
