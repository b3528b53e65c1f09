"""The hand-over from a decision to the sender: a lease on room for the decision's DMs.

Before ingest submits a decision it takes a `Lease` from the sender: room for up to
`granted` DMs, which the decision's transaction may claim for immediate delivery. The lease
has one owner, the decision, and ends exactly once: `hand_over` with the rows the committed
decision claimed, or `release` when the decision failed or never ran. Ending it twice is a
bug and raises, so the sender's count of promised room can neither leak nor go negative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from serbero.store.outbox import OutboxRow

__all__ = ["Lease", "LeaseEnded", "Settle"]

# How the sender takes a lease back: (lease, rows to deliver, rows were left in the outbox).
Settle = Callable[["Lease", Sequence[OutboxRow], bool], None]


class LeaseEnded(RuntimeError):
    """A lease was handed over or released a second time."""


class Lease:
    """Room for up to `granted` DMs, owned by one decision until it ends."""

    __slots__ = ("_settle", "granted")

    def __init__(self, granted: int, settle: Settle | None) -> None:
        self.granted = granted
        self._settle = settle

    @property
    def ended(self) -> bool:
        return self._settle is None

    def hand_over(self, rows: Sequence[OutboxRow], *, left_behind: bool) -> None:
        """The committed decision's claimed rows (at most `granted`) go out now;
        `left_behind` says it queued rows it did not claim (they wait for the poll)."""
        if len(rows) > self.granted:
            raise ValueError(f"{len(rows)} rows handed over on a lease of {self.granted}")
        self._end()(self, rows, left_behind)

    def release(self) -> None:
        """Give the room back unused: the decision failed, or was never submitted."""
        self._end()(self, (), False)

    def _end(self) -> Settle:
        settle = self._settle
        if settle is None:
            raise LeaseEnded("lease already handed over or released")
        self._settle = None
        return settle
