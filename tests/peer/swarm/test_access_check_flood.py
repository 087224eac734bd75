"""While a member's Access waits for its registry check, each of its PeersRequests and
Bitfields for that blob started a task of its own that waited on the check too: messages in
the time the registry takes to answer were tasks on the node. Now one waits per member, blob
and kind, answering the newest. A real node and registry; the member is scripted."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import trio

from peer.swarm.bits import bits_of
from peer.swarm.link import LinkClosed, PeerLink
from tests.peer.member_node import node_and_registry, open_link
from wire.events import Access, Bitfield, Event, Peers, PeersRequest
from wire.identity import NodeIdentity

PIECE = 64 * 1024  # the test node's piece size
MESSAGES = 2000


async def test_messages_waiting_for_an_access_check_are_one_task_per_kind(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with node_and_registry(tmp_path, nursery) as setup:
        swarm = setup.node.swarm
        assert swarm is not None and swarm._nursery is not None
        setup.registry.token = "s3cret"
        digest = setup.registry.add_blob(os.urandom(4 * PIECE))
        got = await setup.client.get(
            f"/v2/org/app/blobs/{digest}", headers={"Authorization": "Bearer s3cret"}
        )
        assert got.status_code == 200  # held, private to the registry
        setup.registry.gate = trio.Event()  # the access check waits until the end
        member = NodeIdentity.generate()
        link = await open_link(setup, member)
        answers: list[Peers] = []

        async def on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Peers):
                answers.append(event)

        async def run() -> None:
            with contextlib.suppress(LinkClosed):
                await link.run(on_event)

        nursery.start_soon(run)
        before = len(swarm._nursery.child_tasks)
        await link.send(Access(digest, None, "org/app", "Bearer s3cret"))
        frames = b"".join(
            link.protocol.send(PeersRequest(digest))
            + link.protocol.send(Bitfield(digest, bits_of(range(4), 4)))
            for _ in range(MESSAGES)
        )
        await link.stream.send_all(frames)
        most = 0
        with trio.move_on_after(1):
            while True:
                most = max(most, len(swarm._nursery.child_tasks) - before)
                await trio.sleep(0.005)
        setup.registry.gate.set()
        with trio.fail_after(10):
            while not answers:  # answered once the registry vouched for the credentials
                await trio.sleep(0.01)
        await link.close()
        assert most <= 4
