"""One solver nobody can reach holds back only its own reminders (issue #12), against a real
relay behind a proxy that refuses every DM addressed to that solver, forever."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket_url, serve_websocket

from serbero.config import RelayConfig
from tests.daemon.support import (
    DM_TIMEOUT,
    REJECTION,
    Harness,
    eventually,
    in_thread,
    running_daemon,
)
from tests.support.clocks import OffsetClock
from tests.support.relay_fixtures import LocalRelayProcess

RENOTIFY_AFTER = 2
# Each push of the wall clock makes the dispute due again at the next 1 s timer cycle.
PUSH_SECONDS = RENOTIFY_AFTER + 3


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "serbero.db")


@asynccontextmanager
async def refusing_proxy(upstream: str, refused_pubkey: str) -> AsyncIterator[str]:
    """A relay URL that forwards everything to `upstream` except EVENTs addressed (`p`
    tag) to `refused_pubkey`, which it answers itself with `OK false`."""

    async def handle(request: WebSocketRequest) -> None:
        client = await request.accept()
        async with open_websocket_url(upstream) as relay, trio.open_nursery() as nursery:

            async def downstream() -> None:
                with suppress(ConnectionClosed):
                    while True:
                        await client.send_message(await relay.get_message())
                nursery.cancel_scope.cancel()

            async def filtered_upstream() -> None:
                with suppress(ConnectionClosed):
                    while True:
                        text = await client.get_message()
                        frame = json.loads(text)
                        if frame[0] == "EVENT" and ["p", refused_pubkey] in [
                            tag[:2] for tag in frame[1]["tags"]
                        ]:
                            refusal = ["OK", frame[1]["id"], False, REJECTION]
                            await client.send_message(json.dumps(refusal))
                        else:
                            await relay.send_message(text)
                nursery.cancel_scope.cancel()

            nursery.start_soon(downstream)
            nursery.start_soon(filtered_upstream)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handle, "127.0.0.1", 0, None)
        yield f"ws://127.0.0.1:{server.port}"
        nursery.cancel_scope.cancel()


async def test_a_solver_whose_dms_are_refused_forever_holds_back_only_its_own_reminders(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    clock = OffsetClock()
    async with Harness(
        local_relay.url,
        db_path,
        valid_solvers=2,
        renotification_seconds=RENOTIFY_AFTER,
        renotification_check_interval_seconds=1,
    ) as h:
        stuck, reachable = h.solver_keys
        async with refusing_proxy(local_relay.url, stuck.public_hex) as proxy_url:
            config = msgspec.structs.replace(h.config, relays=(RelayConfig(url=proxy_url),))
            async with running_daemon(config, wall_clock=clock):
                await in_thread(h.sim.open_dispute, "dispute-stuck", "buyer")
                inbox = h.inboxes[1]
                await in_thread(inbox.wait_for_count, 1, DM_TIMEOUT)
                for reminders in (1, 2, 3):
                    clock.advance(PUSH_SECONDS)
                    await in_thread(inbox.wait_for_count, reminders, DM_TIMEOUT, "lifecycle_state")
                await eventually(lambda: reminders_sent(h, reachable.public_hex) == 3)
    assert h.inboxes[0].messages() == []
    owed = h.rows(
        "notification_outbox",
        "notif_type = 're-notification' AND state = 'pending' AND solver_pubkey = ?",
        (stuck.public_hex,),
    )
    assert owed == 1, "the stuck solver's reminder is owed once, not stacked"


def reminders_sent(h: Harness, solver: str) -> int:
    return h.rows(
        "notifications",
        "notif_type = 're-notification' AND status = 'sent' AND solver_pubkey = ?",
        (solver,),
    )
