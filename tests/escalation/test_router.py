"""ESC-19/20 routing as a pure function (ESC-AS-22)."""

from __future__ import annotations

from serbero.actors.gate import Route, RouteKind, route_handoff
from serbero.config import SolverConfig
from serbero.protocol.keys import Keys, encode_npub


def _key(n: int) -> str:
    return Keys(bytes([n]) * 32).public_hex


W1 = SolverConfig.from_text(_key(1), "write")
W2 = SolverConfig.from_text(_key(2), "write")
R1 = SolverConfig.from_text(_key(3), "read")
R2 = SolverConfig.from_text(_key(4), "read")
BAD = SolverConfig.from_text("not-a-key", "write")


def test_write_assignee_is_targeted() -> None:
    assert route_handoff([R1, W1, W2], W2.pubkey, False) == Route(RouteKind.TARGETED, (W2,))


def test_unknown_assignee_falls_back_to_the_write_set() -> None:
    route = route_handoff([W1, R1, W2], _key(6), False)
    assert route == Route(RouteKind.WRITE_BROADCAST, (W1, W2))
    assert not route.via_fallback


def test_read_assignee_is_ignored_for_the_write_set() -> None:
    assert route_handoff([R1, W1], R1.pubkey, True) == Route(RouteKind.WRITE_BROADCAST, (W1,))


def test_no_assignee_broadcasts_to_writers_without_readers() -> None:
    assert route_handoff([R1, W1, R2, W2], None, True) == Route(RouteKind.WRITE_BROADCAST, (W1, W2))


def test_read_only_with_fallback_reaches_everyone_in_config_order() -> None:
    route = route_handoff([R2, R1], R1.pubkey, True)
    assert route == Route(RouteKind.FALLBACK_BROADCAST, (R2, R1))
    assert route.via_fallback


def test_read_only_without_fallback_is_unroutable() -> None:
    assert route_handoff([R1, R2], None, False) == Route(RouteKind.UNROUTABLE)


def test_no_solvers_is_unroutable_whatever_the_fallback_flag() -> None:
    assert route_handoff([], None, True) == Route(RouteKind.UNROUTABLE)
    assert route_handoff([], "a" * 64, False) == Route(RouteKind.UNROUTABLE)


def test_malformed_write_key_still_counts_as_a_write_solver() -> None:
    # ESC-AS-15: it is routed to, and its send fails without a network attempt.
    assert route_handoff([BAD, R1], None, False) == Route(RouteKind.WRITE_BROADCAST, (BAD,))


def test_assignee_matches_a_solver_configured_as_npub() -> None:
    # BEY-12: configured keys count in their normalised lowercase-hex form.
    npub_solver = SolverConfig.from_text(encode_npub(_key(5)), "write")
    assert npub_solver.pubkey.startswith("npub1")
    route = route_handoff([W1, npub_solver], _key(5), False)
    assert route == Route(RouteKind.TARGETED, (npub_solver,))


def test_assignee_match_is_case_sensitive_on_the_stored_value() -> None:
    # The stored assignee is compared as is: uppercase hex matches no configured key.
    assert route_handoff([W1, W2], W2.pubkey.upper(), False).kind is RouteKind.WRITE_BROADCAST
