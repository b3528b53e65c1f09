"""The sender: works the notification outbox, delivering decided DMs and recording outcomes.

`OutboxSender` is the actor that works the notification outbox (BEY-2, BEY-22): decisions
are recorded by ingest and the timer, it delivers them concurrently (at most
`SENDER_CONCURRENCY` at once) through the `Courier` it is given, and completes each row,
which writes the `notifications` attempt row and the lifecycle bookkeeping. Failed
publishes are retried by the store's backoff (BEY-3); an unparsable key fails once, for
good (CORE-37).

Two ways in. The hot path: before ingest submits a decision it `reserve`s room (a `Lease`),
the decision's transaction claims that many of its own rows, and the lease hands them over
once committed; the DMs go out with no further transaction, and a crash re-sends them like any
claimed row. The outbox poll (`ClaimOutbox`) serves everything else: retries, rows decided
while the sender was full, the timer's and escalation's DMs, recovery after a restart.
While rows wait in the outbox, nothing takes the hot path, so they go out oldest first.
Outcomes are recorded in batches (`CompleteOutboxes`): one commit for every DM that
finished meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec
import trio

from serbero.actors.delivery import SEND_FAILED_PREFIX, Courier, Delivery, DmIdentity
from serbero.actors.handover import Lease
from serbero.actors.relay_pool import RelayPool
from serbero.actors.tracker import UNTIL_ANSWERED, Tracker
from serbero.actors.tracker_requests import (
    ClaimOutbox,
    CompleteOutboxes,
    ExpediteRetries,
    NextOutboxDue,
)
from serbero.clock import WallClock
from serbero.config import SolverConfig
from serbero.log import get_logger
from serbero.protocol.keys import normalise_public_key
from serbero.store.errors import StoreError
from serbero.store.notifications import NotifType
from serbero.store.outbox import OutboxCompletion, OutboxOutcome, OutboxRow

__all__ = [
    "COMPLETION_LINGER",
    "IDLE_RECHECK_SECONDS",
    "SENDER_CONCURRENCY",
    "Doorbell",
    "OutboxSender",
    "SenderStats",
]

log = get_logger("serbero.sender")

# DMs being published at once. Each one is a wrap built and sent to every relay; the store
# hands out at most one row per (dispute, solver) pair at a time, so per-pair order holds
# whatever this is (BEY-22). Bounded so a slow relay slows the sender, not memory.
SENDER_CONCURRENCY: Final = 64
# Outcomes recorded in one `CompleteOutboxes` request at most (the tracker's batch size).
COMPLETION_BATCH: Final = 64
# A finished DM waits this long for others before its outcome is recorded. The DMs are out
# already, only their bookkeeping waits: one commit then covers a decision's whole fan-out
# (OKs to the first and the last DM come a few ms apart) and, in a burst, many more outcomes
# a commit. Recorded at once, the first OK's commit ran on the SQLite thread while the
# relay and the solvers' clients were busy with the other DMs; waiting 5 ms cut the
# daemon's CPU in a 300-dispute burst from 0.71-0.80 to 0.63-0.67 ms a DM.
COMPLETION_LINGER: Final = 0.005
# Even with no ring and nothing due, look at the outbox this often: it bounds the delay of
# anything a lost ring or a vanished claim could otherwise hold up.
IDLE_RECHECK_SECONDS: Final = 30.0
# A row that became due between the claim and the "when next?" query: look again soon.
RACE_RECHECK_SECONDS: Final = 0.1
# After the store failed to hand out rows (locked by another writer, ...), wait this long.
STORE_RETRY_SECONDS: Final = 1.0


class Doorbell:
    """The sender's "work available" signal. Rings coalesce and are never lost: `reset`
    comes before the sender looks for work, so a ring during the look wakes the next wait."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def ring(self) -> None:
        self._event.set()

    def reset(self) -> None:
        if self._event.is_set():
            self._event = trio.Event()

    async def wait(self, timeout: float) -> None:
        """Return at the next ring (or at once if one came since `reset`), or after `timeout`."""
        with trio.move_on_after(timeout):
            await self._event.wait()


