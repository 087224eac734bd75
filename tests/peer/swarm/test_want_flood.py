"""A member's Wants for thousands of digests: each started a task, a digest's state and a
registry download on the node, with nothing to bound how many at once (5,000 Wants: 5,000
tasks, 2,000 registry GETs in 5 s). Past WANTS_PER_PEER being answered, a Want is refused
with 503 (the asker fetches the blob itself). A real node and registry; the member is
scripted."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import trio

from peer.swarm.link import LinkClosed, PeerLink
from peer.swarm.swarm import WANTS_PER_PEER
from tests.peer.member_node import node_and_registry, open_link
from wire.events import Event, Refused, Want
from wire.identity import NodeIdentity

WANTS = 2000


async def test_wants_answered_at_once_are_bounded(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with node_and_registry(tmp_path, nursery) as setup:
        swarm = setup.node.swarm
        assert swarm is not None
        setup.registry.gate = trio.Event()  # the registry answers no blob until the end
        attacker = NodeIdentity.generate()
        link = await open_link(setup, attacker)
        busy: list[Refused] = []

        async def on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Refused) and event.status == 503:
                busy.append(event)

        async def run() -> None:
            with contextlib.suppress(LinkClosed):
                await link.run(on_event)

        nursery.start_soon(run)
        frames = b"".join(
            link.protocol.send(Want("sha256:" + os.urandom(32).hex(), None, "org/app", None))
            for _ in range(WANTS)
        )
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, len(swarm.digests))
                await trio.sleep(0.005)

        async with trio.open_nursery() as watching:
            watching.start_soon(watch)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await link.stream.send_all(frames)
            with trio.fail_after(10):
                while len(busy) < 100:  # the Wants past the bound are refused...
                    await trio.sleep(0.01)
            await trio.sleep(0.5)
            watching.cancel_scope.cancel()
        asked = len(setup.registry.requests)
        setup.registry.gate.set()
        await link.close()
        # ...and those within it are all the node answers at once: tasks, states, downloads.
        assert most <= WANTS_PER_PEER
        assert asked <= WANTS_PER_PEER
