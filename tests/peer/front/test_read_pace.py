"""A client that reads an answer too slowly, as a pure rule."""

from __future__ import annotations

from peer.front.read_pace import ReadPace


def test_a_window_of_waiting_must_carry_the_minimum_rate() -> None:
    pace = ReadPace(min_rate=1000, window=10)
    pace.sent(5000)
    assert not pace.waited(4)  # the window is not full yet
    pace.sent(4000)
    assert pace.waited(6)  # 9,000 bytes over 10 s of waiting: under 1,000/s
    pace.sent(20_000)
    assert not pace.waited(10)  # a new window: 2,000/s
    assert not pace.waited(3)


def test_a_rate_of_zero_never_closes() -> None:
    pace = ReadPace(min_rate=0, window=1)
    assert not pace.waited(100)
