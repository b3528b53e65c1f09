"""A scripted model API on loopback: OpenAI-compatible and Anthropic answers, real HTTP.

Tests, benchmarks and the demo point a reasoning provider at `ScriptedLLM.url` and decide
what each call gets back: queue `Reply`s with `script()` (one per request, in order), or
give a `default` used once the queue is empty. Every request is recorded (method, path,
headers, body, arrival time), so a test can check the exact wire shape an adapter sent.
A default that is a function (a responder) is handed only model calls, JSON with a
`messages` list: anything else gets 400 as from a real API (a stray request from another
process on the machine must not make a responder raise and take the server down).

Inside a Trio test: `async with open_scripted_llm() as llm: ...`. From code that is not in
a Trio loop (a daemon in a subprocess, the demo): `with scripted_llm_thread() as llm: ...`
runs the same server on its own Trio loop in a thread. As its own process (so its CPU is
not the caller's, as for a benchmark):

    .venv/bin/python -m tests.support.scripted_llm --format openai --content TEXT [--delay S]

answers every request with that content, prints its URL on one stdout line once it
listens, and serves until its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import h11
import msgspec
import trio

__all__ = [
    "RecordedRequest",
    "Reply",
    "ScriptedLLM",
    "anthropic_reply",
    "json_reply",
    "open_scripted_llm",
    "openai_reply",
    "scripted_llm_thread",
    "serve_until_stdin_closes",
]

LOOPBACK = "127.0.0.1"
RECEIVE_BYTES = 65_536
DRIP_PIECES = 10


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """One scripted answer. `delay` seconds pass before it is sent (`math.inf`: never);
    `drop` closes the connection instead of answering; `drip` > 0 sends the body in
    `DRIP_PIECES` pieces with `drip` seconds between them (a slow but live upstream)."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    delay: float = 0.0
    drop: bool = False
    drip: float = 0.0


class RecordedRequest(msgspec.Struct, frozen=True):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Callable[[RecordedRequest], Reply]


def json_reply(document: Any, *, status: int = 200, delay: float = 0.0) -> Reply:
    return Reply(status=status, body=json.dumps(document).encode(), delay=delay)


def openai_reply(content: str | None, *, delay: float = 0.0) -> Reply:
    """A chat-completions answer whose `choices[0].message.content` is `content`."""
    return json_reply(
        {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "scripted",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
        delay=delay,
    )


def anthropic_reply(*texts: str, blocks: list[Any] | None = None, delay: float = 0.0) -> Reply:
    """A Messages answer with one text block per text (or exactly `blocks`)."""
    content = blocks if blocks is not None else [{"type": "text", "text": t} for t in texts]
    return json_reply(
        {
            "id": "msg_scripted",
            "type": "message",
            "role": "assistant",
            "model": "scripted",
            "content": content,
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
        delay=delay,
    )


class ScriptedLLM:
    """The server's state: the reply queue, the fallback and the recorded requests."""

    def __init__(self, default: Reply | Responder | None = None) -> None:
        self._default = default
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._queue.extend(replies)

    def set_default(self, default: Reply | Responder | None) -> None:
        with self._lock:
            self._default = default

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._queue:
                return self._queue.popleft()
            default = self._default
        if default is None:
            return json_reply({"error": "no scripted reply left"}, status=599)
        if isinstance(default, Reply):
            return default
        if not _is_model_call(request):
            return json_reply({"error": "not a model API request"}, status=400)
        return default(request)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK, backlog=1024)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while await self._exchange(stream, connection):
                    connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return

    async def _exchange(self, stream: trio.SocketStream, connection: h11.Connection) -> bool:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(RECEIVE_BYTES))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
        assert head is not None
        request = RecordedRequest(
            method=head.method.decode(),
            path=head.target.decode(),
            headers={name.decode().lower(): value.decode() for name, value in head.headers},
            body=bytes(body),
            received_at=time.monotonic(),
        )
        reply = self._next_reply(request)
        if reply.delay == math.inf:
            await trio.sleep_forever()
        await trio.sleep(reply.delay)
        if reply.drop:
            return False
        headers = [*reply.headers, ("content-length", str(len(reply.body)))]
        await stream.send_all(
            connection.send(h11.Response(status_code=reply.status, headers=headers)) or b""
        )
        pieces = _pieces(reply.body, DRIP_PIECES if reply.drip > 0 else 1)
        for index, piece in enumerate(pieces):
            if index:
                await trio.sleep(reply.drip)
            await stream.send_all(connection.send(h11.Data(data=piece)) or b"")
        await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE


def _is_model_call(request: RecordedRequest) -> bool:
    """Whether the body is a chat call as the OpenAI and Anthropic APIs take it: a JSON
    object with a non-empty `messages` list of objects that each have `content`."""
    try:
        document = request.json()
    except ValueError:
        return False
    messages = document.get("messages") if isinstance(document, dict) else None
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(isinstance(m, dict) and "content" in m for m in messages)
    )


def _pieces(body: bytes, count: int) -> list[bytes]:
    size = max(-(-len(body) // count), 1)
    return [body[at : at + size] for at in range(0, len(body), size)]


@asynccontextmanager
async def open_scripted_llm(default: Reply | Responder | None = None) -> AsyncIterator[ScriptedLLM]:
    """Serve a `ScriptedLLM` on a loopback port for the duration of the block."""
    llm = ScriptedLLM(default)
    async with trio.open_nursery() as nursery:
        await nursery.start(llm.serve)
        yield llm
        nursery.cancel_scope.cancel()


@contextmanager
def scripted_llm_thread(default: Reply | Responder | None = None) -> Iterator[ScriptedLLM]:
    """Serve a `ScriptedLLM` from a thread with its own Trio loop, for non-Trio callers."""
    llm = ScriptedLLM(default)
    ready = threading.Event()
    stop: list[trio.CancelScope] = []
    token: list[trio.lowlevel.TrioToken] = []

    async def run() -> None:
        with trio.CancelScope() as scope:
            stop.append(scope)
            token.append(trio.lowlevel.current_trio_token())
            async with trio.open_nursery() as nursery:
                await nursery.start(llm.serve)
                ready.set()

    thread = threading.Thread(target=trio.run, args=(run,), name="scripted-llm", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("scripted LLM server did not start")
    try:
        yield llm
    finally:
        trio.from_thread.run_sync(stop[0].cancel, trio_token=token[0])
        thread.join(10)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A scripted model API on loopback.")
    parser.add_argument("--format", choices=("openai", "anthropic"), required=True)
    parser.add_argument("--content", required=True, help="the answer text of every reply")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    return parser.parse_args(argv)


async def serve_until_stdin_closes(default: Reply | Responder) -> None:
    """Serve on a loopback port, print the URL on one stdout line, stop when stdin closes
    (the server as its own process, for the benches)."""
    llm = ScriptedLLM(default)
    async with trio.open_nursery() as nursery:
        await nursery.start(llm.serve)
        print(llm.url, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    make = openai_reply if args.format == "openai" else anthropic_reply
    trio.run(serve_until_stdin_closes, make(args.content, delay=args.delay))


if __name__ == "__main__":
    main()
