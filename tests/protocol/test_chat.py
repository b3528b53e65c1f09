"""Dispute chat: shared keys (PROTO-54/56), the chat wrap (PROTO-58/60) and ordering (PROTO-61)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serbero.protocol.chat import (
    ChatError,
    ChatMessage,
    build_chat_wrap,
    build_party_wraps,
    derive_chat_material,
    order_inbound,
    shared_keys,
    unwrap_chat,
)
from serbero.protocol.event import Event, encode_event, sign_event
from serbero.protocol.keys import Keys, encode_npub
from serbero.protocol.nip44 import conversation_key, encrypt
from tests.support import nostr_sdk_peer as peer

ZERO_AUX = bytes(32)
NOW = 1_700_000_100


@pytest.fixture(scope="module")
def derived(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (vectors_dir / "serbero-protocol.derived.vectors.json").read_text(encoding="utf-8")
    )
    return data


def _keys(secret_hex: str) -> Keys:
    return Keys.from_secret(bytes.fromhex(secret_hex))


@pytest.fixture(scope="module")
def serbero(derived: dict[str, Any]) -> Keys:
    return _keys(derived["keys"]["serbero"]["secret"])


@pytest.fixture(scope="module")
def buyer(derived: dict[str, Any]) -> Keys:
    return _keys(derived["keys"]["buyer_trade"]["secret"])


@pytest.fixture(scope="module")
def seller(derived: dict[str, Any]) -> Keys:
    return _keys(derived["keys"]["seller_trade"]["secret"])


# --- shared keys --------------------------------------------------------------------------


def test_shared_key_from_the_mostro_docs(derived: dict[str, Any]) -> None:
    """PROTO-56 vector `chat_shared_key_mostro_docs`."""
    vector = derived["chat_shared_key_mostro_docs"]
    keys = shared_keys(_keys(vector["a_secret"]), vector["b_pubkey"])
    assert keys.secret.hex() == vector["shared_secret"]
    assert keys.public_hex == vector["shared_pubkey"]


def test_chat_material_for_serbero(derived: dict[str, Any], serbero: Keys) -> None:
    """PROTO-54/56 vector `chat_shared_key_serbero`."""
    vector = derived["chat_shared_key_serbero"]
    assert _keys(vector["serbero_secret"]) == serbero
    material = derive_chat_material(
        serbero, vector["buyer_trade_pubkey"], vector["seller_trade_pubkey"]
    )
    assert material.buyer_pubkey == vector["buyer_trade_pubkey"]
    assert material.seller_pubkey == vector["seller_trade_pubkey"]
    assert material.buyer_shared.secret.hex() == vector["buyer_shared_secret"]
    assert material.buyer_shared.public_hex == vector["buyer_shared_pubkey"]
    assert material.seller_shared.secret.hex() == vector["seller_shared_secret"]
    assert material.seller_shared.public_hex == vector["seller_shared_pubkey"]


def test_derivation_is_symmetric(serbero: Keys, buyer: Keys) -> None:
    """PROTO-56: the party computes the same key from its trade key and Serbero's pubkey."""
    assert shared_keys(serbero, buyer.public_hex) == shared_keys(buyer, serbero.public_hex)


def test_npub_trade_keys_are_normalised(serbero: Keys, buyer: Keys, seller: Keys) -> None:
    material = derive_chat_material(
        serbero, encode_npub(buyer.public_hex), seller.public_hex.upper()
    )
    assert (material.buyer_pubkey, material.seller_pubkey) == (buyer.public_hex, seller.public_hex)


@pytest.mark.parametrize(
    ("buyer_pk", "seller_pk"),
    [
        (None, "seller"),
        ("buyer", None),
        ("zz" * 32, "seller"),
        ("buyer", "00" * 32),
        ("buyer", "buyer"),
        ("buyer", "BUYER"),
    ],
)
def test_chat_material_failures(
    serbero: Keys, buyer: Keys, seller: Keys, buyer_pk: str | None, seller_pk: str | None
) -> None:
    """PROTO-54: missing, unparsable or equal trade keys fail the take-flow."""
    names = {
        "buyer": buyer.public_hex,
        "BUYER": buyer.public_hex.upper(),
        "seller": seller.public_hex,
    }
    with pytest.raises(ChatError):
        derive_chat_material(
            serbero,
            names.get(buyer_pk, buyer_pk) if buyer_pk else None,
            names.get(seller_pk, seller_pk) if seller_pk else None,
        )


