"""A lying owner must not get an honest peer banned: it changes a piece's hash (a PieceMeta
update) after the fetching node has asked an honest member for that piece. The first hash
stays (peer/swarm/fetch.py, `_take_owner_hashes`), the true bytes are stored, nobody is
banned. A real node and registry; the owner and the honest member are scripted members."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import trio

from bench.components import free_port
from peer.cluster.rendezvous import owner_order
from peer.swarm import owner_change
from peer.swarm.bits import bits_of
from peer.swarm.link import LinkClosed, PeerLink
from pieces.partial import piece_hash
from tests.peer.fake_registry import digest_of
from tests.peer.member_node import announce_member, node_and_registry, open_link, serve_member
from wire.events import Bitfield, Event, Peers, PeersRequest, Piece, PieceMeta, Request, Want
from wire.identity import NodeIdentity

PIECE = 64 * 1024
PIECES = 16


async def test_an_owners_hash_change_does_not_get_an_honest_peer_banned(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owner_change, "OWNER_STALLED", 3.0)
    async with node_and_registry(tmp_path, nursery) as setup:
        node = setup.node
        liar, liar_port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        for _ in range(1000):
            data = os.urandom(PIECES * PIECE)
            if owner_order(digest_of(data), [node.node_id, liar.node_id])[0] == liar.node_id:
                break
        digest = setup.registry.add_blob(data)
        hashes = {i: piece_hash(data[i * PIECE : (i + 1) * PIECE]) for i in range(PIECES)}
        owner_link: list[PeerLink] = []

        async def liar_on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Want):
                owner_link.append(link)
                # True hashes; it offers nothing itself.
                link.post(PieceMeta(event.digest, len(data), PIECE, hashes, []))
            elif isinstance(event, PeersRequest):
                link.post(Peers(event.digest, []))

        await serve_member(nursery, liar, liar_port, liar_on_event)
        await announce_member(setup, liar, liar_port)

        async def pull() -> None:
            with contextlib.suppress(Exception):  # the client closes at the end of the test
                await setup.client.get(f"/v2/org/app/blobs/{digest}", timeout=60)

        nursery.start_soon(pull)
        swarm = node.swarm
        assert swarm is not None
        with trio.fail_after(20):
            while not (
                (state := swarm.digests.get(digest)) is not None
                and state.fetch is not None
                and state.fetch.picker is not None
            ):
                await trio.sleep(0.02)

        # An honest member that holds the whole blob (its true bytes) offers it.
        honest = NodeIdentity.generate()
        link = await open_link(setup, honest)
        requested: list[int] = []

        async def honest_on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Request):
                requested.append(event.index)
                # The owner changes that piece's hash meanwhile.
                owner_link[0].post(
                    PieceMeta(digest, len(data), PIECE, {event.index: b"\0" * 16}, [])
                )
                await trio.sleep(0.3)
                start = event.index * PIECE
                await link.send(Piece(event.digest, event.index, data[start : start + PIECE]))

        async def run_honest() -> None:
            with contextlib.suppress(LinkClosed):
                await link.run(honest_on_event)

        nursery.start_soon(run_honest)
        await link.send(Bitfield(digest, bits_of(range(PIECES), PIECES)))
        with trio.fail_after(20):
            while not requested:
                await trio.sleep(0.02)
        with trio.fail_after(10):
            while not swarm.is_banned(honest.node_id) and swarm.counters.pieces_from_peers == 0:
                await trio.sleep(0.02)
        # The honest member sent only true bytes of the blob.
        assert not swarm.is_banned(honest.node_id), "the honest peer was banned"
        await link.close()
