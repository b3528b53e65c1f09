"""`serbero health-check` and runit's `check` script against a real `/health` endpoint.

Exit 0 only for a 200; 503, refused connections, garbage and slow servers are 1 within the
probe's budget. The `check` script runs the daemon's own `serbero` as `./run` does.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from serbero.actors.health_http import HealthAnswer, serve_health
from serbero.cli import main
from serbero.ops.healthcheck import ProbeError, health_url, probe
from tests.deploy.chpst import CHECK, PASSTHROUGH_CHPST, fake_chpst_env
from tests.ops.test_commands import write_config

SERBERO_BIN = Path(sys.executable).parent / "serbero"
SCRIPT_TIMEOUT = 20

UP = HealthAnswer(up=True, document={"relays_connected": 2, "relays_total": 3})
DOWN = HealthAnswer(up=False, document={"relays_connected": 0, "relays_total": 3})


class Switch:
    def __init__(self) -> None:
        self.answer = UP

    def __call__(self) -> HealthAnswer:
        return self.answer


@pytest.fixture
def switch() -> Switch:
    return Switch()


@pytest.fixture
async def port(switch: Switch) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_health, ("127.0.0.1", 0), switch)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def health_check(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()  # drop the endpoint's own log lines
    code = await trio.to_thread.run_sync(main, ["health-check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_health_url_for_the_config_address() -> None:
    assert health_url(("127.0.0.1", 9797)) == "http://127.0.0.1:9797/health"
    assert health_url(("::1", 9797)) == "http://[::1]:9797/health"
    assert health_url(None) == "http://127.0.0.1:9797/health"


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:9797/health",
        "http://127.0.0.1:99999/health",
        "http://127.0.0.1:port/health",
        "http://[::1/health",
        "http://héllo:9797/health",
    ],
)
def test_probe_refuses_urls_it_cannot_use(url: str) -> None:
    with pytest.raises(ProbeError):
        probe(url)


async def test_exit_0_when_the_endpoint_answers_200(
    port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await health_check(["--url", f"http://127.0.0.1:{port}/health"], capsys)
    assert (code, out, err) == (0, "up: HTTP 200, 2 of 3 relays connected\n", "")


async def test_exit_1_when_the_endpoint_answers_503(
    port: int, switch: Switch, capsys: pytest.CaptureFixture[str]
) -> None:
    switch.answer = DOWN
    code, out, err = await health_check(["--url", f"http://127.0.0.1:{port}/health"], capsys)
    assert (code, out, err) == (1, "", "down: HTTP 503, 0 of 3 relays connected\n")


async def test_json_carries_the_endpoint_document_up_or_down(
    port: int, switch: Switch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{port}/health"
    code, out, err = await health_check(["--url", url, "--json"], capsys)
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "url": url,
        "up": True,
        "status": 200,
        "detail": "up: HTTP 200, 2 of 3 relays connected",
        "health": UP.document,
    }
    switch.answer = DOWN
    code, out, err = await health_check(["--url", url, "--json"], capsys)
    assert (code, err) == (1, "")
    assert json.loads(out)["health"] == DOWN.document
    code, out, _ = await health_check(
        ["--url", f"http://127.0.0.1:{free_port()}/", "--json"], capsys
    )
    assert code == 1
    assert json.loads(out)["health"] is None and json.loads(out)["status"] is None


async def test_exit_1_for_a_404(port: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await health_check(["--url", f"http://127.0.0.1:{port}/nope"], capsys)
    assert code == 1
    assert err.startswith("down: HTTP 404")


async def test_exit_1_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    code, out, err = await health_check(["--url", url], capsys)
    assert code == 1
    assert out == ""
    assert err.startswith(f"unreachable: {url}: ")


async def test_the_url_comes_from_the_config(
    port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "db", f'[health]\nlisten = "127.0.0.1:{port}"\n')
    code, out, _ = await health_check(["--config", str(config)], capsys)
    assert (code, out) == (0, "up: HTTP 200, 2 of 3 relays connected\n")


async def test_the_url_comes_from_a_config_without_a_key(
    port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """runit's `check` runs as root with the key only in the service's env directory."""
    config = tmp_path / "keyless.toml"
    config.write_text(f'[health]\nlisten = "127.0.0.1:{port}"\n')
    code, out, _ = await health_check(["--config", str(config)], capsys)
    assert (code, out) == (0, "up: HTTP 200, 2 of 3 relays connected\n")
    config.write_text('[health]\nlisten = "127.0.0.1:http"\n')
    code, out, err = await health_check(["--config", str(config)], capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"failed to load config from {config}: [health].listen expected host:port "
        '(got "127.0.0.1:http")\n'
    )


async def test_with_the_endpoint_off_it_fails_unless_off_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "db")
    code, out, err = await health_check(["--config", str(config)], capsys)
    assert (code, out) == (1, "")
    assert err == "serbero: health endpoint is off: set [health] listen or pass --url\n"
    code, out, err = await health_check(["--config", str(config), "--off-ok"], capsys)
    assert (code, err) == (0, "")
    assert out == "health endpoint is off ([health] listen unset): not probed\n"


async def test_a_bad_url_or_config_is_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await health_check(["--url", "ftp://127.0.0.1/health"], capsys)
    assert code == 1 and "must be http://" in err
    code, _, err = await health_check(["--url", "http://127.0.0.1:99999/health"], capsys)
    assert code == 1 and "is malformed" in err
    code, _, err = await health_check(["--config", str(tmp_path / "absent.toml")], capsys)
    assert code == 1 and err.startswith("failed to load config from ")


async def test_the_probe_gives_up_on_a_trickling_server_within_its_budget() -> None:
    async def trickle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            for _ in range(50):
                await stream.send_all(b"H")
                await trio.sleep(0.1)

    async def garbage(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(b"SSH-2.0-OpenSSH\r\n")

    async with trio.open_nursery() as nursery:
        slow = await nursery.start(partial(trio.serve_tcp, trickle, 0, host="127.0.0.1"))
        junk = await nursery.start(partial(trio.serve_tcp, garbage, 0, host="127.0.0.1"))
        slow_url = f"http://127.0.0.1:{slow[0].socket.getsockname()[1]}/health"
        junk_url = f"http://127.0.0.1:{junk[0].socket.getsockname()[1]}/health"
        start = trio.current_time()
        result = await trio.to_thread.run_sync(lambda: probe(slow_url, timeout=0.5))
        elapsed = trio.current_time() - start
        assert not result.up and result.status is None
        # Far below the 5 s the server would trickle for; slack for a busy machine.
        assert elapsed < 2.5
        result = await trio.to_thread.run_sync(lambda: probe(junk_url))
        assert not result.up
        assert result.detail == f"down: {junk_url}: not an HTTP answer"
        nursery.cancel_scope.cancel()


# --- deploy/runit/serbero/check -----------------------------------------------------------


async def run_check(
    tmp_path: Path, config: Path, *, stdout_closed: bool = False
) -> tuple[int, str, list[str]]:
    """Run ./check with a pass-through chpst and the venv's serbero; (status, output, record).

    `stdout_closed` runs it the way `sv check` does: with file descriptor 1 closed."""
    chpst_env = fake_chpst_env(tmp_path, PASSTHROUGH_CHPST)
    record = Path(chpst_env["CHPST_RECORD"])
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    with trio.fail_after(SCRIPT_TIMEOUT):
        command = ["sh", "-c", 'exec "$0" >&-', str(CHECK)] if stdout_closed else [str(CHECK)]
        result = await trio.run_process(
            command,
            env={
                **chpst_env,
                "SERBERO_SV_HOME": str(state),
                "SERBERO_SV_BIN": str(SERBERO_BIN),
                "SERBERO_CONFIG": str(config),
            },
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if stdout_closed:
        # Nothing to merge into: the verdict stays on stderr, where sv shows it.
        return result.returncode, result.stderr.decode(), record.read_text().splitlines()
    assert result.stderr == b""
    return result.returncode, result.stdout.decode(), record.read_text().splitlines()


async def test_check_runs_health_check_like_run_runs_the_daemon(
    port: int, switch: Switch, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "db", f'[health]\nlisten = "127.0.0.1:{port}"\n')
    code, output, record = await run_check(tmp_path, config)
    assert (code, output) == (0, "up: HTTP 200, 2 of 3 relays connected\n")
    assert record[1:] == [
        str(tmp_path / "state"),
        "-u",
        "serbero",
        "-e",
        "/etc/serbero/env",
        str(SERBERO_BIN),
        "health-check",
        "--off-ok",
    ]
    switch.answer = DOWN
    code, output, _ = await run_check(tmp_path, config)
    assert (code, output) == (1, "down: HTTP 503, 0 of 3 relays connected\n")


async def test_check_works_with_stdout_closed_as_sv_runs_it(
    port: int, switch: Switch, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "db", f'[health]\nlisten = "127.0.0.1:{port}"\n')
    code, output, _ = await run_check(tmp_path, config, stdout_closed=True)
    assert (code, output) == (0, "")
    switch.answer = DOWN
    code, output, _ = await run_check(tmp_path, config, stdout_closed=True)
    assert (code, output) == (1, "down: HTTP 503, 0 of 3 relays connected\n")


async def test_check_fails_when_nothing_answers_and_passes_with_the_endpoint_off(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "db", f'[health]\nlisten = "127.0.0.1:{free_port()}"\n')
    code, output, _ = await run_check(tmp_path, config)
    assert code == 1 and output.startswith("unreachable: ")
    config = write_config(tmp_path, "db")
    code, output, _ = await run_check(tmp_path, config)
    assert (code, output) == (0, "health endpoint is off ([health] listen unset): not probed\n")