# --- outbound wrap ------------------------------------------------------------------------


def test_dispute_chat_wrap_vector(derived: dict[str, Any], serbero: Keys) -> None:
    """PROTO-58/60 vector `dispute_chat_wrap`, byte for byte, and back."""
    vector = derived["dispute_chat_wrap"]
    inner = vector["inner_event"]
    wrap = build_chat_wrap(
        _keys(vector["sender_secret"]),
        vector["shared_pubkey"],
        inner["content"],
        now=inner["created_at"],
        ephemeral=_keys(vector["ephemeral_secret"]),
        nonce=bytes.fromhex(vector["nip44_nonce"]),
        aux_rand=ZERO_AUX,
        wrap_created_at=vector["outer_created_at"],
    )
    assert msgspec.to_builtins(wrap.outer) == vector["outer_event"]
    assert (wrap.inner_id, wrap.inner_created_at) == (inner["id"], inner["created_at"])
    outer, inner_id, inner_created_at = wrap
    assert (outer.id, inner_id, inner_created_at) == (
        vector["outer_event"]["id"],
        inner["id"],
        inner["created_at"],
    )

    shared = _keys(vector["shared_secret"])
    assert shared.public_hex == vector["shared_pubkey"]
    message = unwrap_chat(shared, serbero.public_hex, outer)
    assert message == ChatMessage(
        shared_pubkey=vector["shared_pubkey"],
        inner_event_id=inner["id"],
        inner_created_at=inner["created_at"],
        outer_event_id=vector["outer_event"]["id"],
        content=inner["content"],
        inner_sender=serbero.public_hex,
    )


def test_outer_shape_without_injection(serbero: Keys, buyer: Keys) -> None:
    shared_pk = shared_keys(serbero, buyer.public_hex).public_hex
    wrap = build_chat_wrap(serbero, shared_pk, "Buyer: hello", now=NOW)
    assert wrap.outer.kind == 1059
    assert wrap.outer.tags == [["p", shared_pk]]
    assert wrap.outer.pubkey not in (serbero.public_hex, shared_pk)
    assert NOW - 172_800 < wrap.outer.created_at <= NOW
    assert wrap.inner_created_at == NOW
    other = build_chat_wrap(serbero, shared_pk, "Buyer: hello", now=NOW)
    assert other.outer.pubkey != wrap.outer.pubkey


@pytest.mark.parametrize("text", ["", " ", "\n\t  \n"])
def test_blank_text_is_refused(serbero: Keys, buyer: Keys, text: str) -> None:
    with pytest.raises(ChatError):
        build_chat_wrap(serbero, shared_keys(serbero, buyer.public_hex).public_hex, text, now=NOW)


def test_text_is_sent_unmodified(serbero: Keys, buyer: Keys) -> None:
    shared = shared_keys(serbero, buyer.public_hex)
    text = "  Round 2. Buyer: line one\nline two  \n"
    wrap = build_chat_wrap(serbero, shared.public_hex, text, now=NOW)
    assert unwrap_chat(shared, serbero.public_hex, wrap.outer).content == text


def test_bad_shared_pubkey_is_refused(serbero: Keys) -> None:
    with pytest.raises(ChatError):
        build_chat_wrap(serbero, "00" * 32, "hello", now=NOW)


# --- inbound unwrap -----------------------------------------------------------------------


def _wrap_inner(inner_json: bytes | str, shared_pk: str, *, eph: Keys | None = None) -> Event:
    """A chat wrap around arbitrary inner JSON, as a (possibly hostile) party would build it."""
    one_time = eph if eph is not None else Keys.generate()
    text = inner_json.decode() if isinstance(inner_json, bytes) else inner_json
    content = encrypt(text, conversation_key(one_time.secret, shared_pk))
    return sign_event(one_time, created_at=NOW, kind=1059, tags=[["p", shared_pk]], content=content)


def _party_note(party: Keys, text: str, *, kind: int = 1, created_at: int = NOW) -> Event:
    return sign_event(party, created_at=created_at, kind=kind, tags=[], content=text)


