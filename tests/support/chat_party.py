"""A trade party on Mostro's dispute chat, on nostr-sdk: reads what Serbero sends it and
answers through the relay, for the mediation tests.

It shares no code with serbero: the shared key is the x coordinate of ECDH(trade secret,
Serbero's pubkey) computed with coincurve (PROTO-56), wraps are opened and built with
nostr-sdk's NIP-44 and event builder (PROTO-58: a kind 1059 wrap from a one-time key around a
kind 1 note signed by the trade key, no seal).

    with ChatParty(buyer_trade_secret_hex, serbero_pubkey_hex, [relay.url]) as buyer:
        buyer.wait_for_count(1, timeout=10)          # Serbero's opening message
        buyer.reply("I paid, here is the proof")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Final

import coincurve
import msgspec
import nostr_sdk

from tests.support.sdk_thread import DEFAULT_TIMEOUT, ThreadedSdkPeer

CHAT_WRAP_KIND: Final = 1059
CHAT_INNER_KIND: Final = 1


def shared_secret_hex(secret_hex: str, peer_pubkey_hex: str) -> str:
    """PROTO-56: the x coordinate of secret * peer (even-y lift of the x-only key), hex."""
    point = coincurve.PublicKey(b"\x02" + bytes.fromhex(peer_pubkey_hex))
    return point.multiply(bytes.fromhex(secret_hex)).format(compressed=True)[1:].hex()


class ChatNote(msgspec.Struct, frozen=True):
    """One note the party opened: who signed it, what it says, its inner time and wrap."""

    author: str
    content: str
    created_at: int
    inner_id: str
    wrap_id: str


def chat_wrap(shared_pubkey_hex: str, inner_json: str) -> nostr_sdk.Event:
    """A kind 1059 wrap of `inner_json` (sent as is) from a fresh one-time key."""
    one_time = nostr_sdk.Keys.generate()
    content = nostr_sdk.nip44_encrypt(
        one_time.secret_key(),
        nostr_sdk.PublicKey.parse(shared_pubkey_hex),
        inner_json,
        nostr_sdk.Nip44Version.V2,
    )
    return (
        nostr_sdk.EventBuilder(nostr_sdk.Kind(CHAT_WRAP_KIND), content)
        .tags([nostr_sdk.Tag.parse(["p", shared_pubkey_hex])])
        .finalize(one_time)
    )


def signed_note(secret_hex: str, text: str, created_at: int | None = None) -> str:
    """A kind 1 note signed by `secret_hex`, as JSON."""
    when = int(time.time()) if created_at is None else created_at
    return str(
        nostr_sdk.EventBuilder(nostr_sdk.Kind(CHAT_INNER_KIND), text)
        .custom_created_at(nostr_sdk.Timestamp.from_secs(when))
        .finalize(nostr_sdk.Keys.parse(secret_hex))
        .as_json()
    )


NoteCallback = Callable[["ChatNote"], None]


class ChatParty(ThreadedSdkPeer):
    """A buyer or seller: its trade key, its shared key with Serbero, its chat inbox.

    `on_note` (optional) runs on the party's thread for each new note; it must not call
    back into the party (a `reply` from there would wait on the thread running it).
    """

    def __init__(
        self,
        trade_secret_hex: str,
        serbero_pubkey_hex: str,
        relay_urls: Iterable[str],
        *,
        on_note: NoteCallback | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(trade_secret_hex, relay_urls, timeout=timeout)
        self._on_note = on_note
        self.trade_secret_hex = trade_secret_hex
        self.shared = nostr_sdk.Keys.parse(shared_secret_hex(trade_secret_hex, serbero_pubkey_hex))
        self.shared_pubkey_hex: str = self.shared.public_key().to_hex()
        self._notes: list[ChatNote] = []
        self._wraps: set[str] = set()

    def notes(self) -> list[ChatNote]:
        with self._cond:
            return list(self._notes)

    def wait_for_count(self, count: int, timeout: float) -> list[ChatNote]:
        """Block until `count` notes from others than this party arrived; return them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._notes) >= count, timeout):
                raise TimeoutError(f"{len(self._notes)} chat notes, wanted {count}: {self._errors}")
            return list(self._notes)

    def reply(self, text: str, created_at: int | None = None) -> tuple[str, str]:
        """Answer on the dispute chat; returns (inner note id, wrap id)."""
        note = signed_note(self.trade_secret_hex, text, created_at)
        return str(json.loads(note)["id"]), self.send_inner(note)

    def send_inner(self, inner_json: str) -> str:
        """Wrap any inner event (forged, replayed, malformed) to this party's shared key;
        returns the wrap id."""
        return self.publish_wrap(chat_wrap(self.shared_pubkey_hex, inner_json))

    def publish_wrap(self, wrap: nostr_sdk.Event) -> str:
        self._call(self._publish(wrap), self.timeout * 2)
        return wrap.id().to_hex()

    async def _on_connected(self, client: nostr_sdk.Client) -> None:
        await self._subscribe(
            nostr_sdk.Filter().kind(nostr_sdk.Kind(CHAT_WRAP_KIND)).pubkey(self.shared.public_key())
        )

    async def _on_event(self, event: nostr_sdk.Event) -> None:
        wrap_id = event.id().to_hex()
        with self._cond:
            if wrap_id in self._wraps:
                return
            self._wraps.add(wrap_id)
        inner_json = nostr_sdk.nip44_decrypt(
            self.shared.secret_key(), event.author(), event.content()
        )
        inner = nostr_sdk.Event.from_json(inner_json)
        if not inner.verify():
            raise ValueError(f"wrap {wrap_id}: inner note does not verify")
        author = inner.author().to_hex()
        if author == self.pubkey_hex:
            return  # our own replies come back on the same filter
        note = ChatNote(
            author=author,
            content=inner.content(),
            created_at=inner.created_at().as_secs(),
            inner_id=inner.id().to_hex(),
            wrap_id=wrap_id,
        )
        with self._cond:
            self._notes.append(note)
            self._cond.notify_all()
        if self._on_note is not None:
            self._on_note(note)
