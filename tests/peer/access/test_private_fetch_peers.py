"""While a node fetches a private blob from the swarm, a member that says it has pieces
(a Have) and has shown no credentials for the blob gets nothing from it: no Request, and
above all not the node's client's credentials (an Access goes before the Requests to a
peer): it could fish for any private blob's credentials by announcing its pieces."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from bench.components import free_port
from peer.cluster.rendezvous import owner_order
from peer.config import Address
from peer.node import Node
from peer.swarm.bits import bits_of
from peer.swarm.link import PeerLink
from pieces.partial import piece_hash
from tests.peer.fake_registry import FakeRegistry, digest_of, node_config
from tests.peer.member_node import (
    Member,
    Setup,
    announce_member,
    link_member,
    node_and_registry,
    serve_member,
)
from tests.peer.swarm.real_nodes import TOKEN as JOINING_TOKEN
from tests.peer.swarm.real_nodes import (
    Running,
    blob_where,
    first_of,
    knows,
    make_node,
    running,
    until,
)
from wire.events import (
    Access,
    Bitfield,
    Event,
    Have,
    Peers,
    PeersRequest,
    Piece,
    PieceMeta,
    Request,
    Want,
)
from wire.identity import NodeIdentity

PIECE = 64 * 1024
PIECES = 16


async def serve_slow_owner(
    nursery: trio.Nursery,
    owner: NodeIdentity,
    port: int,
    data: bytes,
    origin: str,
    offers: str = "have",
) -> None:
    """An honest owner of a private blob at 127.0.0.1:`port`: its hashes and offers (a Have
    per piece; or `offers` "bitfield": half of them first, then, asked again, all of them and
    a Bitfield, as an owner whose seeding is over answers a Want), each piece a tenth of a
    second after it is asked for."""
    hashes = {i: piece_hash(data[i * PIECE : (i + 1) * PIECE]) for i in range(PIECES)}

    wants = 0

    async def on_event(link: PeerLink, event: Event) -> None:
        nonlocal wants
        if isinstance(event, Want) and offers == "have":
            link.post(PieceMeta(event.digest, len(data), PIECE, hashes, [origin]))
            for index in range(PIECES):
                link.post(Have(event.digest, index))
        elif isinstance(event, Want):
            # First half the hashes and offers, as while its download runs; asked again
            # (the asker lacks hashes), all of them and a Bitfield: its seeding is over.
            wants += 1
            known = range(PIECES // 2) if wants == 1 else range(PIECES)
            meta_hashes = {i: hashes[i] for i in known}
            link.post(PieceMeta(event.digest, len(data), PIECE, meta_hashes, [origin]))
            if wants == 1:
                for index in known:
                    link.post(Have(event.digest, index))
            else:
                link.post(Bitfield(event.digest, bits_of(known, PIECES)))
        elif isinstance(event, PeersRequest):
            link.post(Peers(event.digest, []))
        elif isinstance(event, Request):
            await trio.sleep(0.1)
            start = event.index * PIECE
            await link.send(Piece(event.digest, event.index, data[start : start + PIECE]))

    await serve_member(nursery, owner, port, on_event)


@asynccontextmanager
async def node_with_scripted_owner(
    tmp_path: Path, nursery: trio.Nursery, offers: str = "have"
) -> AsyncIterator[tuple[Setup, Member, str, bytes]]:
    """A real node, a private blob that a scripted owner (`serve_slow_owner`) ranks first
    for, and another member linked to the node: (the node's setup, the member, the blob's
    digest, its bytes)."""
    async with node_and_registry(tmp_path, nursery) as setup:
        node = setup.node
        owner, owner_port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        owner_id = owner.node_id
        for _ in range(1000):  # bounded: the owner ranks first for half of all blobs
            data = os.urandom(PIECES * PIECE)
            if owner_order(digest_of(data), [node.node_id, owner_id])[0] == owner_id:
                break
        digest = setup.registry.add_blob(data)
        setup.registry.token = "s3cret"
        url = setup.registry.url
        await serve_slow_owner(nursery, owner, owner_port, data, url, offers=offers)
        await announce_member(setup, owner, owner_port)
        member = await link_member(setup, nursery)
        yield setup, member, digest, data


async def test_a_member_announcing_pieces_of_a_private_blob_is_not_sent_credentials(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with node_with_scripted_owner(tmp_path, nursery) as (setup, snoop, digest, data):
        node = setup.node

        async def pull() -> None:
            headers = {"Authorization": "Bearer s3cret"}
            response = await setup.client.get(f"/v2/org/app/blobs/{digest}", headers=headers)
            assert response.status_code == 200 and response.content == data

        async with trio.open_nursery() as pulling:
            pulling.start_soon(pull)
            with trio.fail_after(10):
                while node.store.partial(digest) is None:
                    await trio.sleep(0.01)
            for index in range(PIECES):  # "I have them all"
                await snoop.link.send(Have(digest, index))
        sent = [e for e in snoop.seen if isinstance(e, Access | Request)]
        assert not sent, sent


@pytest.mark.parametrize("token", [None, "s3cret"])
async def test_nodes_that_fetch_a_private_blob_still_trade_its_pieces(
    tmp_path: Path, nursery: trio.Nursery, token: str | None
) -> None:
    """Three real nodes, a private blob (and, to compare, a public one), two pulls with the
    registry's credentials at the two nodes that do not own it, the owner's uploads slow: the
    fetchers, which the owner lists to each other, take pieces from each other (each shows
    the other its client's credentials before its Requests). Both complete, the registry
    sends the blob once, and a fetcher sent pieces to a peer: the rule against members that
    announce pieces unasked (above) leaves the honest swarm alone."""
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    # The owner sends 256 KiB/s: the 1 MiB blob twice would take it 8 s, and the fetchers,
    # which learn of each other from it within a few seconds, take pieces from each other.
    seed = Node(
        node_config(
            registry,
            tmp_path / "seed",
            peer=Address("127.0.0.1", free_port()),
            cluster_token=JOINING_TOKEN,
            piece_size=PIECE,
            upload_rate=256 * 1024,
        )
    )
    async with running(seed, nursery) as a:
        b_node = make_node(registry, tmp_path / "b", join=(a.peer,))
        c_node = make_node(registry, tmp_path / "c", join=(a.peer,))
        data = blob_where(lambda d: first_of(d, seed, b_node, c_node) == seed.node_id)
        digest = registry.add_blob(data)
        registry.token = token
        async with running(b_node, nursery) as b, running(c_node, nursery) as c:
            await until(lambda: knows(seed, b_node, c_node) and knows(b_node, seed, c_node))
            await until(lambda: knows(c_node, seed, b_node))
            pulled: list[bytes] = []

            async def pull(at: Running) -> None:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                response = await at.client.get(f"/v2/org/app/blobs/{digest}", headers=headers)
                assert response.status_code == 200, response.text
                pulled.append(response.content)

            async with trio.open_nursery() as pulls:
                pulls.start_soon(pull, b)
                pulls.start_soon(pull, c)
    assert pulled == [data, data]
    assert registry.count("GET", digest) == 1
    traded = [n.swarm.counters.pieces_to_peers for n in (b_node, c_node) if n.swarm]
    print("pieces the fetchers sent to peers:", traded)
    assert sum(traded) > 0


async def test_a_private_blobs_owner_that_offers_by_bitfield_is_heard(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """An owner whose seeding is over answers a Want with a Bitfield of what it holds. The
    node takes it (its owner's word, which the rule against members that announce pieces
    unasked leaves alone): it dropped it, waited 60 s for offers and fetched the rest from
    the registry."""
    async with node_with_scripted_owner(tmp_path, nursery, "bitfield") as (setup, _, digest, data):
        with trio.fail_after(20):
            response = await setup.client.get(
                f"/v2/org/app/blobs/{digest}", headers={"Authorization": "Bearer s3cret"}
            )
        assert response.status_code == 200 and response.content == data
        assert setup.registry.count("GET", digest) == 0  # every piece from the owner
