"""`serbero health-check`: probe the daemon's `/health` endpoint for runit's `check` (BEY-11).

Standard library sockets, so the service needs no `curl`, and a hard 2 s budget for the
whole exchange, so `sv check` never hangs (a per-read timeout would let a server that
trickles bytes hold the probe far longer). Up means HTTP 200; anything else (503, refused,
timeout, garbage) is down.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from typing import Any, Final

import msgspec

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HEALTH_PATH",
    "PROBE_TIMEOUT_SECONDS",
    "ProbeError",
    "ProbeResult",
    "health_url",
    "probe",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 9797
HEALTH_PATH: Final = "/health"
PROBE_TIMEOUT_SECONDS: Final = 2.0
# A health answer is a few hundred bytes; more than this is not our endpoint.
MAX_ANSWER_BYTES: Final = 64 * 1024
RECV_CHUNK: Final = 4096


class ProbeError(ValueError):
    """A health URL this probe cannot use (malformed, not plain ASCII http, no host)."""


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    """`up` iff the endpoint answered 200; `detail` is one line for the operator; `document`
    the JSON object the endpoint answered with (None when there was none)."""

    up: bool
    status: int | None
    detail: str
    document: dict[str, Any] | None = None


def health_url(address: tuple[str, int] | None) -> str:
    """The URL for a `[health] listen` address (the default address when None)."""
    host, port = address if address is not None else (DEFAULT_HOST, DEFAULT_PORT)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{HEALTH_PATH}"


def _document(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _summary(body: bytes, data: dict[str, Any] | None) -> str:
    if data is None:
        return f"{len(body)} bytes"
    connected = data.get("relays_connected")
    total = data.get("relays_total")
    if isinstance(connected, int) and isinstance(total, int):
        return f"{connected} of {total} relays connected"
    return f"{len(body)} bytes"


def _status_code(head: bytes) -> int | None:
    """The status of an `HTTP/1.x NNN reason` line, None when it is not one."""
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
        return None
    return int(parts[1]) if parts[1].isdigit() else None


def _exchange(host: str, port: int, request: bytes, deadline: float) -> bytes:
    """Send `request`, read until the server closes; every step bounded by `deadline`."""

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left

    with socket.create_connection((host, port), timeout=remaining()) as sock:
        sock.settimeout(remaining())
        sock.sendall(request)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_ANSWER_BYTES:
            sock.settimeout(remaining())
            chunk = sock.recv(RECV_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)


def probe(url: str, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> ProbeResult:
    """GET `url` once, all within `timeout` seconds in total; never raises on I/O errors."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 80
    except ValueError as exc:
        raise ProbeError(f"health URL {url!r} is malformed: {exc}") from None
    if parts.scheme != "http" or not parts.hostname or not url.isascii():
        raise ProbeError(f"health URL must be http://host:port/path, got {url!r}")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    host = parts.hostname
    shown_host = f"[{host}]" if ":" in host else host
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {shown_host}:{port}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    try:
        answer = _exchange(host, port, request, time.monotonic() + timeout)
    except OSError as exc:
        return ProbeResult(up=False, status=None, detail=f"unreachable: {url}: {exc}")
    head, _, body = answer.partition(b"\r\n\r\n")
    status = _status_code(head.split(b"\r\n", 1)[0])
    if status is None:
        return ProbeResult(up=False, status=None, detail=f"down: {url}: not an HTTP answer")
    verdict = "up" if status == 200 else "down"
    document = _document(body)
    return ProbeResult(
        up=status == 200,
        status=status,
        detail=f"{verdict}: HTTP {status}, {_summary(body, document)}",
        document=document,
    )
