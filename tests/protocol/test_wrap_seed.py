"""Derived gift-wrap inputs (BEY-26): the same DM is the same event, different DMs share
nothing an outsider could link, and keys made ahead change nothing."""

from __future__ import annotations

import itertools

import msgspec

from serbero.protocol.event import TIMESTAMP_TWEAK_RANGE, verify_event
from serbero.protocol.keys import Keys
from serbero.protocol.nip59 import unwrap_gift
from serbero.protocol.wrap_seed import (
    DmIdentity,
    SeededWrapper,
    derive_one_time_keys,
    derive_wrap_inputs,
    seed_key,
)

NOW = 1_700_000_000
SALT = b"database-salt"
SERBERO = Keys.from_secret(bytes.fromhex("11" * 32))
BOB = Keys.from_secret(bytes.fromhex("22" * 32))
CAROL = Keys.from_secret(bytes.fromhex("33" * 32))


def outbox(number: int, created_at: int = NOW) -> DmIdentity:
    return DmIdentity("outbox", number, created_at)


def test_the_same_dm_is_the_same_event_for_a_wrapper_made_afresh() -> None:
    """A restart builds a new wrapper; the resend is byte-identical and opens as before."""
    first = SeededWrapper(SERBERO, SALT).private_dm(BOB.public_hex, "dispute d-1", outbox(7))
    again = SeededWrapper(SERBERO, SALT).private_dm(BOB.public_hex, "dispute d-1", outbox(7))
    assert msgspec.json.encode(again) == msgspec.json.encode(first)
    verify_event(first)
    opened = unwrap_gift(BOB, first)
    assert (opened.sender, opened.rumor.content) == (SERBERO.public_hex, "dispute d-1")
    assert opened.rumor.created_at == NOW
    assert NOW - TIMESTAMP_TWEAK_RANGE < first.created_at <= NOW


def test_keys_made_ahead_build_the_same_wrap_whoever_the_receiver_turns_out_to_be() -> None:
    plain = SeededWrapper(SERBERO, SALT)
    ahead = SeededWrapper(SERBERO, SALT)
    ahead.prepare(7, [BOB.public_hex, CAROL.public_hex])
    ahead.prepare(8, [CAROL.public_hex])
    assert ahead.prepared_ids() == [7, 8]
    for number, receiver in ((7, BOB), (8, BOB)):
        made = ahead.private_dm(receiver.public_hex, "text", outbox(number))
        assert made == plain.private_dm(receiver.public_hex, "text", outbox(number))
    assert ahead.prepared_ids() == [], "each prepared key is used once"


def test_forget_below_drops_keys_of_rows_never_sent() -> None:
    wrapper = SeededWrapper(SERBERO, SALT)
    for number in (3, 4, 5):
        wrapper.prepare(number, [BOB.public_hex])
    wrapper.forget_below(5)
    assert wrapper.prepared_ids() == [5]


def test_different_dms_share_no_random_input() -> None:
    """Different rows, receivers, texts, times, salts or secrets: every derived input
    differs, so no two wraps have a one-time key, nonce or timestamp pair in common."""
    seed = seed_key(SERBERO.secret, SALT)
    cases = [
        (seed, outbox(1), BOB, "text"),
        (seed, outbox(2), BOB, "text"),
        (seed, outbox(1), CAROL, "text"),
        (seed, outbox(1), BOB, "other text"),
        (seed, outbox(1, NOW + 1), BOB, "text"),
        (seed, DmIdentity("handoff", 1, NOW), BOB, "text"),
        (seed_key(SERBERO.secret, b"another database"), outbox(1), BOB, "text"),
        (seed_key(CAROL.secret, SALT), outbox(1), BOB, "text"),
    ]
    derived = [derive_wrap_inputs(s, dm, r.public_hex, text) for s, dm, r, text in cases]
    for field in ("seal_nonce", "wrap_nonce", "aux_rand"):
        assert len({getattr(inputs, field) for inputs in derived}) == len(cases), field
    stamps = {(inputs.seal_created_at, inputs.wrap_created_at) for inputs in derived}
    assert len(stamps) == len(cases)
    keys = {derive_one_time_keys(s, dm, r.public_hex).public_hex for s, dm, r, _ in cases}
    # An outbox row's key depends on the row alone: the receiver, text and time cases share it.
    assert len(keys) == len(cases) - 3


def test_a_handoffs_dms_to_different_solvers_have_their_own_keys() -> None:
    seed = seed_key(SERBERO.secret, SALT)
    handoff = DmIdentity("handoff", 4, NOW)
    assert (
        derive_one_time_keys(seed, handoff, BOB.public_hex).public_hex
        != derive_one_time_keys(seed, handoff, CAROL.public_hex).public_hex
    )


def test_derived_timestamps_look_drawn_over_the_whole_two_days() -> None:
    """NIP-59's back-dating stays as spread as a random draw: consecutive rows give
    unrelated offsets covering the window, not a pattern that links them."""
    seed = seed_key(SERBERO.secret, SALT)
    offsets = [
        NOW - inputs.wrap_created_at
        for inputs in (
            derive_wrap_inputs(seed, outbox(n), BOB.public_hex, "t") for n in range(2000)
        )
    ]
    assert all(0 <= offset < TIMESTAMP_TWEAK_RANGE for offset in offsets)
    tenths = {offset * 10 // TIMESTAMP_TWEAK_RANGE for offset in offsets}
    assert tenths == set(range(10)), "every tenth of the window is used"
    rises = sum(b > a for a, b in itertools.pairwise(offsets))
    assert 0.45 < rises / (len(offsets) - 1) < 0.55, "no trend from one row to the next"
    wraps = {
        SeededWrapper(SERBERO, SALT).private_dm(BOB.public_hex, "t", outbox(n)).pubkey
        for n in range(20)
    }
    assert len(wraps) == 20