def test_party_message_is_read(serbero: Keys, buyer: Keys) -> None:
    """PROTO-57: the party signs with its trade key and wraps to the shared key."""
    shared = shared_keys(serbero, buyer.public_hex)
    note = _party_note(buyer, "I paid, receipt attached")
    wrap = _wrap_inner(encode_event(note), shared.public_hex)
    message = unwrap_chat(shared, buyer.public_hex, wrap)
    assert (message.inner_event_id, message.inner_sender, message.content) == (
        note.id,
        buyer.public_hex,
        "I paid, receipt attached",
    )
    assert message.outer_event_id == wrap.id


def test_inner_kind_40_is_rejected(serbero: Keys, buyer: Keys) -> None:
    """PROTO-67: the inner kind must be 1."""
    shared = shared_keys(serbero, buyer.public_hex)
    wrap = _wrap_inner(encode_event(_party_note(buyer, "hi", kind=40)), shared.public_hex)
    with pytest.raises(ChatError, match="kind"):
        unwrap_chat(shared, buyer.public_hex, wrap)


def test_kind_is_checked_before_the_signature(serbero: Keys, buyer: Keys) -> None:
    shared = shared_keys(serbero, buyer.public_hex)
    note = msgspec.structs.replace(_party_note(buyer, "hi", kind=40), sig="0" * 128)
    with pytest.raises(ChatError, match="kind"):
        unwrap_chat(shared, buyer.public_hex, _wrap_inner(encode_event(note), shared.public_hex))


def test_inner_resigned_by_another_key_is_rejected(
    serbero: Keys, buyer: Keys, seller: Keys
) -> None:
    """PROTO-67: a buyer note whose signature comes from another key fails verification."""
    shared = shared_keys(serbero, buyer.public_hex)
    note = _party_note(buyer, "hi")
    forged_sig = seller.sign_schnorr(bytes.fromhex(note.id)).hex()
    forged = msgspec.structs.replace(note, sig=forged_sig)
    with pytest.raises(ChatError, match="verify"):
        unwrap_chat(shared, buyer.public_hex, _wrap_inner(encode_event(forged), shared.public_hex))


def test_note_from_someone_else_is_rejected(serbero: Keys, buyer: Keys, seller: Keys) -> None:
    """PROTO-60 step 5; Serbero's own outbound wraps come back and are dropped here too."""
    shared = shared_keys(serbero, buyer.public_hex)
    wrap = _wrap_inner(encode_event(_party_note(seller, "hi")), shared.public_hex)
    with pytest.raises(ChatError, match="expected party"):
        unwrap_chat(shared, buyer.public_hex, wrap)
    own = build_chat_wrap(serbero, shared.public_hex, "Buyer: hi", now=NOW)
    with pytest.raises(ChatError, match="expected party"):
        unwrap_chat(shared, buyer.public_hex, own.outer)


def test_tampered_id_is_rejected(serbero: Keys, buyer: Keys) -> None:
    shared = shared_keys(serbero, buyer.public_hex)
    note = msgspec.structs.replace(_party_note(buyer, "hi"), content="changed")
    with pytest.raises(ChatError):
        unwrap_chat(shared, buyer.public_hex, _wrap_inner(encode_event(note), shared.public_hex))


def test_wrong_shared_key_or_tampered_ciphertext(serbero: Keys, buyer: Keys, seller: Keys) -> None:
    shared = shared_keys(serbero, buyer.public_hex)
    wrap = _wrap_inner(encode_event(_party_note(buyer, "hi")), shared.public_hex)
    with pytest.raises(ChatError):
        unwrap_chat(shared_keys(serbero, seller.public_hex), buyer.public_hex, wrap)
    flipped = wrap.content[:50] + ("A" if wrap.content[50] != "A" else "B") + wrap.content[51:]
    with pytest.raises(ChatError):
        unwrap_chat(shared, buyer.public_hex, msgspec.structs.replace(wrap, content=flipped))
    with pytest.raises(ChatError):
        unwrap_chat(shared, buyer.public_hex, msgspec.structs.replace(wrap, kind=4))


