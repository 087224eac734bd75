"""An owner whose PieceMeta gives a blob another size than the manifests of our client's
repository is left for the registry: its size is refused before anything is taken from it,
and the client gets the blob from the registry. The refusal (SizeRefused, a StoreError) went
up as the fetch's failure, past the fallback to the upstream, and the client got 502: a lying
member, or an honest owner whose download in flight came from another repository or a
registry a client named, failed the pulls of that blob on other nodes. A real node and
registry; the owner is a scripted member."""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio

from bench.components import free_port
from peer.cluster.rendezvous import owner_order
from peer.swarm.link import PeerLink
from tests.peer.fake_registry import MANIFEST_TYPE, digest_of
from tests.peer.member_node import announce_member, node_and_registry, serve_member
from wire.events import Event, Invite, Peers, PeersRequest, PieceMeta, Request, Want
from wire.identity import NodeIdentity

PIECE = 64 * 1024


async def test_an_owner_whose_size_our_repositorys_manifest_contradicts_is_left_for_the_registry(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with node_and_registry(tmp_path, nursery, prefetch=False) as setup:
        liar, liar_port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        for _ in range(1000):
            data = os.urandom(5 * PIECE)
            if owner_order(digest_of(data), [setup.node.node_id, liar.node_id])[0] == liar.node_id:
                break
        digest = setup.registry.add_blob(data)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "c", "digest": digest_of(b"{}"), "size": 2},
            "layers": [{"mediaType": "l", "digest": digest, "size": len(data)}],
        }
        setup.registry.add_manifest("t", json.dumps(manifest).encode())
        seen: list[Event] = []

        async def liar_on_event(link: PeerLink, event: Event) -> None:
            seen.append(event)
            if isinstance(event, Want):
                link.post(PieceMeta(event.digest, len(data) + PIECE, PIECE, {}, []))
            elif isinstance(event, PeersRequest):
                link.post(Peers(event.digest, []))

        await serve_member(nursery, liar, liar_port, liar_on_event)
        await announce_member(setup, liar, liar_port)
        # Our client's repository gives the blob its size (the client reads the manifest first).
        assert (await setup.client.get("/v2/org/app/manifests/t")).status_code == 200
        with trio.fail_after(15):
            response = await setup.client.get(f"/v2/org/app/blobs/{digest}")
        assert response.status_code == 200, response.text
        assert response.content == data
        assert setup.registry.count("GET", digest) == 1
        assert any(isinstance(event, Want) for event in seen), "the owner was not asked"
        # Its size was checked against our client's repository's manifest, and never taken.
        assert not [event for event in seen if isinstance(event, Invite | Request)]
