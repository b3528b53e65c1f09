"""Gift wrap / NIP-17 DMs: derived vectors (PROTO-66) and unwrap failures (PROTO-32/67)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from serbero.protocol import nip44
from serbero.protocol.event import (
    TIMESTAMP_TWEAK_RANGE,
    Event,
    Rumor,
    encode_event,
    make_rumor,
    sign_event,
    verify_event,
)
from serbero.protocol.keys import Keys, shared_x
from serbero.protocol.nip59 import (
    GiftWrapError,
    Malformed,
    NotForMe,
    NotGiftWrap,
    OneTimeKey,
    SenderMismatch,
    Unwrapped,
    WrapInputs,
    build_gift_wrap,
    build_private_dm,
    unwrap_gift,
)

ZERO_AUX = bytes(32)
NOW = 1_700_000_000


def _derived(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (vectors_dir / "serbero-protocol.derived.vectors.json").read_text(encoding="utf-8")
    )
    return data


def _pinned(case: dict[str, Any]) -> WrapInputs:
    return WrapInputs(
        ephemeral=Keys.parse(case["ephemeral_secret"]),
        seal_nonce=bytes.fromhex(case["seal_nonce"]),
        wrap_nonce=bytes.fromhex(case["wrap_nonce"]),
        aux_rand=ZERO_AUX,
        seal_created_at=case["seal"]["created_at"],
        wrap_created_at=case["gift_wrap"]["created_at"],
    )


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_nip17_private_dm_vector(vectors_dir: Path) -> None:
    case = _derived(vectors_dir)["nip17_private_dm"]
    sender = Keys.parse(case["sender_secret"])
    wrap = build_private_dm(
        sender,
        case["receiver_pubkey"],
        case["rumor"]["content"],
        now=case["rumor"]["created_at"],
        pinned=_pinned(case),
    )
    assert msgspec.structs.asdict(wrap) == case["gift_wrap"]
    assert wrap.id == "6ab6d8bc753e9e855c4a9b64d88b99831c66c5071e6ebb1dd8b9e3f0c87c32ad"
    assert encode_event(wrap).decode() == _compact(case["gift_wrap"])
    verify_event(wrap)

    receiver = Keys.parse(case["receiver_secret"])
    seal_ck = nip44.conversation_key(receiver.secret, sender.public_hex)
    wrap_ck = nip44.conversation_key(receiver.secret, wrap.pubkey)
    assert seal_ck.hex() == case["seal_conversation_key"]
    assert wrap_ck.hex() == case["wrap_conversation_key"]
    assert nip44.decrypt(wrap.content, wrap_ck) == case["seal_json"]
    assert nip44.decrypt(case["seal"]["content"], seal_ck) == case["rumor_json"]

    opened = unwrap_gift(receiver, wrap)
    assert opened == Unwrapped(
        sender=sender.public_hex, rumor=Rumor(**case["rumor"]), wrap_id=wrap.id
    )


def test_mostro_admin_take_dispute_wrap_vector(vectors_dir: Path) -> None:
    data = _derived(vectors_dir)
    case = data["mostro_admin_take_dispute_wrap"]
    raw = case["rumor"]
    rumor = make_rumor(
        raw["pubkey"],
        created_at=raw["created_at"],
        kind=raw["kind"],
        tags=raw["tags"],
        content=raw["content"],
    )
    assert encode_event(rumor).decode() == case["rumor_json"]
    sender = Keys.parse(case["sender_secret"])
    wrap = build_gift_wrap(
        sender, case["mostro_pubkey"], rumor, now=raw["created_at"], pinned=_pinned(case)
    )
    assert msgspec.structs.asdict(wrap) == case["gift_wrap"]
    assert wrap.id == "e0a249347f485bd2c773c56e8ae07b3b35e94a5b16bc57aa3fb1867a5916ebeb"
    mostro = Keys.parse(data["keys"]["mostro"]["secret"])
    opened = unwrap_gift(mostro, wrap)
    assert opened.sender == sender.public_hex
    assert msgspec.structs.asdict(opened.rumor) == raw


def test_primitives_reproduce_mostro_message_signature(vectors_dir: Path) -> None:
    # PROTO-45/47 belong to the Mostro module; this checks only the primitives it stands on.
    case = _derived(vectors_dir)["mostro_message_signature"]
    digest = hashlib.sha256(case["message_json"].encode()).digest()
    assert digest.hex() == case["sha256"]
    assert Keys.parse(case["secret"]).sign_schnorr(digest, ZERO_AUX).hex() == case["signature"]


def test_primitives_reproduce_chat_shared_key_serbero(vectors_dir: Path) -> None:
    case = _derived(vectors_dir)["chat_shared_key_serbero"]
    serbero = bytes.fromhex(case["serbero_secret"])
    for side in ("buyer", "seller"):
        secret = shared_x(serbero, case[f"{side}_trade_pubkey"])
        assert secret.hex() == case[f"{side}_shared_secret"]
        assert Keys.from_secret(secret).public_hex == case[f"{side}_shared_pubkey"]


def test_primitives_reproduce_dispute_chat_wrap(vectors_dir: Path) -> None:
    # PROTO-58/60 (chat module) = one signed inner event, NIP-44 to the shared key, kind 1059.
    case = _derived(vectors_dir)["dispute_chat_wrap"]
    inner_raw = case["inner_event"]
    inner = sign_event(
        Keys.parse(case["sender_secret"]),
        created_at=inner_raw["created_at"],
        kind=inner_raw["kind"],
        tags=inner_raw["tags"],
        content=inner_raw["content"],
        aux_rand=ZERO_AUX,
    )
    assert encode_event(inner).decode() == case["inner_json"]
    ephemeral = Keys.parse(case["ephemeral_secret"])
    ck = nip44.conversation_key(ephemeral.secret, case["shared_pubkey"])
    assert ck.hex() == case["conversation_key"]
    content = nip44.encrypt(case["inner_json"], ck, bytes.fromhex(case["nip44_nonce"]))
    outer = sign_event(
        ephemeral,
        created_at=case["outer_created_at"],
        kind=1059,
        tags=[["p", case["shared_pubkey"]]],
        content=content,
        aux_rand=ZERO_AUX,
    )
    assert msgspec.structs.asdict(outer) == case["outer_event"]
    shared = Keys.parse(case["shared_secret"])
    assert (
        nip44.decrypt(outer.content, nip44.conversation_key(shared.secret, outer.pubkey))
        == (case["inner_json"])
    )


# --- building ---------------------------------------------------------------------------


def _counter_rand() -> Any:
    state = {"n": 0}

    def rand(n: int) -> bytes:
        state["n"] += 1
        return hashlib.sha256(state["n"].to_bytes(4, "big")).digest()[:n]

    return rand


def test_build_is_deterministic_under_injected_rand() -> None:
    alice, bob = Keys.generate(), Keys.generate()
    first = build_private_dm(alice, bob.public_hex, "hi", now=NOW, rand=_counter_rand())
    second = build_private_dm(alice, bob.public_hex, "hi", now=NOW, rand=_counter_rand())
    assert first == second
    assert unwrap_gift(bob, first).rumor.content == "hi"


def test_build_uses_fresh_randomness_by_default() -> None:
    alice, bob = Keys.generate(), Keys.generate()
    wraps = [build_private_dm(alice, bob.public_hex, "hi", now=NOW) for _ in range(3)]
    assert len({w.pubkey for w in wraps}) == 3  # a new ephemeral key per wrap
    assert len({w.content for w in wraps}) == 3
    for wrap in wraps:
        verify_event(wrap)
        assert wrap.pubkey not in (alice.public_hex, bob.public_hex)
        assert wrap.tags == [["p", bob.public_hex]]
        assert NOW - TIMESTAMP_TWEAK_RANGE < wrap.created_at <= NOW
        opened = unwrap_gift(bob, wrap)
        assert opened.rumor.created_at == NOW  # the rumor carries the real time
        assert opened.rumor.kind == 14
        assert opened.rumor.tags == [["p", bob.public_hex]]


def test_self_p_tags_dropped_and_extra_tags_kept() -> None:
    alice, bob = Keys.generate(), Keys.generate()
    rumor = make_rumor(
        alice.public_hex,
        created_at=NOW,
        kind=1,
        tags=[["p", alice.public_hex], ["p", bob.public_hex], ["p"], ["t", "x"]],
        content="body",
    )
    wrap = build_gift_wrap(
        alice, bob.public_hex, rumor, now=NOW, extra_tags=[["expiration", str(NOW + 60)]]
    )
    assert wrap.tags == [["expiration", str(NOW + 60)], ["p", bob.public_hex]]
    inner = unwrap_gift(bob, wrap).rumor
    assert inner.tags == [["p", bob.public_hex], ["p"], ["t", "x"]]
    assert (
        inner.id
        == make_rumor(alice.public_hex, created_at=NOW, kind=1, tags=inner.tags, content="body").id
    )
    assert inner.id != rumor.id


def test_build_rejects_foreign_rumor_and_bad_receiver() -> None:
    alice, bob = Keys.generate(), Keys.generate()
    rumor = make_rumor(bob.public_hex, created_at=NOW, kind=14, tags=[], content="x")
    with pytest.raises(GiftWrapError):
        build_gift_wrap(alice, bob.public_hex, rumor, now=NOW)
    with pytest.raises(ValueError):
        build_private_dm(alice, "ff" * 32, "x", now=NOW)


def test_receiver_may_be_given_as_npub() -> None:
    from serbero.protocol.keys import encode_npub

    alice, bob = Keys.generate(), Keys.generate()
    wrap = build_private_dm(alice, encode_npub(bob.public_hex), "x", now=NOW)
    assert wrap.tags == [["p", bob.public_hex]]


# --- keys prepared ahead (OneTimeKey) --------------------------------------------------------


def test_prepared_keys_reproduce_the_vector_byte_for_byte(vectors_dir: Path) -> None:
    """The seal key and a one-time key derived in advance build the very same wrap."""
    case = _derived(vectors_dir)["nip17_private_dm"]
    sender = Keys.parse(case["sender_secret"])
    receiver = case["receiver_pubkey"]
    pinned = _pinned(case)
    ephemeral = pinned.ephemeral
    assert ephemeral is not None
    one_time = OneTimeKey(ephemeral, receiver, nip44.conversation_key(ephemeral.secret, receiver))
    wrap = build_private_dm(
        sender,
        receiver,
        case["rumor"]["content"],
        now=case["rumor"]["created_at"],
        seal_key=nip44.conversation_key(sender.secret, receiver),
        one_time=one_time,
        pinned=msgspec.structs.replace(pinned, ephemeral=None),
    )
    assert msgspec.structs.asdict(wrap) == case["gift_wrap"]
    assert one_time.used


def test_a_one_time_key_wraps_one_dm_for_its_receiver_only() -> None:
    """PROTO-31: an ephemeral key is never reused, even by a caller's mistake."""
    alice, bob, carol = Keys.generate(), Keys.generate(), Keys.generate()
    ephemeral = Keys.generate()
    conversation = nip44.conversation_key(ephemeral.secret, bob.public_hex)
    one_time = OneTimeKey(ephemeral, bob.public_hex, conversation)
    with pytest.raises(GiftWrapError):
        build_private_dm(alice, carol.public_hex, "x", now=NOW, one_time=one_time)
    assert not one_time.used
    wrap = build_private_dm(alice, bob.public_hex, "x", now=NOW, one_time=one_time)
    assert one_time.used
    assert unwrap_gift(bob, wrap).rumor.content == "x"
    with pytest.raises(GiftWrapError):
        build_private_dm(alice, bob.public_hex, "y", now=NOW, one_time=one_time)
    assert "fresh" not in repr(one_time) and bob.public_hex in repr(one_time)


