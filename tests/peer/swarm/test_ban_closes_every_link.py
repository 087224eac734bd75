"""A ban ends every link to the banned member: two nodes may hold two links to each other (each
dialled the other), and a ban closed only the newest, so the banned member's other link kept
being read and served, while the node took the member for gone. A real node; the member is
scripted."""

from __future__ import annotations

import contextlib
from pathlib import Path

import trio

from bench.components import free_port
from peer.swarm.link import LinkClosed, PeerLink
from tests.peer.member_node import TOKEN, announce_member, node_and_registry, open_link
from wire.events import Event
from wire.identity import NodeIdentity
from wire.names import address_text
from wire.protocol import Role


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


async def test_a_ban_during_the_handshake_leaves_no_link(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The ban lands while the node's own dial to the member is in its handshake: that link
    was tracked once the handshake ended, after the ban had closed every link it knew."""
    async with node_and_registry(tmp_path, nursery) as setup:
        swarm = setup.node.swarm
        assert swarm is not None
        member, port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        dialled, go_on = trio.Event(), trio.Event()

        async def ignore(link: PeerLink, event: Event) -> None:
            pass

        async def accept(stream: trio.SocketStream) -> None:
            dialled.set()
            await go_on.wait()  # the node waits for our Hello meanwhile
            link = PeerLink(
                stream, member, TOKEN, role=Role.RESPONDER, address=address_text("127.0.0.1", port)
            )
            with contextlib.suppress(LinkClosed):
                await link.handshake()
                await link.run(ignore)

        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, accept, listeners)
        await announce_member(setup, member, port)
        outcome: list[PeerLink | LinkClosed] = []

        async def dial() -> None:
            try:
                outcome.append(await swarm.link_to(member.node_id))
            except LinkClosed as exc:
                outcome.append(exc)

        nursery.start_soon(dial)
        with trio.fail_after(10):
            await dialled.wait()
        await swarm.ban(member.node_id, "a test's ban")
        go_on.set()
        with trio.fail_after(10):
            while not outcome:
                await trio.sleep(0.01)
        await trio.sleep(0.2)  # a link wrongly kept would be read and tracked by now
        assert isinstance(outcome[0], LinkClosed), "link_to gave a link to a banned member"
        assert member.node_id not in swarm.links
        assert not swarm._open_links.get(member.node_id)
