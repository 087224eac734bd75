"""A client's Authorization that other nodes would refuse (longer than MAX_AUTHORIZATION)
is used by its own node alone: the blob comes from the registry, and no Want carrying it
goes to the owner (the owner would refuse the frame and close the link)."""

from __future__ import annotations

from pathlib import Path

import trio

from bench.components import free_port
from peer.swarm.link import PeerLink
from tests.peer.member_node import (
    announce_member,
    blob_owned_by,
    node_and_registry,
    serve_member,
)
from wire.events import Event, Want
from wire.identity import NodeIdentity
from wire.names import MAX_AUTHORIZATION


async def test_a_client_login_too_long_to_pass_on_is_used_here_alone(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with node_and_registry(tmp_path, nursery) as setup:
        owner, owner_port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        data = blob_owned_by(owner, setup.node.node_id, 256 * 1024)
        digest = setup.registry.add_blob(data)
        wants: list[Want] = []

        async def owner_on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Want):
                wants.append(event)

        await serve_member(nursery, owner, owner_port, owner_on_event)
        await announce_member(setup, owner, owner_port)
        login = "Basic " + "A" * MAX_AUTHORIZATION
        answer = await setup.client.get(
            f"/v2/org/app/blobs/{digest}", headers={"authorization": login}, timeout=30
        )
        assert answer.status_code == 200 and answer.content == data
        assert wants == []
        # Not by a link the owner closed on a frame it refused (then counted as a fallback):
        # the swarm was never asked.
        assert setup.node.swarm is not None
        assert setup.node.swarm.counters.upstream_fallbacks == 0
