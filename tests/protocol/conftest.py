"""Fixtures of the protocol tests: the derived vectors and the keys and dispute they name."""

from __future__ import annotations

from typing import Any

import pytest

from serbero.protocol.keys import Keys
from tests.protocol import vector_files


@pytest.fixture(scope="module")
def derived() -> dict[str, Any]:
    return vector_files.derived()


def _keys(derived: dict[str, Any], name: str) -> Keys:
    return Keys.from_secret(bytes.fromhex(derived["keys"][name]["secret"]))


@pytest.fixture(scope="module")
def mostro(derived: dict[str, Any]) -> Keys:
    return _keys(derived, "mostro")


@pytest.fixture(scope="module")
def serbero(derived: dict[str, Any]) -> Keys:
    return _keys(derived, "serbero")


@pytest.fixture(scope="module")
def dispute_id(derived: dict[str, Any]) -> str:
    tags = derived["event_id_dispute_38386"]["tags"]
    value: str = next(tag[1] for tag in tags if tag[0] == "d")
    return value
