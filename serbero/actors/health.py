"""The optional health endpoint for supervisors (BEY-11): `GET /health` on a loopback port.

Served by the daemon's own Trio code, no web framework: one request per connection, parsed
by a small and strict HTTP/1.1 reader, answered, closed. Every connection is bounded in
size (`MAX_HEAD_BYTES`), time (`REQUEST_TIMEOUT` to send the request, `WRITE_TIMEOUT` to
take the answer) and number (`MAX_CONNECTIONS` at once; more are closed unanswered), so a
stuck or hostile client can neither hold the daemon nor grow its memory.

`/health` answers 200 when at least one relay is connected and 503 when none is, with a
JSON body either way (relays connected, last dispute event age, queue depths, actor
states; see `health_answer`). Other paths are 404, other methods 405, malformed requests
400. Only loopback addresses are accepted by the config (`[health] listen`).
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, Final, Protocol

import msgspec
import trio

from serbero.actors.relay import RelayState
from serbero.log import get_logger

__all__ = [
    "BIND_RETRY_SECONDS",
    "HEALTH_PATH",
    "MAX_CONNECTIONS",
    "MAX_HEAD_BYTES",
    "REQUEST_TIMEOUT",
    "ActorView",
    "HealthAnswer",
    "HealthView",
    "HttpError",
    "HttpLimits",
    "RequestHead",
    "health_answer",
    "parse_request_head",
    "run_health_endpoint",
    "serve_health",
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
# While the configured address cannot be bound, the daemon tries again this often.
BIND_RETRY_SECONDS: Final = 30.0
RECEIVE_CHUNK: Final = 4096
# The document's `status`: up while at least one relay is connected.
STATUS_OK: Final = "ok"
STATUS_NO_RELAY: Final = "no_relay_connected"

_ALLOWED_METHODS: Final = ("GET", "HEAD")
_VERSIONS: Final = ("HTTP/1.1", "HTTP/1.0")
_TOKEN_CHARS: Final = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
_HEAD_END: Final = b"\r\n\r\n"


class HttpError(ValueError):
    """A request this server will not serve; `status` is the answer it gets."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HttpLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Every bound of the server; defaults are the module constants (tests shrink them)."""

    max_head_bytes: int = MAX_HEAD_BYTES
    request_timeout: float = REQUEST_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    drain_timeout: float = DRAIN_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


DEFAULT_LIMITS: Final = HttpLimits()


class RequestHead(msgspec.Struct, frozen=True):
    """The parts of a request line and header block this server looks at."""

    method: str
    path: str
    version: str
    headers: tuple[tuple[str, str], ...]


class HealthAnswer(msgspec.Struct, frozen=True):
    """What `/health` says right now: `up` picks 200 or 503; `document` is the JSON body."""

    up: bool
    document: dict[str, Any]


def _is_token(text: str) -> bool:
    return bool(text) and all(ch in _TOKEN_CHARS for ch in text)


def _parse_header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon:
        raise HttpError(HTTPStatus.BAD_REQUEST, "header line without a colon")
    if not _is_token(name):
        # Also rejects whitespace before the colon (RFC 9112 §5.1) and obsolete line folding.
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header name")
    value = value.strip(" \t")
    if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
        raise HttpError(HTTPStatus.BAD_REQUEST, "control character in a header value")
    return name.lower(), value


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head (up to, not including, the blank line); raise HttpError if bad.

    Strict on purpose: CRLF line ends only, ASCII only, `origin-form` targets, no request
    body, exactly one `Host` on HTTP/1.1.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "non-ASCII request head") from None
    lines = text.split("\r\n")
    if any("\n" in line or "\r" in line for line in lines):
        raise HttpError(HTTPStatus.BAD_REQUEST, "bare CR or LF in the request head")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if not _is_token(method):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed method")
    if not version.startswith("HTTP/"):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP version")
    if version not in _VERSIONS:
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.x is served")
    if not target.startswith("/") or any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in target):
        raise HttpError(HTTPStatus.BAD_REQUEST, "request target is not an absolute path")
    header_lines = lines[1:]
    if len(header_lines) > MAX_HEADERS:
        raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields")
    headers = tuple(_parse_header(line) for line in header_lines)
    names = [name for name, _ in headers]
    if version == "HTTP/1.1" and names.count("host") != 1:
        raise HttpError(HTTPStatus.BAD_REQUEST, "HTTP/1.1 needs exactly one Host header")
    if "transfer-encoding" in names:
        raise HttpError(HTTPStatus.BAD_REQUEST, "request bodies are not accepted")
    for name, value in headers:
        if name == "content-length" and value != "0":
            raise HttpError(HTTPStatus.BAD_REQUEST, "request bodies are not accepted")
    path = target.split("?", 1)[0]
    return RequestHead(method=method, path=path, version=version, headers=headers)


