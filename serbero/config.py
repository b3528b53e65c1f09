"""`config.toml` + environment overrides + validation (core.md §4, BEY-12, BEY-23).

The file is decoded leniently (msgspec's TOML decoder into plain values), diffed against the
known key set so unknown keys become warnings instead of errors, type-checked with messages an
operator can act on, and only then converted into the frozen `Config` structs. Problems are
reported in CORE-16 order as one `ConfigError` line naming the file, the key and the problem.

The loader never prints or logs: warnings come back as data (`LoadedConfig.warnings`) because
logging is configured from the very config being loaded.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

from serbero.protocol.keys import (
    KeyFormatError,
    Keys,
    parse_public_key,
    parse_secret_key,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG",
    "ENV_DB_PATH",
    "ENV_LOG",
    "ENV_PRIVATE_KEY",
    "MASK",
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
    "config_from_toml",
    "load_config",
    "render_toml",
    "resolve_config_path",
    "validate_for_daemon",
]

ENV_CONFIG: Final = "SERBERO_CONFIG"
ENV_PRIVATE_KEY: Final = "SERBERO_PRIVATE_KEY"
ENV_DB_PATH: Final = "SERBERO_DB_PATH"
ENV_LOG: Final = "SERBERO_LOG"
DEFAULT_CONFIG_PATH: Final = "./config.toml"
DEFAULT_API_KEY_ENV: Final = "SERBERO_REASONING_API_KEY"
MASK: Final = "<redacted>"
RELAY_SCHEMES: Final = frozenset({"ws", "wss"})
PERMISSIONS: Final = ("read", "write")
U32_MAX: Final = 2**32 - 1
# Group/other permission bits: a key file readable by anyone but its owner (BEY-23).
_SHARED_MODE_BITS: Final = stat.S_IRWXG | stat.S_IRWXO

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


def _shown_pubkey(text: str) -> str:
    """A secret key pasted where a public key belongs must not be echoed anywhere."""
    return MASK if text.strip().lower().startswith("nsec") else text


# --- sections -----------------------------------------------------------------------------


class SerberoConfig(msgspec.Struct, frozen=True, kw_only=True):
    # 64 lowercase hex after loading (hex of any case and nsec1… are accepted in the file).
    private_key: str
    db_path: str = "serbero.db"
    log_level: str = "info"

    def __repr__(self) -> str:
        return (
            f"SerberoConfig(private_key={MASK!r}, db_path={self.db_path!r}, "
            f"log_level={self.log_level!r})"
        )


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
    def can_write(self) -> bool:
        return self.permission == "write"

    def __repr__(self) -> str:
        return (
            f"SolverConfig(pubkey={_shown_pubkey(self.pubkey)!r}, permission={self.permission!r}, "
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
    api_key: str = ""

    def __repr__(self) -> str:
        shown = MASK if self.api_key else ""
        return (
            f"ReasoningConfig(enabled={self.enabled!r}, provider={self.provider!r}, "
            f"model={self.model!r}, api_base={self.api_base!r}, "
            f"api_key_env={self.api_key_env!r}, "
            f"request_timeout_seconds={self.request_timeout_seconds!r}, "
            f"followup_retry_count={self.followup_retry_count!r}, api_key={shown!r})"
        )


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
        return _split_listen(self.listen)


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
        return Keys.from_secret(parse_secret_key(self.serbero.private_key))

    def masked(self) -> dict[str, Any]:
        """Plain data for printing: secrets replaced by MASK (set) or "" (unset)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        data["serbero"]["private_key"] = MASK if self.serbero.private_key else ""
        data["reasoning"]["api_key"] = MASK if self.reasoning.api_key else ""
        for solver in data["solvers"]:
            solver["pubkey"] = _shown_pubkey(solver["pubkey"])
        return data


class LoadedConfig(msgspec.Struct, frozen=True, kw_only=True):
    config: Config
    path: str
    warnings: tuple[ConfigWarning, ...] = ()


# --- the known key set --------------------------------------------------------------------

