"""A ban ends every link to the banned member: two nodes may hold two links to each other (each
dialled the other), and a ban closed only the newest, so the banned member's other link kept
being read and served, while the node took the member for gone. A real node; the member is
scripted."""

from __future__ import annotations

import contextlib
from pathlib import Path

import trio

from peer.swarm.link import LinkClosed, PeerLink
from tests.peer.member_node import node_and_registry, open_link
from wire.events import Event
from wire.identity import NodeIdentity


async def test_a_ban_closes_every_link_to_the_member(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with node_and_registry(tmp_path, nursery) as setup:
        swarm = setup.node.swarm
        assert swarm is not None
        member = NodeIdentity.generate()
        ours = [await open_link(setup, member), await open_link(setup, member)]

        async def ignore(link: PeerLink, event: Event) -> None:
            pass

        async def run(link: PeerLink) -> None:
            with contextlib.suppress(LinkClosed):
                await link.run(ignore)

        for link in ours:
            nursery.start_soon(run, link)
        with trio.fail_after(10):
            while len(swarm._open_links.get(member.node_id, ())) < 2:
                await trio.sleep(0.01)
        theirs = set(swarm._open_links[member.node_id])
        await swarm.ban(member.node_id, "a test's ban")
        with trio.fail_after(10):
            while member.node_id in swarm._open_links:
                await trio.sleep(0.01)
        assert all(link.closed for link in theirs)
        assert member.node_id not in swarm.links
