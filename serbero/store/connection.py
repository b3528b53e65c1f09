"""Opening the database: private file permissions, pragmas, migrations; read-only access.

Only the tracker opens the read-write connection (`open_database`). Operator commands use
`open_readonly`, which never writes, never migrates, never leaves a file beside the database
and works whether or not the daemon runs (WAL lets them read while it writes).
"""

from __future__ import annotations

import os
from typing import Final
from urllib.parse import quote

import apsw

from serbero.log import get_logger
from serbero.store.errors import StoreFailure
from serbero.store.migrations import SchemaStatus, migrate

log = get_logger("serbero.store")

BUSY_TIMEOUT_MS: Final = 5000
DB_FILE_MODE: Final = 0o600
MEMORY_PATH: Final = ":memory:"
# The database header's write/read format bytes (offsets 18, 19) are 2 in WAL mode.
_HEADER_BYTES: Final = 20
_WAL_FORMAT: Final = 2


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


def _wal_file_without_log(path: str) -> bool:
    """A WAL-mode database (header bytes 18-19 are 2) whose `-wal` file is absent: a daemon
    that stopped cleanly left everything in the main file."""
    try:
        with open(path, "rb") as file:
            header = file.read(_HEADER_BYTES)
    except OSError:
        return False
    wal_mode = len(header) == _HEADER_BYTES and header[18] == header[19] == _WAL_FORMAT
    return wal_mode and not os.path.exists(path + "-wal")


def open_readonly(path: str) -> apsw.Connection:
    """A read-only connection for operator commands; never creates, writes or migrates.

    Nor does it leave files behind: SQLite would create the `-wal` and `-shm` files of a WAL
    database whose daemon is stopped, owned by whoever runs the command, and an operator's
    file may be one the daemon's user cannot open. With no `-wal` file the main file holds
    everything, and it only changes at a checkpoint of a WAL that does not exist yet, so it is
    read as immutable: no side files, no locks.
    """
    uri = "file:" + quote(os.path.abspath(path))
    if _wal_file_without_log(path):
        uri += "?immutable=1"
    try:
        conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
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
