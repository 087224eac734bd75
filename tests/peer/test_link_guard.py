"""LinkGuard: the accepting side's limits on connections before authentication."""

from __future__ import annotations

import pytest

from peer.link_guard import LinkGuard


def test_connections_per_address_are_capped_and_freed() -> None:
    guard = LinkGuard(max_per_address=2, max_handshakes=10)
    assert guard.admit("10.0.0.1") and guard.admit("10.0.0.1")
    assert not guard.admit("10.0.0.1")  # a third from the same host
    assert guard.admit("10.0.0.2")  # another host is not affected
    guard.handshake_over()
    guard.handshake_over()  # authenticated links still count against their address
    assert not guard.admit("10.0.0.1")
    guard.release("10.0.0.1")
    assert guard.admit("10.0.0.1")
    assert guard.connections("10.0.0.1") == 2


def test_handshakes_in_progress_are_capped_across_addresses() -> None:
    guard = LinkGuard(max_per_address=10, max_handshakes=3)
    for i in range(3):
        assert guard.admit(f"10.0.0.{i}")
    assert not guard.admit("10.0.0.9")
    guard.handshake_over()  # one of them finished its handshake
    assert guard.admit("10.0.0.9")
    assert guard.handshakes == 3


def test_nothing_is_kept_for_a_host_that_left() -> None:
    guard = LinkGuard()
    for i in range(1000):
        address = f"10.{i // 256}.{i % 256}.1"
        assert guard.admit(address)
        guard.handshake_over()
        guard.release(address)
    assert guard.handshakes == 0 and guard._connections == {}


def test_limits_must_allow_something() -> None:
    with pytest.raises(ValueError):
        LinkGuard(max_per_address=0)
