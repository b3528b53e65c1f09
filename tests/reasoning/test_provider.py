"""Building a provider from config, timeouts, concurrency, and the credential's secrecy
(MED-186/187, MAS-18)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import traceback
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import structlog
import trio

from serbero.config import ReasoningConfig
from serbero.log import configure_logging
from serbero.reasoning.errors import (
    MalformedResponse,
    ProviderConfigError,
    ProviderNotImplementedError,
    ReasoningError,
    ReasoningTimeout,
    ReasoningUnreachable,
    UnknownProviderError,
)
from serbero.reasoning.provider import (
    attempt_budget,
    build_provider,
    request_timeout,
)
from serbero.reasoning.transport import exponential_backoff
from tests.reasoning.helpers import (
    API_KEY,
    ASK_ANSWER,
    BUNDLE,
    CLASSIFY,
    no_backoff,
    quick_anthropic,
    quick_openai,
    reasoning_config,
)
from tests.support.scripted_llm import (
    RecordedRequest,
    Reply,
    ScriptedLLM,
    anthropic_reply,
    json_reply,
    openai_reply,
)


@pytest.mark.parametrize("name", ["ppqai", "openclaw"])
def test_reserved_names_fail_at_build_naming_what_works(name: str) -> None:
    with pytest.raises(ProviderNotImplementedError) as caught:
        build_provider(reasoning_config(name, "https://api.example"), httpx.AsyncClient())
    text = str(caught.value)
    assert f"'{name}'" in text and "openai" in text and "not yet implemented" in text
    assert "\n" not in text


@pytest.mark.parametrize("name", ["OpenAI", "Anthropic", "", "openrouter", "ppqai "])
def test_unknown_names_never_fall_back(name: str) -> None:
    with pytest.raises(UnknownProviderError, match=f"unknown reasoning provider '{name}'"):
        build_provider(reasoning_config(name, "https://api.example"), httpx.AsyncClient())


@pytest.mark.parametrize("base", ["api.openai.com/v1", "ftp://host/v1", "https://", "http://[::1"])
def test_api_base_must_be_an_http_url(base: str) -> None:
    with pytest.raises(ProviderConfigError, match=r"\[reasoning\].api_base"):
        build_provider(reasoning_config("openai", base), httpx.AsyncClient())


@pytest.mark.parametrize(("configured", "seconds"), [(0, 1.0), (1, 1.0), (30, 30.0)])
def test_timeout_is_at_least_one_second(configured: int, seconds: float) -> None:
    config = reasoning_config("openai", "https://x", timeout=configured)
    assert request_timeout(config) == seconds


@pytest.mark.parametrize(("retries", "attempts"), [(0, 1), (1, 2), (4, 5)])
def test_attempts_are_retries_plus_one(retries: int, attempts: int) -> None:
    assert attempt_budget(reasoning_config("openai", "https://x", retries=retries)) == attempts


def test_default_backoff_is_short_and_bounded() -> None:
    assert [exponential_backoff(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert exponential_backoff(5_000) == 2.0


def test_default_config_builds_the_openai_adapter() -> None:
    provider = build_provider(ReasoningConfig(), httpx.AsyncClient())
    assert (provider.name, provider.model) == ("openai", "gpt-4o-mini")


@pytest.mark.parametrize("quick", [quick_openai, quick_anthropic])
async def test_a_request_past_its_deadline_is_a_timeout_and_retried(
    llm: ScriptedLLM, client: httpx.AsyncClient, quick: object
) -> None:
    llm.set_default(Reply(delay=float("inf")))
    provider = quick(client, llm.url, timeout=0.2, attempts=2)  # type: ignore[operator]
    started = trio.current_time()
    with pytest.raises(ReasoningTimeout) as caught:
        await provider.classify(CLASSIFY, BUNDLE)
    assert caught.value.category == "timeout"
    assert caught.value.attempts == 2
    assert len(llm.requests) == 2
    assert trio.current_time() - started < 2.0


async def test_a_slow_body_is_bounded_by_the_whole_deadline(
    llm: ScriptedLLM, client: httpx.AsyncClient
) -> None:
    # Each piece comes within the read timeout; the whole body does not come within 0.2 s.
    dripping = openai_reply(ASK_ANSWER)
    llm.script(msgspec.structs.replace(dripping, drip=0.05), dripping)
    provider = quick_openai(client, llm.url, timeout=0.2, attempts=2)
    verdict = await provider.classify(CLASSIFY, BUNDLE)
    assert verdict.label == "coordination_failure_resolvable"
    assert len(llm.requests) == 2


async def test_calls_do_not_serialise(llm: ScriptedLLM, client: httpx.AsyncClient) -> None:
    # Every request reaches the server before the first answer leaves it.
    llm.set_default(openai_reply(ASK_ANSWER, delay=0.5))
    provider = build_provider(reasoning_config("openai", llm.url), client)
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(provider.classify, CLASSIFY, BUNDLE)
    arrivals = [request.received_at for request in llm.requests]
    assert len(arrivals) == 20
    assert max(arrivals) - min(arrivals) < 0.5


# --- The credential never shows: not in a log line (ours or httpx's), an error, a repr.


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", stream=stream, json=True)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


def echo_credentials(request: RecordedRequest) -> Reply:
    """A hostile or careless provider that quotes the credential back."""
    secret = request.headers.get("authorization") or request.headers.get("x-api-key", "")
    body = f'{{"error": "invalid key {secret}", "again": "{secret}"}}'.encode()
    status = 401 if b'"ping"' in request.body else 503
    return Reply(status=status, body=body)


@pytest.mark.parametrize("provider_name", ["openai", "anthropic"])
async def test_the_key_never_appears_in_logs_or_errors(
    llm: ScriptedLLM,
    client: httpx.AsyncClient,
    log_output: io.StringIO,
    caplog: pytest.LogCaptureFixture,
    provider_name: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    llm.set_default(echo_credentials)
    config = reasoning_config(provider_name, llm.url, retries=2)
    provider = build_provider(config, client, backoff=no_backoff)
    errors: list[ReasoningError] = []
    for call in (provider.health_check, lambda: provider.classify(CLASSIFY, BUNDLE)):
        with pytest.raises(ReasoningUnreachable) as caught:
            await call()
        errors.append(caught.value)
    llm.script(
        openai_reply("not json") if provider_name == "openai" else anthropic_reply("not json")
    )
    with pytest.raises(MalformedResponse) as malformed:
        await provider.classify(CLASSIFY, BUNDLE)
    errors.append(malformed.value)

    assert API_KEY in llm.requests[0].headers.get(
        "authorization", llm.requests[0].headers.get("x-api-key", "")
    )
    assert "<redacted>" in errors[0].message
    shown = [
        log_output.getvalue(),
        caplog.text,
        repr(provider),
        repr(config),
        *(str(error) for error in errors),
        *(repr(error) for error in errors),
        *("".join(traceback.format_exception(error)) for error in errors),
    ]
    for text in shown:
        assert API_KEY not in text
        assert API_KEY[:16] not in text
    assert "reasoning_call_retrying" in log_output.getvalue()
    assert "reasoning_answer_malformed" in log_output.getvalue()


async def test_a_malformed_answer_is_logged_by_length_and_hash_only(
    llm: ScriptedLLM, client: httpx.AsyncClient, log_output: io.StringIO
) -> None:
    answer = '{"classification": "win", "rationale": "SECRET-RATIONALE-TEXT"}'
    llm.script(json_reply({"choices": [{"message": {"content": answer}}]}))
    provider = build_provider(reasoning_config("openai", llm.url), client)
    with pytest.raises(MalformedResponse):
        await provider.classify(CLASSIFY, BUNDLE)
    output = log_output.getvalue()
    assert "SECRET-RATIONALE-TEXT" not in output
    (record,) = [json.loads(line) for line in output.splitlines()]
    assert record["event"] == "reasoning_answer_malformed"
    assert record["answer_chars"] == len(answer)
    assert record["answer_sha256"] == hashlib.sha256(answer.encode()).hexdigest()[:16]
    assert (record["provider"], record["call"]) == ("openai", "classify")
