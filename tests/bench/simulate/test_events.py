from __future__ import annotations

import pytest

from bench.simulate.events import EventQueue


def test_events_run_in_time_order_messages_first_at_a_tie() -> None:
    queue = EventQueue()
    seen: list[str] = []
    queue.at(2.0, seen.append, "timer at 2")
    queue.at(1.0, seen.append, "timer at 1")
    queue.post(1.0, seen.append, "message at 1")
    queue.post(3.0, seen.append, "message at 3")
    assert queue.run(10.0, 100, lambda: None) == "idle"
    assert seen == ["message at 1", "timer at 1", "timer at 2", "message at 3"]
    assert queue.now == 3.0


def test_run_stops_at_the_limit_and_when_asked() -> None:
    queue = EventQueue()
    queue.at(5.0, lambda _: None)
    assert queue.run(4.0, 100, lambda: None) == "until"
    assert queue.now == 4.0
    queue.at(4.5, lambda _: queue.stop("enough"))
    assert queue.run(10.0, 100, lambda: None) == "enough"


def test_messages_must_be_posted_in_time_order() -> None:
    queue = EventQueue()
    queue.post(2.0, lambda _: None)
    with pytest.raises(ValueError):
        queue.post(1.0, lambda _: None)
