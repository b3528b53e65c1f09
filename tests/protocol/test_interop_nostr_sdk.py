"""Interop with nostr-sdk (rust-nostr), the reference's library (PROTO-30/33).

All nostr-sdk calls go through tests/support/nostr_sdk_peer.py (blocking FFI, no event loop);
these tests are synchronous, so no Trio loop is running while they execute.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from serbero.protocol import nip44
from serbero.protocol.event import EventError, decode_event, encode_event, sign_event, verify_event
from serbero.protocol.keys import Keys
from serbero.protocol.nip59 import NotForMe, build_private_dm, unwrap_gift
from tests.support import nostr_sdk_peer as peer

NOW = 1_700_000_000
TEXTS = [
    "New Mostro dispute requires attention.\ndispute_id: 1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11",
    "x",
    'quotes " and \\ backslash \t tab \u2028 sep \x7f del \x01 ctl é 😀 </script>',
    "y" * 5000,
]


@pytest.fixture
def alice() -> Keys:
    return Keys.generate()


@pytest.fixture
def bob() -> Keys:
    return Keys.generate()


def test_key_derivation_agrees(alice: Keys) -> None:
    assert peer.public_key_of(alice.secret.hex()) == alice.public_hex


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_our_dm_opens_in_nostr_sdk(alice: Keys, bob: Keys, text: str) -> None:
    wrap = build_private_dm(alice, bob.public_hex, text, now=NOW)
    sender, rumor = peer.open_gift_wrap(bob.secret.hex(), encode_event(wrap).decode())
    assert sender == alice.public_hex
    assert rumor["content"] == text
    assert rumor["kind"] == 14
    assert rumor["pubkey"] == alice.public_hex
    assert rumor["created_at"] == NOW
    assert rumor["tags"] == [["p", bob.public_hex]]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_nostr_sdk_dm_opens_here(alice: Keys, bob: Keys, text: str) -> None:
    wrap_json = peer.make_private_dm(alice.secret.hex(), bob.public_hex, text)
    wrap = decode_event(wrap_json)
    verify_event(wrap)
    opened = unwrap_gift(bob, wrap)
    assert opened.sender == alice.public_hex
    assert opened.rumor.content == text
    assert opened.rumor.kind == 14
    assert opened.rumor.tags == [["p", bob.public_hex]]
    assert opened.rumor.id == peer.open_gift_wrap(bob.secret.hex(), wrap_json)[1]["id"]
    with pytest.raises(NotForMe):
        unwrap_gift(alice, wrap)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_nip44_both_ways(alice: Keys, bob: Keys, text: str) -> None:
    ours = nip44.encrypt(text, nip44.conversation_key(alice.secret, bob.public_hex))
    assert peer.nip44_decrypt(bob.secret.hex(), alice.public_hex, ours) == text
    theirs = peer.nip44_encrypt(alice.secret.hex(), bob.public_hex, text)
    assert nip44.decrypt(theirs, nip44.conversation_key(bob.secret, alice.public_hex)) == text


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_our_events_verify_in_nostr_sdk(alice: Keys, text: str) -> None:
    tags = [["p", alice.public_hex], ["t", text[:50]], ["expiration", "1702592000"]]
    event = sign_event(alice, created_at=NOW, kind=1, tags=tags, content=text)
    assert peer.verify_event_json(encode_event(event).decode())
    forged = msgspec.structs.replace(event, content=text + "!")
    assert not peer.verify_event_json(encode_event(forged).decode())


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_their_events_verify_here(alice: Keys, text: str) -> None:
    tags = [["d", "abc"], ["t", text[:50]]]
    raw = peer.sign_event(alice.secret.hex(), kind=38386, content=text, tags=tags, created_at=NOW)
    event = decode_event(raw)
    verify_event(event)
    assert event.pubkey == alice.public_hex
    assert event.content == text
    # Same inputs give the same id on both sides (PROTO-7 escaping agrees).
    ours = sign_event(alice, created_at=NOW, kind=38386, tags=event.tags, content=text)
    assert ours.id == event.id
    tampered = json.loads(raw) | {"content": text + "!"}
    with pytest.raises(EventError):
        verify_event(decode_event(json.dumps(tampered)))