@pytest.mark.parametrize("inner", ["not json", "{}", "[1,2]", '{"kind":1}', "null"])
def test_malformed_inner_is_rejected(serbero: Keys, buyer: Keys, inner: str) -> None:
    shared = shared_keys(serbero, buyer.public_hex)
    with pytest.raises(ChatError):
        unwrap_chat(shared, buyer.public_hex, _wrap_inner(inner, shared.public_hex))


@given(st.text(min_size=1, max_size=300))
def test_property_arbitrary_inner_raises_only_chat_error(inner: str) -> None:
    shared = Keys.from_secret(bytes(31) + b"\x07")
    wrap = _wrap_inner(inner, shared.public_hex, eph=Keys.from_secret(bytes(31) + b"\x09"))
    try:
        message = unwrap_chat(shared, "1" * 64, wrap)
    except ChatError:
        return
    assert message.inner_sender == "1" * 64


@given(st.text(max_size=300))
def test_property_arbitrary_ciphertext_raises_only_chat_error(content: str) -> None:
    shared = Keys.from_secret(bytes(31) + b"\x07")
    wrap = Event(
        id="0" * 64,
        pubkey=shared.public_hex,
        created_at=1,
        kind=1059,
        tags=[],
        content=content,
        sig="0" * 128,
    )
    with pytest.raises(ChatError):
        unwrap_chat(shared, "1" * 64, wrap)


# --- ordering -----------------------------------------------------------------------------


def _msg(inner_id: str, created_at: int) -> ChatMessage:
    return ChatMessage(
        shared_pubkey="s",
        inner_event_id=inner_id,
        inner_created_at=created_at,
        outer_event_id="o" + inner_id,
        content=inner_id,
        inner_sender="x",
    )


def test_order_by_inner_time_buyer_first_on_ties() -> None:
    """PROTO-61: stable sort by inner created_at; buyer batch before seller batch on ties."""
    buyer_batch = [_msg("b2", 20), _msg("b1", 10), _msg("b3", 20)]
    seller_batch = [_msg("s1", 10), _msg("s2", 5), _msg("s3", 20)]
    ordered = order_inbound(buyer_batch, seller_batch)
    assert [(item.party, item.message.inner_event_id) for item in ordered] == [
        ("seller", "s2"),
        ("buyer", "b1"),
        ("seller", "s1"),
        ("buyer", "b2"),
        ("buyer", "b3"),
        ("seller", "s3"),
    ]


def test_outer_time_is_never_used() -> None:
    early_outer = msgspec.structs.replace(_msg("late", 50), outer_event_id="0")
    ordered = order_inbound([early_outer], [_msg("early", 10)])
    assert [item.message.inner_event_id for item in ordered] == ["early", "late"]


def test_same_inner_event_in_two_wraps_is_kept_once() -> None:
    again = msgspec.structs.replace(_msg("b1", 10), outer_event_id="other")
    ordered = order_inbound([_msg("b1", 10), again], [])
    assert [item.message.outer_event_id for item in ordered] == ["ob1"]


@given(
    st.lists(st.tuples(st.text(max_size=3), st.integers(0, 5)), max_size=8),
    st.lists(st.tuples(st.text(max_size=3), st.integers(0, 5)), max_size=8),
)
def test_property_order_is_sorted_and_unique(
    buyer_raw: list[tuple[str, int]], seller_raw: list[tuple[str, int]]
) -> None:
    ordered = order_inbound(
        [_msg("b" + i, t) for i, t in buyer_raw], [_msg("s" + i, t) for i, t in seller_raw]
    )
    times = [item.message.inner_created_at for item in ordered]
    assert times == sorted(times)
    ids = [item.message.inner_event_id for item in ordered]
    assert len(ids) == len(set(ids))
    assert set(ids) == {"b" + i for i, _ in buyer_raw} | {"s" + i for i, _ in seller_raw}


