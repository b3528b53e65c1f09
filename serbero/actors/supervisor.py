"""The supervisor: start-up in CORE-8 order, every actor in one nursery, a live view.

Start-up (CORE-8 steps 4-14): log the config; parse the Mostro key; open and migrate the
database (the tracker); compute the subscription's `since` (CORE-20/21); release outbox
claims a killed process left behind, so they are delivered again (BEY-2); report solvers
and optional features; derive Serbero's identity; start the relay pool; subscribe to the
dispute feed; start the actors; log `event_loop_started`. Every failure up to the pool is
fatal (`DaemonFatal`); unreachable relays are not. Each actor then runs under the restart
policy of `serbero.actors.restart`; a shutdown stops them and records the clean stop.

Live view: `Supervisor.snapshot()` returns a `DaemonSnapshot` (relay states, last dispute
event, queue depths, actor states), cheap and synchronous, for a health endpoint; it is
handed out as `DaemonContext.snapshot`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

import msgspec
import trio

from serbero import __version__
from serbero.actors.delivery import PoolCourier
from serbero.actors.escalation import log_dispatcher_settings, run_dispatcher
from serbero.actors.health import run_health_endpoint
from serbero.actors.health_record import HealthRecorder, HealthStats
from serbero.actors.ingest import Ingest, IngestStats
from serbero.actors.mediation.engine import run_mediation_engine
from serbero.actors.mediation.handle import EngineStatus, MediationHandle
from serbero.actors.owed import queue_owed_notices
from serbero.actors.relay import RelayState, RelayTiming
from serbero.actors.relay_pool import RelayPool, Subscription, open_relay_pool
from serbero.actors.renotify import Renotifier, RenotifyStats
from serbero.actors.restart import (
    ActorRecord,
    ActorSpec,
    ActorStatus,
    DaemonFatal,
    supervise,
)
from serbero.actors.sender import Doorbell, OutboxSender, SenderStats
from serbero.actors.store_outage import StoreOutage
from serbero.actors.tracker import Tracker, open_tracker
from serbero.actors.tracker_requests import ComputeSince, RequeueInFlight, StartSending
from serbero.clock import WallClock
from serbero.config import Config, shown_pubkey
from serbero.log import get_logger
from serbero.mediation.bringup import MediationBringUp, MediationStatus
from serbero.protocol.dispute_event import DISPUTE_EVENT_KIND
from serbero.protocol.keys import KeyFormatError, Keys, parse_public_key
from serbero.protocol.messages import Filter
from serbero.store.disputes import SINCE_SKEW_SECONDS, Since
from serbero.store.errors import StoreError
from serbero.store.sending import SendingOrigin

__all__ = [
    "DISPUTE_SUBSCRIPTION",
    "ActorSpec",
    "DaemonContext",
    "DaemonFatal",
    "DaemonSnapshot",
    "OptionalActor",
    "SnapshotProvider",
    "Supervisor",
    "optional_actors",
    "run_supervisor",
]

log = get_logger("serbero.daemon")

# A clean shutdown waits this long at most to record itself (a busy database must not hold
# the exit past what a service supervisor tolerates).
STOP_RECORD_SECONDS: Final = 3.0
# The dispute feed's subscription name (logs, `subscription_sent`).
DISPUTE_SUBSCRIPTION: Final = "disputes"


class DaemonSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The running daemon at one instant, for a health endpoint (BEY-11).

    - `taken_at`, `started_at`: wall-clock seconds; `serbero_pubkey`: our identity (hex).
    - `relays`: every relay link (`RelayState`: url, connected, since, last_error,
      reconnect_attempts, authenticated); `relays_connected` counts the connected ones.
    - `last_dispute_event_id` / `last_dispute_event_at`: the newest dispute event from the
      configured Mostro key and when it arrived (None before the first).
    - `events_received`: dispute events from Mostro since start.
    - `ingest_backlog`: events waiting in the dispute subscription for ingest;
      `decisions_in_flight`: events being decided, until the store has answered.
    - `outbox_pending`: DMs decided and still owed (counted about once a second; None
      before the first count); `outbox_in_flight`: DMs being published right now.
    - `delivered` / `delivery_failures`: DM attempts since start, by outcome.
    - `database_unavailable_since` / `database_error`: while the database refuses the
      tracker's work for a reason that can clear (busy, locked, I/O), when that started and
      the last error; None while it works (BEY-25).
    - `renotify_cycles`: re-notification timer cycles since start.
    - `actors`: every supervised actor's `ActorStatus`, in start order.
    - `mediation`: how mediation's bring-up ended (`off`, `starting`, `ready`, `failed`).
    - `mediation_engine`: the mediation engine (running, live sessions, ticks).
    """

    taken_at: int
    started_at: int
    serbero_pubkey: str
    relays: tuple[RelayState, ...]
    relays_connected: int
    last_dispute_event_id: str | None
    last_dispute_event_at: int | None
    events_received: int
    ingest_backlog: int
    decisions_in_flight: int
    outbox_pending: int | None
    outbox_in_flight: int
    delivered: int
    delivery_failures: int
    database_unavailable_since: int | None
    database_error: str | None
    renotify_cycles: int
    actors: tuple[ActorStatus, ...]
    mediation: MediationStatus
    mediation_engine: EngineStatus


