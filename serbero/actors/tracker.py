"""The tracker: the only owner of the database connection (design.md, "The tracker").

Other actors never touch SQLite; they `await tracker.ask(SomeRequest(...))`. Each request is
a frozen struct naming one logical store step; the tracker runs it as one transaction and
answers every request: with the step's result, or by raising the typed `StoreError` the
step failed with (never silence, never a dead tracker).

SQLite runs off the Trio thread (`offload=True`, the default): the serving task hands each
batch to one dedicated, long-lived thread, so the event loop never waits on a disk flush.
Requests that queue up while a batch runs form the next batch, which commits once (group
commit: one fsync for many steps) while each request still runs in its own savepoint and
gets its own answer. A request answered with a result was committed; one answered with an
error left nothing behind. Requests run strictly in inbox order; `submit` lets a caller
keep several in flight without giving up that order.

`offload=False` runs the same batches on the Trio thread: for tests under
`autojump_clock`, whose virtual time would otherwise jump past `ask` timeouts while a
worker thread holds the answer.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, Generic, TypeVar, cast

import apsw
import msgspec
import trio

from serbero.clock import WallClock
from serbero.log import get_logger
from serbero.protocol.texts import (
    ReportClassification,
    ReportSession,
    TextError,
    mediation_resolution_report,
)
from serbero.store.connection import open_database
from serbero.store.disputes import (
    AssignmentResult,
    DetectionResult,
    Dispute,
    DisputeEvent,
    RenotificationResult,
    ResolutionResult,
    Since,
    UnattendedDispute,
    compute_since,
    enqueue_renotification,
    get_dispute,
    list_unattended,
    record_assignment,
    record_detected,
    record_resolution,
)
from serbero.store.errors import StoreError, StoreFailure, UnknownOutboxRow
from serbero.store.escalation import (
    HANDOFF_PAGE_SIZE,
    DispatchRecord,
    HandoffRow,
    ParseFailure,
    RecipientOutcome,
    pending_handoffs_page,
    record_dispatch,
    record_parse_failed,
    record_superseded,
    record_unroutable,
)
from serbero.store.health import RelayHealth, write_health
from serbero.store.lifecycle import TransitionResult, apply_transition
from serbero.store.mediation import (
    ReportFacts,
    record_resolution_reported,
    resolution_report_facts,
)
from serbero.store.migrations import SchemaStatus
from serbero.store.notifications import NotificationRecord, NotifType, record_notifications
from serbero.store.outbox import (
    OutboxClaim,
    OutboxCompletion,
    OutboxMessage,
    OutboxOutcome,
    OutboxRow,
    claim_due,
    claim_new,
    complete_many,
    count_pending,
    enqueue,
    enqueue_notifications,
    expedite_retries,
    next_due_at,
    requeue_in_flight,
)
from serbero.store.transaction import transaction

log = get_logger("serbero.tracker")

ASK_TIMEOUT_SECONDS: Final = 10.0
INBOX_SIZE: Final = 256
MAX_BATCH: Final = 64

R = TypeVar("R")
T = TypeVar("T")


class TrackerClosed(StoreError):
    """The tracker is shut down (or shutting down); the request was not run."""


class TrackerTimeout(StoreError):
    """No answer within the caller's timeout; the step may still commit later."""


class Context(msgspec.Struct, frozen=True):
    """What a store step may use besides the connection: the batch's wall-clock second and
    the injected randomness (PROTO-1)."""

    now: int
    rand: Callable[[int], bytes]


class Request(msgspec.Struct, Generic[R], frozen=True):
    """Base of every tracker request; `R` is the answer type, `apply` the store step.

    Every store step that writes is itself one transaction, so a request needs nothing
    around it when it runs alone; inside a batch it also gets its own savepoint.
    """

    def apply(self, conn: apsw.Connection, ctx: Context) -> R:
        """Run the step on the tracker's connection; every concrete request overrides this."""
        raise TypeError(f"{type(self).__name__} names no store step")


