from serbero.clock import system_wall_clock
from tests.support.clocks import FakeWallClock


def test_fake_wall_clock_advances() -> None:
    clock = FakeWallClock(100)
    assert clock() == 100
    clock.advance(5)
    assert clock() == 105


def test_system_wall_clock_is_integer_seconds() -> None:
    assert isinstance(system_wall_clock(), int)
    assert system_wall_clock() > 1_700_000_000
