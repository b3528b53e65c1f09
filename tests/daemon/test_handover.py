"""The decision -> sender lease: ends exactly once, never hands over more than it holds."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from serbero.actors.handover import Lease, LeaseEnded
from serbero.store.outbox import OutboxRow


class Settled:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bool]] = []

    def __call__(self, lease: Lease, rows: Sequence[OutboxRow], left_behind: bool) -> None:
        self.calls.append((lease.granted, len(rows), left_behind))


def test_a_lease_ends_once_by_hand_over_or_release() -> None:
    settled = Settled()
    handed = Lease(2, settled)
    handed.hand_over((), left_behind=True)
    assert handed.ended
    with pytest.raises(LeaseEnded):
        handed.release()
    released = Lease(3, settled)
    assert not released.ended
    released.release()
    with pytest.raises(LeaseEnded):
        released.hand_over((), left_behind=False)
    assert settled.calls == [(2, 0, True), (3, 0, False)]


def test_a_lease_refuses_more_rows_than_it_holds() -> None:
    settled = Settled()
    lease = Lease(0, settled)
    row = OutboxRow(
        id=1,
        dispute_id="d-1",
        solver_pubkey="ab" * 32,
        notif_type="initial",
        body="b",
        cause="ev-1",
        created_at=0,
        attempts=1,
        handoff_event_id=None,
    )
    with pytest.raises(ValueError, match="1 rows handed over on a lease of 0"):
        lease.hand_over((row,), left_behind=False)
    assert settled.calls == [] and not lease.ended
