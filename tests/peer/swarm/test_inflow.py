"""Telling peers how many transfers come in (peer/swarm/inflow.py), as a pure state machine."""

from __future__ import annotations

from peer.swarm.inflow import COALESCE, InflowReports


def test_a_change_is_told_a_little_later_once_however_often_it_changes_meanwhile() -> None:
    reports = InflowReports()
    assert reports.changed(10.0) == 10.0 + COALESCE
    assert reports.changed(10.005) is None  # a flush is due already: it will tell the number
    assert reports.flush(3, [b"a", b"b"]) == [b"a", b"b"]
    assert reports.changed(11.0) == 11.0 + COALESCE  # the next change, the next flush


def test_a_peer_is_told_a_number_only_when_it_differs_from_what_it_heard_last() -> None:
    reports = InflowReports()
    reports.changed(0.0)
    assert reports.flush(3, [b"a"]) == [b"a"]
    reports.changed(1.0)
    # A piece ended and the next began on another link: still 3, nothing to tell "a".
    assert reports.flush(3, [b"a", b"b"]) == [b"b"]
    reports.changed(2.0)
    assert reports.flush(5, [b"a"]) == [b"a"]


def test_requests_to_a_peer_go_after_the_number_when_it_has_not_heard_it() -> None:
    reports = InflowReports()
    assert reports.before_requests(b"a", 2)  # never told: first the number
    assert not reports.before_requests(b"a", 2)
    assert reports.before_requests(b"a", 4)  # changed since
    reports.changed(0.0)
    assert reports.flush(4, [b"a"]) == []  # heard it with the requests


def test_a_peer_that_left_hears_the_number_again_on_its_next_link() -> None:
    reports = InflowReports()
    assert reports.before_requests(b"a", 2)
    reports.forget(b"a")
    assert reports.before_requests(b"a", 2)


def test_a_count_that_may_settle_without_an_event_is_counted_again() -> None:
    reports = InflowReports()
    assert reports.recount_at(5.0) == 5.0
    assert reports.changed(4.0) is None  # the recount is due: it will tell the number
    assert reports.flush(1, [b"a"]) == [b"a"]
    assert reports.changed(6.0) == 6.0 + COALESCE
    assert reports.recount_at(7.0) is None  # a flush is due sooner
