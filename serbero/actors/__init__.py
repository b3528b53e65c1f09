"""Trio actors: each module exposes an `async def run(...)` that talks only through channels."""
