"""Bring a database up to `SCHEMA_VERSION`, one version per transaction (CORE-59).

Each pending version runs in its own transaction together with the `schema_version` row
that records it, so a crash mid-migration leaves the database at the previous version and
the next start re-runs only what is missing. A database newer than we know is used as is.
"""

from __future__ import annotations

import apsw
import msgspec

from serbero.log import get_logger
from serbero.store.errors import StoreFailure
from serbero.store.schema import MIGRATIONS, SCHEMA_VERSION, SCHEMA_VERSION_DDL
from serbero.store.transaction import transaction

log = get_logger("serbero.store")


class SchemaStatus(msgspec.Struct, frozen=True):
    """What `migrate` found and left: `found` before, `current` after (newer DBs: unchanged)."""

    found: int
    current: int


def read_schema_version(conn: apsw.Connection) -> int:
    """`MAX(version)` of `schema_version`, 0 for none; a failing read raises, never reads as 0."""
    try:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    except apsw.Error as exc:
        raise StoreFailure(f"cannot read schema_version: {exc}") from exc
    if row is None or row[0] is None:
        return 0
    return int(row[0])


def apply_version(conn: apsw.Connection, version: int) -> None:
    """Run one version's DDL and record it, atomically."""
    for number, apply in MIGRATIONS:
        if number == version:
            with transaction(conn):
                apply(conn)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            return
    raise StoreFailure(f"no migration for schema version {version}")


def migrate(conn: apsw.Connection) -> SchemaStatus:
    """Apply every version above the recorded one, in ascending order; re-running is a no-op."""
    conn.execute(SCHEMA_VERSION_DDL)
    found = read_schema_version(conn)
    if found > SCHEMA_VERSION:
        log.warning("schema_newer_than_supported", found=found, supported=SCHEMA_VERSION)
        return SchemaStatus(found=found, current=found)
    for number, _ in MIGRATIONS:
        if number > found:
            apply_version(conn, number)
    return SchemaStatus(found=found, current=SCHEMA_VERSION)
