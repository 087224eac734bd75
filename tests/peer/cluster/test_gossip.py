from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from peer.cluster.gossip import (
    MAX_CLOCK_SKEW,
    BadDatagram,
    GossipDriver,
    StaleDatagram,
    decode,
    encode,
)
from peer.cluster.membership import (
    DEAD_KEPT,
    Ack,
    Membership,
    Ping,
    PingReq,
    Status,
    SwimConfig,
    Update,
)

ids = st.binary(min_size=16, max_size=16)
addresses = st.tuples(st.sampled_from(["127.0.0.1", "10.1.2.3"]), st.integers(1, 65535))
updates = st.builds(
    Update,
    ids,
    addresses,
    st.integers(0, 2**31),
    st.sampled_from(list(Status)),
    st.integers(0, 2**40),
)
messages = st.one_of(
    st.builds(
        Ping, st.integers(0, 2**31), ids, addresses, st.tuples(updates), st.none() | addresses
    ),
    st.builds(Ack, st.integers(0, 2**31), ids, st.tuples(updates, updates)),
    st.builds(PingReq, st.integers(0, 2**31), ids, addresses, ids, addresses, st.tuples(updates)),
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NOW = 1_800_000_000.0  # the senders' and receivers' wall clock in the codec's tests


@given(messages, st.none() | st.binary(min_size=1, max_size=20))
def test_round_trip(message: object, token: bytes | None) -> None:
    assert decode(encode(message, token, NOW), token, NOW) == message  # type: ignore[arg-type]


@given(messages)
def test_wrong_token_is_dropped(message: object) -> None:
    with pytest.raises(BadDatagram, match="token"):
        decode(encode(message, b"right", NOW), b"wrong", NOW)  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_garbage_is_a_bad_datagram(data: bytes) -> None:
    with pytest.raises(BadDatagram):
        decode(data, None, NOW)


@pytest.mark.parametrize("age", [MAX_CLOCK_SKEW + 1, -(MAX_CLOCK_SKEW + 1), 3600.0])
def test_a_datagram_sent_too_far_from_now_is_dropped_as_stale(age: float) -> None:
    """A datagram captured and sent again later (no token needed) brought a node that had
    left, and been forgotten, back to life: a ghost owner every fetch dialled in vain. A
    datagram carries when it was sent, under the MAC; one older (or newer) than the clocks'
    allowed skew is dropped, and that skew is under DEAD_KEPT, so no replay outlives the
    memory of a death."""
    ping = Ping(7, os.urandom(16), ("127.0.0.1", 4000))
    datagram = encode(ping, b"tok", NOW - age)
    with pytest.raises(StaleDatagram, match="clock"):
        decode(datagram, b"tok", NOW)
    assert decode(encode(ping, b"tok", NOW - MAX_CLOCK_SKEW / 2), b"tok", NOW) == ping
    assert MAX_CLOCK_SKEW < DEAD_KEPT


async def test_a_forgotten_members_datagram_sent_again_does_not_bring_it_back(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The attack end to end on a real socket: a member's Ping, captured, is sent again
    once its death is forgotten; the node does not take it back."""
    config = SwimConfig(probe_period=0.2, probe_timeout=0.1)
    port = free_udp_port()
    node = Membership(os.urandom(16), ("127.0.0.1", port), config)
    ghost = os.urandom(16)
    captured = encode(Ping(1, ghost, ("127.0.0.1", 9)), b"tok", time.time() - DEAD_KEPT - 1)
    driver = GossipDriver(node, node.address, b"tok")
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as attacker:
            await attacker.sendto(captured, ("127.0.0.1", port))
            with trio.fail_after(5):
                while driver.dropped == 0:
                    await trio.sleep(0.01)
        assert ghost not in node.members
        nursery.cancel_scope.cancel()


async def test_three_drivers_on_loopback_find_each_other(autojump_clock: trio.abc.Clock) -> None:
    config = SwimConfig(probe_period=0.2, probe_timeout=0.1)
    ports = [free_udp_port() for _ in range(3)]
    nodes = [
        Membership(os.urandom(16), ("127.0.0.1", port), config, seeds=(("127.0.0.1", ports[0]),))
        for port in ports
    ]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(GossipDriver(node, node.address, b"tok").run)
        with trio.fail_after(30):
            while not all(len(n.alive_ids()) == 3 for n in nodes):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("host", ["a\x00b", "x" * 300, "[", "a..b", "", "h\u00e9te"])
def test_a_member_address_the_resolver_would_choke_on_is_a_bad_datagram(host: str) -> None:
    # Built by hand: the codec must refuse it however it was made (a member with the token,
    # or a buggy node, could send it).
    import msgpack

    from peer.cluster.gossip import _mac

    good = [os.urandom(16), "127.0.0.9", 4000, 1, 0, 0]
    body = msgpack.packb([NOW, [1, 7, os.urandom(16), ["127.0.0.1", 4001], [good], None]])
    decode(_mac(b"tok", body) + body, b"tok", NOW)  # the same entry with a good host is taken
    update = [os.urandom(16), host, 4000, 1, 0, 0]
    body = msgpack.packb([NOW, [1, 7, os.urandom(16), ["127.0.0.1", 4001], [update], None]])
    with pytest.raises(BadDatagram):
        decode(_mac(b"tok", body) + body, b"tok", NOW)


async def test_gossip_survives_a_member_address_that_breaks_sendto(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Defence in depth: an address that got into the membership (however) must not end the
    gossip task when a probe is sent to it."""
    config = SwimConfig(probe_period=0.2, probe_timeout=0.1)
    port = free_udp_port()
    node = Membership(os.urandom(16), ("127.0.0.1", port), config)
    node.merge([Update(os.urandom(16), ("a\x00b", 4000), 1, Status.ALIVE)], 0.0)
    driver = GossipDriver(node, node.address, b"tok")
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await trio.sleep(5)  # many probe periods: each probe goes to the bad address
        nursery.cancel_scope.cancel()


class FakeLinks:
    """The swarm's links as gossip sees them: one peer heard now (or never), and what gossip
    told the links."""

    def __init__(self, heard: bytes | None) -> None:
        self.heard = heard
        self.told: list[Update] = []  # to every link
        self.told_member: list[Update] = []  # to the member it is about

    def links_heard(self) -> list[tuple[bytes, float]]:
        return [(self.heard, trio.current_time())] if self.heard is not None else []

    def tell_links(self, update: Update) -> None:
        self.told.append(update)

    def tell_member(self, update: Update) -> None:
        self.told_member.append(update)


@pytest.mark.parametrize("heard_on_a_link", [False, True])
async def test_the_driver_tells_the_membership_what_the_links_heard(
    autojump_clock: trio.abc.Clock, heard_on_a_link: bool
) -> None:
    """A member whose datagrams never come (an address nobody answers on) but whose peer
    link keeps talking is not suspected; without the link's word it is buried."""
    config = SwimConfig(probe_period=0.2, probe_timeout=0.1)
    node = Membership(os.urandom(16), ("127.0.0.1", free_udp_port()), config)
    silent = os.urandom(16)
    node.merge([Update(silent, ("127.0.0.1", free_udp_port()), 0, Status.ALIVE)], 0.0)
    driver = GossipDriver(node, node.address, b"tok")
    driver.links = FakeLinks(silent if heard_on_a_link else None)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await trio.sleep(20)  # many probe periods and suspicion time-outs
        nursery.cancel_scope.cancel()
    # It cannot refute: once suspected, it would have stayed suspect or died.
    expected = Status.ALIVE if heard_on_a_link else Status.DEAD
    assert node.members[silent].status is expected


async def _gossip_to(driver: GossipDriver, update: Update, done: Callable[[], bool]) -> None:
    """Run `driver`, send it one Ping that carries `update` (from a socket of our own) and
    wait until `done()`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        ping = Ping(1, os.urandom(16), ("127.0.0.1", sock.getsockname()[1]), (update,))
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            sock.sendto(encode(ping, b"tok", time.time()), driver.membership.address)
            with trio.fail_after(5):
                while not done():
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


def _driver_with_links() -> tuple[GossipDriver, FakeLinks]:
    config = SwimConfig(probe_period=0.2, probe_timeout=0.1)
    node = Membership(os.urandom(16), ("127.0.0.1", free_udp_port()), config)
    driver = GossipDriver(node, node.address, b"tok")
    links = driver.links = FakeLinks(None)
    return driver, links


async def test_a_node_told_it_is_suspect_refutes_on_its_links_too(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A refutation that only gossip carries is lost with the datagrams of a link full of
    pieces, and the suspicion ends in our burial: it goes out on the peer links at once."""
    driver, links = _driver_with_links()
    node = driver.membership
    suspicion = Update(node.node_id, node.address, 0, Status.SUSPECT)
    await _gossip_to(driver, suspicion, lambda: bool(links.told))
    assert links.told == [Update(node.node_id, node.address, 1, Status.ALIVE)]
    assert node.incarnation == 1


async def test_a_suspicion_gossip_brings_is_told_to_the_suspect_on_its_link(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The suspect learns of it by TCP, where its datagrams may be lost, and refutes."""
    driver, links = _driver_with_links()
    suspect, suspect_address = os.urandom(16), ("127.0.0.1", free_udp_port())
    driver.membership.merge([Update(suspect, suspect_address, 4, Status.ALIVE)], 0.0)
    suspicion = Update(suspect, suspect_address, 4, Status.SUSPECT)
    await _gossip_to(driver, suspicion, lambda: bool(links.told_member))
    assert links.told_member == [suspicion]
    assert links.told == []  # nothing of ours to refute


async def test_a_suspicion_at_the_largest_incarnation_is_dropped_not_refuted_past_the_codec(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A member with the token suspects us at incarnation 2**64 - 1 (msgpack's largest): our
    refutation (one more) could not be encoded, and the gossip task (the node) would end.
    The datagram is refused; the next honest one is answered."""
    driver, _links = _driver_with_links()
    node = driver.membership
    hostile = Update(node.node_id, node.address, 2**64 - 1, Status.SUSPECT)
    with pytest.raises(BadDatagram):
        ping = Ping(1, os.urandom(16), ("127.0.0.1", 9), (hostile,))
        decode(encode(ping, b"tok", NOW), b"tok", NOW)
    await _gossip_to(driver, hostile, lambda: driver.dropped > 0 or node.incarnation > 0)
    assert node.incarnation == 0
    honest = Update(node.node_id, node.address, 0, Status.SUSPECT)
    await _gossip_to(driver, honest, lambda: node.incarnation == 1)
