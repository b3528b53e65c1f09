"""Mediation bring-up: the bundle, the provider and one health check, or mediation stays off
(MED-10, issue 15 item 6).

Mediation runs only when both `[mediation].enabled` and `[reasoning].enabled` are set. Then
the prompt bundle is loaded and the provider built while the daemon starts (both are local
and quick), and one health check asks the provider for a reply once the core is running: a
slow or dead provider must never hold up dispute detection and solver notification. Any
failure logs one `mediation_bringup_failed` line naming its stage and leaves mediation off
for this run; everything else keeps going.

`MediationBringUp` is the daemon's one handle on the outcome: its `status()` is part of the
live snapshot (and `/health`), and `wait_settled()` hands the engine its `MediationContext`
once the provider answered, or None when mediation is off.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final, Literal

import httpx
import msgspec
import trio

from serbero.config.schema import Config, MediationConfig, ReasoningConfig
from serbero.log import get_logger
from serbero.reasoning.bundle import BundleError, PromptBundle, load_bundle
from serbero.reasoning.errors import ProviderConfigError, ReasoningError
from serbero.reasoning.provider import ReasoningProvider, build_provider

__all__ = [
    "BringUpStage",
    "MediationBringUp",
    "MediationContext",
    "MediationState",
    "MediationStatus",
]

log = get_logger("serbero.mediation")

# off: not asked for (or [reasoning] off); starting: bundle and provider ready, health check
# pending; ready: the provider answered; failed: a stage failed, mediation off for this run.
MediationState = Literal["off", "starting", "ready", "failed"]
BringUpStage = Literal["bundle", "provider", "health_check"]
REASONING_OFF: Final = "[reasoning].enabled = false"


class MediationContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the mediation engine runs with once bring-up succeeded (MED-11's reasoning part):
    its settings, the bundle every call is built from, the healthy provider, and the
    configured solvers' keys (`SolverConfig.key`, config order) its DMs are routed to."""

    mediation: MediationConfig
    reasoning: ReasoningConfig
    bundle: PromptBundle
    provider: ReasoningProvider
    solvers: tuple[str, ...] = ()


class MediationStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Bring-up as the live snapshot shows it; `stage` and `error` say what failed."""

    state: MediationState
    stage: BringUpStage | None = None
    provider: str | None = None
    model: str | None = None
    bundle_id: str | None = None
    policy_hash: str | None = None
    error: str | None = None


class MediationBringUp:
    """Runs MED-10's steps for one daemon and remembers how they ended."""

    def __init__(self, config: Config, *, cwd: Path) -> None:
        self._config = config
        self._cwd = cwd
        self._state: MediationState = "off"
        self._stage: BringUpStage | None = None
        self._error: str | None = None
        self._bundle: PromptBundle | None = None
        self._provider: ReasoningProvider | None = None
        self._settled = trio.Event()

    @property
    def wanted(self) -> bool:
        """Both switches are on (MED-10)."""
        return self._config.mediation.enabled and self._config.reasoning.enabled

    def status(self) -> MediationStatus:
        reasoning = self._config.reasoning
        bundle = self._bundle
        wanted = self.wanted
        return MediationStatus(
            state=self._state,
            provider=reasoning.provider if wanted else None,
            model=reasoning.model if wanted else None,
            bundle_id=None if bundle is None else bundle.bundle_id,
            policy_hash=None if bundle is None else bundle.policy_hash,
            stage=self._stage,
            error=self._error,
        )

    @property
    def context(self) -> MediationContext | None:
        """The engine's context once the provider answered its health check, else None."""
        if self._state != "ready" or self._bundle is None or self._provider is None:
            return None
        return MediationContext(
            mediation=self._config.mediation,
            reasoning=self._config.reasoning,
            bundle=self._bundle,
            provider=self._provider,
            solvers=tuple(solver.key for solver in self._config.solvers),
        )

    async def wait_settled(self) -> MediationContext | None:
        """Wait until bring-up is over; the context when ready, None when mediation is off."""
        await self._settled.wait()
        return self.context

    def _fail(self, stage: BringUpStage, error: str) -> None:
        self._state, self._stage, self._error = "failed", stage, error
        self._provider = None
        log.error("mediation_bringup_failed", stage=stage, error=error)
        self._settled.set()

    async def prepare(self, stack: AsyncExitStack) -> None:
        """Load the bundle and build the provider over an HTTP client that `stack` closes
        (CORE-8 step 9); no request is made yet."""
        config = self._config
        if not self.wanted:
            if config.mediation.enabled:
                log.info("mediation_disabled", reason=REASONING_OFF)
            self._settled.set()
            return
        try:
            bundle = load_bundle(config.prompts, cwd=self._cwd)
        except BundleError as exc:
            self._fail("bundle", str(exc))
            return
        for source in bundle.sources:
            if source.origin == "packaged":
                log.info("prompt_file_packaged", key=source.config_key, path=source.path)
        log.info("prompt_bundle_loaded", bundle_id=bundle.bundle_id, policy_hash=bundle.policy_hash)
        self._bundle = bundle
        client = await stack.enter_async_context(httpx.AsyncClient())
        try:
            self._provider = build_provider(config.reasoning, client)
        except ProviderConfigError as exc:
            self._fail("provider", str(exc))
            return
        self._state = "starting"

    async def check_health(self) -> None:
        """One health check (MED-10, MED-189); never raises, so it cannot stop the core."""
        provider = self._provider
        if self._state != "starting" or provider is None:
            return
        reasoning = self._config.reasoning
        try:
            await provider.health_check()
        except ReasoningError as exc:
            self._fail("health_check", f"{exc.category}: {exc.message}")
            return
        except Exception as exc:
            self._fail("health_check", f"{type(exc).__name__}: {exc}")
            return
        self._state = "ready"
        bundle = self._bundle
        log.info(
            "mediation_ready",
            provider=reasoning.provider,
            model=reasoning.model,
            bundle_id=None if bundle is None else bundle.bundle_id,
            policy_hash=None if bundle is None else bundle.policy_hash,
        )
        self._settled.set()
