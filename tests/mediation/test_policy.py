"""The policy table, case by case (MED-91/92, BEY-19, Q-10, MAS-5, MAS-13, MAS-14)."""

from __future__ import annotations

import pytest

from serbero.mediation.policy import (
    BYPASS_WINDOW,
    ESCALATION_TRIGGERS,
    AskClarification,
    Escalate,
    Initial,
    MidSession,
    Round,
    Summarize,
    decide,
    round_limit_reached,
)
from serbero.reasoning.types import Classification, Flag, Label, SuggestedAction

ASK: SuggestedAction = "ask_clarification"
SUMMARIZE: SuggestedAction = "summarize"
ESCALATE: SuggestedAction = "escalate"
RESOLVABLE: Label = "coordination_failure_resolvable"


def classification(
    label: Label = RESOLVABLE,
    confidence: float = 0.9,
    action: SuggestedAction = ASK,
    flags: tuple[Flag, ...] = (),
    buyer: str = "When did you send the fiat?",
    seller: str = "Has the fiat arrived in your account?",
) -> Classification:
    return Classification(
        label=label,
        confidence=confidence,
        suggested_action=action,
        rationale="not used by the policy",
        flags=frozenset(flags),
        buyer_clarification=buyer,
        seller_clarification=seller,
    )


def test_triggers_are_the_spec_strings_in_table_order() -> None:
    assert ESCALATION_TRIGGERS == (
        "conflicting_claims",
        "fraud_indicator",
        "low_confidence",
        "party_unresponsive",
        "round_limit",
        "reasoning_unavailable",
        "authorization_lost",
        "authority_boundary_attempt",
        "mediation_timeout",
        "policy_bundle_missing",
        "invalid_model_output",
        "notification_failed",
    )


