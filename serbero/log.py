"""Structured logging: one record per decision point, keyed by a stable event name.

Every call site passes the event name as the first positional argument
(`log.info("relay_connected", relay=url)`); docs/log-events.md is checked against them.

`configure_logging` turns the operator's filter (CORE-56: `info`, `serbero=debug,nostr_sdk=info`)
into a structlog pipeline that writes one line per record (CORE-57): JSON when the stream is not
a terminal (runit's `svlogd` captures it), a plain `key=value` line on a terminal, its values
escaped and clipped like every text for people (a relay's NOTICE is outside text). Every record
carries `timestamp` (ISO 8601, UTC), `level`, `target` and `event`. A last processor masks any
field whose name says "secret" — the call sites never log secrets, this is the safety net.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, MutableMapping
from functools import lru_cache
from typing import Any, Final, TextIO

import msgspec
import structlog

from serbero.printable import printable, printable_lines

__all__ = [
    "DEFAULT_TARGET",
    "REDACTED",
    "TRANSPORT_TARGET",
    "LogFilter",
    "LogFilterError",
    "configure_logging",
    "get_logger",
    "parse_filter",
]

DEFAULT_TARGET: Final = "serbero"
# The reference's transport crates; their directives steer our relay pool's records.
TRANSPORT_TARGET: Final = "serbero.relay"
TRANSPORT_ALIASES: Final = frozenset({"nostr_sdk", "nostr_relay_pool"})
REDACTED: Final = "<redacted>"

TRACE: Final = 5
DEBUG: Final = 10
INFO: Final = 20
WARN: Final = 30
ERROR: Final = 40
OFF: Final = 100

# Filter vocabulary (case-insensitive). `trace` is accepted for drop-in configs; structlog has no
# trace method, so it behaves like `debug`.
LEVELS_BY_NAME: Final[Mapping[str, int]] = {
    "trace": TRACE,
    "debug": DEBUG,
    "info": INFO,
    "warn": WARN,
    "warning": WARN,
    "error": ERROR,
    "off": OFF,
}
# structlog method name -> numeric level and the name written into the record.
_METHOD_LEVELS: Final[Mapping[str, tuple[int, str]]] = {
    "debug": (DEBUG, "debug"),
    "info": (INFO, "info"),
    "msg": (INFO, "info"),
    "warning": (WARN, "warn"),
    "warn": (WARN, "warn"),
    "error": (ERROR, "error"),
    "err": (ERROR, "error"),
    "exception": (ERROR, "error"),
    "critical": (ERROR, "error"),
    "fatal": (ERROR, "error"),
}
_TARGET_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|::)[A-Za-z0-9_]+)*$")
_LEADING_KEYS: Final = ("timestamp", "level", "target", "event")
# A console field longer than this is clipped; the JSON line always carries it whole.
CONSOLE_MAX_SHOWN: Final = 300

# A field is secret when its name contains one of these, or one of its `_`-separated words is
# in _SECRET_WORDS (so `sk` and `task_sk` are masked but `task` and `disk` are not).
_SECRET_SUBSTRINGS: Final = ("private_key", "privkey", "api_key", "apikey", "secret", "nsec")
_SECRET_WORDS: Final = frozenset({"sk", "password", "passphrase", "credential", "token"})
_NSEC_PREFIX: Final = "nsec1"
_SECRET_KEY_CACHE_SIZE: Final = 1024


class LogFilterError(ValueError):
    """A log filter string that cannot be parsed."""


class LogFilter(msgspec.Struct, frozen=True):
    """Parsed CORE-56 filter: a default level plus per-target levels (longest prefix wins)."""

    default: int = INFO
    directives: tuple[tuple[str, int], ...] = ()

    def level_for(self, target: str) -> int:
        """The minimum level that passes for `target` (segment-wise prefix match)."""
        best_len = -1
        level = self.default
        for prefix, directive_level in self.directives:
            matches = target == prefix or target.startswith(prefix + ".")
            if matches and len(prefix) > best_len:
                best_len = len(prefix)
                level = directive_level
        return level

    def minimum(self) -> int:
        return min([self.default, *(level for _, level in self.directives)])


def _parse_level(text: str, spec: str) -> int:
    level = LEVELS_BY_NAME.get(text.strip().lower())
    if level is None:
        raise LogFilterError(f"unknown level {text.strip()!r} in {spec!r}")
    return level


def _canonical_target(text: str, spec: str) -> str:
    target = text.strip()
    if not _TARGET_RE.match(target):
        raise LogFilterError(f"invalid target {target!r} in {spec!r}")
    if target in TRANSPORT_ALIASES:
        return TRANSPORT_TARGET
    return target.replace("::", ".")


def _is_known_target(target: str) -> bool:
    return target in TRANSPORT_ALIASES or target == DEFAULT_TARGET or target.startswith("serbero.")


def parse_filter(spec: str) -> LogFilter:
    """Parse `level`, `target=level,...` or a mix (a bare level is the default)."""
    default = INFO
    directives: dict[str, int] = {}
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            continue
        if "=" in part:
            target_text, level_text = part.split("=", 1)
            target = _canonical_target(target_text, spec)
            level = _parse_level(level_text, spec)
        elif part.lower() in LEVELS_BY_NAME:
            default = LEVELS_BY_NAME[part.lower()]
            continue
        elif _is_known_target(part.replace("::", ".")):
            # A bare target enables everything for it, as the reference's filter syntax does.
            target = _canonical_target(part, spec)
            level = TRACE
        else:
            raise LogFilterError(f"{part!r} is neither a level nor a known target in {spec!r}")
        # Both transport aliases map to one target; the more verbose directive wins.
        directives[target] = min(level, directives.get(target, OFF))
    ordered = tuple(sorted(directives.items()))
    return LogFilter(default=default, directives=ordered)


@lru_cache(maxsize=_SECRET_KEY_CACHE_SIZE)
def _is_secret_key(key: str) -> bool:
    # Cached: call sites use a few dozen field names, and this runs for every field logged.
    lowered = key.lower()
    if any(part in lowered for part in _SECRET_SUBSTRINGS):
        return True
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", lowered))


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return REDACTED if value[: len(_NSEC_PREFIX)].lower() == _NSEC_PREFIX else value
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _is_secret_key(k) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask fields named like secrets and any `nsec1…` string, nested values included."""
    # Values are replaced in place (same keys): no copy of the record for the common case.
    for key, value in event_dict.items():
        if key == "event":
            continue
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        elif type(value) is str:
            if value[: len(_NSEC_PREFIX)].lower() == _NSEC_PREFIX:
                event_dict[key] = REDACTED
        elif value is not None and not isinstance(value, int | float):
            event_dict[key] = _redact_value(value)
    return event_dict


