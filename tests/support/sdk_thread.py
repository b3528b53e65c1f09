"""A nostr-sdk client on its own asyncio loop in a background thread, behind a sync API.

nostr-sdk is asyncio-based and must never run inside the Trio loop. Each independent test
peer (solver inbox, simulated Mostro, baseline notifier) therefore owns one private asyncio
loop on a daemon thread; its public methods are plain blocking calls that are safe from any
thread, so a Trio test calls them through ``trio.to_thread.run_sync`` or polls the cheap ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import secrets
import threading
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import nostr_sdk

T = TypeVar("T")

# Default bound for connecting, subscribing (until EOSE) and publishing (until OK).
DEFAULT_TIMEOUT: Final = 10.0
# How long close() waits for the client to shut down and the thread to end.
CLOSE_TIMEOUT: Final = 5.0
# nostr-sdk's notification channel drops what a slow reader lags behind on; a benchmark burst
# (hundreds of disputes times several solvers) must fit without loss.
NOTIFICATION_CHANNEL_SIZE: Final = 1 << 17
# nostr-sdk's smallest allowed reconnect interval; fixed (not adaptive) so a restarted relay
# is picked up again within seconds.
RECONNECT_INTERVAL: Final = datetime.timedelta(seconds=5)
AUTH_KIND: Final = 22242
AUTH_REQUIRED: Final = "auth-required:"


class PublishError(RuntimeError):
    """No relay accepted an event; `failures` maps relay URL to the relay's message."""

    def __init__(self, event_id: str, failures: dict[str, str]) -> None:
        self.event_id = event_id
        self.failures = failures
        detail = "; ".join(f"{url}: {message}" for url, message in sorted(failures.items()))
        super().__init__(f"no relay accepted event {event_id}: {detail or 'no relays'}")


