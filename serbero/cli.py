"""The `serbero` command: no arguments runs the daemon (drop-in), subcommands serve operators.

`serbero` alone behaves exactly like the reference binary (CORE-8): the config comes from
`SERBERO_CONFIG` or `./config.toml`, a bad config prints one `failed to load config from …`
line on stderr and exits 1. Operator subcommands (BEY-10) are entries in `SUBCOMMANDS`; each
adds its own arguments and returns an exit status, so a new one is one `Subcommand` away.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from serbero import __version__
from serbero.clock import system_wall_clock
from serbero.config import (
    ENV_CONFIG,
    ConfigError,
    LoadedConfig,
    load_config,
    masked,
    render_toml,
    validate_for_daemon,
)
from serbero.log import configure_logging, get_logger
from serbero.ops import commands as ops
from serbero.ops.disputes import DEFAULT_LIMIT, STATE_FILTERS
from serbero.ops.healthcheck import PROBE_TIMEOUT_SECONDS
from serbero.printable import printable, printable_lines
from serbero.protocol.keys import encode_npub
from serbero.reasoning.bundle import check_bundle

__all__ = [
    "SUBCOMMANDS",
    "Subcommand",
    "add_config_argument",
    "load_for_command",
    "log_config_warnings",
    "main",
    "run",
]

PROG: Final = "serbero"
STATUS_EPILOG: Final = (
    "exit status: 0 healthy; 1 no report (config or database unusable); 2 unhealthy: the "
    "daemon's heartbeat is missing or stale (a crash), or no relay was connected at its last "
    "flush; 3 stopped: the daemon shut down cleanly and has not started since"
)

log = get_logger("serbero.cli")


class Subcommand(msgspec.Struct, frozen=True, kw_only=True):
    """One operator subcommand: its name, help line, argument setup and handler."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


# --- shared helpers for subcommands -------------------------------------------------------


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """`--config PATH`; without it the path comes from SERBERO_CONFIG or ./config.toml."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: ${ENV_CONFIG} or ./config.toml)",
    )


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def load_for_command(args: argparse.Namespace) -> LoadedConfig | None:
    """Load the config for a subcommand; on failure print the one-line error and return None."""
    try:
        return load_config(getattr(args, "config", None), os.environ)
    except ConfigError as exc:
        print(printable_lines(str(exc)), file=sys.stderr)
        return None


def log_config_warnings(loaded: LoadedConfig) -> None:
    """The loader's findings, logged once logging is configured (it cannot log them itself)."""
    config_log = get_logger("serbero.config")
    for warning in loaded.warnings:
        config_log.warning(warning.event, **warning.fields)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# --- the daemon (no subcommand) -----------------------------------------------------------


def run(loaded: LoadedConfig) -> int:
    """Start logging and hand a loaded config to the daemon; returns the exit status."""
    configure_logging(loaded.config.serbero.log_level)
    log_config_warnings(loaded)
    try:
        validate_for_daemon(loaded)
    except ConfigError as exc:
        log.error("daemon_terminated", error=exc.reason)
        return 1
    # Imported here so operator subcommands do not pay for loading Trio and the actors.
    from serbero.daemon import run_daemon

    return run_daemon(loaded)


def _run_daemon(args: argparse.Namespace) -> int:
    loaded = load_for_command(args)
    return 1 if loaded is None else run(loaded)


# --- check-config -------------------------------------------------------------------------


def _configure_config_view(parser: argparse.ArgumentParser) -> None:
    """check-config and pubkey read nothing but the config."""
    add_config_argument(parser)
    add_json_argument(parser)


def _check_config(args: argparse.Namespace) -> int:
    loaded = load_for_command(args)
    if loaded is None:
        return 1
    try:
        validate_for_daemon(loaded)
    except ConfigError as exc:
        print(printable_lines(str(exc)), file=sys.stderr)
        return 1
    for warning in loaded.warnings:
        print(f"warning: {printable_lines(warning.message)}", file=sys.stderr)
    config = loaded.config
    bundle = check_bundle(config.prompts, cwd=Path.cwd())
    if config.mediation.enabled and config.reasoning.enabled and not bundle.loads:
        message = f"mediation will stay off: {bundle.error}"
        print(f"warning: {printable_lines(message)}", file=sys.stderr)
    if args.json:
        _print_json(
            {
                "path": loaded.path,
                "config": masked(config),
                "warnings": [msgspec.to_builtins(w) for w in loaded.warnings],
                "prompt_bundle": msgspec.to_builtins(bundle),
            }
        )
    else:
        print(f"# effective config from {printable(loaded.path)} (secrets masked)")
        print(render_toml(loaded.config), end="")
    return 0


# --- pubkey -------------------------------------------------------------------------------


