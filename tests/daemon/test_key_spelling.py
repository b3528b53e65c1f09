"""Solver keys are stored in lowercase hex whatever the config's spelling (BEY-12), and a
reference database that holds other spellings reads as the same solvers."""

from __future__ import annotations

from pathlib import Path

import apsw
import msgspec
import pytest

from serbero.cli import main
from serbero.config import SolverConfig
from serbero.protocol.keys import Keys, encode_npub
from tests.daemon.support import Harness, in_thread, query, running_daemon
from tests.ops.seed import NOTIFIED, seed_reference
from tests.support.relay_fixtures import LocalRelayProcess


async def test_npub_and_uppercase_solver_keys_are_stored_in_hex(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    db_path = str(tmp_path / "serbero.db")
    async with Harness(local_relay.url, db_path) as h:
        first, second = h.solver_keys
        spelled = (
            SolverConfig.from_text(f"nostr:{encode_npub(first.public_hex)}"),
            SolverConfig.from_text(second.public_hex.upper()),
        )
        config = msgspec.structs.replace(h.config, solvers=spelled)
        async with running_daemon(config) as context:
            await in_thread(h.sim.open_dispute, "dispute-keys", "buyer")
            await h.wait_dms(1)
            await h.settled(context, 1)
    expected = sorted([first.public_hex, second.public_hex])
    notified = query(db_path, "SELECT solver_pubkey FROM notifications ORDER BY 1")
    queued = query(db_path, "SELECT solver_pubkey FROM notification_outbox ORDER BY 1")
    assert [key for (key,) in notified] == expected
    assert [key for (key,) in queued] == expected


def test_show_reads_a_reference_databases_spellings_as_hex(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serbero show` names each solver by its hex key, however the reference recorded it."""
    db = tmp_path / "reference.db"
    seed_reference(db)
    one, two = Keys.generate().public_hex, Keys.generate().public_hex
    conn = apsw.Connection(str(db))
    try:
        conn.execute(
            "INSERT INTO notifications (dispute_id, solver_pubkey, sent_at, status, notif_type)"
            " VALUES (?, ?, 1, 'sent', 'initial'), (?, ?, 2, 'sent', 'initial')",
            (NOTIFIED, encode_npub(one), NOTIFIED, two.upper()),
        )
        conn.execute(
            "INSERT INTO escalation_dispatches (dispatch_id, dispute_id, handoff_event_id,"
            " target_solver, dispatched_at, created_at) VALUES ('x-1', ?, 1, ?, 3, 3)",
            (NOTIFIED, f"{encode_npub(one)},{two.upper()}"),
        )
    finally:
        conn.close()
    assert main(["show", NOTIFIED, "--db", str(db), "--json"]) == 0
    entries = msgspec.json.decode(capsys.readouterr().out)["entries"]
    solvers = [e["details"]["solver"] for e in entries if e["source"] == "notifications"]
    assert solvers[:2] == [one, two]  # sent at 1 and 2, before the seeded row
    (dispatch,) = [e for e in entries if e["source"] == "escalation_dispatches"]
    assert dispatch["details"]["target_solver"] == f"{one},{two}"
