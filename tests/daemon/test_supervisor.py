"""The restart policy (supervisor module docstring) and the live snapshot, on Trio's
autojump clock: backoff between restarts, `before_restart`, crash-loop and stream-end
fatality."""

from __future__ import annotations

import itertools

import pytest
import trio
from structlog.testing import capture_logs

from serbero.actors.restart import MAX_CRASHES, ActorSpec, DaemonFatal, restart_delay
from serbero.actors.supervisor import Supervisor
from serbero.config import Config, MostroConfig, Secret, SerberoConfig
from serbero.protocol.keys import Keys
from tests.support.clocks import FakeWallClock


def supervisor() -> Supervisor:
    config = Config(
        serbero=SerberoConfig(private_key=Secret(Keys.generate().secret.hex())),
        mostro=MostroConfig(pubkey=Keys.generate().public_hex),
    )
    return Supervisor(config, wall_clock=FakeWallClock())


async def test_a_crashed_actor_is_restarted_with_growing_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = supervisor()
    starts: list[float] = []
    restarts: list[float] = []

    async def flaky() -> None:
        starts.append(trio.current_time())
        if len(starts) <= 2:
            raise RuntimeError(f"boom {len(starts)}")

    async def before() -> None:
        restarts.append(trio.current_time())

    with capture_logs() as logs:
        await sup.supervise(ActorSpec(name="flaky", run=flaky, before_restart=before))
    assert starts == [0.0, restart_delay(0), restart_delay(0) + restart_delay(1)]
    assert restarts == starts[1:]
    (status,) = sup.snapshot().actors
    assert (status.state, status.restarts, status.last_error) == (
        "stopped",
        2,
        "RuntimeError: boom 2",
    )
    assert [entry["event"] for entry in logs].count("actor_crashed") == 2
    assert [entry["event"] for entry in logs].count("actor_restarted") == 2


async def test_a_crash_loop_ends_the_daemon(autojump_clock: trio.testing.MockClock) -> None:
    sup = supervisor()
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        raise ValueError("always")

    with pytest.raises(DaemonFatal, match="actor broken crashed"):
        await sup.supervise(ActorSpec(name="broken", run=broken))
    assert runs == MAX_CRASHES


async def test_an_actor_marked_not_restartable_is_fatal_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def broken() -> None:
        raise ValueError("once")

    with pytest.raises(DaemonFatal):
        await supervisor().supervise(ActorSpec(name="core", run=broken, restart=False))


async def test_the_event_stream_ending_is_fatal(autojump_clock: trio.testing.MockClock) -> None:
    """CORE-11: ingest returning means the dispute stream ended."""

    async def ends() -> None:
        await trio.sleep(1)

    with capture_logs() as logs, pytest.raises(DaemonFatal, match="stream ended"):
        await supervisor().supervise(
            ActorSpec(name="ingest", run=ends, fatal_on_return="dispute event stream ended")
        )
    assert [entry["event"] for entry in logs] == ["event_stream_ended"]


async def test_a_long_healthy_run_resets_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = supervisor()
    starts: list[float] = []

    async def crashes_after_a_while() -> None:
        starts.append(trio.current_time())
        if len(starts) > 3:
            return
        await trio.sleep(0 if len(starts) < 3 else 3600)
        raise RuntimeError("again")

    await sup.supervise(ActorSpec(name="worker", run=crashes_after_a_while))
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps[0] == restart_delay(0) and gaps[1] == restart_delay(1)
    assert gaps[2] == 3600 + restart_delay(0), "the backoff started afresh"
