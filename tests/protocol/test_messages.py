"""Relay frames (PROTO-14), filters (PROTO-15/16), NIP-42 auth (PROTO-21/22)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from serbero.protocol.event import Event, encode_event, sign_event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import (
    MAX_FRAME_BYTES,
    Filter,
    FrameError,
    RelayAuthChallenge,
    RelayClosed,
    RelayEose,
    RelayEvent,
    RelayNotice,
    RelayOk,
    build_auth_event,
    decode_relay_frame,
    encode_auth_message,
    encode_close,
    encode_event_message,
    encode_req,
    filter_matches,
    message_prefix,
    new_subscription_id,
    normalize_relay_url,
)

PK = "c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5"


def _event(**overrides: Any) -> Event:
    args: dict[str, Any] = {
        "created_at": 1700000000,
        "kind": 1059,
        "tags": [["p", PK], ["d", "abc"], ["e", "ee"]],
        "content": "c",
    } | overrides
    return sign_event(Keys.from_secret((2).to_bytes(32, "big")), **args)


def test_filter_emits_only_set_keys() -> None:
    assert encode_req("s1", Filter(kinds=[38386], authors=[PK], since=10)) == (
        b'["REQ","s1",{"authors":["' + PK.encode() + b'"],"kinds":[38386],"since":10}]'
    )
    assert encode_req("s", Filter()) == b'["REQ","s",{}]'
    wire = json.loads(
        encode_req(
            "s", Filter(kinds=[1059], p=[PK], since=0, d=["x"], e=["y"], S=["upper"], limit=0)
        )
    )
    assert wire[2] == {
        "kinds": [1059],
        "since": 0,
        "limit": 0,
        "#p": [PK],
        "#d": ["x"],
        "#e": ["y"],
        "#S": ["upper"],
    }


def test_filter_round_trips_through_json() -> None:
    f = Filter(ids=["a"], until=5, p=[PK], z=["dispute"])
    assert msgspec.json.decode(msgspec.json.encode(f), type=Filter) == f
    assert f.tag_conditions() == {"p": [PK], "z": ["dispute"]}


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (Filter(), True),
        (Filter(kinds=[1, 1059]), True),
        (Filter(kinds=[1]), False),
        (Filter(authors=[PK]), True),
        (Filter(authors=["00" * 32]), False),
        (Filter(since=1700000000, until=1700000000), True),
        (Filter(since=1700000001), False),
        (Filter(until=1699999999), False),
        (Filter(p=[PK, "x"]), True),
        (Filter(p=["x"]), False),
        (Filter(d=["abc"], e=["ee"]), True),
        (Filter(d=["abc"], e=["no"]), False),
        (Filter(P=[PK]), False),  # tag names are case-sensitive
        (Filter(limit=0), True),  # limit never affects matching
    ],
)
def test_filter_matches(f: Filter, expected: bool) -> None:
    assert filter_matches(f, _event()) is expected


def test_filter_matches_ids_and_valueless_tags() -> None:
    event = _event(tags=[["p"], ["t", "x"]])
    assert filter_matches(Filter(ids=[event.id]), event)
    assert not filter_matches(Filter(ids=["00" * 32]), event)
    assert not filter_matches(Filter(p=[""]), event)


def test_client_frames() -> None:
    event = _event()
    body = encode_event(event)
    assert encode_event_message(event) == b'["EVENT",' + body + b"]"
    assert encode_auth_message(event) == b'["AUTH",' + body + b"]"
    assert encode_close("abc") == b'["CLOSE","abc"]'
    for bad in ("", "x" * 65):
        with pytest.raises(FrameError):
            encode_close(bad)
        with pytest.raises(FrameError):
            encode_req(bad, Filter())


def test_decode_relay_frames() -> None:
    event = _event()
    event_json = encode_event(event).decode()
    frame = decode_relay_frame(f'["EVENT","sub",{event_json}]')
    assert frame == RelayEvent("sub", event)
    assert decode_relay_frame(b'["OK","ab",true,""]') == RelayOk("ab", True, "")
    assert decode_relay_frame(b'["OK","ab",false,"blocked: no"]') == RelayOk(
        "ab", False, "blocked: no"
    )
    assert decode_relay_frame(b'["OK","ab",true]') == RelayOk("ab", True, "")
    assert decode_relay_frame(b'["EOSE","sub"]') == RelayEose("sub")
    assert decode_relay_frame(b'["CLOSED","sub","auth-required: x"]') == RelayClosed(
        "sub", "auth-required: x"
    )
    assert decode_relay_frame(b'["NOTICE","hello"]') == RelayNotice("hello")
    assert decode_relay_frame(b'["AUTH","chal"]') == RelayAuthChallenge("chal")
    # Extra trailing elements from lenient relays are tolerated.
    assert decode_relay_frame(b'["EOSE","sub","extra"]') == RelayEose("sub")


def test_relay_event_is_shape_checked_but_not_verified() -> None:
    event = _event()
    forged = msgspec.structs.replace(event, content="forged")  # id no longer matches
    frame = decode_relay_frame(b'["EVENT","s",' + encode_event(forged) + b"]")
    assert isinstance(frame, RelayEvent)
    assert frame.event.content == "forged"
    raw = json.loads(encode_event(event))
    raw["tags"] = [[]]
    with pytest.raises(FrameError):
        decode_relay_frame(json.dumps(["EVENT", "s", raw]))
    raw["tags"] = [["t"]] * 2001
    with pytest.raises(FrameError):
        decode_relay_frame(json.dumps(["EVENT", "s", raw]))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"{}",
        b'["EVENT"]',
        b'["EVENT","s"]',
        b'["EVENT","s",{}]',
        b'["OK","ab","true",""]',
        b'["OK","ab"]',
        b'["NOTICE"]',
        b'["NOTICE",5]',
        b'["AUTH",{"id":"x"}]',
        b'["COUNT","s",{"count":1}]',
        b'["REQ","s",{}]',
        b'["eose","s"]',
        b"\xff\xfe",
        "\ud800",
        b'["NOTICE","\\ud800"]',
    ],
)
def test_decode_rejects_malformed_or_unknown(data: bytes | str) -> None:
    with pytest.raises(FrameError):
        decode_relay_frame(data)


def test_oversized_frames_rejected() -> None:
    filler = "a" * (MAX_FRAME_BYTES - len('["NOTICE",""]'))
    just_fits = f'["NOTICE","{filler}"]'
    assert len(just_fits) == MAX_FRAME_BYTES
    assert isinstance(decode_relay_frame(just_fits), RelayNotice)
    assert isinstance(decode_relay_frame(just_fits.encode()), RelayNotice)
    with pytest.raises(FrameError, match="5 MiB"):
        decode_relay_frame(just_fits.encode() + b" ")
    # Counted in UTF-8 bytes, not characters.
    wide = '["NOTICE","' + "é" * (MAX_FRAME_BYTES // 2) + '"]'
    assert len(wide) < MAX_FRAME_BYTES
    with pytest.raises(FrameError, match="5 MiB"):
        decode_relay_frame(wide)


@pytest.mark.parametrize(
    ("message", "prefix"),
    [
        ("rate-limited: slow down", "rate-limited"),
        ("duplicate: already have it", "duplicate"),
        ("auth-required:", "auth-required"),
        ("blocked: you", "blocked"),
        ("invalid: bad", "invalid"),
        ("pow: 20", "pow"),
        ("restricted: x", "restricted"),
        ("mute: x", "mute"),
        ("error: x", "error"),
        ("", None),
        ("no prefix here", None),
        ("Blocked: case matters", None),
        ("unknown: x", None),
        ("rate-limited", None),
    ],
)
def test_message_prefix(message: str, prefix: str | None) -> None:
    assert message_prefix(message) == prefix


def test_auth_event_vector(vectors_dir: Path) -> None:
    case = json.loads((vectors_dir / "serbero-protocol.derived.vectors.json").read_text())[
        "nip42_auth_event"
    ]
    event = build_auth_event(
        Keys.parse(case["secret"]),
        challenge=case["challenge"],
        relay_url=case["relay"],
        created_at=case["created_at"],
        aux_rand=bytes(32),
    )
    assert msgspec.structs.asdict(event) == case["event"]
    assert event.id == "7cd48100ad6dcf3eab8bd478dcd6451fb8fbe127858af85df1d5fa9c24205255"
    assert encode_auth_message(event) == case["client_message"].encode()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://relay.example.com", "wss://relay.example.com"),
        ("wss://relay.example.com/", "wss://relay.example.com/"),
        ("WSS://Relay.EXAMPLE.com/Path", "wss://relay.example.com/Path"),
        ("ws://127.0.0.1:7000", "ws://127.0.0.1:7000"),
        ("wss://relay.example.com:443", "wss://relay.example.com"),
        ("ws://relay.example.com:80/x", "ws://relay.example.com/x"),
        ("ws://[::1]:7000/", "ws://[::1]:7000/"),
        ("  wss://r.example.org  ", "wss://r.example.org"),
    ],
)
def test_normalize_relay_url(url: str, expected: str) -> None:
    assert normalize_relay_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://relay.example.com",
        "relay.example.com",
        "wss://",
        "wss://:443",
        "ws://h:99999",
        "wss://user:pw@relay.example.com",
        "",
    ],
)
def test_normalize_relay_url_rejects(url: str) -> None:
    with pytest.raises(FrameError):
        normalize_relay_url(url)


def test_auth_event_uses_normalized_url() -> None:
    event = build_auth_event(
        Keys.generate(), challenge="c", relay_url="WSS://R.example.com", created_at=1
    )
    assert event.tags == [["challenge", "c"], ["relay", "wss://r.example.com"]]
    assert event.kind == 22242 and event.content == ""


def test_new_subscription_id() -> None:
    assert new_subscription_id(lambda n: b"\x01" * n) == "01" * 16
    ids = {new_subscription_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(0 < len(i) <= 64 for i in ids)
