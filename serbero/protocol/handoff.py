"""escalation_handoff/v1: the handoff package mediation stores, and the DM solvers receive.

`decode_handoff_package` applies ESC-2 to a `handoff_prepared` row's `payload_json`;
`render_handoff_dm` writes the nine-line public wire contract of ESC-22/23 (every line but the
prose line byte-exact); `parse_handoff_dm` reads it back the way ESC-24 tells consumers to, so
solver tooling and our tests can round-trip it.

Header values are substituted verbatim (ESC-22), so a package whose dispute id, session id or
trigger could end a line is refused at decode time (BEY-21): it must never forge a header.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from serbero.protocol.event import DECODE_ERRORS
from serbero.protocol.texts import NO_SESSION_MARKER, handoff_prose, is_line_safe

__all__ = [
    "DISPUTE_ID_UNKNOWN",
    "HANDOFF_DM_VERSION",
    "HANDOFF_JSON_LABEL",
    "HandoffError",
    "HandoffPackage",
    "ParsedHandoffDm",
    "decode_handoff_package",
    "dispute_id_hint",
    "encode_handoff_package",
    "parse_handoff_dm",
    "render_handoff_dm",
]

HANDOFF_DM_VERSION: Final = "escalation_handoff/v1"
HANDOFF_JSON_LABEL: Final = "Handoff payload (JSON):"
# ESC-16: the audit row's dispute id when the payload does not even carry a string one.
DISPUTE_ID_UNKNOWN: Final = "unknown"
_DISPUTE_PREFIX: Final = "Dispute: "
_SESSION_PREFIX: Final = "Session: "
_TRIGGER_PREFIX: Final = "Trigger: "

_I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class HandoffError(ValueError):
    """A handoff package or DM body that does not meet the escalation_handoff/v1 contract."""


class HandoffPackage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """ESC-2 package; field order is the ESC-23 key order, and no session omits the key."""

    dispute_id: str
    session_id: str | None = None
    trigger: str
    evidence_refs: tuple[str, ...]
    prompt_bundle_id: str
    policy_hash: str
    rationale_refs: tuple[str, ...]
    assembled_at: _I64


_package_decoder: Final = msgspec.json.Decoder(HandoffPackage)
_any_decoder: Final = msgspec.json.Decoder()
_encoder: Final = msgspec.json.Encoder()


def _check_header_values(package: HandoffPackage) -> None:
    """BEY-21: values that go verbatim into header lines stay on their line."""
    for name, value in (
        ("dispute_id", package.dispute_id),
        ("session_id", package.session_id),
        ("trigger", package.trigger),
    ):
        if value is not None and not is_line_safe(value):
            raise HandoffError(f"{name} contains a line break or control character")
    if package.session_id == NO_SESSION_MARKER:
        raise HandoffError("session_id must not spell the no-session marker")


def decode_handoff_package(payload_json: str) -> HandoffPackage:
    """ESC-2: strict types (i64 `assembled_at`, floats rejected), unknown keys ignored.

    Invalid JSON, trailing non-whitespace, a missing key or a wrong type is malformed
    (ESC-16), and so is a header value that could forge a line.
    """
    try:
        package = _package_decoder.decode(payload_json)
    except DECODE_ERRORS as exc:
        raise HandoffError(f"malformed handoff package: {exc}") from None
    _check_header_values(package)
    return package


def dispute_id_hint(payload_json: str) -> str:
    """ESC-16: the string `dispute_id` of a JSON object payload, else `unknown`."""
    try:
        value = _any_decoder.decode(payload_json)
    except DECODE_ERRORS:
        return DISPUTE_ID_UNKNOWN
    if isinstance(value, dict):
        hint = value.get("dispute_id")
        if isinstance(hint, str):
            return hint
    return DISPUTE_ID_UNKNOWN


def encode_handoff_package(package: HandoffPackage) -> str:
    """ESC-23: compact JSON in contract key order; `session_id` omitted when there is none."""
    try:
        return _encoder.encode(package).decode()
    except UnicodeEncodeError as exc:
        raise HandoffError(f"handoff package cannot be encoded: {exc}") from None


def render_handoff_dm(package: HandoffPackage) -> str:
    """ESC-22: the nine-line DM body; identical for every recipient and every re-send."""
    _check_header_values(package)
    session = NO_SESSION_MARKER if package.session_id is None else package.session_id
    return "\n".join(
        (
            HANDOFF_DM_VERSION,
            _DISPUTE_PREFIX + package.dispute_id,
            _SESSION_PREFIX + session,
            _TRIGGER_PREFIX + package.trigger,
            "",
            handoff_prose(package.dispute_id, package.trigger),
            "",
            HANDOFF_JSON_LABEL,
            encode_handoff_package(package),
        )
    )


class ParsedHandoffDm(msgspec.Struct, frozen=True):
    """What a consumer reads from an escalation_handoff/v1 body."""

    dispute_id: str
    session_id: str | None
    trigger: str
    package: HandoffPackage
    # L6, for display only: consumers must not parse it (ESC-24).
    prose: str


def _header(lines: list[str], prefix: str) -> str | None:
    for line in lines:
        if line.startswith(prefix):
            return line[len(prefix) :]
    return None


def parse_handoff_dm(text: str) -> ParsedHandoffDm:
    """Read a body as ESC-24 consumers do: find the JSON label and decode the next line.

    Unknown lines are ignored and a trailing newline is tolerated. The `Dispute:`, `Session:`
    and `Trigger:` headers (first occurrence before the first blank line) must agree with the
    JSON, so a body whose headers were tampered with is refused.
    """
    if not isinstance(text, str):
        raise HandoffError("handoff DM must be text")
    lines = text.split("\n")
    if lines[0] != HANDOFF_DM_VERSION:
        raise HandoffError(f"first line must be {HANDOFF_DM_VERSION}")
    try:
        label_at = lines.index(HANDOFF_JSON_LABEL)
    except ValueError:
        raise HandoffError("no 'Handoff payload (JSON):' line") from None
    if label_at + 1 >= len(lines):
        raise HandoffError("no JSON line after the payload label")
    package = decode_handoff_package(lines[label_at + 1])
    header_end = lines.index("") if "" in lines[:label_at] else label_at
    headers = lines[1:header_end]
    dispute_id = _header(headers, _DISPUTE_PREFIX)
    session = _header(headers, _SESSION_PREFIX)
    trigger = _header(headers, _TRIGGER_PREFIX)
    if dispute_id is None or session is None or trigger is None:
        raise HandoffError("missing Dispute:, Session: or Trigger: header")
    session_id = None if session == NO_SESSION_MARKER else session
    if (dispute_id, session_id, trigger) != (
        package.dispute_id,
        package.session_id,
        package.trigger,
    ):
        raise HandoffError("header lines disagree with the JSON payload")
    prose_lines = lines[header_end + 1 : label_at]
    prose = next((line for line in prose_lines if line), "")
    return ParsedHandoffDm(
        dispute_id=dispute_id,
        session_id=session_id,
        trigger=trigger,
        package=package,
        prose=prose,
    )
