"""A set-once answer slot: one side fills it, any number of tasks await it.

Actors answer requests through these rather than through a channel per request: a slot costs
one `trio.Event`, needs no close, and the first answer wins, so an answer racing a timeout or a
lost link cannot be delivered twice or overwritten. An answer is either a value or an error,
which `wait` raises in the waiting task.
"""

from __future__ import annotations

from typing import Generic, TypeVar, cast

import trio

__all__ = ["OneShot"]

T = TypeVar("T")


class OneShot(Generic[T]):
    """A slot for one answer of type `T`, or an error to raise at whoever awaits it."""

    __slots__ = ("_error", "_event", "_filled", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._filled = False
        self._value: T | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        """True once a value or an error is in."""
        return self._filled

    def set(self, value: T) -> bool:
        """Deliver `value`; False (and no change) when an answer was already in."""
        if self._filled:
            return False
        self._filled = True
        self._value = value
        self._event.set()
        return True

    def fail(self, error: BaseException) -> bool:
        """Deliver `error`, raised by every `wait`; False when an answer was already in."""
        if self._filled:
            return False
        self._filled = True
        self._error = error
        self._event.set()
        return True

    async def wait(self) -> T:
        """The value once it is in, or raise the error that was delivered instead."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        # Filled with a value; `T` may itself admit None, so this is not narrowed by a check.
        return cast(T, self._value)
