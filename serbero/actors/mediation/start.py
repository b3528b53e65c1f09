"""The start actor: when to run a start attempt for which dispute (§3, Q-3, Q-18, BEY-15/20).

Two paths lead here. The ingest tells the actor about each new dispute with a
`StartRequest` sent without waiting (MED-30): a full channel only means the tick will find
the dispute instead, so detection and solver notification never slow down for mediation.
The tick (MED-31) lists every eligible dispute and tries those not already being tried.

Three rules keep attempts from piling up:
- one attempt per dispute at a time (the in-flight guard, Q-18, BEY-20);
- a failed attempt that deserves another try waits out a doubling backoff instead of
  repeating the verdict and the take every tick (Q-3, BEY-20);
- a take Mostro refused for this dispute is final until a new dispute event (BEY-15).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import msgspec
import trio

from serbero.actors.tracker import Tracker
from serbero.actors.tracker_requests import GetDispute, ListEligible
from serbero.log import get_logger
from serbero.reasoning.types import Role
from serbero.store.errors import StoreError
from serbero.store.sessions import StartTrigger

__all__ = [
    "BACKOFF_INITIAL_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "START_QUEUE_SIZE",
    "OpenResult",
    "Outcome",
    "StartActor",
    "StartAttempt",
    "StartRequest",
]

log = get_logger("serbero.mediation")

START_QUEUE_SIZE: Final = 256
# Open procedures running at once; the others wait their turn, already marked in flight. A
# burst of disputes otherwise starts every verdict, take and opening round together, on the
# daemon's one thread with the burst's own notifications: bench/notify.py --mediation
# measured 0.35x the burst throughput of mediation off that way, 0.91x with two at a time.
START_CONCURRENCY: Final = 2
# Core first: while the sender has notices in flight an attempt waits (polling, at most the
# max wait, so mediation never starves), so a burst's notifications go out before its
# verdicts, takes and opening rounds compete with them for the daemon's thread.
CORE_FIRST_POLL_SECONDS: Final = 0.02
CORE_FIRST_MAX_WAIT_SECONDS: Final = 5.0
BACKOFF_INITIAL_SECONDS: Final = 60.0
BACKOFF_MAX_SECONDS: Final = 3600.0

Outcome = Literal[
    "opened",
    "ready_for_summary",
    "already_open",
    "ineligible",
    "refused",
    "escalated_before_take",
    "take_refused",
    "failed",
]


class OpenResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one start attempt ended and what the start actor should do about it.

    `retry`: the dispute stays eligible and deserves another attempt after a backoff
    (a refused gate, a transient provider error, a take that timed out). `take_refused`
    is final for the dispute until a new dispute event (BEY-15). `trigger` names the
    escalation of `escalated_before_take`.
    """

    outcome: Outcome
    dispute_id: str
    session_id: str | None = None
    trigger: str | None = None
    detail: str = ""
    retry: bool = False


class StartRequest(msgspec.Struct, frozen=True):
    """The ingest saw a new dispute (MED-30)."""

    dispute_id: str


StartAttempt = Callable[[str, Role, StartTrigger], Awaitable[OpenResult]]


def _is_uuid(dispute_id: str) -> bool:
    try:
        uuid.UUID(dispute_id)
    except ValueError:
        return False
    return True


class _Backoff(msgspec.Struct):
    failures: int
    not_before: float