# --- unwrap failures (PROTO-32 steps, PROTO-67) ------------------------------------------


def _manual_wrap(
    seal_signer: Keys,
    receiver: Keys,
    rumor_json: str,
    *,
    seal_kind: int = 13,
    seal_receiver_pk: str | None = None,
    wrap_content: str | None = None,
) -> Event:
    """Build the layers by hand so each can be broken on purpose."""
    seal_ck = nip44.conversation_key(seal_signer.secret, seal_receiver_pk or receiver.public_hex)
    seal = sign_event(
        seal_signer,
        created_at=NOW,
        kind=seal_kind,
        tags=[],
        content=nip44.encrypt(rumor_json, seal_ck),
    )
    ephemeral = Keys.generate()
    content = wrap_content
    if content is None:
        ck = nip44.conversation_key(ephemeral.secret, receiver.public_hex)
        content = nip44.encrypt(encode_event(seal).decode(), ck)
    return sign_event(
        ephemeral, created_at=NOW, kind=1059, tags=[["p", receiver.public_hex]], content=content
    )


def _rumor_json(author: Keys, **overrides: Any) -> str:
    rumor = make_rumor(author.public_hex, created_at=NOW, kind=14, tags=[], content="hi")
    raw = msgspec.structs.asdict(rumor) | overrides
    return _compact(raw)


