"""What the sender needs from the database before its first DM (BEY-26).

Gift wraps are derived from our secret, a salt and the DM's outbox id. The salt is drawn
once per database and kept in `serbero_daemon_health` (key `wrap_salt`): a database started
afresh numbers its outbox from 1 again, and its wraps must not repeat an older database's
one-time keys. The last outbox id (and whom it was for) tells the sender which ids come
next, and for whom, so their keys can be made before the DMs exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import apsw
import msgspec

from serbero.store.transaction import transaction

KEY_WRAP_SALT: Final = "wrap_salt"
SALT_BYTES: Final = 16


class SendingOrigin(msgspec.Struct, frozen=True):
    """The database's wrap salt, the highest outbox id handed out so far (0: none), and
    the solver that row is for (None when it is gone)."""

    salt: bytes
    last_outbox_id: int
    last_outbox_solver: str | None = None


def sending_origin(
    conn: apsw.Connection, *, now: int, rand: Callable[[int], bytes]
) -> SendingOrigin:
    """Read the salt, drawing and storing it the first time; and the last outbox id."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO serbero_daemon_health (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO NOTHING",
            (KEY_WRAP_SALT, rand(SALT_BYTES).hex(), now),
        )
        row = conn.execute(
            "SELECT value FROM serbero_daemon_health WHERE key = ?", (KEY_WRAP_SALT,)
        ).fetchone()
        # AUTOINCREMENT's counter: ids are never handed out twice, even after deletes.
        last = conn.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'notification_outbox'),"
            " (SELECT MAX(id) FROM notification_outbox), 0)"
        ).fetchone()
        last_id = 0 if last is None else int(last[0])
        solver = conn.execute(
            "SELECT solver_pubkey FROM notification_outbox WHERE id = ?", (last_id,)
        ).fetchone()
    # The stored text is the salt as it is: nothing to parse, nothing to reject.
    salt = str(row[0]).encode() if row is not None else b""
    return SendingOrigin(
        salt=salt,
        last_outbox_id=last_id,
        last_outbox_solver=None if solver is None else str(solver[0]),
    )
