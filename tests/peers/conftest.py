"""Real relays for the peer tests (the fixtures live in tests/support/relay_fixtures.py)."""

from tests.support.relay_fixtures import local_relay, local_relay_factory

__all__ = ["local_relay", "local_relay_factory"]
