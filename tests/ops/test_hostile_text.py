"""Hostile text from a database, a config file or a relay never reaches the terminal raw (BEY-28).

The reference stores any dispute id it receives, so a `serbero.db` it wrote can hold ANSI
sequences, bells, other C0/C1 controls, bidirectional overrides and ids thousands of
characters long. Every operator command's text output shows them escaped and clipped, with
its columns still aligned; `--json` returns exactly what is stored; the console log renderer
escapes the same values and the JSON log keeps them exact.
"""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path
from typing import Any, Final

import apsw
import pytest

from serbero.log import configure_logging, get_logger
from serbero.printable import display_width, printable
from tests.ops.seed import MOSTRO, SOLVER_A, T0
from tests.ops.test_commands import run, run_json, run_on_tty, write_config
from tests.store.reference_schema import build_reference

ANSI: Final = "ansi-\x1b[2J\x1b[H\x1b[31mred\x1b[0m\x07"
C0: Final = "c0-" + "".join(chr(code) for code in range(1, 0x20)) + "\x7f"
C1: Final = "c1-" + "".join(chr(code) for code in range(0x80, 0xA0))
BIDI: Final = "bidi-\u202edi.exe\u202c-\u2066\u2067x\u2069\u200f"
LONG: Final = "long-" + "x" * 4995
TITLE: Final = "\x1b]0;owned\x07"  # an OSC sequence that retitles the terminal window
HOSTILE_IDS: Final = (ANSI, C0, C1, BIDI, LONG)
# The lifecycle states the rows are given: the reference's own, and one hand-edited.
STATES: Final = ("new", "notified", "resolved", "notified", "\x1b[5mblink")


def is_safe(text: str) -> bool:
    """Nothing a terminal acts on: every character printable, lines broken only by LF."""
    return all(ch.isprintable() or ch == "\n" for ch in text)


def seed_hostile(path: Path) -> None:
    """A reference (v5) database whose text columns hold hostile values."""
    conn = apsw.Connection(str(path))
    try:
        build_reference(conn, 5)
        with conn:
            for index, (dispute_id, state) in enumerate(zip(HOSTILE_IDS, STATES, strict=True)):
                at = T0 + 100 * index
                conn.execute(
                    "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
                    " dispute_status, event_timestamp, detected_at, lifecycle_state,"
                    " last_notified_at, last_state_change, assigned_solver)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        dispute_id,
                        f"ev-{dispute_id}",
                        MOSTRO,
                        TITLE,
                        BIDI,
                        at - 5,
                        at,
                        state,
                        at,
                        at,
                        C1 if index % 2 else None,
                    ),
                )
                conn.execute(
                    "INSERT INTO notifications (dispute_id, solver_pubkey, sent_at, status,"
                    " error_message, notif_type) VALUES (?, ?, ?, 'failed', ?, 'initial')",
                    (dispute_id, SOLVER_A, at + 1, ANSI),
                )
                conn.execute(
                    "INSERT INTO dispute_state_transitions (dispute_id, from_state, to_state,"
                    " transitioned_at, trigger) VALUES (?, 'new', ?, ?, ?)",
                    (dispute_id, state, at + 2, C0),
                )
    finally:
        conn.close()


@pytest.fixture
def hostile_db(tmp_path: Path) -> Path:
    path = tmp_path / "reference.db"
    seed_hostile(path)
    return path


def column_starts(line: str, cells: list[str]) -> list[int]:
    """The display column where each of `cells` begins in `line`, searched left to right."""
    starts, index = [], 0
    for cell in cells:
        index = line.index(cell, index)
        starts.append(display_width(line[:index]))
        index += len(cell)
    return starts


# --- disputes -----------------------------------------------------------------------------


