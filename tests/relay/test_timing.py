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
        (5, [0, 6, 13, 22]),  # short-lived links: the backoff keeps growing
        (61, [0, 62, 124, 186]),  # a healthy minute resets it to ~1 s
    ],
)
async def test_backoff_resets_after_a_healthy_minute(
    autojump_clock: Any, hold: float, expected_opens: list[float]
) -> None:
    async def script(conn: RawConnection) -> None:
        with trio.move_on_after(hold):
            await conn.serve_forever()

    async with open_raw_relay(script) as relay, pool_for(relay.url):
        while len(relay.connections) < len(expected_opens):
            await trio.sleep(0.5)
        opens = [c.opened_at for c in relay.connections]
    assert [round(t - opens[0], 2) for t in opens] == expected_opens


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