# Section name -> (struct, is array of tables). Order = rendering order.
_SECTIONS: Final[Mapping[str, tuple[type[msgspec.Struct], bool]]] = {
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
_REQUIRED_SECTIONS: Final = ("serbero", "mostro")
_REQUIRED_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "serbero": ("private_key",),
    "mostro": ("pubkey",),
    "relays": ("url",),
    "solvers": ("pubkey",),
}
_SECRET_KEYS: Final = frozenset({("serbero", "private_key")})


def _file_fields(section: str) -> dict[str, Any]:
    """Field name -> annotation for the keys a file may set in `section`."""
    struct, _ = _SECTIONS[section]
    derived = _DERIVED.get(section, frozenset())
    return {f.name: f.type for f in msgspec.structs.fields(struct) if f.name not in derived}


# --- key naming and value description -----------------------------------------------------


def _key_name(section: str, key: str | None = None, index: int | None = None) -> str:
    """`[escalation].dispatch_interval_seconds`, `[[solvers]][1].pubkey` (0-based index)."""
    is_array = section in _SECTIONS and _SECTIONS[section][1]
    head = f"[[{section}]]" if is_array else f"[{section}]"
    if index is not None:
        head = f"{head}[{index}]"
    return head if key is None else f"{head}.{key}"


def _dotted(section: str, key: str | None = None, index: int | None = None) -> str:
    """`escalation.foo`, `solvers[1].foo` — the form used in `config_unknown_key` warnings."""
    head = section if index is None else f"{section}[{index}]"
    return head if key is None else f"{head}.{key}"


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return "date-time"


def _describe(value: Any, *, secret: bool) -> str:
    kind = _toml_type(value)
    if secret or kind in ("table", "array", "date-time"):
        return kind
    return f"{kind} {json.dumps(value)}" if isinstance(value, str) else f"{kind} {value!r}"


# --- the steps of loading, in CORE-16 order -----------------------------------------------


class _Env(msgspec.Struct, frozen=True, kw_only=True):
    """Environment values read once, trimmed, blank = unset (CORE-14)."""

    private_key: str | None
    db_path: str | None
    log_level: str | None
    source: Mapping[str, str]

    @classmethod
    def read(cls, env: Mapping[str, str]) -> _Env:
        return cls(
            private_key=_env_value(env, ENV_PRIVATE_KEY),
            db_path=_env_value(env, ENV_DB_PATH),
            log_level=_env_value(env, ENV_LOG),
            source=env,
        )


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def resolve_config_path(env: Mapping[str, str] = os.environ) -> str:
    """`SERBERO_CONFIG` (trimmed; blank = unset), else `./config.toml` (CORE-8)."""
    return _env_value(env, ENV_CONFIG) or DEFAULT_CONFIG_PATH


def _read_document(path: str) -> dict[str, Any]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(path, f"cannot read file: {exc.strerror or exc}") from None
    return _decode_document(data, path)


