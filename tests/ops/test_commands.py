"""`serbero status | disputes | show` through the real entry point (BEY-10).

Output shapes (`--json`), the human tables (terminal and piped), exit statuses, where the
database path comes from, and what `show` must never print.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from serbero.cli import SUBCOMMANDS, main
from serbero.protocol.keys import Keys, encode_nsec
from serbero.store.connection import open_database
from serbero.store.health import KEY_STOPPED_AT, write_health
from serbero.store.schema import SCHEMA_VERSION
from tests.ops.seed import (
    BUYER_KEY,
    FRESH,
    MEDIATED,
    MESSAGE_TEXT,
    MOSTRO,
    NEXT_STEP_TEXT,
    NOTIFIED,
    RATIONALE_ID,
    RATIONALE_TEXT,
    RESOLVED,
    SELLER_KEY,
    SOLVER_A,
    SUMMARY_TEXT,
    VERDICT_RATIONALE_TEXT,
)

NEVER_SHOWN = (
    RATIONALE_TEXT,
    "rationale-secret-words",
    VERDICT_RATIONALE_TEXT,
    "verdict-secret-words",
    MESSAGE_TEXT,
    "chat-content-secret",
    SUMMARY_TEXT,
    NEXT_STEP_TEXT,
    "DM body",
    BUYER_KEY,
    SELLER_KEY,
    BUYER_KEY[:8] + "…",
    SELLER_KEY[:8] + "…",
)


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code, out, err = run([*args, "--json"], capsys)
    assert err == ""
    return code, json.loads(out)


def run_on_tty(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    buffer = TtyBuffer()
    monkeypatch.setattr(sys, "stdout", buffer)
    code = main(args)
    return code, buffer.getvalue()


def write_config(tmp_path: Path, db_path: Path | str, extra: str = "") -> Path:
    secret = encode_nsec(Keys.from_secret(bytes.fromhex("11" * 32)).secret)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[serbero]\nprivate_key = "{secret}"\ndb_path = "{db_path}"\n'
        f'[mostro]\npubkey = "{MOSTRO}"\n[[relays]]\nurl = "wss://relay.example"\n{extra}'
    )
    path.chmod(0o600)
    return path


def test_the_views_are_registered_subcommands() -> None:
    names = [command.name for command in SUBCOMMANDS]
    for name in ("status", "disputes", "show", "health-check"):
        assert name in names


# --- status -------------------------------------------------------------------------------


def test_status_json_shape_and_exit_0_when_healthy(
    v6_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(["status", "--db", str(v6_db)], capsys)
    assert code == 0
    assert set(data) == {
        "database",
        "schema_version",
        "now",
        "healthy",
        "problems",
        "relays",
        "relays_connected",
        "heartbeat",
        "stopped_at",
        "last_dispute_event",
        "disputes_total",
        "lifecycle_counts",
        "outbox",
        "pending_handoffs",
        "unavailable",
        "write_lock_holder",
        "mediation",
    }
    assert data["healthy"] is True and data["problems"] == []
    # The seed's clock, from its health flush at seed + 500 (`now` may be a second later).
    seeded = data["heartbeat"]["at"] - 500
    assert data["relays"][0] == {
        "url": "wss://relay.one",
        "state": "connected",
        "connected": True,
        "since": seeded + 10,
        "last_event_at": seeded + 390,
    }
    assert set(data["heartbeat"]) == {"at", "age", "stale", "stale_after", "started_at"}
    assert data["outbox"] == {
        "pending": 2,
        "in_flight": 1,
        "failed": 0,
        "oldest_pending_at": seeded + 200,
    }
    assert data["last_dispute_event"]["event_id"] == f"ev-{RESOLVED}-settled"
    assert data["pending_handoffs"] == 1
    # The seed's session is `classified`; its handoff was dispatched, NOTIFIED's is pending.
    assert data["mediation"] == {
        "live_sessions": 1,
        "live_by_state": {
            "opening": 0,
            "awaiting_response": 0,
            "classified": 1,
            "follow_up_pending": 0,
            "summary_pending": 0,
        },
        "escalations": {"recommended": 0, "dispatched": 1, "send_failed": 0, "pending": 1},
    }


def test_status_exits_2_when_the_heartbeat_is_stale(
    stale_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["status", "--db", str(stale_db)], capsys)
    assert code == 2
    assert out.startswith("serbero status: UNHEALTHY: heartbeat stale: ")
    assert err == ""


def test_status_on_a_reference_database_prints_and_exits_2(
    v5_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(["status", "--db", str(v5_db)], capsys)
    assert code == 2
    assert data["relays"] is None and data["outbox"] is None and data["heartbeat"] is None
    assert data["problems"] == ["no health record: the daemon never ran on this database"]
    code, out, _ = run(["status", "--db", str(v5_db)], capsys)
    assert "relays      unavailable" in out
    assert "outbox      unavailable" in out


def test_status_human_table_on_a_terminal_and_piped(
    v6_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, piped, _ = run(["status", "--db", str(v6_db)], capsys)
    assert code == 0
    lines = piped.splitlines()
    assert lines[0] == "serbero status: healthy"
    assert lines[1] == f"database    {v6_db} (schema version {SCHEMA_VERSION})"
    assert "disputes    new 1  notified 1  taken 1  waiting 0  escalated 0  resolved 1" in piped
    assert "outbox      pending 2 (in flight 1, oldest " in piped
    assert (
        "mediation   live sessions 1 (opening 0  awaiting_response 0  classified 1"
        "  follow_up_pending 0  summary_pending 0)" in piped
    )
    assert "escalations recommended 0  dispatched 1  send failed 0  pending 1" in piped
    assert "relays      1 of 2 connected" in piped
    assert any(line.split()[:2] == ["wss://relay.two", "backoff"] for line in lines)
    code, tty = run_on_tty(["status", "--db", str(v6_db)], monkeypatch)
    assert code == 0
    assert tty.splitlines()[0] == "serbero status: healthy"
    with pytest.raises(json.JSONDecodeError):
        json.loads(tty)


# --- database path and errors -------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["disputes"], ["show", MEDIATED]])
def test_a_missing_database_is_one_clear_line_and_exit_1(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "absent.db"
    code, out, err = run([*command, "--db", str(absent)], capsys)
    assert code == 1
    assert out == ""
    assert err == (
        f"serbero: database not found: {absent} (set [serbero].db_path, SERBERO_DB_PATH or --db)\n"
    )
    assert not absent.exists()


def test_the_db_path_comes_from_the_config(
    v6_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, v6_db)
    code, data = run_json(["status", "--config", str(config)], capsys)
    assert code == 0
    assert data["database"] == str(v6_db)


def test_serbero_db_path_overrides_the_config_and_db_overrides_both(
    v6_db: Path,
    v5_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, tmp_path / "elsewhere.db")
    monkeypatch.setenv("SERBERO_DB_PATH", str(v5_db))
    _, data = run_json(["disputes", "--config", str(config)], capsys)
    assert [d["dispute_id"] for d in data] == [FRESH, NOTIFIED]
    _, data = run_json(["disputes", "--config", str(config), "--db", str(v6_db)], capsys)
    assert len(data) == 4


def test_serbero_db_path_alone_works_without_a_readable_config(
    v6_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SERBERO_DB_PATH", str(v6_db))
    code, data = run_json(["disputes"], capsys)
    assert code == 0 and len(data) == 4


def test_without_db_config_or_env_the_config_error_is_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["status"], capsys)
    assert code == 1
    assert out == ""
    assert err.startswith("failed to load config from ./config.toml: ")


# --- what the views read from the config (no private key) --------------------------------


def keyless_config(tmp_path: Path, serbero: str, extra: str = "") -> Path:
    """A config as the runit guide leaves it: the key in the service's env directory."""
    path = tmp_path / "keyless.toml"
    path.write_text(f"[serbero]\n{serbero}\n{extra}")
    return path


