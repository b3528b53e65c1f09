"""Reconnect schedule, keep-alive and outage logging in virtual time (BEY-7, BEY-9, CORE-23).

Everything here runs under `autojump_clock` against in-process servers, with neutral jitter so
the expected instants are exact.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from serbero.actors.relay import RelayState
from tests.relay.helpers import pool_for, refused_port
from tests.relay.raw_relay import RawConnection, open_raw_relay


async def test_default_reconnect_schedule_doubles_from_one_second_to_a_sixty_second_cap(
    autojump_clock: Any,
) -> None:
    states_send, states_recv = trio.open_memory_channel[RelayState](100)
    failures: list[float] = []
    with refused_port() as port:
        async with pool_for(f"ws://127.0.0.1:{port}", state_changes=states_send):
            while len(failures) < 9:
                state = await states_recv.receive()
                assert not state.connected
                assert state.reconnect_attempts == len(failures) + 1
                assert state.last_error is not None
                failures.append(trio.current_time())
    start = failures[0]
    assert [round(t - start, 3) for t in failures] == [0, 1, 3, 7, 15, 31, 63, 123, 183]


@pytest.mark.parametrize(
    ("hold", "expected_opens"),
    [
        (5, [0, 6, 13, 22]),  # links shorter than HEALTHY_AFTER: the backoff keeps growing
        (15, [0, 16, 32, 48]),  # links that stayed up 10 s: every reconnect after ~1 s
    ],
)
async def test_backoff_resets_after_a_healthy_link(
    autojump_clock: Any, hold: float, expected_opens: list[float]
) -> None:
    """BEY-7: a relay that keeps dropping healthy links is rejoined within ~1 s each time; one
    that accepts and soon closes gets 1, 2, 4 ... s (HEALTHY_AFTER = 10 s tells them apart)."""

    async def script(conn: RawConnection) -> None:
        with trio.move_on_after(hold):
            await conn.serve_forever()

    async with open_raw_relay(script) as relay, pool_for(relay.url):
        while len(relay.connections) < len(expected_opens):
            await trio.sleep(0.5)
        opens = [c.opened_at for c in relay.connections]
    assert [round(t - opens[0], 2) for t in opens] == expected_opens


async def test_failed_attempts_of_one_outage_do_not_delay_the_next(autojump_clock: Any) -> None:
    """BEY-7: the retries during an outage grow (1, 2, 4, 8 s); once the relay served again,
    even for only 5 s, its next drop is retried after ~1 s, not after 16 s."""
    port_holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    port_holder.bind(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    port_holder.close()
    opened: list[float] = []

    async def serve_for(
        seconds: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on the port, close the first link after `seconds`, then stop listening."""

        async def script(conn: RawConnection) -> None:
            with trio.move_on_after(seconds):
                await conn.serve_forever()

        async with open_raw_relay(script, port=port) as relay:
            task_status.started()
            while not relay.connections:
                await trio.sleep(0.01)
            opened.append(relay.connections[0].opened_at)
            await trio.sleep(seconds + 0.5)

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_for, 20)  # listening before the pool starts
        async with pool_for(f"ws://127.0.0.1:{port}"):
            while len(opened) < 1:
                await trio.sleep(0.01)
            # A healthy 20 s link, then the relay is away for 8.5 s: the retries at +1, +3
            # and +7 s fail, the one at +15 s connects.
            await trio.sleep(20.5 + 8)
            await serve_for(5)  # served for 5 s, then closed by the relay
            await serve_for(5)  # listening again before the retry 1 s later
    drop_at = opened[0] + 20
    assert round(opened[1] - drop_at, 2) == 1 + 2 + 4 + 8
    assert round(opened[2] - (opened[1] + 5), 2) == 1  # not 16 s: that outage is over


async def test_missing_pong_drops_the_link_and_reconnects(autojump_clock: Any) -> None:
    """BEY-9: ping at 30 s, no pong by 40 s → drop (2 s closing grace) → reconnect ~1 s later."""

    async def script(conn: RawConnection) -> None:
        if conn.index == 0:
            await conn.go_silent()
        await conn.serve_forever()

    with capture_logs() as logs:
        async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
            while len(relay.connections) < 2:
                await trio.sleep(0.5)
            await pool.wait_connected()
            gap = relay.connections[1].opened_at - relay.connections[0].opened_at
    assert gap >= 40
    assert gap == pytest.approx(30 + 10 + 2 + 1, abs=0.1)
    [drop] = [r for r in logs if r["event"] == "relay_disconnected"]
    assert drop["reason"] == "no pong within 10 s"


async def test_a_relay_that_answers_pings_keeps_its_link(autojump_clock: Any) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.serve_forever()

    async with open_raw_relay(script) as relay, pool_for(relay.url) as pool:
        await trio.sleep(300)
        assert pool.connected_count() == 1
        assert len(relay.connections) == 1


async def test_total_outage_is_logged_once_per_outage(autojump_clock: Any) -> None:
    """CORE-23: degraded_all_relays_down once per total outage, relays_recovered after it."""

    async def script(conn: RawConnection) -> None:
        await conn.serve_forever()

    flaky = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    flaky.bind(("127.0.0.1", 0))
    flaky_port = flaky.getsockname()[1]
    with capture_logs() as logs, refused_port() as dead_port:
        async with pool_for(f"ws://127.0.0.1:{dead_port}", f"ws://127.0.0.1:{flaky_port}") as pool:
            await trio.sleep(200)
            assert [r["event"] for r in logs if "relays" in r["event"]] == [
                "degraded_all_relays_down"
            ]
            flaky.close()
            async with open_raw_relay(script, port=flaky_port):
                await pool.wait_connected()
                await trio.sleep(1)
            # The relay went away again: a second outage.
            await trio.sleep(200)
    relay_events = [r for r in logs if "relays" in r["event"]]
    assert [r["event"] for r in relay_events] == [
        "degraded_all_relays_down",
        "relays_recovered",
        "degraded_all_relays_down",
    ]
    assert relay_events[0]["log_level"] == "warning"
    assert relay_events[0]["relay_count"] == 2