SnapshotProvider = Callable[[], DaemonSnapshot]


class DaemonContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a running daemon shares with optional actors and in-process callers (CORE-12).

    `ring_sender()` tells the outbox sender that new DMs were queued (it also finds them
    within `IDLE_RECHECK_SECONDS` without a ring); `snapshot()` is the live view;
    `mediation.wait_settled()` gives the mediation engine its context once bring-up is over;
    `engine` is where the running engine attaches, so the ingest can ask it for starts;
    `core_busy()` says the sender has notices in flight, which mediation's starts wait out.
    """

    config: Config
    identity: Keys
    mostro_pubkey: str
    tracker: Tracker
    pool: RelayPool
    wall_clock: WallClock
    rand: Callable[[int], bytes]
    wrap_salt: bytes
    ring_sender: Callable[[], None]
    snapshot: SnapshotProvider
    mediation: MediationBringUp
    engine: MediationHandle
    core_busy: Callable[[], bool]


class OptionalActor(msgspec.Struct, frozen=True, kw_only=True):
    """A feature actor started only when configured; `restart=False` makes a crash fatal."""

    name: str
    run: Callable[[DaemonContext], Awaitable[None]]
    restart: bool = True


def optional_actors(context: DaemonContext) -> list[OptionalActor]:
    """CORE-8 step 13: the feature actors this configuration asks for, and their log lines.

    This is the one place a feature joins the daemon: append its `OptionalActor` here when
    its section is enabled. The supervisor runs each one under the restart policy above.
    """
    escalation = context.config.escalation
    log_dispatcher_settings(escalation, context.config.solvers)
    actors: list[OptionalActor] = []
    if escalation.enabled:
        actors.append(OptionalActor(name="escalation_dispatcher", run=_escalation_dispatcher))
    health_address = context.config.health.address()
    if health_address is not None:
        actors.append(OptionalActor(name="health_endpoint", run=_health_endpoint(health_address)))
    if context.mediation.wanted:
        # Waits for bring-up; ends quietly when it failed (MED-10).
        actors.append(OptionalActor(name="mediation_engine", run=run_mediation_engine))
    return actors


async def _escalation_dispatcher(context: DaemonContext) -> None:
    """ESC-8: started once, after migration; a restart only re-scans, since every handoff's
    state lives in the database (ESC-30)."""
    await run_dispatcher(
        context.tracker,
        PoolCourier(context.pool, context.identity, salt=context.wrap_salt).deliver,
        settings=context.config.escalation,
        solvers=context.config.solvers,
        wall_clock=context.wall_clock,
        ring_sender=context.ring_sender,
    )


def _health_endpoint(address: tuple[str, int]) -> Callable[[DaemonContext], Awaitable[None]]:
    """BEY-11: `GET /health` from the live snapshot; it never ends the daemon by itself."""

    async def run(context: DaemonContext) -> None:
        await run_health_endpoint(address, context.snapshot)

    return run


def _log_startup(config: Config, config_path: str) -> None:
    """Say what is starting and with which settings, before anything can fail (CORE-8 step 4)."""
    log.info("starting", version=__version__, config_path=config_path)
    log.info(
        "config_loaded",
        mostro_pubkey=config.mostro.pubkey,
        db_path=config.serbero.db_path,
        relay_count=len(config.relays),
        solver_count=len(config.solvers),
        renotification_seconds=config.timeouts.renotification_seconds,
        renotification_check_interval_seconds=config.timeouts.renotification_check_interval_seconds,
    )
    for relay in config.relays:
        log.info("configured_relay", url=relay.url)
    for index, solver in enumerate(config.solvers):
        log.info(
            "configured_solver",
            idx=index,
            pubkey=shown_pubkey(solver.pubkey),
            permission=solver.permission,
        )


def _log_since(since: Since) -> None:
    if since.last_seen_event_ts is None:
        log.info("cold_start_since_now", since_ts=since.since)
    else:
        log.info(
            "resume_since",
            last_seen_event_ts=since.last_seen_event_ts,
            resume_since_ts=since.since,
            skew_seconds=SINCE_SKEW_SECONDS,
        )


class Supervisor:
    """Owns the start-up sequence, the actors' nursery and the live snapshot."""

    def __init__(
        self,
        config: Config,
        *,
        wall_clock: WallClock,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self._wall_clock = wall_clock
        self._rand = rand
        self.started_at = wall_clock()
        self.doorbell = Doorbell()
        self.ingest_stats = IngestStats()
        self.sender_stats = SenderStats()
        self.renotify_stats = RenotifyStats()
        self.health_stats = HealthStats()
        self.store_outage = StoreOutage()
        self._actors: dict[str, ActorRecord] = {}
        self._pool: RelayPool | None = None
        self._subscription: Subscription | None = None
        self._identity_hex = ""
        self._recorder: HealthRecorder | None = None
        # Prompt paths are relative to the working directory, as in the reference.
        self.mediation = MediationBringUp(config, cwd=Path.cwd())
        self.engine = MediationHandle()

    # --- the live view -------------------------------------------------------------------------

    def snapshot(self) -> DaemonSnapshot:
        relays = tuple(self._pool.relay_states().values()) if self._pool is not None else ()
        backlog = 0
        if self._subscription is not None:
            backlog = self._subscription.events.statistics().current_buffer_used
        ingest = self.ingest_stats
        return DaemonSnapshot(
            taken_at=self._wall_clock(),
            started_at=self.started_at,
            serbero_pubkey=self._identity_hex,
            relays=relays,
            relays_connected=sum(relay.connected for relay in relays),
            last_dispute_event_id=ingest.last_event_id,
            last_dispute_event_at=ingest.last_event_at,
            events_received=ingest.events_received,
            ingest_backlog=backlog,
            decisions_in_flight=ingest.decisions_in_flight,
            outbox_pending=self.health_stats.outbox_pending,
            outbox_in_flight=self.sender_stats.in_flight,
            delivered=self.sender_stats.delivered,
            delivery_failures=self.sender_stats.failed,
            database_unavailable_since=self.store_outage.unavailable_since,
            database_error=self.store_outage.error,
            renotify_cycles=self.renotify_stats.cycles,
            actors=tuple(record.status() for record in self._actors.values()),
            mediation=self.mediation.status(),
            mediation_engine=self.engine.status(),
        )

    # --- start-up ------------------------------------------------------------------------------

    async def run(
        self,
        *,
        config_path: str,
        relay_timing: RelayTiming | None = None,
        offload: bool = True,
        shutdown: trio.Event | None = None,
        task_status: trio.TaskStatus[DaemonContext] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start everything, report the `DaemonContext` through `task_status`, then run until
        `shutdown` is set (or until cancelled). Raises `DaemonFatal` for anything CORE-8 calls
        fatal. A shutdown stops the actors, then records the stop while the database is open
        (CORE-10)."""
        config = self.config
        _log_startup(config, config_path)
        try:
            mostro = parse_public_key(config.mostro.pubkey)
        except KeyFormatError as exc:
            raise DaemonFatal(f"invalid [mostro].pubkey: {exc}") from exc
        async with AsyncExitStack() as stack:
            try:
                tracker = await stack.enter_async_context(
                    open_tracker(
                        config.serbero.db_path,
                        wall_clock=self._wall_clock,
                        rand=self._rand,
                        offload=offload,
                        outage=self.store_outage,
                    )
                )
                since = await tracker.ask(ComputeSince())
                _log_since(since)
                requeued = await tracker.ask(RequeueInFlight())
                sending = await tracker.ask(StartSending())
            except StoreError as exc:
                raise DaemonFatal(f"database: {exc}") from exc
            if requeued:
                log.info("outbox_requeued", count=requeued)
            await queue_owed_notices(tracker, config.solvers, escalation=config.escalation.enabled)
            if config.solvers:
                log.info("solvers_ready", solver_count=len(config.solvers))
            else:
                log.warning("no_solvers_configured")
            await self.mediation.prepare(stack)
            try:
                identity = config.identity()
            except KeyFormatError as exc:
                raise DaemonFatal(f"invalid [serbero].private_key: {exc}") from exc
            self._identity_hex = identity.public_hex
            log.info("serbero_identity", serbero_pubkey=identity.public_hex)
            if not config.relays:
                raise DaemonFatal("no relays configured")
            try:
                pool = await stack.enter_async_context(
                    open_relay_pool(
                        [relay.url for relay in config.relays],
                        identity,
                        wall_clock=self._wall_clock,
                        timing=relay_timing,
                        rand=self._rand,
                    )
                )
            except ValueError as exc:
                raise DaemonFatal(f"invalid relay configuration: {exc}") from exc
            self._pool = pool
            log.info("subscribing", kind=DISPUTE_EVENT_KIND, author=mostro, since_ts=since.since)
            subscription = await pool.subscribe(
                Filter(kinds=[DISPUTE_EVENT_KIND], authors=[mostro], since=since.since),
                name=DISPUTE_SUBSCRIPTION,
            )
            self._subscription = subscription
            context = DaemonContext(
                config=config,
                identity=identity,
                mostro_pubkey=mostro,
                tracker=tracker,
                pool=pool,
                wall_clock=self._wall_clock,
                rand=self._rand,
                wrap_salt=sending.salt,
                ring_sender=self.doorbell.ring,
                snapshot=self.snapshot,
                mediation=self.mediation,
                engine=self.engine,
                core_busy=self._sending_notices,
            )
            specs = self._core_actors(context, subscription, sending)
            specs += [
                ActorSpec(name=extra.name, run=_bind(extra, context), restart=extra.restart)
                for extra in optional_actors(context)
            ]
            async with trio.open_nursery() as nursery:
                for spec in specs:
                    self._actors[spec.name] = ActorRecord(spec.name)
                    nursery.start_soon(self.supervise, spec, name=f"actor {spec.name}")
                # The provider's health check must not hold up the core (MED-10).
                nursery.start_soon(self.mediation.check_health, name="mediation bring-up")
                log.info("event_loop_started")
                task_status.started(context)
                if shutdown is not None:
                    await shutdown.wait()
                    # Stop taking work; started store batches finish (the tracker shields
                    # them), in-flight DMs are released at the next start.
                    nursery.cancel_scope.cancel()
            if self._recorder is not None:
                with trio.move_on_after(STOP_RECORD_SECONDS):
                    await self._recorder.record_stop()

    def _sending_notices(self) -> bool:
        return self.sender_stats.in_flight > 0

    def _core_actors(
        self, context: DaemonContext, subscription: Subscription, sending: SendingOrigin
    ) -> list[ActorSpec]:
        config, tracker = context.config, context.tracker
        courier = PoolCourier(
            context.pool,
            context.identity,
            salt=context.wrap_salt,
            spares_for=config.solvers,
            last_outbox_id=sending.last_outbox_id,
            last_outbox_solver=sending.last_outbox_solver,
        )
        sender = OutboxSender(
            tracker,
            context.pool,
            courier,
            config.solvers,
            doorbell=self.doorbell,
            stats=self.sender_stats,
            wall_clock=self._wall_clock,
        )
        # Ingest hands the DMs its decisions claimed straight to the sender (its hot path).
        ingest = Ingest(
            tracker,
            mostro_pubkey=context.mostro_pubkey,
            solvers=config.solvers,
            resolution_notices=config.notifications.resolution,
            lane=sender,
            wall_clock=self._wall_clock,
            stats=self.ingest_stats,
            mediation=self.engine,
            serbero_pubkey=context.identity.public_hex,
        )
        renotifier = Renotifier(
            tracker,
            config.solvers,
            config.timeouts,
            ring_sender=self.doorbell.ring,
            wall_clock=self._wall_clock,
            stats=self.renotify_stats,
        )
        recorder = HealthRecorder(
            tracker,
            context.pool.relay_states,
            self.ingest_stats,
            started_at=self.started_at,
            wall_clock=self._wall_clock,
            stats=self.health_stats,
        )
        self._recorder = recorder

        async def consume_disputes() -> None:
            await ingest.run(subscription.events)

        async def release_claims() -> None:
            released = await tracker.ask(RequeueInFlight())
            log.info("outbox_requeued", count=released)

        return [
            ActorSpec(name="sender", run=sender.run, before_restart=release_claims),
            ActorSpec(name="renotify", run=renotifier.run),
            ActorSpec(name="health_record", run=recorder.run),
            ActorSpec(
                name="ingest", run=consume_disputes, fatal_on_return="dispute event stream ended"
            ),
        ]

    async def supervise(self, spec: ActorSpec) -> None:
        """Run one actor under the restart policy (`serbero.actors.restart.supervise`)."""
        record = self._actors.setdefault(spec.name, ActorRecord(spec.name))
        await supervise(spec, record, wall_clock=self._wall_clock)


def _bind(actor: OptionalActor, context: DaemonContext) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await actor.run(context)

    return run


async def run_supervisor(
    config: Config,
    *,
    config_path: str,
    wall_clock: WallClock,
    rand: Callable[[int], bytes] = os.urandom,
    relay_timing: RelayTiming | None = None,
    offload: bool = True,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[DaemonContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Build a `Supervisor` and run it (see `Supervisor.run`)."""
    supervisor = Supervisor(config, wall_clock=wall_clock, rand=rand)
    await supervisor.run(
        config_path=config_path,
        relay_timing=relay_timing,
        offload=offload,
        shutdown=shutdown,
        task_status=task_status,
    )
