"""escalation_handoff/v1: ESC-2 decoding, the ESC-22/23 body, and reading it back (ESC-24)."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serbero.protocol.handoff import (
    DISPUTE_ID_UNKNOWN,
    HandoffError,
    HandoffPackage,
    decode_handoff_package,
    dispute_id_hint,
    encode_handoff_package,
    parse_handoff_dm,
    render_handoff_dm,
)
from serbero.protocol.texts import NO_SESSION_MARKER

# The ESC-23 example line, as the contract prints it.
ESC23_EXAMPLE = (
    '{"dispute_id":"d-1","session_id":"s-1","trigger":"round_limit","evidence_refs":["e1"],'
    '"prompt_bundle_id":"phase3-default","policy_hash":"h1","rationale_refs":["r1"],'
    '"assembled_at":1745000000}'
)
REQUIRED_KEYS = (
    "dispute_id",
    "trigger",
    "evidence_refs",
    "prompt_bundle_id",
    "policy_hash",
    "rationale_refs",
    "assembled_at",
)


def _payload(**overrides: object) -> str:
    data: dict[str, object] = json.loads(ESC23_EXAMPLE)
    for key, value in overrides.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data)


def _template_lines(package: HandoffPackage) -> list[str]:
    """ESC-22 with L6 left as None: the lines that must match byte for byte."""
    session = NO_SESSION_MARKER if package.session_id is None else package.session_id
    return [
        "escalation_handoff/v1",
        f"Dispute: {package.dispute_id}",
        f"Session: {session}",
        f"Trigger: {package.trigger}",
        "",
        "<L6>",
        "",
        "Handoff payload (JSON):",
        encode_handoff_package(package),
    ]


# --- ESC-2 decoding -----------------------------------------------------------------------


def test_decode_the_contract_example() -> None:
    package = decode_handoff_package(ESC23_EXAMPLE)
    assert package == HandoffPackage(
        dispute_id="d-1",
        session_id="s-1",
        trigger="round_limit",
        evidence_refs=("e1",),
        prompt_bundle_id="phase3-default",
        policy_hash="h1",
        rationale_refs=("r1",),
        assembled_at=1745000000,
    )
    assert encode_handoff_package(package) == ESC23_EXAMPLE


def test_unknown_keys_are_ignored_and_dropped_from_the_json_line() -> None:
    package = decode_handoff_package(_payload(extra={"x": 1}, rationale_text="secret"))
    assert encode_handoff_package(package) == ESC23_EXAMPLE


@pytest.mark.parametrize("session", [..., None])
def test_absent_and_null_session_mean_no_session(session: object) -> None:
    package = decode_handoff_package(_payload(session_id=session))
    assert package.session_id is None
    assert '"session_id"' not in encode_handoff_package(package)


def test_key_order_of_input_does_not_matter() -> None:
    shuffled = json.dumps(dict(reversed(list(json.loads(ESC23_EXAMPLE).items()))))
    assert encode_handoff_package(decode_handoff_package(shuffled)) == ESC23_EXAMPLE


def test_surrounding_whitespace_is_fine() -> None:
    assert decode_handoff_package(" \n" + ESC23_EXAMPLE + "\n ") == decode_handoff_package(
        ESC23_EXAMPLE
    )


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_each_required_key_is_required(key: str) -> None:
    with pytest.raises(HandoffError):
        decode_handoff_package(_payload(**{key: ...}))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("assembled_at", 1745000000.0),
        ("assembled_at", 1.5),
        ("assembled_at", "1745000000"),
        ("assembled_at", True),
        ("assembled_at", 2**63),
        ("assembled_at", -(2**63) - 1),
        ("dispute_id", 1),
        ("dispute_id", None),
        ("session_id", 5),
        ("trigger", None),
        ("evidence_refs", "e1"),
        ("evidence_refs", ["e1", 2]),
        ("rationale_refs", [None]),
        ("prompt_bundle_id", None),
        ("policy_hash", ["h"]),
    ],
)
def test_wrong_types_are_malformed(key: str, value: object) -> None:
    with pytest.raises(HandoffError):
        decode_handoff_package(_payload(**{key: value}))


def test_exponent_float_is_rejected() -> None:
    with pytest.raises(HandoffError):
        decode_handoff_package(ESC23_EXAMPLE.replace("1745000000", "1.745e9"))


def test_i64_bounds_are_accepted() -> None:
    assert decode_handoff_package(_payload(assembled_at=2**63 - 1)).assembled_at == 2**63 - 1
    assert decode_handoff_package(_payload(assembled_at=-(2**63))).assembled_at == -(2**63)


@pytest.mark.parametrize(
    "payload",
    ["", "this is not json at all {{{", "[]", "null", ESC23_EXAMPLE + " x", ESC23_EXAMPLE + "{}"],
)
def test_invalid_json_or_trailing_data_is_malformed(payload: str) -> None:
    with pytest.raises(HandoffError):
        decode_handoff_package(payload)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dispute_id", "d-1\nTrigger: fake"),
        ("dispute_id", "d-1\r"),
        ("dispute_id", "d\x00"),
        ("dispute_id", "d\u2028x"),
        ("session_id", "s\nDispute: other"),
        ("session_id", NO_SESSION_MARKER),
        ("trigger", "round_limit\n\nHandoff payload (JSON):"),
        ("trigger", "t\x1b[31m"),
        ("trigger", "t\u2029"),
    ],
)
def test_header_values_that_could_forge_lines_are_refused(key: str, value: str) -> None:
    """BEY-21: nothing substituted into a header line may break out of it."""
    with pytest.raises(HandoffError):
        decode_handoff_package(_payload(**{key: value}))
    with pytest.raises(HandoffError):
        render_handoff_dm(
            msgspec.structs.replace(decode_handoff_package(ESC23_EXAMPLE), **{key: value})
        )


def test_empty_dispute_id_decodes_for_the_orphan_path() -> None:
    """ESC-17: an empty dispute_id is an orphan reference, not a parse failure."""
    assert decode_handoff_package(_payload(dispute_id="")).dispute_id == ""


@pytest.mark.parametrize(
    ("payload", "hint"),
    [
        ('{"dispute_id":"d-malformed","trigger":1}', "d-malformed"),
        ('{"dispute_id":7}', DISPUTE_ID_UNKNOWN),
        ("this is not json at all {{{", DISPUTE_ID_UNKNOWN),
        ('["d-1"]', DISPUTE_ID_UNKNOWN),
        ('{"x":1}', DISPUTE_ID_UNKNOWN),
        ("", DISPUTE_ID_UNKNOWN),
    ],
)
def test_dispute_id_hint(payload: str, hint: str) -> None:
    """ESC-16: the parse-failed row's dispute id."""
    assert dispute_id_hint(payload) == hint


