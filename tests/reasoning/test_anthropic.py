"""The native Anthropic adapter over real loopback HTTP (MED-185, MED-187, MAS-18)."""

from __future__ import annotations

import httpx
import pytest

from serbero.reasoning.errors import MalformedResponse, ReasoningUnreachable
from serbero.reasoning.provider import ReasoningProvider, build_provider
from serbero.reasoning.types import Summary
from tests.reasoning.helpers import (
    API_KEY,
    ASK_ANSWER,
    BUNDLE,
    CLASSIFY,
    SUMMARIZE,
    SUMMARY_ANSWER,
    TEXTS,
    no_backoff,
    reasoning_config,
)
from tests.support.scripted_llm import Reply, ScriptedLLM, anthropic_reply, json_reply

MODEL = "claude-sonnet-4-5"


def anthropic(
    llm: ScriptedLLM, client: httpx.AsyncClient, *, base: str = "", retries: int = 1
) -> ReasoningProvider:
    config = reasoning_config("anthropic", llm.url + base, model=MODEL, retries=retries)
    return build_provider(config, client, backoff=no_backoff)


@pytest.mark.parametrize("base", ["", "/", "/v1", "/v1/"])
async def test_url_with_or_without_v1(
    llm: ScriptedLLM, client: httpx.AsyncClient, base: str
) -> None:
    llm.script(anthropic_reply("pong"))
    await anthropic(llm, client, base=base).health_check()
    assert llm.requests[0].path == "/v1/messages"


async def test_classify_request_shape(llm: ScriptedLLM, client: httpx.AsyncClient) -> None:
    llm.script(anthropic_reply(ASK_ANSWER))
    verdict = await anthropic(llm, client).classify(CLASSIFY, BUNDLE)
    assert verdict.suggested_action == "ask_clarification"
    (request,) = llm.requests
    assert request.method == "POST"
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    body = request.json()
    assert list(body) == ["model", "max_tokens", "system", "messages", "temperature"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == (MODEL, 2048, 0.0)
    assert body["system"] == TEXTS["system"]
    (turn,) = body["messages"]
    assert turn["role"] == "user"
    assert TEXTS["classification"] in turn["content"]


async def test_summarize_request_shape(llm: ScriptedLLM, client: httpx.AsyncClient) -> None:
    llm.script(anthropic_reply(SUMMARY_ANSWER))
    summary = await anthropic(llm, client).summarize(SUMMARIZE, BUNDLE)
    assert summary == Summary("The buyer paid late.", "confirm receipt", "both agree")
    body = llm.requests[0].json()
    assert (body["max_tokens"], body["temperature"]) == (4096, 0.2)
    assert body["system"] == TEXTS["system"]


async def test_health_has_no_system(llm: ScriptedLLM, client: httpx.AsyncClient) -> None:
    llm.script(anthropic_reply("p"))
    await anthropic(llm, client).health_check()
    assert llm.requests[0].json() == {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "ping"}],
        "temperature": 0.0,
    }


async def test_json_split_across_text_blocks_parses(
    llm: ScriptedLLM, client: httpx.AsyncClient
) -> None:
    half = len(ASK_ANSWER) // 2
    blocks = [
        {"type": "thinking", "thinking": "let me see", "signature": "x"},
        {"type": "text", "text": ASK_ANSWER[:half]},
        {"type": "tool_use", "id": "t", "name": "n", "input": {}},
        {"type": "text", "text": ASK_ANSWER[half:]},
    ]
    llm.script(anthropic_reply(blocks=blocks))
    verdict = await anthropic(llm, client).classify(CLASSIFY, BUNDLE)
    assert verdict.buyer_clarification == "When did you pay?"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([], "no text block in anthropic response"),
        ([{"type": "thinking", "thinking": "hm"}], "no text block in anthropic response"),
        ("just a string", "no text block in anthropic response"),
        ([{"type": "text"}], "anthropic text block without text"),
        ([{"type": "text", "text": 7}], "anthropic text block without text"),
    ],
)
async def test_missing_text_is_malformed(
    llm: ScriptedLLM, client: httpx.AsyncClient, content: object, message: str
) -> None:
    llm.script(json_reply({"type": "message", "content": content}))
    with pytest.raises(MalformedResponse, match=message):
        await anthropic(llm, client, retries=2).health_check()
    assert len(llm.requests) == 1


async def test_prose_is_malformed(llm: ScriptedLLM, client: httpx.AsyncClient) -> None:
    llm.script(anthropic_reply("The seller", " seems honest."))
    with pytest.raises(MalformedResponse):
        await anthropic(llm, client).classify(CLASSIFY, BUNDLE)


async def test_401_is_unreachable_naming_anthropic(
    llm: ScriptedLLM, client: httpx.AsyncClient
) -> None:
    error_body = {"type": "error", "error": {"type": "authentication_error", "message": "bad"}}
    llm.script(json_reply(error_body, status=401))
    with pytest.raises(ReasoningUnreachable) as caught:
        await anthropic(llm, client, retries=3).classify(CLASSIFY, BUNDLE)
    assert caught.value.message.startswith("anthropic http 401: ")
    assert len(llm.requests) == 1


async def test_overloaded_is_retried_and_retry_after_reported(
    llm: ScriptedLLM, client: httpx.AsyncClient
) -> None:
    overloaded = json_reply({"type": "error", "error": {"type": "overloaded_error"}}, status=529)
    limited = Reply(status=429, body=b'{"type": "error"}', headers=(("retry-after", "7"),))
    llm.script(overloaded, limited)
    with pytest.raises(ReasoningUnreachable) as caught:
        await anthropic(llm, client, retries=1).health_check()
    assert len(llm.requests) == 2
    assert caught.value.message == 'anthropic http 429: {"type": "error"} (retry-after: 7)'
