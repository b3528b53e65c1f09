"""Client <-> relay frames (NIP-01, NIP-42) and subscription filters.

Relay frames decode in a single msgspec pass into tagged, array-like structs; the event inside
an ``EVENT`` frame is shape-checked (PROTO-6) but not verified, because the relay pool verifies
each event id once after de-duplication.
"""

from __future__ import annotations

import os
import string
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import msgspec

from serbero.protocol.event import DECODE_ERRORS, Event, sign_event
from serbero.protocol.keys import Keys

__all__ = [
    "AUTH_KIND",
    "MACHINE_PREFIXES",
    "MAX_FRAME_BYTES",
    "Filter",
    "FrameError",
    "RelayAuthChallenge",
    "RelayClosed",
    "RelayEose",
    "RelayEvent",
    "RelayFrame",
    "RelayNotice",
    "RelayOk",
    "build_auth_event",
    "decode_relay_frame",
    "encode_auth_message",
    "encode_close",
    "encode_event_message",
    "encode_req",
    "filter_matches",
    "message_prefix",
    "new_subscription_id",
    "normalize_relay_url",
]

MAX_FRAME_BYTES: Final = 5 * 1024 * 1024
AUTH_KIND: Final = 22242
MAX_SUB_ID_LEN: Final = 64
# PROTO-14: machine-readable prefixes of OK / CLOSED messages.
MACHINE_PREFIXES: Final = frozenset(
    {
        "duplicate",
        "pow",
        "blocked",
        "rate-limited",
        "invalid",
        "restricted",
        "mute",
        "error",
        "auth-required",
    }
)
_SUB_ID_RANDOM_BYTES: Final = 16
_DEFAULT_PORTS: Final = {"ws": 80, "wss": 443}
_TAG_LETTERS: Final = frozenset(string.ascii_letters)


class FrameError(ValueError):
    """A relay frame that is malformed, unknown or too large, or an unusable relay URL."""


def _filter_key(name: str) -> str:
    """Single-letter fields are tag conditions and go on the wire as ``#<letter>``."""
    return "#" + name if len(name) == 1 else name


class Filter(msgspec.Struct, omit_defaults=True, rename=_filter_key):
    """One NIP-01 filter (PROTO-16). Only set keys are emitted.

    Tag conditions are the single-letter fields: ``Filter(kinds=[1059], p=[pk])`` encodes as
    ``{"kinds":[1059],"#p":[pk]}``. Every ASCII letter is available, case-sensitive.
    """

    ids: list[str] | None = None
    authors: list[str] | None = None
    kinds: list[int] | None = None
    since: int | None = None
    until: int | None = None
    limit: int | None = None
    a: list[str] | None = None
    b: list[str] | None = None
    c: list[str] | None = None
    d: list[str] | None = None
    e: list[str] | None = None
    f: list[str] | None = None
    g: list[str] | None = None
    h: list[str] | None = None
    i: list[str] | None = None
    j: list[str] | None = None
    k: list[str] | None = None
    l: list[str] | None = None  # noqa: E741 - the NIP-01 tag letter
    m: list[str] | None = None
    n: list[str] | None = None
    o: list[str] | None = None
    p: list[str] | None = None
    q: list[str] | None = None
    r: list[str] | None = None
    s: list[str] | None = None
    t: list[str] | None = None
    u: list[str] | None = None
    v: list[str] | None = None
    w: list[str] | None = None
    x: list[str] | None = None
    y: list[str] | None = None
    z: list[str] | None = None
    A: list[str] | None = None
    B: list[str] | None = None
    C: list[str] | None = None
    D: list[str] | None = None
    E: list[str] | None = None
    F: list[str] | None = None
    G: list[str] | None = None
    H: list[str] | None = None
    I: list[str] | None = None  # noqa: E741 - the NIP-01 tag letter
    J: list[str] | None = None
    K: list[str] | None = None
    L: list[str] | None = None
    M: list[str] | None = None
    N: list[str] | None = None
    O: list[str] | None = None  # noqa: E741 - the NIP-01 tag letter
    P: list[str] | None = None
    Q: list[str] | None = None
    R: list[str] | None = None
    S: list[str] | None = None
    T: list[str] | None = None
    U: list[str] | None = None
    V: list[str] | None = None
    W: list[str] | None = None
    X: list[str] | None = None
    Y: list[str] | None = None
    Z: list[str] | None = None

    def tag_conditions(self) -> dict[str, list[str]]:
        """The set ``#<letter>`` conditions, keyed by letter."""
        conditions: dict[str, list[str]] = {}
        for name in _TAG_FIELDS:
            values = getattr(self, name)
            if values is not None:
                conditions[name] = values
        return conditions


_TAG_FIELDS: Final = tuple(name for name in Filter.__struct_fields__ if name in _TAG_LETTERS)


def filter_matches(f: Filter, e: Event) -> bool:
    """PROTO-16: values within a key are OR-ed, keys are AND-ed, bounds inclusive."""
    if f.ids is not None and e.id not in f.ids:
        return False
    if f.authors is not None and e.pubkey not in f.authors:
        return False
    if f.kinds is not None and e.kind not in f.kinds:
        return False
    if f.since is not None and e.created_at < f.since:
        return False
    if f.until is not None and e.created_at > f.until:
        return False
    for letter, wanted in f.tag_conditions().items():
        if not any(len(tag) >= 2 and tag[0] == letter and tag[1] in wanted for tag in e.tags):
            return False
    return True


