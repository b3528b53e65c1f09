"""Who gets a mediation DM about a dispute, and queuing it (MED-112, MED-126/127, BEY-2).

Summaries and session escalation notices go to the dispute's assigned solver when Serbero
knows that solver, else to every configured solver. The assignment is read from the
`disputes` row inside the caller's transaction, so a DM decided together with its cause
is routed by the assignment as it stood at that moment.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from serbero.log import get_logger
from serbero.protocol.keys import normalise_public_key
from serbero.store.errors import UnknownDispute
from serbero.store.outbox import OutboxMessage, enqueue

__all__ = ["queue_notice", "solver_recipients"]

log = get_logger("serbero.mediation")


def solver_recipients(
    conn: apsw.Connection, dispute_id: str, configured: Sequence[str]
) -> tuple[str, ...]:
    """MED-112: the assigned solver alone when it is configured, else every configured key.

    `configured` are the solvers' stored keys (`SolverConfig.key`), in config order. A
    dispute assigned to a solver this daemon does not know is broadcast, with a warning.
    An empty result means nobody can be told. A missing dispute row raises `UnknownDispute`.
    """
    row = conn.execute(
        "SELECT assigned_solver FROM disputes WHERE dispute_id = ?", (dispute_id,)
    ).fetchone()
    if row is None:
        raise UnknownDispute(dispute_id)
    assigned = row[0]
    if assigned is None:
        return tuple(configured)
    wanted = normalise_public_key(str(assigned))
    for key in configured:
        if normalise_public_key(key) == wanted:
            return (key,)
    log.warning("mediation_assigned_solver_unknown", dispute_id=dispute_id, assigned_solver=wanted)
    return tuple(configured)


def queue_notice(
    conn: apsw.Connection,
    *,
    dispute_id: str,
    notif_type: str,
    cause: str,
    body: str,
    recipients: Sequence[str],
    now: int,
) -> tuple[int, ...]:
    """Queue the same `body` to every recipient through the outbox; outbox ids in recipient
    order. The caller owns the transaction that records the notice's cause (BEY-2)."""
    return enqueue(
        conn,
        dispute_id=dispute_id,
        notif_type=notif_type,
        cause=cause,
        messages=[OutboxMessage(solver_pubkey=key, body=body) for key in recipients],
        now=now,
    )
