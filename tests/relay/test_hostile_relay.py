"""A relay that misbehaves on purpose: garbage, wrong frame types, forged events, oversized
frames, abrupt closes. The connection actor logs, skips, reconnects, and keeps serving
(PROTO-9, PROTO-14, CORE-24, BEY-7)."""

from __future__ import annotations

import time
from functools import partial

import msgspec
import trio
from structlog.testing import capture_logs

from serbero.actors.relay import RelayState
from serbero.actors.relay_pool import open_relay_pool
from serbero.protocol.keys import Keys
from serbero.protocol.messages import MAX_FRAME_BYTES, Filter
from tests.relay.helpers import FAST, note
from tests.relay.raw_relay import RawConnection, open_raw_relay

GARBAGE = [
    "not json at all",
    "{}",
    "[]",
    '"just a string"',
    '["EVENT"]',
    '["WHAT", 1]',
    '["OK", 5, "x"]',
    '["EOSE"]',
    '["NOTICE"]',
    '["AUTH", 42]',
    '["CLOSED"]',
    '["EVENT","sub",{"id":"short"}]',
    "[" * 10_000,
]
# Well-formed frames about nothing we asked for: ignored without a warning.
MEANINGLESS = [
    '["OK","zz",true,""]',
    '["EOSE","nobody"]',
    '["CLOSED","nobody","error: whatever"]',
    '["NOTICE","hello"]',
]


async def test_garbage_oversized_frames_and_abrupt_closes_never_stop_the_pool() -> None:
    keys, author = Keys.generate(), Keys.generate()
    now = int(time.time())
    first, second, third = (note(author, text, created_at=now) for text in ("1", "2", "3"))
    forged = msgspec.structs.replace(note(author, "forged", created_at=now), sig="11" * 64)

    async def script(conn: RawConnection) -> None:
        sub_id = (await conn.receive_until("REQ"))[1]
        if conn.index == 0:
            for junk in GARBAGE + MEANINGLESS:
                await conn.send_text(junk)
            await conn.send_bytes(b"\xff\x00 binary junk")
            await conn.send_event("unknown-subscription", first)
            await conn.send_event(sub_id, forged)
            await conn.send_event(sub_id, first)
            # Past the 5 MiB limit: the client closes with 1009 and comes back.
            await conn.send_text("x" * (MAX_FRAME_BYTES + 1))
            await conn.serve_forever()
        elif conn.index == 1:
            await conn.send_event(sub_id, second)
            await conn.abort()
        else:
            await conn.send_event(sub_id, third)
            await conn.serve_forever()

    with capture_logs() as logs:
        async with (
            open_raw_relay(script) as relay,
            open_relay_pool([relay.url], keys, timing=FAST) as pool,
        ):
            sub = await pool.subscribe(Filter(kinds=[1]), name="feed")
            with trio.fail_after(10):
                received = [(await sub.events.receive()).event for _ in range(3)]
            assert received == [first, second, third]
            assert pool.relay_states()[relay.url].connected
            assert len(relay.connections) == 3

    malformed = [r for r in logs if r["event"] == "relay_frame_malformed"]
    assert len(malformed) == len(GARBAGE) + 1
    assert all(r["log_level"] == "warning" and r["relay"] == relay.url for r in malformed)
    # A reason, never the payload.
    assert all(len(r["reason"]) <= 201 and "x" * 100 not in r["reason"] for r in malformed)
    [invalid] = [r for r in logs if r["event"] == "invalid_event_discarded"]
    assert invalid["event_id"] == forged.id
    disconnects = [r for r in logs if r["event"] == "relay_disconnected"]
    assert len(disconnects) == 2
    assert "1009" in disconnects[0]["reason"]
    assert "1006" in disconnects[1]["reason"]


async def test_a_relay_that_rejects_the_handshake_is_retried() -> None:
    """A plain TCP service that is not a WebSocket server: handshake errors, then recovery."""
    keys = Keys.generate()
    attempts = 0

    async def not_websocket(stream: trio.SocketStream) -> None:
        nonlocal attempts
        attempts += 1
        await stream.send_all(b"HTTP/1.1 500 Nope\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, not_websocket, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        states_send, states_recv = trio.open_memory_channel[RelayState](100)
        with capture_logs() as logs:
            async with open_relay_pool([url], keys, timing=FAST, state_changes=states_send):
                with trio.fail_after(5):
                    while attempts < 3:
                        await states_recv.receive()
        nursery.cancel_scope.cancel()
    failures = [r for r in logs if r["event"] == "relay_connect_failed"]
    assert failures[0]["log_level"] == "warning"
    assert all(r["log_level"] == "debug" for r in failures[1:])
    assert "ConnectionRejected" in failures[0]["reason"]


async def test_wss_urls_speak_tls_and_a_stuck_handshake_times_out() -> None:
    """wss:// opens with a TLS ClientHello; a peer that never completes the handshake is
    given up after the connect timeout and retried."""
    keys = Keys.generate()
    first_bytes: list[bytes] = []

    async def plain_tcp(stream: trio.SocketStream) -> None:
        first_bytes.append(await stream.receive_some(5))
        await stream.aclose()

    timing = msgspec.structs.replace(FAST, connect_timeout=0.5)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, plain_tcp, 0, host="127.0.0.1"))
        url = f"wss://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        states_send, states_recv = trio.open_memory_channel[RelayState](100)
        async with open_relay_pool([url], keys, timing=timing, state_changes=states_send):
            with trio.fail_after(5):
                state = await states_recv.receive()
                while len(first_bytes) < 2:
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert not state.connected
    assert state.last_error is not None and "ConnectionTimeout" in state.last_error
    # 0x16 0x03: a TLS handshake record, i.e. a ClientHello.
    assert all(data[:2] == b"\x16\x03" for data in first_bytes)


async def test_a_state_watcher_that_never_reads_does_not_stall_the_links() -> None:
    keys, author = Keys.generate(), Keys.generate()
    event = note(author, "still flowing", created_at=int(time.time()))

    async def script(conn: RawConnection) -> None:
        sub_id = (await conn.receive_until("REQ"))[1]
        await conn.send_event(sub_id, event)
        await conn.abort()

    states_send, _states_recv = trio.open_memory_channel[RelayState](0)
    async with (
        open_raw_relay(script) as relay,
        open_relay_pool([relay.url], keys, timing=FAST, state_changes=states_send) as pool,
    ):
        sub = await pool.subscribe(Filter(kinds=[1]), name="feed")
        with trio.fail_after(5):
            assert (await sub.events.receive()).event == event
            while len(relay.connections) < 4:
                await trio.sleep(0.01)