def _pubkey(args: argparse.Namespace) -> int:
    loaded = load_for_command(args)
    if loaded is None:
        return 1
    public_hex = loaded.config.identity().public_hex
    npub = encode_npub(public_hex)
    if args.json:
        _print_json({"hex": public_hex, "npub": npub})
    else:
        print(f"hex:  {public_hex}")
        print(f"npub: {npub}")
    return 0


# --- read-only operator views: status, disputes, show (BEY-10) ------------------------------


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """`--config PATH` and `--db PATH` (which wins over the config and SERBERO_DB_PATH)."""
    add_config_argument(parser)
    parser.add_argument(
        "--db", metavar="PATH", help="database file (default: the config's db_path)"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _db_path(args: argparse.Namespace) -> str | None:
    try:
        return ops.resolve_db_path(args.db, args.config, os.environ)
    except ops.OpsError as exc:
        print(printable_lines(str(exc)), file=sys.stderr)
        return None


def _view_output(args: argparse.Namespace) -> ops.ViewOutput:
    """JSON with `--json`; on a terminal, long keys shortened so table rows fit."""
    return ops.ViewOutput(
        now=system_wall_clock(),
        as_json=args.json,
        short=sys.stdout.isatty(),
        out=sys.stdout,
        err=sys.stderr,
    )


def _configure_status(parser: argparse.ArgumentParser) -> None:
    parser.epilog = STATUS_EPILOG
    add_db_argument(parser)
    add_json_argument(parser)


def _status(args: argparse.Namespace) -> int:
    db_path = _db_path(args)
    if db_path is None:
        return ops.EXIT_ERROR
    return ops.run_status(db_path, _view_output(args))


def _configure_disputes(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    add_json_argument(parser)
    parser.add_argument(
        "--state",
        choices=STATE_FILTERS,
        help="only disputes in this lifecycle state (open: every state but resolved)",
    )
    parser.add_argument(
        "--limit",
        type=_positive_int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N disputes, newest first (default {DEFAULT_LIMIT})",
    )


def _disputes(args: argparse.Namespace) -> int:
    db_path = _db_path(args)
    if db_path is None:
        return ops.EXIT_ERROR
    return ops.run_disputes(db_path, _view_output(args), state=args.state, limit=args.limit)


def _configure_show(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    add_json_argument(parser)
    parser.add_argument("dispute_id", help="the dispute's id (Mostro's order UUID)")


def _show(args: argparse.Namespace) -> int:
    db_path = _db_path(args)
    if db_path is None:
        return ops.EXIT_ERROR
    return ops.run_show(db_path, _view_output(args), args.dispute_id)


# --- health-check (BEY-11; runit's `check`) -----------------------------------------------


def _configure_health_check(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_json_argument(parser)
    parser.add_argument(
        "--url",
        help="health URL (default: from [health] listen, e.g. http://127.0.0.1:9797/health)",
    )
    parser.add_argument(
        "--off-ok",
        action="store_true",
        help="succeed without probing when the config has no [health] listen",
    )


def _health_check(args: argparse.Namespace) -> int:
    try:
        url = ops.resolve_health_url(args.url, args.config, os.environ)
    except ops.OpsError as exc:
        print(printable_lines(str(exc)), file=sys.stderr)
        return ops.EXIT_ERROR
    return ops.run_health_check(
        url,
        timeout=PROBE_TIMEOUT_SECONDS,
        off_ok=args.off_ok,
        as_json=args.json,
        out=sys.stdout,
        err=sys.stderr,
    )


SUBCOMMANDS: Final[tuple[Subcommand, ...]] = (
    Subcommand(
        name="check-config",
        help="validate the config and print it with secrets masked",
        configure=_configure_config_view,
        handler=_check_config,
    ),
    Subcommand(
        name="pubkey",
        help="print Serbero's public key (hex and npub)",
        configure=_configure_config_view,
        handler=_pubkey,
    ),
    Subcommand(
        name="status",
        help="daemon health, relays, dispute counts, pending notifications and handoffs",
        configure=_configure_status,
        handler=_status,
    ),
    Subcommand(
        name="disputes",
        help="list disputes, newest first",
        configure=_configure_disputes,
        handler=_disputes,
    ),
    Subcommand(
        name="show",
        help="one dispute's timeline across every audit table",
        configure=_configure_show,
        handler=_show,
    ),
    Subcommand(
        name="health-check",
        help="probe the daemon's /health endpoint (exit 0 up, 1 down); for runit's check",
        configure=_configure_health_check,
        handler=_health_check,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Nostr dispute coordination for Mostro. Without a command: run the daemon.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.set_defaults(handler=_run_daemon)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        sub = commands.add_parser(subcommand.name, help=subcommand.help)
        subcommand.configure(sub)
        sub.set_defaults(handler=subcommand.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `serbero` script; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits for --help, --version and usage errors; report its status instead.
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