CASES: list[tuple[str, Classification, Round, object]] = [
    # Rule 1: fraud, by flag (MAS-5a) or by label (BEY-19), over everything else.
    (
        "fraud flag at the open",
        classification("suspected_fraud", 0.95, ASK, ("fraud_risk",)),
        Initial(),
        Escalate(trigger="fraud_indicator"),
    ),
    (
        "fraud flag on a resolvable label",
        classification(flags=("fraud_risk",)),
        MidSession(1),
        Escalate(trigger="fraud_indicator"),
    ),
    (
        "fraud label alone with ask (Q-10)",
        classification("suspected_fraud", 0.9, ASK),
        Initial(),
        Escalate(trigger="fraud_indicator"),
    ),
    (
        "fraud beats contradiction",
        classification(flags=("conflicting_claims", "fraud_risk")),
        Initial(),
        Escalate(trigger="fraud_indicator"),
    ),
    (
        "fraud label beats a contradiction flag",
        classification("suspected_fraud", flags=("conflicting_claims",)),
        Initial(),
        Escalate(trigger="fraud_indicator"),
    ),
    # Rule 2: contradiction.
    (
        "contradiction flag",
        classification(flags=("conflicting_claims",)),
        MidSession(4),
        Escalate(trigger="conflicting_claims"),
    ),
    (
        "contradiction label alone with ask (Q-10)",
        classification("conflicting_claims", 0.9, ASK),
        Initial(),
        Escalate(trigger="conflicting_claims"),
    ),
    (
        "contradiction beats the authority flag",
        classification(flags=("authority_boundary_attempt", "conflicting_claims")),
        Initial(),
        Escalate(trigger="conflicting_claims"),
    ),
    # Rule 3: the model saw an attempt on Serbero's authority (MAS-13).
    (
        "authority flag mid-session",
        classification(flags=("authority_boundary_attempt",)),
        MidSession(2),
        Escalate(trigger="authority_boundary_attempt"),
    ),
    (
        "authority flag beats low confidence",
        classification(confidence=0.1, action=SUMMARIZE, flags=("authority_boundary_attempt",)),
        MidSession(5),
        Escalate(trigger="authority_boundary_attempt"),
    ),
    # Rule 4: not suitable (MAS-5b keeps its trigger; BEY-19 adds the ask case).
    (
        "not suitable with escalate",
        classification("not_suitable_for_mediation", 0.9, ESCALATE),
        Initial(),
        Escalate(trigger="reasoning_unavailable"),
    ),
    (
        "not suitable with ask (Q-10)",
        classification("not_suitable_for_mediation", 0.9, ASK),
        MidSession(1),
        Escalate(trigger="reasoning_unavailable"),
    ),
    (
        "not suitable at low confidence",
        classification("not_suitable_for_mediation", 0.2, ASK),
        MidSession(9),
        Escalate(trigger="reasoning_unavailable"),
    ),
    # Rule 5: low confidence, and its bypass for early questions (MED-91).
    (
        "low confidence ask at the open is bypassed",
        classification(confidence=0.2),
        Initial(),
        AskClarification("When did you send the fiat?", "Has the fiat arrived in your account?"),
    ),
    (
        "low confidence ask at follow-up 3 is bypassed",
        classification("unclear", 0.49, ASK),
        MidSession(BYPASS_WINDOW),
        AskClarification("When did you send the fiat?", "Has the fiat arrived in your account?"),
    ),
    (
        "low confidence ask at follow-up 4 escalates (MAS-14)",
        classification(confidence=0.2),
        MidSession(BYPASS_WINDOW + 1),
        Escalate(trigger="low_confidence"),
    ),
    (
        "low confidence summary at the open",
        classification(confidence=0.3, action=SUMMARIZE),
        Initial(),
        Escalate(trigger="low_confidence"),
    ),
    (
        "low confidence escalate at follow-up 1",
        classification("unclear", 0.1, ESCALATE),
        MidSession(1),
        Escalate(trigger="low_confidence"),
    ),
    (
        "confidence exactly 0.5 is not low",
        classification(confidence=0.5, action=SUMMARIZE),
        MidSession(7),
        Summarize(label=RESOLVABLE, confidence=0.5),
    ),
    (
        "confidence zero, ask, at the open",
        classification("unclear", 0.0, ASK),
        Initial(),
        AskClarification("When did you send the fiat?", "Has the fiat arrived in your account?"),
    ),
    # Rule 6: the model asks to escalate; its reason is discarded.
    (
        "escalate action",
        classification(RESOLVABLE, 0.9, ESCALATE),
        MidSession(2),
        Escalate(trigger="reasoning_unavailable"),
    ),
    (
        "unclear escalate",
        classification("unclear", 0.8, ESCALATE),
        Initial(),
        Escalate(trigger="reasoning_unavailable"),
    ),
    # Rule 7: questions.
    (
        "ask, texts trimmed",
        classification(buyer="  Which bank did you use?\n", seller="\tDid it arrive?  "),
        Initial(),
        AskClarification("Which bank did you use?", "Did it arrive?"),
    ),
    (
        "ask with a blank buyer text",
        classification(buyer="   "),
        Initial(),
        Escalate(trigger="reasoning_unavailable"),
    ),
    (
        "ask with an empty seller text",
        classification(seller=""),
        MidSession(1),
        Escalate(trigger="reasoning_unavailable"),
    ),
    (
        "ask on an unclear label",
        classification("unclear", 0.7, ASK),
        MidSession(2),
        AskClarification("When did you send the fiat?", "Has the fiat arrived in your account?"),
    ),
    (
        "a guarded buyer question (BEY-19)",
        classification(buyer="Please confirm and I will release the funds to you."),
        Initial(),
        Escalate(trigger="authority_boundary_attempt", guard_match="i will release"),
    ),
    (
        "a guarded seller question (BEY-19)",
        classification(seller="Can you run AdminSettleDispute for this order?"),
        MidSession(1),
        Escalate(trigger="authority_boundary_attempt", guard_match="admin settle"),
    ),
    # Rule 8: summaries.
    (
        "summary of a resolvable dispute",
        classification(RESOLVABLE, 0.8, SUMMARIZE),
        Initial(),
        Summarize(label=RESOLVABLE, confidence=0.8),
    ),
    (
        "summary of an unclear dispute",
        classification("unclear", 0.8, SUMMARIZE),
        MidSession(1),
        Escalate(trigger="invalid_model_output"),
    ),
    # Flags that change nothing.
    (
        "low info and unresponsive party are advisory",
        classification(flags=("low_info", "unresponsive_party")),
        MidSession(1),
        AskClarification("When did you send the fiat?", "Has the fiat arrived in your account?"),
    ),
    (
        "advisory flags on a summary",
        classification(RESOLVABLE, 0.6, SUMMARIZE, ("low_info",)),
        MidSession(3),
        Summarize(label=RESOLVABLE, confidence=0.6),
    ),
]


@pytest.mark.parametrize(
    ("verdict", "round_", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(verdict: Classification, round_: Round, expected: object) -> None:
    assert decide(verdict, round_) == expected


def test_every_label_action_and_round_gives_exactly_one_action() -> None:
    labels: tuple[Label, ...] = (
        RESOLVABLE,
        "conflicting_claims",
        "suspected_fraud",
        "unclear",
        "not_suitable_for_mediation",
    )
    for label in labels:
        for action in (ASK, SUMMARIZE, ESCALATE):
            for confidence in (0.0, 0.49, 0.5, 1.0):
                for round_ in (Initial(), MidSession(1), MidSession(3), MidSession(4)):
                    result = decide(classification(label, confidence, action), round_)
                    assert isinstance(result, AskClarification | Summarize | Escalate)
                    if label != RESOLVABLE and label != "unclear":
                        assert isinstance(result, Escalate)
                    if isinstance(result, Summarize):
                        assert label == RESOLVABLE and action == SUMMARIZE


@pytest.mark.parametrize(
    ("round_count", "max_rounds", "reached"),
    [(3, 3, True), (2, 3, False), (0, 0, True), (1, 2, False), (2, 2, True), (5, 2, True)],
)
def test_round_limit(round_count: int, max_rounds: int, reached: bool) -> None:
    assert round_limit_reached(round_count, max_rounds) is reached
