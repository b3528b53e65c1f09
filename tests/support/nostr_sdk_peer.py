"""Synchronous helpers around nostr-sdk (rust-nostr) as an independent interop peer.

Only plain Python values (hex strings, JSON text) cross this boundary so tests never hold
nostr-sdk objects. Every call here is one of nostr-sdk's blocking FFI functions: no asyncio loop
is created, so these helpers are safe from sync tests and from worker threads. Never call them
from inside the Trio loop: use ``trio.to_thread.run_sync`` there.
"""

from __future__ import annotations

import json
from typing import Any

import nostr_sdk


def _keys(secret_hex: str) -> nostr_sdk.Keys:
    return nostr_sdk.Keys.parse(secret_hex)


def _public_key(pk_hex: str) -> nostr_sdk.PublicKey:
    return nostr_sdk.PublicKey.parse(pk_hex)


def public_key_of(secret_hex: str) -> str:
    """nostr-sdk's derivation of the x-only public key, as hex."""
    return str(_keys(secret_hex).public_key().to_hex())


def make_private_dm(sender_secret_hex: str, receiver_pk_hex: str, text: str) -> str:
    """``nip17_make_private_msg`` (what ``send_private_msg`` publishes); the wrap as JSON."""
    wrap = nostr_sdk.nip17_make_private_msg(
        _keys(sender_secret_hex), _public_key(receiver_pk_hex), text
    )
    return str(wrap.as_json())


def open_gift_wrap(receiver_secret_hex: str, wrap_json: str) -> tuple[str, dict[str, Any]]:
    """``UnwrappedGift.from_gift_wrap``: returns (sender hex, rumor as a JSON object)."""
    wrap = nostr_sdk.Event.from_json(wrap_json)
    unwrapped = nostr_sdk.UnwrappedGift.from_gift_wrap(_keys(receiver_secret_hex), wrap)
    rumor: dict[str, Any] = json.loads(unwrapped.rumor().as_json())
    return str(unwrapped.sender().to_hex()), rumor


def nip44_encrypt(secret_hex: str, peer_pk_hex: str, plaintext: str) -> str:
    return str(
        nostr_sdk.nip44_encrypt(
            _keys(secret_hex).secret_key(),
            _public_key(peer_pk_hex),
            plaintext,
            nostr_sdk.Nip44Version.V2,
        )
    )


def nip44_decrypt(secret_hex: str, peer_pk_hex: str, payload: str) -> str:
    return str(
        nostr_sdk.nip44_decrypt(_keys(secret_hex).secret_key(), _public_key(peer_pk_hex), payload)
    )


def verify_event_json(event_json: str) -> bool:
    """Parse with nostr-sdk and check id and signature. False (not an exception) when nostr-sdk
    refuses the event; anything else (a changed binding, say) must fail the test, not read as
    a refusal that a negative assertion would welcome."""
    try:
        event = nostr_sdk.Event.from_json(event_json)
    except nostr_sdk.NostrSdkError:
        return False
    return bool(event.verify())


def sign_event(
    secret_hex: str, *, kind: int, content: str, tags: list[list[str]], created_at: int
) -> str:
    """Sign an arbitrary event with nostr-sdk's EventBuilder; the event as JSON."""
    builder = (
        nostr_sdk.EventBuilder(nostr_sdk.Kind(kind), content)
        .tags([nostr_sdk.Tag.parse(tag) for tag in tags])
        .custom_created_at(nostr_sdk.Timestamp.from_secs(created_at))
    )
    return str(builder.finalize(_keys(secret_hex)).as_json())
