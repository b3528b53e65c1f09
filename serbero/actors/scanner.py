"""The handoff scanner: the escalation dispatcher's timer and its pending-handoff scan.

Every `dispatch_interval_seconds` it asks the tracker for pending handoffs page by page,
oldest first, until a page comes back short, so handoffs that stay pending forever (resolved
disputes, unroutable ones) never hide newer ones (ESC-14, BEY-14). It feeds the gate one
handoff at a time and waits for each to be reported finished, commit included, before the
next one (ESC-15); the next cycle starts only after the whole batch is done, so a handoff in
flight is never scanned twice.
"""

from __future__ import annotations

from collections import Counter

import msgspec
import trio

from serbero.actors.gate import HandoffDone, HandoffOutcome
from serbero.actors.tracker import Tracker
from serbero.actors.tracker_requests import ScanPendingHandoffs
from serbero.log import get_logger
from serbero.store.errors import StoreError
from serbero.store.escalation import HANDOFF_PAGE_SIZE, HandoffRow

__all__ = ["CycleReport", "next_deadline", "run", "scan_cycle"]

log = get_logger("serbero.escalation")


class CycleReport(msgspec.Struct, frozen=True):
    """What one cycle examined: pages fetched and how many handoffs ended with each outcome."""

    pages: int
    outcomes: dict[HandoffOutcome, int]

    @property
    def examined(self) -> int:
        """Handoffs examined: every one ends with exactly one outcome."""
        return sum(self.outcomes.values())


async def scan_cycle(
    tracker: Tracker,
    handoffs: trio.MemorySendChannel[HandoffRow],
    done: trio.MemoryReceiveChannel[HandoffDone],
) -> CycleReport:
    """One cycle: every pending handoff, in ascending id order, each finished before the next.

    A failing scan raises its `StoreError`; handoffs already processed keep their outcomes.
    """
    outcomes: Counter[HandoffOutcome] = Counter()
    pages = 0
    after_id = 0
    while True:
        page = await tracker.ask(ScanPendingHandoffs(after_id=after_id))
        pages += 1
        for handoff in page:
            await handoffs.send(handoff)
            finished = await done.receive()
            outcomes[finished.outcome] += 1
        if len(page) < HANDOFF_PAGE_SIZE:
            return CycleReport(pages=pages, outcomes=dict(outcomes))
        after_id = page[-1].id


def next_deadline(deadline: float, interval: float, now: float) -> float:
    """ESC-9: the next slot on the grid; after an overrun, right now, restarting the grid."""
    following = deadline + interval
    return now if now > following else following


async def run(
    tracker: Tracker,
    handoffs: trio.MemorySendChannel[HandoffRow],
    done: trio.MemoryReceiveChannel[HandoffDone],
    *,
    interval_seconds: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a cycle on every slot of the interval grid, the first one interval after start.

    A failed scan is logged and the next slot awaited (ESC-10); cancellation stops it. While
    the database is unavailable a slot is skipped: the scan would only wait behind the
    held-back decisions, and the next slot after the outage finds every handoff (BEY-25).
    """
    async with handoffs, done:
        deadline = trio.current_time() + interval_seconds
        task_status.started()
        while True:
            await trio.sleep_until(deadline)
            if not tracker.outage.available:
                log.debug("phase4_dispatcher_cycle_skipped", reason="database unavailable")
                deadline = next_deadline(deadline, interval_seconds, trio.current_time())
                continue
            try:
                report = await scan_cycle(tracker, handoffs, done)
            except StoreError as exc:
                log.error("phase4_dispatcher_cycle_failed", error=str(exc))
            else:
                log.debug(
                    "phase4_dispatcher_tick",
                    examined=report.examined,
                    pages=report.pages,
                    outcomes={str(k): v for k, v in report.outcomes.items()},
                )
            deadline = next_deadline(deadline, interval_seconds, trio.current_time())
