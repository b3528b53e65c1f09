"""The tracker: the only owner of the database connection (CORE-5).

Other actors never touch SQLite; they `await tracker.ask(SomeRequest(...))`. Each request is
a frozen struct naming one logical store step (the catalogue is
`serbero.actors.tracker_requests`); the tracker runs it as one transaction and
answers every request: with the step's result, or by raising the typed `StoreError` the
step failed with (never silence, never a dead tracker).

SQLite runs off the Trio thread (`offload=True`, the default): the serving task hands each
batch to one dedicated, long-lived thread, so the event loop never waits on a disk flush.
Requests that queue up while a batch runs form the next batch, which commits once (group
commit: one fsync for many steps) while each request still runs in its own savepoint and
gets its own answer. A request answered with a result was committed; one answered with an
error left nothing behind. Requests run strictly in inbox order; `submit` lets a caller
keep several in flight without giving up that order.

An error that can clear (busy or locked database, I/O; see `store_outage`) answers nobody:
the batch is rolled back and run again after a short pause, in order, until it commits,
while later requests wait in the inbox (BEY-25). Only an error of the request itself (a
constraint the schema enforces, a bug) fails that one request. A caller whose wait runs out
during such an outage gets `StoreUnavailable`: its request is still queued and will run.

`offload=False` runs the same batches on the Trio thread: for tests under
`autojump_clock`, whose virtual time would otherwise jump past `ask` timeouts while a
worker thread holds the answer.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, Generic, TypeVar, cast

import apsw
import msgspec
import trio

from serbero.actors.oneshot import OneShot
from serbero.actors.store_outage import StoreOutage, retry_delay, transient_cause
from serbero.clock import WallClock
from serbero.log import get_logger
from serbero.store.connection import open_database
from serbero.store.errors import StoreError, StoreFailure
from serbero.store.migrations import SchemaStatus
from serbero.store.transaction import transaction

log = get_logger("serbero.tracker")

ASK_TIMEOUT_SECONDS: Final = 10.0
# The wait for a request whose answer must not be abandoned (a decision, a claim, recorded
# outcomes): the tracker answers every request, and one held up by an unavailable database
# still commits once it clears (BEY-25), so giving up on it would only lose the answer.
UNTIL_ANSWERED: Final = math.inf
INBOX_SIZE: Final = 256
MAX_BATCH: Final = 64

R = TypeVar("R")
T = TypeVar("T")


class TrackerClosed(StoreError):
    """The tracker is shut down (or shutting down); the request was not run."""


class TrackerTimeout(StoreError):
    """No answer within the caller's timeout; the step may still commit later."""


class StoreUnavailable(TrackerTimeout):
    """No answer within the caller's timeout because the database is unavailable (BEY-25);
    the request stays queued and runs once the database takes work again."""


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


class Answer(msgspec.Struct, frozen=True):
    """A request's outcome: its `value`, or the `error` to raise at the asker."""

    value: Any = None
    error: StoreError | None = None


class Envelope(msgspec.Struct, frozen=True):
    """What travels on the tracker's inbox: a request and where to put its answer."""

    request: Request[Any]
    reply: OneShot[Any]

    def answer(self, answer: Answer) -> None:
        """Hand `answer` to the asker: its value, or its error to raise."""
        if answer.error is None:
            self.reply.set(answer.value)
        else:
            self.reply.fail(answer.error)


class _BatchLost(Exception):
    """SQLite rolled the whole batch transaction back under us."""


class TransientFailure(Exception):
    """A batch stopped on an error that can clear. `done` answers its first requests
    (committed, or failed for good); the rest left nothing behind and are to run again."""

    def __init__(self, error: apsw.Error, done: list[Answer]) -> None:
        super().__init__(str(error))
        self.error = error
        self.done = done