def test_manual_wrap_opens() -> None:
    alice, bob = Keys.generate(), Keys.generate()
    opened = unwrap_gift(bob, _manual_wrap(alice, bob, _rumor_json(alice)))
    assert opened.sender == alice.public_hex


def test_not_gift_wrap() -> None:
    bob = Keys.generate()
    event = sign_event(bob, created_at=NOW, kind=1, tags=[], content="x")
    with pytest.raises(NotGiftWrap):
        unwrap_gift(bob, event)


def test_addressed_to_someone_else_is_not_for_me() -> None:
    alice, bob, carol = Keys.generate(), Keys.generate(), Keys.generate()
    wrap = build_private_dm(alice, bob.public_hex, "secret", now=NOW)
    with pytest.raises(NotForMe) as info:
        unwrap_gift(carol, wrap)
    assert isinstance(info.value.__cause__, nip44.InvalidMac)


def test_tampered_wrap_ciphertext() -> None:
    alice, bob = Keys.generate(), Keys.generate()
    wrap = build_private_dm(alice, bob.public_hex, "secret", now=NOW)
    i = 100
    tampered = wrap.content[:i] + ("A" if wrap.content[i] != "A" else "B") + wrap.content[i + 1 :]
    ck = nip44.conversation_key(bob.secret, wrap.pubkey)
    with pytest.raises(nip44.InvalidMac):
        nip44.decrypt(tampered, ck)
    with pytest.raises(NotForMe) as info:
        unwrap_gift(bob, msgspec.structs.replace(wrap, content=tampered))
    assert isinstance(info.value.__cause__, nip44.InvalidMac)