async def _read_head(stream: trio.abc.Stream, max_bytes: int) -> bytes | None:
    """Bytes up to the blank line ending the head; None if the peer closed before sending one."""
    buffer = bytearray()
    scanned = 0
    while True:
        end = buffer.find(_HEAD_END, max(0, scanned - len(_HEAD_END) + 1))
        if end >= 0:
            if end > max_bytes:
                break
            return bytes(buffer[:end])
        scanned = len(buffer)
        if len(buffer) > max_bytes:
            break
        chunk = await stream.receive_some(RECEIVE_CHUNK)
        if not chunk:
            return None
        buffer += chunk
    raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")


def _response(
    status: HTTPStatus, body: bytes, *, content_type: str, include_body: bool, allow: bool = False
) -> bytes:
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if allow:
        lines.append(f"Allow: {', '.join(_ALLOWED_METHODS)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head + body if include_body else head


def _error_response(error: HttpError, *, include_body: bool = True) -> bytes:
    body = json.dumps({"error": error.status.phrase.lower(), "detail": error.reason}).encode()
    return _response(
        error.status,
        body,
        content_type="application/json",
        include_body=include_body,
        allow=error.status == HTTPStatus.METHOD_NOT_ALLOWED,
    )


def _answer_request(request: RequestHead, answer: Callable[[], HealthAnswer]) -> bytes:
    include_body = request.method != "HEAD"
    if request.method not in _ALLOWED_METHODS:
        error = HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD are served")
        return _error_response(error, include_body=include_body)
    if request.path != HEALTH_PATH:
        error = HttpError(HTTPStatus.NOT_FOUND, f"only {HEALTH_PATH} is served")
        return _error_response(error, include_body=include_body)
    try:
        current = answer()
    except Exception as exc:
        # A bug in building the snapshot must not take the endpoint (or the daemon) down.
        log.error("health_snapshot_failed", error=repr(exc))
        error = HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "health snapshot failed")
        return _error_response(error, include_body=include_body)
    status = HTTPStatus.OK if current.up else HTTPStatus.SERVICE_UNAVAILABLE
    body = json.dumps(current.document, separators=(",", ":")).encode()
    return _response(status, body, content_type="application/json", include_body=include_body)


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
    response: bytes | None = None
    with trio.move_on_after(limits.request_timeout) as reading:
        try:
            head = await _read_head(stream, limits.max_head_bytes)
            if head is not None:
                response = _answer_request(parse_request_head(head), answer)
        except HttpError as exc:
            log.debug("health_request_rejected", status=exc.status.value, reason=exc.reason)
            response = _error_response(exc)
    if reading.cancelled_caught:
        log.debug("health_request_rejected", status=408, reason="request not received in time")
        response = _error_response(
            HttpError(HTTPStatus.REQUEST_TIMEOUT, "request not received in time")
        )
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
    slots: trio.CapacityLimiter,
) -> None:
    """One connection, never raising: a client's misbehaviour must not end the server."""
    async with stream:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            log.debug("health_request_rejected", status=None, reason="too many connections")
            return
        try:
            await _serve_connection(stream, answer, limits)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("health_connection_dropped", error=str(exc) or type(exc).__name__)
        finally:
            slots.release()


async def _serve_listeners(
    listeners: list[trio.SocketListener],
    answer: Callable[[], HealthAnswer],
    limits: HttpLimits,
    task_status: trio.TaskStatus[list[trio.SocketListener]],
) -> None:
    host, port = listeners[0].socket.getsockname()[:2]
    log.info("health_endpoint_listening", address=f"{host}:{port}", path=HEALTH_PATH)
    slots = trio.CapacityLimiter(limits.max_connections)
    task_status.started(listeners)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, answer, limits, slots)

    await trio.serve_listeners(handler, listeners)


