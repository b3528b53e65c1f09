"""The reasoning provider protocol, and the one place a configured name becomes an adapter.

Call sites hold a `ReasoningProvider` and never branch on which one it is (MED-180).
`build_provider` runs at bring-up: an unknown name, a reserved name with no adapter yet, or
an `api_base` that is not an http(s) URL is a `ProviderConfigError` there, in one line, so
the operator learns it at start rather than from the first dispute (MED-186, MAS-18).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

import httpx

from serbero.config import ReasoningConfig
from serbero.reasoning.anthropic import AnthropicAdapter
from serbero.reasoning.errors import (
    ProviderConfigError,
    ProviderNotImplementedError,
    UnknownProviderError,
)
from serbero.reasoning.openai import OPENAI_NAMES, OpenAIAdapter
from serbero.reasoning.transport import Backoff, Transport, exponential_backoff
from serbero.reasoning.types import Classification, ClassifyRequest, SummarizeRequest, Summary

if TYPE_CHECKING:
    from serbero.reasoning.bundle import PromptBundle

__all__ = [
    "RESERVED_NAMES",
    "ReasoningProvider",
    "attempt_budget",
    "build_provider",
    "request_timeout",
]

# Declared by the reference at the Phase 3 boundary, with no adapter behind them.
RESERVED_NAMES: Final = ("ppqai", "openclaw")
MIN_TIMEOUT_SECONDS: Final = 1


class ReasoningProvider(Protocol):
    """A model that classifies and summarises disputes; every failure is a `ReasoningError`."""

    name: str
    model: str

    async def classify(self, request: ClassifyRequest, bundle: PromptBundle) -> Classification: ...

    async def summarize(self, request: SummarizeRequest, bundle: PromptBundle) -> Summary: ...

    async def health_check(self) -> None: ...


def request_timeout(config: ReasoningConfig) -> float:
    """Seconds one HTTP attempt may take: `request_timeout_seconds`, at least 1 (MED-187)."""
    return float(max(config.request_timeout_seconds, MIN_TIMEOUT_SECONDS))


def attempt_budget(config: ReasoningConfig) -> int:
    """HTTP attempts per call: the first plus `followup_retry_count` retries (MED-187)."""
    return config.followup_retry_count + 1


def build_provider(
    config: ReasoningConfig,
    client: httpx.AsyncClient,
    *,
    backoff: Backoff = exponential_backoff,
) -> ReasoningProvider:
    """The adapter `[reasoning].provider` names, over `client` (names are case-sensitive and
    never fall back). Raises `ProviderConfigError`."""
    name = config.provider
    if name in RESERVED_NAMES:
        raise ProviderNotImplementedError(name)
    if name not in (*OPENAI_NAMES, "anthropic"):
        raise UnknownProviderError(name)
    _check_api_base(config.api_base)
    transport = Transport(
        client,
        provider=name,
        model=config.model,
        secret=config.api_key,
        timeout=request_timeout(config),
        attempts=attempt_budget(config),
        error_prefix="anthropic http" if name == "anthropic" else "http",
        report_retry_after=name == "anthropic",
        backoff=backoff,
    )
    if name == "anthropic":
        return AnthropicAdapter(
            model=config.model,
            api_base=config.api_base,
            api_key=config.api_key,
            transport=transport,
        )
    return OpenAIAdapter(
        name=name,
        model=config.model,
        api_base=config.api_base,
        api_key=config.api_key,
        transport=transport,
    )


def _check_api_base(api_base: str) -> None:
    try:
        url = httpx.URL(api_base)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ProviderConfigError(
            f"[reasoning].api_base {api_base!r} is not an http:// or https:// URL"
        )
