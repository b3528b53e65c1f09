"""Fixtures for the escalation tests: a migrated database with mediation's second writer, and
for end-to-end runs a real loopback relay, Serbero's relay pool and nostr-sdk solver inboxes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, ExitStack
from pathlib import Path

import pytest
import trio

from serbero.actors.delivery import PoolCourier
from serbero.actors.relay_pool import RelayPool, open_relay_pool
from serbero.actors.tracker import Tracker, open_tracker
from serbero.clock import WallClock, system_wall_clock
from serbero.config import SolverConfig
from serbero.protocol.keys import Keys
from tests.escalation.helpers import Cycle, SecondWriter, SpyDeliver, dispatcher_cycles, solver
from tests.support.clocks import FakeWallClock
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.solver_inbox import ReceivedDm, SolverInbox

DM_TIMEOUT = 10.0


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "serbero.db")


@pytest.fixture
def wall_clock() -> FakeWallClock:
    return FakeWallClock()


@pytest.fixture
async def tracker(db_path: str, wall_clock: FakeWallClock) -> AsyncIterator[Tracker]:
    async with open_tracker(db_path, wall_clock=wall_clock) as handle:
        yield handle


@pytest.fixture
def writer(tracker: Tracker, db_path: str) -> Iterator[SecondWriter]:
    """Depends on `tracker`, which creates and migrates the file first."""
    second = SecondWriter(db_path)
    yield second
    second.close()


class Solver:
    """A configured solver and its nostr-sdk inbox (None for a malformed key)."""

    def __init__(self, config: SolverConfig, inbox: SolverInbox | None) -> None:
        self.config = config
        self.inbox = inbox

    @property
    def pubkey(self) -> str:
        return self.config.pubkey

    async def dms(self, count: int = 1) -> list[ReceivedDm]:
        """Wait until the inbox holds `count` DMs and return them all."""
        assert self.inbox is not None
        return await trio.to_thread.run_sync(self.inbox.wait_for_count, count, DM_TIMEOUT)

    def received(self) -> list[ReceivedDm]:
        return [] if self.inbox is None else self.inbox.messages()


class RelayEnv:
    """Everything an end-to-end scenario needs besides its solver list."""

    def __init__(
        self,
        relay: LocalRelayProcess,
        tracker: Tracker,
        pool: RelayPool,
        identity: Keys,
        writer: SecondWriter,
    ) -> None:
        self.relay = relay
        self.tracker = tracker
        self.pool = pool
        self.writer = writer
        self.identity = identity
        self.deliver = SpyDeliver(PoolCourier(pool, self.identity, salt=b"test-salt").deliver)
        self._inboxes = ExitStack()

    def solver(self, permission: str = "write") -> Solver:
        config, keys = solver(permission)
        inbox = self._inboxes.enter_context(SolverInbox(keys.secret.hex(), [self.relay.url]))
        return Solver(config, inbox)

    def malformed_solver(self, text: str = "npub1-not-a-key", permission: str = "write") -> Solver:
        return Solver(SolverConfig.from_text(text, permission), None)  # type: ignore[arg-type]

    def dispatcher(
        self,
        solvers: Sequence[Solver],
        *,
        fallback: bool = False,
        wall_clock: WallClock = system_wall_clock,
    ) -> AbstractAsyncContextManager[Cycle]:
        return dispatcher_cycles(
            self.tracker,
            self.deliver,
            solvers=[s.config for s in solvers],
            fallback=fallback,
            wall_clock=wall_clock,
        )

    def close(self) -> None:
        self._inboxes.close()


@pytest.fixture
async def env(local_relay: LocalRelayProcess, db_path: str) -> AsyncIterator[RelayEnv]:
    async with open_tracker(db_path, wall_clock=system_wall_clock) as handle:
        writer = SecondWriter(db_path)
        identity = Keys.generate()
        async with open_relay_pool([local_relay.url], identity) as pool:
            with trio.fail_after(DM_TIMEOUT):
                await pool.wait_connected()
            relay_env = RelayEnv(local_relay, handle, pool, identity, writer)
            try:
                yield relay_env
            finally:
                relay_env.close()
                writer.close()