class StartActor:
    """Schedules start attempts; `attempt` is the open procedure (or a test's stand-in)."""

    def __init__(
        self,
        tracker: Tracker,
        attempt: StartAttempt,
        *,
        backoff_initial: float = BACKOFF_INITIAL_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        queue_size: int = START_QUEUE_SIZE,
        concurrency: int = START_CONCURRENCY,
        core_busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._tracker = tracker
        self._attempt = attempt
        self._core_busy = core_busy
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._send, self._receive = trio.open_memory_channel[StartRequest](queue_size)
        self._in_flight: set[str] = set()
        self._backoff: dict[str, _Backoff] = {}
        self._final: set[str] = set()
        self._slots = trio.CapacityLimiter(concurrency)

    def request(self, dispute_id: str) -> bool:
        """Ask for an event-driven start; never blocks. False: dropped, the tick covers it."""
        try:
            self._send.send_nowait(StartRequest(dispute_id))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    @property
    def in_flight(self) -> frozenset[str]:
        return frozenset(self._in_flight)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve event-driven requests until cancelled; each attempt runs as its own task."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for request in self._receive:
                # A new dispute event ends a refused take's finality (BEY-15).
                self._final.discard(request.dispute_id)
                self._backoff.pop(request.dispute_id, None)
                role = await self._role(request.dispute_id)
                if role is not None:
                    self._launch(nursery, request.dispute_id, role, "detected")

    async def tick(self) -> int:
        """MED-31: one attempt for every eligible dispute not in flight, backing off or
        refused; sequential. Returns how many attempts ran."""
        try:
            eligible = await self._tracker.ask(ListEligible())
        except StoreError as exc:
            log.warning("mediation_tick_list_failed", error=str(exc))
            return 0
        ran = 0
        for dispute in eligible:
            if not self._due(dispute.dispute_id):
                continue
            self._in_flight.add(dispute.dispute_id)
            try:
                await self._run_one(dispute.dispute_id, dispute.initiator_role, "tick_retry")
            finally:
                self._in_flight.discard(dispute.dispute_id)
            ran += 1
        return ran

    def _due(self, dispute_id: str) -> bool:
        if not _is_uuid(dispute_id) or dispute_id in self._in_flight:
            return False
        if dispute_id in self._final:
            return False
        backoff = self._backoff.get(dispute_id)
        return backoff is None or trio.current_time() >= backoff.not_before

    async def _role(self, dispute_id: str) -> Role | None:
        try:
            dispute = await self._tracker.ask(GetDispute(dispute_id))
        except StoreError as exc:
            log.warning("mediation_start_lookup_failed", dispute_id=dispute_id, error=str(exc))
            return None
        if dispute is None or dispute.initiator_role not in ("buyer", "seller"):
            return None
        return "buyer" if dispute.initiator_role == "buyer" else "seller"

    def _launch(
        self, nursery: trio.Nursery, dispute_id: str, role: Role, trigger: StartTrigger
    ) -> None:
        if not self._due(dispute_id):
            return
        self._in_flight.add(dispute_id)

        async def one() -> None:
            try:
                await self._run_one(dispute_id, role, trigger)
            finally:
                self._in_flight.discard(dispute_id)

        nursery.start_soon(one, name=f"mediation start {dispute_id}")

    async def _core_first(self) -> None:
        with trio.move_on_after(CORE_FIRST_MAX_WAIT_SECONDS):
            while self._core_busy():
                await trio.sleep(CORE_FIRST_POLL_SECONDS)

    async def _run_one(self, dispute_id: str, role: Role, trigger: StartTrigger) -> None:
        try:
            async with self._slots:
                await self._core_first()
                result = await self._attempt(dispute_id, role, trigger)
        except StoreError as exc:
            log.warning("mediation_start_failed", dispute_id=dispute_id, error=str(exc))
            result = OpenResult(
                outcome="failed", dispute_id=dispute_id, detail=str(exc), retry=True
            )
        if result.outcome == "take_refused":
            self._final.add(dispute_id)
            log.warning("mediation_take_refused", dispute_id=dispute_id, reason=result.detail)
        elif result.retry:
            previous = self._backoff.get(dispute_id)
            failures = 1 if previous is None else previous.failures + 1
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (failures - 1))
            self._backoff[dispute_id] = _Backoff(failures, trio.current_time() + delay)
            log.info(
                "mediation_start_retry_scheduled",
                dispute_id=dispute_id,
                outcome=result.outcome,
                retry_in_seconds=delay,
            )
        else:
            self._backoff.pop(dispute_id, None)
