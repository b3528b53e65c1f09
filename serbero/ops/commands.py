"""The operator subcommands' work, apart from argument parsing (which `serbero.cli` owns).

Each `run_*` writes its answer to `out`, problems to `err`, and returns the exit status:

- `EXIT_OK` (0): done; for `status`, the daemon is healthy.
- `EXIT_ERROR` (1): nothing to show: no config, no database, unknown dispute, endpoint down.
- `EXIT_UNHEALTHY` (2, `status` only): the report was printed, but the heartbeat is stale
  (or missing) or no relay was connected at the daemon's last flush.
- `EXIT_STOPPED` (3, `status` only): the report was printed; the daemon shut down cleanly
  and has not started since (3 is "not running" in the LSB's convention for `status`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TextIO, TypeVar

import apsw
import msgspec

from serbero.config import ENV_DB_PATH, ConfigError, load_view_config
from serbero.ops.database import OpsError, ReadOnlyDatabase, open_for_reading
from serbero.ops.disputes import list_disputes
from serbero.ops.healthcheck import ProbeError, health_url, probe
from serbero.ops.render import (
    render_disputes,
    render_status,
    render_timeline,
    to_json,
)
from serbero.ops.status import read_status
from serbero.ops.timeline import read_timeline
from serbero.printable import printable_lines

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_UNHEALTHY",
    "OpsError",
    "ViewOutput",
    "resolve_db_path",
    "resolve_health_url",
    "run_disputes",
    "run_health_check",
    "run_show",
    "run_status",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_UNHEALTHY: Final = 2
EXIT_STOPPED: Final = 3

_T = TypeVar("_T")


class ViewOutput(msgspec.Struct, frozen=True, kw_only=True):
    """How a read-only view answers: JSON or text (64-hex keys shortened when `short`), ages
    counted from wall-clock `now`, the answer on `out` and problems on `err`."""

    now: int
    as_json: bool
    short: bool
    out: TextIO
    err: TextIO

    def show(self, value: object, render: Callable[[], str]) -> None:
        """Print `value` as JSON, or `render()` for people."""
        print(to_json(value) if self.as_json else render(), file=self.out)


def resolve_db_path(db: str | None, config_path: str | None, env: Mapping[str, str]) -> str:
    """`--db`, else the config's `db_path` (SERBERO_DB_PATH applied), else SERBERO_DB_PATH.

    Only the keys a view needs are read, so no private key is needed (it may live in the
    service's environment). The last step lets an operator read the database on a host where
    the config is not readable to them. Raises OpsError with the config's error.
    """
    if db:
        return db
    try:
        return load_view_config(config_path, env).db_path
    except ConfigError as exc:
        from_env = env.get(ENV_DB_PATH, "").strip()
        if from_env and config_path is None:
            return from_env
        raise OpsError(str(exc)) from exc


def resolve_health_url(
    url: str | None, config_path: str | None, env: Mapping[str, str]
) -> str | None:
    """`--url`, else the config's `[health] listen`; None when the endpoint is off."""
    if url:
        return url
    try:
        address = load_view_config(config_path, env).health.address()
    except ConfigError as exc:
        raise OpsError(str(exc)) from exc
    return None if address is None else health_url(address)


def _fail(err: TextIO, message: str) -> int:
    print(f"serbero: {printable_lines(message)}", file=err)
    return EXIT_ERROR


def _read(db_path: str, read: Callable[[ReadOnlyDatabase], _T]) -> _T:
    """`read` over the database opened read-only; OpsError for whatever stops it."""
    try:
        with open_for_reading(db_path) as db:
            return read(db)
    except apsw.Error as exc:
        raise OpsError(str(exc)) from exc


def run_status(db_path: str, view: ViewOutput) -> int:
    try:
        report = _read(db_path, lambda db: read_status(db, view.now))
    except OpsError as exc:
        return _fail(view.err, str(exc))
    view.show(report, lambda: render_status(report, short=view.short))
    if report.stopped_at is not None:
        return EXIT_STOPPED
    return EXIT_OK if report.healthy else EXIT_UNHEALTHY


def run_disputes(db_path: str, view: ViewOutput, *, state: str | None, limit: int) -> int:
    try:
        disputes = _read(db_path, lambda db: list_disputes(db, state=state, limit=limit))
    except OpsError as exc:
        return _fail(view.err, str(exc))
    view.show(disputes, lambda: render_disputes(disputes, view.now, short=view.short))
    return EXIT_OK


def run_show(db_path: str, view: ViewOutput, dispute_id: str) -> int:
    try:
        timeline = _read(db_path, lambda db: read_timeline(db, dispute_id))
    except OpsError as exc:
        return _fail(view.err, str(exc))
    if timeline is None:
        return _fail(view.err, f"no dispute '{dispute_id}' in {db_path}")
    view.show(timeline, lambda: render_timeline(timeline, view.now, short=view.short))
    return EXIT_OK


def run_health_check(
    url: str | None, *, timeout: float, off_ok: bool, as_json: bool, out: TextIO, err: TextIO
) -> int:
    """Probe `url`. With the endpoint off (None) there is nothing to probe: that fails unless
    `off_ok` (runit's `check` then degrades to runit's own "the process runs").

    `as_json` prints `{"url", "up", "status", "detail", "health"}` (`health`: the endpoint's
    document) on stdout whatever the outcome; otherwise one line, on stderr when down.
    """
    if url is None:
        if off_ok:
            print("health endpoint is off ([health] listen unset): not probed", file=out)
            return EXIT_OK
        return _fail(err, "health endpoint is off: set [health] listen or pass --url")
    try:
        result = probe(url, timeout=timeout)
    except ProbeError as exc:
        return _fail(err, str(exc))
    if as_json:
        answer = {
            "url": url,
            "up": result.up,
            "status": result.status,
            "detail": result.detail,
            "health": result.document,
        }
        print(to_json(answer), file=out)
    else:
        print(printable_lines(result.detail), file=out if result.up else err)
    return EXIT_OK if result.up else EXIT_ERROR
