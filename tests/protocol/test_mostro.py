"""Mostro order messages (PROTO-43..52) and the take-flow on the wire (PROTO-45..53)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serbero.protocol.chat import derive_chat_material
from serbero.protocol.event import encode_event, make_rumor, verify_event
from serbero.protocol.keys import Keys, verify_schnorr
from serbero.protocol.mostro import (
    CantDoPayload,
    DisputePayload,
    MostroMessage,
    MostroMessageError,
    OtherPayload,
    PeerPayload,
    TextMessagePayload,
    canonical_uuid,
    encode_mostro_message,
    parse_mostro_message,
)
from serbero.protocol.nip59 import Unwrapped, WrapInputs, build_gift_wrap, unwrap_gift
from serbero.protocol.take import (
    TAKE_TIMEOUT_ERROR,
    TakeRefused,
    TakeReplyOutcome,
    TakeSkip,
    TakeTook,
    admin_take_dispute_content,
    build_admin_take_dispute,
    match_take_reply,
    take_refusal_error,
)
from tests.support import nostr_sdk_peer as peer

ZERO_AUX = bytes(32)
NOW = 1_700_000_500

# --- Mostro messages: building ------------------------------------------------------------


def test_canonical_message_json(derived: dict[str, Any], dispute_id: str) -> None:
    vector = derived["mostro_message_signature"]
    message = encode_mostro_message("dispute", "admin-take-dispute", id=dispute_id)
    assert message.decode() == vector["message_json"]
    assert hashlib.sha256(message).hexdigest() == vector["sha256"]


def test_message_without_id_leaves_the_key_out() -> None:
    assert encode_mostro_message("order", "new-order", id=None) == (
        b'{"order":{"version":1,"request_id":null,"trade_index":null,"action":"new-order","payload":null}}'
    )


def test_signed_rumor_content(derived: dict[str, Any], serbero: Keys, dispute_id: str) -> None:
    """PROTO-45/47 vector `mostro_message_signature`."""
    vector = derived["mostro_message_signature"]
    assert Keys.from_secret(bytes.fromhex(vector["secret"])) == serbero
    content = admin_take_dispute_content(serbero, dispute_id, aux_rand=ZERO_AUX)
    assert content == vector["rumor_content"]
    assert json.loads(content)[1] == vector["signature"]


def test_take_request_needs_a_uuid(serbero: Keys) -> None:
    with pytest.raises(MostroMessageError):
        admin_take_dispute_content(serbero, "not-a-uuid", aux_rand=ZERO_AUX)


def test_take_request_canonicalises_the_uuid(serbero: Keys, dispute_id: str) -> None:
    upper = admin_take_dispute_content(serbero, dispute_id.upper(), aux_rand=ZERO_AUX)
    assert upper == admin_take_dispute_content(serbero, dispute_id, aux_rand=ZERO_AUX)


def test_admin_take_dispute_wrap_vector(
    derived: dict[str, Any], serbero: Keys, mostro: Keys
) -> None:
    """PROTO-46 vector `mostro_admin_take_dispute_wrap`, byte for byte."""
    vector = derived["mostro_admin_take_dispute_wrap"]
    wrap = build_admin_take_dispute(
        Keys.from_secret(bytes.fromhex(vector["sender_secret"])),
        vector["mostro_pubkey"],
        json.loads(vector["rumor"]["content"])[0]["dispute"]["id"],
        now=vector["rumor"]["created_at"],
        pinned=WrapInputs(
            aux_rand=ZERO_AUX,
            ephemeral=Keys.from_secret(bytes.fromhex(vector["ephemeral_secret"])),
            seal_nonce=bytes.fromhex(vector["seal_nonce"]),
            wrap_nonce=bytes.fromhex(vector["wrap_nonce"]),
            seal_created_at=vector["seal"]["created_at"],
            wrap_created_at=vector["gift_wrap"]["created_at"],
        ),
    )
    assert msgspec.to_builtins(wrap) == vector["gift_wrap"]
    verify_event(wrap)
    opened = unwrap_gift(mostro, wrap)
    assert opened.sender == serbero.public_hex
    assert encode_event(opened.rumor).decode() == vector["rumor_json"]
    message = parse_mostro_message(opened)
    assert message.signed
    assert (message.channel, message.action, message.id, message.payload) == (
        "dispute",
        "admin-take-dispute",
        json.loads(vector["rumor"]["content"])[0]["dispute"]["id"],
        None,
    )


# --- Mostro messages: parsing -------------------------------------------------------------


def _opened(sender: str, content: str, *, kind: int = 1) -> Unwrapped:
    rumor = make_rumor(sender, created_at=NOW, kind=kind, tags=[], content=content)
    return Unwrapped(sender=sender, rumor=rumor, wrap_id="f" * 64)


def test_admin_took_dispute_reply(
    derived: dict[str, Any], mostro: Keys, serbero: Keys, dispute_id: str
) -> None:
    """Vector `mostro_admin_took_dispute_reply_content`, delivered as a real gift wrap."""
    content = derived["mostro_admin_took_dispute_reply_content"]
    rumor = make_rumor(mostro.public_hex, created_at=NOW, kind=1, tags=[], content=content)
    wrap = build_gift_wrap(mostro, serbero.public_hex, rumor, now=NOW)
    message = parse_mostro_message(unwrap_gift(serbero, wrap))
    assert not message.signed
    assert message.sender == mostro.public_hex
    assert message.wrap_id == wrap.id
    assert isinstance(message.payload, DisputePayload)
    info = message.payload.info
    assert info is not None
    expected = json.loads(content)[0]["dispute"]["payload"]["dispute"][1]
    assert info.buyer_pubkey == derived["keys"]["buyer_trade"]["pubkey"] == expected["buyer_pubkey"]
    assert info.seller_pubkey == derived["keys"]["seller_trade"]["pubkey"]
    assert info.order_id == expected["id"]
    assert info.counterpart_info is not None
    assert info.counterpart_info.reviews == expected["counterpart_info"]["reviews"]
    assert info.amount == expected["amount"]

    outcome = match_take_reply(message, mostro_pk=mostro.public_hex, dispute_id=dispute_id)
    assert outcome == TakeTook(info=info)
    material = derive_chat_material(serbero, info.buyer_pubkey, info.seller_pubkey)
    shared = derived["chat_shared_key_serbero"]
    assert material.buyer_shared.public_hex == shared["buyer_shared_pubkey"]
    assert material.seller_shared.public_hex == shared["seller_shared_pubkey"]


def test_cant_do_reply(derived: dict[str, Any], mostro: Keys, dispute_id: str) -> None:
    """Vector `mostro_cant_do_reply_content`: the take-flow fails with the reason."""
    message = parse_mostro_message(
        _opened(mostro.public_hex, derived["mostro_cant_do_reply_content"])
    )
    assert message.channel == "cant-do"
    assert message.payload == CantDoPayload(reason="invalid_pubkey")
    outcome = match_take_reply(message, mostro_pk=mostro.public_hex, dispute_id=dispute_id)
    assert outcome == TakeRefused(reason="invalid_pubkey")
    assert take_refusal_error(dispute_id, "invalid_pubkey") == (
        f"Mostro refused AdminTakeDispute for dispute {dispute_id}: invalid_pubkey"
    )
    assert TAKE_TIMEOUT_ERROR == "timed out waiting for AdminTookDispute response from Mostro"


def _cant_do(dispute_id: str | None, reason: str | None) -> str:
    message = encode_mostro_message(
        "cant-do", "cant-do", id=dispute_id, payload={"cant_do": reason}
    )
    return "[" + message.decode() + ",null]"


@pytest.mark.parametrize(
    ("reason", "kept"), [(None, "invalid_action"), ("brand_new_reason", "brand_new_reason")]
)
def test_cant_do_reasons(mostro: Keys, dispute_id: str, reason: str | None, kept: str) -> None:
    """PROTO-51: null means invalid_action; an unknown reason is still a refusal."""
    message = parse_mostro_message(_opened(mostro.public_hex, _cant_do(dispute_id, reason)))
    assert match_take_reply(
        message, mostro_pk=mostro.public_hex, dispute_id=dispute_id
    ) == TakeRefused(reason=kept)


def _run_take_flow(
    messages: list[MostroMessage], *, mostro_pk: str, dispute_id: str
) -> TakeReplyOutcome:
    """The decision half of PROTO-53 step 3: the first non-skip outcome ends the flow."""
    for message in messages:
        outcome = match_take_reply(message, mostro_pk=mostro_pk, dispute_id=dispute_id)
        if not isinstance(outcome, TakeSkip):
            return outcome
    return TakeSkip(reason="deadline")


def test_stale_cant_do_for_another_dispute_then_valid_reply(
    derived: dict[str, Any], mostro: Keys, dispute_id: str
) -> None:
    """PROTO-67 / MAS-6: a replayed refusal for another dispute does not fail the take."""
    stale = parse_mostro_message(
        _opened(
            mostro.public_hex, _cant_do("00000000-0000-4000-8000-000000000000", "invalid_pubkey")
        )
    )
    good = parse_mostro_message(
        _opened(mostro.public_hex, derived["mostro_admin_took_dispute_reply_content"])
    )
    outcome = _run_take_flow([stale, good], mostro_pk=mostro.public_hex, dispute_id=dispute_id)
    assert isinstance(outcome, TakeTook)
    assert outcome.info.buyer_pubkey == derived["keys"]["buyer_trade"]["pubkey"]


def _reply(dispute_id: str | None, action: str, payload: object) -> str:
    return (
        "["
        + encode_mostro_message("dispute", action, id=dispute_id, payload=payload).decode()
        + ",null]"
    )


def _info(derived: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(derived["mostro_admin_took_dispute_reply_content"])[0][
        "dispute"
    ]["payload"]["dispute"][1]
    return info


def test_take_reply_skips(
    derived: dict[str, Any], mostro: Keys, serbero: Keys, dispute_id: str
) -> None:
    info = _info(derived)
    other = "00000000-0000-4000-8000-000000000000"
    cases = {
        "other sender": _opened(
            serbero.public_hex, derived["mostro_admin_took_dispute_reply_content"]
        ),
        "missing id": _opened(
            mostro.public_hex, _reply(None, "admin-took-dispute", {"dispute": [dispute_id, info]})
        ),
        "other id": _opened(
            mostro.public_hex, _reply(other, "admin-took-dispute", {"dispute": [dispute_id, info]})
        ),
        "other action": _opened(
            mostro.public_hex, _reply(dispute_id, "admin-settle", {"dispute": [dispute_id, info]})
        ),
        "null info": _opened(
            mostro.public_hex,
            _reply(dispute_id, "admin-took-dispute", {"dispute": [dispute_id, None]}),
        ),
        "payload for another dispute": _opened(
            mostro.public_hex, _reply(dispute_id, "admin-took-dispute", {"dispute": [other, info]})
        ),
        "no payload": _opened(mostro.public_hex, _reply(dispute_id, "admin-took-dispute", None)),
        "peer payload": _opened(
            mostro.public_hex,
            _reply(
                dispute_id,
                "admin-took-dispute",
                {"peer": {"pubkey": serbero.public_hex, "reputation": None}},
            ),
        ),
    }
    for name, opened in cases.items():
        outcome = match_take_reply(
            parse_mostro_message(opened), mostro_pk=mostro.public_hex, dispute_id=dispute_id
        )
        assert isinstance(outcome, TakeSkip), name


def test_cant_do_beats_the_action_check(mostro: Keys, dispute_id: str) -> None:
    """PROTO-53 step 3.4 comes before 3.5: any cant_do payload for this dispute fails."""
    content = _reply(dispute_id, "admin-took-dispute", {"cant_do": "not_found"})
    message = parse_mostro_message(_opened(mostro.public_hex, content))
    assert match_take_reply(
        message, mostro_pk=mostro.public_hex, dispute_id=dispute_id
    ) == TakeRefused(reason="not_found")


def test_ids_compare_as_uuids(derived: dict[str, Any], mostro: Keys, dispute_id: str) -> None:
    content = _reply(
        dispute_id.upper(),
        "admin-took-dispute",
        {"dispute": [dispute_id.replace("-", ""), _info(derived)]},
    )
    message = parse_mostro_message(_opened(mostro.public_hex, content))
    assert isinstance(
        match_take_reply(
            message, mostro_pk=mostro.public_hex.upper(), dispute_id="{" + dispute_id + "}"
        ),
        TakeTook,
    )


def test_any_rumor_kind_is_accepted(derived: dict[str, Any], mostro: Keys) -> None:
    message = parse_mostro_message(
        _opened(mostro.public_hex, derived["mostro_cant_do_reply_content"], kind=14)
    )
    assert message.rumor_created_at == NOW


def test_lenient_solver_dispute_info(mostro: Keys, dispute_id: str) -> None:
    """PROTO-50: only buyer_pubkey and seller_pubkey are required (and may be null)."""
    content = _reply(
        dispute_id,
        "admin-took-dispute",
        {"dispute": [dispute_id, {"buyer_pubkey": None, "seller_pubkey": "x", "new": 1}]},
    )
    outcome = match_take_reply(
        parse_mostro_message(_opened(mostro.public_hex, content)),
        mostro_pk=mostro.public_hex,
        dispute_id=dispute_id,
    )
    assert isinstance(outcome, TakeTook)
    assert (outcome.info.buyer_pubkey, outcome.info.seller_pubkey, outcome.info.amount) == (
        None,
        "x",
        None,
    )


def test_other_payloads(mostro: Keys, serbero: Keys, dispute_id: str) -> None:
    def payload(value: object) -> object:
        return parse_mostro_message(
            _opened(mostro.public_hex, _reply(dispute_id, "x", value))
        ).payload

    assert payload({"text_message": "hi"}) == TextMessagePayload(text="hi")
    assert payload({"peer": {"pubkey": serbero.public_hex}}) == PeerPayload(
        pubkey=serbero.public_hex
    )
    assert payload({"payment_request": [None, "lnbc", None]}) == OtherPayload(
        name="payment_request"
    )


def test_unknown_keys_and_key_order_are_free(mostro: Keys, dispute_id: str) -> None:
    content = (
        '[{"dispute":{"payload":null,"action":"admin-took-dispute","future":[1],"id":"'
        + dispute_id
        + '","version":1}},null]'
    )
    message = parse_mostro_message(_opened(mostro.public_hex, content))
    assert (message.id, message.request_id, message.trade_index) == (dispute_id, None, None)


def _signed_content(keys: Keys, message_text: str, signed_text: str | None = None) -> str:
    to_sign = (signed_text if signed_text is not None else message_text).encode()
    sig = keys.sign_schnorr(hashlib.sha256(to_sign).digest(), ZERO_AUX).hex()
    return "[" + message_text + ',"' + sig + '"]'


def test_signature_over_raw_bytes_as_received(serbero: Keys, dispute_id: str) -> None:
    """PROTO-52: a non-canonical element 0 still verifies over its own bytes."""
    spaced = (
        '{ "dispute" : { "action" : "admin-take-dispute", "version" : 1, "id" : "'
        + dispute_id
        + '" } }'
    )
    message = parse_mostro_message(_opened(serbero.public_hex, _signed_content(serbero, spaced)))
    assert message.signed


def test_signature_over_canonical_form(serbero: Keys, dispute_id: str) -> None:
    """PROTO-52 fallback: the sender signed the canonical bytes, the wire carries a variant."""
    canonical = encode_mostro_message("dispute", "admin-take-dispute", id=dispute_id).decode()
    spaced = canonical.replace(",", " , ")
    message = parse_mostro_message(
        _opened(serbero.public_hex, _signed_content(serbero, spaced, canonical))
    )
    assert message.signed


@pytest.mark.parametrize(
    "case", ["other key", "other message", "short", "uppercase ok", "not a string"]
)
def test_signature_failures(serbero: Keys, mostro: Keys, dispute_id: str, case: str) -> None:
    canonical = encode_mostro_message("dispute", "admin-take-dispute", id=dispute_id).decode()
    content = _signed_content(serbero, canonical)
    if case == "other key":
        content = _signed_content(mostro, canonical)
    elif case == "other message":
        content = _signed_content(serbero, canonical, canonical.replace("take", "took"))
    elif case == "short":
        content = content[:-3] + '"]'
    elif case == "uppercase ok":
        content = content.upper().replace(canonical.upper(), canonical)
        assert parse_mostro_message(_opened(serbero.public_hex, content)).signed
        return
    else:
        content = "[" + canonical + ",42]"
    with pytest.raises(MostroMessageError):
        parse_mostro_message(_opened(serbero.public_hex, content))


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        '[{"dispute":{"version":1,"action":"x"}}]',
        '[{"dispute":{"version":1,"action":"x"}},null,null]',
        '[{"dispute":{"version":1,"action":"x"}},null] trailing',
        '{"dispute":{"version":1,"action":"x"}}',
        "[null,null]",
        "[{},null]",
        '[{"dispute":{"version":1,"action":"x"},"order":{"version":1,"action":"x"}},null]',
        '[{"dispute":{"action":"x"}},null]',
        '[{"dispute":{"version":1}},null]',
        '[{"dispute":{"version":"1","action":"x"}},null]',
        '[{"dispute":{"version":1,"action":"x","request_id":-1}},null]',
        '[{"dispute":{"version":1,"action":"x","payload":{"a":1,"b":2}}},null]',
        '[{"dispute":{"version":1,"action":"x","payload":[]}},null]',
        '[{"dispute":{"version":1,"action":"x","payload":{"dispute":["id"]}}},null]',
        '[{"dispute":{"version":1,"action":"x","payload":{"dispute":["id",{"buyer_pubkey":"a"}]}}},null]',
        '[{"dispute":{"version":1,"action":"x","payload":{"dispute":["id",{"buyer_pubkey":"a","seller_pubkey":"b","amount":1.5}]}}},null]',
        '[{"dispute":{"version":1,"action":"x","payload":{"cant_do":5}}},null]',
        '[{"dispute":{"version":1,"action":"x","payload":{"peer":{}}}},null]',
        '[{"dispute":{"version":1,"action":"x","payload":{"text_message":null}}},null]',
    ],
)
def test_malformed_content(serbero: Keys, content: str) -> None:
    with pytest.raises(MostroMessageError):
        parse_mostro_message(_opened(serbero.public_hex, content))


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("1F6D3D2E-9A4B-4C1E-8F3A-2B7C5D9E0A11", "1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11"),
        ("1f6d3d2e9a4b4c1e8f3a2b7c5d9e0a11", "1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11"),
        ("{1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11}", "1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11"),
        ("urn:uuid:1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11", "1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11"),
        ("1f6d3d2e-9a4b4c1e-8f3a-2b7c5d9e0a11", None),
        ("1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a1", None),
        ("dispute-1", None),
        ("", None),
    ],
)
def test_canonical_uuid(value: str, canonical: str | None) -> None:
    """PROTO-41: only UUID dispute ids run the take-flow."""
    assert canonical_uuid(value) == canonical


@given(st.text())
def test_property_message_parser_raises_only_its_error_on_text(content: str) -> None:
    try:
        message = parse_mostro_message(_opened("1" * 64, content))
    except MostroMessageError:
        return
    assert message.sender == "1" * 64


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["dispute", "cant_do", "peer", "text_message", "buyer_pubkey", "x"])
            | st.text(max_size=4),
            inner,
            max_size=3,
        )
    ),
    max_leaves=12,
)
_kind = st.fixed_dictionaries(
    {"version": st.integers(-2, 2**64), "action": st.text(max_size=20)},
    optional={
        "id": st.none() | st.text(max_size=40),
        "request_id": _json,
        "trade_index": _json,
        "payload": _json,
    },
)


@given(
    st.sampled_from(["dispute", "cant-do", "order"]),
    _kind,
    st.none() | st.text(max_size=130) | st.just("a" * 128),
)
def test_property_structured_messages_raise_only_its_error(
    channel: str, kind: dict[str, Any], sig: str | None
) -> None:
    content = json.dumps([{channel: kind}, sig])
    try:
        message = parse_mostro_message(_opened("1" * 64, content))
    except MostroMessageError:
        return
    outcome = match_take_reply(
        message, mostro_pk="1" * 64, dispute_id="1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11"
    )
    assert isinstance(outcome, TakeSkip | TakeRefused | TakeTook)


def _seeded_rand(seed: bytes) -> Callable[[int], bytes]:
    counter = iter(range(1_000_000))

    def rand(n: int) -> bytes:
        return hashlib.sha256(seed + next(counter).to_bytes(4, "big")).digest()[:n]

    return rand


def test_take_request_is_deterministic_under_injected_rand(
    serbero: Keys, mostro: Keys, dispute_id: str
) -> None:
    """PROTO-1: every random input, message signature included, comes from `rand`."""
    first = build_admin_take_dispute(
        serbero, mostro.public_hex, dispute_id, now=NOW, rand=_seeded_rand(b"a")
    )
    again = build_admin_take_dispute(
        serbero, mostro.public_hex, dispute_id, now=NOW, rand=_seeded_rand(b"a")
    )
    other = build_admin_take_dispute(
        serbero, mostro.public_hex, dispute_id, now=NOW, rand=_seeded_rand(b"b")
    )
    assert first == again
    assert first.id != other.id
    assert unwrap_gift(mostro, first).rumor.created_at == NOW


def test_cant_do_known_reasons() -> None:
    assert CantDoPayload(reason="invalid_pubkey").known
    assert CantDoPayload(reason="invalid_action").known
    assert not CantDoPayload(reason="brand_new_reason").known


def test_take_request_opens_with_nostr_sdk(serbero: Keys, mostro: Keys, dispute_id: str) -> None:
    """Mostro runs nostr-sdk's UnwrappedGift on our request (PROTO-48 step 1)."""
    wrap = build_admin_take_dispute(serbero, mostro.public_hex, dispute_id, now=NOW)
    sender, rumor = peer.open_gift_wrap(mostro.secret.hex(), encode_event(wrap).decode())
    assert sender == serbero.public_hex
    assert (rumor["kind"], rumor["tags"], rumor["created_at"]) == (1, [], NOW)
    message_json, sig = json.loads(rumor["content"])
    raw_message = rumor["content"][1 : rumor["content"].index(',"' + sig)]
    assert json.loads(raw_message) == message_json
    assert verify_schnorr(
        serbero.public_hex, hashlib.sha256(raw_message.encode()).digest(), bytes.fromhex(sig)
    )


@pytest.mark.parametrize("where", ["payload", "message", "content", "signed"])
def test_deep_nesting_is_malformed_not_a_crash(serbero: Keys, dispute_id: str, where: str) -> None:
    """msgspec raises RecursionError past ~1000 levels; that must stay a MostroMessageError."""
    deep = "[" * 5000 + "]" * 5000
    message = '{"dispute":{"version":1,"action":"x","payload":{"other":' + deep + "}}}"
    content = {
        "payload": "[" + message + ",null]",
        "message": "[" + deep + ",null]",
        "content": deep,
        "signed": "[" + message + ',"' + "a" * 128 + '"]',
    }[where]
    with pytest.raises(MostroMessageError):
        parse_mostro_message(_opened(serbero.public_hex, content))
