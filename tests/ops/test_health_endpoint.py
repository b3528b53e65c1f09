"""The `/health` endpoint over a real loopback TCP connection (BEY-11).

Status codes for up, down, other paths and methods; the strict request parser; and the
bounds: oversized heads, slow clients, too many connections, a failing snapshot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import pytest
import trio

from serbero.actors.health import (
    HealthAnswer,
    HttpError,
    HttpLimits,
    parse_request_head,
    serve_health,
)

LIMITS = HttpLimits(
    max_head_bytes=1024,
    request_timeout=0.3,
    write_timeout=1.0,
    drain_timeout=0.2,
    max_connections=3,
)
UP = HealthAnswer(up=True, document={"status": "ok", "relays_connected": 1, "relays_total": 1})
DOWN = HealthAnswer(up=False, document={"status": "degraded", "relays_connected": 0})
GET = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Answers:
    """A switchable snapshot source, counting calls."""

    def __init__(self, answer: HealthAnswer = UP) -> None:
        self.answer = answer
        self.calls = 0
        self.fail = False

    def __call__(self) -> HealthAnswer:
        self.calls += 1
        if self.fail:
            raise RuntimeError("snapshot exploded")
        return self.answer


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("ascii").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split(" ")[1])
        self.headers = {
            name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines[1:])
        }

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def answers() -> Answers:
    return Answers()


@pytest.fixture
async def port(answers: Answers) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve_health(
                ("127.0.0.1", 0), answers, limits=LIMITS, task_status=task_status
            )
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def exchange(port: int, request: bytes, *, timeout: float = 3.0) -> bytes:
    """Send `request` and read until the server closes."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    return b"".join(chunks)


async def request(port: int, raw: bytes = GET) -> Response:
    return Response(await exchange(port, raw))


async def test_health_is_200_with_json_while_a_relay_is_connected(port: int) -> None:
    response = await request(port)
    assert response.status_line == "HTTP/1.1 200 OK"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert response.headers["cache-control"] == "no-store"
    assert int(response.headers["content-length"]) == len(response.body)
    assert response.json() == UP.document


async def test_health_is_503_with_json_when_no_relay_is_connected(
    port: int, answers: Answers
) -> None:
    answers.answer = DOWN
    response = await request(port)
    assert response.status_line == "HTTP/1.1 503 Service Unavailable"
    assert response.json() == DOWN.document


async def test_a_query_string_is_ignored(port: int) -> None:
    response = await request(port, b"GET /health?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200


@pytest.mark.parametrize("path", [b"/", b"/healthz", b"/health/", b"/metrics"])
async def test_other_paths_are_404(port: int, answers: Answers, path: bytes) -> None:
    response = await request(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 404
    assert response.json()["error"] == "not found"
    assert answers.calls == 0


async def test_other_methods_are_405_with_allow(port: int) -> None:
    response = await request(port, b"DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_head_gets_the_headers_without_a_body(port: int) -> None:
    response = await request(port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 200
    assert response.body == b""
    assert int(response.headers["content-length"]) > 0


async def test_http_1_0_without_host_is_served(port: int) -> None:
    assert (await request(port, b"GET /health HTTP/1.0\r\n\r\n")).status == 200


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /health\r\nHost: x\r\n\r\n", 400),
        (b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /health FTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http://x/health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /h\xc3\xa9alth HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\x01\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400),
    ],
)
async def test_malformed_requests_are_400_and_the_server_lives_on(
    port: int, answers: Answers, raw: bytes, status: int
) -> None:
    response = await request(port, raw)
    assert response.status == status
    assert answers.calls == 0
    assert (await request(port)).status == 200


async def test_an_oversized_head_is_431_even_while_the_client_keeps_sending(port: int) -> None:
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * 20_000 + b"\r\n\r\n"
    response = Response(await exchange(port, raw))
    assert response.status == 431
    assert (await request(port)).status == 200


async def test_too_many_header_fields_is_431(port: int) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(40))
    response = await request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert response.status == 431


async def test_a_client_too_slow_to_send_its_request_gets_408(port: int) -> None:
    start = trio.current_time()
    with trio.fail_after(3):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /health HTTP/1.1\r\n")
            raw = b""
            while chunk := await stream.receive_some(65536):
                raw += chunk
    assert Response(raw).status == 408
    assert trio.current_time() - start < 2
    assert (await request(port)).status == 200


async def test_a_client_that_hangs_up_mid_request_does_not_disturb_the_server(
    port: int, answers: Answers
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /hea")
    await stream.aclose()
    assert (await request(port)).status == 200
    assert answers.calls == 1


async def test_connections_beyond_the_limit_are_closed_unanswered(port: int) -> None:
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
    await trio.sleep(0.05)
    assert await exchange(port, GET) == b""
    for stream in idle:
        await stream.aclose()
    await trio.sleep(0.05)
    assert (await request(port)).status == 200


async def test_a_failing_snapshot_is_500_and_the_server_lives_on(
    port: int, answers: Answers
) -> None:
    answers.fail = True
    response = await request(port)
    assert response.status == 500
    answers.fail = False
    assert (await request(port)).status == 200


# --- the parser alone ---------------------------------------------------------------------


def test_parse_request_head_fields() -> None:
    head = parse_request_head(b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent:  probe \t")
    assert (head.method, head.path, head.version) == ("GET", "/health", "HTTP/1.1")
    assert head.headers == (("host", "a"), ("user-agent", "probe"))


@pytest.mark.parametrize(
    "raw",
    [b"", b"GET", b"GET /health HTTP/1.1 extra\r\nHost: a", b"G\x00T /health HTTP/1.1\r\nHost: a"],
)
def test_parse_request_head_rejects(raw: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        parse_request_head(raw)
    assert caught.value.status == HTTPStatus.BAD_REQUEST
