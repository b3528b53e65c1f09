"""The OpenAI-compatible adapter over real loopback HTTP (MED-184, MED-187, MAS-18)."""

from __future__ import annotations

import httpx
import pytest
import trio

from serbero.reasoning.errors import MalformedResponse, ReasoningUnreachable
from serbero.reasoning.openai import takes_temperature
from serbero.reasoning.provider import ReasoningProvider, build_provider
from serbero.reasoning.types import Classification, Summary
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
from tests.support.scripted_llm import (
    Reply,
    ScriptedLLM,
    json_reply,
    open_scripted_llm,
    openai_reply,
)


def openai(
    llm: ScriptedLLM,
    client: httpx.AsyncClient,
    *,
    base: str = "/v1",
    name: str = "openai",
    model: str = "gpt-4o-mini",
    retries: int = 1,
) -> ReasoningProvider:
    config = reasoning_config(name, llm.url + base, model=model, retries=retries)
    return build_provider(config, client, backoff=no_backoff)


async def test_classify_request_shape(llm: ScriptedLLM, client: httpx.AsyncClient) -> None:
    llm.script(openai_reply(ASK_ANSWER))
    verdict = await openai(llm, client).classify(CLASSIFY, BUNDLE)
    assert verdict == Classification(
        label="coordination_failure_resolvable",
        confidence=0.8,
        suggested_action="ask_clarification",
        rationale="late payment",
        buyer_clarification="When did you pay?",
        seller_clarification="Please check again.",
    )
    (request,) = llm.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert list(body) == ["model", "messages", "response_format", "temperature"]
    assert body["model"] == "gpt-4o-mini"
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.0
    system, user = body["messages"]
    assert system == {"role": "system", "content": TEXTS["system"]}
    assert user["role"] == "user"
    for section in ("classification", "escalation", "mediation_style", "message_templates"):
        assert TEXTS[section] in user["content"]
    assert "[1700000060] buyer: I paid at 10:00." in user["content"]


async def test_summarize_request_shape(llm: ScriptedLLM, client: httpx.AsyncClient) -> None:
    llm.script(openai_reply(SUMMARY_ANSWER))
    summary = await openai(llm, client).summarize(SUMMARIZE, BUNDLE)
    assert summary == Summary("The buyer paid late.", "confirm receipt", "both agree")
    body = llm.requests[0].json()
    assert list(body) == ["model", "messages", "temperature"]
    assert body["temperature"] == 0.2
    assert body["messages"][0] == {"role": "system", "content": TEXTS["system"]}
    assert "classification: coordination_failure_resolvable" in body["messages"][1]["content"]


async def test_health_check_is_one_ping(llm: ScriptedLLM, client: httpx.AsyncClient) -> None:
    llm.script(openai_reply("pong"))
    await openai(llm, client).health_check()
    (request,) = llm.requests
    assert request.json() == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "ping"}],
        "temperature": 0.0,
    }


@pytest.mark.parametrize(
    ("model", "sends_temperature"),
    [
        ("gpt-4o-mini", True),
        ("gpt-5", False),
        ("gpt-5-mini", False),
        ("openai/gpt-5.1", False),  # OpenRouter's vendor-prefixed names
        ("o3-mini", False),
        ("claude-sonnet-4", True),
        ("anthropic/claude-sonnet-4.5", True),
        ("my-gpt-5-finetune", True),
    ],
)
async def test_temperature_rule(
    llm: ScriptedLLM, client: httpx.AsyncClient, model: str, sends_temperature: bool
) -> None:
    assert takes_temperature(model) is sends_temperature
    llm.set_default(openai_reply(ASK_ANSWER))
    provider = openai(llm, client, model=model)
    await provider.classify(CLASSIFY, BUNDLE)
    await provider.health_check()
    for request in llm.requests:
        body = request.json()
        assert body["model"] == model
        assert ("temperature" in body) is sends_temperature
    assert "response_format" in llm.requests[0].json()


@pytest.mark.parametrize(
    ("base", "path"),
    [
        ("", "/chat/completions"),  # PPQ.ai style root base (https://api.ppq.ai)
        ("/", "/chat/completions"),
        ("/v1", "/v1/chat/completions"),
        ("/api/v1/", "/api/v1/chat/completions"),  # OpenRouter (https://openrouter.ai/api/v1)
    ],
)
async def test_api_base_forms(
    llm: ScriptedLLM, client: httpx.AsyncClient, base: str, path: str
) -> None:
    llm.script(openai_reply(ASK_ANSWER))
    await openai(llm, client, base=base, name="openai-compatible").classify(CLASSIFY, BUNDLE)
    (request,) = llm.requests
    assert request.path == path
    assert request.json()["response_format"] == {"type": "json_object"}


async def test_two_bases_each_hit_once(client: httpx.AsyncClient) -> None:
    async with (
        open_scripted_llm(openai_reply("pong")) as one,
        open_scripted_llm(openai_reply("pong")) as two,
    ):
        await openai(one, client).health_check()
        await openai(two, client, base="", name="openai-compatible").health_check()
        assert [len(one.requests), len(two.requests)] == [1, 1]


