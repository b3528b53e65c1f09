"""The operator tools against a real running daemon: `/health` wired by the supervisor, and
`serbero status` / `show` reading the live database read-only while the daemon writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from serbero.cli import main
from serbero.config import HealthConfig
from serbero.ops.healthcheck import probe
from serbero.protocol.keys import Keys
from tests.daemon.support import eventually, free_port, make_config, running_daemon
from tests.relay.raw_relay import RawConnection, open_raw_relay


async def quiet_relay(conn: RawConnection) -> None:
    """Accepts subscriptions and sends nothing: the daemon counts it as connected."""
    while True:
        frame = await conn.receive_json()
        if frame[0] == "REQ":
            await conn.send_json(["EOSE", frame[1]])


async def fetch_json(port: int) -> tuple[int, dict[str, Any]]:
    with trio.fail_after(5):
        # The endpoint is an optional actor: it may bind a moment after the daemon is ready.
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            break
        async with stream:
            await stream.send_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            raw = b""
            while chunk := await stream.receive_some(65536):
                raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


async def test_health_endpoint_and_status_on_a_running_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    db_path = str(tmp_path / "serbero.db")
    async with open_raw_relay(quiet_relay) as relay:
        config = make_config(db_path, [relay.url], serbero=Keys.generate(), mostro=Keys.generate())
        config = msgspec.structs.replace(config, health=HealthConfig(listen=f"127.0.0.1:{port}"))
        async with running_daemon(config):
            status, document = await fetch_json(port)
            assert status == 200
            assert document["status"] == "ok"
            assert (document["relays_connected"], document["relays_total"]) == (1, 1)
            assert document["actors"]["health_endpoint"]["state"] == "running"
            assert document["actors"]["ingest"]["state"] == "running"
            assert set(document["queues"]) == {
                "ingest_backlog",
                "decisions_in_flight",
                "outbox_pending",
                "outbox_in_flight",
            }

            def healthy_on_disk() -> bool:
                capsys.readouterr()
                return main(["status", "--db", db_path, "--json"]) == 0

            await eventually(healthy_on_disk)
            capsys.readouterr()
            code = await trio.to_thread.run_sync(main, ["status", "--db", db_path, "--json"])
            report = json.loads(capsys.readouterr().out)
            assert code == 0
            assert [(r["url"], r["state"]) for r in report["relays"]] == [(relay.url, "connected")]
            url = f"http://127.0.0.1:{port}/health"
            result = await trio.to_thread.run_sync(probe, url)
            assert (result.up, result.status) == (True, 200)


async def test_health_is_503_once_the_only_relay_is_gone(tmp_path: Path) -> None:
    port = free_port()
    db_path = str(tmp_path / "serbero.db")
    stop_relay = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        urls: list[str] = []

        async def relay_until_stopped() -> None:
            with stop_relay:
                async with open_raw_relay(quiet_relay) as relay:
                    urls.append(relay.url)
                    ready.set()
                    await trio.sleep_forever()

        nursery.start_soon(relay_until_stopped)
        await ready.wait()
        config = make_config(db_path, urls, serbero=Keys.generate(), mostro=Keys.generate())
        config = msgspec.structs.replace(config, health=HealthConfig(listen=f"127.0.0.1:{port}"))
        async with running_daemon(config):
            assert (await fetch_json(port))[0] == 200
            stop_relay.cancel()

            with trio.fail_after(10):
                while (answer := await fetch_json(port))[0] != 503:
                    await trio.sleep(0.05)
            status, document = answer
            assert (status, document["status"], document["relays_connected"]) == (
                503,
                "no_relay_connected",
                0,
            )
