"""The write-lock probe behind `serbero status` (BEY-25): names another process holding the
database's write lock, from the kernel's lock table, without opening the database's files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from serbero.ops.write_lock import write_lock_holder
from serbero.store.connection import open_database
from tests.support.sqlite_process import SqliteProcess

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads Linux's /proc/locks"
)


def test_a_held_write_lock_is_named_and_a_free_one_is_not(tmp_path: Path) -> None:
    db_path = str(tmp_path / "serbero.db")
    conn, _ = open_database(db_path)
    try:
        assert write_lock_holder(db_path) is None
        with SqliteProcess(db_path) as other:
            other.execute("BEGIN EXCLUSIVE")
            assert write_lock_holder(db_path) == other.pid
            # The probe took nothing: this process can still read while it is held.
            assert conn.execute("SELECT COUNT(*) FROM disputes").fetchone() == (0,)
            other.execute("ROLLBACK")
        assert write_lock_holder(db_path) is None
    finally:
        conn.close()


def test_no_shared_memory_file_means_nothing_to_name(tmp_path: Path) -> None:
    assert write_lock_holder(str(tmp_path / "absent.db")) is None
    assert not (tmp_path / "absent.db-shm").exists()