MALFORMED = {
    "prose": openai_reply("I think the buyer is right."),
    "fenced json": openai_reply("```json\n" + ASK_ANSWER + "\n```"),
    "wrong json": openai_reply('["coordination_failure_resolvable", 0.8]'),
    "missing fields": openai_reply('{"classification": "unclear"}'),
    "unknown label": openai_reply(ASK_ANSWER.replace("coordination_failure_resolvable", "win")),
    "content null": openai_reply(None),
    "no choices": json_reply({"choices": []}),
    "choices not a list": json_reply({"choices": {"0": {}}}),
    "body not json": Reply(body=b"<html>gateway</html>", headers=(("content-type", "text/html"),)),
    "body json array": json_reply([1, 2]),
    "body not utf-8": Reply(body=b'{"choices": "\xff\xfe"}'),
    "body deeply nested": Reply(body=b"[" * 200_000 + b"]" * 200_000),
    "body too large": Reply(body=b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'),
}


@pytest.mark.parametrize("reply", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_answers_fail_fast(
    llm: ScriptedLLM, client: httpx.AsyncClient, reply: Reply
) -> None:
    llm.script(reply)
    with pytest.raises(MalformedResponse) as caught:
        await openai(llm, client, retries=3).classify(CLASSIFY, BUNDLE)
    assert caught.value.category == "malformed_response"
    assert caught.value.attempts == 1
    assert len(llm.requests) == 1


async def test_empty_choices_message(llm: ScriptedLLM, client: httpx.AsyncClient) -> None:
    llm.script(json_reply({"id": "x"}))
    with pytest.raises(MalformedResponse, match="empty choices"):
        await openai(llm, client).health_check()


@pytest.mark.parametrize(("given", "clamped"), [(1.5, 1.0), (-0.2, 0.0)])
async def test_confidence_out_of_range_is_clamped(
    llm: ScriptedLLM, client: httpx.AsyncClient, given: float, clamped: float
) -> None:
    llm.script(openai_reply(ASK_ANSWER.replace('"confidence":0.8', f'"confidence":{given}')))
    verdict = await openai(llm, client).classify(CLASSIFY, BUNDLE)
    assert verdict.confidence == clamped


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_transient_statuses_are_retried(
    llm: ScriptedLLM, client: httpx.AsyncClient, status: int
) -> None:
    llm.script(json_reply({"error": {"message": "busy"}}, status=status), openai_reply(ASK_ANSWER))
    verdict = await openai(llm, client, retries=1).classify(CLASSIFY, BUNDLE)
    assert verdict.suggested_action == "ask_clarification"
    assert len(llm.requests) == 2
    assert llm.requests[0].body == llm.requests[1].body


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_other_client_errors_fail_fast(
    llm: ScriptedLLM, client: httpx.AsyncClient, status: int
) -> None:
    llm.script(json_reply({"error": {"message": "no"}}, status=status))
    with pytest.raises(ReasoningUnreachable) as caught:
        await openai(llm, client, retries=3).classify(CLASSIFY, BUNDLE)
    assert caught.value.category == "unreachable"
    assert caught.value.status == status
    assert caught.value.message.startswith(f"http {status}: ")
    assert len(llm.requests) == 1


async def test_retry_budget_is_followup_retry_count_plus_one(
    llm: ScriptedLLM, client: httpx.AsyncClient
) -> None:
    llm.set_default(json_reply({"error": "slow down"}, status=429))
    with pytest.raises(ReasoningUnreachable) as caught:
        await openai(llm, client, retries=2).classify(CLASSIFY, BUNDLE)
    assert len(llm.requests) == 3
    assert caught.value.attempts == 3
    assert caught.value.message == 'http 429: {"error": "slow down"}'


async def test_status_message_quotes_at_most_200_bytes(
    llm: ScriptedLLM, client: httpx.AsyncClient
) -> None:
    llm.script(Reply(status=400, body=b"e" * 1000))
    with pytest.raises(ReasoningUnreachable) as caught:
        await openai(llm, client).health_check()
    assert caught.value.message == "http 400: " + "e" * 200


async def test_openrouter_error_inside_a_200_is_its_status(
    llm: ScriptedLLM, client: httpx.AsyncClient
) -> None:
    upstream_down = json_reply({"error": {"code": 502, "message": "provider returned error"}})
    llm.script(upstream_down, openai_reply("pong"))
    await openai(llm, client, retries=1).health_check()
    assert len(llm.requests) == 2

    llm.script(json_reply({"error": {"code": 402, "message": "insufficient credits"}}))
    with pytest.raises(ReasoningUnreachable) as caught:
        await openai(llm, client, retries=3).health_check()
    assert caught.value.status == 402
    assert caught.value.message == "http 402: insufficient credits"
    assert len(llm.requests) == 3


async def test_dropped_connection_is_unreachable_and_retried(
    llm: ScriptedLLM, client: httpx.AsyncClient
) -> None:
    llm.set_default(Reply(drop=True))
    with pytest.raises(ReasoningUnreachable) as caught:
        await openai(llm, client, retries=1).health_check()
    assert caught.value.status is None
    assert caught.value.attempts == 2
    assert len(llm.requests) == 2


async def test_refused_connection_is_unreachable(client: httpx.AsyncClient) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens on the port any more
    config = reasoning_config("openai", f"http://127.0.0.1:{port}/v1", retries=0)
    with pytest.raises(ReasoningUnreachable, match="openai unreachable: ConnectError"):
        await build_provider(config, client).health_check()


async def test_backoff_is_asked_between_attempts(
    llm: ScriptedLLM, client: httpx.AsyncClient
) -> None:
    asked: list[int] = []

    def backoff(attempt: int) -> float:
        asked.append(attempt)
        return 0.0

    llm.set_default(json_reply({}, status=503))
    config = reasoning_config("openai", llm.url, retries=3)
    with pytest.raises(ReasoningUnreachable):
        await build_provider(config, client, backoff=backoff).health_check()
    assert asked == [1, 2, 3]
