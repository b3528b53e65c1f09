"""The scripted model server runs from a thread too, for callers outside a Trio loop."""

from __future__ import annotations

import httpx

from tests.support.scripted_llm import json_reply, openai_reply, scripted_llm_thread


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
