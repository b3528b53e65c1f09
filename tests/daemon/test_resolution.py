"""Resolution and late discovery end to end: CORE-49 (with its mediation report), BEY-4
(disputes we never saw opened) and BEY-5 (the closing notice, and switching it off)."""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest
import trio

from tests.daemon.support import Harness, in_thread, query, running_daemon
from tests.support.relay_fixtures import LocalRelayProcess


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "serbero.db")


async def test_closing_notice_after_open_take_settle(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """BEY-5: every solver's third DM says the dispute is closed, in decision order."""
    async with Harness(local_relay.url, db_path) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "d-bey5", "buyer")
            await h.wait_dms(1)
            await in_thread(h.sim.take_dispute, "d-bey5")
            await h.wait_dms(2)
            await in_thread(h.sim.resolve, "d-bey5", "settled")
            for dms in await h.wait_dms(3):
                assert [dm.content.split("\n")[-1] for dm in dms] == [
                    "status: initiated",
                    "lifecycle_state: taken",
                    "lifecycle_state: resolved",
                ]
                assert "status: settled" in dms[2].content
            await h.settled(context, 3)
        assert query(
            db_path, "SELECT from_state, to_state FROM dispute_state_transitions ORDER BY id"
        ) == [("new", "notified"), ("notified", "taken"), ("taken", "resolved")]
        assert h.rows("notifications", "notif_type = 'resolution' AND status = 'sent'") == 2
        assert query(db_path, "SELECT dispute_status FROM disputes") == [("initiated",)]


async def test_closing_notice_can_be_switched_off(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    async with Harness(local_relay.url, db_path, valid_solvers=1, resolution_notices=False) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "d-quiet", "seller")
            await h.wait_dms(1)
            await in_thread(h.sim.resolve, "d-quiet", "seller-refunded")
            await h.settled(context, 2)
            await trio.sleep(0.3)
            assert h.dm_counts() == [1]
        assert h.state("d-quiet") == "resolved"
        assert h.rows("notifications", "notif_type = 'resolution'") == 0


async def test_late_discovery_records_without_announcing(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """BEY-4: a take and a resolution for disputes never seen opened create their rows in
    `taken` / `resolved` with a NULL-origin transition row, and notify nobody."""
    async with Harness(local_relay.url, db_path, valid_solvers=1) as h:
        async with running_daemon(h.config) as context:
            take_id = await in_thread(h.sim.take_dispute, "d-late-take", "f" * 64)
            await in_thread(h.sim.resolve, "d-late-resolve", "released")
            await h.settled(context, 2)
            await trio.sleep(0.3)
            assert h.dm_counts() == [0]
        assert query(
            db_path,
            "SELECT dispute_id, lifecycle_state, assigned_solver, dispute_status FROM disputes"
            " ORDER BY dispute_id",
        ) == [
            ("d-late-resolve", "resolved", None, "released"),
            ("d-late-take", "taken", "f" * 64, "in-progress"),
        ]
        assert query(
            db_path,
            "SELECT dispute_id, from_state, to_state, trigger FROM dispute_state_transitions"
            " ORDER BY dispute_id",
        ) == [
            ("d-late-resolve", None, "resolved", "dispute_resolved_externally"),
            ("d-late-take", None, "taken", take_id),
        ]
        assert h.rows("notifications") == 0


def _add_live_session(db_path: str, dispute_id: str, session_id: str) -> None:
    """What the mediation engine would have left: a live session and its classification."""
    conn = apsw.Connection(db_path)
    conn.set_busy_timeout(5000)
    try:
        with conn:
            conn.execute(
                "INSERT INTO mediation_sessions (session_id, dispute_id, state,"
                " prompt_bundle_id, policy_hash, started_at, last_transition_at)"
                " VALUES (?, ?, 'awaiting_response', 'bundle', 'hash', 1, 1)",
                (session_id, dispute_id),
            )
            conn.execute(
                "INSERT INTO mediation_events (session_id, kind, payload_json, occurred_at)"
                " VALUES (?, 'classification_produced', ?, 1)",
                (session_id, json.dumps({"classification": "payment_delay", "confidence": 0.5})),
            )
    finally:
        conn.close()


async def test_resolution_with_mediation_context_reports_to_every_solver(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """CORE-49 steps 4-5: the live session is superseded and closed, every solver gets the
    `mediation_resolution_report/v1` and the closing notice, the report is audited once."""
    async with Harness(local_relay.url, db_path) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "d-med", "buyer")
            await h.settled(context, 1)
            _add_live_session(db_path, "d-med", "session-1")
            await in_thread(h.sim.resolve, "d-med", "settled")
            for dms in await h.wait_dms(1, "mediation_resolution_report/v1"):
                lines = dms[0].content.split("\n")
                assert lines[1:6] == [
                    "Dispute: d-med",
                    "Session: session-1",
                    "Classification: payment_delay (confidence 0.50)",
                    "Outbound party messages: 0",
                    "Final dispute status: settled",
                ]
            await h.wait_dms(1, "lifecycle_state: resolved")
            await h.settled(context, 2)
        assert query(db_path, "SELECT state FROM mediation_sessions") == [("closed",)]
        kinds = [row[0] for row in query(db_path, "SELECT kind FROM mediation_events ORDER BY id")]
        assert kinds == [
            "classification_produced",
            "superseded_by_human",
            "session_closed",
            "resolved_externally_reported",
        ]
        assert (
            h.rows(
                "notifications", "notif_type = 'mediation_resolution_report' AND status = 'sent'"
            )
            == 2
        )


async def test_a_fast_lifecycle_keeps_each_solvers_dms_in_decision_order(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """BEY-22: open, take and settle back to back. A notice whose purpose is gone before it
    went out is dropped, but whatever each solver gets arrives in decision order."""
    order = ["status: initiated", "lifecycle_state: taken", "lifecycle_state: resolved"]
    async with Harness(local_relay.url, db_path) as h:
        async with running_daemon(h.config) as context:
            for index in range(5):
                dispute_id = f"d-fast-{index}"
                await in_thread(h.sim.open_dispute, dispute_id, "buyer")
                await in_thread(h.sim.take_dispute, dispute_id)
                await in_thread(h.sim.resolve, dispute_id, "settled")
            await h.wait_dms(5, "lifecycle_state: resolved")
            await h.settled(context, 15)
        for inbox in h.inboxes:
            for index in range(5):
                seen = [
                    dm.content.split("\n")[-1]
                    for dm in inbox.messages()
                    if f"dispute_id: d-fast-{index}\n" in dm.content
                ]
                assert seen == [line for line in order if line in seen], seen
