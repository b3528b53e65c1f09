"""Opening the database: private file permissions, pragmas, migrations; read-only access.

Only the tracker opens the read-write connection (`open_database`). Operator commands use
`open_readonly`, which never writes, never migrates and works whether or not the daemon
runs (WAL lets them read while it writes).
"""

from __future__ import annotations

import os
from typing import Final

import apsw

from serbero.log import get_logger
from serbero.store.errors import StoreFailure
from serbero.store.migrations import SchemaStatus, migrate

log = get_logger("serbero.store")

BUSY_TIMEOUT_MS: Final = 5000
DB_FILE_MODE: Final = 0o600
MEMORY_PATH: Final = ":memory:"


def _create_private_file(path: str) -> None:
    """Create an empty database file readable by its owner only (BEY-23); keep existing ones.

    SQLite gives the `-wal` and `-shm` files the database file's permissions, so they are
    private too.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DB_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def configure(conn: apsw.Connection) -> None:
    """The pragmas every read-write connection gets (CORE-58 plus `synchronous=FULL`)."""
    conn.execute("PRAGMA foreign_keys = ON")
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode is not None and str(mode[0]).lower() not in ("wal", "memory"):
        log.warning("wal_unavailable", journal_mode=str(mode[0]))
    conn.execute("PRAGMA synchronous = FULL")


def connect(path: str) -> apsw.Connection:
    """A configured read-write connection, the file created private if missing; no migration."""
    try:
        if path != MEMORY_PATH:
            _create_private_file(path)
        conn = apsw.Connection(path)
        configure(conn)
    except (apsw.Error, OSError) as exc:
        raise StoreFailure(f"cannot open database {path}: {exc}") from exc
    return conn


def open_readonly(path: str) -> apsw.Connection:
    """A read-only connection for operator commands; never creates, writes or migrates."""
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except apsw.Error as exc:
        raise StoreFailure(f"cannot open database {path} read-only: {exc}") from exc
    return conn


def open_database(path: str) -> tuple[apsw.Connection, SchemaStatus]:
    """The tracker's connection: configured and migrated to `SCHEMA_VERSION` (CORE-8 step 6)."""
    conn = connect(path)
    try:
        status = migrate(conn)
    except apsw.Error as exc:
        conn.close()
        raise StoreFailure(f"cannot migrate database {path}: {exc}") from exc
    except StoreFailure:
        conn.close()
        raise
    return conn, status
