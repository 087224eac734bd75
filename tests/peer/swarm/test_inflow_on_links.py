"""Inflow between real nodes (gossip on UDP, links on TCP, all on loopback, a fake registry):
a node tells a peer how many transfers come into its downlink before its first requests
there, and the peer's uploads keep the number, for as long as the link lasts."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.peer.swarm.real_nodes import (
    blob_where,
    first_of,
    knows,
    make_node,
    registry_and_seed,
    running,
    until,
)


async def test_a_node_tells_the_peer_it_asks_for_pieces_how_many_transfers_come_in(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry, seed = await registry_and_seed(tmp_path, nursery)
    assert seed.config.peer is not None
    first = make_node(registry, tmp_path / "first", join=(seed.config.peer,))
    puller = make_node(registry, tmp_path / "puller", join=(seed.config.peer,))
    data = blob_where(lambda d: first_of(d, seed, first, puller) == seed.node_id)
    digest = registry.add_blob(data)
    async with running(seed, nursery), running(first, nursery) as a, running(puller, nursery) as b:
        await until(
            lambda: (
                knows(seed, first, puller)
                and knows(first, seed, puller)
                and knows(puller, seed, first)
            )
        )
        assert seed.swarm is not None and puller.swarm is not None
        assert first.swarm is not None
        lanes = {seed: seed.swarm.uploads.lanes, first: first.swarm.uploads.lanes}
        # The first node's pieces come unasked (the seed pushes its first copies); once each
        # piece is out, the seed offers them all to whoever comes, who asks for them there or
        # at the first node.
        assert await a.pull(digest) == data
        assert all(lane.inflows_of(puller.node_id) is None for lane in lanes.values())
        pushed = seed.swarm.counters.pieces_pushed
        assert await b.pull(digest) == data
        assert seed.swarm.counters.pieces_pushed == pushed  # the puller asked for every piece
        asked = [
            node for node, lane in lanes.items() if lane.inflows_of(puller.node_id) is not None
        ]
        assert asked
        for node in asked:
            # Before its first requests: nothing coming in; later ones may follow a piece
            # that was arriving from that node itself.
            assert lanes[node].inflows_of(puller.node_id) in (0, 1)
        assert puller.swarm.counters.bytes_from_peers > 0
    assert registry.count("GET", digest) == 1