def test_seal_encrypted_to_someone_else_is_not_for_me() -> None:
    alice, bob, carol = Keys.generate(), Keys.generate(), Keys.generate()
    wrap = _manual_wrap(alice, bob, _rumor_json(alice), seal_receiver_pk=carol.public_hex)
    with pytest.raises(NotForMe):
        unwrap_gift(bob, wrap)


def test_rumor_author_differs_from_seal_signer() -> None:
    alice, bob, mallory = Keys.generate(), Keys.generate(), Keys.generate()
    wrap = _manual_wrap(mallory, bob, _rumor_json(alice))
    with pytest.raises(SenderMismatch):
        unwrap_gift(bob, wrap)
    assert issubclass(SenderMismatch, Malformed)


@pytest.mark.parametrize("kind", [1, 14, 1059, 40])
def test_seal_of_wrong_kind_is_malformed(kind: int) -> None:
    alice, bob = Keys.generate(), Keys.generate()
    with pytest.raises(Malformed, match="kind"):
        unwrap_gift(bob, _manual_wrap(alice, bob, _rumor_json(alice), seal_kind=kind))


def _wrap_around_seal(seal_json: str, receiver: Keys) -> Event:
    ephemeral = Keys.generate()
    ck = nip44.conversation_key(ephemeral.secret, receiver.public_hex)
    return sign_event(
        ephemeral,
        created_at=NOW,
        kind=1059,
        tags=[["p", receiver.public_hex]],
        content=nip44.encrypt(seal_json, ck),
    )


