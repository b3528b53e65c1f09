"""Kind 38386 dispute events into Dispute facts (PROTO-36..39), hostile input refused (BEY-21)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serbero.protocol.dispute_event import (
    DISPUTE_EVENT_KIND,
    Dispute,
    DisputeError,
    DisputeStatus,
    InvalidAssignedSolverError,
    InvalidDisputeIdError,
    InvalidInitiatorError,
    MissingDisputeIdError,
    MissingStatusTagError,
    NotADisputeEventError,
    UnrecognisedStatusError,
    is_valid_dispute_id,
    parse_dispute_event,
    status_route,
)
from serbero.protocol.event import Event, sign_event, verify_event
from serbero.protocol.keys import Keys

ZERO_AUX = bytes(32)
NOW = 1_700_000_500

HOSTILE_IDS = {
    "empty": "",
    "129 chars": "a" * 129,
    "space": "abc def",
    "leading space": " abc",
    "tab": "abc\tdef",
    "newline": "abc\ndispute_id: forged",
    "carriage return": "abc\r",
    "nul": "abc\x00",
    "escape": "abc\x1b[2J",
    "del": "abc\x7f",
    "nbsp": "abc\u00a0def",
    "line separator": "abc\u2028def",
    "zero width space": "abc\u200bdef",
    "bidi override": "abc\u202edef",
    "next line": "abc\x85def",
}


def _dispute_event(mostro: Keys, tags: list[list[str]], *, kind: int = DISPUTE_EVENT_KIND) -> Event:
    return sign_event(mostro, created_at=NOW, kind=kind, tags=tags, content="", aux_rand=ZERO_AUX)


# --- kind 38386 -> Dispute ----------------------------------------------------------------


def test_vector_event_parses_into_a_dispute(derived: dict[str, Any]) -> None:
    vector = derived["event_id_dispute_38386"]
    event = msgspec.convert(vector["event"], Event)
    verify_event(event)
    dispute = parse_dispute_event(event)
    assert dispute == Dispute(
        dispute_id=next(tag[1] for tag in vector["tags"] if tag[0] == "d"),
        status=DisputeStatus.INITIATED,
        initiator="buyer",
        mostro_pubkey=vector["event"]["pubkey"],
        event_id=vector["event"]["id"],
        event_timestamp=vector["created_at"],
        assigned_solver=None,
    )
    assert dispute.mostro_pubkey == derived["keys"]["mostro"]["pubkey"]
    assert status_route(dispute.status) == "detected"


@pytest.mark.parametrize(
    ("status", "route"),
    [
        ("initiated", "detected"),
        ("in-progress", "updated"),
        ("seller-refunded", "resolved"),
        ("settled", "resolved"),
        ("released", "resolved"),
    ],
)
def test_every_status_routes(mostro: Keys, status: str, route: str) -> None:
    event = _dispute_event(mostro, [["d", "d-1"], ["s", status], ["initiator", "seller"]])
    dispute = parse_dispute_event(event)
    assert dispute.status == status
    assert status_route(dispute.status) == route


def test_status_strings_are_exactly_proto_37() -> None:
    assert {s.value for s in DisputeStatus} == {
        "initiated",
        "in-progress",
        "seller-refunded",
        "settled",
        "released",
    }


def test_wrong_kind_is_rejected(mostro: Keys) -> None:
    event = _dispute_event(mostro, [["d", "d-1"], ["s", "initiated"]], kind=38383)
    with pytest.raises(NotADisputeEventError) as info:
        parse_dispute_event(event)
    assert info.value.kind == 38383
    assert info.value.event_id == event.id


@pytest.mark.parametrize(
    "tags",
    [
        [["d", "d-1"], ["initiator", "buyer"]],
        [["d", "d-1"], ["S", "initiated"], ["initiator", "buyer"]],
        [["d", "d-1"], ["s"], ["initiator", "buyer"]],
    ],
    ids=["absent", "uppercase S", "valueless"],
)
def test_no_status_tag(mostro: Keys, tags: list[list[str]]) -> None:
    """PROTO-67: an uppercase `S` is not a status; a valueless tag counts as absent."""
    with pytest.raises(MissingStatusTagError):
        parse_dispute_event(_dispute_event(mostro, tags))


@pytest.mark.parametrize("status", ["Initiated", "IN-PROGRESS", "closed", "", "in_progress"])
def test_unknown_status_is_skipped(mostro: Keys, status: str) -> None:
    with pytest.raises(UnrecognisedStatusError) as info:
        parse_dispute_event(_dispute_event(mostro, [["d", "d-1"], ["s", status]]))
    assert info.value.status == status


def test_first_valued_tag_wins(mostro: Keys) -> None:
    event = _dispute_event(
        mostro,
        [["s"], ["s", "settled"], ["s", "initiated"], ["d", "first"], ["d", "second"]],
    )
    dispute = parse_dispute_event(event)
    assert (dispute.status, dispute.dispute_id) == ("settled", "first")


@pytest.mark.parametrize("tags", [[["s", "initiated"]], [["d"], ["s", "settled"]]])
def test_missing_dispute_id(mostro: Keys, tags: list[list[str]]) -> None:
    with pytest.raises(MissingDisputeIdError):
        parse_dispute_event(_dispute_event(mostro, tags))


@pytest.mark.parametrize("hostile", list(HOSTILE_IDS.values()), ids=list(HOSTILE_IDS))
@pytest.mark.parametrize("status", ["initiated", "in-progress", "settled"])
def test_hostile_dispute_ids_are_rejected(mostro: Keys, hostile: str, status: str) -> None:
    """BEY-21: 1-128 printable characters, no whitespace or control characters."""
    event = _dispute_event(mostro, [["d", hostile], ["s", status], ["initiator", "buyer"]])
    with pytest.raises(InvalidDisputeIdError) as info:
        parse_dispute_event(event)
    assert info.value.dispute_id == hostile
    assert not is_valid_dispute_id(hostile)


@pytest.mark.parametrize(
    "good", ["a" * 128, "x", "1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11", "caf\u00e9\U0001f600"]
)
def test_valid_dispute_ids(mostro: Keys, good: str) -> None:
    event = _dispute_event(mostro, [["d", good], ["s", "initiated"], ["initiator", "buyer"]])
    assert parse_dispute_event(event).dispute_id == good


@pytest.mark.parametrize("initiator", [None, "unknown", "Buyer", "", "admin"])
def test_initiated_needs_buyer_or_seller(mostro: Keys, initiator: str | None) -> None:
    tags = [["d", "d-1"], ["s", "initiated"]]
    if initiator is not None:
        tags.append(["initiator", initiator])
    with pytest.raises(InvalidInitiatorError):
        parse_dispute_event(_dispute_event(mostro, tags))


@pytest.mark.parametrize(
    ("initiator", "kept"),
    [("unknown", "unknown"), ("seller", "seller"), ("x\ny", None), (None, None)],
)
def test_initiator_on_other_statuses_is_informational(
    mostro: Keys, initiator: str | None, kept: str | None
) -> None:
    tags = [["d", "d-1"], ["s", "settled"]]
    if initiator is not None:
        tags.append(["initiator", initiator])
    assert parse_dispute_event(_dispute_event(mostro, tags)).initiator == kept


def test_in_progress_reads_the_first_p(mostro: Keys, derived: dict[str, Any]) -> None:
    solver = derived["keys"]["solver"]["pubkey"]
    tags = [["d", "d-1"], ["s", "in-progress"], ["p"], ["p", solver], ["p", "other"]]
    assert parse_dispute_event(_dispute_event(mostro, tags)).assigned_solver == solver
    bare = _dispute_event(mostro, [["d", "d-1"], ["s", "in-progress"]])
    assert parse_dispute_event(bare).assigned_solver is None


def test_p_is_ignored_outside_in_progress(mostro: Keys) -> None:
    tags = [["d", "d-1"], ["s", "initiated"], ["initiator", "buyer"], ["p", "x\ny"]]
    assert parse_dispute_event(_dispute_event(mostro, tags)).assigned_solver is None


@pytest.mark.parametrize("hostile", ["", "ab\ncd", "a b", "x" * 129])
def test_hostile_assigned_solver_is_rejected(mostro: Keys, hostile: str) -> None:
    tags = [["d", "d-1"], ["s", "in-progress"], ["p", hostile]]
    with pytest.raises(InvalidAssignedSolverError):
        parse_dispute_event(_dispute_event(mostro, tags))


def test_error_types_are_distinct_dispute_errors() -> None:
    types = [
        NotADisputeEventError,
        MissingStatusTagError,
        UnrecognisedStatusError,
        MissingDisputeIdError,
        InvalidDisputeIdError,
        InvalidInitiatorError,
        InvalidAssignedSolverError,
    ]
    assert len(set(types)) == len(types)
    for error in types:
        assert issubclass(error, DisputeError)
        assert issubclass(error, ValueError)
        assert not any(issubclass(error, other) for other in types if other is not error)


_tag_names = st.sampled_from(["d", "s", "S", "initiator", "p", "y", "z", "expiration"])
_tag_values = st.sampled_from(
    [
        "initiated",
        "in-progress",
        "settled",
        "released",
        "seller-refunded",
        "buyer",
        "seller",
        "unknown",
    ]
) | st.text(max_size=130)


@given(
    st.sampled_from([DISPUTE_EVENT_KIND, DISPUTE_EVENT_KIND, 1, 38383]),
    st.lists(st.tuples(_tag_names, st.lists(_tag_values, max_size=2)), max_size=8),
)
def test_property_dispute_parser_raises_only_dispute_error(kind: int, raw_tags: list[Any]) -> None:
    tags = [[name, *values] for name, values in raw_tags]
    event = Event(
        id="0" * 64, pubkey="1" * 64, created_at=1, kind=kind, tags=tags, content="", sig="2" * 128
    )
    try:
        dispute = parse_dispute_event(event)
    except DisputeError:
        return
    assert is_valid_dispute_id(dispute.dispute_id)
    if dispute.status is DisputeStatus.INITIATED:
        assert dispute.initiator in ("buyer", "seller")
