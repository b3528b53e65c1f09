"""A scripted relay for hostile-input and timing tests, in-process on Trio.

Built on wsproto directly (not trio-websocket's server) so a test controls everything a real
relay never would do on purpose: ignore pings, send garbage or oversized frames, drop the TCP
connection without a closing handshake. Each accepted connection runs the test's script
`async def script(conn: RawConnection) -> None`; when the script returns the connection is
closed cleanly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from serbero.protocol.event import Event, encode_event

READ_SIZE = 64 * 1024


class PeerClosed(Exception):
    """The client closed the connection."""


class RawConnection:
    """The server side of one WebSocket; nothing happens unless the script asks."""

    def __init__(self, stream: trio.SocketStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.answer_pings = True
        self.opened_at = trio.current_time()
        self._ws = WSConnection(ConnectionType.SERVER)
        self._text: list[str] = []
        self._messages: list[str] = []

    async def _pump(self) -> None:
        """Read from the socket once and process what arrived."""
        data = await self.stream.receive_some(READ_SIZE)
        if not data:
            raise PeerClosed
        self._ws.receive_data(data)
        for event in self._ws.events():
            if isinstance(event, Request):
                await self.stream.send_all(self._ws.send(AcceptConnection()))
            elif isinstance(event, Ping):
                if self.answer_pings:
                    await self.stream.send_all(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                await self.stream.send_all(self._ws.send(event.response()))
                raise PeerClosed
            elif isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    self._messages.append("".join(self._text))
                    self._text.clear()
            elif isinstance(event, BytesMessage):
                continue

    async def handshake(self) -> None:
        while self._ws.state is ConnectionState.CONNECTING:
            await self._pump()

    async def receive(self) -> str:
        """The next text message from the client (pings are answered meanwhile)."""
        while not self._messages:
            await self._pump()
        return self._messages.pop(0)

    async def receive_json(self) -> Any:
        return json.loads(await self.receive())

    async def receive_until(self, kind: str) -> list[Any]:
        """Skip client frames until one whose first element is `kind`; return it."""
        while True:
            frame = await self.receive_json()
            if frame[0] == kind:
                return list(frame)

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self._ws.send(TextMessage(data=text)))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(self._ws.send(BytesMessage(data=data)))

    async def send_json(self, frame: Any) -> None:
        await self.send_text(json.dumps(frame, separators=(",", ":")))

    async def send_event(self, sub_id: str, event: Event) -> None:
        await self.send_text(f'["EVENT",{json.dumps(sub_id)},{encode_event(event).decode()}]')

    async def serve_forever(self) -> None:
        """Keep reading (and answering pings, if enabled) until the client leaves."""
        while True:
            await self._pump()

    async def go_silent(self) -> None:
        """Stop reading altogether: pings go unanswered, the socket stays open."""
        await trio.sleep_forever()

    async def abort(self) -> None:
        """Drop the TCP connection without a WebSocket close."""
        await self.stream.aclose()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._ws.state is ConnectionState.OPEN:
            await self.stream.send_all(self._ws.send(CloseConnection(code=code, reason=reason)))
        await self.stream.aclose()


Script = Callable[[RawConnection], Awaitable[None]]


class RawRelay:
    """A loopback WebSocket server running `script` for every connection it accepts."""

    def __init__(self, script: Script, port: int = 0) -> None:
        self.script = script
        self.port = port
        self.connections: list[RawConnection] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(
            partial(trio.serve_tcp, self._handle, self.port, host="127.0.0.1")
        )
        self.port = listeners[0].socket.getsockname()[1]

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = RawConnection(stream, len(self.connections))
        self.connections.append(conn)
        try:
            await conn.handshake()
            await self.script(conn)
            await conn.close()
        except (
            PeerClosed,
            LocalProtocolError,
            RemoteProtocolError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ):
            # The client went away mid-script or spoke no WebSocket (TLS to a plain port):
            # that is what the test is about, not a server failure.
            pass
        finally:
            await stream.aclose()


@asynccontextmanager
async def open_raw_relay(script: Script, port: int = 0) -> AsyncIterator[RawRelay]:
    """Serve `script` on loopback (`port` 0 picks a free one) for the block's duration."""
    async with trio.open_nursery() as nursery:
        relay = RawRelay(script, port)
        await relay.start(nursery)
        yield relay
        nursery.cancel_scope.cancel()
