"""A real node tells its peer links of its refutations, and a linked member of its suspicion
(TCP loses nothing where gossip's datagrams are lost)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from peer.cluster.gossip import update_in
from peer.cluster.membership import Membership, Status, Update
from peer.swarm.link import PeerLink
from tests.peer.member_node import Member, Setup, link_member, node_and_registry
from wire.events import Have


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    async with node_and_registry(tmp_path, nursery) as made:
        yield made


async def _pushed(member: Member) -> list[Update]:
    """The updates of the first Members message the node pushes on the member's link, which
    must be an answer (reply: the member does not answer it with its whole view)."""
    with trio.fail_after(5):
        while not member.members:
            await trio.sleep(0.02)
    assert member.members[0].reply
    return [update_in(raw) for raw in member.members[0].members]


async def _linked(setup: Setup, nursery: trio.Nursery) -> tuple[Member, Membership]:
    """A member linked to the node, and the node's membership."""
    member = await link_member(setup, nursery)
    assert setup.node.membership is not None
    return member, setup.node.membership


async def test_a_suspected_node_sends_its_refutation_to_every_linked_peer(
    setup: Setup, nursery: trio.Nursery
) -> None:
    member, membership = await _linked(setup, nursery)
    node_id, address = membership.node_id, membership.address
    suspicion = Update(node_id, address, membership.incarnation, Status.SUSPECT)
    membership.merge([suspicion], trio.current_time())  # as a sync on a link would
    refutation = Update(node_id, address, suspicion.incarnation + 1, Status.ALIVE)
    assert await _pushed(member) == [refutation]


async def test_a_node_tells_a_linked_member_it_is_suspected(
    setup: Setup, nursery: trio.Nursery
) -> None:
    """Lifeguard's buddy system over TCP: the suspect hears of it on its link and refutes."""
    member, membership = await _linked(setup, nursery)
    member_id = member.link.protocol.node_id
    address = ("127.0.0.1", 9)  # never reached: the word goes on the link
    membership.merge([Update(member_id, address, 2, Status.ALIVE)], trio.current_time())
    suspicion = Update(member_id, address, 2, Status.SUSPECT)
    membership.merge([suspicion], trio.current_time())  # as gossip would bring it
    assert await _pushed(member) == [suspicion]


async def _two_links(
    setup: Setup, nursery: trio.Nursery
) -> tuple[Member, PeerLink, Member, PeerLink]:
    """A member linked twice (as two nodes that connect to each other at once are): its
    older and newer link, each with the node's side of it."""
    older, _membership = await _linked(setup, nursery)
    member_id = older.link.protocol.node_id
    swarm = setup.node.swarm
    assert swarm is not None
    with trio.fail_after(5):
        while (first := swarm.links.get(member_id)) is None:
            await trio.sleep(0.01)
    newer = await link_member(setup, nursery, identity=older.identity)
    with trio.fail_after(5):
        while (second := swarm.links.get(member_id)) is first:  # new requests use the newer
            await trio.sleep(0.01)
    assert second is not None and not first.closed
    return older, first, newer, second


async def test_a_peer_is_heard_on_its_older_link_too(setup: Setup, nursery: trio.Nursery) -> None:
    """Two nodes that connect to each other at once keep both links, and answers come on
    either: what the older one hears counts for gossip and for a fetch's owner."""
    older, _first, _newer, _second = await _two_links(setup, nursery)
    member_id = older.link.protocol.node_id
    swarm = setup.node.swarm
    assert swarm is not None
    await trio.sleep(0.5)
    before = swarm.heard_at(member_id)
    assert before is not None
    older.link.post(Have("sha256:" + "e" * 64, 0))  # on the older link only
    with trio.fail_after(5):
        while swarm.heard_at(member_id) == before:
            await trio.sleep(0.01)
    heard_at = swarm.heard_at(member_id)
    assert heard_at is not None and heard_at >= before + 0.5
    assert dict(swarm.links_heard())[member_id] == heard_at


async def test_when_the_newer_of_two_links_closes_the_older_one_carries_on(
    setup: Setup, nursery: trio.Nursery
) -> None:
    """The peer is not gone while a link to it runs: new requests go on the older link (the
    node dropped the peer from its links, and its fetches took their owner for lost)."""
    older, first, newer, second = await _two_links(setup, nursery)
    member_id = older.link.protocol.node_id
    swarm = setup.node.swarm
    assert swarm is not None
    await newer.link.close()
    with trio.fail_after(5):
        while not second.closed:
            await trio.sleep(0.01)
    await trio.sleep(0.2)  # the node's side of the closed link has been handled
    assert swarm.links.get(member_id) is first and not first.closed
