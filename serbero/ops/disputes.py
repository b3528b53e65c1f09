"""`serbero disputes`: the dispute list, newest first, optionally one lifecycle state only.

`open` is a shorthand an operator on call wants most: every dispute not yet `resolved`.
"""

from __future__ import annotations

from typing import Final

from serbero.ops.database import ReadOnlyDatabase
from serbero.store.disputes import Dispute
from serbero.store.lifecycle import LifecycleState

__all__ = ["DEFAULT_LIMIT", "OPEN_FILTER", "STATE_FILTERS", "list_disputes"]

DEFAULT_LIMIT: Final = 50
OPEN_FILTER: Final = "open"
STATE_FILTERS: Final = (OPEN_FILTER, *(state.value for state in LifecycleState))

# `Dispute` is built positionally from each row: select exactly its fields, in order.
_COLUMNS: Final = ", ".join(Dispute.__struct_fields__)


def list_disputes(
    db: ReadOnlyDatabase, *, state: str | None = None, limit: int = DEFAULT_LIMIT
) -> tuple[Dispute, ...]:
    """Up to `limit` disputes by `detected_at` descending; `state` a lifecycle state or `open`."""
    where = ""
    args: tuple[object, ...] = ()
    if state == OPEN_FILTER:
        where = " WHERE lifecycle_state <> ?"
        args = (LifecycleState.RESOLVED.value,)
    elif state is not None:
        where = " WHERE lifecycle_state = ?"
        args = (state,)
    rows = db.conn.execute(
        f"SELECT {_COLUMNS} FROM disputes{where} ORDER BY detected_at DESC, rowid DESC LIMIT ?",
        (*args, max(1, limit)),
    )
    return tuple(Dispute(*row) for row in rows)
