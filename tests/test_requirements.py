"""Every requirement id cited in the code, tests, benches, demo and docs is explained in
docs/requirements.md, so a reader of this repository alone can resolve "(BEY-3)" or "CORE-55"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
INDEX: Final = REPO_ROOT / "docs" / "requirements.md"
SCANNED_DIRS: Final = ("serbero", "tests", "bench", "demo", "docs")
SCANNED_FILES: Final = ("README.md", "CONTRIBUTING.md")
SUFFIXES: Final = frozenset({".py", ".md", ".toml", ".txt"})
# Data files, not citations: vector files are third-party or generated.
SKIPPED: Final = (REPO_ROOT / "tests" / "vectors", INDEX)

PREFIXES: Final = ("ESC-AS", "PROTO", "CORE", "BEY", "ESC", "MED", "MAS", "AS", "Q")
# An id, then any number of ranges (`..7`, `–7`) or list items (`/7`) continuing it. The
# look-behind keeps `AS-3` from matching inside `MAS-3` or `ESC-AS-3`.
CITATION: Final = re.compile(
    rf"(?<![\w-])(?P<prefix>{'|'.join(PREFIXES)})-(?P<first>\d+)(?P<letter>[a-z]?)"
    r"(?P<more>(?:(?:\.\.|–|/)\d+[a-z]?)*)"
)
CONTINUATION: Final = re.compile(r"(\.\.|–|/)(\d+)([a-z]?)")
ENTRY: Final = re.compile(r"^- \*\*(?P<id>[A-Z]+(?:-AS)?-\d+[a-z]?)\*\* (?P<text>.*\S)\s*$")


def cited_ids(text: str) -> set[str]:
    """Every id a text cites, with ranges and lists expanded: `MED-160..162` is three ids."""
    found: set[str] = set()
    for match in CITATION.finditer(text):
        prefix = match["prefix"]
        found.add(f"{prefix}-{match['first']}{match['letter']}")
        previous = int(match["first"])
        for separator, number, letter in CONTINUATION.findall(match["more"]):
            value = int(number)
            if separator == "/" or letter:
                found.add(f"{prefix}-{number}{letter}")
            else:
                found.update(f"{prefix}-{n}" for n in range(previous + 1, value + 1))
            previous = value
    return found


def index_entries(text: str) -> dict[str, str]:
    """The index's `- **ID** text` lines, id to text; duplicates are reported by the test."""
    return {m["id"]: m["text"] for line in text.splitlines() if (m := ENTRY.match(line))}


def _scanned_files() -> Iterator[Path]:
    for name in SCANNED_DIRS:
        for path in sorted((REPO_ROOT / name).rglob("*")):
            if path.suffix not in SUFFIXES or not path.is_file():
                continue
            if any(path == skip or skip in path.parents for skip in SKIPPED):
                continue
            yield path
    for name in SCANNED_FILES:
        yield REPO_ROOT / name


def test_ranges_lists_and_prefixes_are_read_as_their_ids() -> None:
    text = (
        "(BEY-3, CORE-51..53) MED-143/144 PROTO-2/3/5 ESC-AS-24 AS-3 MAS-5a Q-10 "
        "BEY-25–27 not: NIP-44 SHA-256 UTF-8 HAS-2 x-MED-9"
    )
    assert cited_ids(text) == {
        "BEY-3",
        "CORE-51",
        "CORE-52",
        "CORE-53",
        "MED-143",
        "MED-144",
        "PROTO-2",
        "PROTO-3",
        "PROTO-5",
        "ESC-AS-24",
        "AS-3",
        "MAS-5a",
        "Q-10",
        "BEY-25",
        "BEY-26",
        "BEY-27",
    }


def test_the_index_is_well_formed() -> None:
    lines = [
        line for line in INDEX.read_text(encoding="utf-8").splitlines() if line.startswith("- **")
    ]
    malformed = [line for line in lines if not ENTRY.match(line)]
    assert not malformed, "index lines must read `- **ID** one line in our words`:\n" + "\n".join(
        malformed
    )
    ids = [ENTRY.match(line)["id"] for line in lines]  # type: ignore[index]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"ids listed twice in {INDEX.name}: {', '.join(duplicates)}"


def test_every_cited_requirement_id_is_in_the_index() -> None:
    listed = index_entries(INDEX.read_text(encoding="utf-8"))
    missing: dict[str, list[str]] = {}
    for path in _scanned_files():
        for rid in cited_ids(path.read_text(encoding="utf-8")):
            if rid not in listed:
                missing.setdefault(rid, []).append(str(path.relative_to(REPO_ROOT)))
    report = "\n".join(
        f"  {rid}: cited in {', '.join(sorted(set(where)))}"
        for rid, where in sorted(missing.items())
    )
    assert not missing, (
        f"requirement ids cited but not explained in docs/{INDEX.name}; add one line each "
        f"in our own words:\n{report}"
    )