def _decode_document(data: bytes | str, path: str) -> dict[str, Any]:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(path, f"file is not valid UTF-8: {exc.reason}") from None
    try:
        document = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(path, f"invalid TOML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(path, "invalid TOML: the document is not a table")
    return document


def _iter_tables(document: dict[str, Any]) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    """(section, index, table) for every known section that has the right shape."""
    for section, (_, is_array) in _SECTIONS.items():
        value = document.get(section)
        if is_array and isinstance(value, list):
            for index, entry in enumerate(value):
                if isinstance(entry, dict):
                    yield section, index, entry
        elif not is_array and isinstance(value, dict):
            yield section, None, value


def _strip_unknown(document: dict[str, Any]) -> list[ConfigWarning]:
    """Remove keys the daemon does not know, returning one warning per key (CORE-13, BEY-12)."""
    warnings: list[ConfigWarning] = []
    for name in list(document):
        if name not in _SECTIONS:
            del document[name]
            warnings.append(_unknown_key_warning(name))
    for section, index, table in _iter_tables(document):
        known = _file_fields(section)
        for key in list(table):
            if key in known:
                continue
            del table[key]
            if section == "reasoning" and key == "api_key":
                warnings.append(_api_key_ignored_warning(document))
            else:
                warnings.append(_unknown_key_warning(_dotted(section, key, index)))
    return warnings


def _unknown_key_warning(dotted: str) -> ConfigWarning:
    return ConfigWarning(
        event="config_unknown_key",
        message=f"unknown config key {dotted} ignored",
        fields={"key": dotted},
    )


def _api_key_ignored_warning(document: dict[str, Any]) -> ConfigWarning:
    reasoning = document.get("reasoning", {})
    env_name = reasoning.get("api_key_env", DEFAULT_API_KEY_ENV)
    env_name = env_name.strip() if isinstance(env_name, str) else DEFAULT_API_KEY_ENV
    return ConfigWarning(
        event="config_api_key_ignored",
        message=(
            "[reasoning].api_key in the file is ignored; the credential is read from the "
            f"environment variable {env_name}"
        ),
        fields={"key": "reasoning.api_key", "env": env_name},
    )


def _check_required(document: dict[str, Any], env: _Env, path: str) -> None:
    if env.private_key is not None:
        # The key may live only in the environment (BEY-23), so [serbero] may be absent.
        document.setdefault("serbero", {})
    for section in _REQUIRED_SECTIONS:
        if section not in document:
            raise ConfigError(path, f"missing required section {_key_name(section)}")
    for section, index, table in _iter_tables(document):
        for key in _REQUIRED_KEYS.get(section, ()):
            if key in table:
                continue
            if (section, key) == ("serbero", "private_key") and env.private_key is not None:
                continue
            hint = f" (or set {ENV_PRIVATE_KEY})" if section == "serbero" else ""
            raise ConfigError(path, f"missing required key {_key_name(section, key, index)}{hint}")


def _type_problem(annotation: Any, value: Any, *, secret: bool) -> str | None:
    """None when `value` fits `annotation`, else what is wrong."""
    got = f"got {_describe(value, secret=secret)}"
    if annotation in (UInt, UInt32):
        upper = U32_MAX if annotation == UInt32 else None
        fits = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if fits and (upper is None or value <= upper):
            return None
        bound = f"between 0 and {upper}" if upper is not None else ">= 0"
        return f"must be an integer {bound} ({got})"
    if annotation is bool:
        return None if isinstance(value, bool) else f"must be true or false ({got})"
    # Strings, and Permission, whose value is checked in its own step.
    return None if isinstance(value, str) else f"must be a string ({got})"


def _check_types(document: dict[str, Any], path: str) -> None:
    for section, (_, is_array) in _SECTIONS.items():
        value = document.get(section)
        if value is None:
            continue
        if is_array and not (isinstance(value, list) and all(isinstance(e, dict) for e in value)):
            raise ConfigError(
                path,
                f"{_key_name(section)} must be an array of tables "
                f"(got {_describe(value, secret=True)})",
            )
        if not is_array and not isinstance(value, dict):
            raise ConfigError(
                path, f"{_key_name(section)} must be a table (got {_describe(value, secret=True)})"
            )
    for section, index, table in _iter_tables(document):
        fields = _file_fields(section)
        for key, value in table.items():
            problem = _type_problem(fields[key], value, secret=(section, key) in _SECRET_KEYS)
            if problem is not None:
                raise ConfigError(path, f"{_key_name(section, key, index)} {problem}")


def _normalise_permissions(document: dict[str, Any], path: str) -> None:
    for index, solver in enumerate(document.get("solvers", [])):
        if "permission" not in solver:
            continue
        written = solver["permission"]
        lowered = written.strip().lower()
        if lowered not in PERMISSIONS:
            raise ConfigError(
                path,
                f'{_key_name("solvers", "permission", index)} must be "read" or "write" '
                f"(got {json.dumps(written)})",
            )
        solver["permission"] = lowered


def _apply_env(config: Config, env: _Env) -> Config:
    """CORE-14 overrides, then the CORE-15 credential (stored trimmed, never from the file).

    The private key override is applied to the document before conversion, since the key may
    be absent from the file.
    """
    serbero = config.serbero
    serbero = msgspec.structs.replace(
        serbero,
        db_path=env.db_path or serbero.db_path,
        log_level=env.log_level or serbero.log_level,
    )
    reasoning = config.reasoning
    api_key_env = reasoning.api_key_env.strip()
    api_key = (_env_value(env.source, api_key_env) or "") if api_key_env else ""
    reasoning = msgspec.structs.replace(reasoning, api_key_env=api_key_env, api_key=api_key)
    return msgspec.structs.replace(config, serbero=serbero, reasoning=reasoning)


def _check_credential(reasoning: ReasoningConfig, path: str) -> None:
    if not reasoning.enabled:
        return
    if not reasoning.api_key_env:
        raise ConfigError(path, "[reasoning].api_key_env is empty but [reasoning].enabled = true")
    if not reasoning.api_key:
        raise ConfigError(
            path,
            f"[reasoning].enabled = true but the credential variable {reasoning.api_key_env} "
            "(named by [reasoning].api_key_env) is unset or empty",
        )


def _check_intervals(config: Config, path: str) -> None:
    if config.escalation.dispatch_interval_seconds == 0:
        raise ConfigError(path, "[escalation].dispatch_interval_seconds must be > 0")


def _normalise_keys(config: Config, path: str, *, key_from_env: bool) -> Config:
    """BEY-12: Mostro and Serbero keys to lowercase hex; invalid ones are fatal (CORE-8)."""
    try:
        mostro_hex = parse_public_key(config.mostro.pubkey)
    except KeyFormatError as exc:
        raise ConfigError(path, f"[mostro].pubkey is not a valid public key: {exc}") from None
    try:
        secret = parse_secret_key(config.serbero.private_key)
    except KeyFormatError as exc:
        source = ENV_PRIVATE_KEY if key_from_env else "[serbero].private_key"
        raise ConfigError(path, f"{source} is not a valid secret key: {exc}") from None
    return msgspec.structs.replace(
        config,
        mostro=MostroConfig(pubkey=mostro_hex),
        serbero=msgspec.structs.replace(config.serbero, private_key=secret.hex()),
    )


def _relay_problem(url: str) -> str | None:
    if url != url.strip() or not url:
        return "must be a ws:// or wss:// URL without surrounding spaces"
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in RELAY_SCHEMES:
        return f"must use ws:// or wss:// (got {json.dumps(url)})"
    if not parts.hostname or not port_ok:
        return f"has no valid host/port (got {json.dumps(url)})"
    return None


def _check_relays(config: Config, path: str) -> None:
    for index, relay in enumerate(config.relays):
        problem = _relay_problem(relay.url)
        if problem is not None:
            raise ConfigError(path, f"{_key_name('relays', 'url', index)} {problem}")


def _parse_solvers(config: Config, path: str) -> tuple[Config, list[ConfigWarning]]:
    """Parse each solver key once; malformed ones stay (AS-3), duplicates are fatal (BEY-12)."""
    solvers: list[SolverConfig] = []
    warnings: list[ConfigWarning] = []
    seen: dict[str, int] = {}
    for index, written in enumerate(config.solvers):
        solver = SolverConfig.from_text(written.pubkey, written.permission)
        identity = solver.pubkey_hex or solver.pubkey.strip()
        if identity in seen:
            raise ConfigError(
                path,
                f"{_key_name('solvers', 'pubkey', index)} duplicates "
                f"{_key_name('solvers', 'pubkey', seen[identity])} (the same key once normalised)",
            )
        seen[identity] = index
        if solver.pubkey_error is not None:
            warnings.append(
                ConfigWarning(
                    event="solver_pubkey_invalid",
                    message=(
                        f"{_key_name('solvers', 'pubkey', index)}: {solver.pubkey_error}; every "
                        "notification to this solver will be recorded as failed"
                    ),
                    fields={"idx": index, "error": solver.pubkey_error},
                )
            )
        solvers.append(solver)
    return msgspec.structs.replace(config, solvers=tuple(solvers)), warnings


def _split_listen(listen: str) -> tuple[str, int]:
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


def _check_health(config: Config, path: str) -> None:
    if not config.health.listen:
        return
    try:
        _split_listen(config.health.listen)
    except ValueError as exc:
        raise ConfigError(
            path, f"[health].listen {exc} (got {json.dumps(config.health.listen)})"
        ) from None


def _permission_warning(path: str, document_has_key: bool) -> list[ConfigWarning]:
    """BEY-23: a private key in a file that group or others can read."""
    if not document_has_key:
        return []
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if not mode & _SHARED_MODE_BITS:
        return []
    octal = f"{stat.S_IMODE(mode):04o}"
    return [
        ConfigWarning(
            event="config_private_key_readable",
            message=(
                f"{path} holds [serbero].private_key and is readable by group or others "
                f"(mode {octal}); chmod 600 it, or move the key to the {ENV_PRIVATE_KEY} "
                "environment variable"
            ),
            fields={"path": path, "mode": octal, "alternative": ENV_PRIVATE_KEY},
        )
    ]


def _build(document: dict[str, Any], env: Mapping[str, str], path: str) -> LoadedConfig:
    """Every step after TOML syntax, in CORE-16 order."""
    env_values = _Env.read(env)
    warnings = _strip_unknown(document)
    _check_required(document, env_values, path)
    _check_types(document, path)
    _normalise_permissions(document, path)
    if env_values.private_key is not None:
        document["serbero"]["private_key"] = env_values.private_key
    config = msgspec.convert(document, Config)
    config = _apply_env(config, env_values)
    _check_credential(config.reasoning, path)
    _check_intervals(config, path)
    config = _normalise_keys(config, path, key_from_env=env_values.private_key is not None)
    _check_relays(config, path)
    config, solver_warnings = _parse_solvers(config, path)
    _check_health(config, path)
    return LoadedConfig(config=config, path=path, warnings=(*warnings, *solver_warnings))


def config_from_toml(
    text: str, *, env: Mapping[str, str] | None = None, path: str = "<inline>"
) -> LoadedConfig:
    """Load from a TOML string (tests, tools). `env` defaults to empty, not os.environ."""
    return _build(_decode_document(text, path), {} if env is None else env, path)


def load_config(path: str | None = None, env: Mapping[str, str] = os.environ) -> LoadedConfig:
    """Read, override and validate the config at `path` (default: `resolve_config_path(env)`).

    Raises ConfigError with the single line to print. Never prints or logs.
    """
    resolved = resolve_config_path(env) if path is None else path
    document = _read_document(resolved)
    serbero = document.get("serbero")
    file_has_key = isinstance(serbero, dict) and bool(serbero.get("private_key"))
    loaded = _build(document, env, resolved)
    extra = _permission_warning(resolved, file_has_key)
    if not extra:
        return loaded
    return msgspec.structs.replace(loaded, warnings=(*loaded.warnings, *extra))


def validate_for_daemon(loaded: LoadedConfig) -> None:
    """The start-up checks a daemon needs beyond loading (CORE-8 step 11): relays exist."""
    if not loaded.config.relays:
        raise ConfigError(
            loaded.path, "no relays configured: add at least one [[relays]] entry with a url"
        )


# --- rendering ----------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


def _render_table(
    lines: list[str], header: str, table: Mapping[str, Any], comments: tuple[str, ...] = ()
) -> None:
    lines.append(header)
    lines.extend(f"# {comment}" for comment in comments)
    lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    lines.append("")


def render_toml(config: Config) -> str:
    """The effective config as TOML with secrets masked (check-config's output)."""
    data = config.masked()
    lines: list[str] = []
    for section, (_, is_array) in _SECTIONS.items():
        value = data[section]
        derived = _DERIVED.get(section, frozenset())
        if not is_array:
            comments: tuple[str, ...] = ()
            if section == "reasoning":
                state = "set (masked)" if config.reasoning.api_key else "not set"
                comments = (f"credential from {config.reasoning.api_key_env or '(none)'}: {state}",)
            table = {k: v for k, v in value.items() if k not in derived}
            _render_table(lines, f"[{section}]", table, comments)
            continue
        for entry in value:
            entry_comments: tuple[str, ...] = ()
            if section == "solvers":
                if entry["pubkey_error"]:
                    entry_comments = (entry["pubkey_error"],)
                elif entry["pubkey"] != MASK:
                    entry["pubkey"] = entry["pubkey_hex"]
            table = {k: v for k, v in entry.items() if k not in derived}
            _render_table(lines, f"[[{section}]]", table, entry_comments)
    return "\n".join(lines).rstrip("\n") + "\n"
