"""A credential held in memory that never prints itself (BEY-23).

Config structs are printed, logged and rendered in many places; a `Secret` makes every one of
those safe by default. `repr()`, `str()` and f-strings show `MASK` (or nothing when unset);
the value is reached only through `reveal()`, at the one place that signs or authenticates.
"""

from __future__ import annotations

import hmac
from typing import Final

__all__ = ["MASK", "Secret"]

MASK: Final = "<redacted>"


class Secret:
    """A string that masks itself; `reveal()` is the only way to its value."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the code that must use it (signing, an Authorization header)."""
        return self._value

    @property
    def shown(self) -> str:
        """What printing shows: MASK when set, "" when unset (so "unset" stays visible)."""
        return MASK if self._value else ""

    def __bool__(self) -> bool:
        return bool(self._value)

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"Secret({self.shown!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))
