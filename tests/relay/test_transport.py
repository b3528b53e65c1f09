"""The staged connect: a refused TCP connect is told apart from later failures, a single
failure comes out bare (never inside an exception group), and reads acknowledge at once."""

from __future__ import annotations

import socket
from contextlib import AbstractAsyncContextManager
from functools import partial

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    WebSocketConnection,
)

from serbero.actors.relay.transport import (
    QuickAckStream,
    RelayAddress,
    RelayUnreachable,
    open_relay_websocket,
)
from tests.relay.helpers import refused_port
from tests.relay.raw_relay import RawConnection, open_raw_relay


def connect(
    url: str, connect_timeout: float = 5.0
) -> AbstractAsyncContextManager[WebSocketConnection]:
    return open_relay_websocket(
        url,
        ssl_context=None,
        connect_timeout=connect_timeout,
        disconnect_timeout=1.0,
        max_message_size=1 << 20,
        message_queue_size=8,
        receive_buffer_size=1 << 16,
    )


@pytest.mark.parametrize(
    ("url", "host", "port", "resource", "tls", "host_header"),
    [
        ("ws://127.0.0.1:7000", "127.0.0.1", 7000, "/", False, "127.0.0.1:7000"),
        ("wss://relay.example", "relay.example", 443, "/", True, "relay.example"),
        (
            "wss://relay.example:443/nostr?x=1",
            "relay.example",
            443,
            "/nostr?x=1",
            True,
            "relay.example",
        ),
        ("ws://relay.example/", "relay.example", 80, "/", False, "relay.example"),
        ("wss://relay.example:80", "relay.example", 80, "/", True, "relay.example:80"),
        ("ws://[::1]:7447", "::1", 7447, "/", False, "[::1]:7447"),
    ],
)
def test_relay_address_from_url(
    url: str, host: str, port: int, resource: str, tls: bool, host_header: str
) -> None:
    address = RelayAddress.from_url(url)
    assert (address.host, address.port, address.resource, address.tls) == (
        host,
        port,
        resource,
        tls,
    )
    assert address.host_header == host_header


@pytest.mark.parametrize("url", ["http://relay.example", "ws://", "relay.example"])
def test_relay_address_refuses_what_is_not_a_websocket_url(url: str) -> None:
    with pytest.raises(ValueError, match="ws://"):
        RelayAddress.from_url(url)


async def test_a_refused_connect_is_relay_unreachable() -> None:
    with refused_port() as port, pytest.raises(RelayUnreachable) as caught:
        async with connect(f"ws://127.0.0.1:{port}"):
            pytest.fail("connected to a port nobody listens on")
    assert str(caught.value) == f"connect to 127.0.0.1:{port} failed: Connection refused"


async def test_a_rejected_handshake_is_raised_bare_after_tcp_succeeded() -> None:
    async def reject(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, reject, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(ConnectionRejected) as caught:
            async with connect(f"ws://127.0.0.1:{port}"):
                pytest.fail("the handshake was rejected")
        nursery.cancel_scope.cancel()
    assert caught.value.status_code == 503


async def test_the_link_serves_messages_and_errors_of_the_body_come_out_bare() -> None:
    async def echo_once_then_close(conn: RawConnection) -> None:
        await conn.send_text(await conn.receive())

    async with open_raw_relay(echo_once_then_close) as relay:
        with pytest.raises(ConnectionClosed):
            async with connect(relay.url) as ws:
                await ws.send_message('["REQ","s",{}]')
                assert await ws.get_message() == '["REQ","s",{}]'
                await ws.get_message()  # the relay closed after its answer
    assert len(relay.connections) == 1


async def test_a_silent_handshake_times_out_within_the_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        start = trio.current_time()
        with pytest.raises(ConnectionTimeout):
            async with connect(f"ws://127.0.0.1:{port}", connect_timeout=4):
                pytest.fail("a silent server completed the handshake")
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start == pytest.approx(4)


async def test_reads_re_arm_quick_acks_on_a_no_delay_socket() -> None:
    """Linux leaves quick-ACK mode once the exchange looks interactive; the stream re-arms it
    after every read so a relay's back-to-back OKs are not held by our delayed ACK."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is None:
        pytest.skip("TCP_QUICKACK is Linux-only")

    async def ping_pong(stream: trio.SocketStream) -> None:
        for _ in range(5):
            await stream.send_all(b"ok")
            await stream.receive_some(16)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, ping_pong, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        modes: dict[str, list[int]] = {}
        for name, wrap in (("plain", False), ("quickack", True)):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            assert tcp.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            stream: trio.abc.Stream = QuickAckStream(tcp) if wrap else tcp
            seen = modes.setdefault(name, [])
            for _ in range(5):
                await stream.receive_some(16)
                seen.append(tcp.socket.getsockopt(socket.IPPROTO_TCP, quickack))
                await stream.send_all(b"EVENT")
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert modes["quickack"] == [1] * 5
    assert 0 in modes["plain"]  # what the re-arming is for
