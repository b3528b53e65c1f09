"""Structured logging: one record per decision point, keyed by a stable event name.

Every call site passes the event name as the first positional argument
(`log.info("relay_connected", relay=url)`); the README's catalogue is checked against them.
"""

from __future__ import annotations

from typing import Any

import structlog


def get_logger(target: str = "serbero") -> Any:
    """A structlog logger bound to `target` (e.g. `serbero.relay`)."""
    return structlog.get_logger(target=target)