def dm_identity(row: OutboxRow) -> DmIdentity:
    """Which DM a row is, so each attempt builds the same wrap (BEY-26): the row itself,
    dated when it was decided; an escalation DM retried here keeps its handoff's identity,
    that of its first attempt."""
    if row.handoff_event_id is not None:
        return DmIdentity("handoff", row.handoff_event_id, row.created_at)
    return DmIdentity("outbox", row.id, row.created_at)


def _log_delivered(row: OutboxRow) -> None:
    """The reference's log event names per notif_type (CORE-57); BEY-5 notices and the rest get
    names of our own."""
    fields = {
        "dispute_id": row.dispute_id,
        "solver": row.solver_pubkey,
        "notif_type": row.notif_type,
    }
    if row.notif_type == NotifType.INITIAL:
        log.info("notification_sent", **fields)
    elif row.notif_type == NotifType.RENOTIFICATION:
        log.info("renotification_sent", **fields)
    elif row.notif_type == NotifType.ASSIGNMENT:
        log.info("assignment_notification_sent", **fields)
    elif row.notif_type == NotifType.RESOLUTION:
        log.info("resolution_notice_sent", **fields)
    elif row.notif_type == NotifType.MEDIATION_RESOLUTION_REPORT:
        log.info("solver_final_resolution_report_sent", **fields)
    else:
        log.info("outbox_notification_sent", **fields)


def _log_failed(row: OutboxRow, delivery: Delivery, completion: OutboxCompletion) -> None:
    """`outcome` is the row's state afterwards: `pending` (retried at `retry_at`) or final."""
    fields = {
        "dispute_id": row.dispute_id,
        "solver": row.solver_pubkey,
        "notif_type": row.notif_type,
        "error": delivery.error,
        "attempts": row.attempts,
        "outcome": completion.state,
        "retry_at": completion.next_attempt_at,
    }
    if row.notif_type == NotifType.INITIAL:
        log.error("notification_failed", **fields)
    elif row.notif_type == NotifType.RENOTIFICATION:
        log.warning("renotification_failed", **fields)
    elif row.notif_type == NotifType.ASSIGNMENT:
        log.warning("assignment_notification_failed", **fields)
    elif row.notif_type == NotifType.RESOLUTION:
        log.warning("resolution_notice_failed", **fields)
    elif row.notif_type == NotifType.MEDIATION_RESOLUTION_REPORT:
        log.warning("solver_final_resolution_report_failed", **fields)
    else:
        log.warning("outbox_notification_failed", **fields)


