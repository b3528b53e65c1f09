"""What `config.toml` may say: the section structs, their defaults and the known key set.

Every struct is frozen and built either by the loader (`serbero.config.load`) or directly in
tests (CORE-12). Credentials are `Secret`s, so printing a config never shows them (BEY-23).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from serbero.config.secret import MASK, Secret
from serbero.protocol.keys import KeyFormatError, Keys, parse_public_key, parse_secret_key

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DB_PATH",
    "ENV_CONFIG",
    "ENV_DB_PATH",
    "ENV_LOG",
    "ENV_PRIVATE_KEY",
    "PERMISSIONS",
    "SECTIONS",
    "U32_MAX",
    "ChatConfig",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "EscalationConfig",
    "HealthConfig",
    "LoadedConfig",
    "MediationConfig",
    "MostroConfig",
    "NotificationsConfig",
    "Permission",
    "PromptsConfig",
    "ReasoningConfig",
    "RelayConfig",
    "SerberoConfig",
    "SolverConfig",
    "TimeoutsConfig",
    "UInt",
    "UInt32",
    "ViewConfig",
    "derived_fields",
    "file_fields",
    "key_name",
    "shown_pubkey",
    "split_listen",
]

ENV_CONFIG: Final = "SERBERO_CONFIG"
ENV_PRIVATE_KEY: Final = "SERBERO_PRIVATE_KEY"
ENV_DB_PATH: Final = "SERBERO_DB_PATH"
ENV_LOG: Final = "SERBERO_LOG"
DEFAULT_CONFIG_PATH: Final = "./config.toml"
DEFAULT_DB_PATH: Final = "serbero.db"
DEFAULT_API_KEY_ENV: Final = "SERBERO_REASONING_API_KEY"
PERMISSIONS: Final = ("read", "write")
U32_MAX: Final = 2**32 - 1

# Integers are TOML integers >= 0; the reference stores a few of them in u32.
UInt = Annotated[int, msgspec.Meta(ge=0)]
UInt32 = Annotated[int, msgspec.Meta(ge=0, le=U32_MAX)]
Permission = Literal["read", "write"]


class ConfigError(ValueError):
    """A config that stops start-up; `str()` is the one line the operator sees."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"failed to load config from {self.path}: {self.reason}"


class ConfigWarning(msgspec.Struct, frozen=True, kw_only=True):
    """A non-fatal finding; log it as `log.warning(w.event, **w.fields)` once logging is up."""

    event: str
    message: str
    fields: dict[str, str | int] = msgspec.field(default_factory=dict)


def shown_pubkey(text: str) -> str:
    """A public key as written, unless it is a secret key pasted by mistake: never echo that."""
    return MASK if text.strip().lower().startswith("nsec") else text


# --- sections -----------------------------------------------------------------------------


class SerberoConfig(msgspec.Struct, frozen=True, kw_only=True):
    # 64 lowercase hex after loading (hex of any case and nsec1… are accepted in the file).
    private_key: Secret
    db_path: str = DEFAULT_DB_PATH
    log_level: str = "info"


class MostroConfig(msgspec.Struct, frozen=True, kw_only=True):
    # 64 lowercase hex after loading (hex of any case, npub1… and nostr:npub1… accepted).
    pubkey: str


class RelayConfig(msgspec.Struct, frozen=True, kw_only=True):
    url: str


class SolverConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One `[[solvers]]` entry.

    A malformed key is not fatal (core AS-3): `pubkey` keeps the text as written,
    `pubkey_hex` is None and `pubkey_error` is the `invalid pubkey: …` text the sender records
    in its `failed` row. A valid key has `pubkey_hex` (lowercase hex) and no error.
    """

    pubkey: str
    permission: Permission = "read"
    pubkey_hex: str | None = None
    pubkey_error: str | None = None

    @classmethod
    def from_text(cls, pubkey: str, permission: Permission = "read") -> SolverConfig:
        """Parse `pubkey` once; tests and the loader build solvers the same way."""
        try:
            pubkey_hex = parse_public_key(pubkey)
        except KeyFormatError as exc:
            return cls(pubkey=pubkey, permission=permission, pubkey_error=f"invalid pubkey: {exc}")
        return cls(pubkey=pubkey, permission=permission, pubkey_hex=pubkey_hex)

    @property
    def key(self) -> str:
        """The key stored and logged for this solver: lowercase hex whatever the config's
        spelling (BEY-12), or the text as written when it does not parse (AS-3)."""
        return self.pubkey if self.pubkey_hex is None else self.pubkey_hex

    @property
    def can_write(self) -> bool:
        return self.permission == "write"

    def __repr__(self) -> str:
        return (
            f"SolverConfig(pubkey={shown_pubkey(self.pubkey)!r}, permission={self.permission!r}, "
            f"pubkey_hex={self.pubkey_hex!r}, pubkey_error={self.pubkey_error!r})"
        )


class TimeoutsConfig(msgspec.Struct, frozen=True, kw_only=True):
    renotification_seconds: UInt = 300
    # 0 is accepted and means 1 (CORE-13 table); the timer applies that.
    renotification_check_interval_seconds: UInt = 60


class MediationConfig(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = False
    max_rounds: UInt32 = 2
    party_response_timeout_seconds: UInt = 1800
    solver_auth_retry_initial_seconds: UInt = 60
    solver_auth_retry_max_interval_seconds: UInt = 3600
    solver_auth_retry_max_total_seconds: UInt = 86400
    solver_auth_retry_max_attempts: UInt32 = 24


class ReasoningConfig(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = False
    provider: str = "openai"
    model: str = "gpt-4o-mini"
    api_base: str = "https://api.openai.com/v1"
    api_key_env: str = DEFAULT_API_KEY_ENV
    request_timeout_seconds: UInt = 30
    followup_retry_count: UInt32 = 1
    # Read from the variable named by api_key_env, trimmed; never from the file.
    api_key: Secret = msgspec.field(default_factory=Secret)


class PromptsConfig(msgspec.Struct, frozen=True, kw_only=True):
    system_instructions_path: str = "./prompts/phase3-system.md"
    classification_policy_path: str = "./prompts/phase3-classification.md"
    escalation_policy_path: str = "./prompts/phase3-escalation-policy.md"
    mediation_style_path: str = "./prompts/phase3-mediation-style.md"
    message_templates_path: str = "./prompts/phase3-message-templates.md"


class ChatConfig(msgspec.Struct, frozen=True, kw_only=True):
    # BEY-24: the mediation engine's tick period.
    inbound_fetch_interval_seconds: UInt = 10


class EscalationConfig(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = False
    dispatch_interval_seconds: UInt = 30  # must be > 0, checked at load (ESC-5)
    fallback_to_all_solvers: bool = False


class NotificationsConfig(msgspec.Struct, frozen=True, kw_only=True):
    # BEY-5: one closing notice per solver when a dispute reaches a terminal status.
    resolution: bool = True


class HealthConfig(msgspec.Struct, frozen=True, kw_only=True):
    # BEY-11: `host:port` on a loopback address; empty = no endpoint.
    listen: str = ""

    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when the endpoint is off. Validated at load."""
        if not self.listen:
            return None
        return split_listen(self.listen)


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The whole configuration; build it directly in tests (CORE-12) or via `load_config`."""

    serbero: SerberoConfig
    mostro: MostroConfig
    relays: tuple[RelayConfig, ...] = ()
    solvers: tuple[SolverConfig, ...] = ()
    timeouts: TimeoutsConfig = msgspec.field(default_factory=TimeoutsConfig)
    mediation: MediationConfig = msgspec.field(default_factory=MediationConfig)
    reasoning: ReasoningConfig = msgspec.field(default_factory=ReasoningConfig)
    prompts: PromptsConfig = msgspec.field(default_factory=PromptsConfig)
    chat: ChatConfig = msgspec.field(default_factory=ChatConfig)
    escalation: EscalationConfig = msgspec.field(default_factory=EscalationConfig)
    notifications: NotificationsConfig = msgspec.field(default_factory=NotificationsConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)

    def identity(self) -> Keys:
        """Serbero's own key pair (raises KeyFormatError for a hand-built bad key)."""
        return Keys.from_secret(parse_secret_key(self.serbero.private_key.reveal()))


class ViewConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What the operator views read from a config: where the database is, where the health
    endpoint listens, which relays are configured. No key, so no secret to reach."""

    path: str
    db_path: str
    relays: tuple[RelayConfig, ...]
    health: HealthConfig


class LoadedConfig(msgspec.Struct, frozen=True, kw_only=True):
    config: Config
    path: str
    warnings: tuple[ConfigWarning, ...] = ()


# --- the known key set --------------------------------------------------------------------

# Section name -> (struct, is array of tables). Order = rendering order.
SECTIONS: Final[Mapping[str, tuple[type[msgspec.Struct], bool]]] = {
    "serbero": (SerberoConfig, False),
    "mostro": (MostroConfig, False),
    "relays": (RelayConfig, True),
    "solvers": (SolverConfig, True),
    "timeouts": (TimeoutsConfig, False),
    "mediation": (MediationConfig, False),
    "reasoning": (ReasoningConfig, False),
    "prompts": (PromptsConfig, False),
    "chat": (ChatConfig, False),
    "escalation": (EscalationConfig, False),
    "notifications": (NotificationsConfig, False),
    "health": (HealthConfig, False),
}
# Struct fields the loader derives; the file cannot set them.
_DERIVED: Final[Mapping[str, frozenset[str]]] = {
    "solvers": frozenset({"pubkey_hex", "pubkey_error"}),
    "reasoning": frozenset({"api_key"}),
}


def derived_fields(section: str) -> frozenset[str]:
    """Fields of `section` the loader fills in; a file that sets one is warned about."""
    return _DERIVED.get(section, frozenset())


def file_fields(section: str) -> dict[str, Any]:
    """Field name -> annotation for the keys a file may set in `section`."""
    struct, _ = SECTIONS[section]
    derived = derived_fields(section)
    return {f.name: f.type for f in msgspec.structs.fields(struct) if f.name not in derived}


def key_name(section: str, key: str | None = None, index: int | None = None) -> str:
    """`[escalation].dispatch_interval_seconds`, `[[solvers]][1].pubkey` (0-based index)."""
    is_array = section in SECTIONS and SECTIONS[section][1]
    head = f"[[{section}]]" if is_array else f"[{section}]"
    if index is not None:
        head = f"{head}[{index}]"
    return head if key is None else f"{head}.{key}"


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9797` / `[::1]:9797` / `localhost:9797` -> (host, port); ValueError if bad."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError("expected host:port")
    port = int(port_text)
    if port > 65535:
        raise ValueError("port must be at most 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host != "localhost":
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address or localhost") from None
        if not address.is_loopback:
            raise ValueError("the health endpoint listens on loopback addresses only")
    return host, port
