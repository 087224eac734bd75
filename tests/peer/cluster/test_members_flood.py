"""A member that floods a node with made-up members (it holds the cluster token): the table
stays bounded, word of strangers' deaths adds nothing, and however large the table, a sync
with an honest member works (the full state once outgrew a frame and closed every link
that carried it)."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from peer.cluster.membership import MAX_MEMBERS, Status
from tests.peer.member_node import link_member, node_and_registry
from wire.events import Members


def made_up(count: int, status: Status) -> list[tuple[bytes, str, int, int, int, int]]:
    # Loopback, ports no one listens on: the node's probes of them go nowhere.
    return [(os.urandom(16), "127.0.0.1", 1 + i % 60000, 0, int(status), 0) for i in range(count)]


async def test_a_flood_of_members_leaves_the_table_bounded_and_syncs_working(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with node_and_registry(tmp_path, nursery) as setup:
        membership = setup.node.membership
        assert membership is not None
        liar = await link_member(setup, nursery)
        for _ in range(10):  # 15,000 dead strangers
            await liar.link.send(Members(made_up(1500, Status.DEAD), reply=True))
        for _ in range(4):  # 6,000 live ones: more than the table holds
            await liar.link.send(Members(made_up(1500, Status.ALIVE), reply=True))
        with trio.fail_after(10):
            while len(membership.members) < MAX_MEMBERS:
                await trio.sleep(0.05)
        assert len(membership.members) == MAX_MEMBERS
        assert all(m.status is not Status.DEAD for m in membership.members.values())
        # An honest member's push (itself and the node) is answered with the whole table.
        honest = await link_member(setup, nursery)
        me = (honest.link.protocol.node_id, "127.0.0.1", 29999, 0, 0, 0)
        node = (setup.node.node_id, "127.0.0.1", setup.peer_port, 0, 0, 0)
        await honest.link.send(Members([me, node], reply=False))
        with trio.fail_after(10):
            while sum(len(m.members) for m in honest.members) < MAX_MEMBERS + 1:
                await trio.sleep(0.05)
        assert not honest.link.closed and all(m.reply for m in honest.members)
        learned = {entry[0] for m in honest.members for entry in m.members}
        assert setup.node.node_id in learned and len(learned) == MAX_MEMBERS + 1
