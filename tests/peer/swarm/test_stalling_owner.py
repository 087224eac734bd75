"""A member that says it has a blob and then sends nothing, while it answers every message,
holds no pull: after OWNER_STALLED seconds without a piece the node leaves it and fetches the
blob itself (README: a lying node delays the owner's registry fetch, never the pull)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from bench.components import free_port
from peer.cluster.rendezvous import owner_order
from peer.swarm import owner_change
from peer.swarm.link import PeerLink
from tests.peer.fake_registry import digest_of
from tests.peer.member_node import announce_member, node_and_registry, serve_member
from wire.events import Event, Peers, PeersRequest, PieceMeta, Reject, Request, Want
from wire.identity import NodeIdentity

PIECE = 64 * 1024
BLOB = 8 * PIECE


async def serve_liar(
    nursery: trio.Nursery, liar: NodeIdentity, port: int, wants: list[Want]
) -> None:
    """A member at 127.0.0.1:`port` that answers a Want with a PieceMeta without hashes ("I have
    it"), a PeersRequest with no peers and a Request with a Reject: heard, never a piece."""

    async def on_event(link: PeerLink, event: Event) -> None:
        if isinstance(event, Want):
            wants.append(event)
            link.post(PieceMeta(event.digest, BLOB, PIECE, {}, []))
        elif isinstance(event, PeersRequest):
            link.post(Peers(event.digest, []))
        elif isinstance(event, Request):
            link.post(Reject(event.digest, event.index, "busy"))

    await serve_member(nursery, liar, port, on_event)


@pytest.mark.parametrize("liar_ranks_first", [False, True])
async def test_an_owner_that_talks_but_sends_no_piece_holds_no_pull(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, liar_ranks_first: bool
) -> None:
    """The liar asked by the node's held-only Want (the node ranks first), or the liar the
    node's owner (it ranks first): either way the pull completes from the registry."""
    monkeypatch.setattr(owner_change, "OWNER_STALLED", 3.0)
    async with node_and_registry(tmp_path, nursery) as setup:
        node = setup.node
        liar, liar_port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        liar_id = liar.node_id
        wants: list[Want] = []
        await serve_liar(nursery, liar, liar_port, wants)
        await announce_member(setup, liar, liar_port)
        first = liar_id if liar_ranks_first else node.node_id
        for _ in range(1000):  # bounded: half of all blobs rank each first
            data = os.urandom(BLOB)
            if owner_order(digest_of(data), [node.node_id, liar_id])[0] == first:
                break
        digest = setup.registry.add_blob(data)
        with trio.fail_after(30):
            got = await setup.client.get(f"/v2/org/app/blobs/{digest}", timeout=60)
        assert got.status_code == 200 and got.content == data
        assert wants and wants[0].held_only is not liar_ranks_first  # the liar was the owner
        assert setup.registry.count("GET", digest) >= 1
