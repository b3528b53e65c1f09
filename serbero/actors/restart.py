"""The restart policy: how one actor is run, and what its crash costs (design's "Failure model").

Decided per actor by the `ActorSpec` the supervisor builds:

- **tracker** and **relay pool** are not restarted: they are the ground everything else
  stands on. Their failure ends the supervisor with `DaemonFatal`, the daemon exits 1 and
  runit starts a fresh process.
- **ingest** is restarted with backoff. Its input (the subscription's channel) outlives it,
  so events keep queueing (bounded) meanwhile; only the event being decided at the crash
  is dropped, and relays replay it on the next reconnect. If the event stream *ends*, that
  is fatal (CORE-11, `event_stream_ended`).
- **sender** is restarted with backoff, after `RequeueInFlight` releases the rows it held,
  so they are delivered again rather than after the claim lease.
- **renotify** and **health_record** are restarted with backoff.
- **optional actors** (`optional_actors`) choose with their `restart` flag.

Backoff doubles from `RESTART_BACKOFF_FIRST` to `RESTART_BACKOFF_CAP` and starts afresh
after an actor ran `RESTART_HEALTHY_AFTER` seconds. An actor that crashes `MAX_CRASHES`
times within `CRASH_WINDOW_SECONDS` is fatal: a fault that keeps firing is better met by a
fresh process (and a loud supervisor log) than by a quiet loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import msgspec
import trio

from serbero.clock import WallClock
from serbero.log import get_logger
from serbero.store.errors import StoreError

__all__ = [
    "CRASH_WINDOW_SECONDS",
    "MAX_CRASHES",
    "RESTART_BACKOFF_CAP",
    "RESTART_BACKOFF_FIRST",
    "RESTART_HEALTHY_AFTER",
    "ActorRecord",
    "ActorSpec",
    "ActorState",
    "ActorStatus",
    "DaemonFatal",
    "describe_error",
    "restart_delay",
    "supervise",
]

log = get_logger("serbero.daemon")

RESTART_BACKOFF_FIRST: Final = 1.0
RESTART_BACKOFF_CAP: Final = 30.0
RESTART_HEALTHY_AFTER: Final = 60.0
MAX_CRASHES: Final = 5
CRASH_WINDOW_SECONDS: Final = 300.0

ActorState = Literal["running", "restarting", "stopped"]


class DaemonFatal(Exception):
    """The daemon cannot go on (CORE-9): logged as `daemon_terminated`, exit status 1."""


class ActorStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One supervised actor: what it is doing and how often it crashed."""

    name: str
    state: ActorState
    restarts: int
    last_error: str | None
    last_crash_at: int | None


class ActorSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How the supervisor runs one actor: `run` it, and on a crash restart it (after
    `before_restart`) or, with `restart=False`, end the daemon."""

    name: str
    run: Callable[[], Awaitable[None]]
    restart: bool = True
    # Runs before each restart (not before the first start).
    before_restart: Callable[[], Awaitable[None]] | None = None
    # Returning is normal for most actors; for ingest it means the stream ended (CORE-11).
    fatal_on_return: str | None = None


class ActorRecord:
    __slots__ = ("last_crash_at", "last_error", "name", "restarts", "state")

    def __init__(self, name: str) -> None:
        self.name = name
        self.state: ActorState = "running"
        self.restarts = 0
        self.last_error: str | None = None
        self.last_crash_at: int | None = None

    def status(self) -> ActorStatus:
        return ActorStatus(
            name=self.name,
            state=self.state,
            restarts=self.restarts,
            last_error=self.last_error,
            last_crash_at=self.last_crash_at,
        )


def describe_error(exc: BaseException) -> str:
    """One line for a log field; exception groups list their leaves."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_error(inner) for inner in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def restart_delay(attempt: int) -> float:
    """Backoff before restart number `attempt` (0-based)."""
    return float(min(RESTART_BACKOFF_CAP, RESTART_BACKOFF_FIRST * 2 ** min(attempt, 16)))


async def supervise(spec: ActorSpec, record: ActorRecord, *, wall_clock: WallClock) -> None:
    """Run `spec` under the restart policy, keeping `record` current; returns when it stops
    normally, raises `DaemonFatal` when its crash (or return) ends the daemon."""
    crashes: deque[float] = deque()
    attempt = 0
    while True:
        record.state = "running"
        started = trio.current_time()
        try:
            await spec.run()
        except Exception as exc:
            now = trio.current_time()
            if now - started >= RESTART_HEALTHY_AFTER:
                attempt = 0
            crashes.append(now)
            while crashes and now - crashes[0] > CRASH_WINDOW_SECONDS:
                crashes.popleft()
            error = describe_error(exc)
            record.last_error = error
            record.last_crash_at = wall_clock()
            log.error("actor_crashed", actor=spec.name, error=error, restarts=record.restarts)
            if not spec.restart or len(crashes) >= MAX_CRASHES:
                raise DaemonFatal(f"actor {spec.name} crashed: {error}") from exc
            record.state = "restarting"
            delay = restart_delay(attempt)
            attempt += 1
            log.warning("actor_restart_scheduled", actor=spec.name, delay_seconds=delay)
            await trio.sleep(delay)
            try:
                if spec.before_restart is not None:
                    await spec.before_restart()
            except StoreError as store_exc:
                raise DaemonFatal(f"restarting {spec.name}: {store_exc}") from store_exc
            record.restarts += 1
            log.info("actor_restarted", actor=spec.name, restarts=record.restarts)
            continue
        record.state = "stopped"
        if spec.fatal_on_return is not None:
            log.error("event_stream_ended", actor=spec.name)
            raise DaemonFatal(spec.fatal_on_return)
        return
