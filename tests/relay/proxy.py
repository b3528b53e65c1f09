"""A loopback TCP proxy in front of a real relay, whose links a test can cut.

Stopping a LocalRelay empties it (it keeps events in memory), so a test that needs a client
to lose its link while the relay keeps what is published meanwhile cuts the link here
instead: `cut()` drops every proxied connection and stops listening (the client's attempts
are refused and it backs off), `restore()` listens on the same port again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

READ_SIZE = 64 * 1024


class CuttableProxy:
    def __init__(self, upstream_port: int, nursery: trio.Nursery) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._nursery = nursery
        self._serving = trio.CancelScope()
        self._links: set[trio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._serving.cancel()
        for scope in self._links:
            scope.cancel()

    async def restore(self) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._serving = trio.CancelScope()
        self._nursery.start_soon(self._serve, listeners, self._serving)

    async def _serve(self, listeners: list[trio.SocketListener], scope: trio.CancelScope) -> None:
        with scope:
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._links.add(scope)
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
            except OSError:
                pass  # the relay is not there: the client sees its connection closed
            finally:
                self._links.discard(scope)
        await client.aclose()


async def _pump(
    source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
) -> None:
    """Copy one direction until either side ends, then end the other direction too."""
    try:
        while data := await source.receive_some(READ_SIZE):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


@asynccontextmanager
async def open_proxy(upstream_port: int) -> AsyncIterator[CuttableProxy]:
    """Serve a proxy to `upstream_port` on a free loopback port for the block's duration."""
    async with trio.open_nursery() as nursery:
        proxy = CuttableProxy(upstream_port, nursery)
        await proxy.restore()
        yield proxy
        nursery.cancel_scope.cancel()