# --- ESC-22/23 body -----------------------------------------------------------------------


@pytest.mark.parametrize("payload", [ESC23_EXAMPLE, _payload(session_id=...)])
def test_body_matches_the_template_except_the_prose_line(payload: str) -> None:
    package = decode_handoff_package(payload)
    body = render_handoff_dm(package)
    lines = body.split("\n")
    assert len(lines) == 9
    assert not body.endswith("\n")
    assert body.startswith("escalation_handoff/v1\n")
    template = _template_lines(package)
    assert [line for i, line in enumerate(lines) if i != 5] == [
        line for i, line in enumerate(template) if i != 5
    ]


def test_body_exact_for_the_contract_example() -> None:
    lines = render_handoff_dm(decode_handoff_package(ESC23_EXAMPLE)).split("\n")
    assert lines[:5] == [
        "escalation_handoff/v1",
        "Dispute: d-1",
        "Session: s-1",
        "Trigger: round_limit",
        "",
    ]
    assert lines[6:] == ["", "Handoff payload (JSON):", ESC23_EXAMPLE]


def test_no_session_marker_line_is_exact() -> None:
    lines = render_handoff_dm(decode_handoff_package(_payload(session_id=None))).split("\n")
    assert lines[2] == "Session: <none \u2014 dispute-scoped handoff>"


def test_prose_line_carries_the_required_elements() -> None:
    """ESC-24: dispute id, trigger, the TakeDispute instruction and the assistant literal."""
    prose = render_handoff_dm(decode_handoff_package(ESC23_EXAMPLE)).split("\n")[5]
    assert "d-1" in prose
    assert "round_limit" in prose
    assert "TakeDispute" in prose
    assert "Serbero's mediation assistance system" in prose


def test_json_line_reserializes_the_decoded_package() -> None:
    """ESC-23: never the raw payload; non-ASCII raw, only the JSON escapes escaped."""
    raw = _payload(trigger="caf\u00e9/x", evidence_refs=['a"b', "c\\d", "tab\there"]).replace(
        ", ", ",    "
    )
    line = render_handoff_dm(decode_handoff_package(raw)).split("\n")[8]
    assert line != raw
    assert '"trigger":"caf\u00e9/x"' in line
    assert '"evidence_refs":["a\\"b","c\\\\d","tab\\there"]' in line


def test_rationale_text_never_reaches_the_body() -> None:
    body = render_handoff_dm(decode_handoff_package(_payload(rationale="the private reasoning")))
    assert "private reasoning" not in body
    assert '"rationale_refs":["r1"]' in body


def test_body_is_identical_on_every_render() -> None:
    package = decode_handoff_package(ESC23_EXAMPLE)
    assert render_handoff_dm(package) == render_handoff_dm(decode_handoff_package(ESC23_EXAMPLE))


# --- reading a body back (ESC-24) ---------------------------------------------------------


