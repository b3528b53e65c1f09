"""Shared pieces of the reasoning tests: a bundle with recognisable texts, configs, adapters."""

from __future__ import annotations

import httpx

from serbero.config import MediationConfig, ReasoningConfig, Secret
from serbero.mediation.bringup import MediationContext
from serbero.reasoning.anthropic import AnthropicAdapter
from serbero.reasoning.bundle import BUNDLE_ID, PromptBundle, policy_hash
from serbero.reasoning.openai import OpenAIAdapter
from serbero.reasoning.provider import build_provider
from serbero.reasoning.transport import Transport
from serbero.reasoning.types import ClassifyRequest, SummarizeRequest, TranscriptEntry

API_KEY = "sk-test-4f9c2a7e1b88d0c3-never-shown"
TEXTS = {
    "system": "SYSTEM: you are Serbero's assistant and never move funds.",
    "classification": "CLASSIFICATION POLICY: labels and flags.",
    "escalation": "ESCALATION POLICY: when to hand over.",
    "mediation_style": "STYLE: neutral and short.",
    "message_templates": "TEMPLATES: opening and follow-up.",
}
BUNDLE = PromptBundle(
    bundle_id=BUNDLE_ID,
    policy_hash=policy_hash(**{name: text.encode() for name, text in TEXTS.items()}),
    **TEXTS,
)
TRANSCRIPT = (
    TranscriptEntry("serbero", 1_700_000_000, "Hello, I am Serbero's assistant."),
    TranscriptEntry("buyer", 1_700_000_060, "I paid at 10:00."),
    TranscriptEntry("seller", 1_700_000_120, "Nothing arrived yet."),
)
CLASSIFY = ClassifyRequest(
    session_id="sess-1",
    dispute_id="disp-1",
    initiator_role="buyer",
    round_count=2,
    transcript=TRANSCRIPT,
)
SUMMARIZE = SummarizeRequest(
    session_id="sess-1",
    dispute_id="disp-1",
    label="coordination_failure_resolvable",
    confidence=0.88,
    transcript=TRANSCRIPT,
)
ASK_ANSWER = (
    '{"classification":"coordination_failure_resolvable","confidence":0.8,'
    '"suggested_action":"ask_clarification","rationale":"late payment","flags":[],'
    '"buyer_clarification":"When did you pay?","seller_clarification":"Please check again."}'
)
SUMMARY_ANSWER = "The buyer paid late.\nSUGGESTED_NEXT_STEP: confirm receipt\nRATIONALE: both agree"


def reasoning_config(
    provider: str, api_base: str, *, model: str = "gpt-4o-mini", retries: int = 1, timeout: int = 30
) -> ReasoningConfig:
    return ReasoningConfig(
        enabled=True,
        provider=provider,
        model=model,
        api_base=api_base,
        api_key=Secret(API_KEY),
        request_timeout_seconds=timeout,
        followup_retry_count=retries,
    )


def no_backoff(_attempt: int) -> float:
    return 0.0


def scripted_context(
    api_base: str, client: httpx.AsyncClient, solvers: tuple[str, ...] = ()
) -> MediationContext:
    """Mediation's shared context against the scripted model at `api_base`: this module's
    bundle, one attempt per call and no backoff; `solvers` are the configured keys."""
    config = reasoning_config("openai", api_base, retries=1)
    return MediationContext(
        mediation=MediationConfig(enabled=True),
        reasoning=config,
        bundle=BUNDLE,
        provider=build_provider(config, client, backoff=no_backoff),
        solvers=solvers,
    )


def transport(
    client: httpx.AsyncClient, provider: str, *, timeout: float, attempts: int
) -> Transport:
    return Transport(
        client,
        provider=provider,
        model="m",
        secret=Secret(API_KEY),
        timeout=timeout,
        attempts=attempts,
        backoff=no_backoff,
    )


def quick_openai(
    client: httpx.AsyncClient, api_base: str, *, timeout: float, attempts: int
) -> OpenAIAdapter:
    """An adapter with a sub-second timeout (config allows no less than 1 s)."""
    return OpenAIAdapter(
        name="openai",
        model="m",
        api_base=api_base,
        api_key=Secret(API_KEY),
        transport=transport(client, "openai", timeout=timeout, attempts=attempts),
    )


def quick_anthropic(
    client: httpx.AsyncClient, api_base: str, *, timeout: float, attempts: int
) -> AnthropicAdapter:
    return AnthropicAdapter(
        model="m",
        api_base=api_base,
        api_key=Secret(API_KEY),
        transport=transport(client, "anthropic", timeout=timeout, attempts=attempts),
    )
