"""The front's connection limits as a pure policy: in all, per address, and how often the
refused are reported."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.front.connection_limits import REPORT_PERIOD, ConnectionLimits, descriptor_shortfall


def test_one_address_cannot_take_every_slot() -> None:
    limits = ConnectionLimits(total=5, per_address=3)
    assert [limits.admit("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert limits.admit("10.0.0.2") and limits.admit("10.0.0.2")
    assert not limits.admit("10.0.0.3")  # five open in all
    limits.release("10.0.0.1")
    assert limits.admit("10.0.0.3")
    assert limits.open == 5


def test_a_release_without_an_admission_is_a_bug() -> None:
    limits = ConnectionLimits(total=2, per_address=2)
    with pytest.raises(ValueError):
        limits.release("10.0.0.1")


def test_the_refused_are_reported_at_most_once_a_period() -> None:
    limits = ConnectionLimits(total=1, per_address=1)
    assert limits.admit("a")
    assert limits.report_due(0.0) is None  # nothing refused
    for _ in range(3):
        assert not limits.admit("b")
    assert limits.report_due(1.0) == 3
    assert not limits.admit("b")
    assert limits.report_due(1.0 + REPORT_PERIOD / 2) is None
    assert limits.report_due(1.0 + REPORT_PERIOD) == 1


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcd")), max_size=200))
def test_the_limits_hold_and_the_table_forgets_closed_addresses(
    steps: list[tuple[bool, str]],
) -> None:
    limits = ConnectionLimits(total=6, per_address=2)
    held: dict[str, int] = {}
    for opening, address in steps:
        if opening:
            if limits.admit(address):
                held[address] = held.get(address, 0) + 1
        elif held.get(address):
            limits.release(address)
            held[address] -= 1
        assert limits.open == sum(held.values()) <= 6
        assert all(limits.held_by(a) == n <= 2 for a, n in held.items())
        assert set(limits._by_address) == {a for a, n in held.items() if n}


def test_a_limit_the_open_file_limit_cannot_hold_is_named() -> None:
    assert descriptor_shortfall(1024, 65536) is None
    warning = descriptor_shortfall(1024, 1024)
    assert warning is not None and "LimitNOFILE" in warning and "1024" in warning
