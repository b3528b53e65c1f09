"""The mediation engine: the actor that runs mediation inside the daemon (§1, §7, §15).

It waits for mediation's bring-up (MED-10) and does nothing when mediation is off or failed.
Otherwise it builds the shared parts once (MED-11: the solver-auth handle, the take client,
the chat actor with its key cache, the open procedure and the start actor), resumes what a
restart left behind (§15), attaches to the daemon's `MediationHandle` so the ingest can ask
for event-driven starts (MED-30), and then ticks every `[chat].inbound_fetch_interval_seconds`
(BEY-24; MED-5: the first tick one period after start, never two at once). Between ticks the
live watch (`watch.py`) stores each party answer as it arrives, and an answer that completes a
round is evaluated at once (BEY-30), so the model sees it without waiting for the next tick.

A tick runs MED-70's stages in order: (a) start attempts for eligible disputes, (b) the chat
pass (republish unsent rows, ingest both parties of every session with keys) whose batches
go to the rounds stage, then the rounds stage's pending evaluations (Q-1), (c) the timeout
sweep, (d) summary delivery for `classified` sessions (Q-2). The rounds and summary stages
are their own objects (`rounds`, `summaries`); a stage that is not wired is skipped, and
what it would have read stays in the database for the tick that has it. A failing stage is
logged and the tick goes on (MED-70).

Solver authorization (MED-53, Q-8): Mostro has no request that says "is this key a solver",
so the bring-up check passes, as the reference's does. The real test is the take: a take
Mostro refuses with `not_authorized` reports the loss (MED-56), which pauses every open for
`[mediation].solver_auth_retry_initial_seconds`; the next attempt after that is a take again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import trio

from serbero.actors.mediation.auth import AuthRetryPolicy, SolverAuth
from serbero.actors.mediation.chat import ChatActor, InboundBatch
from serbero.actors.mediation.handle import EngineFigures, MediationHandle
from serbero.actors.mediation.opening import Opener
from serbero.actors.mediation.rounds import RoundEvaluator
from serbero.actors.mediation.start import StartActor
from serbero.actors.mediation.summary import SummaryDelivery
from serbero.actors.mediation.take import TakeClient
from serbero.actors.mediation.watch import ChatWatch
from serbero.actors.relay_pool import RelayPool
from serbero.actors.restart import describe_error
from serbero.actors.tracker import Tracker
from serbero.actors.tracker_requests import ListLiveSessionChatKeys
from serbero.clock import WallClock, system_wall_clock
from serbero.config.schema import Config
from serbero.log import get_logger
from serbero.mediation.bringup import MediationContext
from serbero.protocol.keys import Keys
from serbero.store.chat import SessionChatKeys
from serbero.store.errors import StoreError

if TYPE_CHECKING:
    from serbero.actors.supervisor import DaemonContext

__all__ = [
    "MIN_TICK_SECONDS",
    "MediationEngine",
    "RoundStage",
    "SummaryStage",
    "run_mediation_engine",
    "solver_auth_check",
]

log = get_logger("serbero.mediation")

T = TypeVar("T")

# A configured interval of 0 would spin; one second is the shortest period the tick takes.
MIN_TICK_SECONDS: Final = 1.0
# Sessions evaluated at once after the parties answered: each mostly waits on the model, so
# one after the other would make the last of many sessions wait for all the others' calls.
EVALUATION_CONCURRENCY: Final = 16


class RoundStage(Protocol):
    """MED-70 (b)/(c) after the chat pass: evaluate inbound news, then sweep."""

    async def on_batch(self, batch: InboundBatch) -> None: ...

    async def on_answer(self, batch: InboundBatch) -> None: ...

    async def evaluate_pending(self) -> None: ...

    async def sweep(self, now: int) -> None: ...


class SummaryStage(Protocol):
    """MED-70 (d): deliver the summary of every session left `classified` (Q-2)."""

    async def deliver_pending(self) -> None: ...


async def solver_auth_check() -> None:
    """MED-53 / Q-8: no Mostro exchange answers "am I a solver"; the take is the real test
    (a `not_authorized` refusal reports the loss), so the check itself passes."""


class MediationEngine:
    """Owns mediation's actors for one daemon; `await engine.run()` until cancelled.

    `ring_sender` wakes the outbox sender after a stage queued solver DMs; `core_busy` says
    whether the sender has notices in flight (start attempts wait for it, core first).
    """

    def __init__(
        self,
        *,
        config: Config,
        context: MediationContext,
        tracker: Tracker,
        pool: RelayPool,
        identity: Keys,
        mostro_pubkey: str,
        handle: MediationHandle,
        ring_sender: Callable[[], None] = lambda: None,
        core_busy: Callable[[], bool] = lambda: False,
        wall_clock: WallClock = system_wall_clock,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._config = config
        self._context = context
        self._tracker = tracker
        self._handle = handle
        self._wall_clock = wall_clock
        self.interval = max(float(config.chat.inbound_fetch_interval_seconds), MIN_TICK_SECONDS)
        self.figures = EngineFigures()
        self.auth = SolverAuth(
            tracker, solver_auth_check, AuthRetryPolicy.from_config(config.mediation)
        )
        self.take = TakeClient(pool, identity, mostro_pubkey, wall_clock=wall_clock, rand=rand)
        self.chat = ChatActor(
            pool, tracker, identity, wall_clock=wall_clock, fetch_interval=self.interval, rand=rand
        )
        self.watch = ChatWatch(pool, self.chat)
        # Evaluations running at once, from the tick and the live watch together.
        self._evaluations = trio.CapacityLimiter(EVALUATION_CONCURRENCY)
        self.opener = Opener(
            tracker, context, self.auth, self.take, self.chat, ring_sender=ring_sender
        )
        # Starts wait while the core delivers notices (its figures come first).
        self.start = StartActor(tracker, self.opener.attempt, core_busy=core_busy)
        summaries = SummaryDelivery(tracker, context, ring_sender=ring_sender)
        self.evaluator = RoundEvaluator(
            tracker,
            context,
            self.chat,
            self.auth,
            deliver=summaries.deliver,
            ring_sender=ring_sender,
        )
        # The tick's stages; a test may put a stand-in in their place.
        self.rounds: RoundStage | None = self.evaluator
        self.summaries: SummaryStage | None = summaries

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """MED-12: auth handle, take subscription, restart resume once, then the tick loop.
        Reports `started` once the ingest's requests reach the start actor."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.auth.run)
            await nursery.start(self.take.run)
            await self.resume()
            await nursery.start(self.start.run)
            answers, answers_out = trio.open_memory_channel[InboundBatch](math.inf)
            await nursery.start(self.watch.run, answers)
            nursery.start_soon(self._evaluate_answers, answers_out)
            self._handle.attach(
                self.start,
                self.figures,
                in_flight=lambda: len(self.start.in_flight),
                with_keys=lambda: len(self.chat.sessions()),
                watched=lambda: self.watch.watched_sessions,
                solver_auth=lambda: self.auth.state.value,
            )
            try:
                log.info(
                    "mediation_engine_started",
                    tick_seconds=self.interval,
                    sessions_live=self.figures.sessions_live,
                    sessions_with_keys=len(self.chat.sessions()),
                    solver_authorized=self.auth.authorized,
                )
                task_status.started()
                while True:
                    await trio.sleep(self.interval)
                    await self.tick()
            finally:
                self._handle.detach()

    async def resume(self) -> None:
        """§15 / BEY-16: re-derive every Live session's chat keys from its stored trade
        pubkeys, publish again what a crash left unsent (Q-4), and apply MED-151 to the
        sessions whose keys cannot be restored. A store failure here is logged: the tick
        retries the chat part at every pass."""
        try:
            live = await self._tracker.ask(ListLiveSessionChatKeys())
            restored = set(await self.chat.restore())
            republished = await self.chat.republish_unsent()
        except StoreError as exc:
            log.warning("mediation_resume_failed", error=str(exc))
            return
        self.figures.sessions_live = len(live)
        for row in live:
            if row.session_id not in restored:
                await self._keys_lost(row)
        log.info(
            "mediation_resumed",
            sessions_live=len(live),
            sessions_restored=len(restored),
            republished=republished,
        )

    async def _keys_lost(self, row: SessionChatKeys) -> None:
        """MED-151: a session whose keys cannot be rebuilt gets no chat pass; under the
        policy it was pinned to it stays for the sweep, under another it is escalated
        `policy_bundle_missing` through the rounds stage's recommend (MED-125, Q-5)."""
        changed = row.policy_hash != self._context.bundle.policy_hash
        log.warning(
            "mediation_session_keys_lost",
            session_id=row.session_id,
            dispute_id=row.dispute_id,
            policy_changed=changed,
        )
        if changed:
            await self.evaluator.policy_changed(row.session_id, row.dispute_id)

    async def tick(self) -> None:
        """MED-70 once: start attempts, the chat pass and its evaluations, the sweep, the
        summaries. A failing stage is logged and counted; the next stage runs anyway."""
        await self._stage("start", self.start.tick)
        rounds = self.rounds
        send, receive = trio.open_memory_channel[InboundBatch](math.inf)

        async def chat_pass() -> None:
            async with send:
                await self._stage("chat", _bound(self.chat.pass_once, send))

        # A session's batch is evaluated while the pass goes on with the other sessions.
        async with trio.open_nursery() as nursery, receive:
            nursery.start_soon(chat_pass)
            async for batch in receive:
                if rounds is not None:
                    nursery.start_soon(self._evaluate, rounds.on_batch, batch)
        if rounds is not None:
            await self._stage("evaluate", rounds.evaluate_pending)
            await self._stage("sweep", _bound(rounds.sweep, self._wall_clock()))
        if self.summaries is not None:
            await self._stage("summaries", self.summaries.deliver_pending)
        await self._stage("count", self._count_live)
        self.figures.ticks += 1
        self.figures.last_tick_at = self._wall_clock()

    async def _evaluate(
        self, step: Callable[[InboundBatch], Awaitable[None]], batch: InboundBatch
    ) -> None:
        async with self._evaluations:
            await self._stage("rounds", _bound(step, batch))

    async def _evaluate_answers(self, answers: trio.MemoryReceiveChannel[InboundBatch]) -> None:
        """The answers the live watch stored go to the rounds stage beside the tick (BEY-30)."""
        async with trio.open_nursery() as nursery:
            async for batch in answers:
                if self.rounds is not None:
                    nursery.start_soon(self._evaluate, self.rounds.on_answer, batch)

    async def _count_live(self) -> None:
        live = await self._tracker.ask(ListLiveSessionChatKeys())
        self.figures.sessions_live = len(live)

    async def _stage(self, name: str, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except Exception as exc:
            # MED-70: one stage's failure never stops the tick or the engine.
            self.figures.stage_failures += 1
            log.error("mediation_tick_stage_failed", stage=name, error=describe_error(exc))


def _bound(step: Callable[[T], Awaitable[None]], arg: T) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        await step(arg)

    return call


async def run_mediation_engine(context: DaemonContext) -> None:
    """The engine as an optional actor: returns quietly when mediation is off or its
    bring-up failed; otherwise runs until the daemon stops (a crash restarts it, and the
    restart resumes from the database like a new process would)."""
    mediation = await context.mediation.wait_settled()
    if mediation is None:
        return
    engine = MediationEngine(
        config=context.config,
        context=mediation,
        tracker=context.tracker,
        pool=context.pool,
        identity=context.identity,
        mostro_pubkey=context.mostro_pubkey,
        handle=context.engine,
        ring_sender=context.ring_sender,
        core_busy=context.core_busy,
        wall_clock=context.wall_clock,
        rand=context.rand,
    )
    await engine.run()
