from __future__ import annotations

from peer.log_throttle import LogThrottle


def test_one_line_a_period_and_the_events_left_out_are_counted() -> None:
    throttle = LogThrottle(period=10.0)
    assert throttle.event(0.0) == 0  # the first is told
    assert [throttle.event(t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert throttle.event(10.0) == 3  # told, with the three left out
    assert throttle.event(15.0) is None
    assert throttle.event(25.0) == 1
    assert throttle.event(100.0) == 0
