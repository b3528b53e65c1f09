"""The engine tick's listings seek their rows (MED-70): with thousands of finished sessions a
plan that walks every stored event or message is what made a tick take 235 ms instead of 9
(bench/mediation.py). SQLite plans without statistics here, as in the daemon, so the plans
do not depend on the rows and an empty migrated file shows them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from serbero.store.chat import unsent_outbound
from serbero.store.connection import open_database
from serbero.store.sessions import is_eligible, list_eligible
from tests.store.helpers import query_plans


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    connection, _ = open_database(str(tmp_path / "serbero.db"))
    yield connection
    connection.close()


def test_eligibility_seeks_the_dispute_scoped_escalations(conn: apsw.Connection) -> None:
    """MED-20's dispute-scoped escalation check seeks by dispute id, never decodes them all."""
    seek = "SEARCH e USING INDEX serbero_idx_mediation_events_dispute_scoped (<expr>=?)"
    assert seek in query_plans(conn, list_eligible)
    assert seek in query_plans(conn, lambda c: is_eligible(c, "d-1"))


def test_unsent_outbound_starts_from_the_sessions(conn: apsw.Connection) -> None:
    """Q-4's listing walks sessions and seeks each one's outbound messages."""
    seek = (
        "SEARCH m USING INDEX serbero_idx_mediation_messages_session_direction"
        " (session_id=? AND direction=?)"
    )
    every = query_plans(conn, unsent_outbound)
    assert every[0] == "SCAN s" and seek in every
    one = query_plans(conn, lambda c: unsent_outbound(c, "s-1"))
    assert one[0].startswith("SEARCH s USING INDEX") and seek in one
