"""The authority-boundary guard over every forbidden phrase and harmless look-alikes
(MED-131, BEY-19, Q-11)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serbero.mediation.guard import (
    CLARIFICATION_ATTEMPT,
    EMPTY_SUMMARY,
    REFERENCE_PHRASES,
    SUMMARY_ATTEMPT,
    GuardViolation,
    check_clarification,
    check_summary,
)
from serbero.reasoning.types import Summary

HARMLESS_NEXT_STEP = "Ask the buyer for the bank's transfer reference."


def summary(text: str, next_step: str = HARMLESS_NEXT_STEP) -> Summary:
    return Summary(summary_text=text, suggested_next_step=next_step, rationale="ignored")


# The wider list (BEY-19): spellings and phrasings the reference's substring list misses.
WIDER = [
    "AdminSettleDispute",
    "AdminCancelDispute",
    "adminsettle",
    "ADMIN SETTLE",
    "admin settle the dispute",
    "admin.cancel",
    "Admin - Cancel",
    "a d m i n settle",
    "a-d-m-i-n-c-a-n-c-e-l",
    "Release the funds",
    "RELEASE THE FUNDS",
    "release_the_funds",
    "ReleaseTheFunds",
    "please release all the funds now",
    "release the sats to the buyer",
    "release the escrow",
    "releasing the funds is the next step",
    "the release of the funds",
    "I will refund",
    "I'll refund you",
    "I’ll refund you",
    "we will refund the buyer",
    "We're going to refund the seller",
    "Serbero will settle this",
    "I can release them",
    "I will personally cancel it",
    "refund you",
    "refund the buyer",
    "refund the money",
    "return the money to the buyer",
    "reimburse your funds",
    "send the sats",
    "send you the sats",
    "send the bitcoin back",
    "pay out the sats",
    "transfer the btc to the seller",
    "move the escrowed funds",
    "unlock the escrow",
    "cancel the order",
    "cancel your orders",
    "settle the dispute",
    "close this trade",
    "terminate the deal",
    "force closing",
    "Force-Cancel",
    "you will be refunded",
    "You'll be reimbursed today",
    "you are going to be paid",
    "you'll get your sats back",
    "you will receive the funds back",
    "We won't cancel the order",
    "Serbero's going to refund you",
    "'release' 'the' 'funds'",
    "Don`t worry, we`ll release it",
]

# Tricks that hide a phrase from a plain lower-case substring search.
DISGUISED = [
    "аdmin-settle",  # Cyrillic a
    "ADMIN_СANCEL",  # Cyrillic capital Es
    "admin\u200b-settle",  # zero-width space
    "adm\u200din\u2060settle",  # zero-width joiner, word joiner
    "ａｄｍｉｎ－ｓｅｔｔｌｅ",  # full width
    "𝐫𝐞𝐥𝐞𝐚𝐬𝐞 𝐭𝐡𝐞 𝐟𝐮𝐧𝐝𝐬",  # mathematical bold
    "re\u00adlease the funds",  # soft hyphen
    "rélease the fúnds",  # accents
    "r e l e a s e the funds",  # spelled out
    "release\nthe\tfunds",  # line breaks
    "release\u00a0the\u2003funds",  # odd spaces
    "**release** _the_ `funds`",  # markdown
    "“release the funds”",  # quotes
    "sеnd thе sаts",  # Cyrillic e and a
    "ΑDMIN SETTLE",  # Greek capital alpha
]

# Texts a mediator may well write: reports, nouns, fiat questions, other objects.
HARMLESS = [
    "the seller says they released nothing",
    "The buyer says the seller released the funds yesterday.",
    "Could you describe the refund policy of your bank?",
    "Did you receive a refund from your bank?",
    "Did you send the fiat payment on time?",
    "Please send a screenshot of the transfer.",
    "When did the bank transfer arrive?",
    "Was the order cancelled by mistake?",
    "Did you close the banking app before confirming?",
    "Is your settlement account the one in the order?",
    "How many sats were in the order?",
    "A human solver will review this and decide.",
    "I can only help you both clarify what happened.",
    "I cannot touch the trade's money or decide the outcome.",
    "Please move on to the next step of the checklist.",
    "The administrator of your bank may help.",
    "I will pass your answer to the solver.",
    "We will wait for the seller to answer.",
    "Which payment method did you use?",
    "Has the fiat arrived in your account?",
    "Hello, I am Serbero, an automated assistant helping with this Mostro dispute.",
    "It's the buyer's bank that hasn't confirmed the transfer yet, isn't it?",
    "Don't worry: we'll look at both answers and a solver will decide.",
]


@pytest.mark.parametrize("phrase", REFERENCE_PHRASES)
def test_every_reference_phrase_is_a_hit_in_a_summary(phrase: str) -> None:
    for text in (phrase, phrase.upper(), f"The solver should {phrase} after checking."):
        violation = check_summary(summary(text))
        assert violation is not None and violation.reason == SUMMARY_ATTEMPT, text
        violation = check_summary(summary("A plain summary.", f"Then {phrase}."))
        assert violation is not None and violation.reason == SUMMARY_ATTEMPT, text


@pytest.mark.parametrize("phrase", REFERENCE_PHRASES)
def test_every_reference_phrase_is_a_hit_in_a_clarification(phrase: str) -> None:
    violation = check_clarification(f"Could you confirm so we can {phrase}?")
    assert violation is not None and violation.reason == CLARIFICATION_ATTEMPT


@pytest.mark.parametrize("text", WIDER + DISGUISED)
def test_wider_and_disguised_phrases_are_hits(text: str) -> None:
    assert check_clarification(text) is not None
    assert check_clarification(f"Thanks for waiting. {text}. Anything else?") is not None
    assert check_summary(summary(f"Both agree: {text}")) is not None


@pytest.mark.parametrize("text", HARMLESS)
def test_harmless_look_alikes_pass(text: str) -> None:
    assert check_clarification(text) is None
    assert check_summary(summary(text)) is None


def test_negation_does_not_excuse_a_phrase() -> None:
    """The prompts forbid the words outright; a false alarm only reaches a human."""
    assert check_clarification("I cannot release the funds.") is not None
    assert check_clarification("Serbero will not cancel the order.") is not None


def test_the_violation_names_our_phrase_not_the_model_text() -> None:
    violation = check_clarification("Seller, kindly ＲＥＬＥＡＳＥ  the   FUNDS, thanks")
    assert violation == GuardViolation(reason=CLARIFICATION_ATTEMPT, matched="release the funds")


@pytest.mark.parametrize(
    ("text", "next_step"),
    [("", HARMLESS_NEXT_STEP), ("  \n", HARMLESS_NEXT_STEP), ("Fine.", ""), ("Fine.", "\t ")],
)
def test_a_blank_summary_or_next_step_is_a_violation(text: str, next_step: str) -> None:
    assert check_summary(summary(text, next_step)) == GuardViolation(reason=EMPTY_SUMMARY)


def test_a_clean_summary_passes() -> None:
    text = "The buyer paid by bank transfer on Monday; the seller has not seen it yet."
    assert check_summary(summary(text)) is None


@given(st.text(max_size=400))
def test_any_text_gives_none_or_a_violation(text: str) -> None:
    result = check_clarification(text)
    assert result is None or result.reason == CLARIFICATION_ATTEMPT


@given(st.text(max_size=60), st.sampled_from(REFERENCE_PHRASES), st.text(max_size=60))
def test_a_reference_phrase_between_any_words_is_a_hit(
    before: str, phrase: str, after: str
) -> None:
    assert check_clarification(f"{before} {phrase} {after}") is not None
