"""A relay in front of a real relay that refuses the events a test chooses, in-process on Trio.

Every connection is relayed frame by frame to the upstream relay (a LocalRelay), so reads,
subscriptions and accepted publishes behave exactly as the real relay does. An `EVENT` the
`refuse` predicate picks never reaches the upstream: the client gets `OK false` with a
`blocked:` reason, as a relay with a policy against it would answer. Flip `refuse` at any
time; `refused` lists the ids turned away.

    async with open_filtering_relay(local_relay.url, refuse=lambda e: e["kind"] == 1059) as r:
        url = r.url
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

__all__ = ["FilteringRelay", "Refuse", "open_filtering_relay"]

LOOPBACK = "127.0.0.1"
REFUSAL = "blocked: refused by the test relay"

Refuse = Callable[[dict[str, Any]], bool]


def _never(_event: dict[str, Any]) -> bool:
    return False


class FilteringRelay:
    """The proxy's state: where it listens, what it refuses and what it turned away."""

    def __init__(self, upstream: str, refuse: Refuse = _never) -> None:
        self.upstream = upstream
        self.refuse = refuse
        self.refused: list[str] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}"

    async def _handle(self, request: WebSocketRequest) -> None:
        client = await request.accept()
        try:
            async with (
                open_websocket_url(self.upstream) as upstream,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(self._pump, self._upward, client, upstream, nursery)
                nursery.start_soon(self._pump, self._downward, upstream, client, nursery)
        except (ConnectionClosed, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await client.aclose()

    @staticmethod
    async def _pump(
        forward: Callable[[WebSocketConnection, WebSocketConnection], Awaitable[None]],
        source: WebSocketConnection,
        target: WebSocketConnection,
        nursery: trio.Nursery,
    ) -> None:
        """Either side closing ends both directions."""
        try:
            await forward(source, target)
        except (ConnectionClosed, trio.BrokenResourceError):
            pass
        finally:
            nursery.cancel_scope.cancel()

    async def _upward(self, client: WebSocketConnection, upstream: WebSocketConnection) -> None:
        while True:
            text = await client.get_message()
            frame = json.loads(text)
            if isinstance(frame, list) and frame[:1] == ["EVENT"] and self.refuse(frame[1]):
                self.refused.append(str(frame[1].get("id")))
                await client.send_message(json.dumps(["OK", frame[1].get("id"), False, REFUSAL]))
                continue
            await upstream.send_message(text)

    @staticmethod
    async def _downward(upstream: WebSocketConnection, client: WebSocketConnection) -> None:
        while True:
            await client.send_message(await upstream.get_message())


@asynccontextmanager
async def open_filtering_relay(
    upstream: str, refuse: Refuse = _never
) -> AsyncIterator[FilteringRelay]:
    """Serve the proxy on a free loopback port for the block's duration."""
    relay = FilteringRelay(upstream, refuse)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, relay._handle, LOOPBACK, 0, ssl_context=None)
        )
        relay.port = server.port
        yield relay
        nursery.cancel_scope.cancel()
