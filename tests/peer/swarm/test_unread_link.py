"""A member that asks and never reads: each PeersRequest is answered with a Peers posted to
its link, and nothing bounded that queue but SEND_TIMEOUT (a minute: 400,000 answers queued
from 33 MB of requests). Past MAX_ANSWERS_WAITING answers waiting, the node queues no more
and closes the link. A real node; the member is scripted."""

from __future__ import annotations

from pathlib import Path

import trio

from peer.swarm.link import MAX_ANSWERS_WAITING
from tests.peer.member_node import node_and_registry, open_link
from wire.events import PeersRequest
from wire.identity import NodeIdentity

DIGEST = "sha256:" + "b" * 64


async def test_a_member_that_reads_nothing_has_its_link_closed(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with node_and_registry(tmp_path, nursery) as setup:
        swarm = setup.node.swarm
        assert swarm is not None
        attacker = NodeIdentity.generate()
        link = await open_link(setup, attacker)  # never read from
        chunk = link.protocol.send(PeersRequest(DIGEST)) * 4096
        most = 0
        with trio.move_on_after(30):
            for _ in range(25):  # 102,400 requests, 25 times the bound
                try:
                    await link.stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break  # the node closed the link
                theirs = swarm._open_links.get(attacker.node_id, ())
                most = max([most, *(len(ours._answers_waiting) for ours in theirs)])
        with trio.fail_after(10):
            while swarm._open_links.get(attacker.node_id):
                await trio.sleep(0.05)
        await link.stream.aclose()
        assert most <= MAX_ANSWERS_WAITING
