"""Who holds the database's write lock, read from the kernel's lock table (BEY-25, BEY-29).

While another process (an operator's `sqlite3` in `BEGIN EXCLUSIVE`, a backup tool) holds
the write lock, the daemon's decisions wait for it. `serbero status` cannot learn that from
the health record, which the daemon cannot write meanwhile, so it looks at the lock itself.
In WAL mode SQLite's write lock is a POSIX record lock on one byte of the `-shm` file, and
Linux lists every such lock in `/proc/locks` with the process holding it. Reading that table
opens nothing of the database's: probing through a descriptor of the `-shm` file instead
would drop every lock the probing process holds on it when the descriptor closes (POSIX
record-lock semantics), SQLite's own included. The daemon takes the lock for a few
milliseconds per commit, so only a holder seen throughout a short window counts.
"""

from __future__ import annotations

import os
import time
from typing import Final

__all__ = ["LOCK_TABLE", "SAMPLES", "WAL_WRITE_LOCK_OFFSET", "write_lock_holder"]

LOCK_TABLE: Final = "/proc/locks"
# SQLite's unix VFS: the WAL write lock is the first lock byte of the shared-memory file.
WAL_WRITE_LOCK_OFFSET: Final = 120
SAMPLES: Final = 5
SAMPLE_INTERVAL_SECONDS: Final = 0.1


def _holder(file_id: str) -> int | None:
    """The pid of a POSIX write lock covering the write-lock byte of the file `file_id`
    (`major:minor:inode` as the lock table writes it), or None."""
    with open(LOCK_TABLE, encoding="ascii", errors="replace") as table:
        for line in table:
            fields = line.split()
            # id: POSIX ADVISORY WRITE pid dev:inode start end (waiters carry an extra "->")
            if len(fields) != 8 or fields[1] != "POSIX" or fields[3] != "WRITE":
                continue
            if fields[5] != file_id:
                continue
            start, end = fields[6], fields[7]
            if int(start) <= WAL_WRITE_LOCK_OFFSET and (
                end == "EOF" or int(end) >= WAL_WRITE_LOCK_OFFSET
            ):
                return int(fields[4])
    return None


def write_lock_holder(db_path: str) -> int | None:
    """The process id holding `db_path`'s write lock throughout the sampling window, or
    None: the lock is free (or only taken briefly), the database is not in WAL mode with a
    live `-shm` file, or the kernel's lock table cannot be read (not Linux)."""
    try:
        shm = os.stat(f"{db_path}-shm")
        file_id = f"{os.major(shm.st_dev):02x}:{os.minor(shm.st_dev):02x}:{shm.st_ino}"
        holder = _holder(file_id)
        for _ in range(SAMPLES - 1):
            if holder is None:
                return None
            time.sleep(SAMPLE_INTERVAL_SECONDS)
            if _holder(file_id) != holder:
                return None
        return holder
    except (OSError, ValueError):
        return None
