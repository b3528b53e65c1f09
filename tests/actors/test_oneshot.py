"""OneShot: the first answer wins, every waiter gets it, errors are raised where awaited."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from serbero.actors.oneshot import OneShot


async def test_value_reaches_every_waiter_set_later() -> None:
    slot: OneShot[int] = OneShot()
    got: list[int] = []

    async def waiter() -> None:
        got.append(await slot.wait())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not slot.done
        assert got == []
        assert slot.set(7)
    assert got == [7, 7]
    assert slot.done


async def test_first_answer_wins() -> None:
    slot: OneShot[str] = OneShot()
    assert slot.set("first")
    assert not slot.set("second")
    assert not slot.fail(RuntimeError("late"))
    assert await slot.wait() == "first"


async def test_error_is_raised_at_the_waiter_and_blocks_later_values() -> None:
    slot: OneShot[int] = OneShot()
    assert slot.fail(KeyError("gone"))
    assert slot.done
    assert not slot.set(1)
    with pytest.raises(KeyError, match="gone"):
        await slot.wait()
    with pytest.raises(KeyError):
        await slot.wait()


async def test_none_is_a_value_when_the_type_allows_it() -> None:
    slot: OneShot[int | None] = OneShot()
    assert slot.set(None)
    assert slot.done
    assert not slot.set(3)
    assert await slot.wait() is None


async def test_wait_honours_cancellation_and_the_slot_stays_usable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slot: OneShot[int] = OneShot()
    with trio.move_on_after(1) as scope:
        await slot.wait()
    assert scope.cancelled_caught
    assert not slot.done
    slot.set(5)
    assert await slot.wait() == 5
