"""Restarts: the dispatcher keeps no state but the database, so a handoff written while it was
stopped is dispatched once after restart, and a death between sending and committing re-sends
the same DM next time instead of losing the handoff (ESC-30, BEY-2). Real time, 1 s cadence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import trio

from serbero.actors.delivery import PoolCourier
from serbero.actors.escalation import run_dispatcher
from serbero.actors.relay_pool import open_relay_pool
from serbero.actors.tracker import open_tracker
from serbero.actors.tracker_requests import ScanPendingHandoffs
from serbero.clock import system_wall_clock
from serbero.config import EscalationConfig, SolverConfig
from serbero.protocol.handoff import parse_handoff_dm
from serbero.protocol.keys import Keys
from tests.daemon.support import eventually
from tests.escalation.helpers import SecondWriter, SpyDeliver, package, solver
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.solver_inbox import SolverInbox

DM_TIMEOUT = 10.0
SETTINGS = EscalationConfig(enabled=True, dispatch_interval_seconds=1)


@asynccontextmanager
async def running_dispatcher(
    db_path: str,
    relay_url: str,
    identity: Keys,
    solvers: Sequence[SolverConfig],
    after_send: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[SpyDeliver]:
    """One daemon "process": its own tracker, relay pool and dispatcher."""
    async with (
        open_tracker(db_path, wall_clock=system_wall_clock) as tracker,
        open_relay_pool([relay_url], identity) as pool,
    ):
        with trio.fail_after(DM_TIMEOUT):
            await pool.wait_connected()
        deliver = SpyDeliver(
            PoolCourier(pool, identity, salt=b"test-salt").deliver, after=after_send
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    run_dispatcher,
                    tracker,
                    deliver,
                    settings=SETTINGS,
                    solvers=solvers,
                    wall_clock=system_wall_clock,
                )
            )
            yield deliver
            nursery.cancel_scope.cancel()


async def wait_dms(inbox: SolverInbox, count: int) -> list[str]:
    dms = await trio.to_thread.run_sync(inbox.wait_for_count, count, DM_TIMEOUT)
    return [dm.content for dm in dms]


async def committed(writer: SecondWriter, dispatches: int) -> None:
    """Wait until the dispatcher has committed `dispatches` dispatch rows in all."""
    await eventually(lambda: writer.count("escalation_dispatches") >= dispatches, DM_TIMEOUT)


async def pending_after_restart(db_path: str) -> int:
    async with open_tracker(db_path, wall_clock=system_wall_clock) as tracker:
        return len(await tracker.ask(ScanPendingHandoffs()))


async def test_a_handoff_written_while_stopped_is_dispatched_once_after_restart(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    identity = Keys.generate()
    config, keys = solver()
    with SolverInbox(keys.secret.hex(), [local_relay.url]) as inbox:
        async with running_dispatcher(db_path, local_relay.url, identity, [config]) as first:
            writer = SecondWriter(db_path)
            writer.add_dispute("d-before")
            writer.add_dispute("d-while-stopped")
            writer.add_handoff(package("d-before"))
            await wait_dms(inbox, 1)
            await committed(writer, 1)
        assert first.calls == [config.pubkey]
        writer.add_handoff(package("d-while-stopped"))
        async with running_dispatcher(db_path, local_relay.url, identity, [config]) as second:
            bodies = await wait_dms(inbox, 2)
            await committed(writer, 2)
        assert second.calls == [config.pubkey]
    assert [parse_handoff_dm(body).dispute_id for body in bodies] == ["d-before", "d-while-stopped"]
    assert writer.count("escalation_dispatches") == 2
    assert writer.count("mediation_events", "kind = 'escalation_dispatched'") == 2
    assert await pending_after_restart(db_path) == 0
    writer.close()


async def test_death_between_send_and_commit_resends_the_same_dm(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    identity = Keys.generate()
    config, keys = solver()
    with SolverInbox(keys.secret.hex(), [local_relay.url]) as inbox:
        with trio.CancelScope() as process:

            async def die() -> None:
                process.cancel()
                await trio.lowlevel.checkpoint()

            async with running_dispatcher(db_path, local_relay.url, identity, [config], die):
                writer = SecondWriter(db_path)
                writer.add_dispute("d-crash")
                handoff_id = writer.add_handoff(package("d-crash"))
                await trio.sleep_forever()
        # The DM went out; nothing about it was committed and the handoff is still pending.
        await wait_dms(inbox, 1)
        assert writer.count("escalation_dispatches") == 0
        assert await pending_after_restart(db_path) == 1
        async with running_dispatcher(db_path, local_relay.url, identity, [config]) as second:
            bodies = await wait_dms(inbox, 2)
            await committed(writer, 1)
        assert second.calls == [config.pubkey]
    assert bodies[0] == bodies[1]
    assert [row[3] for row in writer.dispatches()] == [handoff_id]
    assert writer.count("mediation_events", "kind = 'escalation_dispatched'") == 1
    assert [n[3] for n in writer.notifications()] == ["sent"]
    writer.close()