@pytest.mark.parametrize("on_tty", [False, True])
def test_disputes_text_is_escaped_clipped_and_aligned(
    hostile_db: Path,
    on_tty: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["disputes", "--db", str(hostile_db)]
    if on_tty:
        code, out = run_on_tty(args, monkeypatch)
    else:
        code, out, _ = run(args, capsys)
    assert code == 0
    assert is_safe(out)
    header, *rows = out.splitlines()
    assert len(rows) == len(HOSTILE_IDS)
    # Newest first; each row shows its id as stored, escaped and clipped.
    for row, dispute_id, state in zip(rows, reversed(HOSTILE_IDS), reversed(STATES), strict=True):
        cells = [printable(dispute_id), printable(state), printable(BIDI), printable(TITLE)]
        assert row.startswith(cells[0])
        assert column_starts(row, cells) == column_starts(header, [c[:4] for c in HEADERS])
    assert "…[+" in rows[0]  # the 5,000-character id, clipped


HEADERS: Final = ["DISPUTE", "STATE", "STATUS", "INITIATOR"]


def test_disputes_json_returns_the_exact_stored_values(
    hostile_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(["disputes", "--db", str(hostile_db)], capsys)
    assert code == 0
    assert [d["dispute_id"] for d in data] == list(reversed(HOSTILE_IDS))
    assert {d["initiator_role"] for d in data} == {TITLE}
    assert {d["dispute_status"] for d in data} == {BIDI}
    assert [d["lifecycle_state"] for d in data] == list(reversed(STATES))


def test_disputes_by_state_shows_the_resolved_hostile_id_escaped(
    hostile_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["disputes", "--db", str(hostile_db), "--state", "resolved"], capsys)
    assert code == 0
    assert is_safe(out)
    assert out.splitlines()[1].startswith(printable(C1))


# --- show ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dispute_id", HOSTILE_IDS, ids=["ansi", "c0", "c1", "bidi", "long"])
def test_show_text_is_escaped_and_json_is_exact(
    hostile_db: Path, dispute_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["show", "--db", str(hostile_db), dispute_id], capsys)
    assert (code, err) == (0, "")
    assert is_safe(out)
    assert f"dispute     {printable(dispute_id)}\n" in out
    assert printable(TITLE) in out
    assert printable(ANSI) in out  # the notification's error message, in its details
    code, data = run_json(["show", "--db", str(hostile_db), dispute_id], capsys)
    assert code == 0
    assert data["dispute"]["dispute_id"] == dispute_id
    assert data["dispute"]["initiator_role"] == TITLE
    details = [entry["details"] for entry in data["entries"]]
    assert any(d.get("error") == ANSI for d in details)
    assert any(d.get("trigger") == C0 for d in details)


# --- status -------------------------------------------------------------------------------


def test_status_text_is_escaped_and_json_is_exact(
    hostile_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["status", "--db", str(hostile_db)], capsys)
    assert code == 2  # a reference database has no health record
    assert is_safe(out)
    assert printable(f"ev-{LONG}") in out  # the newest event, clipped
    assert f"{printable(STATES[-1])} 1" in out  # the hand-edited state's count
    code, data = run_json(["status", "--db", str(hostile_db)], capsys)
    assert data["last_dispute_event"]["event_id"] == f"ev-{LONG}"
    assert data["lifecycle_counts"][STATES[-1]] == 1


# --- check-config -------------------------------------------------------------------------


def hostile_config(tmp_path: Path) -> Path:
    # TOML escapes in the file: what the loader reads holds the raw characters.
    db_path = "\\u001b[2J\\u0007\\u202e" + "d" * 300 + ".db"
    extra = '[notifications]\n"\\u001b]0;owned\\u0007" = 1\n'
    return write_config(tmp_path, db_path, extra)


def test_check_config_text_is_escaped_toml_that_parses_back_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = hostile_config(tmp_path)
    code, out, err = run(["check-config", "--config", str(path)], capsys)
    assert code == 0
    assert is_safe(out)
    assert is_safe(err)
    assert "\\x1b]0;owned\\x07" in err  # the unknown key's warning names it, escaped
    stored = tomllib.loads(path.read_text())["serbero"]["db_path"]
    assert tomllib.loads(out)["serbero"]["db_path"] == stored
    code, out, _ = run(["check-config", "--config", str(path), "--json"], capsys)
    data = json.loads(out)
    assert data["config"]["serbero"]["db_path"] == stored
    assert TITLE in data["warnings"][0]["message"]


# --- the console log ----------------------------------------------------------------------


FIELDS: Final[dict[str, Any]] = {
    "dispute_id": ANSI,
    "c0": C0,
    "c1": C1,
    "bidi": BIDI,
    "notice": "\x1b[2J\x1b[31mrate-limited\x07",  # a relay's NOTICE without whitespace
    "spaced": f"a {TITLE} b",
    "long": LONG,
    "listed": [ANSI, BIDI],
}


@pytest.mark.usefixtures("restored_structlog")
def test_the_console_renderer_escapes_and_clips_field_values() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=False)
    try:
        raise RuntimeError(f"relay said {ANSI}")
    except RuntimeError:
        get_logger("serbero.relay").exception("relay_notice", **FIELDS)
    out = stream.getvalue()
    assert is_safe(out)
    assert f"dispute_id={printable(ANSI)} " in out
    assert "notice=\\x1b[2J\\x1b[31mrate-limited\\x07 " in out
    assert "spaced='a \\x1b]0;owned\\x07 b'" in out
    assert "…[+" in out  # the 5,000-character value, clipped
    assert "RuntimeError: relay said ansi-\\x1b[2J" in out  # the traceback, escaped


@pytest.mark.usefixtures("restored_structlog")
def test_the_json_log_keeps_every_value_exact() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True)
    get_logger("serbero.relay").info("relay_notice", **FIELDS)
    record = json.loads(stream.getvalue())
    assert {key: record[key] for key in FIELDS} == FIELDS


def test_an_unknown_hostile_id_is_named_escaped_once(
    hostile_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["show", "--db", str(hostile_db), "nope\x1b[2J"], capsys)
    assert (code, out) == (1, "")
    assert err == f"serbero: no dispute 'nope\\x1b[2J' in {hostile_db}\n"
