"""The reasoning vocabulary (MED-90) and the error taxonomy (MED-188)."""

from __future__ import annotations

import msgspec
import pytest

from serbero.reasoning.errors import (
    ERROR_CATEGORIES,
    MalformedResponse,
    ProviderConfigError,
    ProviderNotImplementedError,
    ReasoningError,
    ReasoningTimeout,
    ReasoningUnreachable,
    UnknownProviderError,
)
from serbero.reasoning.types import (
    FLAGS,
    LABELS,
    SUGGESTED_ACTIONS,
    Classification,
    ClassifyRequest,
    TranscriptEntry,
)


def test_vocabulary_is_exactly_the_spec() -> None:
    assert LABELS == (
        "coordination_failure_resolvable",
        "conflicting_claims",
        "suspected_fraud",
        "unclear",
        "not_suitable_for_mediation",
    )
    assert FLAGS == (
        "fraud_risk",
        "conflicting_claims",
        "low_info",
        "unresponsive_party",
        "authority_boundary_attempt",
    )
    assert SUGGESTED_ACTIONS == ("ask_clarification", "summarize", "escalate")


def test_error_categories_are_the_audit_strings() -> None:
    assert ERROR_CATEGORIES == (
        "unreachable",
        "timeout",
        "malformed_response",
        "authority_boundary_violation",
        "unknown",
    )


def test_classification_defaults_and_frozen() -> None:
    verdict = Classification(label="unclear", confidence=0.4, suggested_action="summarize")
    assert verdict.flags == frozenset()
    assert verdict.rationale == verdict.buyer_clarification == verdict.action_detail == ""
    with pytest.raises(AttributeError):
        verdict.confidence = 1.0  # type: ignore[misc]


def test_request_round_trips_through_msgspec() -> None:
    request = ClassifyRequest(
        session_id="s",
        dispute_id="d",
        initiator_role="buyer",
        round_count=1,
        transcript=(TranscriptEntry("buyer", 1_700_000_000, "paid"),),
    )
    encoded = msgspec.json.encode(request)
    assert msgspec.json.decode(encoded, type=ClassifyRequest) == request
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(encoded.replace(b'"buyer"', b'"admin"', 1), type=ClassifyRequest)


@pytest.mark.parametrize(
    ("error", "category", "retryable"),
    [
        (ReasoningTimeout("slow"), "timeout", True),
        (ReasoningUnreachable("refused"), "unreachable", True),
        (ReasoningUnreachable("http 408: x", status=408), "unreachable", True),
        (ReasoningUnreachable("http 429: x", status=429), "unreachable", True),
        (ReasoningUnreachable("http 503: x", status=503), "unreachable", True),
        (ReasoningUnreachable("http 401: x", status=401), "unreachable", False),
        (ReasoningUnreachable("http 404: x", status=404), "unreachable", False),
        (MalformedResponse("prose"), "malformed_response", False),
        (ReasoningError("unknown", "bug"), "unknown", False),
    ],
)
def test_error_category_and_retry_class(
    error: ReasoningError, category: str, retryable: bool
) -> None:
    assert error.category == category
    assert error.retryable is retryable
    assert str(error) == error.message


def test_unknown_provider_text_is_med_186() -> None:
    error = UnknownProviderError("OpenAI")
    assert isinstance(error, ValueError)
    assert str(error) == (
        "unknown reasoning provider 'OpenAI'; supported: openai, openai-compatible, anthropic "
        "(ppqai, openclaw are declared but not yet implemented)"
    )


@pytest.mark.parametrize("name", ["ppqai", "openclaw"])
def test_reserved_provider_is_one_actionable_line(name: str) -> None:
    error = ProviderNotImplementedError(name)
    assert isinstance(error, ProviderConfigError)
    text = str(error)
    assert "\n" not in text
    assert f"'{name}'" in text
    assert "not yet implemented" in text
    assert 'provider = "openai"' in text
