"""Test support: independent peers (nostr-sdk) and real relays for integration tests."""
