"""core.md §15 acceptance scenarios AS-1..AS-8 against a real relay (nostr-sdk LocalRelay),
with nostr-sdk solver inboxes decrypting the DMs and a nostr-sdk Mostro publishing."""

from __future__ import annotations

from pathlib import Path

import pytest

from serbero.config import SolverConfig
from serbero.protocol.keys import Keys
from tests.daemon.support import (
    DM_TIMEOUT,
    count_rows,
    eventually,
    in_thread,
    make_config,
    running_daemon,
    scalar,
    started,
)
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.solver_inbox import SolverInbox


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "serbero.db")


async def test_as1_detection(local_relay: LocalRelayProcess, db_path: str) -> None:
    """AS-1: both solvers' first DM names the dispute, the initiator and created_at."""
    serbero, mostro, a, b = (Keys.generate() for _ in range(4))
    config = make_config(
        db_path,
        [local_relay.url],
        serbero=serbero,
        mostro=mostro,
        solvers=[
            SolverConfig.from_text(a.public_hex, "read"),
            SolverConfig.from_text(b.public_hex, "write"),
        ],
    )
    async with (
        started(SolverInbox(a.secret.hex(), [local_relay.url])) as inbox_a,
        started(SolverInbox(b.secret.hex(), [local_relay.url])) as inbox_b,
        started(MostroSim(mostro.secret.hex(), [local_relay.url])) as sim,
        running_daemon(config),
    ):
        event_id = await in_thread(sim.open_dispute, "dispute-001", "buyer")
        created_at = sim.event(event_id).created_at
        for inbox in (inbox_a, inbox_b):
            (dm,) = await in_thread(inbox.wait_for_count, 1, DM_TIMEOUT)
            assert dm.sender_hex == serbero.public_hex
            lines = dm.content.split("\n")
            assert lines[1:] == [
                "dispute_id: dispute-001",
                "initiator: buyer",
                f"event_timestamp: {created_at}",
                "status: initiated",
            ]
        await eventually(lambda: count_rows(db_path, "notifications", "status = 'sent'") == 2)
    assert scalar(db_path, "SELECT lifecycle_state FROM disputes") == "notified"
