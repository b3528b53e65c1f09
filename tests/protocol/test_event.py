"""NIP-01 events: ids and escaping (PROTO-7), signing (PROTO-8), shape and verify (PROTO-6/9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from serbero.protocol.event import (
    MAX_TAGS,
    TIMESTAMP_TWEAK_RANGE,
    Event,
    EventError,
    Rumor,
    compute_event_id,
    decode_event,
    encode_event,
    expiration_of,
    first_tag_value,
    make_rumor,
    sign_event,
    tweaked_timestamp,
    verify_event,
)
from serbero.protocol.keys import Keys
from tests.protocol import vector_files

ZERO_AUX = bytes(32)
ID_VECTORS = ["event_id_dispute_38386", "event_id_escaping"]


def _derived(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (vectors_dir / "serbero-protocol.derived.vectors.json").read_text(encoding="utf-8")
    )
    return data


@pytest.mark.parametrize("name", ID_VECTORS)
def test_id_serialization_and_signature(vectors_dir: Path, name: str) -> None:
    case = _derived(vectors_dir)[name]
    keys = Keys.parse(case["secret"])
    event = sign_event(
        keys,
        created_at=case["created_at"],
        kind=case["kind"],
        tags=case["tags"],
        content=case["content"],
        aux_rand=ZERO_AUX,
    )
    expected = case["event"]
    assert event.id == expected["id"]
    assert event.sig == expected["sig"]
    assert msgspec.structs.asdict(event) == expected
    assert encode_event(event) == json.dumps(
        expected, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
    assert (
        compute_event_id(
            keys.public_hex, case["created_at"], case["kind"], case["tags"], case["content"]
        )
        == expected["id"]
    )
    verify_event(decode_event(json.dumps(expected)))


def test_escaping_bytes_match_vector(vectors_dir: Path) -> None:
    case = _derived(vectors_dir)["event_id_escaping"]
    serialized = msgspec.json.encode(
        [
            0,
            case["event"]["pubkey"],
            case["created_at"],
            case["kind"],
            case["tags"],
            case["content"],
        ]
    )
    assert serialized.hex() == case["serialized_utf8_hex"]
    assert serialized.decode("utf-8") == case["serialized"]
    assert (
        compute_event_id(
            case["event"]["pubkey"], case["created_at"], case["kind"], case["tags"], case["content"]
        )
        == "daf86a0e39970cdf88133840c5bfecb47d92c1b3ba26e4edb7ec72e79f2358f6"
    )


@pytest.mark.parametrize("content", ["\ud800", "a\udfffb"])
def test_lone_surrogate_rejected(content: str) -> None:
    with pytest.raises(EventError):
        compute_event_id("00" * 32, 1, 1, [], content)
    with pytest.raises(EventError):
        compute_event_id("00" * 32, 1, 1, [["t", content]], "")
    with pytest.raises(EventError):
        sign_event(Keys.generate(), created_at=1, kind=1, tags=[], content=content)


def test_decode_ignores_unknown_keys_and_key_order(vectors_dir: Path) -> None:
    expected = _derived(vectors_dir)["event_id_dispute_38386"]["event"]
    shuffled = {k: expected[k] for k in reversed(list(expected))} | {"extra": [1, {"x": 2}]}
    event = decode_event(json.dumps(shuffled).encode())
    assert msgspec.structs.asdict(event) == expected
    assert list(json.loads(encode_event(event))) == [
        "id",
        "pubkey",
        "created_at",
        "kind",
        "tags",
        "content",
        "sig",
    ]


def _good() -> dict[str, Any]:
    return msgspec.structs.asdict(
        sign_event(Keys.generate(), created_at=1700000000, kind=1, tags=[["t", "x"]], content="hi")
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "AB" * 32),
        ("id", "ab" * 31),
        ("pubkey", "ab" * 33),
        ("pubkey", 5),
        ("sig", "ab" * 63),
        ("sig", "AB" * 64),
        ("created_at", -1),
        ("created_at", 1.5),
        ("created_at", "1700000000"),
        ("created_at", 2**64),
        ("kind", 65536),
        ("kind", -1),
        ("kind", True),
        ("tags", [[]]),
        ("tags", [["t", 1]]),
        ("tags", [["t", None]]),
        ("tags", ["t"]),
        ("tags", {}),
        ("tags", [["t"]] * (MAX_TAGS + 1)),
        ("content", None),
    ],
)
def test_decode_rejects_bad_shape(field: str, value: object) -> None:
    raw = _good()
    raw[field] = value
    with pytest.raises(EventError):
        decode_event(json.dumps(raw))


@pytest.mark.parametrize(
    "missing", ["id", "pubkey", "created_at", "kind", "tags", "content", "sig"]
)
def test_decode_rejects_missing_field(missing: str) -> None:
    raw = _good()
    del raw[missing]
    with pytest.raises(EventError):
        decode_event(json.dumps(raw))


@pytest.mark.parametrize(
    "data", [b"", b"[]", b"{", b"null", "\ud800", b"\xff", b'{"id":"\\ud800"}']
)
def test_decode_rejects_garbage(data: bytes | str) -> None:
    with pytest.raises(EventError):
        decode_event(data)


def test_max_tags_accepted() -> None:
    raw = _good()
    raw["tags"] = [["t"]] * MAX_TAGS
    assert len(decode_event(json.dumps(raw)).tags) == MAX_TAGS


def test_verify_detects_tampering() -> None:
    raw = _good()
    event = decode_event(json.dumps(raw))
    verify_event(event)
    with pytest.raises(EventError, match="id"):
        verify_event(msgspec.structs.replace(event, content="changed"))
    other = sign_event(
        Keys.generate(), created_at=1700000000, kind=1, tags=[["t", "x"]], content="hi"
    )
    with pytest.raises(EventError, match="signature"):
        verify_event(msgspec.structs.replace(other, sig=event.sig))
    # PROTO-67: the same content re-signed by another key keeps a valid id only for that key.
    with pytest.raises(EventError):
        verify_event(msgspec.structs.replace(event, sig=other.sig))
    flipped = ("0" if event.sig[0] != "0" else "1") + event.sig[1:]
    with pytest.raises(EventError, match="signature"):
        verify_event(msgspec.structs.replace(event, sig=flipped))


def test_sign_event_copies_tags_and_validates() -> None:
    tags = [["p", "x"]]
    event = sign_event(Keys.generate(), created_at=1, kind=1, tags=tags, content="")
    tags[0].append("mutated")
    assert event.tags == [["p", "x"]]
    for bad in ({"kind": 70000}, {"created_at": -5}, {"tags": [[]]}, {"kind": True}):
        args: dict[str, Any] = {"created_at": 1, "kind": 1, "tags": [], "content": ""} | bad
        with pytest.raises(EventError):
            sign_event(Keys.generate(), **args)


def test_rumor_has_no_sig_and_id_matches() -> None:
    keys = Keys.generate()
    rumor = make_rumor(keys.public_hex, created_at=5, kind=14, tags=[["p", "ab"]], content="x")
    assert isinstance(rumor, Rumor)
    raw = json.loads(encode_event(rumor))
    assert list(raw) == ["id", "pubkey", "created_at", "kind", "tags", "content"]
    assert rumor.id == compute_event_id(keys.public_hex, 5, 14, [["p", "ab"]], "x")


def test_first_tag_value() -> None:
    tags = [["s"], ["S", "upper"], ["s", "first"], ["s", "second"], ["x", ""]]
    assert first_tag_value(tags, "s") == "first"
    assert first_tag_value(tags, "S") == "upper"
    assert first_tag_value(tags, "x") == ""
    assert first_tag_value(tags, "missing") is None


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([["expiration", "1702592000"]], 1702592000),
        ([["expiration", "5"], ["expiration", "9"]], 5),
        ([["expiration"], ["expiration", "9"]], 9),
        ([["expiration", "soon"]], None),
        ([["expiration", "-5"]], None),
        ([["expiration", "1.5"]], None),
        ([["expiration", " 5"]], None),
        ([["expiration", "٥"]], None),
        ([], None),
    ],
)
def test_expiration_of(tags: list[list[str]], expected: int | None) -> None:
    event = Rumor("00" * 32, "00" * 32, 1, 1, tags, "")
    assert expiration_of(event) == expected


def test_expiration_of_vector_event() -> None:
    raw = vector_files.derived()["event_id_dispute_38386"]["event"]
    assert expiration_of(decode_event(json.dumps(raw))) == 1702592000


def test_tweaked_timestamp_range_and_rejection() -> None:
    now = 1_700_000_000
    assert tweaked_timestamp(now, lambda n: bytes(n)) == now
    # Draw 172799 is the largest accepted offset.
    assert tweaked_timestamp(now, lambda n: (TIMESTAMP_TWEAK_RANGE - 1).to_bytes(n, "big")) == (
        now - TIMESTAMP_TWEAK_RANGE + 1
    )
    # A draw at or above the rejection limit is discarded, not folded (keeps r uniform).
    draws = iter([b"\xff\xff\xff", (7).to_bytes(3, "big")])
    assert tweaked_timestamp(now, lambda n: next(draws)) == now - 7
    values = {tweaked_timestamp(now) for _ in range(200)}
    assert all(now - TIMESTAMP_TWEAK_RANGE < v <= now for v in values)
    assert len(values) > 150


def test_event_struct_is_frozen() -> None:
    event = decode_event(json.dumps(_good()))
    with pytest.raises(AttributeError):
        event.content = "x"  # type: ignore[misc]
    assert isinstance(event, Event)
