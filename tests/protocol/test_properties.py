"""Property tests: round-trips, PROTO-7 against the stdlib encoder, and "bad input raises only
the module's typed error" for every parser (the project's standing error rule)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serbero.protocol import nip44
from serbero.protocol.event import (
    Event,
    EventError,
    compute_event_id,
    decode_event,
    encode_event,
    make_rumor,
    sign_event,
)
from serbero.protocol.keys import KeyFormatError, Keys, parse_public_key, parse_secret_key
from serbero.protocol.messages import FrameError, decode_relay_frame
from serbero.protocol.nip59 import GiftWrapError, unwrap_gift

ALICE = Keys.from_secret((0xA11CE).to_bytes(32, "big"))
BOB = Keys.from_secret((0xB0B).to_bytes(32, "big"))
CK = nip44.conversation_key(ALICE.secret, BOB.public_hex)
NOW = 1_700_000_000

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
hex128 = st.binary(min_size=64, max_size=64).map(bytes.hex)
tags = st.lists(st.lists(st.text(max_size=20), min_size=1, max_size=4), max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
events = st.builds(
    Event,
    id=hex64,
    pubkey=hex64,
    created_at=st.integers(min_value=0, max_value=2**63 - 1),
    kind=st.integers(min_value=0, max_value=65535),
    tags=tags,
    content=st.text(max_size=200),
    sig=hex128,
)
# Event-shaped objects whose fields are anything at all: exercises every shape check.
event_like = st.fixed_dictionaries(
    {},
    optional={
        k: json_values | hex64
        for k in ("id", "pubkey", "created_at", "kind", "tags", "content", "sig")
    },
)
garbage_text = st.text(max_size=300) | json_values.map(json.dumps) | event_like.map(json.dumps)
garbage = garbage_text | st.binary(max_size=300) | garbage_text.map(str.encode)


def _utf8_len_ok(text: str) -> bool:
    return 1 <= len(text.encode()) <= 65535


@FAST
@given(st.text(min_size=1, max_size=2000).filter(_utf8_len_ok), st.binary(min_size=32, max_size=32))
def test_nip44_round_trip(text: str, nonce: bytes) -> None:
    payload = nip44.encrypt(text, CK, nonce)
    assert nip44.decrypt(payload, CK) == text
    assert len(payload) % 4 == 0


@FAST
@given(events)
def test_event_encode_decode_round_trip(event: Event) -> None:
    assert decode_event(encode_event(event)) == event
    assert decode_event(encode_event(event).decode()) == event


@FAST
@given(
    hex64,
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(0, 65535),
    tags,
    st.text(max_size=200),
)
def test_event_id_matches_stdlib_json(
    pubkey: str, created_at: int, kind: int, tag_list: list[list[str]], content: str
) -> None:
    # PROTO-7: json.dumps(ensure_ascii=False, compact) produces exactly the hashed bytes.
    import hashlib

    reference = json.dumps(
        [0, pubkey, created_at, kind, tag_list, content], ensure_ascii=False, separators=(",", ":")
    ).encode()
    assert compute_event_id(pubkey, created_at, kind, tag_list, content) == (
        hashlib.sha256(reference).hexdigest()
    )


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=100), tags, st.integers(0, 65535))
def test_signed_events_survive_the_wire(content: str, tag_list: list[list[str]], kind: int) -> None:
    from serbero.protocol.event import verify_event

    event = sign_event(ALICE, created_at=NOW, kind=kind, tags=tag_list, content=content)
    verify_event(decode_event(encode_event(event)))


@FAST
@given(garbage)
def test_decode_event_raises_only_event_error(data: bytes | str) -> None:
    with contextlib.suppress(EventError):
        decode_event(data)


@FAST
@given(
    garbage
    | st.tuples(
        st.sampled_from(["EVENT", "OK", "EOSE", "CLOSED", "NOTICE", "AUTH"]),
        st.lists(json_values | event_like, max_size=3),
    ).map(lambda t: json.dumps([t[0], *t[1]]))
)
def test_decode_relay_frame_raises_only_frame_error(data: bytes | str) -> None:
    with contextlib.suppress(FrameError):
        decode_relay_frame(data)


valid_payload = st.text(min_size=1, max_size=100).map(lambda t: nip44.encrypt(t, CK))


@FAST
@given(
    st.text(max_size=400)
    | st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
        min_size=120,
        max_size=400,
    )
    | st.tuples(valid_payload, st.integers(0, 200), st.characters()).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
    )
)
def test_nip44_decrypt_raises_only_nip44_error(payload: str) -> None:
    with contextlib.suppress(nip44.Nip44Error):
        nip44.decrypt(payload, CK)


def _wrap_with_content(content: str, pubkey_keys: Keys = ALICE) -> Event:
    return sign_event(
        pubkey_keys, created_at=NOW, kind=1059, tags=[["p", BOB.public_hex]], content=content
    )


@FAST
@given(events | st.builds(_wrap_with_content, st.text(max_size=300)))
def test_unwrap_arbitrary_event_raises_only_gift_wrap_error(event: Event) -> None:
    with contextlib.suppress(GiftWrapError):
        unwrap_gift(BOB, event)


def _wrap_around_seal_text(seal_text: str) -> Event:
    ck = nip44.conversation_key(ALICE.secret, BOB.public_hex)
    return _wrap_with_content(nip44.encrypt(seal_text, ck))


def _wrap_around_rumor_text(rumor_text: str) -> Event:
    seal = sign_event(
        ALICE, created_at=NOW, kind=13, tags=[], content=nip44.encrypt(rumor_text, CK)
    )
    return _wrap_around_seal_text(encode_event(seal).decode())


inner_text = (
    json_values.map(json.dumps) | event_like.map(json.dumps) | st.text(max_size=200)
).filter(_utf8_len_ok)


@FAST
@given(inner_text)
def test_unwrap_arbitrary_seal_raises_only_gift_wrap_error(seal_text: str) -> None:
    with contextlib.suppress(GiftWrapError):
        unwrap_gift(BOB, _wrap_around_seal_text(seal_text))


@FAST
@given(inner_text | st.builds(lambda d: json.dumps({"pubkey": ALICE.public_hex, **d}), event_like))
def test_unwrap_arbitrary_rumor_raises_only_gift_wrap_error(rumor_text: str) -> None:
    try:
        opened = unwrap_gift(BOB, _wrap_around_rumor_text(rumor_text))
    except GiftWrapError:
        return
    assert opened.sender == ALICE.public_hex
    assert (
        opened.rumor.id
        == make_rumor(
            opened.rumor.pubkey,
            created_at=opened.rumor.created_at,
            kind=opened.rumor.kind,
            tags=opened.rumor.tags,
            content=opened.rumor.content,
        ).id
    )


@FAST
@given(garbage_text | hex64 | hex64.map(lambda h: "npub1" + h) | st.just(BOB.public_hex))
def test_key_parsers_raise_only_key_format_error(text: str) -> None:
    for parse in (parse_public_key, parse_secret_key):
        with contextlib.suppress(KeyFormatError):
            parse(text)


def test_strategies_reach_the_success_paths() -> None:
    # Guard against the fuzz tests above passing vacuously on a parser that always raises.
    good: Any = json.loads(encode_event(_wrap_with_content("x")))
    assert decode_event(json.dumps(good)).content == "x"
    assert isinstance(decode_relay_frame(json.dumps(["EVENT", "s", good])).event, Event)
    assert nip44.decrypt(nip44.encrypt("x", CK), CK) == "x"
    rumor = msgspec.structs.asdict(
        make_rumor(ALICE.public_hex, created_at=1, kind=1, tags=[], content="c")
    )
    assert unwrap_gift(BOB, _wrap_around_rumor_text(json.dumps(rumor))).rumor.content == "c"
