"""The HTTP side of the health endpoint: one JSON document at `GET /health`, on h11 (BEY-11).

h11 (the Trio ecosystem's HTTP/1.1 state machine) parses requests and frames answers; this
module adds the bounds a supervisor-facing server needs, so a stuck or hostile client can
neither hold the daemon nor grow its memory: one request per connection, then close; a
request head of at most `MAX_HEAD_BYTES` with `MAX_HEADERS` fields and no body, sent within
`REQUEST_TIMEOUT`; an answer taken within `WRITE_TIMEOUT`; at most `MAX_CONNECTIONS` open at
once. When that many are open, a new connection drops the oldest one to make room, so idle
or slow clients cannot lock the probe out: a probe is always the newest connection.
The config only accepts loopback addresses (`[health] listen`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final

import h11
import msgspec
import trio

from serbero.log import get_logger

__all__ = [
    "DEFAULT_LIMITS",
    "HEALTH_PATH",
    "MAX_CONNECTIONS",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "REQUEST_TIMEOUT",
    "HealthAnswer",
    "HttpLimits",
    "serve_health",
    "serve_listeners",
]

log = get_logger("serbero.health")

HEALTH_PATH: Final = "/health"
# A probe's request is well under 200 bytes; 8 KiB leaves room for curious clients' headers.
MAX_HEAD_BYTES: Final = 8 * 1024
MAX_HEADERS: Final = 32
REQUEST_TIMEOUT: Final = 5.0
WRITE_TIMEOUT: Final = 5.0
# After answering, unread input is drained this long before closing, so the kernel does not
# reset the connection (and lose the answer) because of bytes the client already sent.
DRAIN_TIMEOUT: Final = 1.0
DRAIN_BYTES: Final = 64 * 1024
MAX_CONNECTIONS: Final = 16
RECEIVE_CHUNK: Final = 4096

_ALLOWED_METHODS: Final = (b"GET", b"HEAD")
_VERSIONS: Final = (b"1.1", b"1.0")


class HealthAnswer(msgspec.Struct, frozen=True):
    """What `/health` says right now: `up` picks 200 or 503; `document` is the JSON body."""

    up: bool
    document: dict[str, Any]


class HttpLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Every bound of the server; defaults are the module constants (tests shrink them)."""

    max_head_bytes: int = MAX_HEAD_BYTES
    request_timeout: float = REQUEST_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    drain_timeout: float = DRAIN_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


DEFAULT_LIMITS: Final = HttpLimits()


class _Refusal(Exception):
    """A request this server will not serve; `status` is the answer it gets."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Connections:
    """The open connections, oldest first, each with the cancel scope that drops it.

    Admitting one past the limit cancels the oldest: the connection that has had the longest
    to send its request and take its answer is the one least likely to be a live probe.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[trio.CancelScope, None] = {}  # insertion order: oldest first

    def admit(self, scope: trio.CancelScope) -> None:
        while len(self._open) >= self.limit:
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.cancel()
        self._open[scope] = None

    def leave(self, scope: trio.CancelScope) -> None:
        self._open.pop(scope, None)


def _check_request(request: h11.Request) -> None:
    """What h11 accepts but this server refuses: other HTTP versions, targets that are not a
    path, long header lists, request bodies."""
    if request.http_version not in _VERSIONS:
        raise _Refusal(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.x is served")
    if not request.target.startswith(b"/"):
        raise _Refusal(HTTPStatus.BAD_REQUEST, "request target is not an absolute path")
    if len(request.headers) > MAX_HEADERS:
        raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields")
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            raise _Refusal(HTTPStatus.BAD_REQUEST, "request bodies are not accepted")


async def _receive_request(
    stream: trio.abc.Stream, connection: h11.Connection, max_head_bytes: int
) -> h11.Request | None:
    """The request, checked; None if the peer closed before sending a whole one."""
    received = 0
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            raise _Refusal(HTTPStatus(exc.error_status_hint), str(exc)) from None
        if isinstance(event, h11.Request):
            _check_request(event)
            return event
        if event is not h11.NEED_DATA:
            return None  # ConnectionClosed: the only other event before a request
        chunk = await stream.receive_some(RECEIVE_CHUNK)
        if not chunk:
            return None
        received += len(chunk)
        if received > max_head_bytes:
            raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        connection.receive_data(bytes(chunk))


def _response(
    connection: h11.Connection,
    status: HTTPStatus,
    document: object,
    *,
    include_body: bool = True,
) -> bytes:
    body = json.dumps(document, separators=(",", ":")).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
    ]
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        headers.append(("Allow", ", ".join(method.decode() for method in _ALLOWED_METHODS)))
    head = h11.Response(status_code=status.value, headers=headers, reason=status.phrase)
    data = connection.send(head) or b""
    if include_body:
        data += connection.send(h11.Data(data=body)) or b""
    return data + (connection.send(h11.EndOfMessage()) or b"")


