"""Logging: CORE-56 filter syntax, CORE-57 record shape, secret masking (design: Logging)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from serbero.log import (
    DEBUG,
    ERROR,
    INFO,
    OFF,
    REDACTED,
    TRACE,
    TRANSPORT_TARGET,
    WARN,
    LogFilter,
    LogFilterError,
    configure_logging,
    get_logger,
    parse_filter,
)


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def emit_all_levels(target: str) -> None:
    log = get_logger(target)
    log.debug("at_debug")
    log.info("at_info")
    log.warning("at_warn")
    log.error("at_error")


def passed(spec: str, target: str) -> list[str]:
    stream = io.StringIO()
    configure_logging(spec, stream=stream, json=True)
    emit_all_levels(target)
    return [r["event"] for r in records(stream)]


# --- record shape -------------------------------------------------------------------------


def test_json_line_shape() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)  # a StringIO is not a TTY: JSON
    get_logger("serbero.relay").info("relay_connected", relay="wss://r", attempt=2)
    get_logger("serbero.tracker").warning("transition_failed", dispute_id="d1")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert list(first) == ["timestamp", "level", "target", "event", "relay", "attempt"]
    assert first["level"] == "info"
    assert first["target"] == "serbero.relay"
    assert first["event"] == "relay_connected"
    assert (first["relay"], first["attempt"]) == ("wss://r", 2)
    assert first["timestamp"].endswith("Z")
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.tzinfo is not None and stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    second = json.loads(lines[1])
    assert (second["level"], second["target"], second["event"]) == (
        "warn",
        "serbero.tracker",
        "transition_failed",
    )


def test_bound_fields_and_default_target() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True)
    get_logger().bind(relay="wss://a").info("subscribing")
    (record,) = records(stream)
    assert record["target"] == "serbero"
    assert record["relay"] == "wss://a"


def test_exception_is_rendered_into_the_record() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("serbero.supervisor").exception("actor_crashed", actor="sender")
    (record,) = records(stream)
    assert record["level"] == "error"
    assert "RuntimeError: boom" in record["exception"]


def test_console_format_on_a_tty() -> None:
    stream = FakeTTY()
    configure_logging("info", stream=stream)
    get_logger("serbero.relay").info("relay_disconnected", relay="wss://r", reason="eof seen")
    line = stream.getvalue()
    assert line.endswith("\n")
    match = re.fullmatch(r"(\S+) (INFO) +(\S+): (\S+) (.*)\n", line)
    assert match is not None, line
    stamp, level, target, event, fields = match.groups()
    assert datetime.fromisoformat(stamp).utcoffset() is not None
    assert (level, target, event) == ("INFO", "serbero.relay", "relay_disconnected")
    assert fields == "relay=wss://r reason='eof seen'"


def test_json_can_be_forced_on_a_tty_and_console_off_one() -> None:
    tty = FakeTTY()
    configure_logging("info", stream=tty, json=True)
    get_logger().info("x")
    assert json.loads(tty.getvalue())["event"] == "x"
    plain = io.StringIO()
    configure_logging("info", stream=plain, json=False)
    get_logger().info("y")
    assert " INFO  serbero: y" in plain.getvalue()


# --- filter syntax (CORE-56) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", LogFilter(default=INFO)),
        ("info", LogFilter(default=INFO)),
        ("  DEBUG ", LogFilter(default=DEBUG)),
        ("trace", LogFilter(default=TRACE)),
        ("warn", LogFilter(default=WARN)),
        ("warning", LogFilter(default=WARN)),
        ("error", LogFilter(default=ERROR)),
        ("off", LogFilter(default=OFF)),
        ("serbero=debug", LogFilter(directives=(("serbero", DEBUG),))),
        (
            "serbero=debug,nostr_sdk=info",
            LogFilter(directives=(("serbero", DEBUG), (TRANSPORT_TARGET, INFO))),
        ),
        (
            "warn, serbero::store=debug ,",
            LogFilter(default=WARN, directives=(("serbero.store", DEBUG),)),
        ),
        (
            "nostr_sdk=warn,nostr_relay_pool=debug",
            LogFilter(directives=((TRANSPORT_TARGET, DEBUG),)),
        ),
        ("serbero", LogFilter(directives=(("serbero", TRACE),))),
        ("hyper=trace,info", LogFilter(directives=(("hyper", TRACE),))),
    ],
)
def test_parse_filter(spec: str, expected: LogFilter) -> None:
    assert parse_filter(spec) == expected


@pytest.mark.parametrize(
    "spec", ["verbose", "serbero=loud", "=debug", "serbero[span]=debug", "a b=info", "serbero=="]
)
def test_unparsable_filters_are_rejected(spec: str) -> None:
    with pytest.raises(LogFilterError):
        parse_filter(spec)


def test_level_for_uses_the_longest_matching_prefix() -> None:
    log_filter = parse_filter("error,serbero=warn,serbero.relay=debug,serbero.rel=trace")
    assert log_filter.level_for("serbero.relay") == DEBUG
    assert log_filter.level_for("serbero.relay.pool") == DEBUG
    assert log_filter.level_for("serbero.relayer") == WARN
    assert log_filter.level_for("serbero") == WARN
    assert log_filter.level_for("other") == ERROR


def test_level_filtering() -> None:
    assert passed("info", "serbero.ingest") == ["at_info", "at_warn", "at_error"]
    assert passed("warn", "serbero.ingest") == ["at_warn", "at_error"]
    assert passed("error", "serbero.ingest") == ["at_error"]
    assert passed("off", "serbero.ingest") == []
    assert passed("serbero=debug", "serbero.ingest") == [
        "at_debug",
        "at_info",
        "at_warn",
        "at_error",
    ]
    assert passed("trace", "serbero.ingest")[0] == "at_debug"


def test_transport_aliases_steer_the_relay_target() -> None:
    spec = "serbero=info,nostr_sdk=debug"
    assert passed(spec, TRANSPORT_TARGET)[0] == "at_debug"
    assert passed(spec, "serbero.ingest")[0] == "at_info"
    assert passed("serbero=debug,nostr_relay_pool=error", TRANSPORT_TARGET) == ["at_error"]


def test_unknown_targets_are_ignored() -> None:
    assert passed("hyper=trace", "serbero.ingest") == ["at_info", "at_warn", "at_error"]


def test_unparsable_spec_warns_on_stderr_and_uses_info(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    assert configure_logging("serbero=loud", stream=stream, json=True) == LogFilter()
    emit_all_levels("serbero.ingest")
    assert [r["event"] for r in records(stream)] == ["at_info", "at_warn", "at_error"]
    err = capsys.readouterr().err
    assert err.startswith("serbero: invalid log filter: ")
    assert err.rstrip("\n").endswith("; using info")
    assert err.count("\n") == 1


def test_reconfiguring_reaches_existing_loggers() -> None:
    log = get_logger("serbero.timer")
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", stream=first, json=True)
    log.info("one")
    configure_logging("info", stream=second, json=True)
    log.info("two")
    assert [r["event"] for r in records(first)] == ["one"]
    assert [r["event"] for r in records(second)] == ["two"]


# --- secrets ------------------------------------------------------------------------------


NSEC = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5"


@pytest.mark.parametrize(
    "key",
    [
        "private_key",
        "nsec",
        "api_key",
        "secret",
        "sk",
        "reasoning_api_key",
        "client_secret",
        "task_sk",
    ],
)
def test_fields_named_like_secrets_are_masked(key: str) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True)
    get_logger().info("leak_attempt", **{key: "s3cr3t-value"})
    assert "s3cr3t-value" not in stream.getvalue()
    assert records(stream)[0][key] == REDACTED


def test_nested_and_nsec_values_are_masked_but_ordinary_fields_are_not() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True)
    get_logger().info(
        "mixed",
        config={"serbero": {"private_key": "abc", "db_path": "x.db"}, "keys": [NSEC, "npub1x"]},
        note=NSEC.upper(),
        task="renotify",
        disk="sda",
        pubkey="ab" * 32,
    )
    (record,) = records(stream)
    assert record["config"] == {
        "serbero": {"private_key": REDACTED, "db_path": "x.db"},
        "keys": [REDACTED, "npub1x"],
    }
    assert record["note"] == REDACTED
    assert (record["task"], record["disk"], record["pubkey"]) == ("renotify", "sda", "ab" * 32)
    assert NSEC not in stream.getvalue()


def test_console_output_is_masked_too() -> None:
    stream = FakeTTY()
    configure_logging("info", stream=stream)
    get_logger().info("leak_attempt", private_key="deadbeef", relay=NSEC)
    line = stream.getvalue()
    assert "deadbeef" not in line and NSEC not in line
    assert f"private_key={REDACTED}" in line


def test_json_lines_keep_the_standard_format_and_show_other_values_by_repr() -> None:
    """Operators grep for `"level": "info"`; values JSON has no type for appear as repr."""

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    class Rendered:
        def __structlog__(self) -> dict[str, int]:
            return {"n": 1}

    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True)
    get_logger().info("odd_values", opaque=Opaque(), rendered=Rendered(), count=3, ratio=0.5)
    line = stream.getvalue()
    assert '"level": "info"' in line and '"event": "odd_values"' in line
    (record,) = records(stream)
    assert record["opaque"] == "<opaque>"
    assert record["rendered"] == {"n": 1}
    assert (record["count"], record["ratio"]) == (3, 0.5)
