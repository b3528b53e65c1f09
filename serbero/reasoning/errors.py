"""Typed reasoning errors: every way a provider call can fail, as one category.

Callers branch on `ReasoningError.category` (the MED-188 taxonomy), which is also the only
thing the audit rows keep. The message is for the operator's log: it names the provider and
the HTTP status or the parse problem, and is built only from values that never include the
credential.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = [
    "ERROR_CATEGORIES",
    "ErrorCategory",
    "MalformedResponse",
    "ProviderConfigError",
    "ProviderNotImplementedError",
    "ReasoningError",
    "ReasoningTimeout",
    "ReasoningUnreachable",
    "UnknownProviderError",
]

ErrorCategory = Literal[
    "unreachable", "timeout", "malformed_response", "authority_boundary_violation", "unknown"
]
ERROR_CATEGORIES: Final[tuple[ErrorCategory, ...]] = get_args(ErrorCategory)

SHIPPED_PROVIDERS: Final = "openai, openai-compatible, anthropic"


class ReasoningError(Exception):
    """A provider call did not produce a usable answer (MED-187/188).

    `attempts` is how many HTTP attempts were made before giving up (the `attempt_count` of a
    `reasoning_call_failed` row); `status` is the last HTTP status seen, if any.
    """

    category: ErrorCategory

    def __init__(
        self,
        category: ErrorCategory,
        message: str,
        *,
        attempts: int = 0,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.attempts = attempts
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.category!r}, {self.message!r})"

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed: timeouts, transport errors, 408/429/5xx."""
        if self.category == "timeout":
            return True
        if self.category != "unreachable":
            return False
        return self.status is None or self.status in (408, 429) or self.status >= 500


class ReasoningUnreachable(ReasoningError):
    """The provider could not be reached or answered with a non-2xx status."""

    def __init__(self, message: str, *, attempts: int = 0, status: int | None = None) -> None:
        super().__init__("unreachable", message, attempts=attempts, status=status)


class ReasoningTimeout(ReasoningError):
    """The provider did not answer within `request_timeout_seconds`."""

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__("timeout", message, attempts=attempts)


class MalformedResponse(ReasoningError):
    """The provider answered, but not with what the contract asks for (MED-182/183)."""

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__("malformed_response", message, attempts=attempts)


class ProviderConfigError(ValueError):
    """`[reasoning].provider` names no adapter this daemon can build; raised at start."""


class UnknownProviderError(ProviderConfigError):
    """A provider name nobody declared (MED-186); names are case-sensitive, no fallback."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown reasoning provider '{name}'; supported: {SHIPPED_PROVIDERS} "
            "(ppqai, openclaw are declared but not yet implemented)"
        )
        self.name = name


class ProviderNotImplementedError(ProviderConfigError):
    """A reserved provider name (`ppqai`, `openclaw`): declared, but with no adapter yet.

    The reference builds a stub that fails every call; failing at start instead tells the
    operator at once, in one line, what to configure (MED-186, MAS-18).
    """

    def __init__(self, name: str) -> None:
        super().__init__(
            f"reasoning provider '{name}' is declared but not yet implemented; set "
            f'[reasoning].provider = "openai" (or "openai-compatible" with {name}\'s '
            f'OpenAI-compatible api_base, or "anthropic"); shipped providers: {SHIPPED_PROVIDERS}'
        )
        self.name = name
