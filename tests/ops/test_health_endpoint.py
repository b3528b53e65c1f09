"""The `/health` endpoint over a real loopback TCP connection (BEY-11).

Status codes for up, down, other paths and methods; malformed requests (h11 parses them); and
the bounds: oversized heads, slow clients, too many connections, a failing snapshot.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import msgspec
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from serbero.actors.health import health_answer, run_health_endpoint
from serbero.actors.health_http import MAX_HEADERS, HealthAnswer, HttpLimits, serve_health
from serbero.actors.mediation.handle import EngineStatus
from serbero.actors.relay import RelayState
from serbero.actors.restart import ActorStatus
from serbero.actors.supervisor import DaemonSnapshot
from serbero.mediation.bringup import MediationStatus

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
        (b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /health HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
        (b"G\x00T /health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX:\x00\r\n\r\n", 400),
    ],
)
async def test_malformed_requests_are_400_and_the_server_lives_on(
    port: int, answers: Answers, raw: bytes, status: int
) -> None:
    response = await request(port, raw)
    assert response.status == status
    assert answers.calls == 0
    assert (await request(port)).status == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Old: a\r\n folded\r\n\r\n",
        b"GET /health HTTP/1.1\nHost: x\nX: y\n\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Odd: \x01\r\n\r\n",
    ],
)
async def test_what_h11_tolerates_in_headers_this_server_never_reads_is_served(
    port: int, raw: bytes
) -> None:
    """Obsolete line folding (unfolded, as RFC 9112 allows), bare LF line ends and odd bytes
    in a header value: h11 accepts them, and no header value reaches the answer."""
    assert (await request(port, raw)).status == 200


async def test_an_oversized_head_is_431_even_while_the_client_keeps_sending(port: int) -> None:
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * 20_000 + b"\r\n\r\n"
    response = Response(await exchange(port, raw))
    assert response.status == 431
    assert (await request(port)).status == 200


async def test_too_many_header_fields_is_431(port: int) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS))  # and Host
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


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """Whether the server has closed `stream` (after a reset or without an answer)."""
    with trio.fail_after(3):
        try:
            return await stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


async def test_a_connection_past_the_limit_drops_the_oldest_to_make_room(
    answers: Answers,
) -> None:
    # Idle clients would hold their slots until the request timeout: a long one here, so only
    # the limit can free a slot while the test runs.
    limits = msgspec.structs.replace(LIMITS, request_timeout=30.0)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(serve_health, ("127.0.0.1", 0), answers, limits=limits)
        )
        port = listeners[0].socket.getsockname()[1]
        idle = []
        for _ in range(limits.max_connections):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /hea")
            idle.append(stream)
            await wait_all_tasks_blocked()
        assert (await request(port)).status == 200
        assert await closed_by_server(idle[0])
        # The others kept their place: the next oldest can still finish its request.
        await idle[1].send_all(b"lth HTTP/1.1\r\nHost: x\r\n\r\n")
        chunks = []
        with trio.fail_after(3):
            while chunk := await idle[1].receive_some(65536):
                chunks.append(chunk)
        assert Response(b"".join(chunks)).status == 200
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_probe_is_answered_within_a_second_while_300_idle_connections_are_held(
    answers: Answers,
) -> None:
    """The endpoint's own limits (16 connections, 5 s to send a request): 300 clients that
    each sent half a request line and then went quiet do not lock a supervisor's probe out."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_health, ("127.0.0.1", 0), answers)
        port = listeners[0].socket.getsockname()[1]
        idle = []
        for _ in range(300):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /hea")
            idle.append(stream)
        await wait_all_tasks_blocked()
        with trio.fail_after(1.0):
            response = await request(port)
        assert response.status == 200
        assert response.json() == UP.document
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_failing_snapshot_is_500_and_the_server_lives_on(
    port: int, answers: Answers
) -> None:
    answers.fail = True
    response = await request(port)
    assert response.status == 500
    answers.fail = False
    assert (await request(port)).status == 200


# --- the daemon's snapshot as /health -----------------------------------------------------