# --- client -> relay ----------------------------------------------------------------------

_encoder: Final = msgspec.json.Encoder()


def _check_sub_id(sub_id: str) -> None:
    if not isinstance(sub_id, str) or not 0 < len(sub_id) <= MAX_SUB_ID_LEN:
        raise FrameError("subscription id must be a non-empty string of at most 64 characters")


def encode_req(sub_id: str, f: Filter) -> bytes:
    """``["REQ",<sub_id>,<filter>]`` with exactly one filter (PROTO-14)."""
    _check_sub_id(sub_id)
    return _encoder.encode(("REQ", sub_id, f))


def encode_close(sub_id: str) -> bytes:
    """``["CLOSE",<sub_id>]``."""
    _check_sub_id(sub_id)
    return _encoder.encode(("CLOSE", sub_id))


def encode_event_message(e: Event) -> bytes:
    """``["EVENT",<event>]`` for publishing."""
    return _encoder.encode(("EVENT", e))


def encode_auth_message(e: Event) -> bytes:
    """``["AUTH",<kind-22242 event>]`` (PROTO-21)."""
    return _encoder.encode(("AUTH", e))


def new_subscription_id(rand: Callable[[int], bytes] = os.urandom) -> str:
    """A random 32-hex-character subscription id (PROTO-15)."""
    return rand(_SUB_ID_RANDOM_BYTES).hex()


# --- relay -> client ----------------------------------------------------------------------


class RelayEvent(msgspec.Struct, frozen=True, array_like=True, tag="EVENT"):
    """``["EVENT",<sub_id>,<event>]``; the event is shape-checked, not yet verified."""

    sub_id: str
    event: Event


class RelayOk(msgspec.Struct, frozen=True, array_like=True, tag="OK"):
    """``["OK",<event_id>,<accepted>,<message>]``; a missing message reads as empty."""

    event_id: str
    accepted: bool
    message: str = ""


class RelayEose(msgspec.Struct, frozen=True, array_like=True, tag="EOSE"):
    """``["EOSE",<sub_id>]``."""

    sub_id: str


class RelayClosed(msgspec.Struct, frozen=True, array_like=True, tag="CLOSED"):
    """``["CLOSED",<sub_id>,<message>]``; a missing message reads as empty."""

    sub_id: str
    message: str = ""


class RelayNotice(msgspec.Struct, frozen=True, array_like=True, tag="NOTICE"):
    """``["NOTICE",<message>]``."""

    message: str


class RelayAuthChallenge(msgspec.Struct, frozen=True, array_like=True, tag="AUTH"):
    """``["AUTH",<challenge>]`` (NIP-42)."""

    challenge: str


RelayFrame = RelayEvent | RelayOk | RelayEose | RelayClosed | RelayNotice | RelayAuthChallenge

_frame_decoder: Final = msgspec.json.Decoder(RelayFrame)


def _utf8_len_exceeds(data: str, limit: int) -> bool:
    # A character is 1..4 UTF-8 bytes, so only strings in the ambiguous band need encoding.
    if len(data) > limit:
        return True
    if len(data) * 4 <= limit:
        return False
    return len(data.encode("utf-8", "surrogatepass")) > limit


def decode_relay_frame(data: bytes | str) -> RelayFrame:
    """Parse one relay->client text frame; FrameError for anything malformed, unknown or > 5 MiB."""
    if isinstance(data, str):
        too_big = _utf8_len_exceeds(data, MAX_FRAME_BYTES)
    elif isinstance(data, bytes | bytearray | memoryview):
        too_big = len(data) > MAX_FRAME_BYTES
    else:
        raise FrameError("frame must be bytes or str")
    if too_big:
        raise FrameError("frame larger than 5 MiB")
    try:
        frame: RelayFrame = _frame_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise FrameError(f"malformed or unknown frame: {exc}") from None
    return frame


def message_prefix(message: str) -> str | None:
    """The machine-readable prefix of an OK/CLOSED message (PROTO-14), or None when absent."""
    head, sep, _ = message.partition(":")
    if sep and head in MACHINE_PREFIXES:
        return head
    return None


# --- NIP-42 -------------------------------------------------------------------------------


def normalize_relay_url(url: str) -> str:
    """PROTO-22: lowercase scheme and host, drop a default port, keep a trailing ``/`` only
    when given. Anything but ``ws://`` / ``wss://`` with a host raises FrameError."""
    if not isinstance(url, str):
        raise FrameError("relay URL must be a string")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise FrameError(f"invalid relay URL: {exc}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        raise FrameError("relay URL must be ws:// or wss:// with a host")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if parts.username is not None:
        raise FrameError("relay URL must not carry credentials")
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


def build_auth_event(
    keys: Keys,
    *,
    challenge: str,
    relay_url: str,
    created_at: int,
    aux_rand: bytes | None = None,
) -> Event:
    """PROTO-21: kind 22242, empty content, tags ``[["challenge",c],["relay",url]]``."""
    return sign_event(
        keys,
        created_at=created_at,
        kind=AUTH_KIND,
        tags=[["challenge", challenge], ["relay", normalize_relay_url(relay_url)]],
        content="",
        aux_rand=aux_rand,
    )
