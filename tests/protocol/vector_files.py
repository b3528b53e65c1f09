"""Collection-time access to tests/vectors so cases can be parametrized one by one.

Tests still take the ``vectors_dir`` fixture for runtime reads; this module only exists because
pytest needs the case list before fixtures run. Same directory as tests/conftest.py's fixture.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from tests.conftest import VECTORS_DIR


def derived() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (VECTORS_DIR / "serbero-protocol.derived.vectors.json").read_text(encoding="utf-8")
    )
    return data


def nip44() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (VECTORS_DIR / "nip44.vectors.json").read_text(encoding="utf-8")
    )["v2"]
    return data


def bip340_rows() -> list[dict[str, str]]:
    """Rows 0-14: the 32-byte-message rows (PROTO-65)."""
    with (VECTORS_DIR / "bip340.test-vectors.csv").open(newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["index"]) <= 14]