def test_wrap_is_deterministic_under_injected_rand(serbero: Keys, buyer: Keys) -> None:
    """PROTO-1: one-time key, nonce, aux_rand and the wrap time all come from `rand`."""

    def seeded(seed: bytes) -> Callable[[int], bytes]:
        counter = iter(range(1_000_000))
        return lambda n: hashlib.sha256(seed + next(counter).to_bytes(4, "big")).digest()[:n]

    shared_pk = shared_keys(serbero, buyer.public_hex).public_hex
    first = build_chat_wrap(serbero, shared_pk, "Buyer: hi", now=NOW, rand=seeded(b"a"))
    assert first == build_chat_wrap(serbero, shared_pk, "Buyer: hi", now=NOW, rand=seeded(b"a"))
    assert (
        first.outer
        != build_chat_wrap(serbero, shared_pk, "Buyer: hi", now=NOW, rand=seeded(b"b")).outer
    )


# --- interop with nostr-sdk (an independent implementation of every layer) ----------------


def test_our_chat_wrap_opens_with_nostr_sdk(serbero: Keys, buyer: Keys) -> None:
    """The party side (PROTO-57) decrypts with its shared key and verifies Serbero's note."""
    shared = shared_keys(buyer, serbero.public_hex)
    wrap = build_chat_wrap(serbero, shared.public_hex, "Buyer: please upload the receipt", now=NOW)
    assert peer.verify_event_json(encode_event(wrap.outer).decode())
    inner_json = peer.nip44_decrypt(shared.secret.hex(), wrap.outer.pubkey, wrap.outer.content)
    assert peer.verify_event_json(inner_json)
    inner = json.loads(inner_json)
    assert (inner["id"], inner["kind"], inner["pubkey"]) == (wrap.inner_id, 1, serbero.public_hex)


def test_nostr_sdk_party_note_opens_here(serbero: Keys, seller: Keys) -> None:
    """A party client built on nostr-sdk: note signed by the trade key, wrapped to shared_pk."""
    shared = shared_keys(serbero, seller.public_hex)
    note_json = peer.sign_event(
        seller.secret.hex(), kind=1, content="Seller: funds not received", tags=[], created_at=NOW
    )
    one_time = Keys.generate()
    content = peer.nip44_encrypt(one_time.secret.hex(), shared.public_hex, note_json)
    wrap = sign_event(
        one_time, created_at=NOW - 5000, kind=1059, tags=[["p", shared.public_hex]], content=content
    )
    message = unwrap_chat(shared, seller.public_hex, wrap)
    assert message.content == "Seller: funds not received"
    assert message.inner_event_id == json.loads(note_json)["id"]
    assert message.inner_created_at == NOW


# --- a round's pair -----------------------------------------------------------------------


def test_party_wraps_go_to_the_shared_keys_only(serbero: Keys, buyer: Keys, seller: Keys) -> None:
    """PROTO-63: never to a trade key; each party's shared key opens only its own wrap."""
    material = derive_chat_material(serbero, buyer.public_hex, seller.public_hex)
    pair = build_party_wraps(
        serbero, material, buyer_text="Buyer: receipt?", seller_text="Seller: paid?", now=NOW
    )
    assert pair.buyer.outer.tags == [["p", material.buyer_shared.public_hex]]
    assert pair.seller.outer.tags == [["p", material.seller_shared.public_hex]]
    targets = {tag[1] for wrap in (pair.buyer, pair.seller) for tag in wrap.outer.tags}
    assert not targets & {buyer.public_hex, seller.public_hex}
    read = unwrap_chat(material.buyer_shared, serbero.public_hex, pair.buyer.outer)
    assert read.content == "Buyer: receipt?"
    with pytest.raises(ChatError):
        unwrap_chat(material.seller_shared, serbero.public_hex, pair.buyer.outer)


def test_identical_inner_ids_are_refused(serbero: Keys, buyer: Keys, seller: Keys) -> None:
    """PROTO-58 note: the same text at the same second gives the same inner id."""
    material = derive_chat_material(serbero, buyer.public_hex, seller.public_hex)
    with pytest.raises(ChatError):
        build_party_wraps(serbero, material, buyer_text="same", seller_text="same", now=NOW)


def test_deeply_nested_inner_is_rejected_not_a_crash(serbero: Keys, buyer: Keys) -> None:
    """A 10 KB note nested 5000 levels deep makes msgspec raise RecursionError."""
    shared = shared_keys(serbero, buyer.public_hex)
    deep = '{"x":' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(ChatError):
        unwrap_chat(shared, buyer.public_hex, _wrap_inner(deep, shared.public_hex))