def _refusal_response(
    connection: h11.Connection, refusal: _Refusal, *, include_body: bool = True
) -> bytes:
    document = {"error": refusal.status.phrase.lower(), "detail": refusal.reason}
    return _response(connection, refusal.status, document, include_body=include_body)


def _rejected(connection: h11.Connection, refusal: _Refusal) -> bytes:
    """The answer to a request refused before it was read in full (malformed, large, slow)."""
    log.debug("health_request_rejected", status=refusal.status.value, reason=refusal.reason)
    return _refusal_response(connection, refusal)


def _answer_request(
    connection: h11.Connection, request: h11.Request, answer: Callable[[], HealthAnswer]
) -> bytes:
    include_body = request.method != b"HEAD"
    if request.method not in _ALLOWED_METHODS:
        refusal = _Refusal(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD are served")
        return _refusal_response(connection, refusal, include_body=include_body)
    if request.target.split(b"?", 1)[0] != HEALTH_PATH.encode():
        refusal = _Refusal(HTTPStatus.NOT_FOUND, f"only {HEALTH_PATH} is served")
        return _refusal_response(connection, refusal, include_body=include_body)
    try:
        current = answer()
    except Exception as exc:
        # A bug in building the snapshot must not take the endpoint (or the daemon) down.
        log.error("health_snapshot_failed", error=repr(exc))
        refusal = _Refusal(HTTPStatus.INTERNAL_SERVER_ERROR, "health snapshot failed")
        return _refusal_response(connection, refusal, include_body=include_body)
    status = HTTPStatus.OK if current.up else HTTPStatus.SERVICE_UNAVAILABLE
    return _response(connection, status, current.document, include_body=include_body)


async def _drain(stream: trio.abc.Stream, limits: HttpLimits) -> None:
    """Read and drop what the client still sends, briefly, so closing does not reset."""
    with trio.move_on_after(limits.drain_timeout):
        received = 0
        while received < DRAIN_BYTES:
            chunk = await stream.receive_some(RECEIVE_CHUNK)
            if not chunk:
                return
            received += len(chunk)


async def _serve_connection(
    stream: trio.SocketStream, answer: Callable[[], HealthAnswer], limits: HttpLimits
) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
    response: bytes | None = None
    with trio.move_on_after(limits.request_timeout) as reading:
        try:
            request = await _receive_request(stream, connection, limits.max_head_bytes)
            if request is not None:
                response = _answer_request(connection, request, answer)
        except _Refusal as refused:
            response = _rejected(connection, refused)
    if reading.cancelled_caught:
        timed_out = _Refusal(HTTPStatus.REQUEST_TIMEOUT, "request not received in time")
        response = _rejected(connection, timed_out)
    if response is None:
        return
    with trio.move_on_after(limits.write_timeout):
        await stream.send_all(response)
        await stream.send_eof()
        await _drain(stream, limits)


async def _handle(
    stream: trio.SocketStream,
    answer: Callable[[], HealthAnswer],
    limits: HttpLimits,
    connections: _Connections,
) -> None:
    """One connection, never raising: a client's misbehaviour must not end the server."""
    async with stream:
        scope = trio.CancelScope()
        connections.admit(scope)
        try:
            with scope:
                await _serve_connection(stream, answer, limits)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("health_connection_dropped", error=str(exc) or type(exc).__name__)
        finally:
            connections.leave(scope)
        if scope.cancelled_caught:
            log.debug("health_request_rejected", status=None, reason="dropped for a newer one")


async def serve_listeners(
    listeners: list[trio.SocketListener],
    answer: Callable[[], HealthAnswer],
    *,
    limits: HttpLimits = DEFAULT_LIMITS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/health` on bound `listeners` until cancelled; `task_status` gets them.

    `answer` is called once per `/health` request, on the Trio thread; it must be quick.
    """
    host, port = listeners[0].socket.getsockname()[:2]
    log.info("health_endpoint_listening", address=f"{host}:{port}", path=HEALTH_PATH)
    connections = _Connections(limits.max_connections)
    task_status.started(listeners)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, answer, limits, connections)

    await trio.serve_listeners(handler, listeners)


async def serve_health(
    listen: tuple[str, int],
    answer: Callable[[], HealthAnswer],
    *,
    limits: HttpLimits = DEFAULT_LIMITS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/health` on `listen` until cancelled; a bind failure (`OSError`) is raised."""
    host, port = listen
    listeners = await trio.open_tcp_listeners(port, host=host)
    await serve_listeners(listeners, answer, limits=limits, task_status=task_status)