@pytest.mark.parametrize("command", [["status"], ["disputes"], ["show", MEDIATED]])
def test_views_need_no_private_key_nor_the_rest_of_the_config(
    command: list[str], v6_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No key, no [mostro], and keys a view does not read may even be wrong (BEY-10)."""
    extra = '[[solvers]]\npubkey = "not-a-key"\n[timeouts]\nrenotification_seconds = -1\n'
    config = keyless_config(tmp_path, f'db_path = "{v6_db}"\nprivate_key = "nope"', extra)
    code, out, err = run([*command, "--config", str(config)], capsys)
    assert (code, err) == (0, "")
    assert out


@pytest.mark.parametrize(
    ("serbero", "extra", "reason"),
    [
        ("db_path = 5", "", "[serbero].db_path must be a string (got integer 5)"),
        ("db_path = 'x.db'", "[health]\nlisten = '0.0.0.0:1'\n", "[health].listen the health"),
        ("db_path = 'x.db'", "[[relays]]\nurl = 'http://r'\n", "[[relays]][0].url must use"),
        ("db_path = 'x.db'", "[[relays]]\nname = 'r'\n", "missing required key [[relays]][0].url"),
        ("db_path = 'x.db'", "[relays]\nurl = 'r'\n", "[[relays]] must be an array of tables"),
    ],
)
def test_a_config_broken_in_what_views_read_is_the_one_line_error(
    serbero: str, extra: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = keyless_config(tmp_path, serbero, extra)
    code, out, err = run(["status", "--config", str(config)], capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"failed to load config from {config}: {reason}")
    assert err.count("\n") == 1


def test_serbero_db_path_overrides_a_keyless_config(
    v6_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SERBERO_DB_PATH", f" {v6_db} ")
    config = keyless_config(tmp_path, 'db_path = "elsewhere.db"')
    code, data = run_json(["status", "--config", str(config)], capsys)
    assert (code, data["database"]) == (0, str(v6_db))


# --- a clean stop -------------------------------------------------------------------------


def test_status_after_a_clean_stop_says_stopped_and_exits_3(
    v6_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn, _ = open_database(str(v6_db))
    try:
        stopped = int(time.time()) - 5
        write_health(conn, relays=(), values={KEY_STOPPED_AT: str(stopped)}, now=stopped)
    finally:
        conn.close()
    code, data = run_json(["status", "--db", str(v6_db)], capsys)
    assert code == 3
    assert data["stopped_at"] == stopped and data["healthy"] is False
    assert data["problems"] == ["stopped: the daemon shut down cleanly"]
    code, out, _ = run(["status", "--db", str(v6_db)], capsys)
    assert code == 3
    assert out.startswith("serbero status: stopped (clean shutdown ")


# --- disputes -----------------------------------------------------------------------------


def test_disputes_json_rows(v6_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(["disputes", "--db", str(v6_db), "--state", "taken"], capsys)
    assert code == 0
    assert len(data) == 1
    assert set(data[0]) == {
        "dispute_id",
        "event_id",
        "mostro_pubkey",
        "initiator_role",
        "dispute_status",
        "event_timestamp",
        "detected_at",
        "lifecycle_state",
        "assigned_solver",
        "last_notified_at",
        "last_state_change",
    }
    assert (data[0]["dispute_id"], data[0]["assigned_solver"]) == (MEDIATED, SOLVER_A)


def test_disputes_open_and_limit(v6_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, data = run_json(["disputes", "--db", str(v6_db), "--state", "open", "--limit", "2"], capsys)
    assert [d["dispute_id"] for d in data] == [FRESH, NOTIFIED]


def test_disputes_table_piped_keeps_keys_whole_and_shortens_them_on_a_terminal(
    v6_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, piped, _ = run(["disputes", "--db", str(v6_db)], capsys)
    assert code == 0
    lines = piped.splitlines()
    assert lines[0].split() == [
        "DISPUTE",
        "STATE",
        "STATUS",
        "INITIATOR",
        "DETECTED",
        "LAST",
        "CHANGE",
        "ASSIGNED",
    ]
    assert [line.split()[0] for line in lines[1:]] == [RESOLVED, FRESH, NOTIFIED, MEDIATED]
    assert SOLVER_A in piped
    code, tty = run_on_tty(["disputes", "--db", str(v6_db)], monkeypatch)
    assert code == 0
    assert SOLVER_A not in tty
    assert f"{SOLVER_A[:8]}…{SOLVER_A[-4:]}" in tty


def test_disputes_with_nothing_to_list(v6_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["disputes", "--db", str(v6_db), "--state", "waiting"], capsys)
    assert (code, out) == (0, "no disputes\n")
    _, data = run_json(["disputes", "--db", str(v6_db), "--state", "waiting"], capsys)
    assert data == []


@pytest.mark.parametrize("bad", [["--limit", "0"], ["--limit", "x"], ["--state", "bogus"]], ids=str)
def test_disputes_rejects_bad_arguments(
    bad: list[str], v6_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["disputes", "--db", str(v6_db), *bad], capsys)
    assert code == 2
    assert out == ""
    assert "usage:" in err


# --- show ---------------------------------------------------------------------------------


def test_show_json_shape(v6_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(["show", MEDIATED, "--db", str(v6_db)], capsys)
    assert code == 0
    assert set(data) == {"dispute", "sessions", "mediation", "entries", "unavailable"}
    assert data["dispute"]["dispute_id"] == MEDIATED
    assert data["unavailable"] == []
    for entry in data["entries"]:
        assert set(entry) == {"at", "source", "kind", "ref", "details"}
    summary = next(e for e in data["entries"] if e["source"] == "mediation_summaries")
    assert summary["details"]["rationale_id"] == RATIONALE_ID
    event = next(e for e in data["entries"] if e["kind"] == "classification_produced")
    assert event["details"]["payload"]["buyer_trade_pubkey"] == "<hidden>"
    assert event["details"]["payload"]["note"] == "quoting <hidden> and <hidden>"


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_show_never_prints_rationale_chat_summary_bodies_or_party_keys(
    as_json: bool, v6_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["show", MEDIATED, "--db", str(v6_db), *(["--json"] if as_json else [])]
    code, piped, _ = run(args, capsys)
    tty_code, tty = run_on_tty(args, monkeypatch)
    assert code == tty_code == 0
    for output in (piped, tty):
        assert RATIONALE_ID[:8] in output
        assert "mediation_message_inbound" in output
        for secret in NEVER_SHOWN:
            assert secret not in output


def test_show_table_lists_the_timeline(v6_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["show", RESOLVED, "--db", str(v6_db)], capsys)
    assert code == 0
    assert out.splitlines()[0] == f"dispute     {RESOLVED}"
    header = next(line for line in out.splitlines() if line.startswith("TIME"))
    assert header.split() == ["TIME", "SOURCE", "WHAT", "REF", "DETAILS"]
    assert "from=notified to=resolved trigger=dispute_resolved_externally" in out


def test_show_on_a_reference_database_names_the_missing_tables(
    v5_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["show", NOTIFIED, "--db", str(v5_db)], capsys)
    assert code == 0
    assert "unavailable notification_outbox, serbero_rationale_occurrences (tables absent)" in out
    assert "handoff_prepared" in out


def test_show_an_unknown_dispute_exits_1(v6_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["show", "nope", "--db", str(v6_db)], capsys)
    assert code == 1
    assert out == ""
    assert err == f"serbero: no dispute 'nope' in {v6_db}\n"