class _Transient(Exception):
    """One request hit an error that can clear; carries it out of the batch."""

    def __init__(self, error: apsw.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _execute(conn: apsw.Connection, request: Request[Any], ctx: Context) -> Answer:
    """Run one request as one transaction (a savepoint inside a batch); its answer, or
    `_Transient` when the error can clear (nothing of the request is then committed)."""
    try:
        if conn.in_transaction:
            with conn:
                value = request.apply(conn, ctx)
        else:
            value = request.apply(conn, ctx)
    except StoreError as exc:
        return Answer(error=exc)
    except apsw.Error as exc:
        transient = transient_cause(exc)
        if transient is not None:
            raise _Transient(transient) from exc
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

    An error that can clear (the write lock stays busy, an I/O error) rolls the batch back
    and raises `TransientFailure`, so the caller can run it again. If the batch fails
    otherwise (commit error, SQLite rolling everything back), nothing of it is committed
    and each request is re-run on its own, so every answer still tells the truth about
    what was committed; an error that can clear then stops the re-run where it struck.
    """
    answers: list[Answer] = []
    try:
        if len(requests) == 1:
            return [_execute(conn, requests[0], ctx)]
        with transaction(conn):
            for request in requests:
                answers.append(_execute(conn, request, ctx))
                if not conn.in_transaction:
                    raise _BatchLost
    except _Transient as exc:
        raise TransientFailure(exc.error, []) from exc
    except (apsw.Error, _BatchLost) as exc:
        transient = transient_cause(exc)
        if transient is not None:
            raise TransientFailure(transient, []) from exc
        answers = []
        try:
            for request in requests:
                answers.append(_execute(conn, request, ctx))
        except _Transient as lost:
            raise TransientFailure(lost.error, answers) from lost
    return answers


class Pending(Generic[R]):
    """A request already in the tracker's inbox; its answer comes later, in inbox order."""

    __slots__ = ("_name", "_outage", "_reply")

    def __init__(self, name: str, reply: OneShot[R], outage: StoreOutage) -> None:
        self._name = name
        self._reply = reply
        self._outage = outage

    async def result(self, *, timeout: float = ASK_TIMEOUT_SECONDS) -> R:
        """The request's result, or raise the `StoreError` it failed with (or timed out:
        `StoreUnavailable` while the database is unavailable, `TrackerTimeout` otherwise)."""
        try:
            with trio.fail_after(timeout):
                return await self._reply.wait()
        except trio.TooSlowError:
            raise _too_slow(self._outage, f"{self._name} unanswered after {timeout} s") from None


def _too_slow(outage: StoreOutage, what: str) -> TrackerTimeout:
    if outage.available:
        return TrackerTimeout(what)
    return StoreUnavailable(f"{what}: database unavailable ({outage.error}), still queued")


class Tracker:
    """The caller-side handle, shared by every task that needs the store."""

    def __init__(
        self,
        send: trio.MemorySendChannel[Envelope],
        schema: SchemaStatus,
        outage: StoreOutage | None = None,
    ) -> None:
        self._send = send
        self.schema = schema
        # Shared with the serving task: whether the database takes work right now.
        self.outage = outage if outage is not None else StoreOutage()

    async def submit(
        self, request: Request[R], *, timeout: float = ASK_TIMEOUT_SECONDS
    ) -> Pending[R]:
        """Put `request` in the inbox and return at once (waiting only while it is full).

        Requests run strictly in inbox order, so a caller that must decide events one at a
        time in arrival order (BEY-22) can keep several in flight and collect the answers
        afterwards; they then share commits instead of paying one round trip each.
        """
        reply = OneShot[R]()
        name = type(request).__name__
        try:
            with trio.fail_after(timeout):
                await self._send.send(Envelope(request=request, reply=reply))
        except trio.TooSlowError:
            raise _too_slow(self.outage, f"{name} not accepted within {timeout} s") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise TrackerClosed(f"tracker closed before {name} ran") from None
        return Pending(name, reply, self.outage)

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
            receive.receive_nowait().answer(closed)
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return


async def _serve(
    conn: apsw.Connection,
    receive: trio.MemoryReceiveChannel[Envelope],
    *,
    wall_clock: WallClock,
    rand: Callable[[int], bytes],
    worker: _SqliteThread | None,
    outage: StoreOutage,
) -> None:
    """Answer envelopes batch by batch until the inbox closes; finish a started batch even
    when cancelled, and refuse whatever is still queued after that.

    A batch stopped by an error that can clear is run again (what it had not answered yet)
    after a pause, until it commits; the inbox waits meanwhile, so order is kept (BEY-25).
    Once the inbox is closed (shutting down) an unavailable database is not waited for.
    """
    async with receive:
        try:
            async for first in receive:
                batch = _take_batch(first, receive)
                try:
                    await _answer_batch(conn, batch, receive, outage, wall_clock, rand, worker)
                finally:
                    gone = Answer(error=TrackerClosed("tracker stopped before the request ran"))
                    for envelope in batch:
                        envelope.answer(gone)
                if not outage.available and receive.statistics().open_send_channels == 0:
                    break
        finally:
            _refuse_rest(receive)


async def _answer_batch(
    conn: apsw.Connection,
    batch: list[Envelope],
    receive: trio.MemoryReceiveChannel[Envelope],
    outage: StoreOutage,
    wall_clock: WallClock,
    rand: Callable[[int], bytes],
    worker: _SqliteThread | None,
) -> None:
    """Run `batch` until every envelope in it is answered (answered ones leave the list)."""
    while batch:
        ctx = Context(now=wall_clock(), rand=rand)
        requests = [envelope.request for envelope in batch]
        try:
            if worker is None:
                answers = run_batch(conn, requests, ctx)
            else:
                answers = await worker.run(run_batch, conn, requests, ctx)
        except TransientFailure as failure:
            for envelope, answer in zip(batch, failure.done, strict=False):
                envelope.answer(answer)
            del batch[: len(failure.done)]
            waiting = len(batch) + receive.statistics().current_buffer_used
            outage.failed(failure.error, now=ctx.now, waiting=waiting)
            if receive.statistics().open_send_channels == 0:
                return  # Shutting down: the caller refuses what is left.
            await trio.sleep(retry_delay(outage.attempts))
            continue
        outage.cleared(now=ctx.now)
        for envelope, answer in zip(batch, answers, strict=True):
            envelope.answer(answer)
        batch.clear()


@asynccontextmanager
async def open_tracker(
    db_path: str,
    *,
    wall_clock: WallClock,
    rand: Callable[[int], bytes] = os.urandom,
    offload: bool = True,
    inbox_size: int = INBOX_SIZE,
    outage: StoreOutage | None = None,
) -> AsyncIterator[Tracker]:
    """Open (create, migrate) the database and serve requests until the block exits.

    Opening failures raise `StoreFailure` (fatal at start-up, CORE-8 step 6). On exit the
    inbox closes, queued requests are still answered (unless the database is unavailable:
    then they are refused), then the connection closes. `outage` is where the tracker keeps
    the database's availability, for a health view made before the tracker opens.
    """
    worker = _SqliteThread() if offload else None
    try:
        if worker is None:
            conn, schema = open_database(db_path)
        else:
            conn, schema = await worker.run(open_database, db_path)
        log.info("database_ready", db_path=db_path, schema_version=schema.current)
        send, receive = trio.open_memory_channel[Envelope](inbox_size)
        outage = outage if outage is not None else StoreOutage()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(
                        _serve,
                        conn,
                        receive,
                        wall_clock=wall_clock,
                        rand=rand,
                        worker=worker,
                        outage=outage,
                    )
                )
                async with send:
                    yield Tracker(send, schema, outage)
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
