"""The scripted model server runs from a thread too, for callers outside a Trio loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.scripted_llm import (
    RecordedRequest,
    Reply,
    json_reply,
    openai_reply,
    scripted_llm_thread,
)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def test_thread_server_answers_in_script_order_then_default() -> None:
    with scripted_llm_thread(json_reply({"default": True})) as llm:
        llm.script(openai_reply("first"), json_reply({"second": True}, status=503))
        with httpx.Client(base_url=llm.url) as client:
            first = client.post("/v1/chat/completions", json={"n": 1})
            second = client.post("/v1/chat/completions", json={"n": 2})
            third = client.post("/anything", content=b"raw")
    assert first.json()["choices"][0]["message"]["content"] == "first"
    assert (second.status_code, second.json()) == (503, {"second": True})
    assert third.json() == {"default": True}
    assert [request.path for request in llm.requests] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/anything",
    ]
    assert llm.requests[1].json() == {"n": 2}
    assert llm.requests[2].body == b"raw"


def test_a_responder_is_handed_only_model_calls() -> None:
    """A stray request (no body, not JSON, no `messages`) gets 400 without reaching the
    responder, which would raise on it and take the server down; it is still recorded, and
    the next model call is answered."""
    handed: list[str] = []

    def responder(request: RecordedRequest) -> Reply:
        handed.append(str(request.json()["messages"][-1]["content"]))
        return openai_reply("pong")

    chat = {"messages": [{"role": "user", "content": "ping"}]}
    with scripted_llm_thread(responder) as llm, httpx.Client(base_url=llm.url) as client:
        strays = [
            client.get("/"),
            client.post("/v1/chat/completions", content=b"not json"),
            client.post("/v1/chat/completions", json={"model": "m"}),
            client.post("/v1/chat/completions", json={"messages": []}),
            client.post("/v1/chat/completions", json={"messages": ["ping"]}),
            client.post("/v1/chat/completions", json=[chat]),
        ]
        answered = client.post("/v1/chat/completions", json=chat)
    assert [reply.status_code for reply in strays] == [400] * len(strays)
    assert strays[0].json() == {"error": "not a model API request"}
    assert answered.json()["choices"][0]["message"]["content"] == "pong"
    assert handed == ["ping"]
    assert len(llm.requests) == len(strays) + 1


def test_process_server_answers_until_stdin_closes() -> None:
    command = [sys.executable, "-m", "tests.support.scripted_llm", "--format", "anthropic"]
    command += ["--content", "pong", "--delay", "0.01"]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    ) as server:
        assert server.stdin is not None and server.stdout is not None
        url = server.stdout.readline().strip()
        reply = httpx.post(url + "/v1/messages", json={"model": "m"})
        server.stdin.close()
        assert server.wait(10) == 0
    assert reply.json()["content"] == [{"type": "text", "text": "pong"}]
