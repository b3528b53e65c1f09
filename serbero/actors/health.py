"""The daemon's `/health` document and the endpoint that serves it (BEY-11).

`/health` answers 200 when at least one relay is connected and the database takes the
daemon's work, and 503 otherwise, with a JSON body either way (relays connected, database,
last dispute event age, queue depths, actor states; see `health_answer`). The HTTP side,
with its bounds, is `health_http`; this module says what the document holds and keeps the
endpoint up while its address cannot be bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import trio

from serbero.actors.health_http import DEFAULT_LIMITS, HealthAnswer, serve_listeners
from serbero.actors.relay import RelayState
from serbero.log import get_logger

__all__ = [
    "BIND_RETRY_SECONDS",
    "ActorView",
    "HealthView",
    "MediationView",
    "health_answer",
    "run_health_endpoint",
]

log = get_logger("serbero.health")

# While the configured address cannot be bound, the daemon tries again this often.
BIND_RETRY_SECONDS: Final = 30.0
# The document's `status`: up while at least one relay is connected.
STATUS_OK: Final = "ok"
STATUS_NO_RELAY: Final = "no_relay_connected"
# Decisions wait for the database (busy, locked, I/O); they commit once it clears (BEY-25).
STATUS_DATABASE_UNAVAILABLE: Final = "database_unavailable"


# --- the daemon's answer ------------------------------------------------------------------


class ActorView(Protocol):
    """What `/health` shows of one supervised actor."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def restarts(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...


