"""Reading `config.toml`: environment overrides and validation (CORE-13..17, BEY-12, BEY-23).

The file is decoded leniently (msgspec's TOML decoder into plain values), diffed against the
known key set so unknown keys become warnings instead of errors, type-checked with messages an
operator can act on, and only then converted into the frozen `Config` structs. Problems are
reported in CORE-16 order as one `ConfigError` line naming the file, the key and the problem.

The loader never prints or logs: warnings come back as data (`LoadedConfig.warnings`) because
logging is configured from the very config being loaded.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from serbero.config.schema import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_DB_PATH,
    ENV_CONFIG,
    ENV_DB_PATH,
    ENV_LOG,
    ENV_PRIVATE_KEY,
    PERMISSIONS,
    SECTIONS,
    U32_MAX,
    Config,
    ConfigError,
    ConfigWarning,
    HealthConfig,
    LoadedConfig,
    MostroConfig,
    ReasoningConfig,
    RelayConfig,
    SolverConfig,
    UInt,
    UInt32,
    ViewConfig,
    file_fields,
    key_name,
    split_listen,
)
from serbero.config.secret import Secret
from serbero.protocol.keys import KeyFormatError, parse_public_key, parse_secret_key

__all__ = [
    "config_from_toml",
    "load_config",
    "load_view_config",
    "resolve_config_path",
    "validate_for_daemon",
]

RELAY_SCHEMES: Final = frozenset({"ws", "wss"})
# Group/other permission bits: a key file readable by anyone but its owner (BEY-23).
_SHARED_MODE_BITS: Final = stat.S_IRWXG | stat.S_IRWXO
# What the operator views read (status, disputes, show, health-check): no key, no solvers.
_VIEW_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "serbero": ("db_path",),
    "relays": ("url",),
    "health": ("listen",),
}
_REQUIRED_SECTIONS: Final = ("serbero", "mostro")
_REQUIRED_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "serbero": ("private_key",),
    "mostro": ("pubkey",),
    "relays": ("url",),
    "solvers": ("pubkey",),
}


def _is_secret(section: str, key: str) -> bool:
    """A key whose value an error message must not echo."""
    return file_fields(section).get(key) is Secret


def _decode_secret(kind: type, value: Any) -> Any:
    """msgspec's hook: a TOML string becomes a `Secret` where the schema says so."""
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    raise NotImplementedError


# --- key naming and value description -----------------------------------------------------


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
    for section, (_, is_array) in SECTIONS.items():
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
        if name not in SECTIONS:
            del document[name]
            warnings.append(_unknown_key_warning(name))
    for section, index, table in _iter_tables(document):
        known = file_fields(section)
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
            raise ConfigError(path, f"missing required section {key_name(section)}")
    for section, index, table in _iter_tables(document):
        for key in _REQUIRED_KEYS.get(section, ()):
            if key in table:
                continue
            if (section, key) == ("serbero", "private_key") and env.private_key is not None:
                continue
            hint = f" (or set {ENV_PRIVATE_KEY})" if section == "serbero" else ""
            raise ConfigError(path, f"missing required key {key_name(section, key, index)}{hint}")


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
    for section, (_, is_array) in SECTIONS.items():
        value = document.get(section)
        if value is None:
            continue
        if is_array and not (isinstance(value, list) and all(isinstance(e, dict) for e in value)):
            raise ConfigError(
                path,
                f"{key_name(section)} must be an array of tables "
                f"(got {_describe(value, secret=True)})",
            )
        if not is_array and not isinstance(value, dict):
            raise ConfigError(
                path, f"{key_name(section)} must be a table (got {_describe(value, secret=True)})"
            )
    for section, index, table in _iter_tables(document):
        fields = file_fields(section)
        for key, value in table.items():
            problem = _type_problem(fields[key], value, secret=_is_secret(section, key))
            if problem is not None:
                raise ConfigError(path, f"{key_name(section, key, index)} {problem}")


