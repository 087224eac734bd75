"""A member that floods a node with made-up members (it holds the cluster token): the table
stays bounded, word of strangers' deaths adds nothing, and however large the table, a sync
with an honest member works (the full state once outgrew a frame and closed every link
that carried it)."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from peer.cluster import sync
from peer.cluster.membership import MAX_MEMBERS, Status
from tests.peer.member_node import link_member, node_and_registry, open_link
from wire.events import Members
from wire.identity import NodeIdentity


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


async def test_pushes_from_a_member_that_does_not_read_queue_one_answer(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Each push is answered with the whole table (up to ~1 MB of long names): a member that
    sends tiny pushes and never reads must not make the node queue an answer per push (6,279
    frames for 300 pushes): while an answer waits for the peer to read, pushes get none."""
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    async with node_and_registry(tmp_path, nursery) as setup:
        membership = setup.node.membership
        assert membership is not None and setup.node.swarm is not None
        identity = NodeIdentity.generate()
        me = identity.node_id
        link = await open_link(setup, identity)  # and never reads it again
        for _ in range(20):
            entries = [(os.urandom(16), host, 65535, 0, 0, 2**47 - 1) for _ in range(200)]
            await link.send(Members(entries, reply=True))
        with trio.fail_after(10):
            while len(membership.members) < 4000:
                await trio.sleep(0.05)
        for _ in range(300):
            await link.send(Members([(me, "127.0.0.1", 29999, 0, 0, 0)], reply=False))
        await trio.sleep(1)
        answer = len(sync.full_state(membership, reply=True))
        assert len(setup.node.swarm.links[me]._outbox) <= answer
        await link.close()
