"""One JSON POST to a model API, with the timeout, retry budget and error taxonomy of MED-187/188.

Both adapters go through `Transport.post_json`, so they classify failures the same way
(MED-187/188): a request that runs past its deadline is `timeout`; a connection that cannot
be made or breaks is `unreachable`; an HTTP 408, 429 or 5xx is `unreachable` and retried;
any other non-2xx fails at once; a 2xx body that is not a JSON object is
`malformed_response`. Retries wait a short, bounded backoff (injectable, so tests do not
sleep). The credential travels only in the request headers: error messages quote at most
200 bytes of the provider's body, with the key scrubbed from them if a provider echoes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import httpx
import msgspec
import trio

from serbero.config import MASK, Secret
from serbero.log import get_logger
from serbero.reasoning.errors import (
    MalformedResponse,
    ReasoningError,
    ReasoningTimeout,
    ReasoningUnreachable,
)

__all__ = [
    "BACKOFF_BASE_SECONDS",
    "BACKOFF_CAP_SECONDS",
    "BODY_EXCERPT_BYTES",
    "MAX_RESPONSE_BYTES",
    "Backoff",
    "Transport",
    "exponential_backoff",
]

BODY_EXCERPT_BYTES: Final = 200
# A model answer is a few kilobytes; a body past this is refused unread (hostile or broken).
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
# Retries wait 0.25 s, 0.5 s, 1 s, then 2 s each: long enough to let a rate limit or a
# restarting upstream recover, short enough that a default budget of two attempts stays
# well inside an engine tick.
BACKOFF_BASE_SECONDS: Final = 0.25
BACKOFF_CAP_SECONDS: Final = 2.0

log = get_logger("serbero.reasoning")

# Seconds to wait after the given failed attempt (1-based) before the next one.
Backoff = Callable[[int], float]
Read = TypeVar("Read")


def exponential_backoff(failed_attempt: int) -> float:
    """The default wait before the next attempt: doubling from 0.25 s, capped at 2 s."""
    return min(BACKOFF_BASE_SECONDS * 2.0 ** min(failed_attempt - 1, 16), BACKOFF_CAP_SECONDS)


class Transport:
    """Posts JSON bodies for one configured provider through a shared `httpx.AsyncClient`.

    `error_prefix` starts every HTTP status message (`http` or `anthropic http`, as the
    reference words them); `report_retry_after` appends a `Retry-After` header's value.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        provider: str,
        model: str,
        secret: Secret,
        timeout: float,
        attempts: int,
        error_prefix: str = "http",
        report_retry_after: bool = False,
        backoff: Backoff = exponential_backoff,
    ) -> None:
        self._client = client
        self._provider = provider
        self._model = model
        self._secret = secret
        self.timeout = timeout
        self.attempts = max(attempts, 1)
        self._error_prefix = error_prefix
        self._report_retry_after = report_retry_after
        self._backoff = backoff

    def __repr__(self) -> str:
        return (
            f"Transport(provider={self._provider!r}, model={self._model!r}, "
            f"timeout={self.timeout!r}, attempts={self.attempts!r})"
        )

    async def post_json(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        read: Callable[[dict[str, Any]], Read],
    ) -> tuple[Read, int]:
        """POST `body`, pass the decoded JSON object of a 2xx answer to `read`, and return
        what it returns with the number of attempts made.

        Retries what may pass (timeouts, transport errors, 408/429/5xx, including a status
        `read` finds inside a 2xx body) until the attempts are spent; raises the last
        `ReasoningError`, with `attempts` set.
        """
        attempt = 1
        while True:
            try:
                return read(await self._attempt(url, headers, body)), attempt
            except ReasoningError as error:
                error.attempts = attempt
                if not error.retryable or attempt >= self.attempts:
                    raise
                log.warning(
                    "reasoning_call_retrying",
                    provider=self._provider,
                    model=self._model,
                    attempt=attempt,
                    attempts=self.attempts,
                    category=error.category,
                    status=error.status,
                )
                await trio.sleep(self._backoff(attempt))
                attempt += 1

    async def _attempt(self, url: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        with trio.move_on_after(self.timeout) as deadline:
            try:
                status, reply_headers, data = await self._exchange(url, headers, body)
            except httpx.TimeoutException:
                raise self._timeout() from None
            except httpx.DecodingError:
                raise MalformedResponse(
                    f"{self._provider} answered with a body that cannot be decoded"
                ) from None
            except httpx.HTTPError as exc:
                # Connect/read/write/protocol errors; the type name says which, the
                # exception text is not quoted (it may carry the URL's userinfo).
                raise ReasoningUnreachable(
                    f"{self._provider} unreachable: {type(exc).__name__}"
                ) from None
        if deadline.cancelled_caught:
            raise self._timeout()
        if not 200 <= status < 300:
            raise self.status_error(status, data, reply_headers.get("retry-after"))
        try:
            document = msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError):
            raise MalformedResponse(
                f"{self._provider} answered {status} with a body that is not JSON"
            ) from None
        if not isinstance(document, dict):
            raise MalformedResponse(
                f"{self._provider} answered {status} with JSON that is not an object"
            )
        return document

    async def _exchange(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, httpx.Headers, bytes]:
        request = self._client.build_request(
            "POST", url, headers=headers, content=body, timeout=self.timeout
        )
        response = await self._client.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise MalformedResponse(
                        f"{self._provider} answer exceeds {MAX_RESPONSE_BYTES} bytes"
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        return response.status_code, response.headers, b"".join(chunks)

    def _timeout(self) -> ReasoningTimeout:
        return ReasoningTimeout(f"{self._provider} did not answer within {self.timeout:g} s")

    def status_error(
        self, status: int, data: bytes, retry_after: str | None = None
    ) -> ReasoningUnreachable:
        """The error for an HTTP status: the status and ≤200 bytes of the body, credential
        scrubbed; retryable for 408, 429 and 5xx (MED-187)."""
        if self._secret:
            data = data.replace(self._secret.reveal().encode(), MASK.encode())
        excerpt = " ".join(data[:BODY_EXCERPT_BYTES].decode("utf-8", "replace").split())
        message = f"{self._error_prefix} {status}: {excerpt}"
        if self._report_retry_after and retry_after is not None:
            message += f" (retry-after: {retry_after[:32]})"
        return ReasoningUnreachable(message, status=status)