async def serve_health(
    listen: tuple[str, int],
    answer: Callable[[], HealthAnswer],
    *,
    limits: HttpLimits = DEFAULT_LIMITS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/health` on `listen` until cancelled; `task_status` gets the bound listeners.

    `answer` is called once per `/health` request, on the Trio thread; it must be quick.
    A bind failure (`OSError`) is raised.
    """
    host, port = listen
    listeners = await trio.open_tcp_listeners(port, host=host)
    await _serve_listeners(listeners, answer, limits, task_status)


# --- the daemon's answer ------------------------------------------------------------------


class ActorView(Protocol):
    """What `/health` shows of one supervised actor."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def restarts(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...


class HealthView(Protocol):
    """What `/health` reads of the daemon's live snapshot (the supervisor's `DaemonSnapshot`).

    Spelled out here so this module never imports the supervisor, which imports it.
    """

    @property
    def taken_at(self) -> int: ...
    @property
    def started_at(self) -> int: ...
    @property
    def relays(self) -> Sequence[RelayState]: ...
    @property
    def relays_connected(self) -> int: ...
    @property
    def last_dispute_event_at(self) -> int | None: ...
    @property
    def events_received(self) -> int: ...
    @property
    def ingest_backlog(self) -> int: ...
    @property
    def decisions_in_flight(self) -> int: ...
    @property
    def outbox_pending(self) -> int | None: ...
    @property
    def outbox_in_flight(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def delivery_failures(self) -> int: ...
    @property
    def actors(self) -> Sequence[ActorView]: ...


def health_answer(snapshot: HealthView) -> HealthAnswer:
    """The `/health` document for one daemon snapshot; up iff a relay is connected.

    Fields: `status` (`ok` / `no_relay_connected`), `taken_at`, `uptime_seconds`,
    `relays_connected`, `relays_total`, `relays` (url, connected, since,
    reconnect_attempts, last_error), `last_dispute_event_at` and `last_dispute_event_age`
    (null before the first event), `events_received`, `queues` (ingest_backlog,
    decisions_in_flight, outbox_pending, outbox_in_flight), `deliveries` (delivered,
    failed), `actors` (name -> state, restarts, last_error).
    """
    up = snapshot.relays_connected > 0
    event_at = snapshot.last_dispute_event_at
    document: dict[str, Any] = {
        "status": STATUS_OK if up else STATUS_NO_RELAY,
        "taken_at": snapshot.taken_at,
        "uptime_seconds": max(0, snapshot.taken_at - snapshot.started_at),
        "relays_connected": snapshot.relays_connected,
        "relays_total": len(snapshot.relays),
        "relays": [
            {
                "url": relay.url,
                "connected": relay.connected,
                "since": relay.since,
                "reconnect_attempts": relay.reconnect_attempts,
                "last_error": relay.last_error,
            }
            for relay in snapshot.relays
        ],
        "last_dispute_event_at": event_at,
        "last_dispute_event_age": None
        if event_at is None
        else max(0, snapshot.taken_at - event_at),
        "events_received": snapshot.events_received,
        "queues": {
            "ingest_backlog": snapshot.ingest_backlog,
            "decisions_in_flight": snapshot.decisions_in_flight,
            "outbox_pending": snapshot.outbox_pending,
            "outbox_in_flight": snapshot.outbox_in_flight,
        },
        "deliveries": {
            "delivered": snapshot.delivered,
            "failed": snapshot.delivery_failures,
        },
        "actors": {
            actor.name: {
                "state": actor.state,
                "restarts": actor.restarts,
                "last_error": actor.last_error,
            }
            for actor in snapshot.actors
        },
    }
    return HealthAnswer(up=up, document=document)


async def run_health_endpoint(
    listen: tuple[str, int],
    snapshot: Callable[[], HealthView],
    *,
    bind_retry_seconds: float = BIND_RETRY_SECONDS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the daemon's `/health` on `listen` until cancelled (BEY-11).

    `snapshot` is the supervisor's live view; it is read once per request. The endpoint is
    an aid for supervisors, never a reason to stop notifying: while the address cannot be
    bound (say, the port is taken) it logs and tries again every `bind_retry_seconds`.
    """
    host, port = listen
    while True:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
            break
        except OSError as exc:
            log.error(
                "health_endpoint_unavailable",
                address=f"{host}:{port}",
                error=str(exc),
                retry_seconds=bind_retry_seconds,
            )
            await trio.sleep(bind_retry_seconds)

    def answer() -> HealthAnswer:
        return health_answer(snapshot())

    await _serve_listeners(listeners, answer, DEFAULT_LIMITS, task_status)
