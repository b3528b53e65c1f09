"""The scanner: cadence on a virtual clock (ESC-9/10), the pending scan (ESC-12, ESC-AS-21),
the start-up lines (ESC-8), the idle dispatcher (ESC-AS-1) and the config (ESC-AS-25)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import apsw
import pytest
import trio
from structlog.testing import capture_logs

from serbero.actors.delivery import Delivery, DmIdentity
from serbero.actors.escalation import log_dispatcher_settings, run_dispatcher
from serbero.actors.gate import HandoffOutcome
from serbero.actors.scanner import next_deadline
from serbero.actors.tracker import Request, Tracker, open_tracker
from serbero.actors.tracker_requests import ScanPendingHandoffs
from serbero.config import ConfigError, EscalationConfig, SolverConfig, config_from_toml
from serbero.protocol.keys import Keys
from serbero.store.errors import StoreFailure
from tests.escalation.helpers import (
    FaultyTracker,
    ScriptedDeliver,
    SecondWriter,
    dispatcher_cycles,
    package,
    solver,
)
from tests.support.clocks import FakeWallClock

INTERVAL = 10
W, _ = solver()
R, _ = solver("read")


@pytest.fixture
async def inline_tracker(db_path: str, wall_clock: FakeWallClock) -> AsyncIterator[Tracker]:
    """SQLite on the Trio thread, so the autojump clock never races a worker thread."""
    async with open_tracker(db_path, wall_clock=wall_clock, offload=False) as handle:
        yield handle


class ScanClock:
    """Records the (virtual) time of every page request, relative to the start."""

    def __init__(self) -> None:
        self.start = trio.current_time()
        self.scans: list[float] = []

    def __call__(self, request: Request[Any]) -> Exception | None:
        if isinstance(request, ScanPendingHandoffs):
            self.scans.append(round(trio.current_time() - self.start, 6))
        return None


async def run_for(seconds: float, tracker: Any, deliver: Any, **settings: Any) -> None:
    config = EscalationConfig(enabled=True, dispatch_interval_seconds=INTERVAL, **settings)
    with trio.move_on_after(seconds):
        await run_dispatcher(
            tracker, deliver, settings=config, solvers=[W], wall_clock=FakeWallClock()
        )


# --- cadence (ESC-9) -----------------------------------------------------------------------


async def test_first_cycle_one_interval_after_start_then_on_the_grid(
    autojump_clock: trio.abc.Clock, inline_tracker: Tracker
) -> None:
    clock = ScanClock()
    await run_for(35, FaultyTracker(inline_tracker, clock), ScriptedDeliver())
    assert clock.scans == [10, 20, 30]


async def test_an_overrunning_cycle_is_followed_at_once_and_restarts_the_grid(
    autojump_clock: trio.abc.Clock, inline_tracker: Tracker, db_path: str
) -> None:
    writer = SecondWriter(db_path)
    writer.add_dispute("d-slow")
    writer.add_handoff(package("d-slow"))
    inner = ScriptedDeliver()
    in_flight: list[float] = []

    async def slow(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        in_flight.append(trio.current_time())
        await trio.sleep(25)
        return await inner(solver, body, dm)

    clock = ScanClock()
    await run_for(60, FaultyTracker(inline_tracker, clock), slow)
    # Cycle 1 starts at 10 and ends at 35: nothing scans meanwhile (no overlap, no replayed
    # slots at 20 and 30); the next cycle runs at once and the grid continues from there.
    assert clock.scans == [10, 35, 45, 55]
    assert len(in_flight) == 1
    assert writer.count("escalation_dispatches") == 1
    writer.close()


async def test_a_failed_scan_is_logged_and_the_next_cycle_still_runs(
    autojump_clock: trio.abc.Clock, inline_tracker: Tracker, db_path: str
) -> None:
    writer = SecondWriter(db_path)
    writer.add_dispute("d-1")
    writer.add_handoff(package("d-1"))
    clock = ScanClock()
    failures = [StoreFailure("ScanPendingHandoffs: database is locked")]

    def flaky(request: Request[Any]) -> Exception | None:
        clock(request)
        if isinstance(request, ScanPendingHandoffs) and failures:
            return failures.pop()
        return None

    with capture_logs() as logs:
        await run_for(25, FaultyTracker(inline_tracker, flaky), ScriptedDeliver())
    (failed,) = [e for e in logs if e["event"] == "phase4_dispatcher_cycle_failed"]
    assert failed["log_level"] == "error"
    assert "locked" in failed["error"]
    assert clock.scans == [10, 20]
    assert writer.count("escalation_dispatches") == 1
    writer.close()


async def test_slots_are_skipped_while_the_database_is_unavailable(
    autojump_clock: trio.abc.Clock, inline_tracker: Tracker, db_path: str
) -> None:
    """BEY-25: no scan queues behind held-back decisions; the first slot after the outage
    dispatches what waited."""
    writer = SecondWriter(db_path)
    writer.add_dispute("d-1")
    writer.add_handoff(package("d-1"))
    clock = ScanClock()
    outage = inline_tracker.outage
    outage.failed(apsw.BusyError("database is locked"), now=0, waiting=0)

    def watch(request: Request[Any]) -> Exception | None:
        clock(request)
        return None

    async def clear_later() -> None:
        await trio.sleep(15)
        outage.cleared(now=15)

    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(clear_later)
            await run_for(25, FaultyTracker(inline_tracker, watch), ScriptedDeliver())
    skipped = [e for e in logs if e["event"] == "phase4_dispatcher_cycle_skipped"]
    assert len(skipped) == 1 and skipped[0]["log_level"] == "debug"
    assert clock.scans == [20]
    assert writer.count("escalation_dispatches") == 1
    writer.close()


def test_next_deadline() -> None:
    assert next_deadline(10, 10, 12) == 20
    assert next_deadline(10, 10, 20) == 20
    assert next_deadline(10, 10, 35) == 35


async def test_shutdown_by_cancellation_is_prompt_mid_delivery(
    autojump_clock: trio.abc.Clock, inline_tracker: Tracker, db_path: str
) -> None:
    writer = SecondWriter(db_path)
    writer.add_dispute("d-1")
    writer.add_handoff(package("d-1"))

    async def hanging(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    start = trio.current_time()
    await run_for(12, inline_tracker, hanging)
    assert trio.current_time() - start == pytest.approx(12)
    # Nothing was committed for the interrupted handoff: it is still pending (ESC-30).
    assert writer.count("escalation_dispatches") == 0
    assert len(await inline_tracker.ask(ScanPendingHandoffs())) == 1
    writer.close()


# --- the pending scan (ESC-12, ESC-AS-21) --------------------------------------------------


async def test_as21_scan_through_the_tracker(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock
) -> None:
    writer.add_dispute("d-1")
    writer.add_dispute("d-2")
    # add_handoff also writes an `escalation_recommended` row before each handoff.
    first = writer.add_handoff(package("d-1"))
    parse_failed = writer.add_handoff("{{{")
    second = writer.add_handoff(package("d-2"))
    dispatched = writer.add_handoff(package("d-2"))
    third = writer.add_handoff(package("nobody"))
    pages = await tracker.ask(ScanPendingHandoffs())
    assert [h.id for h in pages] == [first, parse_failed, second, dispatched, third]

    async with dispatcher_cycles(
        tracker, ScriptedDeliver(), solvers=[W], wall_clock=wall_clock
    ) as cycle:
        writer.set_state("d-1", "resolved")
        writer.set_state("d-2", "resolved")
        await cycle()
    writer.execute(
        "INSERT INTO escalation_dispatches (dispatch_id, dispute_id, handoff_event_id,"
        " target_solver, dispatched_at, created_at) VALUES ('x', 'd-2', ?, 'k', 1, 1)",
        (dispatched,),
    )
    pending = await tracker.ask(ScanPendingHandoffs())
    # The parse-failed and the orphan (third) are consumed; superseded ones stay pending.
    assert [h.id for h in pending] == [first, second]
    assert [h.id for h in await tracker.ask(ScanPendingHandoffs(limit=1))] == [first]
    assert [h.id for h in await tracker.ask(ScanPendingHandoffs(after_id=first))] == [second]
    for limit in (0, -1, -(2**63)):
        assert len(await tracker.ask(ScanPendingHandoffs(limit=limit))) == 1


async def test_a_scan_page_holds_128_handoffs(tracker: Tracker, writer: SecondWriter) -> None:
    """ESC-12: pages of 128, so a scan of 129 pending handoffs needs a second page."""
    writer.add_dispute("d-1")
    ids = [writer.add_handoff(package("d-1")) for _ in range(129)]
    first_page = await tracker.ask(ScanPendingHandoffs())
    assert [h.id for h in first_page] == ids[:128]
    last_page = await tracker.ask(ScanPendingHandoffs(after_id=first_page[-1].id))
    assert [h.id for h in last_page] == ids[128:]


async def test_a_handoff_written_between_cycles_is_picked_up_by_the_next(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock
) -> None:
    writer.add_dispute("d-1")
    deliver = ScriptedDeliver()
    async with dispatcher_cycles(tracker, deliver, solvers=[W], wall_clock=wall_clock) as cycle:
        assert (await cycle()).examined == 0
        writer.add_handoff(package("d-1"))
        assert (await cycle()).outcomes == {HandoffOutcome.DISPATCHED: 1}


# --- the idle dispatcher (ESC-AS-1) and ESC-7 ----------------------------------------------


async def test_as1_idle_dispatcher_writes_nothing(
    autojump_clock: trio.abc.Clock, inline_tracker: Tracker, db_path: str
) -> None:
    clock = ScanClock()
    config = EscalationConfig(enabled=True, dispatch_interval_seconds=1)
    with trio.move_on_after(5.5):
        await run_dispatcher(
            FaultyTracker(inline_tracker, clock),  # type: ignore[arg-type]
            ScriptedDeliver(),
            settings=config,
            solvers=[W, R],
            wall_clock=FakeWallClock(),
        )
    assert clock.scans == [1, 2, 3, 4, 5]
    writer = SecondWriter(db_path)
    assert writer.one("SELECT MAX(version) FROM schema_version") >= 5
    tables = [
        name
        for (name,) in writer.rows(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT IN ('schema_version', 'sqlite_sequence')"
        )
    ]
    assert {"escalation_dispatches", "mediation_events", "notifications"} <= set(tables)
    assert {name: writer.count(name) for name in tables} == dict.fromkeys(tables, 0)
    writer.close()


# --- start-up lines (ESC-8) ----------------------------------------------------------------


def test_enabled_line_carries_the_settings() -> None:
    settings = EscalationConfig(enabled=True, dispatch_interval_seconds=7)
    with capture_logs() as logs:
        log_dispatcher_settings(settings, [R, W, W])
    assert logs == [
        {
            "event": "phase4_dispatcher_enabled",
            "log_level": "info",
            "target": "serbero.escalation",
            "dispatch_interval_seconds": 7,
            "fallback_to_all_solvers": False,
            "write_solver_count": 2,
        }
    ]


def test_disabled_line() -> None:
    with capture_logs() as logs:
        log_dispatcher_settings(EscalationConfig(), [W])
    assert [(e["event"], e["log_level"]) for e in logs] == [("phase4_dispatcher_disabled", "info")]


@pytest.mark.parametrize(
    ("solvers", "fallback", "warned"),
    [([R], False, True), ([], False, True), ([R], True, False), ([W], False, False)],
)
def test_no_write_solver_warning(solvers: list[SolverConfig], fallback: bool, warned: bool) -> None:
    settings = EscalationConfig(enabled=True, fallback_to_all_solvers=fallback)
    with capture_logs() as logs:
        log_dispatcher_settings(settings, solvers)
    warnings = [e for e in logs if e["event"] == "phase4_no_write_solver"]
    assert len(warnings) == int(warned)
    if warned:
        assert warnings[0]["log_level"] == "warning"
        assert "unroutable" in warnings[0]["hint"]


# --- configuration (ESC-AS-25) -------------------------------------------------------------

MINIMAL = f"""
[serbero]
private_key = "{Keys(bytes([9]) * 32).secret.hex()}"

[mostro]
pubkey = "{Keys(bytes([8]) * 32).public_hex}"

[[relays]]
url = "wss://relay.example"
"""


def test_as25_missing_section_takes_the_defaults() -> None:
    assert config_from_toml(MINIMAL).config.escalation == EscalationConfig(
        enabled=False, dispatch_interval_seconds=30, fallback_to_all_solvers=False
    )


def test_as25_zero_interval_is_a_start_up_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"\[escalation\]\.dispatch_interval_seconds"):
        config_from_toml(
            MINIMAL + "\n[escalation]\nenabled = true\ndispatch_interval_seconds = 0\n"
        )