def test_seal_resigned_by_another_key_is_malformed() -> None:
    alice, bob, mallory = Keys.generate(), Keys.generate(), Keys.generate()
    ck = nip44.conversation_key(alice.secret, bob.public_hex)
    seal = sign_event(
        alice, created_at=NOW, kind=13, tags=[], content=nip44.encrypt(_rumor_json(alice), ck)
    )
    forged_sig = sign_event(mallory, created_at=NOW, kind=13, tags=[], content=seal.content).sig
    forged = msgspec.structs.replace(seal, sig=forged_sig)
    with pytest.raises(Malformed, match="signature"):
        unwrap_gift(bob, _wrap_around_seal(encode_event(forged).decode(), bob))


@pytest.mark.parametrize(
    "seal_json",
    ["not json", "{}", "[]", '{"kind":13}', '"\\u0000"'],
)
def test_garbage_seal_is_malformed(seal_json: str) -> None:
    bob = Keys.generate()
    with pytest.raises(Malformed):
        unwrap_gift(bob, _wrap_around_seal(seal_json, bob))


@pytest.mark.parametrize(
    "overrides",
    [
        {"pubkey": None},
        {"pubkey": "AB" * 32},
        {"kind": -1},
        {"kind": 70000},
        {"created_at": "now"},
        {"tags": [[]]},
        {"tags": [[1]]},
        {"content": 5},
    ],
)
def test_bad_rumor_is_malformed(overrides: dict[str, Any]) -> None:
    alice, bob = Keys.generate(), Keys.generate()
    with pytest.raises(Malformed):
        unwrap_gift(bob, _manual_wrap(alice, bob, _rumor_json(alice, **overrides)))


@pytest.mark.parametrize("rumor_text", ["not json", "[1,2]"])
def test_rumor_not_an_object_is_malformed(rumor_text: str) -> None:
    alice, bob = Keys.generate(), Keys.generate()
    with pytest.raises(Malformed):
        unwrap_gift(bob, _manual_wrap(alice, bob, rumor_text))


@pytest.mark.parametrize("missing", ["pubkey", "created_at", "kind", "tags", "content"])
def test_rumor_missing_required_field_is_malformed(missing: str) -> None:
    alice, bob = Keys.generate(), Keys.generate()
    raw = json.loads(_rumor_json(alice))
    del raw[missing]
    with pytest.raises(Malformed):
        unwrap_gift(bob, _manual_wrap(alice, bob, _compact(raw)))


def test_rumor_id_optional_unchecked_and_sig_ignored() -> None:
    alice, bob = Keys.generate(), Keys.generate()
    expected = make_rumor(alice.public_hex, created_at=NOW, kind=14, tags=[], content="hi")
    for text in (
        _rumor_json(alice, id="00" * 32, sig="whatever"),
        _compact({k: v for k, v in msgspec.structs.asdict(expected).items() if k != "id"}),
        _rumor_json(alice, id=5),
    ):
        opened = unwrap_gift(bob, _manual_wrap(alice, bob, text))
        assert opened.rumor == expected  # id is recomputed, never taken on trust
