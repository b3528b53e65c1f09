"""The start actor's scheduling: non-blocking requests (MED-30), the tick over eligible
disputes (MED-31), one attempt per dispute at a time (Q-18), backoff after a failure that
deserves a retry (Q-3, BEY-20) and a refused take final until a new dispute event (BEY-15).

The open procedure itself is replaced by a recording callable here: what is under test is
when attempts run, against the real eligibility listing of a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from serbero.actors.mediation.start import (
    CORE_FIRST_MAX_WAIT_SECONDS,
    START_CONCURRENCY,
    OpenResult,
    Outcome,
    StartActor,
)
from serbero.actors.tracker import Tracker, open_tracker
from serbero.reasoning.types import Role
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from serbero.store.sessions import StartTrigger
from tests.store.helpers import T0, event
from tests.support.clocks import FakeWallClock

D1 = "11111111-1111-4111-8111-111111111111"
D2 = "22222222-2222-4222-8222-222222222222"


class Recorder:
    """Stands in for the open procedure: records each call and answers as told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Role, StartTrigger]] = []
        self.answer: Outcome = "failed"
        self.retry = True
        self.held: set[str] = set()
        self.release = trio.Event()

    async def __call__(self, dispute_id: str, role: Role, trigger: StartTrigger) -> OpenResult:
        self.calls.append((dispute_id, role, trigger))
        if dispute_id in self.held:
            await self.release.wait()
        return OpenResult(outcome=self.answer, dispute_id=dispute_id, retry=self.retry)


@pytest.fixture
async def tracker(tmp_path: Path) -> AsyncIterator[Tracker]:
    path = str(tmp_path / "serbero.db")
    conn, _ = open_database(path)
    record_detected(conn, event(D1, initiator="seller"), (), T0)
    record_detected(conn, event(D2, ts=T0 + 1), (), T0)
    record_detected(conn, event("not-a-uuid", ts=T0 + 2), (), T0)
    conn.close()
    async with open_tracker(path, wall_clock=FakeWallClock(T0), offload=False) as opened:
        yield opened


def test_a_request_never_blocks(tmp_path: Path) -> None:
    async def main() -> None:
        async with open_tracker(
            str(tmp_path / "s.db"), wall_clock=FakeWallClock(T0), offload=False
        ) as tracker:
            actor = StartActor(tracker, Recorder(), queue_size=1)
            assert actor.request(D1) is True
            assert actor.request(D2) is False

    trio.run(main)


async def test_the_tick_tries_eligible_uuid_disputes_oldest_first(tracker: Tracker) -> None:
    recorder = Recorder()
    actor = StartActor(tracker, recorder)
    assert await actor.tick() == 2
    assert recorder.calls == [(D1, "seller", "tick_retry"), (D2, "buyer", "tick_retry")]


async def test_one_attempt_per_dispute_at_a_time(tracker: Tracker) -> None:
    """A second request and the tick both leave a dispute alone while it is being tried."""
    recorder = Recorder()
    recorder.held = {D1}
    actor = StartActor(tracker, recorder)
    with trio.fail_after(5):
        await _two_requests_and_a_tick(actor, recorder)
    assert recorder.calls == [(D1, "seller", "detected"), (D2, "buyer", "tick_retry")]


async def _two_requests_and_a_tick(actor: StartActor, recorder: Recorder) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert actor.request(D1) and actor.request(D1)
        await trio.testing.wait_all_tasks_blocked()
        assert actor.in_flight == {D1}
        assert await actor.tick() == 1
        recorder.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert actor.in_flight == frozenset()
        nursery.cancel_scope.cancel()


async def test_a_failed_attempt_backs_off_doubling(
    tracker: Tracker, autojump_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    actor = StartActor(tracker, recorder, backoff_initial=60, backoff_max=100)
    assert await actor.tick() == 2
    assert await actor.tick() == 0
    await trio.sleep(59)
    assert await actor.tick() == 0
    await trio.sleep(1)
    assert await actor.tick() == 2
    await trio.sleep(99)
    assert await actor.tick() == 0
    await trio.sleep(1)
    assert await actor.tick() == 2  # capped at backoff_max
    recorder.answer, recorder.retry = "opened", False
    await trio.sleep(100)
    assert await actor.tick() == 2
    assert await actor.tick() == 2  # success cleared the backoff; eligibility is the store's


async def test_a_refused_take_is_final_until_a_new_dispute_event(tracker: Tracker) -> None:
    recorder = Recorder()
    recorder.answer, recorder.retry = "take_refused", False
    actor = StartActor(tracker, recorder)
    assert await actor.tick() == 2
    assert await actor.tick() == 0
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.request(D1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert recorder.calls[-1] == (D1, "seller", "detected")


async def test_a_request_for_an_unknown_dispute_runs_nothing(tracker: Tracker) -> None:
    recorder = Recorder()
    actor = StartActor(tracker, recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.request("33333333-3333-4333-8333-333333333333")
        actor.request("not-a-uuid")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert recorder.calls == []


async def test_a_burst_runs_start_concurrency_attempts_at_a_time(tmp_path: Path) -> None:
    """Many new disputes at once: two open procedures run, the rest wait in flight (so
    neither a request nor the tick starts them twice) and run as slots free up."""
    disputes = [f"{n}{n}{n}{n}{n}{n}{n}{n}-0000-4000-8000-000000000000" for n in range(5)]
    path = str(tmp_path / "serbero.db")
    conn, _ = open_database(path)
    for index, dispute in enumerate(disputes):
        record_detected(conn, event(dispute, ts=T0 + index), (), T0)
    conn.close()
    recorder = Recorder()
    recorder.held = set(disputes)
    async with (
        open_tracker(path, wall_clock=FakeWallClock(T0), offload=False) as tracker,
        trio.open_nursery() as nursery,
    ):
        actor = StartActor(tracker, recorder)
        await nursery.start(actor.run)
        for dispute in disputes:
            assert actor.request(dispute)
        await trio.testing.wait_all_tasks_blocked()
        assert START_CONCURRENCY == 2
        assert [call[0] for call in recorder.calls] == disputes[:2]
        assert actor.in_flight == set(disputes)
        assert await actor.tick() == 0
        recorder.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(call[0] for call in recorder.calls) == sorted(disputes)
        assert actor.in_flight == frozenset()
        nursery.cancel_scope.cancel()


async def test_an_attempt_waits_while_the_core_sends_notices(
    tracker: Tracker, autojump_clock: trio.testing.MockClock
) -> None:
    """Core first: no verdict or take while notices are in flight; at most the max wait."""
    recorder = Recorder()
    busy_until = trio.current_time() + 1.0
    actor = StartActor(tracker, recorder, core_busy=lambda: trio.current_time() < busy_until)
    began = trio.current_time()
    await actor.tick()
    assert [call[0] for call in recorder.calls] == [D1, D2]
    assert 1.0 <= trio.current_time() - began < 1.1

    always = StartActor(tracker, Recorder(), core_busy=lambda: True)
    began = trio.current_time()
    await always.tick()
    # Each of the two attempts waited out the bound, then ran: mediation never starves.
    assert trio.current_time() - began == pytest.approx(2 * CORE_FIRST_MAX_WAIT_SECONDS, abs=0.1)
