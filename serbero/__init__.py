"""Serbero: Nostr-native dispute coordination for Mostro operators."""

__version__ = "0.2.0"