class GetDispute(Request[Dispute | None], frozen=True):
    """The dispute's row, or None (ESC-3 lookup, CORE-47/49 loads)."""

    dispute_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> Dispute | None:
        return get_dispute(conn, self.dispute_id)


class ComputeSince(Request[Since], frozen=True):
    """The dispute subscription's `since` (CORE-20/21), against the tracker's wall clock."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> Since:
        return compute_since(conn, ctx.now)


class RecordDetected(Request[DetectionResult], frozen=True):
    """A new `initiated` dispute and its initial DMs (one message per solver), or a duplicate.

    `claim`: how many of the DMs the sender has room for right now; that many are claimed
    in the deciding transaction and come back in `claimed` (the outbox's hot path).
    """

    event: DisputeEvent
    messages: tuple[OutboxMessage, ...] = ()
    claim: int = 0

    def apply(self, conn: apsw.Connection, ctx: Context) -> DetectionResult:
        return record_detected(conn, self.event, self.messages, ctx.now, claim=self.claim)


class RecordAssignment(Request[AssignmentResult], frozen=True):
    """An `in-progress` event: take the dispute and queue the assignment DMs (CORE-47);
    `claim` as for `RecordDetected`."""

    event: DisputeEvent
    assigned_solver: str | None
    messages: tuple[OutboxMessage, ...] = ()
    claim: int = 0

    def apply(self, conn: apsw.Connection, ctx: Context) -> AssignmentResult:
        return record_assignment(
            conn, self.event, self.assigned_solver, self.messages, ctx.now, claim=self.claim
        )


class RecordResolution(Request[ResolutionResult], frozen=True):
    """A terminal event: resolve, supersede live mediation, queue closing notices (CORE-49)."""

    event: DisputeEvent
    messages: tuple[OutboxMessage, ...] = ()

    def apply(self, conn: apsw.Connection, ctx: Context) -> ResolutionResult:
        return record_resolution(conn, self.event, self.messages, ctx.now)


class ResolutionOutcome(msgspec.Struct, frozen=True):
    """What `ResolveDispute` committed: the resolution itself, and the CORE-49 step 5
    report (queued, or why it could not be written). `claimed`: notices and report rows
    claimed for immediate delivery."""

    resolution: ResolutionResult
    report_outbox_ids: tuple[int, ...] = ()
    reported: bool = False
    report_error: str | None = None
    claimed: tuple[OutboxRow, ...] = ()


def _report_text(dispute_id: str, final_status: str, facts: ReportFacts) -> tuple[str, str]:
    """The report's DM body and narrative (MED-143/144); TextError for unprintable data."""
    session = (
        None
        if facts.session_id is None or facts.session_state is None
        else ReportSession(session_id=facts.session_id, state=facts.session_state)
    )
    classification = (
        None
        if facts.classification is None or facts.confidence is None
        else ReportClassification(label=facts.classification, confidence=facts.confidence)
    )
    report = mediation_resolution_report(
        dispute_id=dispute_id,
        final_status=final_status,
        session=session,
        classification=classification,
        outbound_party_messages=facts.outbound_party_messages,
        no_session_reason=facts.no_session_reason,
    )
    return report.body, report.narrative


class ResolveDispute(Request[ResolutionOutcome], frozen=True):
    """CORE-49 steps 3-5 as one transaction: resolve (BEY-4/5 included, via `RecordResolution`'s
    step) and, when the dispute has mediation context, queue the `mediation_resolution_report`
    to `report_recipients` with its `resolved_externally_reported` event (MED-142..145).

    The report is decided with its cause, like every DM (BEY-2). Mediation data that cannot
    be printed in a body (TextError) skips the report but never blocks the resolution.
    """

    event: DisputeEvent
    notices: tuple[OutboxMessage, ...] = ()
    report_recipients: tuple[str, ...] = ()
    claim: int = 0

    def apply(self, conn: apsw.Connection, ctx: Context) -> ResolutionOutcome:
        event = self.event
        with transaction(conn):
            resolution = record_resolution(conn, event, self.notices, ctx.now, claim=self.claim)
            claimed = resolution.claimed
            if resolution.outcome != "resolved" or not resolution.has_mediation_context:
                return ResolutionOutcome(resolution=resolution, claimed=claimed)
            facts = resolution_report_facts(conn, event.dispute_id)
            try:
                body, narrative = _report_text(event.dispute_id, event.status, facts)
            except TextError as exc:
                return ResolutionOutcome(
                    resolution=resolution, report_error=str(exc), claimed=claimed
                )
            ids = enqueue(
                conn,
                dispute_id=event.dispute_id,
                notif_type=NotifType.MEDIATION_RESOLUTION_REPORT,
                cause=event.event_id,
                messages=[OutboxMessage(solver, body) for solver in self.report_recipients],
                now=ctx.now,
            )
            record_resolution_reported(
                conn,
                event.dispute_id,
                facts,
                final_status=event.status,
                narrative=narrative,
                now=ctx.now,
            )
            claimed += claim_new(conn, ids, ctx.now, self.claim - len(claimed))
        return ResolutionOutcome(
            resolution=resolution, report_outbox_ids=ids, reported=True, claimed=claimed
        )


class ApplyTransition(Request[TransitionResult], frozen=True):
    """One CORE-43 lifecycle change; `InvalidTransition` / `UnknownDispute` otherwise."""

    dispute_id: str
    to_state: str
    trigger: str | None

    def apply(self, conn: apsw.Connection, ctx: Context) -> TransitionResult:
        return apply_transition(conn, self.dispute_id, self.to_state, self.trigger, ctx.now)


class ListUnattended(Request[tuple[UnattendedDispute, ...]], frozen=True):
    """The timer cycle's query (CORE-52); `now` is the cycle's single `now`."""

    now: int
    renotification_seconds: int

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[UnattendedDispute, ...]:
        return list_unattended(conn, self.now, self.renotification_seconds)


class EnqueueRenotification(Request[RenotificationResult], frozen=True):
    """Re-check and queue one dispute's re-notifications (CORE-53, BEY-6)."""

    dispute_id: str
    cycle_now: int
    renotification_seconds: int
    messages: tuple[OutboxMessage, ...] = ()

    def apply(self, conn: apsw.Connection, ctx: Context) -> RenotificationResult:
        return enqueue_renotification(
            conn,
            self.dispute_id,
            cycle_now=self.cycle_now,
            renotification_seconds=self.renotification_seconds,
            messages=self.messages,
            now=ctx.now,
        )


class EnqueueNotifications(Request[tuple[int, ...]], frozen=True):
    """Queue DMs whose cause is already recorded (mediation alerts, escalation DMs...)."""

    dispute_id: str
    notif_type: str
    cause: str
    messages: tuple[OutboxMessage, ...]
    handoff_event_id: int | None = None

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[int, ...]:
        return enqueue_notifications(
            conn,
            dispute_id=self.dispute_id,
            notif_type=self.notif_type,
            cause=self.cause,
            messages=self.messages,
            now=ctx.now,
            handoff_event_id=self.handoff_event_id,
        )


class ClaimOutbox(Request[OutboxClaim], frozen=True):
    """Hand up to `limit` due outbox rows to the sender, oldest first, pair order kept."""

    limit: int

    def apply(self, conn: apsw.Connection, ctx: Context) -> OutboxClaim:
        return claim_due(conn, ctx.now, self.limit)


class CompleteOutboxes(Request[tuple[OutboxCompletion | UnknownOutboxRow, ...]], frozen=True):
    """Several claimed rows' outcomes under one commit, each row atomic on its own; an
    unknown row answers `UnknownOutboxRow` in its place."""

    outcomes: tuple[OutboxOutcome, ...]

    def apply(
        self, conn: apsw.Connection, ctx: Context
    ) -> tuple[OutboxCompletion | UnknownOutboxRow, ...]:
        return complete_many(conn, self.outcomes, now=ctx.now)


class NextOutboxDue(Request[int | None], frozen=True):
    """When the sender should claim again (wall-clock second), or None: nothing waits."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> int | None:
        return next_due_at(conn)


class ExpediteRetries(Request[int], frozen=True):
    """Make rows waiting out a retry backoff due now (a relay is back); returns how many."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return expedite_retries(conn, ctx.now)


class CountOutboxPending(Request[int], frozen=True):
    """How many decided DMs are still owed (the health snapshot's queue depth)."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return count_pending(conn)


class RequeueInFlight(Request[int], frozen=True):
    """Release every outbox claim; run once at start-up before the sender starts."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        return requeue_in_flight(conn)


class RecordNotifications(Request[tuple[int, ...]], frozen=True):
    """Attempt rows for sends made outside the outbox (ESC-26 step 3), in one transaction."""

    records: tuple[NotificationRecord, ...]

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[int, ...]:
        return record_notifications(conn, self.records)


class ScanPendingHandoffs(Request[tuple[HandoffRow, ...]], frozen=True):
    """One page of pending handoffs after `after_id` (ESC-12, ESC-14)."""

    after_id: int = 0
    limit: int = HANDOFF_PAGE_SIZE

    def apply(self, conn: apsw.Connection, ctx: Context) -> tuple[HandoffRow, ...]:
        return pending_handoffs_page(conn, after_id=self.after_id, limit=self.limit)


class RecordDispatch(Request[DispatchRecord], frozen=True):
    """ESC-28: dispatch row + `escalation_dispatched`, one transaction; the tracker makes the
    `dispatch_id` (UUID v4 from the injected randomness)."""

    handoff: HandoffRow
    dispute_id: str
    outcomes: tuple[RecipientOutcome, ...]
    via_fallback: bool
    dispatched_at: int

    def apply(self, conn: apsw.Connection, ctx: Context) -> DispatchRecord:
        return record_dispatch(
            conn,
            dispatch_id=str(uuid.UUID(bytes=ctx.rand(16), version=4)),
            handoff=self.handoff,
            dispute_id=self.dispute_id,
            outcomes=self.outcomes,
            via_fallback=self.via_fallback,
            dispatched_at=self.dispatched_at,
        )


class RecordSuperseded(Request[bool], frozen=True):
    """ESC-18: `escalation_superseded` unless already written for this handoff."""

    handoff: HandoffRow
    dispute_id: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> bool:
        return record_superseded(conn, self.handoff, self.dispute_id, ctx.now)


class RecordUnroutable(Request[bool], frozen=True):
    """ESC-21: `escalation_dispatch_unroutable` unless already written for this handoff."""

    handoff: HandoffRow
    dispute_id: str
    configured_solver_count: int

    def apply(self, conn: apsw.Connection, ctx: Context) -> bool:
        return record_unroutable(
            conn, self.handoff, self.dispute_id, self.configured_solver_count, ctx.now
        )


class RecordParseFailed(Request[bool], frozen=True):
    """ESC-16/17: the `escalation_dispatch_parse_failed` event that consumes the handoff."""

    handoff: HandoffRow
    dispute_id: str
    reason: ParseFailure
    detail: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> bool:
        return record_parse_failed(
            conn, self.handoff, self.dispute_id, self.reason, self.detail, ctx.now
        )


class WriteHealth(Request[None], frozen=True):
    """Flush the daemon's health snapshot for `serbero status`."""

    relays: tuple[RelayHealth, ...] = ()
    values: dict[str, str] = msgspec.field(default_factory=dict)
    prune_relays: bool = False

    def apply(self, conn: apsw.Connection, ctx: Context) -> None:
        write_health(
            conn,
            relays=self.relays,
            values=self.values,
            now=ctx.now,
            prune_relays=self.prune_relays,
        )


class Answer(msgspec.Struct, frozen=True):
    """A request's outcome: its `value`, or the `error` to raise at the asker."""

    value: Any = None
    error: StoreError | None = None


class Reply:
    """A one-shot slot the tracker fills and the asker awaits."""

    __slots__ = ("_answer", "_event")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._answer: Answer | None = None

    def set(self, answer: Answer) -> None:
        """Deliver the answer (the first one wins)."""
        if self._answer is None:
            self._answer = answer
            self._event.set()

    async def wait(self) -> Any:
        """The answer's value, or raise its error."""
        await self._event.wait()
        answer = cast(Answer, self._answer)
        if answer.error is not None:
            raise answer.error
        return answer.value


class Envelope(msgspec.Struct, frozen=True):
    """What travels on the tracker's inbox: a request and where to put its answer."""

    request: Request[Any]
    reply: Reply


class _BatchLost(Exception):
    """SQLite rolled the whole batch transaction back under us."""


def _execute(conn: apsw.Connection, request: Request[Any], ctx: Context) -> Answer:
    """Run one request as one transaction (a savepoint inside a batch); never raises."""
    try:
        if conn.in_transaction:
            with conn:
                value = request.apply(conn, ctx)
        else:
            value = request.apply(conn, ctx)
    except StoreError as exc:
        return Answer(error=exc)
    except apsw.Error as exc:
        log.warning("store_request_failed", request=type(request).__name__, error=str(exc))
        failure = StoreFailure(f"{type(request).__name__}: {exc}")
        failure.__cause__ = exc
        return Answer(error=failure)
    except Exception as exc:
        log.error("store_request_crashed", request=type(request).__name__, error=repr(exc))
        failure = StoreFailure(f"{type(request).__name__} crashed: {exc!r}")
        failure.__cause__ = exc
        return Answer(error=failure)
    return Answer(value=value)


def run_batch(
    conn: apsw.Connection, requests: Sequence[Request[Any]], ctx: Context
) -> list[Answer]:
    """Run requests in order under one commit, each in its own savepoint; one answer each.

    If the shared transaction cannot start (the write lock stays busy), every request fails
    with that error and none runs. If it fails later (commit error, SQLite rolling
    everything back), nothing of it is committed and each request is re-run on its own,
    so every answer still tells the truth about what was committed.
    """
    if len(requests) == 1:
        return [_execute(conn, requests[0], ctx)]
    answers: list[Answer] = []
    try:
        with transaction(conn):
            for request in requests:
                answers.append(_execute(conn, request, ctx))
                if not conn.in_transaction:
                    raise _BatchLost
    except (apsw.Error, _BatchLost) as exc:
        if not answers:
            log.warning("store_batch_not_started", requests=len(requests), error=str(exc))
            failure = StoreFailure(f"cannot start a transaction: {exc}")
            return [Answer(error=failure) for _ in requests]
        return [_execute(conn, request, ctx) for request in requests]
    return answers


class Pending(Generic[R]):
    """A request already in the tracker's inbox; its answer comes later, in inbox order."""

    __slots__ = ("_name", "_reply")

    def __init__(self, name: str, reply: Reply) -> None:
        self._name = name
        self._reply = reply

    async def result(self, *, timeout: float = ASK_TIMEOUT_SECONDS) -> R:
        """The request's result, or raise the `StoreError` it failed with (or timed out)."""
        try:
            with trio.fail_after(timeout):
                return cast(R, await self._reply.wait())
        except trio.TooSlowError:
            raise TrackerTimeout(f"{self._name} unanswered after {timeout} s") from None


class Tracker:
    """The caller-side handle, shared by every task that needs the store."""

    def __init__(self, send: trio.MemorySendChannel[Envelope], schema: SchemaStatus) -> None:
        self._send = send
        self.schema = schema

    async def submit(
        self, request: Request[R], *, timeout: float = ASK_TIMEOUT_SECONDS
    ) -> Pending[R]:
        """Put `request` in the inbox and return at once (waiting only while it is full).

        Requests run strictly in inbox order, so a caller that must decide events one at a
        time in arrival order (BEY-22) can keep several in flight and collect the answers
        afterwards; they then share commits instead of paying one round trip each.
        """
        reply = Reply()
        name = type(request).__name__
        try:
            with trio.fail_after(timeout):
                await self._send.send(Envelope(request=request, reply=reply))
        except trio.TooSlowError:
            raise TrackerTimeout(f"{name} not accepted within {timeout} s") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise TrackerClosed(f"tracker closed before {name} ran") from None
        return Pending(name, reply)

    async def ask(self, request: Request[R], *, timeout: float = ASK_TIMEOUT_SECONDS) -> R:
        """Run `request` and return its result, or raise the `StoreError` it failed with.

        `TrackerTimeout` after `timeout` seconds (the step may still commit later);
        `TrackerClosed` once the tracker has shut down.
        """
        deadline = trio.current_time() + timeout
        pending = await self.submit(request, timeout=timeout)
        return await pending.result(timeout=max(0.0, deadline - trio.current_time()))


class _SqliteThread:
    """The one long-lived thread every SQLite call runs on, fed by a queue.

    A dedicated thread wakes faster than `trio.to_thread`'s pool hand-off (about 120 us
    against 200 us per round trip here), which is most of a request's overhead.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="serbero-sqlite", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the SQLite thread; waits for it even when cancelled (shielded)."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[tuple[T | None, BaseException | None]] = []

        def job() -> None:
            try:
                box.append((fn(*args), None))
            except BaseException as exc:
                box.append((None, exc))
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                return

        self._jobs.put(job)
        with trio.CancelScope(shield=True):
            await done.wait()
        value, error = box[0]
        if error is not None:
            raise error
        return cast(T, value)

    def stop(self) -> None:
        """Let the thread finish once the jobs already queued have run."""
        self._jobs.put(None)


def _take_batch(first: Envelope, receive: trio.MemoryReceiveChannel[Envelope]) -> list[Envelope]:
    batch = [first]
    while len(batch) < MAX_BATCH:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


def _refuse_rest(receive: trio.MemoryReceiveChannel[Envelope]) -> None:
    closed = Answer(error=TrackerClosed("tracker stopped before the request ran"))
    while True:
        try:
            receive.receive_nowait().reply.set(closed)
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return


async def _serve(
    conn: apsw.Connection,
    receive: trio.MemoryReceiveChannel[Envelope],
    *,
    wall_clock: WallClock,
    rand: Callable[[int], bytes],
    worker: _SqliteThread | None,
) -> None:
    """Answer envelopes batch by batch until the inbox closes; finish a started batch even
    when cancelled, and refuse whatever is still queued after that."""
    async with receive:
        try:
            async for first in receive:
                batch = _take_batch(first, receive)
                ctx = Context(now=wall_clock(), rand=rand)
                requests = [envelope.request for envelope in batch]
                if worker is None:
                    answers = run_batch(conn, requests, ctx)
                else:
                    answers = await worker.run(run_batch, conn, requests, ctx)
                for envelope, answer in zip(batch, answers, strict=True):
                    envelope.reply.set(answer)
        finally:
            _refuse_rest(receive)


@asynccontextmanager
async def open_tracker(
    db_path: str,
    *,
    wall_clock: WallClock,
    rand: Callable[[int], bytes] = os.urandom,
    offload: bool = True,
    inbox_size: int = INBOX_SIZE,
) -> AsyncIterator[Tracker]:
    """Open (create, migrate) the database and serve requests until the block exits.

    Opening failures raise `StoreFailure` (fatal at start-up, CORE-8 step 6). On exit the
    inbox closes, queued requests are still answered, then the connection closes.
    """
    worker = _SqliteThread() if offload else None
    try:
        if worker is None:
            conn, schema = open_database(db_path)
        else:
            conn, schema = await worker.run(open_database, db_path)
        log.info("database_ready", db_path=db_path, schema_version=schema.current)
        send, receive = trio.open_memory_channel[Envelope](inbox_size)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(_serve, conn, receive, wall_clock=wall_clock, rand=rand, worker=worker)
                )
                async with send:
                    yield Tracker(send, schema)
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            if worker is None:
                conn.close()
            else:
                await worker.run(conn.close)
    finally:
        if worker is not None:
            worker.stop()
