"""Reconnect schedule, keep-alive and outage logging in virtual time (BEY-7, BEY-9, CORE-23).

Everything here runs under `autojump_clock` against in-process servers, with neutral jitter so
the expected instants are exact.
"""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from serbero.actors.relay import RelayState
from serbero.protocol.messages import Filter
from tests.relay.helpers import pool_for, refused_port
from tests.relay.raw_relay import RawConnection, open_raw_relay
from tests.support.clocks import TrioWallClock


async def test_a_relay_refusing_connections_is_tried_every_two_seconds_however_long(
    autojump_clock: Any,
) -> None:
    """Nothing listens: every attempt is one refused TCP connect, ~2 s apart for as long as
    it lasts (30 a minute), never stretched by the handshake backoff."""
    states_send, states_recv = trio.open_memory_channel[RelayState](100)
    failures: list[float] = []
    with capture_logs() as logs, refused_port() as port:
        async with pool_for(f"ws://127.0.0.1:{port}", state_changes=states_send):
            while len(failures) < 46 and trio.current_time() < 1000:  # 90 s of refusals
                state = await states_recv.receive()
                assert not state.connected
                assert state.reconnect_attempts == len(failures) + 1
                assert state.last_error is not None
                failures.append(trio.current_time())
    start = failures[0]
    assert [round(t - start, 3) for t in failures] == [2.0 * n for n in range(46)]
    scheduled = [r for r in logs if r["event"] == "relay_reconnect_scheduled"]
    assert all(r["refused"] and r["delay_seconds"] == 2.0 for r in scheduled)
    failed = [r for r in logs if r["event"] == "relay_connect_failed"]
    assert [r["log_level"] for r in failed[:2]] == ["warning", "debug"]  # one warning an outage


async def test_a_relay_failing_the_handshake_backs_off_from_one_second_to_sixty(
    autojump_clock: Any,
) -> None:
    """BEY-7: a relay that accepts TCP and then refuses the WebSocket (here an HTTP 503, as a
    proxy in front of a stopped relay answers) is retried after 1, 2, 4 ... s, capped at 60."""
    failures: list[float] = []
    states_send, states_recv = trio.open_memory_channel[RelayState](100)

    async def unavailable(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, unavailable, 0, host="127.0.0.1"))
        url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        with capture_logs() as logs:
            async with pool_for(url, state_changes=states_send):
                while len(failures) < 9:
                    state = await states_recv.receive()
                    assert state.last_error is not None
                    assert "ConnectionRejected" in state.last_error
                    failures.append(trio.current_time())
        nursery.cancel_scope.cancel()
    start = failures[0]
    assert [round(t - start, 3) for t in failures] == [0, 1, 3, 7, 15, 31, 63, 123, 183]
    scheduled = [r for r in logs if r["event"] == "relay_reconnect_scheduled"]
    assert not any(r["refused"] for r in scheduled)


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Resubscriptions:
    """A relay that comes and goes on one port and notes when each link's REQ arrives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reqs: list[float] = []
        self.returns: list[float] = []

    async def serve(
        self, seconds: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen for `seconds`, serving every link, then close them all and stop listening."""

        async def script(conn: RawConnection) -> None:
            await conn.receive_until("REQ")
            self.reqs.append(trio.current_time())
            await conn.serve_forever()

        with trio.move_on_after(seconds):
            async with open_raw_relay(script, port=self.port):
                self.returns.append(trio.current_time())
                task_status.started()
                await trio.sleep_forever()


@pytest.mark.parametrize("outage", [20, 70])
async def test_resubscribed_within_three_seconds_of_the_relay_returning(
    autojump_clock: Any, outage: float
) -> None:
    """A relay stopped for 20 s or 70 s (past the 60 s backoff cap): its return is seen by
    the next ~2 s refused-connect retry, and the subscription is sent again at once."""
    relay = Resubscriptions(free_port())
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve, 30)  # up at the start, healthy for 30 s
        async with pool_for(f"ws://127.0.0.1:{relay.port}") as pool:
            await pool.subscribe(Filter(kinds=[1]), name="feed")
            await trio.sleep(30 + outage)
            await nursery.start(relay.serve, 30)
            await trio.sleep(30)
    assert len(relay.reqs) == 2
    assert relay.reqs[1] - relay.returns[1] <= 3.0
    # A healthy link's drop is retried after ~1 s, then every 2 s: at most 2 s late.
    assert relay.reqs[1] - relay.returns[1] <= 2.0 + 0.01


async def test_started_with_every_relay_down_each_is_resubscribed_within_three_seconds(
    autojump_clock: Any,
) -> None:
    relays = [Resubscriptions(free_port()) for _ in range(2)]
    async with (
        trio.open_nursery() as nursery,
        pool_for(*(f"ws://127.0.0.1:{r.port}" for r in relays)) as pool,
    ):
        await pool.subscribe(Filter(kinds=[1]), name="feed")
        await trio.sleep(45)  # every relay refuses for 45 s, then 80 s for the second
        await nursery.start(relays[0].serve, 60)
        await trio.sleep(35)
        await nursery.start(relays[1].serve, 60)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    for relay in relays:
        assert len(relay.reqs) == 1
        assert relay.reqs[0] - relay.returns[0] <= 3.0


async def test_an_outage_keeps_the_time_it_began(autojump_clock: Any) -> None:
    """Refused retries every 2 s are no change of the link: the state's `since` stays at the
    drop (so the health record is not rewritten every 2 s and status shows when it began)."""
    relay = Resubscriptions(free_port())
    states_send, states_recv = trio.open_memory_channel[RelayState](1000)
    clock = TrioWallClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve, 20)
        async with pool_for(
            f"ws://127.0.0.1:{relay.port}", wall_clock=clock, state_changes=states_send
        ):
            await trio.sleep(20 + 30)
    states: list[RelayState] = []
    while True:
        try:
            states.append(states_recv.receive_nowait())
        except trio.WouldBlock:
            break
    [up] = [s for s in states if s.connected]
    down = [s for s in states if not s.connected]
    assert up.since == clock.start  # connected at once
    assert len(down) >= 10  # the drop, then a refused retry every 2 s
    assert {s.since for s in down} == {clock.start + 20}
    assert [s.reconnect_attempts for s in down] == list(range(1, len(down) + 1))


async def test_a_relay_away_for_long_does_not_delay_the_next_outage(autojump_clock: Any) -> None:
    """BEY-7: after a long outage the relay served again, even for 5 s only: its next
    drop is retried after ~1 s (backoff afresh), not after a minute."""
    relay = Resubscriptions(free_port())
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve, 20)
        async with pool_for(f"ws://127.0.0.1:{relay.port}") as pool:
            await pool.subscribe(Filter(kinds=[1]), name="feed")
            await trio.sleep(20 + 100)
            await relay.serve(5)  # back for 5 s, then away
            await nursery.start(relay.serve, 10)  # and back at once
            await trio.sleep(10)
    assert len(relay.reqs) == 3
    assert relay.reqs[2] - (relay.returns[1] + 5) == pytest.approx(1.0, abs=0.01)


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
