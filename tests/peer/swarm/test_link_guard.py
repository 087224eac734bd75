"""LinkGuard: the accepting side's limits on connections before authentication."""

from __future__ import annotations

import pytest

from peer.swarm.link_guard import LinkGuard


def test_connections_per_address_are_capped_and_freed() -> None:
    guard = LinkGuard(max_per_address=2, max_handshakes=10)
    assert guard.admit("10.0.0.1") and guard.admit("10.0.0.1")
    assert not guard.admit("10.0.0.1")  # a third from the same host
    assert guard.admit("10.0.0.2")  # another host is not affected
    guard.handshake_over("10.0.0.1")
    guard.handshake_over("10.0.0.1")  # authenticated links still count against their address
    assert not guard.admit("10.0.0.1")
    guard.release("10.0.0.1")
    assert guard.admit("10.0.0.1")
    assert guard.connections("10.0.0.1") == 2


def test_handshakes_in_progress_are_capped_across_addresses() -> None:
    guard = LinkGuard(max_per_address=10, max_handshakes=3)
    for i in range(3):
        assert guard.admit(f"10.0.0.{i}")
    assert not guard.admit("10.0.0.9")
    guard.handshake_over("10.0.0.1")  # one of them finished its handshake
    assert guard.admit("10.0.0.9")
    assert guard.handshakes == 3


def test_handshakes_in_progress_are_capped_per_address() -> None:
    guard = LinkGuard()  # the defaults: 4 handshakes and 32 connections an address
    for _ in range(4):
        assert guard.admit("10.0.0.1")
    assert not guard.admit("10.0.0.1")  # a fifth handshake at once
    assert guard.admit("10.0.0.2")  # another address still gets in
    guard.handshake_over("10.0.0.1")
    assert guard.admit("10.0.0.1")  # one ended: room for the next
    assert guard.handshakes_from("10.0.0.1") == 4 and guard.connections("10.0.0.1") == 5


def test_two_addresses_cannot_hold_every_handshake() -> None:
    # Reconnecting every handshake time-out, a host holds as many handshakes as it may.
    guard = LinkGuard()
    for address in ("10.0.0.1", "10.0.0.2"):
        while guard.admit(address):
            pass
    assert guard.handshakes <= 2 * 4 < guard.max_handshakes
    assert guard.admit("10.0.0.3")


def test_ipv6_addresses_count_one_by_one_however_written() -> None:
    # Not by /64: the nodes of a cluster often share one subnet and link at once.
    guard = LinkGuard(max_per_address=6, max_handshakes_per_address=4)
    for _ in range(4):
        assert guard.admit("2001:db8:0:7::1")
    assert not guard.admit("2001:db8:0:7::1")  # a 5th handshake from that address
    assert guard.admit("2001:db8:0:7::2")  # its neighbour in the /64 is another address
    assert guard.handshakes_from("2001:DB8:0:7:0:0:0:1") == 4  # the same address


def test_ipv4_through_an_ipv6_socket_counts_per_ipv4_address() -> None:
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d, all in one /64: each must
    # still count as its own address, and as the same one as without the prefix.
    guard = LinkGuard(max_per_address=10, max_handshakes_per_address=1)
    assert guard.admit("::ffff:10.0.0.1")
    assert not guard.admit("10.0.0.1")
    assert guard.admit("::ffff:10.0.0.2")
    assert guard.handshakes_from("10.0.0.1") == 1


def test_loopback_is_held_to_the_connection_cap_only() -> None:
    # Every node of a test cluster on one host dials from 127.0.0.1, many at once.
    guard = LinkGuard(max_per_address=8, max_handshakes_per_address=2)
    for address in ("127.0.0.1", "::1"):
        for _ in range(8):
            assert guard.admit(address)
        assert not guard.admit(address)
    assert guard.handshakes == 16


def test_nothing_is_kept_for_a_host_that_left() -> None:
    guard = LinkGuard()
    for i in range(1000):
        address = f"10.{i // 256}.{i % 256}.1"
        assert guard.admit(address)
        guard.handshake_over(address)
        guard.release(address)
    for i in range(100):
        address = f"2001:db8:{i:x}::1"
        assert guard.admit(address)
        guard.handshake_over(address)
        guard.release(address)
    assert guard.handshakes == 0
    assert guard._connections == {} and guard._handshakes == {}


def test_limits_must_allow_something() -> None:
    with pytest.raises(ValueError):
        LinkGuard(max_per_address=0)
    with pytest.raises(ValueError):
        LinkGuard(max_handshakes_per_address=0)


def test_strangers_holding_every_handshake_leave_room_for_members() -> None:
    """64 stranger addresses reconnecting every handshake time-out held all 256 handshakes,
    and no live member could open a link to the node. Members' addresses (a fact gossip's
    MAC vouches for, not the connection) have handshakes of their own, as many again."""
    guard = LinkGuard()
    for i in range(64):
        for _ in range(4):
            assert guard.admit(f"10.1.0.{i}")
    assert not guard.admit("10.9.9.9")  # the strangers' share is full
    assert guard.admit("10.0.0.5", member=True)
    guard.handshake_over("10.0.0.5", member=True)
    assert not guard.admit("10.9.9.9")  # a member's handshake freed no stranger's place
    for i in range(64):
        for _ in range(4):
            assert guard.admit(f"10.2.0.{i}", member=True)
    assert not guard.admit("10.3.0.1", member=True)  # made-up members: bounded as well
    assert guard.handshakes == 256 and guard.member_handshakes == 256
