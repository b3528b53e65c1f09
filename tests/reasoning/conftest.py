"""Fixtures of the provider tests: a scripted model API on loopback and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.scripted_llm import ScriptedLLM, open_scripted_llm


@pytest.fixture
async def llm() -> AsyncIterator[ScriptedLLM]:
    async with open_scripted_llm() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http
