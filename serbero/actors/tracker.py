"""The tracker: the only owner of the database connection (design.md, "The tracker").

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

`offload=False` runs the same batches on the Trio thread: for tests under
`autojump_clock`, whose virtual time would otherwise jump past `ask` timeouts while a
worker thread holds the answer.
"""

from __future__ import annotations

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

from serbero.clock import WallClock
from serbero.log import get_logger
from serbero.store.connection import open_database
from serbero.store.errors import StoreError, StoreFailure
from serbero.store.migrations import SchemaStatus
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
