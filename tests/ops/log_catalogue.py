"""The structured-log catalogue: log events found in `serbero/` versus `docs/log-events.md`.

The code is the authority on names, levels and fields; the catalogue adds when each event is
logged. `scan_events` reads the source with `ast` (no import, no execution): a log call is
`<logger>.<level>("event_name", field=..., ...)` where `<logger>` was bound from
`get_logger(...)` (or its `.bind(...)`) or is named like a logger (`log`, `logger`,
`*_log`, `*_logger`). Config findings are logged indirectly (`log.warning(w.event,
**w.fields)` in the CLI); their names come from the `ConfigWarning(event=..., fields={...})`
constructors, at level warn.

Run `python -m tests.ops.log_catalogue --write` to rewrite the catalogue's table from the code,
keeping every existing "when" text; new rows get an empty one to fill in.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

import msgspec

REPO_ROOT: Final = Path(__file__).resolve().parent.parent.parent
PACKAGE: Final = REPO_ROOT / "serbero"
CATALOGUE: Final = REPO_ROOT / "docs" / "log-events.md"
SECTION_TITLE: Final = "# Log events"
TABLE_HEADER: Final = "| event | level | fields | when |"
TABLE_RULE: Final = "|---|---|---|---|"
NO_FIELDS: Final = "—"

SECTION_INTRO: Final = """\
Every log record is one line: JSON when stdout is not a terminal (runit's `svlogd` keeps
it), `key=value` text on a terminal. Each carries `timestamp` (UTC), `level`, `target`
(`serbero.<area>`) and `event`, plus the fields below. Event names are stable: grep and
alert on them. Secrets, DM bodies, chat content, rationale text and party trade keys are
never logged. `tests/ops/test_log_catalogue.py` fails when this table and the code
disagree; `python -m tests.ops.log_catalogue --write` (in the project's `.venv`) rewrites it
from the code and keeps the "when" texts."""

# structlog method -> the level written into the record (serbero.log's names).
LEVEL_OF_METHOD: Final = {
    "debug": "debug",
    "info": "info",
    "msg": "info",
    "warning": "warn",
    "warn": "warn",
    "error": "error",
    "err": "error",
    "exception": "error",
    "critical": "error",
    "fatal": "error",
}
LEVEL_ORDER: Final = ("debug", "info", "warn", "error")
LOGGER_FACTORIES: Final = frozenset({"get_logger"})
LOGGER_DERIVATIONS: Final = frozenset({"bind", "new", "unbind"})
_LOGGER_NAME: Final = re.compile(r"^_?(log|logger)$|_(log|logger)$")
# Structs whose `event=` keyword names an event logged elsewhere at this level.
INDIRECT_EVENTS: Final = {"ConfigWarning": "warn"}
# A dynamic first argument `<something>.event` is the indirect pattern above.
INDIRECT_ATTRIBUTE: Final = "event"


class Site(msgspec.Struct, frozen=True):
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


class LoggedEvent(msgspec.Struct, frozen=True):
    """One event as the code logs it: every level and literal field name across call sites."""

    name: str
    levels: tuple[str, ...]
    fields: tuple[str, ...]
    sites: tuple[Site, ...]


class Row(msgspec.Struct, frozen=True):
    """One catalogue table row, as written."""

    name: str
    levels: tuple[str, ...]
    fields: tuple[str, ...]
    when: str
    line: str


class Scan(msgspec.Struct, frozen=True):
    events: dict[str, LoggedEvent]
    # Log calls whose event name is not a string literal, or whose `**fields` cannot be
    # read from the source (the indirect pattern aside).
    dynamic: tuple[Site, ...]


def _identifier(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_logger_source(node: ast.expr, loggers: set[str]) -> bool:
    """`get_logger(...)`, or `<logger>.bind(...)`."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if _identifier(func) in LOGGER_FACTORIES:
        return True
    return (
        isinstance(func, ast.Attribute)
        and func.attr in LOGGER_DERIVATIONS
        and _is_logger(func.value, loggers)
    )


def _is_logger(node: ast.expr, loggers: set[str]) -> bool:
    if _is_logger_source(node, loggers):
        return True
    name = _identifier(node)
    return name is not None and (name in loggers or bool(_LOGGER_NAME.search(name)))


def _bound_loggers(tree: ast.AST) -> set[str]:
    """Names (and attribute names) assigned a logger anywhere in the module."""
    loggers: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            if value is None or not _is_logger_source(value, loggers):
                continue
            for target in targets:
                name = _identifier(target)
                if name is not None and name not in loggers:
                    loggers.add(name)
                    changed = True
    return loggers


def _dict_keys(node: ast.expr | None) -> list[str]:
    if not isinstance(node, ast.Dict):
        return []
    return [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]


def _calls(scope: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(scope):
        if isinstance(node, ast.Call):
            yield node


def _dict_variables(scope: ast.AST) -> dict[str, set[str]]:
    """`name = {"k": ...}` assignments in `scope` (nested scopes included): name -> keys."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, set()).update(_dict_keys(node.value))
    return found


def _scopes(tree: ast.Module) -> Iterator[tuple[ast.AST, dict[str, set[str]]]]:
    """Each function (outermost first) with the dict variables it can see, and the module."""
    module_dicts = {
        name: keys
        for statement in tree.body
        for name, keys in _dict_variables(statement).items()
        if not isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    yield tree, module_dicts
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, {**module_dicts, **_dict_variables(node)}


def _fields(call: ast.Call, dicts: dict[str, set[str]]) -> tuple[tuple[str, ...], bool]:
    """Literal keyword names, `**{...}` keys and `**name` of a dict literal; False if opaque."""
    names: list[str] = []
    resolved = True
    for keyword in call.keywords:
        if keyword.arg is not None:
            names.append(keyword.arg)
        elif isinstance(keyword.value, ast.Dict):
            names.extend(_dict_keys(keyword.value))
        elif isinstance(keyword.value, ast.Name) and keyword.value.id in dicts:
            names.extend(sorted(dicts[keyword.value.id]))
        else:
            resolved = False
    return tuple(names), resolved


def scan_source(
    source: str, path: str
) -> tuple[list[tuple[str, str, tuple[str, ...], Site]], list[Site]]:
    """(event, level, fields, site) for each log call in `source`, and the sites whose event
    name or fields cannot be read from the source."""
    tree = ast.parse(source, filename=path)
    loggers = _bound_loggers(tree)
    found: dict[Site, tuple[str, str, tuple[str, ...], Site]] = {}
    opaque: set[Site] = set()
    for scope, dicts in _scopes(tree):
        for call in _calls(scope):
            func = call.func
            site = Site(path, call.lineno)
            if _identifier(func) in INDIRECT_EVENTS:
                keywords = {kw.arg: kw.value for kw in call.keywords if kw.arg is not None}
                event = keywords.get("event")
                if isinstance(event, ast.Constant) and isinstance(event.value, str):
                    fields = tuple(_dict_keys(keywords.get("fields")))
                    level = INDIRECT_EVENTS[str(_identifier(func))]
                    found[site] = (event.value, level, fields, site)
                continue
            if not isinstance(func, ast.Attribute) or func.attr not in LEVEL_OF_METHOD:
                continue
            if not _is_logger(func.value, loggers):
                continue
            first = call.args[0] if call.args else None
            if isinstance(first, ast.Attribute) and first.attr == INDIRECT_ATTRIBUTE:
                continue
            fields, resolved = _fields(call, dicts)
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and resolved:
                # Inner scopes come later and see more variables: the last reading wins.
                found[site] = (first.value, LEVEL_OF_METHOD[func.attr], fields, site)
                opaque.discard(site)
            elif site not in found:
                opaque.add(site)
    ordered = sorted(found.values(), key=lambda item: item[3].line)
    return ordered, sorted(opaque, key=lambda site: site.line)


def _sorted_levels(levels: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(levels), key=LEVEL_ORDER.index))


def scan_events(package: Path = PACKAGE) -> Scan:
    """Every log event under `package`, merged by name."""
    merged: dict[str, tuple[set[str], set[str], list[Site]]] = {}
    dynamic: list[Site] = []
    for path in sorted(package.rglob("*.py")):
        relative = str(path.relative_to(package.parent))
        found, sites = scan_source(path.read_text(encoding="utf-8"), relative)
        dynamic.extend(sites)
        for name, level, fields, site in found:
            levels, names, where = merged.setdefault(name, (set(), set(), []))
            levels.add(level)
            names.update(fields)
            where.append(site)
    events = {
        name: LoggedEvent(
            name=name,
            levels=_sorted_levels(levels),
            fields=tuple(sorted(fields)),
            sites=tuple(sites),
        )
        for name, (levels, fields, sites) in sorted(merged.items())
    }
    return Scan(events=events, dynamic=tuple(dynamic))


# --- the catalogue table -------------------------------------------------------------------


class CatalogueError(ValueError):
    """The catalogue file is missing its section or not shaped as the catalogue table."""


def section_bounds(text: str) -> tuple[int, int]:
    """Character offsets of the section (its title line through the end of the file)."""
    match = re.search(rf"^{re.escape(SECTION_TITLE)}\s*$", text, flags=re.MULTILINE)
    if match is None:
        raise CatalogueError(f'{CATALOGUE.name} has no "{SECTION_TITLE}" section')
    return match.start(), len(text)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _names(cell: str) -> tuple[str, ...]:
    if cell in ("", NO_FIELDS, "-"):
        return ()
    return tuple(part.strip().strip("`") for part in cell.split(","))


def parse_rows(section: str) -> list[Row]:
    """The table's rows, in file order; CatalogueError for a malformed row."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or line.strip() in (TABLE_HEADER, TABLE_RULE):
            continue
        cells = _cells(line)
        if len(cells) != 4 or not re.fullmatch(r"`[^`]+`", cells[0]):
            raise CatalogueError(
                f"malformed catalogue row (want | `event` | level | fields | when |): {line}"
            )
        levels = tuple(level.strip() for level in cells[1].split(","))
        rows.append(
            Row(
                name=cells[0].strip("`"),
                levels=levels,
                fields=_names(cells[2]),
                when=cells[3],
                line=line,
            )
        )
    return rows


def render_row(event: LoggedEvent, when: str) -> str:
    fields = ", ".join(f"`{name}`" for name in event.fields) or NO_FIELDS
    return f"| `{event.name}` | {', '.join(event.levels)} | {fields} | {when} |"


def render_section(scan: Scan, whens: dict[str, str]) -> str:
    rows = [render_row(event, whens.get(name, "")) for name, event in scan.events.items()]
    return "\n".join([SECTION_TITLE, "", SECTION_INTRO, "", TABLE_HEADER, TABLE_RULE, *rows, ""])


# --- comparison ---------------------------------------------------------------------------


class Diff(msgspec.Struct, frozen=True):
    add: tuple[str, ...]
    remove: tuple[str, ...]
    replace: tuple[tuple[str, str, str], ...]  # (new row, old row, why)
    unsorted: bool
    duplicates: tuple[str, ...]
    missing_when: tuple[str, ...]

    def empty(self) -> bool:
        return not (
            self.add
            or self.remove
            or self.replace
            or self.unsorted
            or self.duplicates
            or self.missing_when
        )


def compare(scan: Scan, rows: list[Row]) -> Diff:
    by_name: dict[str, Row] = {}
    duplicates = []
    for row in rows:
        if row.name in by_name:
            duplicates.append(row.line)
        by_name[row.name] = row
    add = tuple(render_row(event, "") for name, event in scan.events.items() if name not in by_name)
    remove = tuple(row.line for name, row in by_name.items() if name not in scan.events)
    replace = []
    for name, row in by_name.items():
        event = scan.events.get(name)
        if event is None:
            continue
        problems = []
        if row.levels != event.levels:
            problems.append(f"level in code: {', '.join(event.levels)}")
        if row.fields != event.fields:
            problems.append(f"fields in code: {', '.join(event.fields) or 'none'}")
        if problems:
            where = ", ".join(str(site) for site in event.sites[:3])
            replace.append(
                (render_row(event, row.when), row.line, f"{'; '.join(problems)} ({where})")
            )
    names = [row.name for row in rows]
    missing_when = tuple(row.line for row in rows if not row.when and row.name in scan.events)
    return Diff(
        add=add,
        remove=remove,
        replace=tuple(replace),
        unsorted=names != sorted(names),
        duplicates=tuple(duplicates),
        missing_when=missing_when,
    )


def explain(diff: Diff) -> str:
    """The fix, row by row, for the failure message."""
    parts = [
        f"docs/{CATALOGUE.name} disagrees with the log calls in serbero/. Fix the table "
        "(rows sorted by event name), or run\n"
        "    .venv/bin/python -m tests.ops.log_catalogue --write\n"
        'which rewrites the table from the code and keeps every "when" text.'
    ]
    if diff.add:
        parts.append("ADD these rows (then say in the last cell when the event is logged):")
        parts.extend(f"    {line}" for line in diff.add)
    if diff.remove:
        parts.append("REMOVE these rows (no such event in serbero/ any more):")
        parts.extend(f"    {line}" for line in diff.remove)
    if diff.replace:
        parts.append("REPLACE these rows:")
        for new, old, why in diff.replace:
            parts.append(f"    {old}\n  with ({why}):\n    {new}")
    if diff.duplicates:
        parts.append("DELETE these duplicate rows:")
        parts.extend(f"    {line}" for line in diff.duplicates)
    if diff.missing_when:
        parts.append('DESCRIBE when these are logged (the "when" cell is empty):')
        parts.extend(f"    {line}" for line in diff.missing_when)
    if diff.unsorted:
        parts.append("SORT the rows by event name.")
    return "\n".join(parts)


def rewrite_catalogue(catalogue: Path = CATALOGUE, scan: Scan | None = None) -> None:
    """Replace (or append) the section with one generated from the code."""
    text = catalogue.read_text(encoding="utf-8")
    current = scan if scan is not None else scan_events()
    try:
        start, _ = section_bounds(text)
        whens = {row.name: row.when for row in parse_rows(text[start:])}
        head = text[:start]
    except CatalogueError:
        whens = {}
        head = text if text.endswith("\n") else text + "\n"
        head += "\n"
    catalogue.write_text(head + render_section(current, whens), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the catalogue from the code")
    args = parser.parse_args(argv)
    if args.write:
        rewrite_catalogue()
        return 0
    text = CATALOGUE.read_text(encoding="utf-8")
    start, _ = section_bounds(text)
    diff = compare(scan_events(), parse_rows(text[start:]))
    if diff.empty():
        print("docs/log-events.md matches the code")
        return 0
    print(explain(diff))
    return 1


if __name__ == "__main__":
    sys.exit(main())
