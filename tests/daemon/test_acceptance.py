"""The core acceptance scenarios AS-1..AS-8 against a real relay (nostr-sdk LocalRelay),
with nostr-sdk solver inboxes decrypting the DMs and a nostr-sdk Mostro publishing.

AS-9 (config), AS-10 (state machine), AS-11 (routing) and AS-12 (store) are unit-level and
live with their modules' tests; AS-11 is also exercised end to end in test_hostile.py.
The timer scenarios (AS-7, AS-8) move an offset wall clock instead of waiting real seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from serbero.config import SolverConfig
from tests.daemon.support import (
    Harness,
    in_thread,
    query,
    running_daemon,
    scalar,
)
from tests.support.clocks import OffsetClock
from tests.support.relay_fixtures import LocalRelayProcess

# "Nothing more arrives" windows: AS-6 says 2 s, AS-8 says 3 s.
QUIET_AFTER_ASSIGNMENT = 2.0
QUIET_AFTER_TAKE = 3.0
SOLVER_63_ZEROS_1 = "0" * 63 + "1"


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "serbero.db")


async def test_as1_detection(local_relay: LocalRelayProcess, db_path: str) -> None:
    """AS-1: solvers A (read) and B (write) each get a first DM naming the dispute, the
    initiator and the event's created_at; the shutdown is clean within 2 s."""
    async with Harness(local_relay.url, db_path, permissions=["read", "write"]) as h:
        async with running_daemon(h.config) as context:
            event_id = await in_thread(h.sim.open_dispute, "dispute-001", "buyer")
            created_at = h.sim.event(event_id).created_at
            for (dm,) in await h.wait_dms(1):
                assert dm.sender_hex == h.serbero.public_hex
                assert dm.content.split("\n")[1:] == [
                    "dispute_id: dispute-001",
                    "initiator: buyer",
                    f"event_timestamp: {created_at}",
                    "status: initiated",
                ]
            await h.settled(context, 1)
        assert h.state("dispute-001") == "notified"
        assert h.rows("notifications", "status = 'sent' AND notif_type = 'initial'") == 2


async def test_as2_dedup_across_copies_and_restarts(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """AS-2: the same dispute twice gives one row and one DM; after a restart on the same
    database (which replays it) and a third publish, still one DM."""
    async with Harness(local_relay.url, db_path, valid_solvers=1) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "dispute-002", "seller")
            await h.wait_dms(1)
            await in_thread(h.sim.open_dispute, "dispute-002", "seller")
            await h.settled(context, 2)
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "dispute-002", "seller")
            await h.settled(context, 1)
            await trio.sleep(0.3)
        assert h.dm_counts() == [1]
        assert h.rows("disputes") == 1
        assert h.rows("notifications") == 1


async def test_as3_malformed_solver_key(local_relay: LocalRelayProcess, db_path: str) -> None:
    """AS-3: the valid solver is notified; one `sent` and one `failed` row (`invalid
    pubkey`), and the daemon keeps running."""
    bad = SolverConfig.from_text("not-a-real-hex-pubkey")
    async with Harness(local_relay.url, db_path, valid_solvers=1, extra=[bad]) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "dispute-003", "buyer")
            await h.wait_dms(1)
            await h.settled(context, 1)
            rows = query(
                db_path,
                "SELECT solver_pubkey, status, error_message FROM notifications"
                " WHERE dispute_id = 'dispute-003' ORDER BY status",
            )
            assert [(solver, status) for solver, status, _ in rows] == [
                ("not-a-real-hex-pubkey", "failed"),
                (h.solver_keys[0].public_hex, "sent"),
            ]
            assert "invalid pubkey" in rows[0][2]
            await in_thread(h.sim.open_dispute, "dispute-003b", "buyer")
            await h.wait_dms(1, "dispute-003b")
        assert h.state("dispute-003") == "notified"


async def test_as4_no_solvers(local_relay: LocalRelayProcess, db_path: str) -> None:
    """AS-4: a dispute is persisted; no notification rows at all."""
    async with Harness(local_relay.url, db_path, valid_solvers=0) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "dispute-004", "seller")
            await h.settled(context, 1)
        assert query(db_path, "SELECT initiator_role, lifecycle_state FROM disputes") == [
            ("seller", "new")
        ]
        assert h.rows("notifications") == 0