class SenderStats:
    """The sender's running figures; written by the sender only, read by the health snapshot."""

    __slots__ = ("delivered", "failed", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        self.delivered = 0
        self.failed = 0


# A finished DM on its way to be recorded.
_Outcome = tuple[OutboxRow, Delivery]


class _Running(msgspec.Struct, frozen=True):
    """A running sender's nursery (deliveries run in it) and where they report."""

    nursery: trio.Nursery
    outcomes: trio.MemorySendChannel[_Outcome]


class OutboxSender:
    """Works the notification outbox: rows handed over by decisions (`reserve`,
    `hand_over`) and rows claimed from the outbox, delivered concurrently (bounded), their
    outcomes recorded in batches. The claim loop wakes on a ring, when rows wait for a free
    slot, and when the earliest retry falls due; never polls faster than that (no busy loop).
    """

    def __init__(
        self,
        tracker: Tracker,
        pool: RelayPool,
        courier: Courier,
        solvers: Sequence[SolverConfig],
        *,
        doorbell: Doorbell,
        stats: SenderStats,
        wall_clock: WallClock,
        concurrency: int = SENDER_CONCURRENCY,
    ) -> None:
        self._tracker = tracker
        # Asked only when relay links come up (`_watch_relays`); DMs go through the courier.
        self._pool = pool
        self._courier = courier
        self._solvers: dict[str, SolverConfig] = {}
        for solver in solvers:
            self._solvers.setdefault(solver.key, solver)
        self._doorbell = doorbell
        self.stats = stats
        self._wall_clock = wall_clock
        self._concurrency = max(1, concurrency)
        self._idle = Doorbell()
        # Slots promised to decisions not answered yet, and to the claim being made.
        self._reserved = 0
        # Rows may be waiting in the outbox for a slot: the hot path stays closed until a
        # claim finds no more, so the oldest go first.
        self._waiting = True
        # Where deliveries run and report, while `run` runs.
        self._running: _Running | None = None

    # --- the hot path (called by the deciding actor, on the same Trio thread) -----------------

    def reserve(self, count: int) -> Lease:
        """A lease on room for up to `count` DMs that the decision about to be submitted
        may claim itself; room for none while the sender is not running or rows wait in
        the outbox. Its owner ends it once: `hand_over` the claimed rows, or `release`."""
        granted = 0
        if self._running is not None and not self._waiting:
            granted = max(0, min(count, self._free()))
        self._reserved += granted
        return Lease(granted, self._settle)

    def _settle(self, lease: Lease, rows: Sequence[OutboxRow], left_behind: bool) -> None:
        """A lease ends: deliver the rows its committed decision claimed; `left_behind`
        says the decision queued rows it did not claim."""
        self._reserved -= lease.granted
        running = self._running
        if running is not None:
            for row in rows:
                self._start(running, row)
        # With no sender running the claims are the restart's to release (RequeueInFlight
        # runs after every decision submitted before the crash, the tracker being FIFO).
        if left_behind or (rows and running is None):
            self._waiting = True
            self._doorbell.ring()

    def _free(self) -> int:
        return self._concurrency - self.stats.in_flight - self._reserved

    def _start(self, running: _Running, row: OutboxRow) -> None:
        self.stats.in_flight += 1
        running.nursery.start_soon(self._deliver, row, running.outcomes)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled. Claims still held when cancelled are released by the next
        start's `RequeueInFlight` (BEY-2)."""
        # Nothing of an earlier run is in flight any more: its tasks ended with its nursery.
        self.stats.in_flight = 0
        self._waiting = True
        send, receive = trio.open_memory_channel[_Outcome](self._concurrency)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._record_outcomes, receive)
                nursery.start_soon(self._watch_relays)
                nursery.start_soon(self._prepare_spares)
                self._running = _Running(nursery, send)
                await self._claim_loop(self._running)
        finally:
            self._running = None

    async def _claim_loop(self, running: _Running) -> None:
        while True:
            self._doorbell.reset()
            free = self._free()
            if free <= 0:
                # Every slot busy: a batch of outcomes rings while rows wait.
                await self._doorbell.wait(IDLE_RECHECK_SECONDS)
                continue
            try:
                claimed = await self._claim(running, free)
                if claimed == free:
                    continue
                timeout = await self._idle_timeout()
            except StoreError as exc:
                # A busy or failing store is a condition, not a crash: try again soon.
                log.warning("outbox_claim_failed", error=str(exc))
                timeout = STORE_RETRY_SECONDS
            await self._doorbell.wait(timeout)

    async def _claim(self, running: _Running, free: int) -> int:
        """Claim up to `free` due rows and start them; how many there were."""
        # The claim's slots are taken until its rows are in flight.
        self._reserved += free
        try:
            claim = await self._tracker.ask(ClaimOutbox(limit=free), timeout=UNTIL_ANSWERED)
        finally:
            self._reserved -= free
        for row in claim.rows:
            self._start(running, row)
        if claim.abandoned:
            log.debug("outbox_abandoned", count=claim.abandoned)
        self._waiting = len(claim.rows) == free
        return len(claim.rows)

    async def _watch_relays(self) -> None:
        """Each time a relay link comes (back) up, whatever waits out a retry backoff is tried
        again at once. Most of it failed for want of a relay, and would otherwise wait up to
        its whole backoff after the relay came back, be the drop a second long or the
        outage an hour; a DM a relay refused for another reason is just refused once more."""
        seen = self._pool.links_opened()
        while True:
            seen = await self._pool.wait_link_opened(seen)
            try:
                count = await self._tracker.ask(ExpediteRetries(), timeout=UNTIL_ANSWERED)
            except StoreError as exc:
                log.warning("outbox_expedite_failed", error=str(exc))
                continue
            if count:
                log.info("outbox_retries_expedited", count=count)
                self._doorbell.ring()

    async def _prepare_spares(self) -> None:
        """Keep one-time wrap keys ready, one at a time and only while no DM is in flight:
        the work a burst would otherwise do on its critical path is done in the quiet
        before it (each key still wraps one DM only, PROTO-31)."""
        while True:
            self._idle.reset()
            if self.stats.in_flight == 0 and self._courier.prepare_spare():
                await trio.lowlevel.checkpoint()
                continue
            await self._idle.wait(IDLE_RECHECK_SECONDS)

    async def _idle_timeout(self) -> float:
        """Seconds until the earliest claimable row falls due (capped)."""
        due = await self._tracker.ask(NextOutboxDue(), timeout=UNTIL_ANSWERED)
        if due is None:
            return IDLE_RECHECK_SECONDS
        wait = due - self._wall_clock()
        if wait <= 0:
            return RACE_RECHECK_SECONDS
        return float(min(wait, IDLE_RECHECK_SECONDS))

    def _solver(self, pubkey: str) -> SolverConfig:
        solver = self._solvers.get(pubkey) or self._solvers.get(normalise_public_key(pubkey))
        if solver is None:
            # Decided while the solver was configured (the config changed since): the
            # decision stands, the key is parsed as any configured one would be.
            solver = SolverConfig.from_text(pubkey)
        self._solvers[pubkey] = solver
        return solver

    # --- one DM, and the outcomes ---------------------------------------------------------

    async def _deliver(self, row: OutboxRow, outcomes: trio.MemorySendChannel[_Outcome]) -> None:
        try:
            delivery = await self._courier.deliver(
                self._solver(row.solver_pubkey), row.body, dm_identity(row)
            )
        except Exception as exc:
            # One row must never take the sender down (and with it every other DM):
            # it is recorded as a failed attempt and retried with backoff like any other.
            log.error(
                "dm_delivery_crashed",
                dispute_id=row.dispute_id,
                solver=row.solver_pubkey,
                error=repr(exc),
            )
            delivery = Delivery(ok=False, error=f"{SEND_FAILED_PREFIX}{exc!r}", retryable=True)
        await outcomes.send((row, delivery))

    async def _record_outcomes(self, outcomes: trio.MemoryReceiveChannel[_Outcome]) -> None:
        """Record finished DMs, all that finished meanwhile in one request; a slot is free
        again once its row's outcome is recorded."""
        async for first in outcomes:
            # The rest of the fan-out is a few ms behind: one commit for all of it.
            await trio.sleep(COMPLETION_LINGER)
            batch = [first]
            while len(batch) < COMPLETION_BATCH:
                try:
                    batch.append(outcomes.receive_nowait())
                except trio.WouldBlock:
                    break
            request = CompleteOutboxes(
                tuple(
                    OutboxOutcome(row.id, d.ok, error=d.error, retry=d.retryable)
                    for row, d in batch
                )
            )
            results: Sequence[OutboxCompletion | StoreError]
            try:
                answered = await self._tracker.ask(request, timeout=UNTIL_ANSWERED)
            except StoreError as exc:
                results = (exc,) * len(batch)
            else:
                results = answered
            # Look at the outbox again at once when rows wait there or a completion changed
            # what is due: it let a row through, scheduled a retry, or queued follow-ups.
            ring = self._waiting
            for (row, delivery), result in zip(batch, results, strict=True):
                if isinstance(result, OutboxCompletion):
                    self._completed(row, delivery, result)
                    ring = (
                        ring
                        or result.unblocks
                        or result.next_attempt_at is not None
                        or bool(result.queued)
                    )
                else:
                    _log_record_failed(row, delivery, result)
            self.stats.in_flight -= len(batch)
            if ring:
                self._doorbell.ring()
            if self.stats.in_flight == 0:
                self._idle.ring()

    def _completed(self, row: OutboxRow, delivery: Delivery, completion: OutboxCompletion) -> None:
        if delivery.ok:
            self.stats.delivered += 1
            _log_delivered(row)
        else:
            self.stats.failed += 1
            _log_failed(row, delivery, completion)
        transition = completion.transition
        if transition is not None:
            log.info(
                "state_transition",
                dispute_id=transition.dispute_id,
                **{"from": transition.from_state, "to": transition.to_state},
                trigger=transition.trigger,
            )


def _log_record_failed(row: OutboxRow, delivery: Delivery, exc: StoreError) -> None:
    """CORE-38: the DM outcome stands; the claim lapses and the row is tried again."""
    log.warning(
        "notification_record_failed",
        dispute_id=row.dispute_id,
        solver_pubkey=row.solver_pubkey,
        status="sent" if delivery.ok else "failed",
        notif_type=row.notif_type,
        error=str(exc),
    )
