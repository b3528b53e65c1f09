"""The `docs/log-events.md` table agrees with the log calls in `serbero/` (issue #7 item 4).

On failure the message lists the exact rows to add, remove or replace.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.log_catalogue import (
    CATALOGUE,
    SECTION_TITLE,
    TABLE_HEADER,
    CatalogueError,
    compare,
    explain,
    parse_rows,
    render_section,
    rewrite_catalogue,
    scan_events,
    scan_source,
    section_bounds,
)

SAMPLE = """
from serbero.log import get_logger

log = get_logger("serbero.sample")
other = get_logger("serbero.other").bind(relay="x")


class Actor:
    def __init__(self) -> None:
        self._events = get_logger("serbero.actor")

    def run(self, url: str, warning) -> None:
        self._events.info("actor_started", url=url)
        other.debug("bound_logger_event")
        log.warning("sample_warned", relay=url, reason="r")
        log.warning("sample_warned", relay=url, **{"extra": 1})
        log.error("sample_failed")
        log.exception("sample_crashed", error="e")
        log.info(warning.event, **warning.fields)
        log.info(f"dynamic_{url}")
        fields = {"dispute_id": 1, "solver": 2}
        log.info("from_a_dict", **fields)
        log.info("opaque_fields", **self.extra)
        print("not_an_event")
        math.log(2)
        records.info("not_a_logger")


def finding():
    return ConfigWarning(event="config_odd", message="m", fields={"key": "k"})
"""


def test_the_scanner_finds_log_calls_levels_fields_and_dynamic_names() -> None:
    found, dynamic = scan_source(SAMPLE, "sample.py")
    events = {(name, level, fields) for name, level, fields, _ in found}
    assert events == {
        ("actor_started", "info", ("url",)),
        ("bound_logger_event", "debug", ()),
        ("sample_warned", "warn", ("relay", "reason")),
        ("sample_warned", "warn", ("relay", "extra")),
        ("from_a_dict", "info", ("dispute_id", "solver")),
        ("sample_failed", "error", ()),
        ("sample_crashed", "error", ("error",)),
        ("config_odd", "warn", ("key",)),
    }
    assert [site.line for site in dynamic] == [20, 23]


def test_compare_says_which_rows_to_add_remove_and_replace(tmp_path: Path) -> None:
    source = tmp_path / "serbero"
    source.mkdir()
    (source / "mod.py").write_text(
        "log = get_logger()\n"
        'log.info("kept", a=1)\n'
        'log.warning("changed", b=2)\n'
        'log.error("new_one", c=3)\n'
    )
    scan = scan_events(source)
    catalogue = tmp_path / "log-events.md"
    catalogue.write_text(
        "# Title\n\ntext\n\n"
        f"{SECTION_TITLE}\n\nintro\n\n{TABLE_HEADER}\n|---|---|---|---|\n"
        "| `changed` | info | `b` | when it changes |\n"
        "| `gone` | info | — | never |\n"
        "| `kept` | info | `a` | always |\n"
    )
    text = catalogue.read_text()
    diff = compare(scan, parse_rows(text[section_bounds(text)[0] :]))
    assert diff.add == ("| `new_one` | error | `c` |  |",)
    assert diff.remove == ("| `gone` | info | — | never |",)
    assert [new for new, _, _ in diff.replace] == ["| `changed` | warn | `b` | when it changes |"]
    message = explain(diff)
    assert "ADD these rows" in message and "| `new_one` | error | `c` |  |" in message
    assert "REMOVE these rows" in message and "`gone`" in message
    assert "level in code: warn (serbero/mod.py:3)" in message
    rewrite_catalogue(catalogue, scan)
    rewritten = catalogue.read_text()
    assert rewritten.startswith("# Title\n\ntext\n\n")
    rows = parse_rows(rewritten[section_bounds(rewritten)[0] :])
    assert [(r.name, r.levels, r.fields, r.when) for r in rows] == [
        ("changed", ("warn",), ("b",), "when it changes"),
        ("kept", ("info",), ("a",), "always"),
        ("new_one", ("error",), ("c",), ""),
    ]
    after = compare(scan, rows)
    assert after.missing_when == ("| `new_one` | error | `c` |  |",)
    assert not after.add and not after.remove and not after.replace


def test_a_malformed_row_or_a_missing_section_is_reported() -> None:
    with pytest.raises(CatalogueError, match="no "):
        section_bounds("# README\n")
    with pytest.raises(CatalogueError, match="malformed catalogue row"):
        parse_rows(f"{SECTION_TITLE}\n| event_without_backticks | info | — | x |\n")


def test_log_catalogue_matches_the_code() -> None:
    text = CATALOGUE.read_text(encoding="utf-8")
    start, _ = section_bounds(text)
    assert "\n## " not in text[start + 1 :], f'"{SECTION_TITLE}" must be the last section'
    scan = scan_events()
    dynamic = ", ".join(str(site) for site in scan.dynamic)
    assert not scan.dynamic, f"log event names must be string literals: {dynamic}"
    diff = compare(scan, parse_rows(text[start:]))
    assert diff.empty(), explain(diff)


def test_the_generated_section_round_trips() -> None:
    scan = scan_events()
    section = render_section(scan, {name: "w" for name in scan.events})
    rows = parse_rows(section)
    assert compare(scan, rows).empty()
