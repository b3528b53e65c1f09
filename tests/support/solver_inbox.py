"""A solver's DM inbox on nostr-sdk: an independent NIP-17 reader for acceptance tests,
the demo and the notify benchmark.

It proves interoperability, so it shares no code with serbero: nostr-sdk receives the kind
1059 wraps and `UnwrappedGift` opens them.

    with SolverInbox(solver_secret_hex, [relay.url]) as inbox:
        ...                                             # the daemon notifies
        dms = inbox.wait_for_count(1, timeout=30)       # blocking; from Trio use
        assert "dispute-001" in dms[0].content          # trio.to_thread.run_sync
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

import msgspec
import nostr_sdk

from tests.support.sdk_thread import DEFAULT_TIMEOUT, ThreadedSdkPeer

GIFT_WRAP_KIND: Final = 1059
PRIVATE_DM_KIND: Final = 14


class ReceivedDm(msgspec.Struct, frozen=True):
    """One opened DM. `rumor_created_at` is the sender's real send time (the wrap's own
    timestamp is noise); `received_at` is `time.monotonic()` when it was opened, for
    latency figures."""

    sender_hex: str
    content: str
    rumor_created_at: int
    wrap_id: str
    received_at: float


DmCallback = Callable[[ReceivedDm], None]
DmPredicate = Callable[[list[ReceivedDm]], bool]


class SolverInbox(ThreadedSdkPeer):
    """Subscribes to kind 1059 addressed to the solver and keeps every DM it opens, in
    arrival order, once per wrap id.

    The subscription has no `since`: wraps are back-dated by up to two days, and a fresh
    inbox also replays what relays already hold, so after `start()` returns `messages()`
    includes every stored DM. `on_message` (optional) runs on the inbox thread for each new
    DM; what it raises lands in `errors()`.
    """

    def __init__(
        self,
        secret_hex: str,
        relay_urls: Iterable[str],
        *,
        on_message: DmCallback | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(secret_hex, relay_urls, timeout=timeout)
        self._on_message = on_message
        self._messages: list[ReceivedDm] = []
        self._wrap_ids: set[str] = set()

    def messages(self) -> list[ReceivedDm]:
        """A snapshot of the DMs opened so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    def count_containing(self, text: str) -> int:
        """How many DMs have `text` in their content."""
        with self._cond:
            return sum(text in dm.content for dm in self._messages)

    def wait_for(self, predicate: DmPredicate, timeout: float) -> list[ReceivedDm]:
        """Block until `predicate(messages)` holds and return that snapshot; raise
        `TimeoutError` (showing what did arrive) after `timeout` seconds."""
        with self._cond:
            if self._cond.wait_for(lambda: predicate(self._messages), timeout):
                return list(self._messages)
            contents = [dm.content for dm in self._messages]
            errors = list(self._errors)
        raise TimeoutError(
            f"inbox {self.pubkey_hex[:12]}: condition not met in {timeout}s; "
            f"{len(contents)} DMs {contents!r}; errors {errors!r}"
        )

    def wait_for_count(self, count: int, timeout: float, containing: str = "") -> list[ReceivedDm]:
        """Block until at least `count` DMs contain `containing` (any DM when empty); return
        those DMs."""
        self.wait_for(lambda dms: sum(containing in dm.content for dm in dms) >= count, timeout)
        return [dm for dm in self.messages() if containing in dm.content]

    async def _on_connected(self, client: nostr_sdk.Client) -> None:
        wraps_for_me = (
            nostr_sdk.Filter().kind(nostr_sdk.Kind(GIFT_WRAP_KIND)).pubkey(self.keys.public_key())
        )
        await self._subscribe(wraps_for_me)

    async def _on_event(self, event: nostr_sdk.Event) -> None:
        wrap_id = event.id().to_hex()
        with self._cond:
            if wrap_id in self._wrap_ids:
                return
            self._wrap_ids.add(wrap_id)
        try:
            unwrapped = nostr_sdk.UnwrappedGift.from_gift_wrap(self.keys, event)
        except Exception as exc:
            self._record_error(f"wrap {wrap_id} did not open: {exc!r}")
            return
        rumor = unwrapped.rumor()
        rumor_kind = rumor.kind().as_u16()
        if rumor_kind != PRIVATE_DM_KIND:
            self._record_error(f"wrap {wrap_id} holds a kind {rumor_kind} rumor, not a DM")
            return
        dm = ReceivedDm(
            sender_hex=unwrapped.sender().to_hex(),
            content=rumor.content(),
            rumor_created_at=rumor.created_at().as_secs(),
            wrap_id=wrap_id,
            received_at=time.monotonic(),
        )
        with self._cond:
            self._messages.append(dm)
            self._cond.notify_all()
        if self._on_message is not None:
            self._on_message(dm)
