"""What goes into a reasoning call and what comes out of it, as frozen structs.

The vocabulary is closed (MED-90): a label, flag or action outside these literals is a
malformed answer, never a new behaviour. Nothing here carries authority: a `Classification`
is advice the policy layer turns into an action, and a `Summary` passes the guard first.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import msgspec

__all__ = [
    "FLAGS",
    "LABELS",
    "ROLES",
    "SPEAKERS",
    "SUGGESTED_ACTIONS",
    "Classification",
    "ClassifyRequest",
    "Flag",
    "Label",
    "Role",
    "Speaker",
    "SuggestedAction",
    "SummarizeRequest",
    "Summary",
    "TranscriptEntry",
]

Label = Literal[
    "coordination_failure_resolvable",
    "conflicting_claims",
    "suspected_fraud",
    "unclear",
    "not_suitable_for_mediation",
]
Flag = Literal[
    "fraud_risk",
    "conflicting_claims",
    "low_info",
    "unresponsive_party",
    "authority_boundary_attempt",
]
SuggestedAction = Literal["ask_clarification", "summarize", "escalate"]
Role = Literal["buyer", "seller"]
Speaker = Literal["buyer", "seller", "serbero"]

LABELS: Final[tuple[Label, ...]] = get_args(Label)
FLAGS: Final[tuple[Flag, ...]] = get_args(Flag)
SUGGESTED_ACTIONS: Final[tuple[SuggestedAction, ...]] = get_args(SuggestedAction)
ROLES: Final[tuple[Role, ...]] = get_args(Role)
SPEAKERS: Final[tuple[Speaker, ...]] = get_args(Speaker)


class TranscriptEntry(msgspec.Struct, frozen=True):
    """One message of a mediation chat, oldest first in a transcript (MED-96)."""

    party: Speaker
    inner_created_at: int
    content: str


class ClassifyRequest(msgspec.Struct, frozen=True):
    """The context of one classification: who opened the dispute and what was said (MED-180)."""

    session_id: str
    dispute_id: str
    initiator_role: Role
    round_count: int
    transcript: tuple[TranscriptEntry, ...] = ()


class Classification(msgspec.Struct, frozen=True):
    """A model's reading of a dispute, validated but not yet acted on (MED-182).

    `confidence` is already clamped to [0, 1]; for `ask_clarification` both clarifications
    are non-blank. `action_detail` is the model's free-text reason for `escalate`, kept only
    for the log's length/hash, never acted on.
    """

    label: Label
    confidence: float
    suggested_action: SuggestedAction
    rationale: str = ""
    flags: frozenset[Flag] = frozenset()
    buyer_clarification: str = ""
    seller_clarification: str = ""
    action_detail: str = ""


class SummarizeRequest(msgspec.Struct, frozen=True):
    """The context of one summary: the classification it follows and the chat (MED-180)."""

    session_id: str
    dispute_id: str
    label: Label
    confidence: float
    transcript: tuple[TranscriptEntry, ...] = ()


class Summary(msgspec.Struct, frozen=True):
    """A summary for the solver, split out of the model's text (MED-183); unguarded yet."""

    summary_text: str
    suggested_next_step: str
    rationale: str