class MediationView(Protocol):
    """What `/health` shows of mediation's bring-up (MED-10)."""

    @property
    def state(self) -> str: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def policy_hash(self) -> str | None: ...
    @property
    def stage(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...


class EngineView(Protocol):
    """What `/health` shows of the running mediation engine."""

    @property
    def running(self) -> bool: ...
    @property
    def sessions_live(self) -> int | None: ...
    @property
    def sessions_with_keys(self) -> int: ...
    @property
    def sessions_watched(self) -> int: ...
    @property
    def starts_in_flight(self) -> int: ...
    @property
    def last_tick_at(self) -> int | None: ...
    @property
    def stage_failures(self) -> int: ...
    @property
    def solver_auth(self) -> str | None: ...


class HealthView(Protocol):
    """What `/health` reads of the daemon's live snapshot (the supervisor's `DaemonSnapshot`).

    Spelled out here so this module never imports the supervisor, which imports it.
    """

    @property
    def taken_at(self) -> int: ...
    @property
    def started_at(self) -> int: ...
    @property
    def relays(self) -> Sequence[RelayState]: ...
    @property
    def relays_connected(self) -> int: ...
    @property
    def last_dispute_event_at(self) -> int | None: ...
    @property
    def events_received(self) -> int: ...
    @property
    def ingest_backlog(self) -> int: ...
    @property
    def decisions_in_flight(self) -> int: ...
    @property
    def outbox_pending(self) -> int | None: ...
    @property
    def outbox_in_flight(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def delivery_failures(self) -> int: ...
    @property
    def database_unavailable_since(self) -> int | None: ...
    @property
    def database_error(self) -> str | None: ...
    @property
    def actors(self) -> Sequence[ActorView]: ...
    @property
    def mediation(self) -> MediationView: ...
    @property
    def mediation_engine(self) -> EngineView: ...


def health_answer(snapshot: HealthView) -> HealthAnswer:
    """The `/health` document for one daemon snapshot; up iff a relay is connected and the
    database is available.

    Fields: `status` (`ok` / `no_relay_connected` / `database_unavailable`), `taken_at`,
    `uptime_seconds`, `database` (available, unavailable_since, error),
    `relays_connected`, `relays_total`, `relays` (url, connected, since,
    reconnect_attempts, last_error), `last_dispute_event_at` and `last_dispute_event_age`
    (null before the first event), `events_received`, `queues` (ingest_backlog,
    decisions_in_flight, outbox_pending, outbox_in_flight), `deliveries` (delivered,
    failed), `actors` (name -> state, restarts, last_error), `mediation` (state `off` /
    `starting` / `ready` / `failed`, provider, model, policy_hash, for a failure its stage
    and error, and `engine`: running, sessions_live, sessions_with_keys, sessions_watched,
    starts_in_flight, last_tick_at, stage_failures, solver_auth). Mediation never changes the
    status: the core runs without it.
    """
    database_since = snapshot.database_unavailable_since
    if snapshot.relays_connected == 0:
        status = STATUS_NO_RELAY
    elif database_since is not None:
        status = STATUS_DATABASE_UNAVAILABLE
    else:
        status = STATUS_OK
    event_at = snapshot.last_dispute_event_at
    mediation = snapshot.mediation
    engine = snapshot.mediation_engine
    document: dict[str, Any] = {
        "status": status,
        "taken_at": snapshot.taken_at,
        "uptime_seconds": max(0, snapshot.taken_at - snapshot.started_at),
        "database": {
            "available": database_since is None,
            "unavailable_since": database_since,
            "error": snapshot.database_error,
        },
        "relays_connected": snapshot.relays_connected,
        "relays_total": len(snapshot.relays),
        "relays": [
            {
                "url": relay.url,
                "connected": relay.connected,
                "since": relay.since,
                "reconnect_attempts": relay.reconnect_attempts,
                "last_error": relay.last_error,
            }
            for relay in snapshot.relays
        ],
        "last_dispute_event_at": event_at,
        "last_dispute_event_age": None
        if event_at is None
        else max(0, snapshot.taken_at - event_at),
        "events_received": snapshot.events_received,
        "queues": {
            "ingest_backlog": snapshot.ingest_backlog,
            "decisions_in_flight": snapshot.decisions_in_flight,
            "outbox_pending": snapshot.outbox_pending,
            "outbox_in_flight": snapshot.outbox_in_flight,
        },
        "deliveries": {
            "delivered": snapshot.delivered,
            "failed": snapshot.delivery_failures,
        },
        "actors": {
            actor.name: {
                "state": actor.state,
                "restarts": actor.restarts,
                "last_error": actor.last_error,
            }
            for actor in snapshot.actors
        },
        "mediation": {
            "state": mediation.state,
            "provider": mediation.provider,
            "model": mediation.model,
            "policy_hash": mediation.policy_hash,
            "stage": mediation.stage,
            "error": mediation.error,
            "engine": {
                "running": engine.running,
                "sessions_live": engine.sessions_live,
                "sessions_with_keys": engine.sessions_with_keys,
                "sessions_watched": engine.sessions_watched,
                "starts_in_flight": engine.starts_in_flight,
                "last_tick_at": engine.last_tick_at,
                "stage_failures": engine.stage_failures,
                "solver_auth": engine.solver_auth,
            },
        },
    }
    return HealthAnswer(up=status == STATUS_OK, document=document)


async def run_health_endpoint(
    listen: tuple[str, int],
    snapshot: Callable[[], HealthView],
    *,
    bind_retry_seconds: float = BIND_RETRY_SECONDS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the daemon's `/health` on `listen` until cancelled (BEY-11).

    `snapshot` is the supervisor's live view; it is read once per request. The endpoint is
    an aid for supervisors, never a reason to stop notifying: while the address cannot be
    bound (say, the port is taken) it logs and tries again every `bind_retry_seconds`.
    """
    host, port = listen
    while True:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
            break
        except OSError as exc:
            log.error(
                "health_endpoint_unavailable",
                address=f"{host}:{port}",
                error=str(exc),
                retry_seconds=bind_retry_seconds,
            )
            await trio.sleep(bind_retry_seconds)

    def answer() -> HealthAnswer:
        return health_answer(snapshot())

    await serve_listeners(listeners, answer, limits=DEFAULT_LIMITS, task_status=task_status)
