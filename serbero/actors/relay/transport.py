"""Opening a relay's WebSocket in stages we can tell apart: TCP, then TLS, then the handshake.

trio-websocket's `open_websocket_url` does all three at once and reports a refused connection
like any other handshake failure. Doing the TCP step here gives the connection actor two
things. A relay whose TCP connect fails (`RelayUnreachable`: nothing listens, the host is
unreachable, the name does not resolve) costs nothing to try again soon, so its return is
noticed within seconds, while a relay that accepts TCP and then fails or misbehaves gets the
full backoff (BEY-7). And every read on the socket re-arms `TCP_QUICKACK`: relays that leave
Nagle's algorithm on hold each small frame (an OK) until the previous one is acknowledged, and
a delayed ACK on our side stalls several back-to-back OKs by ~40 ms. Trio already sets
`TCP_NODELAY` on the socket, so our own EVENTs are never held back.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Final, NoReturn
from urllib.parse import urlsplit

import msgspec
import trio
from trio_websocket import ConnectionTimeout, WebSocketConnection, wrap_client_stream

__all__ = ["QuickAckStream", "RelayAddress", "RelayUnreachable", "open_relay_websocket"]

# Linux only; elsewhere reads leave the kernel's ACK timing alone.
_TCP_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)
_DEFAULT_PORTS: Final = {"ws": 80, "wss": 443}


class RelayUnreachable(Exception):
    """The TCP connection to a relay could not be made (refused, unreachable, unresolvable,
    or no answer in time): no byte of the relay's own was exchanged."""


class RelayAddress(msgspec.Struct, frozen=True):
    """Where a `ws://` or `wss://` URL points, split for the staged connect."""

    host: str
    port: int
    resource: str
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> RelayAddress:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL with a host: {url!r}")
        resource = parts.path or "/"  # RFC 7230 §5.3.1: an empty path is sent as "/"
        if parts.query:
            resource += "?" + parts.query
        return cls(
            host=parts.hostname,
            port=parts.port or _DEFAULT_PORTS[parts.scheme],
            resource=resource,
            tls=parts.scheme == "wss",
        )

    @property
    def host_header(self) -> str:
        """The `Host:` header: the port is left out when it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS["wss" if self.tls else "ws"]:
            return host
        return f"{host}:{self.port}"


class QuickAckStream(trio.abc.HalfCloseableStream):
    """A TCP stream that acknowledges what it reads at once (`TCP_QUICKACK` after each read;
    the kernel drops back to delayed ACKs on its own, so it is re-armed every time)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.transport_stream = stream
        self.socket = stream.socket

    def _quickack(self) -> None:
        if _TCP_QUICKACK is not None:
            # A socket already closing has nothing left to acknowledge.
            with suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.transport_stream.receive_some(max_bytes)
        if data:
            self._quickack()
        return data

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


async def _open_tcp(address: RelayAddress, deadline: float) -> trio.SocketStream:
    try:
        with trio.fail_at(deadline):
            return await trio.open_tcp_stream(address.host, address.port)
    except trio.TooSlowError:
        raise RelayUnreachable(f"no TCP answer from {address.host}:{address.port}") from None
    except OSError as exc:
        reason = _connect_error_reason(exc)
        target = f"{address.host}:{address.port}"
        raise RelayUnreachable(f"connect to {target} failed: {reason}") from exc


def _connect_error_reason(exc: OSError) -> str:
    """Why the connect failed: trio sums up several attempts as "all attempts ... failed"
    and chains their errors; the first one's errno says it best ("Connection refused")."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
        while isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.errno is not None and cause.errno > 0:
        return os.strerror(cause.errno)
    return str(exc)


def _lone_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in `group` that is not a cancellation, if there is exactly one."""
    failures: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            failures.append(exc)
    return failures[0] if len(failures) == 1 else None


def _raise_unwrapped(exc: BaseException) -> NoReturn:
    """Raise `exc` with its own cause and context, not the group it was found in."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context


@asynccontextmanager
async def open_relay_websocket(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None,
    connect_timeout: float,
    disconnect_timeout: float,
    max_message_size: int,
    message_queue_size: int,
    receive_buffer_size: int,
) -> AsyncIterator[WebSocketConnection]:
    """Connect to `url` (TCP, TLS for wss, the WebSocket handshake, all within
    `connect_timeout`), yield the connection, and close it (waiting up to
    `disconnect_timeout` for the relay's close). Raises `RelayUnreachable` when the TCP
    step fails and trio-websocket's errors (`HandshakeError`, `ConnectionClosed`) for what
    fails later; a single failure is raised as itself, never inside an exception group."""
    address = RelayAddress.from_url(url)
    deadline = trio.current_time() + connect_timeout
    tcp = await _open_tcp(address, deadline)
    plain = QuickAckStream(tcp)
    stream: QuickAckStream | trio.SSLStream[QuickAckStream] = plain
    try:
        if address.tls:
            stream = trio.SSLStream(
                plain,
                ssl_context or ssl.create_default_context(),
                server_hostname=address.host,
                https_compatible=True,
            )
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_at(deadline):
                    # trio-websocket reads and writes through the Stream interface only; its
                    # annotation names the two stream types it opens itself.
                    ws = await wrap_client_stream(
                        nursery,
                        stream,  # type: ignore[arg-type]
                        address.host_header,
                        address.resource,
                        max_message_size=max_message_size,
                        message_queue_size=message_queue_size,
                        receive_buffer_size=receive_buffer_size,
                    )
            except trio.TooSlowError:
                raise ConnectionTimeout from None
            try:
                yield ws
            finally:
                with trio.move_on_after(disconnect_timeout):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        lone = _lone_failure(group)
        if lone is None:
            raise
        _raise_unwrapped(lone)
    finally:
        await trio.aclose_forcefully(stream)
