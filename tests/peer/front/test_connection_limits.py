"""The front's connection limits as a pure policy: in all and per address, a new connection
taking the place of the one that waited longest for a request, a refusal only when every
connection is being answered, and how often the refused are reported."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from peer.front.connection_limits import (
    Admission,
    ConnectionLimits,
    client_key,
    descriptor_shortfall,
)
from peer.front.http_server import REFUSALS_LOG_PERIOD, ConnectionGate


def test_a_new_connection_takes_the_place_of_the_longest_waiting() -> None:
    limits = ConnectionLimits(total=3, per_address=3)
    first, second, third = (limits.admit(a, now=t).ticket for t, a in enumerate("abc"))
    assert None not in (first, second, third)
    limits.answering(first)  # type: ignore[arg-type]
    admission = limits.admit("d", now=5.0)
    assert admission.ticket is not None and admission.evict == second  # the longest waiting
    assert limits.open == 3


def test_at_its_bound_an_address_gives_up_its_own_connection_not_anothers() -> None:
    limits = ConnectionLimits(total=10, per_address=2)
    other = limits.admit("b", now=0.0).ticket
    mine = [limits.admit("a", now=1.0 + i).ticket for i in range(2)]
    admission = limits.admit("a", now=9.0)
    assert admission.evict == mine[0] and admission.evict != other
    assert limits.held_by("a") == 2 and limits.held_by("b") == 1


def test_when_every_connection_is_being_answered_a_new_one_is_refused() -> None:
    limits = ConnectionLimits(total=2, per_address=2)
    for address in "ab":
        ticket = limits.admit(address, now=0.0).ticket
        assert ticket is not None
        limits.answering(ticket)
    assert limits.admit("c", now=1.0) == Admission(None)
    assert limits.admit("a", now=1.0) == Admission(None)


def test_an_evicted_connection_released_again_changes_nothing() -> None:
    limits = ConnectionLimits(total=1, per_address=1)
    old = limits.admit("a", now=0.0).ticket
    new = limits.admit("a", now=1.0)
    assert new.evict == old
    assert old is not None
    limits.release(old)  # the evicted connection's own close, later
    limits.waiting(old, now=2.0)
    assert limits.open == 1 and limits.held_by("a") == 1


async def test_the_refused_are_reported_at_most_once_a_period_each_counted(
    mock_clock: trio.testing.MockClock,
) -> None:
    gate = ConnectionGate(ConnectionLimits(total=1, per_address=1))
    ticket = gate.admit("a")
    assert ticket is not None
    gate.limits.answering(ticket)
    reports = []
    for step in (0.0, 0.5, 0.5, REFUSALS_LOG_PERIOD, 1.0, REFUSALS_LOG_PERIOD):
        mock_clock.jump(step)
        assert gate.admit("b") is None
        reports.append(gate.refused())
    # The first told at once; then one line a period, with those left out since.
    assert reports == [1, None, None, 3, None, 2]


def test_limits_of_at_least_one() -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(total=0, per_address=1)


Step = tuple[str, str]  # (what, address)


@given(
    st.lists(
        st.tuples(st.sampled_from(["open", "answer", "wait", "close"]), st.sampled_from("abcd")),
        max_size=200,
    )
)
def test_the_limits_hold_and_only_waiting_connections_are_evicted(steps: list[Step]) -> None:
    limits = ConnectionLimits(total=6, per_address=2)
    open_: dict[int, str] = {}
    answering: set[int] = set()
    for now, (what, address) in enumerate(steps):
        mine = sorted(t for t, a in open_.items() if a == address)
        if what == "open":
            admission = limits.admit(address, float(now))
            if admission.evict is not None:
                assert admission.evict not in answering
                del open_[admission.evict]
            if admission.ticket is not None:
                open_[admission.ticket] = address
            else:
                assert len(open_) == 6 or len(mine) == 2
        elif mine and what == "answer":
            limits.answering(mine[0])
            answering.add(mine[0])
        elif mine and what == "wait":
            limits.waiting(mine[-1], float(now))
            answering.discard(mine[-1])
        elif mine and what == "close":
            limits.release(mine[0])
            del open_[mine[0]]
            answering.discard(mine[0])
        assert limits.open == len(open_) <= 6
        assert all(limits.held_by(a) == list(open_.values()).count(a) <= 2 for a in "abcd")
        assert set(limits._by_address) == set(open_.values())


def test_a_limit_the_open_file_limit_cannot_hold_is_named() -> None:
    assert descriptor_shortfall(1024, 65536) is None
    warning = descriptor_shortfall(1024, 1024)
    assert warning is not None and "LimitNOFILE" in warning and "1024" in warning


def test_an_ipv6_host_counts_by_its_64_and_a_mapped_ipv4_as_itself() -> None:
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::5") != client_key("2001:db8:1:3::5")
    assert client_key("::ffff:10.0.0.1") == client_key("10.0.0.1") == "10.0.0.1"
    assert client_key("fe80::1%eth0") == client_key("fe80::2%eth1")
