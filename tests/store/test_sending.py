"""What the sender reads at start-up (BEY-26): the database's wrap salt, drawn once and kept,
and the last outbox id, which never goes back."""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from serbero.store.outbox import enqueue_notifications
from serbero.store.sending import SALT_BYTES, sending_origin
from tests.store.helpers import SOLVERS, T0, event, messages


def test_the_salt_is_drawn_once_per_database_and_kept(conn: apsw.Connection, db_path: str) -> None:
    first = sending_origin(conn, now=T0, rand=os.urandom)
    assert len(first.salt) == 2 * SALT_BYTES and first.last_outbox_id == 0
    conn.close()
    reopened, _ = open_database(db_path)
    try:
        again = sending_origin(reopened, now=T0 + 60, rand=os.urandom)
    finally:
        reopened.close()
    assert again.salt == first.salt


def test_another_database_gets_another_salt(conn: apsw.Connection, tmp_path: Path) -> None:
    other, _ = open_database(str(tmp_path / "other.db"))
    try:
        assert (
            sending_origin(other, now=T0, rand=os.urandom).salt
            != sending_origin(conn, now=T0, rand=os.urandom).salt
        )
    finally:
        other.close()


def test_the_last_outbox_id_counts_rows_deleted_since(conn: apsw.Connection) -> None:
    record_detected(conn, event("d-1"), messages("initial"), T0)
    ids = enqueue_notifications(
        conn,
        dispute_id="d-1",
        notif_type="assignment",
        cause="ev",
        messages=messages("assignment"),
        now=T0,
    )
    origin = sending_origin(conn, now=T0, rand=os.urandom)
    assert (origin.last_outbox_id, origin.last_outbox_solver) == (ids[-1], SOLVERS[-1])
    conn.execute("DELETE FROM notification_outbox")
    origin = sending_origin(conn, now=T0, rand=os.urandom)
    assert (origin.last_outbox_id, origin.last_outbox_solver) == (ids[-1], None)
