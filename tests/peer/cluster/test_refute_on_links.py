"""A real node suspected by gossip refutes on its peer links too (TCP loses nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from peer.cluster.gossip import update_in
from peer.cluster.membership import Status, Update
from tests.peer.member_node import Setup, link_member, node_and_registry


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    async with node_and_registry(tmp_path, nursery) as made:
        yield made


async def test_a_suspected_node_sends_its_refutation_to_every_linked_peer(
    setup: Setup, nursery: trio.Nursery
) -> None:
    member = await link_member(setup, nursery)
    node = setup.node
    assert node.membership is not None
    address = node.membership.address
    suspicion = Update(node.node_id, address, node.membership.incarnation, Status.SUSPECT)
    node.membership.merge([suspicion], trio.current_time())  # as a sync on a link would
    with trio.fail_after(5):
        while not member.members:
            await trio.sleep(0.02)
    pushed = member.members[0]
    assert pushed.reply  # an answer: the peer does not answer it with its whole view
    assert [update_in(raw) for raw in pushed.members] == [
        Update(node.node_id, address, suspicion.incarnation + 1, Status.ALIVE)
    ]
