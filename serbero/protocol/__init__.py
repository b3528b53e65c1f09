"""Sans-IO Nostr and Mostro wire code: pure functions and msgspec structs, no I/O."""
