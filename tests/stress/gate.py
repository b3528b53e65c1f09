"""A gate in front of each relay process: how the stress run takes a relay down without the
relay losing what it acknowledged.

LocalRelay answers OK before every subscriber has the event, and keeps answering for a moment
after SIGTERM; stopped while events are in flight, it exits with events it acknowledged but
never delivered, and it comes back empty. A real relay stores an event before its OK and
serves it after a restart, so an event lost that way is the harness's doing, not the
daemon's (the stress run lost 8 DMs and 6 disputes so).

Every client (Mostro, the daemon, the solver inboxes) therefore reaches a relay through its
gate, a loopback TCP forwarder. `close()` stops listening (reconnects are refused) and
passing what clients send (nothing new gets acknowledged), lets the relay's frames flow for
FLUSH_SECONDS (what it acknowledged reaches the subscribers connected to it), then drops
every connection: the clients see the relay go away. `open()` listens again, on the
same port, once the relay runs. LocalRelay's own cut of a busy connection passes through
unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

import trio

LOOPBACK: Final = "127.0.0.1"
FLUSH_SECONDS: Final = 0.5
READ_SIZE: Final = 64 * 1024
READY_TIMEOUT: Final = 10.0


class Gate:
    """One relay's gate; runs on the gates' Trio loop."""

    def __init__(self, relay_port: int, nursery: trio.Nursery) -> None:
        self.relay_port = relay_port
        self.port = 0
        self._nursery = nursery
        self._listening = trio.CancelScope()
        self._links: trio.Nursery | None = None
        self._passing = True

    @property
    def url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}"

    async def open(self) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=LOOPBACK)
        self.port = listeners[0].socket.getsockname()[1]
        self._passing = True
        self._listening = trio.CancelScope()
        links: trio.Nursery = await self._nursery.start(_hold_nursery)
        self._links = links
        self._nursery.start_soon(self._serve, listeners, self._listening, links)

    async def close(self) -> None:
        self._passing = False
        self._listening.cancel()
        await trio.sleep(FLUSH_SECONDS)
        if self._links is not None:
            self._links.cancel_scope.cancel()

    async def _serve(
        self, listeners: list[trio.SocketListener], scope: trio.CancelScope, links: trio.Nursery
    ) -> None:
        # Cancelling the scope closes the listeners; the connections live on in `links`.
        with scope:
            await trio.serve_listeners(self._handle, listeners, handler_nursery=links)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                relay = await trio.open_tcp_stream(LOOPBACK, self.relay_port)
            except OSError:
                return  # the relay is not up: the client sees its connection closed
            async with relay, trio.open_nursery() as nursery:
                nursery.start_soon(self._to_relay, client, relay, nursery.cancel_scope)
                nursery.start_soon(_to_client, relay, client, nursery.cancel_scope)

    async def _to_relay(
        self, client: trio.SocketStream, relay: trio.SocketStream, done: trio.CancelScope
    ) -> None:
        try:
            while data := await client.receive_some(READ_SIZE):
                if not self._passing:
                    await trio.sleep_forever()  # closing: nothing new reaches the relay
                await relay.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


async def _hold_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    """A nursery for one opening's connections, handed to the caller to cancel."""
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


async def _to_client(
    relay: trio.SocketStream, client: trio.SocketStream, done: trio.CancelScope
) -> None:
    try:
        while data := await relay.receive_some(READ_SIZE):
            await client.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()


class Gates:
    """The gates of every relay, served by a Trio loop on a thread of their own; `close(i)`
    and `open(i)` block the calling thread until done."""

    def __init__(self, relay_ports: Sequence[int]) -> None:
        self._relay_ports = list(relay_ports)
        self._gates: list[Gate] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gates", daemon=True)

    @property
    def urls(self) -> list[str]:
        return [gate.url for gate in self._gates]

    def start(self) -> Gates:
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT) or self._error is not None:
            raise RuntimeError(f"relay gates did not start: {self._error!r}")
        return self

    def close(self, index: int) -> None:
        trio.from_thread.run(self._gates[index].close, trio_token=self._token)

    def open(self, index: int) -> None:
        trio.from_thread.run(self._gates[index].open, trio_token=self._token)

    def stop(self) -> None:
        if self._thread.is_alive():
            if self._stop is not None:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join()

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._gates = [Gate(port, nursery) for port in self._relay_ports]
            for gate in self._gates:
                await gate.open()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()