class _TargetFilter:
    """Drops records below the level configured for their target."""

    def __init__(self, log_filter: LogFilter) -> None:
        self._filter = log_filter
        self._cache: dict[str, int] = {}

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        target = event_dict.setdefault("target", DEFAULT_TARGET)
        threshold = self._cache.get(target)
        if threshold is None:
            threshold = self._filter.level_for(target)
            self._cache[target] = threshold
        level, name = _METHOD_LEVELS.get(method_name, (INFO, "info"))
        if level < threshold:
            raise structlog.DropEvent
        event_dict["level"] = name
        return event_dict


def _leading_fields_first(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _json_fallback(value: Any) -> Any:
    """What the JSON line shows for a value JSON has no type for (structlog's rule)."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


# One encoder for every record (json.dumps would build one per call); the line format is
# the standard library's default, which operators' grep patterns rely on.
_json_encoder: Final = json.JSONEncoder(default=_json_fallback)


def _render_json(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    return _json_encoder.encode(event_dict)


def _console_value(value: Any) -> str:
    """A field's value for a `key=value` line: printable, and quoted when a space, a quote or
    an `=` would blur where it ends (after escaping, a space is the only blank left)."""
    text = printable(value if isinstance(value, str) else repr(value), CONSOLE_MAX_SHOWN)
    if isinstance(value, str) and (text == "" or any(ch in " \"'=" for ch in text)):
        return "'" + text.replace("'", "\\'") + "'"
    return text


def _render_console(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """`<timestamp> <LEVEL> <target>: <event> key=value ...` with any traceback below."""
    timestamp = event_dict.pop("timestamp", "")
    level = str(event_dict.pop("level", "info")).upper()
    target = event_dict.pop("target", DEFAULT_TARGET)
    event = event_dict.pop("event", "")
    exception = event_dict.pop("exception", None)
    fields = " ".join(f"{key}={_console_value(value)}" for key, value in event_dict.items())
    line = f"{timestamp} {level:<5} {target}: {event}"
    if fields:
        line = f"{line} {fields}"
    if exception:
        line = f"{line}\n{printable_lines(str(exception))}"
    return line


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def configure_logging(
    level_spec: str, *, stream: TextIO | None = None, json: bool | None = None
) -> LogFilter:
    """Install the process-wide pipeline; returns the filter in effect.

    An unparsable `level_spec` prints one warning on stderr and falls back to `info` (CORE-56).
    `json=None` picks JSON lines unless `stream` is a terminal.
    """
    out = sys.stdout if stream is None else stream
    try:
        log_filter = parse_filter(level_spec)
    except LogFilterError as exc:
        print(f"serbero: invalid log filter: {exc}; using info", file=sys.stderr)
        log_filter = LogFilter()
    use_json = not _is_tty(out) if json is None else json
    renderer: Any = _render_json if use_json else _render_console
    minimum = min(log_filter.minimum(), ERROR)
    structlog.configure(
        processors=[
            _TargetFilter(log_filter),
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            redact_secrets,
            _leading_fields_first,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(max(minimum, DEBUG)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached: a later configure_logging (tests, the CLI) must reach existing loggers.
        cache_logger_on_first_use=False,
    )
    return log_filter


def get_logger(target: str = DEFAULT_TARGET) -> Any:
    """A structlog logger bound to `target` (e.g. `serbero.relay`)."""
    return structlog.get_logger(target=target)
