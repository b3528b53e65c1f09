"""Mediation bring-up in a real daemon: a healthy provider makes mediation ready; every
failure (bundle, provider name, health check) is one error line, mediation stays off, and
detection and solver notification go on as before (MED-10, MAS-2, issue 15 item 6).

Real parts: a LocalRelay, the Mostro simulator, solver inboxes and a scripted model API on
loopback HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from structlog.testing import capture_logs

from serbero.actors.health import health_answer
from serbero.config import MediationConfig, PromptsConfig, ReasoningConfig, Secret
from serbero.daemon import DaemonContext
from serbero.reasoning.bundle import CONFIG_KEYS, load_bundle
from tests.daemon.support import Harness, eventually, in_thread, running_daemon
from tests.relay.helpers import refused_port
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import ScriptedLLM, json_reply, open_scripted_llm, openai_reply

API_KEY = "sk-scripted-never-logged"
SETTLE_TIMEOUT = 15.0


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "serbero.db")


@pytest.fixture(autouse=True)
def empty_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Prompt paths are relative to the working directory; this one has no ./prompts."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def reasoning(api_base: str, provider: str = "openai-compatible") -> ReasoningConfig:
    return ReasoningConfig(
        enabled=True,
        provider=provider,
        model="scripted-model",
        api_base=api_base,
        api_key=Secret(API_KEY),
        request_timeout_seconds=2,
        followup_retry_count=1,
    )


@asynccontextmanager
async def daemon_with(
    h: Harness, reasoning_config: ReasoningConfig, prompts: PromptsConfig | None = None
) -> AsyncIterator[tuple[DaemonContext, list[dict[str, Any]]]]:
    config = msgspec.structs.replace(
        h.config,
        mediation=MediationConfig(enabled=True),
        reasoning=reasoning_config,
        prompts=prompts or PromptsConfig(),
    )
    with capture_logs() as logs:
        async with running_daemon(config) as context:
            with trio.fail_after(SETTLE_TIMEOUT):
                await context.mediation.wait_settled()
            yield context, logs


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def assert_core_notifies(h: Harness, context: DaemonContext, dispute_id: str) -> None:
    """A new dispute still reaches every solver."""
    await in_thread(h.sim.open_dispute, dispute_id, "buyer")
    for (dm,) in await h.wait_dms(1):
        assert f"dispute_id: {dispute_id}" in dm.content
    await h.settled(context, 1)
    assert h.state(dispute_id) == "notified"


async def test_a_healthy_provider_makes_mediation_ready(
    local_relay: LocalRelayProcess, db_path: str, empty_working_directory: Path
) -> None:
    packaged = load_bundle(PromptsConfig(), cwd=empty_working_directory)
    async with (
        open_scripted_llm(openai_reply("pong")) as llm,
        Harness(local_relay.url, db_path) as h,
        daemon_with(h, reasoning(llm.url)) as (context, logs),
    ):
        ready = context.mediation.context
        assert ready is not None
        assert ready.bundle == packaged
        assert (ready.provider.name, ready.provider.model) == (
            "openai-compatible",
            "scripted-model",
        )
        status = context.snapshot().mediation
        assert (status.state, status.policy_hash, status.error) == (
            "ready",
            packaged.policy_hash,
            None,
        )
        await eventually(lambda: context.engine.status().running)
        shown = health_answer(context.snapshot()).document["mediation"]
        assert shown == {
            "state": "ready",
            "provider": "openai-compatible",
            "model": "scripted-model",
            "policy_hash": packaged.policy_hash,
            "stage": None,
            "error": None,
            "engine": {
                "running": True,
                "sessions_live": 0,
                "sessions_with_keys": 0,
                "sessions_watched": 0,
                "starts_in_flight": 0,
                "last_tick_at": None,
                "stage_failures": 0,
                "solver_auth": "authorized",
            },
        }
        await assert_core_notifies(h, context, "dispute-ready")
    # One health check, nothing else: the engine skips a dispute id that is not a UUID.
    assert [request.path for request in llm.requests] == ["/chat/completions"]
    (line,) = events(logs, "mediation_ready")
    assert line["policy_hash"] == packaged.policy_hash
    assert [entry["key"] for entry in events(logs, "prompt_file_packaged")] == list(
        CONFIG_KEYS.values()
    )
    assert events(logs, "mediation_bringup_failed") == []
    assert API_KEY not in repr(logs)


def missing_file(work: Path) -> PromptsConfig:
    return PromptsConfig(escalation_policy_path="./policies/escalation.md")


def not_utf8(work: Path) -> PromptsConfig:
    (work / "prompts").mkdir()
    (work / "prompts" / "phase3-mediation-style.md").write_bytes(b"\xc3\x28")
    return PromptsConfig()


def always_503(llm: ScriptedLLM) -> str:
    llm.set_default(json_reply({"error": "overloaded"}, status=503))
    return llm.url


def prose_answer(llm: ScriptedLLM) -> str:
    llm.set_default(json_reply({"choices": []}))
    return llm.url


FAILURES: list[tuple[str, Callable[[Path], PromptsConfig] | None, Any, str, str, str]] = [
    # (id, prompts, api_base from the server, provider, stage, error contains)
    ("missing file", missing_file, None, "openai-compatible", "bundle", "./policies/escalation.md"),
    ("non-UTF-8 file", not_utf8, None, "openai-compatible", "bundle", "not valid UTF-8"),
    ("reserved name", None, None, "ppqai", "provider", "'ppqai' is declared but not yet"),
    ("unknown name", None, None, "OpenAI", "provider", "unknown reasoning provider 'OpenAI'"),
    ("http 503", None, always_503, "openai-compatible", "health_check", "unreachable: http 503"),
    ("malformed reply", None, prose_answer, "openai", "health_check", "malformed_response"),
]


@pytest.mark.parametrize(
    ("prompts", "api_base", "provider", "stage", "error"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
async def test_a_failed_bringup_leaves_mediation_off_and_the_core_running(
    local_relay: LocalRelayProcess,
    db_path: str,
    empty_working_directory: Path,
    prompts: Callable[[Path], PromptsConfig] | None,
    api_base: Callable[[ScriptedLLM], str] | None,
    provider: str,
    stage: str,
    error: str,
) -> None:
    async with (
        open_scripted_llm(openai_reply("pong")) as llm,
        Harness(local_relay.url, db_path) as h,
    ):
        base = llm.url if api_base is None else api_base(llm)
        chosen = None if prompts is None else prompts(empty_working_directory)
        async with daemon_with(h, reasoning(base, provider), chosen) as (context, logs):
            assert await context.mediation.wait_settled() is None
            status = context.snapshot().mediation
            assert (status.state, status.stage) == ("failed", stage)
            assert status.error is not None and error in status.error
            await assert_core_notifies(h, context, f"dispute-{stage}")
            assert not context.engine.status().running
    (failed,) = events(logs, "mediation_bringup_failed")
    assert (failed["log_level"], failed["stage"]) == ("error", stage)
    assert error in failed["error"]
    assert events(logs, "mediation_ready") == []
    if stage != "health_check":
        assert llm.requests == [], "no request before the bundle and provider are sound"
    assert API_KEY not in repr(logs)


async def test_an_unreachable_provider_is_a_failed_health_check(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    with refused_port() as port:
        async with (
            Harness(local_relay.url, db_path) as h,
            daemon_with(h, reasoning(f"http://127.0.0.1:{port}/v1")) as (context, logs),
        ):
            status = context.snapshot().mediation
            assert (status.state, status.stage) == ("failed", "health_check")
            await assert_core_notifies(h, context, "dispute-unreachable")
    (failed,) = events(logs, "mediation_bringup_failed")
    assert failed["error"].startswith("unreachable: ")


async def test_a_provider_that_never_answers_does_not_delay_the_core(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """The health check runs beside the actors: a dispute is notified while it waits."""
    async with (
        open_scripted_llm(openai_reply("late", delay=60.0)) as llm,
        Harness(local_relay.url, db_path) as h,
    ):
        config = msgspec.structs.replace(
            h.config,
            mediation=MediationConfig(enabled=True),
            reasoning=msgspec.structs.replace(reasoning(llm.url), request_timeout_seconds=30),
        )
        async with running_daemon(config) as context:
            assert context.snapshot().mediation.state == "starting"
            await assert_core_notifies(h, context, "dispute-while-starting")
            assert context.snapshot().mediation.state == "starting"
            assert context.mediation.context is None


async def test_mediation_off_unless_both_switches_are_on(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    async with (
        open_scripted_llm(openai_reply("pong")) as llm,
        Harness(local_relay.url, db_path) as h,
    ):
        only_reasoning = msgspec.structs.replace(h.config, reasoning=reasoning(llm.url))
        with capture_logs() as logs:
            async with running_daemon(only_reasoning) as context:
                assert await context.mediation.wait_settled() is None
                assert context.snapshot().mediation.state == "off"
    assert llm.requests == []
    assert events(logs, "mediation_disabled") == []
    assert events(logs, "mediation_bringup_failed") == []
