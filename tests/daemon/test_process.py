"""The installed `serbero` script as operators run it: SIGTERM/SIGINT (CORE-10), a fatal
start (CORE-9), and `kill -9` in the middle of a burst (BEY-2: nothing decided is lost;
BEY-26: nothing delivered is repeated)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

from serbero.ops.database import open_for_reading
from serbero.ops.status import STALE_HEARTBEAT_SECONDS, read_status
from serbero.protocol.keys import Keys
from tests.daemon.process import SERBERO_SCRIPT, DaemonProcess, write_config
from tests.daemon.support import SHUTDOWN_BUDGET, Harness, count_rows, in_thread
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.solver_inbox import ReceivedDm


def wraps_per_notice(dms: list[ReceivedDm]) -> Counter[tuple[str, str]]:
    """Distinct wrap ids (the inbox keeps one DM per wrap id) per (notice, dispute line)."""
    return Counter((dm.content.split("\n")[0], dm.content.split("\n")[1]) for dm in dms)


BURST = 120
PUBLISHED_WHILE_DOWN = 20
KILL_AFTER_DMS = 10
SETTLE_BOUND = 30.0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_daemon_cleanly_within_two_seconds(
    local_relay: LocalRelayProcess, tmp_path: Path, signum: signal.Signals
) -> None:
    config = write_config(tmp_path, mostro=Keys.generate(), relay_url=local_relay.url, solvers=[])
    daemon = DaemonProcess(config, Keys.generate())
    try:
        daemon.wait_for_event("event_loop_started")
        daemon.wait_for_event("subscription_sent")
        sent_at = time.monotonic()
        daemon.signal(signum)
        code = daemon.wait(SHUTDOWN_BUDGET + 1)
        elapsed = time.monotonic() - sent_at
    finally:
        daemon.stop()
    assert code == 0
    assert elapsed < SHUTDOWN_BUDGET, elapsed
    assert daemon.wait_for_event("shutdown_signal")["signal"] == signum.name
    assert daemon.events()[-1] == "exited_cleanly"


def _status(config: Path) -> subprocess.CompletedProcess[str]:
    """`serbero status` as an operator runs it: the config, and no key in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERBERO_")}
    return subprocess.run(
        [str(SERBERO_SCRIPT), "status", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _status_until(config: Path, code: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = _status(config)
        if result.returncode == code:
            return result.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"status never exited {code}: {result}")
        time.sleep(0.2)


def test_status_says_stopped_at_once_after_a_clean_stop_and_not_after_a_crash(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """A clean stop records itself (exit 3, `stopped`); the next start clears it; kill -9
    records nothing, so the heartbeat is left to go stale (exit 2 once it is)."""
    config = write_config(tmp_path, mostro=Keys.generate(), relay_url=local_relay.url, solvers=[])
    serbero = Keys.generate()
    daemon = DaemonProcess(config, serbero)
    try:
        daemon.wait_for_event("subscription_sent")
        assert _status_until(config, 0).startswith("serbero status: healthy")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(SHUTDOWN_BUDGET + 1) == 0
    finally:
        daemon.stop()
    stopped = _status(config)
    assert stopped.returncode == 3, stopped
    assert stopped.stdout.startswith("serbero status: stopped (clean shutdown ")
    assert "relays      0 of 1 connected" in stopped.stdout

    again = DaemonProcess(config, serbero)
    try:
        again.wait_for_event("subscription_sent")
        assert _status_until(config, 0).startswith("serbero status: healthy")
        again.process.kill()
        again.wait(5)
    finally:
        again.stop()
    db = tmp_path / "serbero.db"
    with open_for_reading(str(db)) as opened:
        now = int(time.time())
        assert read_status(opened, now).stopped_at is None
        later = read_status(opened, now + STALE_HEARTBEAT_SECONDS + 60)
    assert later.problems[0].startswith("heartbeat stale: ")


def test_a_fatal_start_exits_1_with_daemon_terminated(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        mostro=Keys.generate(),
        relay_url="ws://127.0.0.1:1",
        solvers=[],
        db_name="missing-dir/serbero.db",
    )
    daemon = DaemonProcess(config, Keys.generate())
    try:
        code = daemon.wait(10)
    finally:
        daemon.stop()
    assert code == 1
    assert "cannot open database" in daemon.wait_for_event("daemon_terminated")["error"]


async def test_kill_9_mid_burst_then_restart_every_dispute_reaches_every_solver(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    """BEY-2: disputes decided but not delivered when the process died, DMs in flight, and
    disputes published while it was down all reach every solver after a restart. BEY-26:
    DMs published but not yet recorded when it died are sent again as the same events, so
    each solver's client sees every notice exactly once (one wrap id each)."""
    async with Harness(local_relay.url, str(tmp_path / "serbero.db")) as h:
        config = write_config(
            tmp_path,
            mostro=h.mostro,
            relay_url=local_relay.url,
            solvers=[keys.public_hex for keys in h.solver_keys],
        )
        first = DaemonProcess(config, h.serbero)
        try:
            await in_thread(first.wait_for_event, "subscription_sent")
            # Most of the burst at once, so the daemon is deep in it when it dies.
            opening = [
                await in_thread(h.sim.sign_opening, f"burst-{index}")
                for index in range(BURST - PUBLISHED_WHILE_DOWN)
            ]
            await in_thread(h.sim.publish_signed, opening)
            await in_thread(h.inboxes[0].wait_for_count, KILL_AFTER_DMS, 30.0)
            first.signal(signal.SIGKILL)
            killed_with = h.dm_counts()
            assert first.wait(5) == -signal.SIGKILL
        finally:
            first.stop()
        assert min(killed_with) < BURST - PUBLISHED_WHILE_DOWN, killed_with
        for index in range(BURST - PUBLISHED_WHILE_DOWN, BURST):
            await in_thread(h.sim.open_dispute, f"burst-{index}")

        second = DaemonProcess(config, h.serbero)
        try:
            expected = {f"dispute_id: burst-{index}" for index in range(BURST)}
            for inbox in h.inboxes:
                await in_thread(
                    inbox.wait_for,
                    lambda dms: expected <= {dm.content.split("\n")[1] for dm in dms},
                    30.0,
                )
            await in_thread(second.wait_for_event, "event_loop_started")

            def all_delivered() -> bool:
                done = "lifecycle_state = 'notified'"
                return (
                    count_rows(h.db_path, "disputes", done) == BURST
                    and count_rows(h.db_path, "notification_outbox", "state = 'pending'") == 0
                )

            # Bounds a failing run only. Every wrap is already in the inboxes here; what may
            # still be owed is the record of a resend that went out before the restarted
            # daemon's link was up, and that waits out its retry backoff (5 s, then 10 s).
            with trio.fail_after(SETTLE_BOUND):
                while not all_delivered():
                    await trio.sleep(0.05)
            second.signal(signal.SIGTERM)
            assert second.wait(SHUTDOWN_BUDGET + 1) == 0
        finally:
            second.stop()
        for inbox in h.inboxes:
            per_notice = wraps_per_notice(inbox.messages())
            assert len(per_notice) == BURST
            repeated = {notice: n for notice, n in per_notice.items() if n > 1}
            assert repeated == {}, f"{len(repeated)} notices arrived as several wraps"
        # The kill caught DMs in flight (claimed, maybe published, not recorded): the
        # restart sent them again, and they arrived as the wraps already seen.
        requeued = [r["count"] for r in second.records if r.get("event") == "outbox_requeued"]
        assert requeued and requeued[0] > 0, requeued