@pytest.mark.parametrize("payload", [ESC23_EXAMPLE, _payload(session_id=None)])
def test_round_trip(payload: str) -> None:
    package = decode_handoff_package(payload)
    body = render_handoff_dm(package)
    parsed = parse_handoff_dm(body)
    assert parsed.package == package
    assert (parsed.dispute_id, parsed.session_id, parsed.trigger) == (
        package.dispute_id,
        package.session_id,
        package.trigger,
    )
    assert parsed.prose == body.split("\n")[5]


def test_parser_tolerates_trailing_newline_and_extra_header_lines() -> None:
    lines = render_handoff_dm(decode_handoff_package(ESC23_EXAMPLE)).split("\n")
    lines.insert(4, "Priority: high")
    parsed = parse_handoff_dm("\n".join(lines) + "\n")
    assert parsed.dispute_id == "d-1"


def test_parser_ignores_unknown_json_keys() -> None:
    lines = render_handoff_dm(decode_handoff_package(ESC23_EXAMPLE)).split("\n")
    lines[8] = lines[8][:-1] + ',"future":[1,2]}'
    assert parse_handoff_dm("\n".join(lines)).package == decode_handoff_package(ESC23_EXAMPLE)


@pytest.mark.parametrize(
    ("index", "replacement"),
    [
        (0, "escalation_handoff/v2"),
        (1, "Dispute: d-2"),
        (2, "Session: s-2"),
        (2, f"Session: {NO_SESSION_MARKER}"),
        (3, "Trigger: fraud_indicator"),
        (7, "Handoff payload:"),
        (8, "{"),
    ],
)
def test_parser_refuses_tampered_bodies(index: int, replacement: str) -> None:
    lines = render_handoff_dm(decode_handoff_package(ESC23_EXAMPLE)).split("\n")
    lines[index] = replacement
    with pytest.raises(HandoffError):
        parse_handoff_dm("\n".join(lines))


@pytest.mark.parametrize("drop", [1, 2, 3, 8])
def test_parser_refuses_missing_lines(drop: int) -> None:
    lines = render_handoff_dm(decode_handoff_package(ESC23_EXAMPLE)).split("\n")
    del lines[drop]
    with pytest.raises(HandoffError):
        parse_handoff_dm("\n".join(lines))


# --- properties ---------------------------------------------------------------------------

_line_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40)
_packages = st.builds(
    HandoffPackage,
    dispute_id=_line_text,
    session_id=st.none() | _line_text.filter(lambda s: s != NO_SESSION_MARKER),
    trigger=_line_text,
    evidence_refs=st.lists(st.text(max_size=20), max_size=3).map(tuple),
    prompt_bundle_id=st.text(max_size=20),
    policy_hash=st.text(max_size=20),
    rationale_refs=st.lists(st.text(max_size=20), max_size=3).map(tuple),
    assembled_at=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)


@given(_packages)
def test_property_render_parse_round_trip(package: HandoffPackage) -> None:
    body = render_handoff_dm(package)
    lines = body.split("\n")
    assert len(lines) == 9
    template = _template_lines(package)
    assert [line for i, line in enumerate(lines) if i != 5] == [
        line for i, line in enumerate(template) if i != 5
    ]
    assert parse_handoff_dm(body).package == package
    assert decode_handoff_package(lines[8]) == package


@given(st.text())
def test_property_decode_raises_only_handoff_error(text: str) -> None:
    try:
        package = decode_handoff_package(text)
    except HandoffError:
        return
    assert isinstance(package, HandoffPackage)


# Empty containers are leaves, so every extension really nests (Hypothesis warns otherwise).
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.just([])
    | st.just({}),
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, min_size=1, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from([*REQUIRED_KEYS, "session_id", "x"]), _json))
def test_property_structured_payloads_raise_only_handoff_error(data: dict[str, object]) -> None:
    hint = dispute_id_hint(json.dumps(data))
    raw_id = data.get("dispute_id")
    assert hint == (raw_id if isinstance(raw_id, str) else DISPUTE_ID_UNKNOWN)
    try:
        package = decode_handoff_package(json.dumps(data))
    except HandoffError:
        return
    assert package.dispute_id == hint


@given(st.text(), st.text())
def test_property_parse_raises_only_handoff_error(header: str, tail: str) -> None:
    for text in (header, f"escalation_handoff/v1\n{header}\nHandoff payload (JSON):\n{tail}"):
        try:
            parsed = parse_handoff_dm(text)
        except HandoffError:
            continue
        assert parsed.package.dispute_id == parsed.dispute_id


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    """msgspec raises RecursionError past ~1000 levels; that must stay a HandoffError."""
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(HandoffError):
        decode_handoff_package(_payload().replace('["e1"]', deep))
    with pytest.raises(HandoffError):
        decode_handoff_package(deep)
    assert dispute_id_hint(deep) == DISPUTE_ID_UNKNOWN
    with pytest.raises(HandoffError):
        parse_handoff_dm(f"escalation_handoff/v1\nHandoff payload (JSON):\n{deep}")
