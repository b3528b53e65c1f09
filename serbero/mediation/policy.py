"""The policy layer: a model's classification becomes exactly one action (MED-90..92).

The model only advises. These pure rules decide, in a fixed order where the first match
wins, whether Serbero asks the parties another question, hands a summary to the solver, or
steps back with a named escalation trigger. Every way a verdict can be unsafe leads to a
human, never to a party message.

Rules (MED-91/92, with BEY-19 and Q-10 where we go beyond the reference):

1. fraud: flag `fraud_risk` or label `suspected_fraud` -> `fraud_indicator`;
2. contradiction: flag or label `conflicting_claims` -> `conflicting_claims`;
3. flag `authority_boundary_attempt` -> `authority_boundary_attempt`;
4. label `not_suitable_for_mediation` -> `reasoning_unavailable` (the model judged the
   dispute unfit for mediation, which is what its own `escalate` means in rule 6);
5. confidence below `LOW_CONFIDENCE`, unless bypassed -> `low_confidence`. A question is
   the one action an uncertain reading may still take, and only early on: at the open
   verdict or within the first `BYPASS_WINDOW` follow-ups;
6. action `escalate` -> `reasoning_unavailable` (the model's reason is discarded);
7. action `ask_clarification`: a blank question -> `reasoning_unavailable`; a question the
   guard rejects -> `authority_boundary_attempt` (BEY-19); else ask both parties;
8. action `summarize`: only with `coordination_failure_resolvable`, else
   `invalid_model_output`.

The reference lets the labels of rules 1, 2 and 4 through when the model asks a question
(Q-10); here a non-cooperative label always escalates. `low_info` and `unresponsive_party`
change nothing: the unresponsive case is the timeout sweep's (`party_unresponsive`), and the
round limit (`round_limit_reached`) is checked on ingest, before any classification.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import msgspec

from serbero.mediation.guard import check_clarification
from serbero.reasoning.types import Classification, Label

__all__ = [
    "BYPASS_WINDOW",
    "ESCALATION_TRIGGERS",
    "LOW_CONFIDENCE",
    "Action",
    "AskClarification",
    "Escalate",
    "EscalationTrigger",
    "Initial",
    "MidSession",
    "Round",
    "Summarize",
    "decide",
    "round_limit_reached",
]

LOW_CONFIDENCE: Final = 0.5
BYPASS_WINDOW: Final = 3
SUMMARIZABLE_LABEL: Final = "coordination_failure_resolvable"

# Exact strings (MED-92): what every escalation row and solver DM names as its trigger.
EscalationTrigger = Literal[
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
]
ESCALATION_TRIGGERS: Final[tuple[EscalationTrigger, ...]] = get_args(EscalationTrigger)


class Initial(msgspec.Struct, frozen=True, tag="initial"):
    """The verdict before the take, on an empty transcript (MED-43)."""


class MidSession(msgspec.Struct, frozen=True, tag="mid_session"):
    """A follow-up evaluation; `n` is its 1-based ordinal (MED-93 step 6)."""

    n: int


Round = Initial | MidSession


class AskClarification(msgspec.Struct, frozen=True, tag="ask_clarification"):
    """Send each party its own question (texts already trimmed and guarded)."""

    buyer_text: str
    seller_text: str


class Summarize(msgspec.Struct, frozen=True, tag="summarize"):
    """Hand the dispute to the solver with a summary (MED-110..113)."""

    label: Label
    confidence: float


class Escalate(msgspec.Struct, frozen=True, tag="escalate"):
    """Step back: a human decides. `guard_match` is the guard's phrase when rule 7 fired
    (our vocabulary, for the log), empty otherwise."""

    trigger: EscalationTrigger
    guard_match: str = ""


Action = AskClarification | Summarize | Escalate


def _bypassed(round: Round, classification: Classification) -> bool:
    """MED-91: an early question may go ahead on a low-confidence reading."""
    early = isinstance(round, Initial) or round.n <= BYPASS_WINDOW
    return early and classification.suggested_action == "ask_clarification"


def _ask(classification: Classification) -> Action:
    buyer = classification.buyer_clarification.strip()
    seller = classification.seller_clarification.strip()
    if not buyer or not seller:
        return Escalate(trigger="reasoning_unavailable")
    for text in (buyer, seller):
        violation = check_clarification(text)
        if violation is not None:
            return Escalate(trigger="authority_boundary_attempt", guard_match=violation.matched)
    return AskClarification(buyer_text=buyer, seller_text=seller)


def decide(classification: Classification, round: Round) -> Action:
    """The one action for this classification at this round (rules in the module doc)."""
    flags, label = classification.flags, classification.label
    if "fraud_risk" in flags or label == "suspected_fraud":
        return Escalate(trigger="fraud_indicator")
    if "conflicting_claims" in flags or label == "conflicting_claims":
        return Escalate(trigger="conflicting_claims")
    if "authority_boundary_attempt" in flags:
        return Escalate(trigger="authority_boundary_attempt")
    if label == "not_suitable_for_mediation":
        return Escalate(trigger="reasoning_unavailable")
    if classification.confidence < LOW_CONFIDENCE and not _bypassed(round, classification):
        return Escalate(trigger="low_confidence")
    if classification.suggested_action == "escalate":
        return Escalate(trigger="reasoning_unavailable")
    if classification.suggested_action == "ask_clarification":
        return _ask(classification)
    if label == SUMMARIZABLE_LABEL:
        return Summarize(label=label, confidence=classification.confidence)
    return Escalate(trigger="invalid_model_output")


def round_limit_reached(round_count: int, max_rounds: int) -> bool:
    """MED-103: after a fresh reply, `round_count >= max_rounds` ends mediation with
    `round_limit` (so `max_rounds = 0` fires on the first fresh message)."""
    return round_count >= max_rounds