def timeout_duration(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def sdk_error_message(exc: BaseException) -> str:
    """The plain text of an error; nostr-sdk's `Generic` keeps the relay's message as its
    first value (its `str()` wraps it in quotes)."""
    if isinstance(exc, nostr_sdk.NostrSdkError.Generic):
        return str(exc[0])
    return str(exc) or type(exc).__name__


class ThreadedSdkPeer:
    """Lifecycle shared by the peers: a loop thread, one connected client, a notification pump.

    Subclasses override `_on_connected` (subscribe, start workers) and `_on_event` (each event
    from a subscription, once: nostr-sdk dedups by id across relays). Both run on the loop
    thread. Errors a handler raises are recorded in `errors()` and the pump carries on, so a
    hostile event never silences a peer.
    """

    def __init__(
        self, secret_hex: str, relay_urls: Iterable[str], *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.keys = nostr_sdk.Keys.parse(secret_hex)
        self.pubkey_hex: str = self.keys.public_key().to_hex()
        self.relay_urls: list[str] = list(relay_urls)
        if not self.relay_urls:
            raise ValueError("a peer needs at least one relay URL")
        self.timeout = timeout
        self._cond = threading.Condition()
        self._errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: nostr_sdk.Client | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Loop-thread state: subscriptions to wait on or renew, NIP-42 progress per relay.
        self._eose_waiters: dict[str, tuple[set[str], asyncio.Event]] = {}
        self._live_subscriptions: dict[str, nostr_sdk.Filter] = {}
        self._challenges: dict[str, str] = {}
        self._challenge_arrived: dict[str, asyncio.Event] = {}
        self._answered: dict[str, str] = {}
        self._auth_locks: dict[str, asyncio.Lock] = {}
        self._auth_waiters: dict[str, asyncio.Future[tuple[bool, str]]] = {}

    # -- public, any thread ------------------------------------------------------------

    def start(self) -> Self:
        """Connect to the relays (at least one must answer) and run the subclass's setup.
        A peer is single-use: a closed one is not started again (make a new one; an inbox
        replays stored DMs anyway)."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} was already started")
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(
            target=run_loop, name=f"{type(self).__name__}-{self.pubkey_hex[:8]}", daemon=True
        )
        self._thread.start()
        ready.wait()
        try:
            self._call(self._astart(), self.timeout * 2)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Shut the client down and end the thread; idempotent, safe after a failed start."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if loop.is_running():
                self._call(self._aclose(), CLOSE_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CLOSE_TIMEOUT)
            if not thread.is_alive():
                loop.close()
            self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def errors(self) -> list[str]:
        """Problems met while handling incoming events (e.g. a wrap that did not open)."""
        with self._cond:
            return list(self._errors)

    # -- loop-thread plumbing -----------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the peer's loop and block the calling thread for its result."""
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is not running")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{type(self).__name__}: no result within {timeout}s") from None

    @property
    def client(self) -> nostr_sdk.Client:
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__} is not connected")
        return self._client

    def _record_error(self, message: str) -> None:
        with self._cond:
            self._errors.append(message)
            self._cond.notify_all()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A background task owned by this peer: cancelled at close, crash recorded."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                self._record_error(f"task crashed: {finished.exception()!r}")

        task.add_done_callback(done)

    async def _astart(self) -> None:
        client = (
            nostr_sdk.ClientBuilder().notification_channel_size(NOTIFICATION_CHANNEL_SIZE).build()
        )
        self._client = client
        # Take the stream before connecting so no AUTH challenge or event slips past the pump.
        self._spawn(self._pump(client.notifications()))
        options = (
            nostr_sdk.RelayOptions().retry_interval(RECONNECT_INTERVAL).adjust_retry_interval(False)
        )
        for url in self.relay_urls:
            await client.add_relay(nostr_sdk.RelayUrl.parse(url), opts=options)
        await client.connect(and_wait=timeout_duration(self.timeout))
        if not self._connected_urls(await client.relays()):
            raise ConnectionError(f"{type(self).__name__}: no relay reachable: {self.relay_urls}")
        await self._on_connected(client)

    async def _aclose(self) -> None:
        if self._client is not None:
            await self._client.shutdown()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT)

    @staticmethod
    def _connected_urls(relays: dict[nostr_sdk.RelayUrl, nostr_sdk.Relay]) -> list[str]:
        return [
            str(url)
            for url, relay in relays.items()
            if relay.status() == nostr_sdk.RelayStatus.CONNECTED
        ]

    async def _pump(self, stream: nostr_sdk.ClientNotificationStream) -> None:
        while (notification := await stream.next()) is not None:
            if isinstance(notification, nostr_sdk.ClientNotification.NEW_EVENT):
                try:
                    await self._on_event(notification.event)
                except Exception as exc:
                    self._record_error(f"event {notification.event.id().to_hex()}: {exc!r}")
            elif isinstance(notification, nostr_sdk.ClientNotification.MESSAGE):
                self._on_relay_message(str(notification.relay_url), notification.message.as_enum())

    def _on_relay_message(self, url: str, message: nostr_sdk.RelayMessageEnum) -> None:
        if isinstance(message, nostr_sdk.RelayMessageEnum.END_OF_STORED_EVENTS):
            self._note_eose(message.subscription_id, url)
        elif isinstance(message, nostr_sdk.RelayMessageEnum.AUTH):
            self._challenges[url] = message.challenge
            self._challenge_event(url).set()
        elif isinstance(message, nostr_sdk.RelayMessageEnum.OK):
            waiter = self._auth_waiters.pop(message.event_id.to_hex(), None)
            if waiter is not None and not waiter.done():
                waiter.set_result((message.status, message.message))
        elif isinstance(message, nostr_sdk.RelayMessageEnum.CLOSED):
            filter_ = self._live_subscriptions.get(message.subscription_id)
            if filter_ is None:
                return
            if message.message.startswith(AUTH_REQUIRED):
                self._spawn(self._resubscribe(url, message.subscription_id, filter_))
            else:
                self._record_error(f"{url} closed subscription: {message.message}")
                self._note_eose(message.subscription_id, url)

    def _note_eose(self, subscription_id: str, relay_url: str) -> None:
        waiter = self._eose_waiters.get(subscription_id)
        if waiter is not None:
            waiter[0].add(relay_url)
            waiter[1].set()

    def _challenge_event(self, url: str) -> asyncio.Event:
        return self._challenge_arrived.setdefault(url, asyncio.Event())

    async def _authenticate(self, url: str) -> None:
        """NIP-42: answer the relay's latest challenge with a kind 22242 event and wait for
        its OK. Done by hand because nostr-sdk's authenticator calls back into Python on a
        thread without an asyncio loop, which per-peer loops cannot serve."""
        async with self._auth_locks.setdefault(url, asyncio.Lock()):
            async with asyncio.timeout(self.timeout):
                await self._challenge_event(url).wait()
            challenge = self._challenges[url]
            if self._answered.get(url) == challenge:
                return
            auth = (
                nostr_sdk.EventBuilder(nostr_sdk.Kind(AUTH_KIND), "")
                .tags(
                    [
                        nostr_sdk.Tag.parse(["relay", url]),
                        nostr_sdk.Tag.parse(["challenge", challenge]),
                    ]
                )
                .finalize(self.keys)
            )
            verdict: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
            self._auth_waiters[auth.id().to_hex()] = verdict
            relay = await self.client.relay(nostr_sdk.RelayUrl.parse(url))
            if relay is None:
                raise ConnectionError(f"{url} is not in the pool")
            await relay.send_msg(nostr_sdk.ClientMessage.auth(auth))
            async with asyncio.timeout(self.timeout):
                accepted, reason = await verdict
            if not accepted:
                raise PermissionError(f"{url} refused AUTH: {reason}")
            self._answered[url] = challenge

    async def _resubscribe(self, url: str, subscription_id: str, filter_: nostr_sdk.Filter) -> None:
        await self._authenticate(url)
        await self.client.subscribe(
            nostr_sdk.ReqTarget.single(nostr_sdk.RelayUrl.parse(url), [filter_]), id=subscription_id
        )

    async def _subscribe(self, filter_: nostr_sdk.Filter) -> str:
        """Subscribe on every relay and return once each connected relay sent EOSE, so the
        relay holds the subscription before the caller publishes anything. A relay that
        wants NIP-42 first gets it, and the subscription again (also after reconnects)."""
        subscription_id = secrets.token_hex(8)
        seen: set[str] = set()
        changed = asyncio.Event()
        self._eose_waiters[subscription_id] = (seen, changed)
        self._live_subscriptions[subscription_id] = filter_
        try:
            output = await self.client.subscribe(
                nostr_sdk.ReqTarget.auto([filter_]), id=subscription_id
            )
            expected = {str(url) for url in output.success}
            if not expected:
                raise ConnectionError(f"subscription refused everywhere: {output.failed}")
            async with asyncio.timeout(self.timeout):
                while not expected <= seen:
                    changed.clear()
                    await changed.wait()
        finally:
            del self._eose_waiters[subscription_id]
        return subscription_id

    async def _publish(self, event: nostr_sdk.Event) -> list[str]:
        """Send `event` to every connected relay and wait for each OK; returns the relays that
        accepted it. Relay-level sends skip nostr-sdk's client-side signature check, so a
        deliberately broken event reaches the relay and its verdict comes back."""
        relays = await self.client.relays()
        urls = self._connected_urls(relays)
        by_url = {str(url): relay for url, relay in relays.items()}
        results = await asyncio.gather(
            *(self._publish_to(url, by_url[url], event) for url in urls), return_exceptions=True
        )
        failures: dict[str, str] = {}
        accepted: list[str] = []
        for url, result in zip(urls, results, strict=True):
            if isinstance(result, BaseException):
                failures[url] = sdk_error_message(result)
            else:
                accepted.append(url)
        if not accepted:
            raise PublishError(event.id().to_hex(), failures)
        return accepted

    async def _publish_to(self, url: str, relay: nostr_sdk.Relay, event: nostr_sdk.Event) -> None:
        ok_timeout = timeout_duration(self.timeout)
        try:
            await relay.send_event(event, wait_for_ok=True, ok_timeout=ok_timeout)
        except Exception as exc:
            if not sdk_error_message(exc).startswith(AUTH_REQUIRED):
                raise
            await self._authenticate(url)
            await relay.send_event(event, wait_for_ok=True, ok_timeout=ok_timeout)

    # -- hooks (loop thread) -------------------------------------------------------------

    async def _on_connected(self, client: nostr_sdk.Client) -> None:
        """Subclass setup once connected: subscriptions and workers."""

    async def _on_event(self, event: nostr_sdk.Event) -> None:
        """One event from one of this peer's subscriptions."""
