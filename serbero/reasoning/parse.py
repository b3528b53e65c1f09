"""Turn a model's text into a `Classification` or a `Summary`, or a typed error.

The model's text is hostile input: it may be prose, a fenced block, a deeply nested or huge
document, or an instruction to settle the trade. Parsing accepts exactly the contract of
MED-182/183 and raises `MalformedResponse` for anything else, so no answer can crash a caller
or smuggle in a vocabulary the policy does not know. Error messages never quote the model's
text (it may carry rationale or injected content, MED-172); `fingerprint` gives the log what
it may show instead.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, cast

import msgspec

from serbero.reasoning.errors import MalformedResponse
from serbero.reasoning.types import (
    FLAGS,
    LABELS,
    SUGGESTED_ACTIONS,
    Classification,
    Flag,
    Label,
    SuggestedAction,
    Summary,
)

__all__ = [
    "MAX_ANSWER_CHARS",
    "NEXT_STEP_MARKER",
    "RATIONALE_MARKER",
    "fingerprint",
    "parse_classification",
    "parse_summary",
]

# A real answer is a few kilobytes (the adapters ask for at most 4,096 tokens); anything far
# larger is refused before it is decoded or scanned.
MAX_ANSWER_CHARS: Final = 1_000_000
NEXT_STEP_MARKER: Final = "SUGGESTED_NEXT_STEP:"
RATIONALE_MARKER: Final = "RATIONALE:"

_LABELS: Final = frozenset(LABELS)
_FLAGS: Final = frozenset(FLAGS)
_ACTIONS: Final = frozenset(SUGGESTED_ACTIONS)
_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def fingerprint(text: str) -> tuple[int, str]:
    """Length and first 16 hex digits of the SHA-256: all a log line may say of model output.

    (MED-172)
    """
    data = text.encode("utf-8", "surrogatepass")
    return len(text), hashlib.sha256(data).hexdigest()[:16]


def parse_classification(text: str) -> Classification:
    """Validate a classification answer: one JSON object, closed vocabulary (MED-182).

    No fence stripping, no prose around the object. `confidence` is clamped to [0, 1];
    `rationale`, `flags` and the clarifications may be absent (or null); for
    `ask_clarification` both clarifications must be non-blank. Unknown keys are ignored.
    """
    document = _decode_object(text)
    label = document.get("classification")
    if not _is_one_of(label, _LABELS):
        raise MalformedResponse("classification is missing or not a known label")
    confidence = document.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise MalformedResponse("confidence is missing or not a number")
    action = document.get("suggested_action", "")
    if not _is_one_of(action, _ACTIONS):
        raise MalformedResponse("suggested_action is missing or not a known action")
    buyer = _optional_text(document, "buyer_clarification").strip()
    seller = _optional_text(document, "seller_clarification").strip()
    if action == "ask_clarification" and not (buyer and seller):
        raise MalformedResponse("ask_clarification needs a non-blank text for each party")
    return Classification(
        label=cast(Label, label),
        confidence=min(max(float(confidence), 0.0), 1.0),
        suggested_action=cast(SuggestedAction, action),
        rationale=_optional_text(document, "rationale"),
        flags=_flags(document),
        buyer_clarification=buyer,
        seller_clarification=seller,
        action_detail=_optional_text(document, "suggested_action_detail"),
    )


def parse_summary(text: str) -> Summary:
    """Split a summary answer at its two marker lines (MED-183).

    Summary text comes before the first marker present, the next step after
    `SUGGESTED_NEXT_STEP:` (up to `RATIONALE:`), the rationale after `RATIONALE:`; all
    trimmed, a missing part is empty. A rationale before the next step, or an empty summary,
    is malformed.
    """
    _check_size(text)
    next_at = text.find(NEXT_STEP_MARKER)
    why_at = text.find(RATIONALE_MARKER)
    if next_at >= 0 and 0 <= why_at < next_at:
        raise MalformedResponse("RATIONALE: comes before SUGGESTED_NEXT_STEP: in the summary")
    first_marker = min((at for at in (next_at, why_at) if at >= 0), default=len(text))
    summary = text[:first_marker].strip()
    if not summary:
        raise MalformedResponse("empty summary from reasoning provider")
    next_step = ""
    if next_at >= 0:
        end = why_at if why_at >= 0 else len(text)
        next_step = text[next_at + len(NEXT_STEP_MARKER) : end].strip()
    rationale = text[why_at + len(RATIONALE_MARKER) :].strip() if why_at >= 0 else ""
    return Summary(summary_text=summary, suggested_next_step=next_step, rationale=rationale)


def _check_size(text: str) -> None:
    if len(text) > MAX_ANSWER_CHARS:
        raise MalformedResponse(f"answer of {len(text)} characters exceeds {MAX_ANSWER_CHARS}")


def _decode_object(text: str) -> dict[str, Any]:
    _check_size(text)
    try:
        document = msgspec.json.decode(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise MalformedResponse("answer is not valid Unicode") from None
    except _DECODE_ERRORS:
        raise MalformedResponse("answer is not a single JSON document") from None
    if not isinstance(document, dict):
        raise MalformedResponse("answer is JSON but not an object")
    return document


def _optional_text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedResponse(f"{key} is not a string")
    return value


def _flags(document: dict[str, Any]) -> frozenset[Flag]:
    value = document.get("flags")
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(_is_one_of(flag, _FLAGS) for flag in value):
        raise MalformedResponse("flags is not a list of known flags")
    return frozenset(cast(list[Flag], value))


def _is_one_of(value: object, allowed: frozenset[str]) -> bool:
    # The type check first: a list or an object is unhashable and cannot be looked up.
    return isinstance(value, str) and value in allowed