def daemon_snapshot(
    *,
    connected: bool,
    event_at: int | None = 1_700_000_090,
    database_unavailable_since: int | None = None,
) -> DaemonSnapshot:
    relays = (
        RelayState(url="wss://one", connected=connected, since=1_700_000_050),
        RelayState(
            url="wss://two",
            connected=False,
            since=1_700_000_060,
            last_error="connect timed out",
            reconnect_attempts=3,
        ),
    )
    return DaemonSnapshot(
        taken_at=1_700_000_100,
        started_at=1_700_000_000,
        serbero_pubkey="ab" * 32,
        relays=relays,
        relays_connected=sum(relay.connected for relay in relays),
        last_dispute_event_id="ev-1",
        last_dispute_event_at=event_at,
        events_received=7,
        ingest_backlog=2,
        decisions_in_flight=1,
        outbox_pending=4,
        outbox_in_flight=3,
        delivered=10,
        delivery_failures=1,
        database_unavailable_since=database_unavailable_since,
        database_error=None if database_unavailable_since is None else "database is locked",
        renotify_cycles=5,
        actors=(
            ActorStatus(
                name="ingest", state="running", restarts=0, last_error=None, last_crash_at=None
            ),
            ActorStatus(
                name="sender",
                state="restarting",
                restarts=2,
                last_error="RuntimeError('boom')",
                last_crash_at=1_700_000_095,
            ),
        ),
        mediation=MediationStatus(
            state="failed",
            provider="openai",
            model="gpt-4o-mini",
            bundle_id="phase3-default",
            policy_hash="9d" * 32,
            stage="health_check",
            error="unreachable: http 503: busy",
        ),
        mediation_engine=EngineStatus(
            running=False,
            sessions_live=None,
            sessions_with_keys=0,
            sessions_watched=0,
            starts_in_flight=0,
            start_requests_dropped=0,
            ticks=0,
            last_tick_at=None,
            stage_failures=0,
            solver_auth=None,
        ),
    )


def test_health_answer_document() -> None:
    answer = health_answer(daemon_snapshot(connected=True))
    assert answer.up
    assert answer.document == {
        "status": "ok",
        "taken_at": 1_700_000_100,
        "uptime_seconds": 100,
        "database": {"available": True, "unavailable_since": None, "error": None},
        "relays_connected": 1,
        "relays_total": 2,
        "relays": [
            {
                "url": "wss://one",
                "connected": True,
                "since": 1_700_000_050,
                "reconnect_attempts": 0,
                "last_error": None,
            },
            {
                "url": "wss://two",
                "connected": False,
                "since": 1_700_000_060,
                "reconnect_attempts": 3,
                "last_error": "connect timed out",
            },
        ],
        "last_dispute_event_at": 1_700_000_090,
        "last_dispute_event_age": 10,
        "events_received": 7,
        "queues": {
            "ingest_backlog": 2,
            "decisions_in_flight": 1,
            "outbox_pending": 4,
            "outbox_in_flight": 3,
        },
        "deliveries": {"delivered": 10, "failed": 1},
        "actors": {
            "ingest": {"state": "running", "restarts": 0, "last_error": None},
            "sender": {"state": "restarting", "restarts": 2, "last_error": "RuntimeError('boom')"},
        },
        "mediation": {
            "state": "failed",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "policy_hash": "9d" * 32,
            "stage": "health_check",
            "error": "unreachable: http 503: busy",
            "engine": {
                "running": False,
                "sessions_live": None,
                "sessions_with_keys": 0,
                "sessions_watched": 0,
                "starts_in_flight": 0,
                "last_tick_at": None,
                "stage_failures": 0,
                "solver_auth": None,
            },
        },
    }


def test_health_answer_without_relays_or_events_is_down() -> None:
    answer = health_answer(daemon_snapshot(connected=False, event_at=None))
    assert not answer.up
    assert answer.document["status"] == "no_relay_connected"
    assert answer.document["relays_connected"] == 0
    assert answer.document["last_dispute_event_age"] is None


def test_health_answer_while_the_database_is_unavailable_is_down() -> None:
    """BEY-25: decisions wait for the database; a supervisor sees it, with the reason."""
    answer = health_answer(
        daemon_snapshot(connected=True, database_unavailable_since=1_700_000_080)
    )
    assert not answer.up
    assert answer.document["status"] == "database_unavailable"
    assert answer.document["database"] == {
        "available": False,
        "unavailable_since": 1_700_000_080,
        "error": "database is locked",
    }


async def test_run_health_endpoint_serves_the_live_snapshot() -> None:
    current = {"connected": False}

    def snapshot() -> DaemonSnapshot:
        return daemon_snapshot(connected=current["connected"])

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(run_health_endpoint, ("127.0.0.1", 0), snapshot))
        live_port = listeners[0].socket.getsockname()[1]
        down = await request(live_port)
        current["connected"] = True
        up = await request(live_port)
        nursery.cancel_scope.cancel()
    assert (down.status, down.json()["status"]) == (503, "no_relay_connected")
    assert (up.status, up.json()["status"]) == (200, "ok")
    assert up.json()["queues"]["outbox_pending"] == 4


async def test_the_daemon_endpoint_keeps_trying_while_its_port_is_taken() -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                run_health_endpoint,
                ("127.0.0.1", taken),
                lambda: daemon_snapshot(connected=True),
                bind_retry_seconds=0.05,
            )
        )
        await trio.sleep(0.2)
        squatter.close()
        with trio.fail_after(3):
            while True:
                try:
                    response = await request(taken)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                break
        nursery.cancel_scope.cancel()
    assert response.status == 200