def _normalise_permissions(document: dict[str, Any], path: str) -> None:
    for index, solver in enumerate(document.get("solvers", [])):
        if "permission" not in solver:
            continue
        written = solver["permission"]
        lowered = written.strip().lower()
        if lowered not in PERMISSIONS:
            raise ConfigError(
                path,
                f'{key_name("solvers", "permission", index)} must be "read" or "write" '
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
    api_key = Secret((_env_value(env.source, api_key_env) or "") if api_key_env else "")
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
        secret = parse_secret_key(config.serbero.private_key.reveal())
    except KeyFormatError as exc:
        source = ENV_PRIVATE_KEY if key_from_env else "[serbero].private_key"
        raise ConfigError(path, f"{source} is not a valid secret key: {exc}") from None
    return msgspec.structs.replace(
        config,
        mostro=MostroConfig(pubkey=mostro_hex),
        serbero=msgspec.structs.replace(config.serbero, private_key=Secret(secret.hex())),
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


def _check_relays(relays: tuple[RelayConfig, ...], path: str) -> None:
    for index, relay in enumerate(relays):
        problem = _relay_problem(relay.url)
        if problem is not None:
            raise ConfigError(path, f"{key_name('relays', 'url', index)} {problem}")


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
                f"{key_name('solvers', 'pubkey', index)} duplicates "
                f"{key_name('solvers', 'pubkey', seen[identity])} (the same key once normalised)",
            )
        seen[identity] = index
        if solver.pubkey_error is not None:
            warnings.append(
                ConfigWarning(
                    event="solver_pubkey_invalid",
                    message=(
                        f"{key_name('solvers', 'pubkey', index)}: {solver.pubkey_error}; every "
                        "notification to this solver will be recorded as failed"
                    ),
                    fields={"idx": index, "error": solver.pubkey_error},
                )
            )
        solvers.append(solver)
    return msgspec.structs.replace(config, solvers=tuple(solvers)), warnings


def _check_health(health: HealthConfig, path: str) -> None:
    if not health.listen:
        return
    try:
        split_listen(health.listen)
    except ValueError as exc:
        got = json.dumps(health.listen)
        raise ConfigError(path, f"[health].listen {exc} (got {got})") from None


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
    config = msgspec.convert(document, Config, dec_hook=_decode_secret)
    config = _apply_env(config, env_values)
    _check_credential(config.reasoning, path)
    _check_intervals(config, path)
    config = _normalise_keys(config, path, key_from_env=env_values.private_key is not None)
    _check_relays(config.relays, path)
    config, solver_warnings = _parse_solvers(config, path)
    _check_health(config.health, path)
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


def _view_document(document: dict[str, Any]) -> dict[str, Any]:
    """Only the `_VIEW_KEYS` of `document`; a section of the wrong shape is kept as it is, so
    its type error is still reported."""
    view: dict[str, Any] = {}
    for section, keys in _VIEW_KEYS.items():
        value = document.get(section)
        if isinstance(value, dict):
            view[section] = {key: value[key] for key in keys if key in value}
        elif isinstance(value, list):
            view[section] = [
                {key: e[key] for key in keys if key in e} if isinstance(e, dict) else e
                for e in value
            ]
        elif value is not None:
            view[section] = value
    return view


def load_view_config(path: str | None = None, env: Mapping[str, str] = os.environ) -> ViewConfig:
    """The keys an operator view needs, checked as the daemon checks them (BEY-10).

    Reading a database or probing the health URL needs no signing key, so a config whose key
    lives in the service's environment (or is absent) still serves; a broken `db_path`,
    `[health] listen` or relay URL is the same one-line `ConfigError` the daemon would give.
    """
    resolved = resolve_config_path(env) if path is None else path
    document = _view_document(_read_document(resolved))
    _check_types(document, resolved)
    for index, relay in enumerate(document.get("relays", [])):
        if "url" not in relay:
            raise ConfigError(resolved, f"missing required key {key_name('relays', 'url', index)}")
    relays = tuple(RelayConfig(url=relay["url"]) for relay in document.get("relays", []))
    health = HealthConfig(**document.get("health", {}))
    _check_relays(relays, resolved)
    _check_health(health, resolved)
    file_db = document.get("serbero", {}).get("db_path", DEFAULT_DB_PATH)
    return ViewConfig(
        path=resolved,
        db_path=_env_value(env, ENV_DB_PATH) or file_db,
        relays=relays,
        health=health,
    )