async def test_as5_lifecycle(local_relay: LocalRelayProcess, db_path: str) -> None:
    """AS-5: `initiated` -> notified; `in-progress` without `p` -> taken; transition rows
    in that order."""
    async with Harness(local_relay.url, db_path, valid_solvers=1) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "dispute-005", "buyer")
            # Each DM comes from its decision: waiting for it closes the gap between an
            # event's arrival and its decision that `settled` alone does not see.
            await h.wait_dms(1)
            await h.settled(context, 1)
            assert h.state("dispute-005") == "notified"
            take_id = await in_thread(h.sim.take_dispute, "dispute-005")
            await h.wait_dms(2)
            await h.settled(context, 2)
            assert h.state("dispute-005") == "taken"
        assert query(
            db_path,
            "SELECT from_state, to_state, trigger FROM dispute_state_transitions ORDER BY id",
        ) == [("new", "notified", "initial_notification"), ("notified", "taken", take_id)]
        assert scalar(db_path, "SELECT assigned_solver FROM disputes") is None
        (dms,) = await h.wait_dms(2)
        assert "assigned_solver: unknown" in dms[1].content


async def test_as6_assignment(local_relay: LocalRelayProcess, db_path: str) -> None:
    """AS-6: a take naming a solver: `taken` with that exact `assigned_solver`, one more DM
    per solver and nothing else for 2 s, exactly two `assignment` rows."""
    async with Harness(local_relay.url, db_path) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "dispute-006", "buyer")
            await h.wait_dms(1)
            await in_thread(h.sim.take_dispute, "dispute-006", SOLVER_63_ZEROS_1)
            for dms in await h.wait_dms(2):
                assert dms[1].content.split("\n")[1:] == [
                    "dispute_id: dispute-006",
                    f"assigned_solver: {SOLVER_63_ZEROS_1}",
                    "lifecycle_state: taken",
                ]
            await h.settled(context, 2)
            await trio.sleep(QUIET_AFTER_ASSIGNMENT)
            assert h.dm_counts() == [2, 2]
        assert query(db_path, "SELECT lifecycle_state, assigned_solver FROM disputes") == [
            ("taken", SOLVER_63_ZEROS_1)
        ]
        assert h.rows("notifications", "notif_type = 'assignment'") == 2


async def test_as7_renotification(local_relay: LocalRelayProcess, db_path: str) -> None:
    """AS-7: renotification_seconds=2, interval 1: a second DM arrives, a `re-notification`
    row exists and `last_notified_at` strictly increased."""
    clock = OffsetClock()
    async with Harness(
        local_relay.url,
        db_path,
        valid_solvers=1,
        renotification_seconds=2,
        renotification_check_interval_seconds=1,
    ) as h:
        async with running_daemon(h.config, wall_clock=clock) as context:
            await in_thread(h.sim.open_dispute, "dispute-007", "buyer")
            await h.settled(context, 1)
            first = scalar(db_path, "SELECT last_notified_at FROM disputes")
            clock.advance(5)
            (dms,) = await h.wait_dms(2)
            assert dms[1].content.split("\n")[1:3] == [
                "dispute_id: dispute-007",
                "lifecycle_state: notified",
            ]
            await h.settled(context, 1)
        assert h.rows("notifications", "notif_type = 're-notification'") >= 1
        assert scalar(db_path, "SELECT last_notified_at FROM disputes") > first


async def test_as8_no_renotification_once_taken(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """AS-8: renotification_seconds=30, interval 1, taken right after the initial DM: even
    with the wall clock pushed past the deadline the solver holds exactly two DMs over the
    next 3 s and no `re-notification` row exists."""
    clock = OffsetClock()
    async with Harness(
        local_relay.url,
        db_path,
        valid_solvers=1,
        renotification_seconds=30,
        renotification_check_interval_seconds=1,
    ) as h:
        async with running_daemon(h.config, wall_clock=clock) as context:
            await in_thread(h.sim.open_dispute, "dispute-008", "buyer")
            await h.wait_dms(1)
            await in_thread(h.sim.take_dispute, "dispute-008")
            await h.settled(context, 2)
            clock.advance(120)
            await trio.sleep(QUIET_AFTER_TAKE)
            assert h.dm_counts() == [2]
            assert context.snapshot().renotify_cycles >= 2
        assert h.rows("notifications", "notif_type = 're-notification'") == 0
